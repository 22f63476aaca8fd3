//! The web desk on the notification service's HTTP listener: the operator's single-page
//! app (`web/desk/`, built into the binary), its WebSocket session and a JSON gateway to
//! routing, history and admin — one origin for the browser.
//!
//! - `GET /desk/` and `GET /desk/{file}`: the app, with a strict content security policy.
//! - `GET /desk/ws`: the operator session of [`crate::session`] as JSON text frames (the
//!   proto3 JSON mapping of `OpenSessionRequest` / `OpenSessionResponse`). A browser cannot
//!   set headers on a WebSocket, so the first frame carries the token beside the `hello`:
//!   `{"token": "…", "hello": {"resumeAfterSequence": "42"}}`. An error is sent as
//!   `{"error": {"code": "…", "message": "…"}}` before the socket closes.
//! - `POST /desk/api/{service}/{Method}`: the body is the request's JSON, passed with the
//!   caller's `Authorization` header to the gRPC method, whose checks (token, role,
//!   tenant) are the only ones; the answer is the response's JSON, or an HTTP status with
//!   `{"code": "NOT_FOUND", "message": "…"}`. Only the methods a desk needs pass.
//! - `GET /desk/files/{id}`: an attachment of the caller's tenant, by bearer token;
//!   `POST /desk/files?name=…`: a reply's file, passed on to ingest's upload.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use parley_domain::{AttachmentId, Role};
use parley_kit::auth::{Authenticator, Principal};
use parley_kit::axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use parley_kit::axum::extract::{DefaultBodyLimit, Path, State};
use parley_kit::axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use parley_kit::axum::response::{IntoResponse, Redirect, Response};
use parley_kit::axum::{Json, Router, routing};
use parley_kit::clock;
use parley_kit::telemetry::code_name;
use parley_proto::v1::{self, open_session_request};
use parley_proto::v1::{
    admin_service_client::AdminServiceClient, history_service_client::HistoryServiceClient,
    routing_service_client::RoutingServiceClient,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

use crate::session::{HELLO_WITHIN, Sessions};

/// The largest API body or WebSocket frame a desk may send.
const MAX_INPUT: usize = 256 * 1024;
/// The largest file the gateway passes on (ingest holds files to its own, lower limit).
const MAX_UPLOAD: usize = 64 * 1024 * 1024;

/// Where the desk's gateway finds the other services.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeskSection {
    /// Serve the web desk at all.
    pub enabled: bool,
    /// The routing service's gRPC address (it also hosts the admin API).
    pub routing_url: String,
    /// The history service's gRPC address.
    pub history_url: String,
    /// Ingest's public listener, where the desk's files are uploaded (`/v1/attachments`).
    pub ingest_url: String,
    /// How long a gateway call may take.
    pub request_timeout_secs: u64,
}

impl Default for DeskSection {
    fn default() -> Self {
        Self {
            enabled: true,
            routing_url: "http://127.0.0.1:7201".into(),
            history_url: "http://127.0.0.1:7301".into(),
            ingest_url: "http://127.0.0.1:7180".into(),
            request_timeout_secs: 15,
        }
    }
}

impl DeskSection {
    pub fn validate(&self) -> Result<(), String> {
        for (name, url) in [
            ("desk.routing_url", &self.routing_url),
            ("desk.history_url", &self.history_url),
            ("desk.ingest_url", &self.ingest_url),
        ] {
            let ok = url.parse::<http::Uri>().is_ok_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some_and(|h| !h.is_empty())
            });
            if !ok {
                return Err(format!("{name} must be an http:// or https:// address, not {url:?}"));
            }
        }
        if !(1..=300).contains(&self.request_timeout_secs) {
            return Err("desk.request_timeout_secs must be 1 to 300".into());
        }
        Ok(())
    }

    fn endpoint(&self, url: &str) -> anyhow::Result<Channel> {
        Ok(Endpoint::from_shared(url.to_owned())?
            .timeout(Duration::from_secs(self.request_timeout_secs))
            .tcp_nodelay(true)
            .connect_lazy())
    }
}

