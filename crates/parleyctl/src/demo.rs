//! `parleyctl demo`: seeds the `demo` tenant (idempotently) and drives one conversation
//! through the running services, narrating each step, so `make run` shows Parley working.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use parley_proto::v1;
use parley_proto::v1::{customer_update, desk_event, open_session_request, open_session_response};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use crate::{Endpoints, describe_update, mint_platform, show_message};

#[derive(Args, Debug)]
pub struct DemoArgs {
    #[arg(long, env = "PARLEY_AUTH__SIGNING_KEY", hide_env_values = true)]
    signing_key: String,
    /// Write the demo tenant's tokens here as shell exports.
    #[arg(long)]
    write_env: Option<PathBuf>,
}

const TENANT: &str = "demo";
const WAIT: Duration = Duration::from_secs(15);

fn step(n: u32, text: &str) {
    println!("\n\x1b[1;36m{n}. {text}\x1b[0m");
}

fn ok_or_exists<T>(r: Result<T, tonic::Status>) -> anyhow::Result<()> {
    match r {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(()),
        Err(s) => Err(s.into()),
    }
}

async fn issue(
    admin: &mut v1::admin_service_client::AdminServiceClient<crate::Authed>,
    subject: &str,
    role: v1::Role,
) -> anyhow::Result<String> {
    Ok(admin
        .issue_token(v1::IssueTokenRequest {
            subject: subject.into(),
            role: role as i32,
            description: "parleyctl demo".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .token)
}

pub async fn run(e: &Endpoints, args: DemoArgs) -> anyhow::Result<()> {
    let platform = mint_platform(&args.signing_key, 10)?;
    step(1, "Seeding tenant `demo`: skill `support`, operators anna and boris");
    let mut admin = e.admin_as(&platform).await?;
    ok_or_exists(
        admin
            .create_tenant(v1::CreateTenantRequest {
                tenant: Some(v1::Tenant { id: TENANT.into(), display_name: "Demo Bank".into(), ..Default::default() }),
            })
            .await,
    )?;
    let admin_token = admin
        .issue_token(v1::IssueTokenRequest {
            tenant_id: TENANT.into(),
            subject: "demo-admin".into(),
            role: v1::Role::Admin as i32,
            ..Default::default()
        })
        .await?
        .into_inner()
        .token;
    let mut admin = e.admin_as(&admin_token).await?;
    ok_or_exists(
        admin
            .create_skill(v1::CreateSkillRequest {
                skill: Some(v1::Skill { id: "support".into(), display_name: "Support".into() }),
            })
            .await,
    )?;
    for (id, name, level, cap) in [("anna", "Анна", 4, 3), ("boris", "Борис", 2, 2)] {
        ok_or_exists(
            admin
                .create_operator(v1::CreateOperatorRequest {
                    operator: Some(v1::Operator {
                        id: id.into(),
                        display_name: name.into(),
                        skills: vec![v1::SkillLevel { skill: "support".into(), proficiency: level }],
                        languages: vec!["ru".into(), "en".into()],
                        capacity: vec![
                            v1::ChannelCapacity { channel: v1::Channel::Api as i32, max_conversations: cap },
                            v1::ChannelCapacity { channel: v1::Channel::Webchat as i32, max_conversations: cap },
                        ],
                        ..Default::default()
                    }),
                })
                .await,
        )?;
    }
    // The web chat of the bank's site, for the widget (any origin may embed it).
    let site = v1::ChannelConfig {
        id: "site".into(),
        channel: v1::Channel::Webchat as i32,
        display_name: "Demo Bank site".into(),
        default_queue_id: "default".into(),
        settings: Some(v1::channel_config::Settings::Webchat(v1::WebChatSettings {
            allowed_origins: Vec::new(),
            identity_secret: "demo-site-identity-secret-0123456789".into(),
        })),
        ..Default::default()
    };
    ok_or_exists(admin.create_channel_config(v1::CreateChannelConfigRequest { channel_config: Some(site) }).await)?;
    let integrator = issue(&mut admin, "demo-crm", v1::Role::Integrator).await?;
    let anna = issue(&mut admin, "anna", v1::Role::Operator).await?;
    let boris = issue(&mut admin, "boris", v1::Role::Operator).await?;
    let supervisor = issue(&mut admin, "demo-supervisor", v1::Role::Supervisor).await?;
    if let Some(path) = &args.write_env {
        std::fs::write(
            path,
            format!(
                "export PARLEY_ADMIN_TOKEN={admin_token}\nexport PARLEY_INTEGRATOR_TOKEN={integrator}\n\
                 export PARLEY_ANNA_TOKEN={anna}\nexport PARLEY_BORIS_TOKEN={boris}\n\
                 export PARLEY_SUPERVISOR_TOKEN={supervisor}\n"
            ),
        )?;
    }

    step(2, "Anna opens her desk and goes online");
    let (tx, rx) = mpsc::channel(16);
    let hello = v1::Hello { resume_after_sequence: 0, client_name: "demo".into(), team: false };
    tx.send(v1::OpenSessionRequest { frame: Some(open_session_request::Frame::Hello(hello)) }).await?;
    let mut desk = e.sessions_as(&anna).await?.open_session(ReceiverStream::new(rx)).await?.into_inner();
    desk.message().await?;
    let presence = e
        .routing_as(&anna)
        .await?
        .set_operator_status(v1::SetOperatorStatusRequest {
            status: v1::OperatorStatus::Online as i32,
            ..Default::default()
        })
        .await?
        .into_inner()
        .presence
        .unwrap_or_default();
    println!("   anna: online, desk connected = {}", presence.connected);

    step(3, "A customer writes through the CRM (API channel), replying to a card notification");
    let customer = format!("client-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let mut feed = e
        .ingest_as(&integrator)
        .await?
        .stream_customer_updates(v1::StreamCustomerUpdatesRequest { customer_ref: customer.clone(), after_sequence: 0 })
        .await?
        .into_inner();
    let mut ingest = e.ingest_as(&integrator).await?;
    let sent = ingest
        .submit_message(v1::SubmitMessageRequest {
            customer_ref: customer.clone(),
            customer_display_name: "Иван Петров".into(),
            text: "Здравствуйте! Что это за списание? Я его не делал 😡".into(),
            idempotency_key: format!("{customer}-1"),
            quoted: Some(v1::QuotedMessage {
                text: "Списание 4 990 ₽, STREAMING*SERVICE, карта *1234".into(),
                channel_message_id: "notification-7781".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?
        .into_inner();
    println!("   accepted as message {} (durable in JetStream before this answer)", sent.message_id);

    step(4, "Routing assigns it to the least occupied operator; Anna's desk gets it");
    let conversation_id = loop {
        let frame = tokio::time::timeout(WAIT, desk.message()).await??.and_then(|f| f.frame);
        if let Some(open_session_response::Frame::Event(ev)) = frame
            && let Some(desk_event::Kind::Assigned(a)) = ev.kind
        {
            let c = a.conversation.unwrap_or_default();
            println!("   desk #{}: conversation {} from {}", ev.sequence, c.id, a.customer_display_name);
            for m in &a.recent_messages {
                println!("     {}", show_message(m));
            }
            break c.id;
        }
    };

    step(5, "Anna replies; the CRM's stream for this customer receives it");
    tx.send(v1::OpenSessionRequest {
        frame: Some(open_session_request::Frame::Reply(v1::SendReply {
            conversation_id: conversation_id.clone(),
            client_message_id: format!("{customer}-r1"),
            text: "Добрый день, Иван! Вижу списание, сейчас заблокирую карту и открою спор.".into(),
            template: None,
            attachment_ids: Vec::new(),
        })),
    })
    .await?;
    loop {
        let update =
            tokio::time::timeout(WAIT, feed.next()).await?.ok_or_else(|| anyhow::anyhow!("stream ended"))??;
        let kind = update.update.and_then(|u| u.kind);
        let is_reply = matches!(kind, Some(customer_update::Kind::Message(_)));
        println!("   customer sees #{}: {}", update.sequence, describe_update(kind));
        if is_reply {
            break;
        }
    }

    step(6, "The customer writes again: same conversation, same operator");
    ingest
        .submit_message(v1::SubmitMessageRequest {
            customer_ref: customer.clone(),
            text: "Спасибо! Жду.".into(),
            idempotency_key: format!("{customer}-2"),
            ..Default::default()
        })
        .await?;
    loop {
        let frame = tokio::time::timeout(WAIT, desk.message()).await??.and_then(|f| f.frame);
        if let Some(open_session_response::Frame::Event(ev)) = frame
            && let Some(desk_event::Kind::Message(m)) = ev.kind
            && m.sender_kind == v1::SenderKind::Customer as i32
        {
            println!("   desk #{}: {}", ev.sequence, show_message(&m));
            break;
        }
    }

    step(7, "History keeps it all (PostgreSQL), with the routing decision explained");
    let mut history = e.history_as(&supervisor).await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    let messages = loop {
        let page = history
            .list_messages(v1::ListMessagesRequest { conversation_id: conversation_id.clone(), ..Default::default() })
            .await
            .map(|r| r.into_inner().messages)
            .unwrap_or_default();
        if page.len() >= 3 || tokio::time::Instant::now() > deadline {
            break page;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for m in &messages {
        println!("   {}", show_message(m));
    }
    let decisions = history
        .list_routing_decisions(v1::ListRoutingDecisionsRequest { conversation_id: conversation_id.clone() })
        .await?
        .into_inner()
        .decisions;
    for d in decisions {
        println!("   why: chose {} — {}", d.chosen_operator_id, d.reason);
        for c in d.candidates {
            let verdict = if c.excluded_because.is_empty() { "eligible".to_owned() } else { c.excluded_because };
            println!("        {:<8} {}/{} {}", c.operator_id, c.load, c.capacity, verdict);
        }
    }

    step(8, "Anna closes the conversation; her capacity is free again");
    e.routing_as(&anna)
        .await?
        .close_conversation(v1::CloseConversationRequest {
            conversation_id: conversation_id.clone(),
            reason: "resolved".into(),
        })
        .await?;
    println!("   closed {conversation_id}");
    println!("\n\x1b[1;32mDemo done.\x1b[0m customer {customer}, conversation {conversation_id}");
    Ok(())
}
