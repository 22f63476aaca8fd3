//! A local SMTP relay standing in for a tenant's mail server: it takes every mail Parley's
//! senders hand it (over real SMTP, served by ingest's own protocol implementation) and
//! keeps it for the test to read; addresses whose local part starts with `nobody` are
//! refused (`550 5.1.1`), as a relay refuses an unknown mailbox.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use parley_ingest::smtp::{self, Limits, Mail, Mailroom, Outcome, Settings};
use tokio_util::sync::CancellationToken;

/// One mail as the relay took it.
#[derive(Debug, Clone)]
pub struct RelayedMail {
    pub sender: String,
    pub recipients: Vec<String>,
    pub raw: Vec<u8>,
}

impl RelayedMail {
    /// The raw message as text (what a test asserts on).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }

    /// The value of the first header `name` (unfolded), if present.
    pub fn header(&self, name: &str) -> Option<String> {
        let text = self.text();
        let head = text.split("\r\n\r\n").next().unwrap_or_default().replace("\r\n ", " ").replace("\r\n\t", " ");
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
}

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<RelayedMail>>>);

impl Mailroom for Sink {
    type Route = String;

    fn recipients(&self, address: &str) -> Vec<String> {
        if address.to_ascii_lowercase().starts_with("nobody") { Vec::new() } else { vec![address.to_owned()] }
    }

    async fn deliver(&self, mail: Mail<String>) -> Outcome {
        self.0.lock().expect("sink lock").push(RelayedMail {
            sender: mail.envelope.sender,
            recipients: mail.envelope.recipients,
            raw: mail.raw,
        });
        Outcome::Stored
    }
}

/// The running relay; it stops when dropped.
pub struct MailRelay {
    pub addr: SocketAddr,
    sink: Sink,
    token: CancellationToken,
}

impl MailRelay {
    pub async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let sink = Sink::default();
        let token = CancellationToken::new();
        let settings = Settings {
            hostname: "relay.test".into(),
            max_message_bytes: 10 * 1024 * 1024,
            max_recipients: smtp::MAX_RECIPIENTS,
        };
        tokio::spawn(smtp::serve(listener, sink.clone(), settings, Limits::default(), 16, token.clone()));
        Ok(Self { addr, sink, token })
    }

    /// Every mail taken so far, in order.
    pub fn mails(&self) -> Vec<RelayedMail> {
        self.sink.0.lock().expect("sink lock").clone()
    }
}

impl Drop for MailRelay {
    fn drop(&mut self) {
        self.token.cancel();
    }
}
