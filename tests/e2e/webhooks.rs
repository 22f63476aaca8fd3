//! Provider webhooks end to end: Telegram, WhatsApp, Viber and Twilio SMS callbacks posted
//! over plain HTTP to ingest's public listener, signed here independently (hmac, sha2, sha1)
//! with the real fixtures, reach an operator's desk exactly once; forged, unsigned, foreign
//! and malformed ones are refused with a JSON error and publish nothing.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use parley_e2e::{Desk, online};
use parley_proto::prost::Message as _;
use parley_proto::v1::channel_config::Settings;
use parley_proto::{events, v1};
use parley_testkit::{App, TenantFixture, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(10);

const TG_SECRET: &str = "tg-webhook-secret-0123456789";
const WA_SECRET: &str = "test-app-secret";
const WA_VERIFY: &str = "wa-verify-token";
const VIBER_TOKEN: &str = "445da6az1s345z78-dazcczb2542zv51a-e0vc5fva17480im9";
const TWILIO_TOKEN: &str = "test-auth-token";
const TWILIO_URL: &str = "https://example.com/webhooks/twilio/sms";
/// The body limit ingest runs with in the test kit (the default, 4 MiB).
const LIMIT: usize = 4 * 1024 * 1024;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/../crates/parley-channels/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}

fn hmac_sha256_hex(key: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).expect("any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Twilio's scheme, written from its documentation: base64(HMAC-SHA1(token, url + every
/// key and value, sorted by key)).
fn twilio_signature(token: &str, url: &str, form: &[u8]) -> String {
    let mut params: Vec<(String, String)> = form_urlencoded::parse(form).into_owned().collect();
    params.sort();
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(token.as_bytes()).expect("any key length");
    mac.update(url.as_bytes());
    for (k, v) in &params {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// One HTTP/1.1 exchange over a fresh connection; returns (status, body).
async fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, String)], body: &[u8]) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect to webhooks");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    let framed = |name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
    if !framed("content-length") && !framed("transfer-encoding") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.expect("write head");
    s.write_all(body).await.expect("write body");
    let mut out = Vec::new();
    // A server that refuses a body before reading all of it may reset the connection after
    // its answer; the answer read until then is what counts.
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await.expect("answer in time");
    let out = String::from_utf8(out).expect("utf-8 answer");
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

async fn post(app: &App, path: &str, headers: &[(&str, String)], body: &[u8]) -> (u16, String) {
    http(app.webhooks_addr(), "POST", path, headers, body).await
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("json body expected ({e}): {body:?}"))
}

/// Asserts a JSON error answer with that status and code.
fn refused(answer: (u16, String), status: u16, code: &str) {
    assert_eq!(answer.0, status, "{}", answer.1);
    let v = json(&answer.1);
    assert_eq!(v["error"]["code"], code, "{v}");
    let message = v["error"]["message"].as_str().expect("error message");
    // Lowercase prose; names of provider fields keep their spelling ("MessageSid").
    assert!(message.starts_with(|c: char| c.is_lowercase()), "{message:?}");
    for secret in [TG_SECRET, WA_SECRET, VIBER_TOKEN, TWILIO_TOKEN] {
        assert!(!answer.1.contains(secret), "a secret echoed in {}", answer.1);
    }
}

fn config(id: &str, channel: v1::Channel, settings: Settings) -> v1::ChannelConfig {
    v1::ChannelConfig {
        id: id.into(),
        channel: channel as i32,
        display_name: id.into(),
        default_queue_id: "default".into(),
        settings: Some(settings),
        ..Default::default()
    }
}

fn telegram() -> v1::ChannelConfig {
    config(
        "tg",
        v1::Channel::Telegram,
        Settings::Telegram(v1::TelegramSettings { bot_token: "123:bot".into(), webhook_secret: TG_SECRET.into() }),
    )
}

fn whatsapp() -> v1::ChannelConfig {
    config(
        "wa",
        v1::Channel::Whatsapp,
        Settings::Whatsapp(v1::WhatsAppSettings {
            phone_number_id: "106540352242922".into(),
            access_token: "graph-token".into(),
            app_secret: WA_SECRET.into(),
            verify_token: WA_VERIFY.into(),
        }),
    )
}

fn viber() -> v1::ChannelConfig {
    config(
        "viber",
        v1::Channel::Viber,
        Settings::Viber(v1::ViberSettings { auth_token: VIBER_TOKEN.into(), sender_name: "Bank".into() }),
    )
}

