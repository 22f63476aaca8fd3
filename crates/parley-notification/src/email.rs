//! Email replies: an RFC 5322 message with threading headers, sent through the channel
//! configuration's SMTP relay, and the relay's answer as a send outcome.
//!
//! The reply's `Message-ID` carries a MAC-protected thread token (`parley-channels`), its
//! `In-Reply-To` is the customer's last mail and `References` the customer's recent mails,
//! and its subject is "Re: " and the customer's — so mail clients file it in the customer's
//! thread, and the customer's answer to it names the conversation.

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox, Message, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use parley_channels::email::outgoing_message_id;
use parley_channels::outbound::SendOutcome;
use parley_domain::{ConversationId, MessageId};
use parley_proto::v1;

/// An email ready to go.
pub struct EmailSend {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    message: Message,
    /// Our Message-ID, without angle brackets: the id receipts and replies name.
    pub message_id: String,
}

/// What a reply needs from its conversation.
pub struct Reply<'a> {
    pub conversation: ConversationId,
    pub message: MessageId,
    pub to: &'a str,
    pub subject: &'a str,
    pub text: &'a str,
    /// The customer's Message-IDs this answers, oldest first.
    pub references: &'a [String],
    /// Files to attach.
    pub files: &'a [File],
}

/// A file attached to a reply.
pub struct File {
    pub name: String,
    pub mime: String,
    pub bytes: bytes::Bytes,
}

fn bracketed(id: &str) -> String {
    let id = id.trim().trim_start_matches('<').trim_end_matches('>');
    format!("<{id}>")
}

/// Builds the reply and the transport to the configuration's relay. Port 465 speaks TLS
/// from the start; any other port upgrades with STARTTLS when the relay offers it (relays on
/// a private network may not).
pub fn prepare(
    config: &v1::ChannelConfig,
    settings: &v1::EmailSettings,
    reply: &Reply<'_>,
    thread_key: &[u8],
    timeout: Duration,
) -> Result<EmailSend, String> {
    let from: Mailbox = format!("{} <{}>", quoted_name(&config.display_name), settings.address)
        .parse()
        .or_else(|_| settings.address.parse())
        .map_err(|e| format!("channel configuration {} has an invalid address: {e}", config.id))?;
    let to: Mailbox = reply.to.parse().map_err(|e| format!("the customer's address {:?} is invalid: {e}", reply.to))?;
    let domain = settings.address.rsplit_once('@').map(|(_, d)| d).unwrap_or("localhost");
    let message_id = outgoing_message_id(reply.conversation, reply.message, domain, thread_key);
    let subject =
        if reply.subject.is_empty() { format!("Re: {}", config.display_name) } else { reply.subject.to_owned() };
    let mut builder = Message::builder().from(from).to(to).subject(subject).message_id(Some(message_id.clone()));
    if let Some(last) = reply.references.last() {
        builder = builder.in_reply_to(bracketed(last));
        let all: Vec<String> = reply.references.iter().map(|r| bracketed(r)).collect();
        builder = builder.references(all.join(" "));
    }
    let built = if reply.files.is_empty() {
        builder.header(ContentType::TEXT_PLAIN).body(reply.text.to_owned())
    } else {
        let mut parts = MultiPart::mixed().singlepart(SinglePart::plain(reply.text.to_owned()));
        for (i, f) in reply.files.iter().enumerate() {
            let name = if f.name.is_empty() { format!("attachment-{}", i + 1) } else { f.name.clone() };
            let mime =
                ContentType::parse(&f.mime).unwrap_or(ContentType::parse("application/octet-stream").expect("a type"));
            parts = parts.singlepart(Attachment::new(name).body(f.bytes.to_vec(), mime));
        }
        builder.multipart(parts)
    };
    let message = built.map_err(|e| format!("cannot build the email: {e}"))?;

    let host = settings.smtp_relay_host.trim();
    if host.is_empty() {
        return Err(format!("channel configuration {} has no SMTP relay host", config.id));
    }
    let port = if settings.smtp_relay_port == 0 { 587 } else { settings.smtp_relay_port as u16 };
    let tls = TlsParameters::new(host.to_owned()).map_err(|e| format!("TLS for {host}: {e}"))?;
    let mut transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
        .port(port)
        .timeout(Some(timeout))
        .hello_name(ClientId::Domain(domain.to_owned()))
        .tls(if port == 465 { Tls::Wrapper(tls) } else { Tls::Opportunistic(tls) });
    if !settings.smtp_username.is_empty() {
        transport =
            transport.credentials(Credentials::new(settings.smtp_username.clone(), settings.smtp_password.clone()));
    }
    Ok(EmailSend {
        transport: transport.build(),
        message,
        message_id: message_id.trim_start_matches('<').trim_end_matches('>').to_owned(),
    })
}

/// A display name safe inside a mailbox: quoted, without quotes or line breaks.
fn quoted_name(name: &str) -> String {
    let clean: String = name.chars().filter(|c| !matches!(c, '"' | '\\' | '\r' | '\n')).collect();
    format!("\"{}\"", clean.trim())
}

/// Sends it; the relay's answer becomes the outcome: 2xx sent, 4xx and connection trouble
/// again later, 5xx refused for good with the relay's code and text.
pub async fn send(email: &EmailSend) -> SendOutcome {
    match email.transport.send(email.message.clone()).await {
        Ok(_) => SendOutcome::Sent { provider_message_id: Some(email.message_id.clone()) },
        Err(e) if e.is_permanent() => {
            let code = e.status().map_or_else(|| "smtp_5xx".to_owned(), |c| format!("smtp_{c}"));
            SendOutcome::Failed { code, description: e.to_string() }
        }
        Err(e) => {
            tracing::warn!(error = %e, "SMTP relay did not take the reply; retrying");
            SendOutcome::Retry { after: None }
        }
    }
}