/// What the desk's routes share.
#[derive(Clone)]
pub struct Desk {
    sessions: Arc<Sessions>,
    auth: Authenticator,
    routing: RoutingServiceClient<Channel>,
    admin: AdminServiceClient<Channel>,
    history: HistoryServiceClient<Channel>,
    http: reqwest::Client,
    /// Where uploads go: ingest's `/v1/attachments`.
    uploads: String,
}

impl Desk {
    /// The gateway's clients connect on first use.
    pub fn new(settings: &DeskSection, sessions: Arc<Sessions>, auth: Authenticator) -> anyhow::Result<Self> {
        let routing = settings.endpoint(&settings.routing_url)?;
        Ok(Desk {
            sessions,
            auth,
            admin: AdminServiceClient::new(routing.clone()),
            routing: RoutingServiceClient::new(routing),
            history: HistoryServiceClient::new(settings.endpoint(&settings.history_url)?),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(settings.request_timeout_secs))
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            uploads: format!("{}/v1/attachments", settings.ingest_url.trim_end_matches('/')),
        })
    }
}

/// The desk's routes.
pub fn router(desk: Desk) -> Router {
    Router::new()
        .route("/desk", routing::get(|| async { Redirect::permanent("/desk/") }))
        .route("/desk/", routing::get(|| async { asset("index.html") }))
        .route("/desk/ws", routing::get(socket))
        .route("/desk/api/{service}/{method}", routing::post(api).layer(DefaultBodyLimit::max(MAX_INPUT)))
        .route("/desk/files", routing::post(upload).layer(DefaultBodyLimit::max(MAX_UPLOAD)))
        .route("/desk/files/{id}", routing::get(file))
        .route("/desk/{file}", routing::get(|Path(name): Path<String>| async move { asset(&name) }))
        .fallback(|uri: http::Uri| async move {
            error(StatusCode::NOT_FOUND, "NOT_FOUND", format!("no such path: {}", uri.path()))
        })
        .with_state(Arc::new(desk))
}

// ---- the app ----------------------------------------------------------------------------

/// The app's files: name, type, contents.
const ASSETS: [(&str, &str, &str); 4] = [
    ("index.html", "text/html; charset=utf-8", include_str!("../../../web/desk/index.html")),
    ("desk.js", "text/javascript; charset=utf-8", include_str!("../../../web/desk/desk.js")),
    ("i18n.js", "text/javascript; charset=utf-8", include_str!("../../../web/desk/i18n.js")),
    ("desk.css", "text/css; charset=utf-8", include_str!("../../../web/desk/desk.css")),
];

/// What the app may load and run: its own files, blobs of attachments it fetched, and its
/// own origin's sockets. No inline script, no other origin, no framing.
const CSP: &str = "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; connect-src 'self'; \
                   style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

fn asset(name: &str) -> Response {
    let Some((_, kind, body)) = ASSETS.iter().find(|(n, _, _)| *n == name) else {
        return error(StatusCode::NOT_FOUND, "NOT_FOUND", format!("the desk has no file {name:?}"));
    };
    let mut response = (StatusCode::OK, *body).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// An error as the desk reads it.
fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (status, Json(json!({ "code": code, "message": message.into() }))).into_response()
}