fn sms() -> v1::ChannelConfig {
    config(
        "sms",
        v1::Channel::Sms,
        Settings::Sms(v1::SmsSettings {
            account_sid: "ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX".into(),
            auth_token: TWILIO_TOKEN.into(),
            from_number: "+14155550100".into(),
            webhook_url: TWILIO_URL.into(),
        }),
    )
}

async fn create_config(app: &App, fx: &TenantFixture, c: v1::ChannelConfig) {
    app.admin(&fx.admin_token)
        .await
        .create_channel_config(v1::CreateChannelConfigRequest { channel_config: Some(c) })
        .await
        .expect("create channel config");
}

/// A tenant whose operators take conversations on every webhook channel.
async fn tenant(app: &App, id: &str, ops: &[&str]) -> TenantFixture {
    let fx = app.tenant(id, ops).await;
    for op in ops {
        fx.edit_operator(app, op, |o| {
            o.capacity =
                [v1::Channel::Api, v1::Channel::Telegram, v1::Channel::Whatsapp, v1::Channel::Viber, v1::Channel::Sms]
                    .into_iter()
                    .map(|c| v1::ChannelCapacity { channel: c as i32, max_conversations: 5 })
                    .collect();
        })
        .await;
    }
    for c in [telegram(), whatsapp(), viber(), sms()] {
        create_config(app, &fx, c).await;
    }
    fx
}

/// A signed request for a config, as its provider would send `body`.
fn signed(c: &v1::ChannelConfig, body: &[u8]) -> Vec<(&'static str, String)> {
    match c.settings.as_ref().expect("settings") {
        Settings::Telegram(s) => vec![
            ("Content-Type", "application/json".into()),
            ("X-Telegram-Bot-Api-Secret-Token", s.webhook_secret.clone()),
        ],
        Settings::Whatsapp(s) => vec![
            ("Content-Type", "application/json".into()),
            ("X-Hub-Signature-256", format!("sha256={}", hmac_sha256_hex(&s.app_secret, body))),
        ],
        Settings::Viber(s) => vec![
            ("Content-Type", "application/json".into()),
            ("X-Viber-Content-Signature", hmac_sha256_hex(&s.auth_token, body)),
        ],
        Settings::Sms(s) => vec![
            ("Content-Type", "application/x-www-form-urlencoded".into()),
            ("X-Twilio-Signature", twilio_signature(&s.auth_token, &s.webhook_url, body)),
        ],
        other => panic!("not a webhook channel: {other:?}"),
    }
}

/// Posts until ingest knows the config (its cache follows the admin API's writes within
/// milliseconds), returning the first answer that is not a 404.
async fn post_when_known(app: &App, path: &str, headers: &[(&str, String)], body: &[u8]) -> (u16, String) {
    eventually(WAIT, "ingest knows the channel config", || async {
        let answer = post(app, path, headers, body).await;
        (answer.0 != 404).then_some(answer)
    })
    .await
}

/// The envelopes `PARLEY_INBOUND` holds after sequence `after`.
async fn inbound_after(app: &App, after: u64) -> Vec<events::InboundEnvelope> {
    let client = async_nats::connect(app.infra.nats.url()).await.expect("nats");
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream("PARLEY_INBOUND").await.expect("stream");
    let last = app.stream_len("PARLEY_INBOUND").await;
    let mut out = Vec::new();
    for seq in after + 1..=last {
        let m = stream.get_raw_message(seq).await.expect("stored message");
        out.push(events::InboundEnvelope::decode(m.payload).expect("an inbound envelope"));
    }
    out
}

