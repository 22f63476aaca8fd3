//! A local stand-in for the providers' send APIs (Telegram Bot API, WhatsApp Cloud API,
//! Viber REST API, Twilio Messages), answering in their real formats, so Parley's senders
//! are tested over real HTTP. It records every request and can be told what to answer next
//! (a 429 with `retry_after`, a 5xx, a permanent refusal), as the providers document them.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use parley_kit::axum::body::Bytes;
use parley_kit::axum::extract::{Path, State};
use parley_kit::axum::http::{HeaderMap, StatusCode, header};
use parley_kit::axum::response::{IntoResponse, Response};
use parley_kit::axum::routing::post;
use parley_kit::axum::{self, Router};
use serde_json::{Value, json};

/// The providers the double stands in for, by the first segment of its paths.
pub const PROVIDERS: [&str; 4] = ["telegram", "whatsapp", "viber", "twilio"];

/// One request as the double received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub provider: String,
    /// The path after the provider's segment (`bot<token>/sendMessage`, `<phone id>/messages`).
    pub path: String,
    /// The credential as sent: `Authorization` (WhatsApp, Twilio) or `X-Viber-Auth-Token`.
    pub credential: Option<String>,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
    pub at: Instant,
    /// What the double answered.
    pub status: u16,
    pub answer: String,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub fn form(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(&self.body).into_owned().collect()
    }
}

/// An answer to give instead of success.
#[derive(Debug, Clone)]
struct Scripted {
    status: u16,
    body: String,
    retry_after: Option<String>,
}

#[derive(Default)]
struct Inner {
    received: Vec<Received>,
    scripted: HashMap<String, VecDeque<Scripted>>,
    next_id: u64,
}

/// The running double.
#[derive(Clone)]
pub struct Providers {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

impl Providers {
    pub async fn start() -> anyhow::Result<Self> {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new().route("/{provider}/{*rest}", post(answer)).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, inner })
    }

    /// The API base to configure for a provider.
    pub fn base(&self, provider: &str) -> String {
        format!("http://{}/{provider}", self.addr)
    }

    /// The next request to `provider` gets this answer instead of success (queued in order).
    pub fn script(&self, provider: &str, status: u16, body: Value, retry_after: Option<&str>) {
        let mut inner = self.inner.lock().expect("providers lock");
        inner.scripted.entry(provider.to_owned()).or_default().push_back(Scripted {
            status,
            body: body.to_string(),
            retry_after: retry_after.map(str::to_owned),
        });
    }

    /// Every request to `provider` so far, in order.
    pub fn received(&self, provider: &str) -> Vec<Received> {
        let inner = self.inner.lock().expect("providers lock");
        inner.received.iter().filter(|r| r.provider == provider).cloned().collect()
    }
}

async fn answer(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path((provider, rest)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header_text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let credential = match provider.as_str() {
        "viber" => header_text("x-viber-auth-token"),
        _ => header_text("authorization"),
    };
    let mut inner = inner.lock().expect("providers lock");
    inner.next_id += 1;
    let id = inner.next_id;
    let scripted = inner.scripted.get_mut(&provider).and_then(VecDeque::pop_front);
    let (status, body_out, retry_after) = match scripted {
        Some(s) => (s.status, s.body, s.retry_after),
        None => match success(&provider, &rest, &body, id) {
            Ok((status, body)) => (status, body.to_string(), None),
            Err(why) => (400, json!({"error": why}).to_string(), None),
        },
    };
    inner.received.push(Received {
        provider: provider.clone(),
        path: rest,
        credential,
        content_type: header_text("content-type"),
        body: body.to_vec(),
        at: Instant::now(),
        status,
        answer: body_out.clone(),
    });
    let mut response = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(header::CONTENT_TYPE, "application/json")],
        body_out,
    )
        .into_response();
    if let Some(r) = retry_after.and_then(|r| r.parse().ok()) {
        response.headers_mut().insert(header::RETRY_AFTER, r);
    }
    response
}

/// The provider's answer to a good request, in its documented shape.
fn success(provider: &str, path: &str, body: &[u8], id: u64) -> Result<(u16, Value), String> {
    let json_body = || serde_json::from_slice::<Value>(body).map_err(|e| format!("body is not JSON: {e}"));
    match provider {
        "telegram" => {
            if !path.starts_with("bot") || !path.ends_with("/sendMessage") {
                return Err(format!("unexpected Telegram method {path}"));
            }
            let b = json_body()?;
            let chat = b["chat_id"].as_i64().ok_or("chat_id missing")?;
            let text = b["text"].as_str().ok_or("text missing")?;
            Ok((
                200,
                json!({"ok": true, "result": {
                    "message_id": id, "from": {"id": 7_000_000_001_i64, "is_bot": true, "first_name": "Bank"},
                    "chat": {"id": chat, "type": "private"}, "date": 1_764_400_000, "text": text}}),
            ))
        }
        "whatsapp" => {
            let b = json_body()?;
            let to = b["to"].as_str().ok_or("to missing")?;
            if b["messaging_product"] != "whatsapp" {
                return Err("messaging_product must be whatsapp".into());
            }
            Ok((
                200,
                json!({"messaging_product": "whatsapp", "contacts": [{"input": to, "wa_id": to}],
                       "messages": [{"id": format!("wamid.HBgLNzkxNjEyMzQ1NjcVAgARGBI{id:05}")}]}),
            ))
        }
        "viber" => {
            let b = json_body()?;
            b["receiver"].as_str().ok_or("receiver missing")?;
            Ok((
                200,
                json!({"status": 0, "status_message": "ok", "message_token": 5_741_311_803_571_721_000_u64 + id,
                       "chat_hostname": "SN-CHAT-05_", "billing_status": 1}),
            ))
        }
        "twilio" => {
            let form: HashMap<String, String> = form_urlencoded::parse(body).into_owned().collect();
            let (to, from) = (form.get("To").ok_or("To missing")?, form.get("From").ok_or("From missing")?);
            Ok((
                201,
                json!({"sid": format!("SM{id:032x}"), "status": "queued", "to": to, "from": from,
                       "body": form.get("Body"), "num_segments": "1", "direction": "outbound-api"}),
            ))
        }
        other => Err(format!("unknown provider {other}")),
    }
}
