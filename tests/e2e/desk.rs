//! The web desk's server side, as a browser speaks it: the app's files, the operator
//! session as JSON over a WebSocket on the notification service's HTTP listener (resuming
//! after a drop with nothing lost or repeated), the JSON gateway to routing and history,
//! attachments by token, and the widget's script and cross-origin answers on ingest. Bad
//! tokens, frames, bodies and methods get JSON errors that say what is wrong.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use parley_e2e::submit;
use parley_proto::v1;
use parley_testkit::{App, eventually};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite;

const WAIT: Duration = Duration::from_secs(10);

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A desk's socket, which sends a heartbeat every half second while the test reads it (as
/// the desk does), so the operator stays connected however slow the machine.
struct Socket {
    ws: Ws,
    beat: Instant,
}

fn http(app: &App) -> std::net::SocketAddr {
    app.notification.as_ref().expect("notification runs").http_addr
}

async fn connect_to(addr: std::net::SocketAddr) -> Socket {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/desk/ws")).await.expect("the socket opens");
    Socket { ws, beat: Instant::now() }
}

async fn connect(app: &App) -> Socket {
    connect_to(http(app)).await
}

async fn send(socket: &mut Socket, frame: Value) {
    socket.ws.send(tungstenite::Message::Text(frame.to_string().into())).await.expect("send a frame");
}

/// The next JSON frame; `None` once the socket is closed.
async fn frame(socket: &mut Socket) -> Option<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "a frame in time");
        if socket.beat.elapsed() >= Duration::from_millis(500) {
            socket.beat = Instant::now();
            // The session may be gone already; reading says so.
            let _ = socket.ws.send(tungstenite::Message::Text(json!({"heartbeat": {}}).to_string().into())).await;
        }
        let Ok(next) = tokio::time::timeout(Duration::from_millis(500), socket.ws.next()).await else { continue };
        match next {
            Some(Ok(tungstenite::Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).expect("a JSON frame");
                if v.get("heartbeat").is_none() {
                    return Some(v);
                }
            }
            Some(Ok(tungstenite::Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => {}
        }
    }
}

/// Opens a desk session at `addr` resuming after `after`; the socket and its welcome.
async fn open_at(addr: std::net::SocketAddr, token: &str, after: u64) -> (Socket, Value) {
    let mut socket = connect_to(addr).await;
    send(
        &mut socket,
        json!({"token": token, "hello": {"resumeAfterSequence": after.to_string(), "clientName": "web desk"}}),
    )
    .await;
    let welcome = frame(&mut socket).await.expect("a welcome");
    (socket, welcome["welcome"].clone())
}

async fn open(app: &App, token: &str, after: u64) -> (Socket, Value) {
    open_at(http(app), token, after).await
}

/// The next desk event with `kind` (skipping other frames and events), with its sequence.
async fn event_of(socket: &mut Socket, kind: &str) -> (u64, Value) {
    loop {
        let f = frame(socket).await.expect("the session is open");
        if let Some(e) = f.get("event")
            && let Some(body) = e.get(kind)
        {
            let seq = e["sequence"].as_str().expect("sequences are strings").parse().expect("a number");
            return (seq, body.clone());
        }
    }
}

/// The texts of the next `n` messages a resumed desk is shown, each after `seen`.
async fn missed(socket: &mut Socket, seen: u64, n: usize) -> Vec<String> {
    let mut texts = Vec::new();
    while texts.len() < n {
        let (seq, m) = event_of(socket, "message").await;
        assert!(seq > seen, "nothing before the resume point");
        texts.push(m["text"].as_str().expect("text").to_owned());
    }
    texts
}

/// Sends a reply; Parley's answer, which must be `replyAccepted`.
async fn reply(socket: &mut Socket, conversation: &str, client_id: &str, text: &str) -> Value {
    let body = json!({"conversationId": conversation, "clientMessageId": client_id, "text": text});
    send(socket, json!({ "reply": body })).await;
    loop {
        let f = frame(socket).await.expect("the session is open");
        assert!(f.get("replyRejected").is_none(), "{f}");
        if let Some(a) = f.get("replyAccepted") {
            return a.clone();
        }
    }
}

