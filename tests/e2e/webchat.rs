//! The web chat channel end to end, as the widget speaks it: a visitor session over HTTP,
//! then a WebSocket (tokio-tungstenite, a real client) to ingest's public listener; the
//! operator's desk gets the visitor's messages once, the visitor gets the operator's
//! replies, and a visitor who drops and reconnects with the last `seq` gets exactly what
//! was missed. The long-poll fallback carries the same. Forged, foreign and expired tokens,
//! wrong origins and bad identity signatures are refused with JSON errors. A phone the
//! tenant's site signs with the user's identity links the visitor to the SMS customer with
//! that number; a phone the signature does not cover is refused.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use parley_e2e::{assigned, online};
use parley_proto::v1;
use parley_proto::v1::channel_config::Settings;
use parley_testkit::{App, TenantFixture, eventually};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite;

const WAIT: Duration = Duration::from_secs(10);
const ORIGIN: &str = "https://shop.example";
const IDENTITY_SECRET: &str = "site-identity-secret-0123456789";

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn tenant(app: &App) -> TenantFixture {
    let fx = app.tenant("acme", &["anna"]).await;
    fx.edit_operator(app, "anna", |o| {
        o.capacity.push(v1::ChannelCapacity { channel: v1::Channel::Webchat as i32, max_conversations: 5 });
    })
    .await;
    let settings = Settings::Webchat(v1::WebChatSettings {
        allowed_origins: vec![ORIGIN.into()],
        identity_secret: IDENTITY_SECRET.into(),
    });
    fx.create_channel_config(app, parley_testkit::channel_config("site", v1::Channel::Webchat, settings)).await;
    fx
}

fn url(app: &App, path: &str) -> String {
    format!("http://{}/webchat/acme/site/{path}", app.webhooks_addr())
}

/// A POST as a browser on the tenant's site sends it; (status, JSON body).
async fn post(app: &App, path: &str, origin: &str, bearer: Option<&str>, body: Value) -> (u16, Value) {
    let mut r = reqwest::Client::new()
        .post(url(app, path))
        .header("Origin", origin)
        .header("Content-Type", "application/json")
        .body(body.to_string());
    if let Some(t) = bearer {
        r = r.bearer_auth(t);
    }
    let answer = r.send().await.expect("ingest answers");
    let status = answer.status().as_u16();
    (status, serde_json::from_slice(&answer.bytes().await.expect("a body")).expect("a JSON body"))
}

/// Opens a session once ingest knows the config; the answer's JSON.
async fn session(app: &App, body: Value) -> Value {
    eventually(WAIT, "ingest knows the web chat config", || {
        let body = body.clone();
        async move {
            let (status, v) = post(app, "sessions", ORIGIN, None, body).await;
            (status == 200).then_some(v)
        }
    })
    .await
}

/// A socket as the widget opens it: the token in the first frame, not the URL.
async fn connect(app: &App, token: &str, after: u64) -> Socket {
    let mut socket = open_socket(app, &format!("after={after}")).await.expect("the socket opens");
    send(&mut socket, json!({"type": "auth", "token": token})).await;
    socket
}

/// A socket to the chat's `ws` with this query, from the site's origin.
async fn open_socket(app: &App, query: &str) -> Result<Socket, tungstenite::Error> {
    let mut request = tungstenite::client::IntoClientRequest::into_client_request(format!(
        "ws://{}/webchat/acme/site/ws?{query}",
        app.webhooks_addr()
    ))
    .expect("a request");
    request.headers_mut().insert("Origin", ORIGIN.parse().unwrap());
    tokio_tungstenite::connect_async(request).await.map(|(socket, _)| socket)
}

async fn frame(socket: &mut Socket) -> Value {
    loop {
        let m = tokio::time::timeout(WAIT, socket.next()).await.expect("a frame in time").expect("open").expect("ok");
        if let tungstenite::Message::Text(t) = m {
            return serde_json::from_str(&t).expect("a JSON frame");
        }
    }
}

/// The next frame of `type`, skipping others.
async fn next_of(socket: &mut Socket, kind: &str) -> Value {
    loop {
        let f = frame(socket).await;
        if f["type"] == kind {
            return f;
        }
    }
}

/// The next update of `kind` (skipping other updates); returns it with its seq.
async fn update_of(socket: &mut Socket, kind: &str) -> Value {
    loop {
        let f = next_of(socket, "update").await;
        if f["update"]["kind"] == kind {
            return f;
        }
    }
}

/// What the tenant's site server signs for a user it vouches for.
fn site_signature(text: &str) -> String {
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(IDENTITY_SECRET.as_bytes()).unwrap();
    m.update(text.as_bytes());
    hex::encode(m.finalize().into_bytes())
}

