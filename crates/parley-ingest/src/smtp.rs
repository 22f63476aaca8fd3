//! The SMTP listener: the email channel's inbound edge. Mail servers (a tenant's MX, or a
//! relay that forwards the support address) deliver customers' email here over plain SMTP.
//!
//! - [`protocol`]: the conversation as a pure state machine (EHLO with `SIZE`, `8BITMIME`,
//!   `PIPELINING`, `SMTPUTF8`, `ENHANCEDSTATUSCODES`; MAIL, RCPT, DATA, RSET, NOOP, VRFY,
//!   QUIT).
//! - [`connection`]: one connection's IO and limits (line length, message size while
//!   reading, idle time, errors), against a [`Mailroom`].
//! - here: the listener (a cap on concurrent connections, graceful shutdown) and
//!   [`Postmaster`], the mailroom of the running service.
//!
//! A recipient is accepted if it is the address of an enabled email channel config of an
//! enabled tenant (case-insensitively; [`ConfigCache::email_recipients`]), else `550 5.1.1`.
//! At the end of DATA the message is parsed (`parley-channels`; unreadable → `554 5.6.0`)
//! and, unless it is automatic (an auto-reply or a bounce: accepted and not passed on, so
//! two responders cannot loop), normalised and published to `PARLEY_INBOUND` once per
//! recipient config; `250` only after JetStream acknowledged every copy, `451 4.3.0`
//! otherwise so the sending server retries. The dedupe id comes from the `Message-ID`
//! (or the message's hash), so a retried delivery is stored once.
//!
//! No STARTTLS: put the listener behind a TLS-terminating proxy, or let the tenant's own
//! MX (which speaks TLS to the internet) relay to it over a private network.

pub mod connection;
pub mod protocol;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parley_channels::ChannelError;
use parley_channels::email::{self, AutoReply};
use parley_domain::{AttachmentId, Channel, TenantId};
use parley_kit::clock;
use parley_nats::{ConfigCache, MediaStore, Publisher, StoredFile};
use parley_proto::{convert, events};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use connection::{Limits, Mail, Mailroom};
pub use protocol::{Outcome, Settings};

use crate::normalise::{self, Source};

/// Recipients accepted per mail: what RFC 5321 § 4.5.3.1.8 asks a server to take at least.
pub const MAX_RECIPIENTS: usize = 100;

/// The mailroom of the running service: recipients from the config cache, attachments to
/// the media store, delivery to `PARLEY_INBOUND`.
#[derive(Clone)]
pub struct Postmaster {
    pub cache: ConfigCache,
    pub publisher: Publisher,
    pub store: Arc<dyn MediaStore>,
    pub max_message_bytes: usize,
    /// Keys the thread tokens of Parley's own Message-IDs (the senders' key).
    pub thread_key: Vec<u8>,
}

impl std::fmt::Debug for Postmaster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postmaster").field("max_message_bytes", &self.max_message_bytes).finish_non_exhaustive()
    }
}

impl Mailroom for Postmaster {
    /// A tenant and one of its email channel config ids.
    type Route = (TenantId, String);

    fn recipients(&self, address: &str) -> Vec<Self::Route> {
        self.cache.email_recipients(address)
    }

    async fn deliver(&self, mail: Mail<Self::Route>) -> Outcome {
        let span = tracing::info_span!(
            "smtp_mail",
            message_id = tracing::field::Empty,
            recipients = mail.envelope.routes.len(),
            bytes = mail.raw.len(),
            outcome = tracing::field::Empty,
        );
        let outcome = self.store(mail, &span).instrument(span.clone()).await;
        let name = match &outcome {
            Outcome::Stored => "stored",
            Outcome::Automatic => "automatic",
            Outcome::TooBig => "too_big",
            Outcome::Unparseable(_) => "unparseable",
            Outcome::NotStored => "not_stored",
        };
        span.record("outcome", name);
        outcome
    }
}

