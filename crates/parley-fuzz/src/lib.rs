//! Fuzz targets for every parser and verifier of inbound channel traffic. Each target is a
//! `pub fn <target>(data: &[u8])` that feeds any bytes to one parser or verifier and asserts
//! what must hold whatever the input: it never panics, and what it accepts has the
//! properties the rest of Parley relies on (a message has a provider id and a sender, a
//! verifier accepts only the signature made with its key, a normalised text passes
//! `check_text`, …). A failed assertion is a bug in the parser, not in the target.
//!
//! Layout:
//! - [`channels`]: the provider webhooks and their signatures, email and thread tokens, the
//!   send-answer classifiers and SMS segments (`parley-channels`).
//! - [`ingest`]: the SMTP command parser, the web chat's frames and visitor tokens, and the
//!   ingest normaliser behind every channel parser (`parley-ingest`).
//! - [`TARGETS`]: every target by name. The stable driver (`tests/fuzz.rs`: the corpus in
//!   `corpus/<target>/`, then a seeded mutational loop) and the cargo-fuzz binaries (`fuzz/`
//!   at the repository root, nightly) both call them.
//!
//! An input that carries several values (a key, a header, a body) is cut at its first
//! newlines by [`split`], so corpus files stay readable.

pub mod channels;
pub mod ingest;

pub use channels::{
    email, email_thread_token, send_response, sms_segments, telegram_secret, telegram_update, twilio_form,
    twilio_signature, viber_callback, viber_signature, whatsapp_signature, whatsapp_subscription, whatsapp_webhook,
};
pub use ingest::{normalise, smtp_command, webchat_frame, webchat_token};

use parley_channels::{ChannelError, Inbound};
use parley_domain::Channel;

/// A fuzz target: any bytes in, a panic when an invariant does not hold.
pub type Target = fn(&[u8]);

/// Every target by name; the name is also its corpus folder and its cargo-fuzz binary.
pub const TARGETS: &[(&str, Target)] = &[
    ("telegram_update", telegram_update),
    ("telegram_secret", telegram_secret),
    ("whatsapp_webhook", whatsapp_webhook),
    ("whatsapp_signature", whatsapp_signature),
    ("whatsapp_subscription", whatsapp_subscription),
    ("viber_callback", viber_callback),
    ("viber_signature", viber_signature),
    ("twilio_form", twilio_form),
    ("twilio_signature", twilio_signature),
    ("email", email),
    ("email_thread_token", email_thread_token),
    ("send_response", send_response),
    ("sms_segments", sms_segments),
    ("smtp_command", smtp_command),
    ("webchat_frame", webchat_frame),
    ("webchat_token", webchat_token),
    ("normalise", normalise),
];

/// The time a webhook or a mail is received, for the parsers that take one.
pub(crate) const RECEIVED_AT: i64 = 1_700_000_000_000;

/// The longest error message a caller may be shown: the messages go into HTTP and SMTP
/// answers, and quote at most a short piece of the input.
const MAX_ERROR_CHARS: usize = 300;

/// The longest reason an `Ignored` event gives (it is logged, with a short piece of the
/// input at most).
const MAX_REASON_CHARS: usize = 200;

/// Cuts `data` at its first `N - 1` newlines; the last part is the rest, newlines and all
/// (a body). Missing parts are empty.
pub fn split<const N: usize>(data: &[u8]) -> [&[u8]; N] {
    let mut parts = [&data[..0]; N];
    let mut rest = data;
    for part in parts.iter_mut().take(N - 1) {
        match rest.iter().position(|&b| b == b'\n') {
            Some(i) => {
                *part = &rest[..i];
                rest = &rest[i + 1..];
            }
            None => {
                *part = rest;
                rest = &rest[rest.len()..];
            }
        }
    }
    parts[N - 1] = rest;
    parts
}

/// The bytes as text, if they are UTF-8 (headers and configuration values always are).
pub(crate) fn utf8(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// What every refusal must be: safe to answer with.
pub(crate) fn check_error(e: &ChannelError) {
    let message = e.to_string();
    assert!(
        message.chars().count() <= MAX_ERROR_CHARS,
        "an error message quotes too much of the input ({} characters): {message:.400}",
        message.chars().count(),
    );
    assert!((400..500).contains(&e.http_status()), "a refusal is a 4xx: {e:?}");
}

/// Runs a webhook parser twice (the same bytes must give the same answer, or a provider's
/// retry would not deduplicate), checks its refusal or its events, and hands the events on.
pub(crate) fn parse_events(
    parse: impl Fn() -> Result<Vec<Inbound>, ChannelError>,
    channel: Channel,
) -> Option<Vec<Inbound>> {
    let parsed = parse();
    assert_eq!(parsed, parse(), "parsing is not deterministic");
    match parsed {
        Ok(events) => {
            check_events(&events, channel);
            Some(events)
        }
        Err(e) => {
            check_error(&e);
            None
        }
    }
}

/// What every parsed event must be, whatever the provider: of its channel; a message has
/// the dedupe key, the sender and the reply address everything downstream keys on; a
/// receipt names the provider's message; an ignored event says why, briefly.
pub(crate) fn check_events(events: &[Inbound], channel: Channel) {
    for event in events {
        match event {
            Inbound::Message(m) => {
                assert_eq!((m.channel, m.sender.channel), (channel, channel), "a message of another channel");
                assert!(!m.provider_message_id.is_empty(), "a message without a provider id (its dedupe key): {m:?}");
                assert!(!m.sender.external_id.is_empty(), "a message without a sender id (its customer): {m:?}");
                assert!(!m.reply_address.is_empty(), "a message without a reply address: {m:?}");
                assert_ne!(m.edit_of.as_ref(), Some(&m.provider_message_id), "an edit with the original's key");
            }
            Inbound::Receipt(r) => {
                assert_eq!(r.channel, channel, "a receipt of another channel");
                assert!(!r.provider_message_id.is_empty(), "a receipt without a provider id: {r:?}");
            }
            Inbound::Subscription { identity, .. } => {
                assert_eq!(identity.channel, channel, "a subscription of another channel");
                assert!(!identity.external_id.is_empty(), "a subscription without a user id: {identity:?}");
            }
            Inbound::Ignored { reason } => {
                assert!(!reason.is_empty(), "an ignored event without a reason");
                assert!(
                    reason.chars().count() <= MAX_REASON_CHARS,
                    "an ignored event's reason quotes too much of the input: {reason:.400}",
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_cuts_at_the_first_newlines_and_keeps_the_rest() {
        assert_eq!(split::<3>(b"key\nheader\nbody\nmore"), [&b"key"[..], b"header", b"body\nmore"]);
        assert_eq!(split::<3>(b"key"), [&b"key"[..], b"", b""]);
        assert_eq!(split::<2>(b""), [&b""[..], b""]);
        assert_eq!(split::<1>(b"a\nb"), [&b"a\nb"[..]]);
    }

    #[test]
    fn target_names_are_unique() {
        let mut names: Vec<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), TARGETS.len());
    }
}