async fn send(socket: &mut Socket, frame: Value) {
    socket.send(tungstenite::Message::Text(frame.to_string().into())).await.expect("send a frame");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_visitor_chats_with_an_operator_and_misses_nothing_across_a_reconnect() {
    let app = App::spawn().await;
    let fx = tenant(&app).await;
    let mut desk = online(&app, &fx, "anna").await;
    let _alive = desk.keep_alive();

    let s = session(&app, json!({"name": "Иван"})).await;
    let token = s["token"].as_str().expect("a token").to_owned();
    let visitor_id = s["visitor_id"].as_str().expect("a visitor id").to_owned();
    assert_eq!(visitor_id.len(), 22, "128 random bits");
    let mut ws = connect(&app, &token, 0).await;
    assert_eq!(next_of(&mut ws, "welcome").await["customer_id"], s["customer_id"]);

    send(&mut ws, json!({"type": "message", "client_id": "m1", "text": "Здравствуйте! Где мой заказ?"})).await;
    let ok = next_of(&mut ws, "accepted").await;
    assert_eq!((ok["client_id"].as_str(), ok["duplicate"].as_bool()), (Some("m1"), Some(false)));
    // A resend after a doubtful network is the same message.
    send(&mut ws, json!({"type": "message", "client_id": "m1", "text": "Здравствуйте! Где мой заказ?"})).await;
    assert_eq!(next_of(&mut ws, "accepted").await["duplicate"], true);

    let a = assigned(&mut desk).await;
    let conversation = a.conversation.expect("conversation");
    assert_eq!(a.customer_display_name, "Иван");
    assert_eq!(a.recent_messages.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(), ["Здравствуйте! Где мой заказ?"]);
    // The visitor sees who joined, then the reply; status updates carry their
    // conversation's version, newer after older.
    let queued = update_of(&mut ws, "queued").await;
    let joined = update_of(&mut ws, "operator_joined").await;
    assert_eq!(joined["update"]["operator_name"], "Operator anna");
    assert!(
        joined["version"].as_u64() > queued["version"].as_u64() && queued["version"].as_u64() > Some(0),
        "{queued} {joined}"
    );
    let accepted = desk.reply(&conversation.id, "r1", "Добрый день! Заказ в пути.").await;
    assert!(matches!(accepted, v1::open_session_response::Frame::ReplyAccepted(_)), "{accepted:?}");
    let reply = update_of(&mut ws, "message").await;
    assert_eq!(
        (reply["update"]["text"].as_str(), reply["update"]["from"].as_str()),
        (Some("Добрый день! Заказ в пути."), Some("operator"))
    );
    let seen = reply["seq"].as_u64().expect("a seq");

    // Typing, both ways: the visitor's reaches the desk, the operator's the widget.
    send(&mut ws, json!({"type": "typing", "conversation_id": conversation.id})).await;
    loop {
        if let Some(v1::desk_event::Kind::Typing(t)) = desk.event(WAIT).await.kind {
            assert_eq!(t.conversation_id, conversation.id);
            break;
        }
    }
    desk.send(v1::open_session_request::Frame::Typing(v1::DeskTyping { conversation_id: conversation.id.clone() }))
        .await;
    assert_eq!(update_of(&mut ws, "typing").await["conversation_id"], conversation.id.as_str());

    // The network drops; two replies go out meanwhile.
    drop(ws);
    for (id, text) in [("r2", "Номер отслеживания: 4711."), ("r3", "Что-нибудь ещё?")] {
        let accepted = desk.reply(&conversation.id, id, text).await;
        assert!(matches!(accepted, v1::open_session_response::Frame::ReplyAccepted(_)), "{accepted:?}");
    }
    // Reconnecting from the last seq seen: exactly the two, in order, nothing repeated.
    let mut ws = connect(&app, &token, seen).await;
    let mut texts = Vec::new();
    let mut ids = Vec::new();
    while texts.len() < 2 {
        let f = next_of(&mut ws, "update").await;
        assert!(f["seq"].as_u64().unwrap() > seen, "nothing before the resume point: {f}");
        if f["update"]["kind"] == "message" {
            texts.push(f["update"]["text"].as_str().unwrap().to_owned());
            ids.push(f["update"]["message_id"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(texts, ["Номер отслеживания: 4711.", "Что-нибудь ещё?"]);

    // Another visitor cannot mark this visitor's replies read; the visitor can.
    let other = session(&app, json!({})).await;
    let mut intruder = connect(&app, other["token"].as_str().unwrap(), 0).await;
    send(&mut intruder, json!({"type": "read", "conversation_id": conversation.id, "message_id": ids[0]})).await;
    next_of(&mut intruder, "read_noted").await;
    send(&mut ws, json!({"type": "read", "conversation_id": conversation.id, "message_id": ids[1]})).await;
    next_of(&mut ws, "read_noted").await;
    loop {
        if let Some(v1::desk_event::Kind::Delivery(d)) = desk.event(WAIT).await.kind {
            assert_ne!(d.message_id, ids[0], "the intruder's read was recorded");
            if d.message_id == ids[1] && d.state == v1::DeliveryState::Read as i32 {
                break;
            }
        }
    }
    desk.expect_quiet(Duration::from_millis(1000)).await;

    // The same visitor in a new session (the widget kept its id) is the same customer.
    let again = session(&app, json!({"visitor_id": visitor_id})).await;
    assert_eq!(again["customer_id"], s["customer_id"]);

    // The long-poll fallback: a message posted, and the feed from the same point.
    let (status, posted) =
        post(&app, "messages", ORIGIN, Some(&token), json!({"client_id": "m2", "text": "Спасибо!"})).await;
    assert_eq!(status, 200, "{posted}");
    // (The desk also hears its own replies as recorded; the visitor's message is next.)
    let thanks = loop {
        if let Some(v1::desk_event::Kind::Message(m)) = desk.event(WAIT).await.kind
            && m.sender_kind == v1::SenderKind::Customer as i32
        {
            break m.text;
        }
    };
    assert_eq!(thanks, "Спасибо!");
    let polled = poll(&app, &token, seen).await;
    let texts: Vec<&str> = polled["updates"]
        .as_array()
        .expect("updates")
        .iter()
        .filter(|u| u["update"]["kind"] == "message")
        .map(|u| u["update"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["Номер отслеживания: 4711.", "Что-нибудь ещё?"]);
    assert!(polled["last_seq"].as_u64().unwrap() > seen);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_foreign_and_unverified_visitors_are_refused() {
    let app = App::spawn().await;
    let fx = tenant(&app).await;
    let _ = &fx;
    let s = session(&app, json!({})).await;
    let token = s["token"].as_str().unwrap().to_owned();

    // A site-verified identity: the right signature is a verified customer, a wrong one 401.
    let good = site_signature("crm-42");
    let (status, v) =
        post(&app, "sessions", ORIGIN, None, json!({"identity": {"user_id": "crm-42", "signature": good}})).await;
    assert_eq!((status, v["verified"].as_bool()), (200, Some(true)), "{v}");
    let (status, v) =
        post(&app, "sessions", ORIGIN, None, json!({"identity": {"user_id": "crm-43", "signature": good}})).await;
    assert_eq!((status, v["error"]["code"].as_str()), (401, Some("unauthenticated")), "{v}");

    // Another site's page may not open it.
    let (status, v) = post(&app, "sessions", "https://evil.example", None, json!({})).await;
    assert_eq!((status, v["error"]["code"].as_str()), (403, Some("permission_denied")), "{v}");
    // Malformed input, unknown fields, a made-up visitor id.
    for (body, why) in [
        (json!({"nmae": "typo"}), "unknown field"),
        (json!({"visitor_id": "x"}), "short visitor id"),
        (json!({"name": "a\u{0}b"}), "control character"),
    ] {
        let (status, v) = post(&app, "sessions", ORIGIN, None, body).await;
        assert_eq!((status, v["error"]["code"].as_str()), (400, Some("invalid_argument")), "{why}: {v}");
    }
    // Unknown tenant or config: one 404.
    let answer = reqwest::Client::new()
        .post(format!("http://{}/webchat/nobody/site/sessions", app.webhooks_addr()))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 404);

    // Tokens: forged, tampered, missing, or used on the wrong path.
    let (body, sig) = token.split_once('.').unwrap();
    let tampered = format!("{body}x.{sig}");
    for (t, why) in [("nonsense", "forged"), (tampered.as_str(), "tampered")] {
        let (status, v) = post(&app, "messages", ORIGIN, Some(t), json!({"client_id": "m", "text": "hi"})).await;
        assert_eq!((status, v["error"]["code"].as_str()), (401, Some("unauthenticated")), "{why}: {v}");
    }
    let (status, _) = post(&app, "messages", ORIGIN, None, json!({"client_id": "m", "text": "hi"})).await;
    assert_eq!(status, 401);
    let answer = reqwest::Client::new()
        .get(format!("http://{}/webchat/acme/other/updates?token={token}", app.webhooks_addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 404, "another config's path");
    // A socket with a bad token in its URL is refused before the upgrade; a good one is taken.
    match open_socket(&app, "token=nonsense").await {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), 401),
        other => panic!("expected 401, got {other:?}"),
    }
    let mut in_url = open_socket(&app, &format!("token={token}&after=0")).await.expect("a token in the URL");
    next_of(&mut in_url, "welcome").await;
    // The token in the first frame: a bad one, or another first frame, is an error frame,
    // then the close; a socket from a foreign origin is refused before the upgrade.
    for first in [
        json!({"type": "auth", "token": "nonsense"}),
        json!({"type": "auth", "token": tampered}),
        json!({"type": "message", "client_id": "m", "text": "hi"}),
        json!({"type": "auth"}),
    ] {
        let mut socket = open_socket(&app, "after=0").await.expect("the socket opens");
        send(&mut socket, first.clone()).await;
        let answer = frame(&mut socket).await;
        assert_eq!(
            (answer["type"].as_str(), answer["code"].as_str()),
            (Some("error"), Some("unauthenticated")),
            "{first}"
        );
        let closed = tokio::time::timeout(WAIT, socket.next()).await.expect("closed in time");
        assert!(matches!(closed, None | Some(Ok(tungstenite::Message::Close(_))) | Some(Err(_))), "{closed:?}");
    }
    let mut request = tungstenite::client::IntoClientRequest::into_client_request(format!(
        "ws://{}/webchat/acme/site/ws?after=0",
        app.webhooks_addr()
    ))
    .unwrap();
    request.headers_mut().insert("Origin", "https://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), 403),
        other => panic!("expected 403, got {other:?}"),
    }
    // Bad messages with a good token: nothing stored.
    let before = app.stream_len("PARLEY_INBOUND").await;
    for (body, why) in [
        (json!({"client_id": "", "text": "hi"}), "empty client id"),
        (json!({"client_id": "m", "text": ""}), "empty text"),
        (json!({"client_id": "m", "text": "x".repeat(5000)}), "too long"),
    ] {
        let (status, v) = post(&app, "messages", ORIGIN, Some(&token), body).await;
        assert_eq!((status, v["error"]["code"].as_str()), (400, Some("invalid_argument")), "{why}: {v}");
    }
    assert_eq!(app.stream_len("PARLEY_INBOUND").await, before, "nothing refused was stored");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_the_site_vouches_for_links_the_visitor_to_the_sms_customer() {
    let app = App::spawn().await;
    let fx = tenant(&app).await;
    let token = fx.operator_token("anna").to_owned();
    let history = app.history_client(&token).await;
    let customer = |id: String| {
        let mut history = history.clone();
        async move { history.get_customer(v1::GetCustomerRequest { customer_id: id }).await.ok()?.into_inner().customer }
    };
    // The number writes by SMS first.
    let sms = crate::identity::write(&app, parley_domain::Channel::Sms, "+79161234567", "Не приходит код").await;
    eventually(WAIT, "the SMS customer in history", || customer(sms.clone())).await;

    // The site vouches for its user u-77 and the user's phone, written its own way.
    let phone = "+7 (916) 123-45-67";
    let signed = site_signature(&format!("u-77\n{phone}"));
    let identity =
        |phone: &str, signature: &str| json!({"identity": {"user_id": "u-77", "phone": phone, "signature": signature}});
    // A phone the signature does not cover, or the user id's signature alone with a phone.
    for forged in [identity("+7 916 000-00-00", &signed), identity(phone, &site_signature("u-77"))] {
        let (status, v) = post(&app, "sessions", ORIGIN, None, forged).await;
        assert_eq!((status, v["error"]["code"].as_str()), (401, Some("unauthenticated")), "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("identity.phone"), "{v}");
    }
    let (status, v) = post(&app, "sessions", ORIGIN, None, identity("12", &site_signature("u-77\n12"))).await;
    assert_eq!((status, v["error"]["code"].as_str()), (400, Some("invalid_argument")), "{v}");
    let s = session(&app, identity(phone, &signed)).await;
    assert_eq!(s["verified"], true, "{s}");
    let visitor = s["customer_id"].as_str().unwrap().to_owned();
    let (status, v) =
        post(&app, "messages", ORIGIN, s["token"].as_str(), json!({"client_id": "m-1", "text": "Я из приложения"}))
            .await;
    assert_eq!(status, 200, "{v}");
    // A user the site vouches for without a phone stays on their own.
    let alone = session(&app, json!({"identity": {"user_id": "u-78", "signature": site_signature("u-78")}})).await;
    let (status, v) =
        post(&app, "messages", ORIGIN, alone["token"].as_str(), json!({"client_id": "m-1", "text": "Я другой"})).await;
    assert_eq!(status, 200, "{v}");

    let person = eventually(WAIT, "the visitor linked to the SMS customer", || async {
        let c = customer(visitor.clone()).await?;
        (c.identities.len() == 2).then_some(c)
    })
    .await;
    assert_eq!(person.linked, vec![v1::LinkedCustomer { customer_id: sms.clone(), reason: "verified_phone".into() }]);
    let mut addresses: Vec<&str> = person.identities.iter().map(|i| i.address.as_str()).collect();
    addresses.sort();
    assert_eq!(addresses, ["+79161234567", "user:u-77"]);
    let other =
        eventually(WAIT, "the other user in history", || customer(alone["customer_id"].as_str().unwrap().to_owned()))
            .await;
    assert_eq!(other.identities.len(), 1, "no phone, no link: {other:?}");
    assert!(other.linked.is_empty(), "{other:?}");

    // The other way round: the site's user writes first, then the number on WhatsApp.
    let first = session(
        &app,
        json!({"identity": {"user_id": "u-79", "phone": "+79165554433", "signature": site_signature("u-79\n+79165554433")}}),
    )
    .await;
    let (status, v) =
        post(&app, "messages", ORIGIN, first["token"].as_str(), json!({"client_id": "m-1", "text": "Сначала сайт"}))
            .await;
    assert_eq!(status, 200, "{v}");
    let site_user = first["customer_id"].as_str().unwrap().to_owned();
    eventually(WAIT, "the site's user in history", || customer(site_user.clone())).await;
    let whatsapp =
        crate::identity::write(&app, parley_domain::Channel::WhatsApp, "79165554433", "А теперь WhatsApp").await;
    let linked = eventually(WAIT, "the WhatsApp customer linked to the site's user", || async {
        let c = customer(whatsapp.clone()).await?;
        (!c.linked.is_empty()).then_some(c)
    })
    .await;
    assert_eq!(linked.linked, vec![v1::LinkedCustomer { customer_id: site_user, reason: "verified_phone".into() }]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_the_operator_sends_reaches_the_visitor_by_a_signed_link() {
    let app = App::spawn().await;
    let fx = tenant(&app).await;
    let mut desk = online(&app, &fx, "anna").await;
    let _alive = desk.keep_alive();
    let s = session(&app, json!({"name": "Иван"})).await;
    let token = s["token"].as_str().expect("a token").to_owned();
    let mut ws = connect(&app, &token, 0).await;
    next_of(&mut ws, "welcome").await;
    send(&mut ws, json!({"type": "message", "client_id": "m1", "text": "Пришлите квитанцию"})).await;
    let conversation = assigned(&mut desk).await.conversation.expect("conversation");

    let operator = fx.operator_token("anna");
    let (status, file) =
        crate::attachments::upload(&app, Some(operator), "image/png", "квитанция.png", crate::attachments::PNG).await;
    assert_eq!(status, 201, "{file}");
    let id = file["id"].as_str().expect("an id").to_owned();
    let reply = v1::SendReply {
        conversation_id: conversation.id.clone(),
        client_message_id: "r1".into(),
        text: "Вот она".into(),
        template: None,
        attachment_ids: vec![id.clone()],
    };
    let answer = desk.send_reply(reply).await;
    assert!(matches!(answer, v1::open_session_response::Frame::ReplyAccepted(_)), "{answer:?}");
    let update = update_of(&mut ws, "message").await;
    let files = update["update"]["attachments"].as_array().expect("the message's files").clone();
    assert_eq!(files.len(), 1, "{update}");
    assert_eq!((files[0]["id"].as_str(), files[0]["file_name"].as_str()), (Some(id.as_str()), Some("квитанция.png")));
    let link = files[0]["url"].as_str().expect("a link");
    assert!(link.starts_with("/v1/media/acme/"), "relative to the chat server: {link}");

    // The visitor's browser fetches it from the chat server without any credential.
    let got = reqwest::get(format!("http://{}{link}", app.webhooks_addr())).await.expect("ingest answers");
    assert_eq!(got.status().as_u16(), 200);
    assert_eq!(got.headers()["content-type"], "image/png");
    assert_eq!(got.bytes().await.expect("bytes").as_ref(), crate::attachments::PNG);
    // A link with its signature changed is refused.
    let last = if link.ends_with('0') { '1' } else { '0' };
    let forged = format!("{}{last}", &link[..link.len() - 1]);
    let refused = reqwest::get(format!("http://{}{forged}", app.webhooks_addr())).await.expect("ingest answers");
    assert_eq!(refused.status().as_u16(), 403);
    app.stop().await;
}

/// A file as the widget uploads it: raw body, its type, `?name=`, the visitor's token.
async fn upload_as(
    app: &App,
    token: Option<&str>,
    origin: &str,
    mime: &str,
    name: &str,
    bytes: Vec<u8>,
) -> (u16, Value) {
    let mut r = reqwest::Client::new()
        .post(url(app, "files"))
        .query(&[("name", name)])
        .header("Origin", origin)
        .header("Content-Type", mime)
        .body(bytes);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let answer = r.send().await.expect("ingest answers");
    let status = answer.status().as_u16();
    (status, serde_json::from_slice(&answer.bytes().await.expect("a body")).expect("a JSON body"))
}

/// The next message event on the desk (skipping others).
async fn desk_message(desk: &mut parley_e2e::Desk) -> v1::Message {
    loop {
        if let Some(v1::desk_event::Kind::Message(m)) = desk.event(WAIT).await.kind {
            return m;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_visitor_s_files_reach_the_operator_and_nobody_else_can_send_them() {
    use crate::attachments::PNG;
    let app = App::spawn().await;
    let fx = tenant(&app).await;
    let mut desk = online(&app, &fx, "anna").await;
    let _alive = desk.keep_alive();
    let token = session(&app, json!({"name": "Иван"})).await["token"].as_str().expect("a token").to_owned();
    let stranger = session(&app, json!({"name": "Пётр"})).await["token"].as_str().expect("a token").to_owned();

    let name = "чек <b>1001</b>.png";
    let (status, picture) = upload_as(&app, Some(&token), ORIGIN, "image/png", name, PNG.to_vec()).await;
    assert_eq!(status, 201, "{picture}");
    assert_eq!((picture["file_name"].as_str(), picture["kind"].as_str()), (Some(name), Some("image")));
    let picture = picture["id"].as_str().expect("an id").to_owned();
    let pdf_bytes = b"%PDF-1.4\n1 0 obj << >> endobj\n%%EOF\n".to_vec();
    let (status, pdf) = upload_as(&app, Some(&token), ORIGIN, "application/pdf", "акт.pdf", pdf_bytes.clone()).await;
    assert_eq!(status, 201, "{pdf}");
    let pdf = pdf["id"].as_str().expect("an id").to_owned();
    // A file the operator uploaded for a reply, and one of another visitor.
    let (_, operators) =
        crate::attachments::upload(&app, Some(fx.operator_token("anna")), "image/png", "o.png", PNG).await;
    let operators = operators["id"].as_str().expect("an id").to_owned();
    let (_, strangers) = upload_as(&app, Some(&stranger), ORIGIN, "image/png", "p.png", PNG.to_vec()).await;
    let strangers = strangers["id"].as_str().expect("an id").to_owned();

    // --- refused uploads, with a JSON error that says why -------------------------------------
    let before = app.stream_len("PARLEY_INBOUND").await;
    // (token, origin, type, name, bytes, status, code)
    let refusals = [
        (None::<&str>, ORIGIN, "image/png", "a.png", PNG.to_vec(), 401, "unauthenticated"),
        (Some("v1.forged.token"), ORIGIN, "image/png", "a.png", PNG.to_vec(), 401, "unauthenticated"),
        (Some(&token), "https://evil.example", "image/png", "a.png", PNG.to_vec(), 403, "permission_denied"),
        (Some(&token), ORIGIN, "text/html", "a.html", b"<script>1</script>".to_vec(), 415, "unsupported_type"),
        (Some(&token), ORIGIN, "image/png", "a.png", Vec::new(), 400, "invalid_argument"),
        (Some(&token), ORIGIN, "image/png", "a\u{7}b.png", PNG.to_vec(), 400, "invalid_argument"),
    ];
    for (who, origin, mime, file, bytes, status, code) in refusals {
        let (got, body) = upload_as(&app, who, origin, mime, file, bytes).await;
        assert_eq!((got, body["error"]["code"].as_str()), (status, Some(code)), "{mime} {file:?}: {body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    }
    let too_big = vec![0u8; 25 * 1024 * 1024 + 1];
    let (got, body) = upload_as(&app, Some(&token), ORIGIN, "image/png", "big.png", too_big).await;
    assert_eq!((got, body["error"]["code"].as_str()), (413, Some("too_large")), "{body}");

    // --- refused messages: files that are not the visitor's, or named wrongly ----------------------
    let mut ws = connect(&app, &token, 0).await;
    next_of(&mut ws, "welcome").await;
    let too_many: Vec<String> = (0..11).map(|_| picture.clone()).collect();
    let refused = [
        (json!([operators]), "not_found", "attachment_ids[0]"),
        (json!([picture, strangers]), "not_found", "attachment_ids[1]"),
        (json!(["not-an-id"]), "invalid_argument", "attachment_ids[0]"),
        (json!([picture, picture]), "invalid_argument", "named twice"),
        (json!(too_many), "invalid_argument", "at most 10"),
        (json!("one-id"), "invalid_argument", "a list of strings"),
    ];
    for (i, (ids, code, says)) in refused.into_iter().enumerate() {
        let client_id = format!("bad-{i}");
        send(&mut ws, json!({"type": "message", "client_id": client_id, "text": "x", "attachment_ids": ids})).await;
        let answer = next_of(&mut ws, "error").await;
        assert_eq!(answer["code"], code, "{ids}: {answer}");
        assert!(answer["message"].as_str().is_some_and(|m| m.contains(says)), "{ids}: {answer}");
    }
    // Over HTTP too (the long-poll fallback's sending).
    let (status, body) = post(
        &app,
        "messages",
        ORIGIN,
        Some(&stranger),
        json!({"client_id": "steal", "text": "", "attachment_ids": [picture]}),
    )
    .await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")), "{body}");
    assert_eq!(app.stream_len("PARLEY_INBOUND").await, before, "nothing refused was published");

    // --- the visitor's files reach the operator ----------------------------------------------------
    send(
        &mut ws,
        json!({"type": "message", "client_id": "m1", "text": "Вот чек и акт", "attachment_ids": [picture, pdf]}),
    )
    .await;
    assert_eq!(next_of(&mut ws, "accepted").await["client_id"], "m1");
    let conversation = assigned(&mut desk).await;
    let m = conversation.recent_messages.last().expect("the visitor's message");
    assert_eq!(m.text, "Вот чек и акт");
    let files: Vec<_> =
        m.attachments.iter().map(|a| (a.id.as_str(), a.file_name.as_str(), a.mime_type.as_str())).collect();
    assert_eq!(files, [(picture.as_str(), name, "image/png"), (pdf.as_str(), "акт.pdf", "application/pdf")]);
    assert_eq!(m.attachments[0].kind, v1::AttachmentKind::Image as i32);
    for (id, bytes) in [(&picture, PNG.to_vec()), (&pdf, pdf_bytes)] {
        let got = reqwest::Client::new()
            .get(format!("http://{}/v1/attachments/{id}", app.webhooks_addr()))
            .bearer_auth(fx.operator_token("anna"))
            .send()
            .await
            .expect("ingest answers");
        assert_eq!(got.status().as_u16(), 200, "{id}");
        assert_eq!(got.bytes().await.expect("bytes").to_vec(), bytes, "{id}");
    }
    // Files alone, over HTTP: the operator reads what they are. A resend is the same message.
    for _ in 0..2 {
        let body = json!({"client_id": "m2", "attachment_ids": [picture]});
        let (status, answer) = post(&app, "messages", ORIGIN, Some(&token), body).await;
        assert_eq!(status, 200, "{answer}");
    }
    let m = desk_message(&mut desk).await;
    assert_eq!((m.text.as_str(), m.attachments.len()), ("[photo]", 1));
    desk.expect_quiet(Duration::from_millis(1000)).await;
    app.stop().await;
}

/// A long poll as the widget sends it (the token as a bearer header): the answer's JSON.
async fn poll(app: &App, token: &str, after: u64) -> Value {
    let answer = reqwest::Client::new()
        .get(url(app, &format!("updates?after={after}")))
        .bearer_auth(token)
        .header("Origin", ORIGIN)
        .send()
        .await
        .expect("ingest answers");
    assert_eq!(answer.status().as_u16(), 200);
    serde_json::from_slice(&answer.bytes().await.expect("a body")).expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_visitor_who_polls_only_after_writing_gets_everything_since_the_session_opened() {
    let app = App::spawn().await;
    let fx = tenant(&app).await;
    let mut desk = online(&app, &fx, "anna").await;
    let _alive = desk.keep_alive();
    // Another visitor's chat first, so the stream is not empty when Оля's session opens.
    let other = session(&app, json!({})).await["token"].as_str().expect("a token").to_owned();
    let (status, _) = post(&app, "messages", ORIGIN, Some(&other), json!({"client_id": "o1", "text": "Алло"})).await;
    assert_eq!(status, 200);
    assigned(&mut desk).await;
    eventually(WAIT, "the other visitor's updates are on the stream", || async {
        (app.stream_len("PARLEY_OUTBOUND").await > 0).then_some(())
    })
    .await;

    // The widget in long-poll mode posts its first message before its first poll.
    let s = session(&app, json!({"name": "Оля"})).await;
    let token = s["token"].as_str().expect("a token").to_owned();
    let after = s["after"].as_u64().expect("where the visitor's updates start");
    assert!(after > 0, "the session says where the stream is: {s}");
    let (status, posted) =
        post(&app, "messages", ORIGIN, Some(&token), json!({"client_id": "m1", "text": "Добрый день"})).await;
    assert_eq!(status, 200, "{posted}");
    let conversation = assigned(&mut desk).await.conversation.expect("conversation");
    let answer = desk.reply(&conversation.id, "r1", "Здравствуйте, Оля").await;
    assert!(matches!(answer, v1::open_session_response::Frame::ReplyAccepted(_)), "{answer:?}");
    // Its polls from the session's `after` have everything since, though it all came first;
    // so do polls from 0 (every update kept for her), and nothing of the other visitor's.
    for from in [after, 0] {
        let mut seen = from;
        let mut kinds: Vec<(String, String)> = Vec::new();
        while !kinds.iter().any(|(k, t)| k == "message" && t == "Здравствуйте, Оля") {
            let polled = poll(&app, &token, seen).await;
            for u in polled["updates"].as_array().expect("updates") {
                let text = u["update"]["text"].as_str().unwrap_or_default().to_owned();
                kinds.push((u["update"]["kind"].as_str().unwrap_or_default().to_owned(), text));
            }
            let last = polled["last_seq"].as_u64().expect("last_seq");
            assert!(last >= seen, "an answer never goes back: {last} after {seen}");
            seen = last;
        }
        assert!(kinds.iter().any(|(k, _)| k == "operator_joined"), "from {from}: {kinds:?}");
        assert_eq!(kinds.iter().filter(|(k, _)| k == "message").count(), 1, "from {from}: {kinds:?}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_visitor_sees_when_the_operator_has_read_their_messages() {
    let app = App::spawn().await;
    let fx = tenant(&app).await;
    let mut desk = online(&app, &fx, "anna").await;
    let _alive = desk.keep_alive();
    let token = session(&app, json!({"name": "Иван"})).await["token"].as_str().expect("a token").to_owned();
    let mut ws = connect(&app, &token, 0).await;
    next_of(&mut ws, "welcome").await;
    let mut ids = Vec::new();
    for (client_id, text) in [("m1", "Первое"), ("m2", "Второе")] {
        send(&mut ws, json!({"type": "message", "client_id": client_id, "text": text})).await;
        ids.push(next_of(&mut ws, "accepted").await["message_id"].as_str().expect("an id").to_owned());
    }
    let assignment = assigned(&mut desk).await;
    let conversation = assignment.conversation.expect("conversation").id;
    // The second is on the desk too (with the assignment, or after it).
    if !assignment.recent_messages.iter().any(|m| m.id == ids[1]) {
        while desk_message(&mut desk).await.id != ids[1] {}
    }
    let read = |message: &str| {
        v1::open_session_request::Frame::Read(v1::DeskRead {
            conversation_id: conversation.clone(),
            message_id: message.to_owned(),
        })
    };
    // A message that is not the customer's, and a malformed id, are ignored.
    desk.send(read("0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b")).await;
    desk.send(read("not-an-id")).await;
    // The operator has seen up to the second: the widget is told it was read.
    desk.send(read(&ids[1])).await;
    let update = update_of(&mut ws, "delivery").await;
    assert_eq!(
        (update["update"]["message_id"].as_str(), update["update"]["state"].as_str()),
        (Some(ids[1].as_str()), Some("read")),
        "{update}"
    );
    app.stop().await;
}

/// Consumers `PARLEY_OUTBOUND` has now.
async fn outbound_consumers(app: &App) -> usize {
    let js = async_nats::jetstream::new(async_nats::connect(app.infra.nats.url()).await.expect("nats"));
    let mut stream = js.get_stream("PARLEY_OUTBOUND").await.expect("the stream");
    stream.info().await.expect("its info").state.consumer_count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn visitors_share_their_replica_s_feed_instead_of_a_consumer_each() {
    let app = App::spawn().await;
    let fx = tenant(&app).await;
    let mut desk = online(&app, &fx, "anna").await;
    let _alive = desk.keep_alive();
    let before = outbound_consumers(&app).await;
    let mut visitors = Vec::new();
    for i in 0..20 {
        let token = session(&app, json!({"name": format!("Гость {i}")})).await["token"].as_str().unwrap().to_owned();
        let mut ws = connect(&app, &token, 0).await;
        next_of(&mut ws, "welcome").await;
        visitors.push(ws);
    }
    // Each join reads its backlog through a consumer that goes once read; then twenty open
    // sockets hold none.
    eventually(WAIT, "the joins' consumers are gone", || async {
        let now = outbound_consumers(&app).await;
        (now <= before + 2).then_some(now)
    })
    .await;
    // And they still get what is theirs, live.
    let last = visitors.last_mut().expect("a visitor");
    send(last, json!({"type": "message", "client_id": "m1", "text": "Есть кто?"})).await;
    let conversation = assigned(&mut desk).await.conversation.expect("conversation");
    let answer = desk.reply(&conversation.id, "r1", "Да, слушаю").await;
    assert!(matches!(answer, v1::open_session_response::Frame::ReplyAccepted(_)), "{answer:?}");
    let update = update_of(last, "message").await;
    assert_eq!(update["update"]["text"], "Да, слушаю");
    app.stop().await;
}
