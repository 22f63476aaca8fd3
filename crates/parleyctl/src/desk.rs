//! `parleyctl desk`: an operator desk in the terminal over `OpenSession` — prints offers,
//! assignments and messages as they come, keeps the session alive, and can answer; with
//! `--team`, a supervisor's view of every operator's presence changes.

use std::time::Duration;

use clap::Args;
use parley_proto::v1;
use parley_proto::v1::{desk_event, open_session_request, open_session_response};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::{Endpoints, show_message, time};

#[derive(Args, Debug)]
pub struct DeskArgs {
    /// Resume after this sequence (0: from now).
    #[arg(long, default_value_t = 0)]
    pub resume: u64,
    /// Go online when the desk opens.
    #[arg(long)]
    pub online: bool,
    /// Accept every offer.
    #[arg(long)]
    pub accept: bool,
    /// Answer every customer message with this text.
    #[arg(long)]
    pub auto_reply: Option<String>,
    /// Watch the team instead (a supervisor's token): every operator's presence changes.
    #[arg(long, conflicts_with_all = ["online", "accept", "auto_reply"])]
    pub team: bool,
}

pub async fn run(e: &Endpoints, args: DeskArgs) -> anyhow::Result<()> {
    let token = e.token()?;
    let (tx, rx) = mpsc::channel(16);
    let frame = |f| v1::OpenSessionRequest { frame: Some(f) };
    tx.send(frame(open_session_request::Frame::Hello(v1::Hello {
        resume_after_sequence: args.resume,
        client_name: "parleyctl".into(),
        team: args.team,
    })))
    .await?;
    let mut stream = e.sessions_as(token).await?.open_session(ReceiverStream::new(rx)).await?.into_inner();
    let beat = match stream.message().await?.and_then(|f| f.frame) {
        Some(open_session_response::Frame::Welcome(w)) => {
            let what = if args.team { "team view" } else { "desk" };
            println!("{what} of {} open; events after #{}", w.operator_id, w.resume_after_sequence);
            Duration::from_secs(u64::from(w.heartbeat_interval_seconds.max(1)))
        }
        other => anyhow::bail!("expected welcome, got {other:?}"),
    };
    let mut routing = e.routing_as(token).await?;
    if args.online {
        routing
            .set_operator_status(v1::SetOperatorStatusRequest {
                status: v1::OperatorStatus::Online as i32,
                ..Default::default()
            })
            .await?;
        println!("status: online");
    }
    let mut ticker = tokio::time::interval(beat);
    let mut replies = 0u64;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = ticker.tick() => {
                tx.send(frame(open_session_request::Frame::Heartbeat(v1::Heartbeat {}))).await?;
            }
            next = stream.message() => {
                let Some(f) = next?.and_then(|f| f.frame) else { break };
                match f {
                    open_session_response::Frame::Event(ev) => {
                        let at = time(ev.event_time.as_ref());
                        match ev.kind {
                            Some(desk_event::Kind::Offered(o)) => {
                                let c = o.conversation.unwrap_or_default();
                                println!("#{} [{at}] offer: conversation {} (until {})", ev.sequence, c.id, time(o.expire_time.as_ref()));
                                if args.accept {
                                    routing.accept_offer(v1::AcceptOfferRequest { conversation_id: c.id }).await?;
                                }
                            }
                            Some(desk_event::Kind::Assigned(a)) => {
                                let c = a.conversation.unwrap_or_default();
                                println!("#{} [{at}] assigned: conversation {} with {}", ev.sequence, c.id, a.customer_display_name);
                                if !a.transfer_note.is_empty() {
                                    println!("    note: {}", a.transfer_note);
                                }
                                for m in &a.recent_messages {
                                    println!("    {}", show_message(m));
                                }
                                if let (Some(text), Some(last)) = (&args.auto_reply, a.recent_messages.last()) {
                                    replies += 1;
                                    reply(&tx, &last.conversation_id, replies, text).await?;
                                }
                            }
                            Some(desk_event::Kind::Message(m)) => {
                                println!("#{} {}", ev.sequence, show_message(&m));
                                if m.sender_kind == v1::SenderKind::Customer as i32 && let Some(text) = &args.auto_reply {
                                    replies += 1;
                                    reply(&tx, &m.conversation_id, replies, text).await?;
                                }
                            }
                            Some(desk_event::Kind::Released(r)) => {
                                println!("#{} [{at}] conversation {} left the desk: {}", ev.sequence, r.conversation_id, r.reason);
                            }
                            Some(desk_event::Kind::Delivery(d)) => {
                                let state = v1::DeliveryState::try_from(d.state).map_or("unknown", |s| s.as_str_name());
                                let why = if d.failure_reason.is_empty() { String::new() } else { format!(" ({})", d.failure_reason) };
                                println!("#{} [{at}] reply {} in conversation {}: {state}{why}", ev.sequence, d.message_id, d.conversation_id);
                            }
                            Some(desk_event::Kind::Typing(t)) => {
                                println!("#{} [{at}] the customer is typing in {}", ev.sequence, t.conversation_id);
                            }
                            Some(desk_event::Kind::Presence(p)) => {
                                let status = v1::OperatorStatus::try_from(p.status).map_or("unknown", |s| s.as_str_name());
                                let desk = if p.connected { "desk connected" } else { "no desk" };
                                println!("#{} [{at}] operator {}: {status} ({desk}) {}", ev.sequence, p.operator_id, p.reason);
                            }
                            None => {}
                        }
                    }
                    open_session_response::Frame::ReplyRejected(r) => println!("reply {} refused: {}: {}", r.client_message_id, r.code, r.message),
                    open_session_response::Frame::ReplyAccepted(_) | open_session_response::Frame::Heartbeat(_) | open_session_response::Frame::Welcome(_) => {}
                }
            }
        }
    }
    Ok(())
}

async fn reply(
    tx: &mpsc::Sender<v1::OpenSessionRequest>,
    conversation: &str,
    n: u64,
    text: &str,
) -> anyhow::Result<()> {
    tx.send(v1::OpenSessionRequest {
        frame: Some(open_session_request::Frame::Reply(v1::SendReply {
            conversation_id: conversation.into(),
            client_message_id: format!("desk-{}-{n}", uuid::Uuid::now_v7().simple()),
            text: text.into(),
            template: None,
            attachment_ids: Vec::new(),
        })),
    })
    .await?;
    Ok(())
}