impl Postmaster {
    async fn store(&self, mail: Mail<(TenantId, String)>, span: &tracing::Span) -> Outcome {
        let now = clock::now();
        let Mail { envelope, raw } = mail;
        let max = self.max_message_bytes;
        // Parsing a large message takes a while; not on the threads serving connections.
        let parsed = tokio::task::spawn_blocking(move || email::parse_email(&raw, max, now.as_millis())).await;
        let parsed = match parsed {
            Ok(Ok(parsed)) => parsed,
            Ok(Err(ChannelError::TooLarge { .. })) => return Outcome::TooBig,
            Ok(Err(e)) => {
                tracing::info!(error = %e, "unreadable mail refused");
                return Outcome::Unparseable(e.to_string());
            }
            Err(e) => {
                tracing::warn!(error = %e, "the email parser failed");
                return Outcome::Unparseable("the message could not be parsed".into());
            }
        };
        span.record("message_id", parsed.message.provider_message_id.as_str());
        // A null reverse path is how RFC 5321 marks bounces and other notifications; the
        // final server would record it as `Return-Path: <>`, which the parser knows.
        let automatic =
            parsed.auto_reply.clone().or_else(|| envelope.sender.is_empty().then_some(AutoReply::NullReturnPath));
        if let Some(why) = automatic {
            tracing::info!(why = ?why, "automatic mail accepted and not passed on (no loops with auto-responders)");
            return Outcome::Automatic;
        }
        let mut duplicates = 0;
        for (tenant, config_id) in &envelope.routes {
            let source = Source { tenant, channel: Channel::Email, channel_config_id: config_id };
            let mut publication = normalise::message(source, &parsed.message, now);
            if let Some(events::inbound_envelope::Kind::CustomerMessage(m)) = &mut publication.envelope.kind {
                m.subject = one_line(parsed.subject.as_deref().unwrap_or_default());
                if let Some(thread) = email::thread_token(&parsed.in_reply_to, &parsed.references, &self.thread_key) {
                    m.thread_conversation_id = thread.to_string();
                }
                // The files are here: stored before the mail is accepted, so the media
                // worker has nothing to fetch.
                if let Err(e) = self.store_attachments(tenant, m, &parsed.attachments).await {
                    tracing::warn!(tenant = %tenant, error = %e, "mail attachments not stored");
                    return Outcome::NotStored;
                }
            }
            match self
                .publisher
                .publish(publication.subject, &publication.dedupe_id, &publication.key, &publication.envelope)
                .await
            {
                Ok(published) => duplicates += u32::from(published.duplicate),
                Err(e) => {
                    // Logged with its cause; the sending server only learns to retry, and
                    // the copies stored already are dropped as duplicates then.
                    tracing::warn!(tenant = %tenant, channel_config = %config_id, error = %e, "mail not stored");
                    return Outcome::NotStored;
                }
            }
        }
        tracing::info!(duplicates, "mail stored");
        Outcome::Stored
    }
}

impl Postmaster {
    /// Stores each attachment of a mail the message names (`part:{i}`) under its id, unless
    /// stored before (a retried delivery), and clears its reference.
    async fn store_attachments(
        &self,
        tenant: &TenantId,
        m: &mut events::CustomerMessage,
        parts: &[email::EmailAttachment],
    ) -> Result<(), String> {
        for a in &mut m.attachments {
            let part =
                a.provider_ref.strip_prefix("part:").and_then(|i| i.parse::<usize>().ok()).and_then(|i| parts.get(i));
            let (Some(part), Some(meta)) = (part, a.attachment.as_ref()) else { continue };
            let id = AttachmentId::parse(&meta.id).map_err(|e| e.to_string())?;
            if self.store.head(tenant, id).await.map_err(|e| e.to_string())?.is_none() {
                let file = StoredFile {
                    mime: part.mime.clone(),
                    file_name: meta.file_name.clone(),
                    size: part.bytes.len() as u64,
                    digest: String::new(),
                    owner: String::new(),
                };
                self.store
                    .put(tenant, id, file, Bytes::copy_from_slice(&part.bytes))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            a.provider_ref.clear();
        }
        Ok(())
    }
}

/// A subject as kept: folded onto one line, control characters out, at most
/// `convert::MAX_SUBJECT_CHARS`.
fn one_line(subject: &str) -> String {
    let words = subject.split(|c: char| c.is_whitespace() || c.is_control()).filter(|w| !w.is_empty());
    let folded = words.collect::<Vec<_>>().join(" ");
    folded.chars().take(convert::MAX_SUBJECT_CHARS).collect()
}

/// Accepts connections until `token` fires, at most `max_connections` at a time (more are
/// told `421` and closed), then waits for the open ones to finish: each says goodbye at
/// its next command, after the mail it is reading or delivering.
pub async fn serve<M: Mailroom>(
    listener: TcpListener,
    mailroom: M,
    settings: Settings,
    limits: Limits,
    max_connections: usize,
    token: CancellationToken,
) -> anyhow::Result<()> {
    let mailroom = Arc::new(mailroom);
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = token.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: wait a moment rather than spin.
                tracing::warn!(error = %e, "smtp accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, max_connections, "smtp connection refused: too many open");
            // A best-effort word before closing; the write never waits.
            let _ = stream
                .try_write(format!("421 4.3.2 {} too many connections, try later\r\n", settings.hostname).as_bytes());
            continue;
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let (mailroom, settings, limits, token) = (mailroom.clone(), settings.clone(), limits.clone(), token.clone());
        let span = tracing::info_span!("smtp", %peer);
        connections.spawn(
            async move {
                let _slot = slot;
                tracing::debug!("smtp connection opened");
                match connection::serve(stream, &*mailroom, settings, limits, &token).await {
                    Ok(()) => tracing::debug!("smtp connection closed"),
                    Err(e) => tracing::debug!(error = %e, "smtp connection ended"),
                }
            }
            .instrument(span),
        );
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
    Ok(())
}
