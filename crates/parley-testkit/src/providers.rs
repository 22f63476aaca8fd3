//! A local stand-in for the providers' send APIs (Telegram Bot API, WhatsApp Cloud API,
//! Viber REST API, Twilio Messages), answering in their real formats, so Parley's senders
//! are tested over real HTTP. It records every request and can be told what to answer next
//! (a 429 with `retry_after`, a 5xx, a permanent refusal), as the providers document them.
//!
//! It also keeps customers' files the way each provider hands them out: Telegram `getFile`
//! and the bot's file URL, WhatsApp's media endpoint and its authenticated download URL,
//! Viber's plain media URL, and Twilio's media URL behind the account's basic auth that
//! redirects to a CDN.

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

/// A file a provider holds for a customer.
#[derive(Debug, Clone)]
struct File {
    mime: String,
    bytes: Vec<u8>,
}

#[derive(Default)]
struct Inner {
    received: Vec<Received>,
    scripted: HashMap<String, VecDeque<Scripted>>,
    next_id: u64,
    files: HashMap<String, File>,
    /// Downloads refused with 503 before one succeeds, by file key.
    flaky: HashMap<String, u32>,
    addr: Option<SocketAddr>,
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
        let app = Router::new().route("/{provider}/{*rest}", post(answer).get(download)).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        inner.lock().expect("providers lock").addr = Some(addr);
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

    /// A customer's file, as the provider keeps it under `key`: the Telegram `file_id`, the
    /// WhatsApp media id, or the last segment of the Viber or Twilio media URL
    /// ([`Providers::media_url`]).
    pub fn add_file(&self, key: &str, mime: &str, bytes: &[u8]) {
        let mut inner = self.inner.lock().expect("providers lock");
        inner.files.insert(key.to_owned(), File { mime: mime.to_owned(), bytes: bytes.to_vec() });
    }

    /// The next `times` downloads of `key` fail with 503 (the provider's CDN hiccups).
    pub fn fail_downloads(&self, key: &str, times: u32) {
        self.inner.lock().expect("providers lock").flaky.insert(key.to_owned(), times);
    }