async fn assigned_text(desk: &mut Desk) -> (v1::Conversation, String) {
    match desk.event(WAIT).await.kind.expect("event kind") {
        v1::desk_event::Kind::Assigned(a) => {
            let text = a.recent_messages.first().map(|m| m.text.clone()).unwrap_or_default();
            (a.conversation.expect("conversation"), text)
        }
        other => panic!("expected an assignment, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_provider_s_message_reaches_the_desk_once_however_often_it_is_posted() {
    let app = App::spawn().await;
    let fx = tenant(&app, "acme", &["anna"]).await;
    let mut desk = online(&app, &fx, "anna").await;
    let _alive = desk.keep_alive();

    let twilio_text = form_urlencoded::parse(&fixture("twilio_sms.form"))
        .find(|(k, _)| k == "Body")
        .map(|(_, v)| v.into_owned())
        .expect("fixture body");
    let cases = [
        (
            telegram(),
            "telegram_text.json",
            v1::Channel::Telegram,
            "Добрый день! Списание 1 990 ₽ по карте — я его не совершала 😡".to_owned(),
        ),
        (whatsapp(), "whatsapp_text.min.json", v1::Channel::Whatsapp, "Does it come in another color?".to_owned()),
        (viber(), "viber_message.min.json", v1::Channel::Viber, "a message to the service".to_owned()),
        (sms(), "twilio_sms.form", v1::Channel::Sms, twilio_text),
    ];
    assert_eq!(cases[3].3, "Здравствуйте, где мой заказ?");
    for (c, file, channel, text) in cases {
        let body = fixture(file);
        let headers = signed(&c, &body);
        let path = format!("/webhooks/acme/{}", c.id);
        let before = app.stream_len("PARLEY_INBOUND").await;
        let first = post_when_known(&app, &path, &headers, &body).await;
        assert_eq!(first.0, 200, "{file}: {}", first.1);
        assert_eq!(json(&first.1), serde_json::json!({"accepted": 1, "duplicates": 0}), "{file}");
        for _ in 0..2 {
            let again = post(&app, &path, &headers, &body).await;
            assert_eq!(again.0, 200, "{file}: {}", again.1);
            assert_eq!(json(&again.1), serde_json::json!({"accepted": 0, "duplicates": 1}), "{file}");
        }
        assert_eq!(app.stream_len("PARLEY_INBOUND").await, before + 1, "{file}: one message stored");
        let stored = inbound_after(&app, before).await;
        let Some(events::inbound_envelope::Kind::CustomerMessage(m)) = &stored[0].kind else {
            panic!("{file}: expected a customer message, got {:?}", stored[0]);
        };
        assert_eq!(
            (m.channel, m.channel_config_id.as_str(), m.text.as_str()),
            (channel as i32, c.id.as_str(), text.as_str())
        );

        let (conversation, seen) = assigned_text(&mut desk).await;
        assert_eq!(seen, text, "{file}");
        assert_eq!(conversation.channel, channel as i32, "{file}");
        assert_eq!(conversation.operator_id, "anna");
    }
    // Three posts of each were one message each: nothing more comes to the desk.
    desk.expect_quiet(Duration::from_millis(1500)).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_webhooks_are_refused_with_json_errors_and_publish_nothing() {
    let app = App::spawn().await;
    let fx = tenant(&app, "acme", &["anna"]).await;
    let other = app.tenant("globex", &[]).await;
    // Globex's own Telegram bot, with another secret and its own config id.
    let mut globex_tg = telegram();
    globex_tg.id = "globex-tg".into();
    globex_tg.settings = Some(Settings::Telegram(v1::TelegramSettings {
        bot_token: "456:bot".into(),
        webhook_secret: "globex-secret-9876543210".into(),
    }));
    create_config(&app, &other, globex_tg.clone()).await;

    let tg_body = fixture("telegram_text.json");
    let wa_body = fixture("whatsapp_text.min.json");
    let viber_body = fixture("viber_message.min.json");
    let sms_body = fixture("twilio_sms.form");
    // Every config is known to ingest before the refusals are judged (a 404 would prove
    // nothing otherwise): a signed but malformed body gets past the lookup to a 400.
    for c in [telegram(), whatsapp(), viber(), sms()] {
        let malformed: &[u8] = if c.id == "sms" { b"not-a-twilio-form" } else { b"{\"update_id\": " };
        let answer =
            post_when_known(&app, &format!("/webhooks/acme/{}", c.id), &signed(&c, malformed), malformed).await;
        refused(answer, 400, "malformed");
    }
    let before = app.stream_len("PARLEY_INBOUND").await;

    // --- signatures --------------------------------------------------------------------
    let tg = "/webhooks/acme/tg";
    refused(
        post(&app, tg, &[("X-Telegram-Bot-Api-Secret-Token", format!("{TG_SECRET}x"))], &tg_body).await,
        403,
        "bad_signature",
    );
    refused(post(&app, tg, &[], &tg_body).await, 401, "missing_signature");
    refused(post(&app, tg, &signed(&globex_tg, &tg_body), &tg_body).await, 403, "bad_signature");

    let mut forged = signed(&whatsapp(), &wa_body);
    let sig = &mut forged[1].1;
    let last = sig.pop().expect("hex digit");
    sig.push(if last == '0' { '1' } else { '0' });
    refused(post(&app, "/webhooks/acme/wa", &forged, &wa_body).await, 403, "bad_signature");
    refused(post(&app, "/webhooks/acme/wa", &[], &wa_body).await, 401, "missing_signature");
    // The body changed by one byte under a valid signature of the original.
    let mut tampered = wa_body.clone();
    let i = tampered.iter().position(|&b| b == b'c').expect("a 'c' in the body");
    tampered[i] = b'k';
    refused(post(&app, "/webhooks/acme/wa", &signed(&whatsapp(), &wa_body), &tampered).await, 403, "bad_signature");

    let viber_sig = hmac_sha256_hex("another-tenants-viber-token", &viber_body);
    refused(
        post(&app, "/webhooks/acme/viber", &[("X-Viber-Content-Signature", viber_sig)], &viber_body).await,
        403,
        "bad_signature",
    );
    refused(post(&app, "/webhooks/acme/viber", &[], &viber_body).await, 401, "missing_signature");

    let twilio_other = twilio_signature("another-auth-token", TWILIO_URL, &sms_body);
    refused(
        post(&app, "/webhooks/acme/sms", &[("X-Twilio-Signature", twilio_other)], &sms_body).await,
        403,
        "bad_signature",
    );
    let wrong_url = twilio_signature(TWILIO_TOKEN, "https://evil.example/hook", &sms_body);
    refused(
        post(&app, "/webhooks/acme/sms", &[("X-Twilio-Signature", wrong_url)], &sms_body).await,
        403,
        "bad_signature",
    );
    refused(post(&app, "/webhooks/acme/sms", &[], &sms_body).await, 401, "missing_signature");

    // --- endpoints that do not exist, all alike ------------------------------------------
    let tg_headers = signed(&telegram(), &tg_body);
    for path in [
        "/webhooks/ghost/tg",
        "/webhooks/acme/nope",
        "/webhooks/acme/api",
        "/webhooks/acme/globex-tg",
        "/webhooks/globex/tg",
        "/webhooks/Not%20A%20Tenant/tg",
        "/webhooks/acme",
        "/metrics",
    ] {
        refused(post(&app, path, &tg_headers, &tg_body).await, 404, "not_found");
    }
    // Globex's config under its own path with its own secret is fine (not refused, and
    // the message is globex's): proves the 404 above is about the tenant in the path.
    let globex = post_when_known(&app, "/webhooks/globex/globex-tg", &signed(&globex_tg, &tg_body), &tg_body).await;
    assert_eq!(globex.0, 200, "{}", globex.1);
    let after_globex = app.stream_len("PARLEY_INBOUND").await;
    assert_eq!(after_globex, before + 1);

    // A disabled config is no endpoint either.
    let mut disabled = viber();
    disabled.disabled = true;
    app.admin(&fx.admin_token)
        .await
        .update_channel_config(v1::UpdateChannelConfigRequest { channel_config: Some(disabled) })
        .await
        .expect("disable viber");
    let viber_headers = signed(&viber(), &viber_body);
    eventually(WAIT, "the disabled config answers 404", || async {
        let answer = post(&app, "/webhooks/acme/viber", &viber_headers, &viber_body).await;
        (answer.0 == 404).then_some(answer)
    })
    .await;

    // --- bodies ------------------------------------------------------------------------
    let not_utf8: &[u8] = b"{\"update_id\": 1, \"message\": \"\xff\xfe\"}";
    refused(post(&app, tg, &signed(&telegram(), not_utf8), not_utf8).await, 400, "invalid_utf8");
    let not_utf8_form: &[u8] = b"MessageSid=SM1&From=%2B1&Body=%FF%FE";
    let twilio_sig = twilio_signature(TWILIO_TOKEN, TWILIO_URL, b"MessageSid=SM1&From=%2B1");
    refused(
        post(&app, "/webhooks/acme/sms", &[("X-Twilio-Signature", twilio_sig)], not_utf8_form).await,
        400,
        "invalid_utf8",
    );
    let not_json: &[u8] = b"<xml>hello</xml>";
    refused(post(&app, "/webhooks/acme/wa", &signed(&whatsapp(), not_json), not_json).await, 400, "malformed");
    // A declared length over the limit is refused before anything is read.
    let too_long = (LIMIT + 1).to_string();
    refused(post(&app, tg, &[("Content-Length", too_long)], b"").await, 413, "too_large");
    // And a body that really is over the limit, sent in chunks without a length.
    let big = vec![b' '; LIMIT + 1];
    let mut chunked = format!("{:x}\r\n", big.len()).into_bytes();
    chunked.extend_from_slice(&big);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    refused(post(&app, tg, &[("Transfer-Encoding", "chunked".into())], &chunked).await, 413, "too_large");

    // --- WhatsApp's verification handshake ---------------------------------------------------
    let wa = app.webhooks_addr();
    let query =
        |token: &str| format!("/webhooks/acme/wa?hub.mode=subscribe&hub.verify_token={token}&hub.challenge=1158201444");
    let (status, body) = http(wa, "GET", &query(WA_VERIFY), &[], b"").await;
    assert_eq!((status, body.as_str()), (200, "1158201444"));
    refused(http(wa, "GET", &query("wrong-token"), &[], b"").await, 403, "bad_verify_token");
    refused(
        http(wa, "GET", "/webhooks/acme/tg?hub.mode=subscribe&hub.verify_token=x&hub.challenge=1", &[], b"").await,
        404,
        "not_found",
    );

    assert_eq!(app.stream_len("PARLEY_INBOUND").await, after_globex, "no refused webhook published anything");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn whatsapp_statuses_become_delivery_receipts_and_routing_goes_on() {
    let app = App::spawn().await;
    let fx = tenant(&app, "acme", &["anna"]).await;
    let mut desk = online(&app, &fx, "anna").await;
    let _alive = desk.keep_alive();

    // Real-shaped statuses of one message Parley sent: sent, delivered, then another failed
    // outside the 24-hour window.
    let statuses = serde_json::json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
            "statuses": [
                {"id": "wamid.OUT1", "status": "sent", "timestamp": "1763801000", "recipient_id": "79161234567"},
                {"id": "wamid.OUT1", "status": "delivered", "timestamp": "1763801100", "recipient_id": "79161234567"},
                {"id": "wamid.OUT2", "status": "failed", "timestamp": "1763801200", "recipient_id": "79161234567",
                 "errors": [{"code": 131047, "title": "Re-engagement message",
                             "message": "Re-engagement message", "error_data": {"details": "more than 24 hours"}}]}
            ]}}]}]
    })
    .to_string()
    .into_bytes();
    let before = app.stream_len("PARLEY_INBOUND").await;
    let answer = post_when_known(&app, "/webhooks/acme/wa", &signed(&whatsapp(), &statuses), &statuses).await;
    assert_eq!(answer.0, 200, "{}", answer.1);
    assert_eq!(json(&answer.1), serde_json::json!({"accepted": 3, "duplicates": 0}));
    let again = post(&app, "/webhooks/acme/wa", &signed(&whatsapp(), &statuses), &statuses).await;
    assert_eq!(json(&again.1), serde_json::json!({"accepted": 0, "duplicates": 3}));

    let receipts: Vec<events::DeliveryReceipt> = inbound_after(&app, before)
        .await
        .into_iter()
        .map(|e| match e.kind {
            Some(events::inbound_envelope::Kind::DeliveryReceipt(r)) => r,
            other => panic!("expected a receipt, got {other:?}"),
        })
        .collect();
    let seen: Vec<(&str, i32, &str)> =
        receipts.iter().map(|r| (r.provider_message_id.as_str(), r.state, r.error_code.as_str())).collect();
    assert_eq!(
        seen,
        [
            ("wamid.OUT1", v1::DeliveryState::Sent as i32, ""),
            ("wamid.OUT1", v1::DeliveryState::Delivered as i32, ""),
            ("wamid.OUT2", v1::DeliveryState::Failed as i32, "131047"),
        ]
    );
    assert!(receipts.iter().all(|r| r.tenant_id == "acme" && r.channel_config_id == "wa"));
    assert_eq!(receipts[1].state_time.as_ref().map(|t| t.seconds), Some(1_763_801_100));

    // Routing acknowledged the receipts and goes on: a customer message after them is
    // assigned as usual.
    let body = fixture("whatsapp_text.min.json");
    let answer = post(&app, "/webhooks/acme/wa", &signed(&whatsapp(), &body), &body).await;
    assert_eq!(answer.0, 200, "{}", answer.1);
    let (conversation, text) = assigned_text(&mut desk).await;
    assert_eq!(text, "Does it come in another color?");
    assert_eq!(conversation.channel, v1::Channel::Whatsapp as i32);
    app.stop().await;
}