/// A gateway call: (HTTP status, JSON body).
async fn call(app: &App, path: &str, token: Option<&str>, body: &str) -> (u16, Value) {
    let mut r = reqwest::Client::new().post(format!("http://{}/desk/api/{path}", http(app))).body(body.to_owned());
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let answer = r.send().await.expect("the gateway answers");
    let status = answer.status().as_u16();
    (status, serde_json::from_slice(&answer.bytes().await.expect("a body")).expect("a JSON body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_works_a_conversation_through_the_web_desk_and_misses_nothing_across_a_drop() {
    let app = App::spawn().await;
    let fx = app.tenant("acme", &["anna", "boris"]).await;
    let anna = fx.operator_token("anna").to_owned();

    let (mut ws, welcome) = open(&app, &anna, 0).await;
    assert_eq!(welcome["operatorId"], "anna");
    assert_eq!(
        welcome["heartbeatIntervalSeconds"],
        json!(parley_testkit::AppOptions::default().heartbeat_interval_secs)
    );
    let (status, presence) =
        call(&app, "routing/SetOperatorStatus", Some(&anna), r#"{"status": "OPERATOR_STATUS_ONLINE"}"#).await;
    assert_eq!(status, 200, "{presence}");
    assert_eq!(presence["presence"]["status"], "OPERATOR_STATUS_ONLINE");
    // The session's heartbeat is what makes her connected for routing.
    send(&mut ws, json!({"heartbeat": {}})).await;
    eventually(WAIT, "anna is connected", || async {
        let (_, p) = call(&app, "routing/GetOperatorPresence", Some(&anna), "").await;
        (p["presence"]["connected"] == true).then_some(())
    })
    .await;

    // Boris is at his desk too (over gRPC), to take a transfer.
    let boris = parley_e2e::online(&app, &fx, "boris").await;
    let _boris_alive = boris.keep_alive();

    let mut ingest = app.ingest_client(&fx.integrator_token).await;
    ingest.submit_message(submit("c-1", "Здравствуйте, <b>карта</b> заблокирована", "k1")).await.expect("submitted");
    let (_, assigned) = event_of(&mut ws, "assigned").await;
    let conversation = assigned["conversation"]["id"].as_str().expect("an id").to_owned();
    assert_eq!(assigned["conversation"]["channel"], "CHANNEL_API");
    assert_eq!(assigned["customerDisplayName"], "Иван Петров");
    assert_eq!(assigned["recentMessages"][0]["text"], "Здравствуйте, <b>карта</b> заблокирована");

    let accepted = reply(&mut ws, &conversation, "d-1", "Разблокируем.").await;
    assert_eq!(accepted["clientMessageId"], "d-1");
    let (seen, echoed) = event_of(&mut ws, "message").await;
    assert_eq!(
        (echoed["text"].as_str(), echoed["senderKind"].as_str()),
        (Some("Разблокируем."), Some("SENDER_KIND_OPERATOR"))
    );

    // The network drops; the customer writes twice meanwhile.
    drop(ws);
    for (key, text) in [("k2", "Спасибо"), ("k3", "А когда?")] {
        ingest.submit_message(submit("c-1", text, key)).await.expect("submitted");
    }
    // The desk comes back with the last sequence it applied: exactly the two, in order.
    let (mut ws, welcome) = open(&app, &anna, seen).await;
    assert_eq!(welcome["resumeAfterSequence"], seen.to_string());
    assert_eq!(missed(&mut ws, seen, 2).await, ["Спасибо", "А когда?"]);
    // A reply resent after the drop with the same id is the same reply.
    let again = reply(&mut ws, &conversation, "d-1", "Разблокируем.").await;
    assert_eq!(again["messageId"], accepted["messageId"]);

    // The whole history through the gateway, and the conversation moved on with a note.
    let body = json!({"conversationId": conversation}).to_string();
    let history = eventually(WAIT, "history has the four messages", || async {
        let (status, v) = call(&app, "history/ListMessages", Some(&anna), &body).await;
        (status == 200 && v["messages"].as_array().is_some_and(|m| m.len() == 4)).then_some(v)
    })
    .await;
    assert!(history["messages"].as_array().unwrap().iter().any(|m| m["text"] == "А когда?"));
    let transfer = json!({"conversationId": conversation, "operatorId": "boris", "note": "VIP"}).to_string();
    let (status, moved) = call(&app, "routing/TransferConversation", Some(&anna), &transfer).await;
    assert_eq!(status, 200, "{moved}");
    let (_, released) = event_of(&mut ws, "released").await;
    assert_eq!(released["conversationId"], conversation.as_str());
    let (status, mine) = call(&app, "routing/ListOperatorConversations", Some(&anna), "{}").await;
    assert_eq!(status, 200, "{mine}");
    assert!(mine.get("conversations").is_none_or(|c| c.as_array().is_some_and(|c| c.is_empty())), "{mine}");

    // What the desk needs to fill its transfer dialog, readable with an operator's token.
    let (status, operators) = call(&app, "admin/ListOperators", Some(&anna), "{}").await;
    assert_eq!(status, 200, "{operators}");
    assert_eq!(operators["operators"].as_array().map(Vec::len), Some(2));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_web_desk_refuses_bad_tokens_frames_bodies_and_methods_with_json_errors() {
    let app = App::spawn().await;
    let fx = app.tenant("acme", &["anna"]).await;
    let other = app.tenant("globex", &["gina"]).await;
    let anna = fx.operator_token("anna").to_owned();

    // Session: every refusal is one error frame, then the socket closes.
    let refused = |first: Value| {
        let app = &app;
        async move {
            let mut socket = connect(app).await;
            send(&mut socket, first).await;
            let error = frame(&mut socket).await.expect("an error frame")["error"].clone();
            assert!(frame(&mut socket).await.is_none(), "the socket closes after an error");
            error
        }
    };
    let hello = json!({"resumeAfterSequence": "0"});
    let e = refused(json!({"hello": hello})).await;
    assert_eq!(e["code"], "UNAUTHENTICATED", "{e}");
    let e = refused(json!({"token": "not.a.token", "hello": hello})).await;
    assert_eq!(e["code"], "UNAUTHENTICATED", "{e}");
    let forged = format!("{}x", &anna[..anna.len() - 1]);
    let e = refused(json!({"token": forged, "hello": hello})).await;
    assert_eq!(e["code"], "UNAUTHENTICATED", "{e}");
    let e = refused(json!({"token": anna, "heartbeat": {}})).await;
    assert_eq!(
        (e["code"].as_str(), e["message"].as_str()),
        (Some("INVALID_ARGUMENT"), Some("the first frame must be `hello`"))
    );
    let e = refused(json!({"token": fx.supervisor_token, "hello": hello})).await;
    assert_eq!(e["code"], "PERMISSION_DENIED", "{e}");
    let e = refused(json!({"token": anna, "hello": {"resumeAfterSequence": "many"}})).await;
    assert_eq!(e["code"], "INVALID_ARGUMENT", "{e}");
    let mut socket = connect(&app).await;
    socket.ws.send(tungstenite::Message::Text("{not json".into())).await.unwrap();
    let e = frame(&mut socket).await.expect("an error frame");
    assert_eq!(e["error"]["code"], "INVALID_ARGUMENT", "{e}");
    // After a good hello, a bad frame ends the session the same way.
    let (mut ws, _) = open(&app, &anna, 0).await;
    ws.ws.send(tungstenite::Message::Binary(vec![1, 2, 3].into())).await.unwrap();
    let e = loop {
        let f = frame(&mut ws).await.expect("an error frame");
        if f.get("error").is_some() {
            break f;
        }
    };
    assert_eq!(e["error"]["message"], "frames are JSON text, not binary");

    // Gateway.
    let (status, e) = call(&app, "routing/GetOperatorPresence", None, "{}").await;
    assert_eq!((status, e["code"].as_str()), (401, Some("UNAUTHENTICATED")), "{e}");
    let (status, e) = call(&app, "routing/GetOperatorPresence", Some("garbage"), "{}").await;
    assert_eq!((status, e["code"].as_str()), (401, Some("UNAUTHENTICATED")), "{e}");
    let (status, e) = call(&app, "routing/AcceptOffer", Some(&anna), "{\"conversationId\": ").await;
    assert_eq!((status, e["code"].as_str()), (400, Some("INVALID_ARGUMENT")), "{e}");
    assert!(e["message"].as_str().unwrap().starts_with("body: "), "{e}");
    let (status, e) = call(&app, "routing/AcceptOffer", Some(&anna), r#"{"conversationId": 7}"#).await;
    assert_eq!(status, 400, "{e}");
    let (status, e) = call(&app, "routing/AcceptOffer", Some(&anna), r#"{"conversationId": "nope"}"#).await;
    assert_eq!((status, e["code"].as_str()), (400, Some("INVALID_ARGUMENT")), "{e}");
    let (status, e) = call(&app, "admin/IssueToken", Some(&anna), "{}").await;
    assert_eq!((status, e["message"].as_str()), (404, Some("the desk has no method admin/IssueToken")), "{e}");
    let (status, e) =
        call(&app, "routing/SetOperatorStatus", Some(&anna), r#"{"status": "OPERATOR_STATUS_BORED"}"#).await;
    assert_eq!(status, 400, "{e}");
    let answer = reqwest::Client::new()
        .post(format!("http://{}/desk/api/routing/GetOperatorPresence", http(&app)))
        .bearer_auth(&anna)
        .body(vec![0xff, 0xfe, b'{'])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 400, "invalid UTF-8");
    let answer = reqwest::Client::new()
        .post(format!("http://{}/desk/api/history/SearchMessages", http(&app)))
        .bearer_auth(&anna)
        .body(vec![b' '; 300 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 413, "oversized body");
    // Another tenant's customer is not found, through the gateway as over gRPC.
    let mut ingest = app.ingest_client(&other.integrator_token).await;
    let theirs = ingest.submit_message(submit("g-1", "hi", "g1")).await.unwrap().into_inner().customer_id;
    let body = json!({"customerId": theirs}).to_string();
    let gina = other.operator_token("gina").to_owned();
    eventually(WAIT, "history has globex's customer", || async {
        (call(&app, "history/GetCustomer", Some(&gina), &body).await.0 == 200).then_some(())
    })
    .await;
    let (status, e) = call(&app, "history/GetCustomer", Some(&anna), &body).await;
    assert_eq!((status, e["code"].as_str()), (404, Some("NOT_FOUND")), "{e}");

    // Files.
    let file = |id: &str, token: Option<&str>| {
        let mut r = reqwest::Client::new().get(format!("http://{}/desk/files/{id}", http(&app)));
        if let Some(t) = token {
            r = r.bearer_auth(t.to_owned());
        }
        async move {
            let a = r.send().await.unwrap();
            let status = a.status().as_u16();
            let body = a.bytes().await.unwrap();
            (status, serde_json::from_slice::<Value>(&body).unwrap_or_else(|e| panic!("{status} {body:?}: {e}")))
        }
    };
    let id = parley_kit::clock::new_id().to_string();
    assert_eq!(file(&id, None).await.0, 401);
    assert_eq!(file("not-an-id", Some(&anna)).await.0, 400);
    // A path the desk does not have gets a JSON answer too.
    assert_eq!(
        file("../../etc/passwd", Some(&anna)).await,
        (404, json!({"code": "NOT_FOUND", "message": "no such path: /etc/passwd"}))
    );
    let (status, e) = file(&id, Some(&anna)).await;
    assert_eq!((status, e["code"].as_str()), (404, Some("NOT_FOUND")));
    // A reply's file goes up through the desk's origin to ingest's upload, and comes back.
    let put = |token: Option<&str>, mime: &str| {
        let mut r = reqwest::Client::new()
            .post(format!("http://{}/desk/files", http(&app)))
            .query(&[("name", "квитанция.png")])
            .header("Content-Type", mime.to_owned())
            .body(crate::attachments::PNG.to_vec());
        if let Some(t) = token {
            r = r.bearer_auth(t.to_owned());
        }
        async move {
            let a = r.send().await.unwrap();
            (a.status().as_u16(), serde_json::from_slice::<Value>(&a.bytes().await.unwrap()).unwrap())
        }
    };
    let (status, uploaded) = put(Some(&anna), "image/png").await;
    assert_eq!(status, 201, "{uploaded}");
    assert_eq!(uploaded["file_name"], "квитанция.png");
    let got = reqwest::Client::new()
        .get(format!("http://{}/desk/files/{}", http(&app), uploaded["id"].as_str().unwrap()))
        .bearer_auth(&anna)
        .send()
        .await
        .unwrap();
    assert_eq!(got.headers()["content-type"], "image/png");
    assert_eq!(got.bytes().await.unwrap().as_ref(), crate::attachments::PNG);
    let (status, e) = put(None, "image/png").await;
    assert_eq!((status, e["error"]["code"].as_str()), (401, Some("unauthenticated")), "{e}");
    let (status, e) = put(Some(&anna), "application/x-msdownload").await;
    assert_eq!(status, 415, "{e}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_desk_and_widget_are_served_with_their_policies() {
    let app = App::spawn().await;
    let fx = app.tenant("acme", &["anna"]).await;
    let get = |url: String| async move { reqwest::get(url).await.expect("an answer") };

    let index = get(format!("http://{}/desk/", http(&app))).await;
    assert_eq!(index.status().as_u16(), 200);
    let csp = index.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(index.headers()["x-content-type-options"], "nosniff");
    assert!(index.text().await.unwrap().contains("desk.js"));
    for (file, kind) in [("desk.js", "text/javascript"), ("i18n.js", "text/javascript"), ("desk.css", "text/css")] {
        let r = get(format!("http://{}/desk/{file}", http(&app))).await;
        assert_eq!(r.status().as_u16(), 200, "{file}");
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with(kind), "{file}");
    }
    let missing = get(format!("http://{}/desk/secrets.txt", http(&app))).await;
    assert_eq!(missing.status().as_u16(), 404);
    assert_eq!(serde_json::from_slice::<Value>(&missing.bytes().await.unwrap()).unwrap()["code"], "NOT_FOUND");
    let r = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let bare = r.get(format!("http://{}/desk", http(&app))).send().await.unwrap();
    assert_eq!((bare.status().as_u16(), bare.headers()["location"].to_str().unwrap()), (308, "/desk/"));

    // The widget's script, and answers a tenant's site may read.
    let widget = get(format!("http://{}/widget.js", app.webhooks_addr())).await;
    assert_eq!(widget.status().as_u16(), 200);
    assert!(widget.headers()["content-type"].to_str().unwrap().starts_with("text/javascript"));
    assert!(widget.text().await.unwrap().contains("ParleyWidget"));
    let settings = v1::channel_config::Settings::Webchat(v1::WebChatSettings {
        allowed_origins: vec!["https://shop.example".into()],
        identity_secret: "site-identity-secret-0123456789".into(),
    });
    fx.create_channel_config(&app, parley_testkit::channel_config("site", v1::Channel::Webchat, settings)).await;
    let url = format!("http://{}/webchat/acme/site/sessions", app.webhooks_addr());
    let preflight = r
        .request(reqwest::Method::OPTIONS, &url)
        .header("Origin", "https://shop.example")
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "content-type")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status().as_u16(), 204);
    assert_eq!(preflight.headers()["access-control-allow-origin"], "https://shop.example");
    assert!(preflight.headers()["access-control-allow-headers"].to_str().unwrap().contains("content-type"));
    let opened = eventually(WAIT, "ingest knows the config", || {
        let (r, url) = (r.clone(), url.clone());
        async move {
            let a = r
                .post(&url)
                .header("Origin", "https://shop.example")
                .header("Content-Type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap();
            (a.status().as_u16() == 200).then_some(a)
        }
    })
    .await;
    assert_eq!(opened.headers()["access-control-allow-origin"], "https://shop.example");
    // Another site reads why it is refused.
    let refused = r.post(&url).header("Origin", "https://evil.example").body("{}").send().await.unwrap();
    assert_eq!(refused.status().as_u16(), 403);
    assert_eq!(refused.headers()["access-control-allow-origin"], "https://evil.example");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn desks_on_any_notification_replica_get_their_events_and_a_killed_replicas_desks_resume_elsewhere() {
    let app = App::spawn().await;
    let fx = app.tenant("acme", &["anna", "boris"]).await;
    let (anna, boris) = (fx.operator_token("anna").to_owned(), fx.operator_token("boris").to_owned());
    let routing = app.routing.as_ref().expect("routing runs").grpc_addr;
    let history = app.history.as_ref().expect("history runs").grpc_addr;
    // A second notification replica as its own process, to be killed with -9.
    let env = [
        ("PARLEY_NATS__URL", app.infra.nats.url()),
        ("PARLEY_REDIS__URL", app.infra.redis.url()),
        ("PARLEY_AUTH__SIGNING_KEY", app.signing_key.expose().to_owned()),
        ("PARLEY_SESSIONS__HEARTBEAT_INTERVAL_SECS", "1".to_owned()),
        ("PARLEY_SESSIONS__TTL_SECS", "3".to_owned()),
        ("PARLEY_SENDERS__ENABLED", "false".to_owned()),
        ("PARLEY_DESK__ROUTING_URL", format!("http://{routing}")),
        ("PARLEY_DESK__HISTORY_URL", format!("http://{history}")),
    ];
    let mut replica = parley_testkit::ServiceProcess::spawn("parley-notification", &env).expect("replica starts");

    // Anna's desk is on the replica; she goes online through its gateway.
    let (mut on_replica, _) = open_at(replica.http_addr, &anna, 0).await;
    let online = r#"{"status": "OPERATOR_STATUS_ONLINE"}"#;
    let status = |addr: std::net::SocketAddr, token: String| async move {
        let answer = reqwest::Client::new()
            .post(format!("http://{addr}/desk/api/routing/SetOperatorStatus"))
            .bearer_auth(token)
            .body(online)
            .send()
            .await
            .expect("the gateway answers");
        assert_eq!(answer.status().as_u16(), 200);
    };
    status(replica.http_addr, anna.clone()).await;
    let mut ingest = app.ingest_client(&fx.integrator_token).await;
    ingest.submit_message(submit("c-1", "Первое", "k1")).await.expect("submitted");
    let (_, assigned) = event_of(&mut on_replica, "assigned").await;
    let conversation = assigned["conversation"]["id"].as_str().expect("an id").to_owned();
    // Boris, on the other replica, gets the next customer.
    let (mut boris_desk, _) = open(&app, &boris, 0).await;
    status(http(&app), boris.clone()).await;
    ingest.submit_message(submit("c-2", "Второе", "k2")).await.expect("submitted");
    let (_, theirs) = event_of(&mut boris_desk, "assigned").await;
    assert_eq!(theirs["recentMessages"][0]["text"], "Второе");
    let accepted = reply(&mut on_replica, &conversation, "a-1", "Ответ").await;
    let (seen, _) = loop {
        let (seq, m) = event_of(&mut on_replica, "message").await;
        if m["id"] == accepted["messageId"] {
            break (seq, m);
        }
    };

    // The replica dies mid-session; the customer writes twice before Anna's desk is back.
    replica.kill();
    assert!(frame(&mut on_replica).await.is_none(), "the dead replica's socket closes");
    for (key, text) in [("k3", "Алло?"), ("k4", "Вы тут?")] {
        ingest.submit_message(submit("c-1", text, key)).await.expect("submitted");
    }
    let (mut back, welcome) = open(&app, &anna, seen).await;
    assert_eq!(welcome["resumeAfterSequence"], seen.to_string());
    assert_eq!(missed(&mut back, seen, 2).await, ["Алло?", "Вы тут?"], "exactly what was missed, in order");
    // Her conversation stayed hers: she is connected through the new session.
    let accepted = reply(&mut back, &conversation, "a-2", "Да, на связи").await;
    assert!(accepted["messageId"].as_str().is_some_and(|id| !id.is_empty()));
    let (_, p) = call(&app, "routing/GetOperatorPresence", Some(&anna), "").await;
    assert_eq!(p["presence"]["connected"], true, "{p}");
    // Nothing else arrives: no repeats.
    let quiet = tokio::time::timeout(Duration::from_millis(1500), async {
        loop {
            let f = frame(&mut back).await.expect("open");
            if let Some(m) = f.get("event").and_then(|e| e.get("message"))
                && m["senderKind"] == "SENDER_KIND_CUSTOMER"
            {
                return f;
            }
        }
    })
    .await;
    assert!(quiet.is_err(), "a customer message came twice: {quiet:?}");
    app.stop().await;
}

/// Regression: NATS 2.15 limits a stream to 1 000 consumers unless it says otherwise, and
/// every open desk session (and web chat visitor) follows its feed with one; the 1 001st
/// desk could not open.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn more_than_a_thousand_sessions_can_follow_their_feeds_at_once() {
    let app = App::spawn().await;
    let client = async_nats::connect(app.infra.nats.url()).await.expect("nats");
    let js = async_nats::jetstream::new(client);
    let tenant = parley_domain::TenantId::parse("acme").unwrap();
    for stream in [parley_nats::topology::DESK, parley_nats::topology::OUTBOUND] {
        let mut s = js.get_stream(stream.name).await.expect("the stream exists");
        let limit = s.info().await.expect("stream info").config.max_consumers;
        assert_eq!(limit, parley_kit::config::NatsConfig::default().max_session_consumers, "{}", stream.name);
    }
    let mut feeds = Vec::new();
    for i in 0..1_100 {
        let operator = parley_domain::OperatorId::parse(&format!("op-{i}")).unwrap();
        let subject = parley_nats::topology::desk_subject(&tenant, &operator);
        let feed = parley_nats::tail::follow(&js, parley_nats::topology::DESK, subject, 0)
            .await
            .unwrap_or_else(|e| panic!("feed {i}: {e}"));
        feeds.push(feed);
    }
    assert_eq!(feeds.len(), 1_100);
    app.stop().await;
}

/// A replica follows every desk subject once and hands events to its sessions in memory.
/// A desk that stops reading while thousands of events come is dropped ("reconnect and
/// resume") instead of holding the others up; it resumes from the last sequence it saw and
/// gets every event exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_desk_that_stops_reading_is_dropped_and_resumes_with_nothing_lost_or_repeated() {
    use futures_util::StreamExt as _;
    const EVENTS: usize = 4_000;
    let app = App::spawn().await;
    let fx = app.tenant("acme", &["anna", "boris"]).await;
    let nats = parley_nats::Nats::connect(
        &parley_kit::config::NatsConfig { url: app.infra.nats.url(), ..Default::default() },
        "test",
        WAIT,
    )
    .await
    .expect("nats");
    let publisher = nats.publisher();
    let tenant = parley_domain::TenantId::parse("acme").unwrap();
    let subject =
        |op: &str| parley_nats::topology::desk_subject(&tenant, &parley_domain::OperatorId::parse(op).unwrap());
    let event = |i: usize| v1::DeskEvent {
        kind: Some(v1::desk_event::Kind::Message(v1::Message {
            id: format!("m-{i}"),
            // Large enough that the transport's buffers cannot hold them all.
            text: format!("событие {i} {}", "x".repeat(2_000)),
            ..Default::default()
        })),
        ..Default::default()
    };
    let mut anna = parley_e2e::Desk::open(&app, fx.operator_token("anna"), 0).await.expect("anna's desk");
    let mut boris = parley_e2e::Desk::open(&app, fx.operator_token("boris"), 0).await.expect("boris's desk");
    // Anna's desk reads nothing while her events and one of Boris's are published.
    let published: Vec<()> = futures_util::stream::iter(0..EVENTS)
        .map(|i| {
            let (publisher, subject, e) = (publisher.clone(), subject("anna"), event(i));
            async move {
                let id = format!("anna-{i}");
                publisher.publish(subject, &id, &id, &e).await.expect("published");
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    assert_eq!(published.len(), EVENTS);
    publisher.publish(subject("boris"), "boris-0", "boris-0", &event(0)).await.expect("published");
    // Boris is not held up by Anna's stalled desk.
    assert_eq!(boris.try_event(WAIT).await.expect("boris's event").kind, event(0).kind);

    let mut texts = std::collections::HashSet::new();
    let ended = loop {
        match anna.try_event(WAIT).await {
            Ok(e) => assert!(texts.insert(format!("{:?}", e.kind)), "a repeat"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), tonic::Code::Unavailable, "{ended:?}");
    assert!(texts.len() < EVENTS, "the stalled desk was dropped before the end ({} of {EVENTS})", texts.len());
    let mut again = parley_e2e::Desk::open(&app, fx.operator_token("anna"), anna.last_sequence).await.expect("reopens");
    while texts.len() < EVENTS {
        let e = again.try_event(WAIT).await.expect("the rest of the events");
        assert!(texts.insert(format!("{:?}", e.kind)), "a repeat after resuming: {e:?}");
    }
    assert_eq!(texts.len(), EVENTS);
    app.stop().await;
}

/// The next presence change a team session is told: (operator, status, connected, reason).
async fn told(team: &mut parley_e2e::Desk) -> (String, v1::OperatorStatus, bool, String) {
    let event = team.event(WAIT).await;
    let Some(v1::desk_event::Kind::Presence(p)) = event.kind else { panic!("a presence change, got {event:?}") };
    assert!(p.load.is_empty(), "a presence event carries no load: {p:?}");
    (p.operator_id, v1::OperatorStatus::try_from(p.status).expect("a status"), p.connected, p.reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn supervisors_are_told_every_colleague_s_presence_change_and_resume_without_gaps() {
    use parley_e2e::{Desk, set_status};
    use v1::OperatorStatus::{Away, Offline, Online};
    let app = App::spawn().await;
    let fx = app.tenant("acme", &["anna", "boris"]).await;
    let other = app.tenant("globex", &["gina"]).await;
    let (anna, boris) = (fx.operator_token("anna"), fx.operator_token("boris"));

    // Only supervisors and admins watch the team; an operator's own desk is not for them.
    for (token, team) in [(anna, true), (fx.supervisor_token.as_str(), false)] {
        let refused = match team {
            true => Desk::open_team(&app, token, 0).await,
            false => Desk::open(&app, token, 0).await,
        };
        assert_eq!(refused.err().map(|s| s.code()), Some(tonic::Code::PermissionDenied), "team: {team}");
    }
    let mut team = Desk::open_team(&app, &fx.supervisor_token, 0).await.expect("a supervisor watches the team");
    let mut admins = Desk::open_team(&app, &fx.admin_token, 0).await.expect("an admin watches the team");
    let mut globex = Desk::open_team(&app, &other.supervisor_token, 0).await.expect("globex's supervisor too");

    // Anna's first desk connects; her second one is no news. Her status changes follow.
    let anna_desk = Desk::open(&app, anna, 0).await.expect("anna's desk");
    assert_eq!(told(&mut team).await, ("anna".into(), Offline, true, String::new()));
    let anna_second = Desk::open(&app, anna, 0).await.expect("anna's second desk");
    set_status(&app, anna, Online).await;
    assert_eq!(told(&mut team).await, ("anna".into(), Online, true, String::new()));
    let away = app
        .routing_client(anna)
        .await
        .set_operator_status(v1::SetOperatorStatusRequest {
            status: Away as i32,
            reason: "обед <b>".into(),
            ..Default::default()
        })
        .await;
    away.expect("anna goes away");
    assert_eq!(told(&mut team).await, ("anna".into(), Away, true, "обед <b>".into()));
    // The admin's session saw the same, in the same order.
    for want in [(Offline, true), (Online, true), (Away, true)] {
        let (who, status, connected, _) = told(&mut admins).await;
        assert_eq!((who.as_str(), status, connected), ("anna", want.0, want.1));
    }

    // A team session sends no replies.
    match team.reply("00000000-0000-0000-0000-000000000000", "r1", "hello").await {
        v1::open_session_response::Frame::ReplyRejected(r) => assert_eq!(r.code, "PERMISSION_DENIED", "{r:?}"),
        other => panic!("a rejection, got {other:?}"),
    }

    // The supervisor's session drops. Meanwhile anna closes both desks, and a supervisor
    // sets boris online for him (he has no desk).
    let seen = team.last_sequence;
    drop(team);
    drop(anna_desk);
    drop(anna_second);
    app.routing_client(&fx.supervisor_token)
        .await
        .set_operator_status(v1::SetOperatorStatusRequest {
            operator_id: "boris".into(),
            status: Online as i32,
            reason: String::new(),
        })
        .await
        .expect("a supervisor sets boris online");
    let (who, _, connected, _) = told(&mut admins).await;
    let (first, second) = match who.as_str() {
        "anna" => {
            assert!(!connected, "anna's last desk closed");
            (("anna", Away, false), ("boris", Online, false))
        }
        _ => (("boris", Online, false), ("anna", Away, false)),
    };
    told(&mut admins).await;
    // Resumed where it stopped, it gets both, in the stream's order, nothing twice.
    let mut team = Desk::open_team(&app, &fx.supervisor_token, seen).await.expect("the supervisor resumes");
    for want in [first, second] {
        let (who, status, connected, _) = told(&mut team).await;
        assert_eq!((who.as_str(), status, connected), want);
    }

    // A desk that hangs (no heartbeats, no close) holding a conversation is told gone once
    // its session expires.
    let mut hung = Desk::open(&app, boris, 0).await.expect("boris's desk");
    let started = Instant::now();
    assert_eq!(told(&mut team).await, ("boris".into(), Online, true, String::new()));
    let mut ingest = app.ingest_client(&fx.integrator_token).await;
    ingest.submit_message(submit("c-1", "Здравствуйте", "k1")).await.expect("submitted");
    while !matches!(hung.event(WAIT).await.kind, Some(v1::desk_event::Kind::Assigned(_))) {}
    assert_eq!(told(&mut team).await, ("boris".into(), Online, false, String::new()));
    let ttl = Duration::from_secs(parley_testkit::AppOptions::default().session_ttl_secs);
    assert!(started.elapsed() + Duration::from_millis(500) >= ttl, "told gone only after the session's TTL");
    // Once: routing, which finds him gone each second while his conversation waits for
    // him, does not tell it again.
    team.expect_quiet(Duration::from_millis(2500)).await;
    drop(hung);

    // Nothing of acme's reached globex's supervisor; gina's own desk did.
    let _gina = Desk::open(&app, other.operator_token("gina"), 0).await.expect("gina's desk");
    assert_eq!(told(&mut globex).await, ("gina".into(), Offline, true, String::new()));

    // The web desk's team session: the same events as JSON over the WebSocket.
    let (mut web, welcome) = {
        let mut socket = connect(&app).await;
        let hello = json!({"resumeAfterSequence": seen.to_string(), "clientName": "web", "team": true});
        send(&mut socket, json!({"token": fx.supervisor_token, "hello": hello})).await;
        let welcome = frame(&mut socket).await.expect("a welcome");
        (socket, welcome)
    };
    assert_eq!(welcome["welcome"]["operatorId"], "test-supervisor", "{welcome}");
    let (_, body) = event_of(&mut web, "presence").await;
    // Proto3 JSON leaves out a false `connected`.
    assert_eq!((body["operatorId"].as_str(), body.get("connected")), (Some(first.0), None), "{body}");
    app.stop().await;
}