/// The HTTP status that says what a gRPC status says.
fn http_status(code: tonic::Code) -> StatusCode {
    use tonic::Code::*;
    match code {
        Ok => StatusCode::OK,
        InvalidArgument | OutOfRange => StatusCode::BAD_REQUEST,
        Unauthenticated => StatusCode::UNAUTHORIZED,
        PermissionDenied => StatusCode::FORBIDDEN,
        NotFound => StatusCode::NOT_FOUND,
        AlreadyExists | Aborted => StatusCode::CONFLICT,
        FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Cancelled | Unknown | Internal | DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn status_error(s: &Status) -> Response {
    error(http_status(s.code()), code_name(s.code()), s.message())
}

// ---- the gateway ------------------------------------------------------------------------

/// Reads the body as request `T` (an empty body is the empty request).
fn body<T: serde::de::DeserializeOwned>(bytes: &Bytes) -> Result<T, Response> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) { b"{}" } else { bytes };
    serde_json::from_slice(bytes).map_err(|e| error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", format!("body: {e}")))
}

/// Calls `client.method` with the JSON body as `$request` and the caller's credentials.
macro_rules! pass {
    ($client:expr, $method:ident, $request:ty, $bytes:expr, $authorization:expr) => {{
        let request: $request = match body($bytes) {
            Ok(r) => r,
            Err(response) => return response,
        };
        let mut request = tonic::Request::new(request);
        request.metadata_mut().insert("authorization", $authorization);
        match $client.clone().$method(request).await {
            Ok(answer) => Json(answer.into_inner()).into_response(),
            Err(status) => status_error(&status),
        }
    }};
}

async fn api(
    State(desk): State<Arc<Desk>>,
    Path((service, method)): Path<(String, String)>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    let Some(authorization) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| tonic::metadata::MetadataValue::try_from(v).ok())
    else {
        return error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", "send the token as `Authorization: Bearer <token>`");
    };
    let a = authorization;
    let b = &bytes;
    let (r, h, ad) = (&desk.routing, &desk.history, &desk.admin);
    match (service.as_str(), method.as_str()) {
        ("routing", "SetOperatorStatus") => pass!(r, set_operator_status, v1::SetOperatorStatusRequest, b, a),
        ("routing", "GetOperatorPresence") => pass!(r, get_operator_presence, v1::GetOperatorPresenceRequest, b, a),
        ("routing", "ListOperatorPresences") => {
            pass!(r, list_operator_presences, v1::ListOperatorPresencesRequest, b, a)
        }
        ("routing", "ListOperatorConversations") => {
            pass!(r, list_operator_conversations, v1::ListOperatorConversationsRequest, b, a)
        }
        ("routing", "AcceptOffer") => pass!(r, accept_offer, v1::AcceptOfferRequest, b, a),
        ("routing", "DeclineOffer") => pass!(r, decline_offer, v1::DeclineOfferRequest, b, a),
        ("routing", "TransferConversation") => pass!(r, transfer_conversation, v1::TransferConversationRequest, b, a),
        ("routing", "CloseConversation") => pass!(r, close_conversation, v1::CloseConversationRequest, b, a),
        ("routing", "GetQueueStatus") => pass!(r, get_queue_status, v1::GetQueueStatusRequest, b, a),
        ("routing", "GetConversationPosition") => {
            pass!(r, get_conversation_position, v1::GetConversationPositionRequest, b, a)
        }
        ("routing", "IssueFastTrackCode") => pass!(r, issue_fast_track_code, v1::IssueFastTrackCodeRequest, b, a),
        ("routing", "ListFastTrackCodes") => pass!(r, list_fast_track_codes, v1::ListFastTrackCodesRequest, b, a),
        ("routing", "RevokeFastTrackCode") => pass!(r, revoke_fast_track_code, v1::RevokeFastTrackCodeRequest, b, a),
        ("history", "GetConversation") => pass!(h, get_conversation, v1::GetConversationRequest, b, a),
        ("history", "ListConversations") => pass!(h, list_conversations, v1::ListConversationsRequest, b, a),
        ("history", "ListMessages") => pass!(h, list_messages, v1::ListMessagesRequest, b, a),
        ("history", "GetCustomer") => pass!(h, get_customer, v1::GetCustomerRequest, b, a),
        ("history", "GetCustomerTimeline") => pass!(h, get_customer_timeline, v1::GetCustomerTimelineRequest, b, a),
        ("history", "SearchMessages") => pass!(h, search_messages, v1::SearchMessagesRequest, b, a),
        ("history", "ExportTranscript") => pass!(h, export_transcript, v1::ExportTranscriptRequest, b, a),
        ("history", "AddConversationNote") => pass!(h, add_conversation_note, v1::AddConversationNoteRequest, b, a),
        ("history", "ListConversationNotes") => {
            pass!(h, list_conversation_notes, v1::ListConversationNotesRequest, b, a)
        }
        ("admin", "GetOperator") => pass!(ad, get_operator, v1::GetOperatorRequest, b, a),
        ("admin", "ListOperators") => pass!(ad, list_operators, v1::ListOperatorsRequest, b, a),
        ("admin", "ListQueues") => pass!(ad, list_queues, v1::ListQueuesRequest, b, a),
        ("admin", "ListSkills") => pass!(ad, list_skills, v1::ListSkillsRequest, b, a),
        _ => error(StatusCode::NOT_FOUND, "NOT_FOUND", format!("the desk has no method {service}/{method}")),
    }
}

