//! Parley's provider channels as pure functions: verify and parse what providers send, build
//! what we send them, and judge their answers.
//!
//! Layout:
//! - [`inbound`]: the normalised events every parser returns ([`Inbound`], [`InboundMessage`],
//!   [`DeliveryReceipt`], [`Identity`], [`MediaRef`]).
//! - [`telegram`], [`whatsapp`], [`viber`], [`twilio`] (SMS/MMS): per provider, signature
//!   verification over the raw body, payload parsing, outbound request bodies and
//!   classification of send responses.
//! - [`email`]: RFC 5322 parsing, auto-reply detection and forgery-proof thread tokens.
//! - [`segments`]: SMS segment counting (GSM-7 and UCS-2).
//! - [`outbound`]: [`OutboundRequest`], [`HttpResponse`] and [`SendOutcome`], shared by the
//!   senders.
//! - [`error`]: [`ChannelError`], one error type with a code and an HTTP status.
//!
//! *Architecture invariant*: nothing here performs IO, reads a clock or draws a random
//! number. Secrets, `now` and received times are arguments; the ingest service (HTTP
//! webhooks, SMTP) and the notification service (senders) do the IO around these functions.
//!
//! *API boundary*: every parser takes the raw bytes exactly as received, because signatures
//! are computed over them; nothing is re-serialised before verification. Malformed input of
//! any kind is an error, never a panic.

pub mod email;
pub mod error;
pub mod inbound;
pub mod outbound;
pub mod segments;
mod sig;

pub use sig::{ct_eq, hmac_sha256, verify_hex_sha256};
pub mod telegram;
pub mod twilio;
pub mod viber;
pub mod whatsapp;

pub use error::ChannelError;
pub use inbound::{
    DeliveryReceipt, Identity, Inbound, InboundMessage, Location, MediaKind, MediaRef, ProviderError, Reaction,
};
pub use outbound::{
    HttpResponse, MediaLinkError, OutboundRequest, SendOutcome, check_media_link, media_link, media_link_key,
};

/// The largest webhook body accepted from a provider (Meta documents payloads up to 3 MB);
/// anything larger is refused before it is parsed.
pub const MAX_WEBHOOK_BYTES: usize = 4 * 1024 * 1024;