    /// The media URL a Viber callback or a Twilio webhook names for a file.
    pub fn media_url(&self, provider: &str, key: &str) -> String {
        match provider {
            "twilio" => format!("{}/2010-04-01/Accounts/AC1/Messages/MM1/Media/{key}", self.base("twilio")),
            _ => format!("{}/media/{key}", self.base(provider)),
        }
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
    let get_file = provider == "telegram" && rest.ends_with("/getFile");
    let (status, body_out, retry_after) = match scripted {
        Some(s) => (s.status, s.body, s.retry_after),
        None if get_file => {
            let (status, answer) = telegram_get_file(&inner, &body);
            (status, answer.to_string(), None)
        }
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

/// Telegram `getFile`: the file's path under the bot's file URL, or Telegram's refusal.
fn telegram_get_file(inner: &Inner, body: &[u8]) -> (u16, Value) {
    let file_id = serde_json::from_slice::<Value>(body).ok().and_then(|b| b["file_id"].as_str().map(str::to_owned));
    match file_id.and_then(|id| inner.files.get(&id).map(|f| (id, f.bytes.len()))) {
        Some((id, size)) => (
            200,
            json!({"ok": true, "result": {"file_id": id, "file_unique_id": "AgADBAADr6cx", "file_size": size,
                                          "file_path": format!("photos/{id}.jpg")}}),
        ),
        None => (400, json!({"ok": false, "error_code": 400, "description": "Bad Request: invalid file_id"})),
    }
}

/// `GET`s: media lookups and downloads, each with the provider's own credential check.
async fn download(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path((provider, rest)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let credential = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let mut inner = inner.lock().expect("providers lock");
    let addr = inner.addr.expect("double bound");
    let segments: Vec<&str> = rest.split('/').collect();
    let bearer = credential.as_deref().is_some_and(|c| c.starts_with("Bearer "));
    let basic = credential.as_deref().is_some_and(|c| c.starts_with("Basic "));
    // (file key, credential the provider wants present)
    let (key, authorised) = match (provider.as_str(), segments.as_slice()) {
        // https://api.telegram.org/file/bot<token>/<file_path>
        ("telegram", ["file", bot, "photos", name]) if bot.starts_with("bot") => {
            (name.trim_end_matches(".jpg").to_owned(), true)
        }
        ("whatsapp", ["cdn", key]) => ((*key).to_owned(), bearer),
        // WhatsApp media endpoint: GET /<media id> answers the download URL.
        ("whatsapp", [media_id]) => {
            let answer = match (bearer, inner.files.get(*media_id)) {
                (false, _) => (
                    401,
                    json!({"error": {"message": "Invalid OAuth access token.", "type": "OAuthException", "code": 190}}),
                ),
                (true, None) => (
                    400,
                    json!({"error": {"message": "Unsupported get request.", "type": "GraphMethodException", "code": 100}}),
                ),
                (true, Some(f)) => (
                    200,
                    json!({
                    "messaging_product": "whatsapp",
                    "url": format!("http://{addr}/whatsapp/cdn/{media_id}"),
                    "mime_type": f.mime, "sha256": "6c4c0b2c2f0b", "file_size": f.bytes.len(), "id": media_id}),
                ),
            };
            record(&mut inner, &provider, &rest, credential, answer.0);
            return (StatusCode::from_u16(answer.0).unwrap_or(StatusCode::OK), parley_kit::axum::Json(answer.1))
                .into_response();
        }
        ("viber", ["media", key]) => ((*key).to_owned(), true),
        // Twilio's media URL answers with a redirect to its CDN, for the account only.
        ("twilio", ["2010-04-01", "Accounts", _, "Messages", _, "Media", key]) => {
            let status = if basic { 302 } else { 401 };
            record(&mut inner, &provider, &rest, credential, status);
            if !basic {
                return StatusCode::UNAUTHORIZED.into_response();
            }
            let to = format!("http://{addr}/twilio/cdn/{key}");
            return (StatusCode::FOUND, [(header::LOCATION, to)]).into_response();
        }
        ("twilio", ["cdn", key]) => ((*key).to_owned(), true),
        _ => (String::new(), false),
    };
    let flaky = inner.flaky.get_mut(&key).filter(|n| **n > 0).map(|n| {
        *n -= 1;
    });
    let file = inner.files.get(&key).cloned();
    let status = match (&file, authorised, flaky) {
        (_, _, Some(())) => 503,
        (_, false, _) => 401,
        (None, true, _) => 404,
        (Some(_), true, None) => 200,
    };
    record(&mut inner, &provider, &rest, credential, status);
    match (status, file) {
        (200, Some(f)) => ([(header::CONTENT_TYPE, f.mime)], f.bytes).into_response(),
        (s, _) => StatusCode::from_u16(s).unwrap_or(StatusCode::NOT_FOUND).into_response(),
    }
}

fn record(inner: &mut Inner, provider: &str, path: &str, credential: Option<String>, status: u16) {
    inner.received.push(Received {
        provider: provider.to_owned(),
        path: path.to_owned(),
        credential,
        content_type: None,
        body: Vec::new(),
        at: Instant::now(),
        status,
        answer: String::new(),
    });
}

/// The provider's answer to a good request, in its documented shape.
fn success(provider: &str, path: &str, body: &[u8], id: u64) -> Result<(u16, Value), String> {
    let json_body = || serde_json::from_slice::<Value>(body).map_err(|e| format!("body is not JSON: {e}"));
    match provider {
        "telegram" => {
            let method = path.rsplit('/').next().unwrap_or_default();
            if !path.starts_with("bot") {
                return Err(format!("unexpected Telegram path {path}"));
            }
            let b = json_body()?;
            let chat = b["chat_id"].as_i64().ok_or("chat_id missing")?;
            let mut result = json!({
                "message_id": id, "from": {"id": 7_000_000_001_i64, "is_bot": true, "first_name": "Bank"},
                "chat": {"id": chat, "type": "private"}, "date": 1_764_400_000});
            match method {
                "sendMessage" => result["text"] = json!(b["text"].as_str().ok_or("text missing")?),
                "sendPhoto" => {
                    b["photo"].as_str().ok_or("photo missing")?;
                    result["photo"] = json!([{"file_id": format!("AgACAgIAAxk{id}"), "file_unique_id": "AQAD", "width": 1280, "height": 960}]);
                }
                "sendDocument" => {
                    b["document"].as_str().ok_or("document missing")?;
                    result["document"] = json!({"file_id": format!("BQACAgIAAxk{id}"), "file_unique_id": "AgAD"});
                }
                other => return Err(format!("unexpected Telegram method {other}")),
            }
            if let Some(c) = b["caption"].as_str() {
                result["caption"] = json!(c);
            }
            Ok((200, json!({"ok": true, "result": result})))
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