/// The caller of a plain HTTP request, by its bearer token.
async fn caller(auth: &Authenticator, headers: &HeaderMap) -> Result<Principal, Response> {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    auth.authenticate(authorization, clock::now())
        .await
        .map_err(|e| error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", e.to_string()))
}

async fn file(State(desk): State<Arc<Desk>>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let p = match caller(&desk.auth, &headers).await {
        Ok(p) => p,
        Err(response) => return response,
    };
    if p.role == Role::Platform {
        return error(StatusCode::FORBIDDEN, "PERMISSION_DENIED", "attachments belong to a tenant");
    }
    let id = match AttachmentId::parse(&id) {
        Ok(id) => id,
        Err(e) => return error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", format!("attachment id: {e}")),
    };
    match desk.sessions.store.get(&p.tenant, id).await {
        Ok(Some((stored, bytes))) => stored.response(bytes),
        Ok(None) => error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such attachment, or it is not fetched yet"),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", e.to_string()),
    }
}

/// A reply's file, passed on to ingest's upload (its checks: token, type, size) as it came.
async fn upload(State(desk): State<Arc<Desk>>, uri: http::Uri, headers: HeaderMap, bytes: Bytes) -> Response {
    let url = match uri.query() {
        Some(q) => format!("{}?{q}", desk.uploads),
        None => desk.uploads.clone(),
    };
    let mut request = desk.http.post(url).body(bytes);
    for name in [header::AUTHORIZATION, header::CONTENT_TYPE] {
        if let Some(v) = headers.get(&name) {
            request = request.header(name, v.clone());
        }
    }
    let answer = match request.send().await {
        Ok(a) => a,
        Err(e) => {
            return error(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", format!("the upload service: {e}"));
        }
    };
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let kind = answer.headers().get(header::CONTENT_TYPE).cloned();
    match answer.bytes().await {
        Ok(body) => {
            let mut response = (status, body).into_response();
            if let Some(k) = kind {
                response.headers_mut().insert(header::CONTENT_TYPE, k);
            }
            response
        }
        Err(e) => error(StatusCode::BAD_GATEWAY, "UNAVAILABLE", format!("the upload service: {e}")),
    }
}

// ---- the session ------------------------------------------------------------------------

async fn socket(State(desk): State<Arc<Desk>>, upgrade: WebSocketUpgrade) -> Response {
    upgrade.max_message_size(MAX_INPUT).on_upgrade(move |socket| serve(desk, socket))
}

/// The frame that ends a session with an error.
fn error_frame(status: &Status) -> WsMessage {
    WsMessage::Text(
        json!({ "error": { "code": code_name(status.code()), "message": status.message() } }).to_string().into(),
    )
}

/// Reads one text frame as an `OpenSessionRequest` (plus the token, in the first one).
fn read_frame(message: WsMessage) -> Result<Option<(Option<String>, v1::OpenSessionRequest)>, Status> {
    let text = match message {
        WsMessage::Text(t) => t,
        WsMessage::Close(_) => return Ok(None),
        WsMessage::Binary(_) => return Err(Status::invalid_argument("frames are JSON text, not binary")),
        // Answered by the socket itself.
        WsMessage::Ping(_) | WsMessage::Pong(_) => return Ok(Some((None, v1::OpenSessionRequest::default()))),
    };
    let mut value: Value =
        serde_json::from_str(text.as_str()).map_err(|e| Status::invalid_argument(format!("frame: {e}")))?;
    let token = match value.as_object_mut().and_then(|o| o.remove("token")) {
        Some(Value::String(t)) => Some(t),
        Some(_) => return Err(Status::invalid_argument("frame: token must be a string")),
        None => None,
    };
    let request = serde_json::from_value(value).map_err(|e| Status::invalid_argument(format!("frame: {e}")))?;
    Ok(Some((token, request)))
}

/// Tells the desk why its session was not opened, and closes.
async fn refuse(mut socket: WebSocket, status: Status) {
    let _ = socket.send(error_frame(&status)).await;
    let _ = socket.send(WsMessage::Close(Some(CloseFrame { code: 1008, reason: "refused".into() }))).await;
}

async fn serve(desk: Arc<Desk>, mut socket: WebSocket) {
    let first = match tokio::time::timeout(HELLO_WITHIN, socket.recv()).await {
        Ok(Some(Ok(m))) => read_frame(m),
        Ok(_) => return,
        Err(_) => Err(Status::deadline_exceeded("no `hello` within 10 seconds")),
    };
    let (token, hello) = match first {
        Ok(Some((Some(token), v1::OpenSessionRequest { frame: Some(open_session_request::Frame::Hello(h)) }))) => {
            (token, h)
        }
        Ok(Some((None, _))) => {
            return refuse(socket, Status::unauthenticated("the first frame must carry the token")).await;
        }
        Ok(Some(_)) => return refuse(socket, Status::invalid_argument("the first frame must be `hello`")).await,
        Ok(None) => return,
        Err(status) => return refuse(socket, status).await,
    };
    let principal = match desk.auth.authenticate(Some(&format!("Bearer {token}")), clock::now()).await {
        Ok(p) => p,
        Err(e) => return refuse(socket, Status::unauthenticated(e.to_string())).await,
    };
    let (up, incoming) = tokio::sync::mpsc::channel(64);
    let mut down =
        match desk.sessions.open(&principal, hello, tokio_stream::wrappers::ReceiverStream::new(incoming)).await {
            Ok(rx) => rx,
            Err(status) => return refuse(socket, status).await,
        };
    // A desk that sends nothing for the session's lifetime is gone, even if its socket is
    // not closed (a sleeping laptop, a dead network).
    let idle = desk.sessions.session_ttl;
    let (mut sink, mut stream) = socket.split();
    loop {
        tokio::select! {
            out = down.recv() => {
                let sent = match out {
                    Some(Ok(frame)) => match serde_json::to_string(&frame) {
                        Ok(text) => sink.send(WsMessage::Text(text.into())).await,
                        Err(e) => {
                            tracing::warn!(error = %e, "desk frame not encoded");
                            continue;
                        }
                    },
                    Some(Err(status)) => {
                        let _ = sink.send(error_frame(&status)).await;
                        break;
                    }
                    None => break,
                };
                if sent.is_err() {
                    break;
                }
            }
            up_frame = tokio::time::timeout(idle, stream.next()) => {
                let message = match up_frame {
                    Ok(Some(Ok(m))) => m,
                    Ok(_) => break,
                    Err(_) => {
                        let _ = sink.send(error_frame(&Status::deadline_exceeded("nothing from the desk within the session's lifetime; reconnect and resume"))).await;
                        break;
                    }
                };
                match read_frame(message) {
                    Ok(Some((_, request))) if request.frame.is_none() => {}
                    Ok(Some((_, request))) => {
                        if up.send(Ok(request)).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        let _ = sink.send(error_frame(&status)).await;
                        break;
                    }
                }
            }
        }
    }
    let _ = sink.send(WsMessage::Close(None)).await;
}
