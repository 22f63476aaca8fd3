//! The crate's one integration test binary: every fixture parses to the values it holds,
//! every signature vector verifies and every tampered one fails, outbound bodies have the
//! provider's shape, responses are classified, and no input makes a parser panic.

use std::time::Duration;

use parley_channels::email::{self, AutoReply};
use parley_channels::segments::{self, SegmentCount, SmsEncoding};
use parley_channels::twilio::{self, TwilioSender};
use parley_channels::viber::{self, ViberContent};
use parley_channels::whatsapp::{self, MediaSource, WindowState};
use parley_channels::{
    ChannelError, DeliveryReceipt, HttpResponse, Inbound, InboundMessage, MAX_WEBHOOK_BYTES, MediaKind, SendOutcome,
    telegram,
};
use parley_domain::message::DeliveryState;
use parley_domain::{Channel, ConversationId, MessageId};
use serde_json::{Value, json};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn one_message(events: Vec<Inbound>) -> InboundMessage {
    assert_eq!(events.len(), 1, "{events:?}");
    match events.into_iter().next().unwrap() {
        Inbound::Message(m) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

fn receipt(event: &Inbound) -> &DeliveryReceipt {
    match event {
        Inbound::Receipt(r) => r,
        other => panic!("expected a receipt, got {other:?}"),
    }
}

fn ignored_reason(events: Vec<Inbound>) -> String {
    assert_eq!(events.len(), 1, "{events:?}");
    match events.into_iter().next().unwrap() {
        Inbound::Ignored { reason } => reason,
        other => panic!("expected ignored, got {other:?}"),
    }
}

fn body_json(req: &parley_channels::OutboundRequest) -> Value {
    serde_json::from_slice(&req.body).unwrap()
}

/// Flips one byte so a payload or signature no longer matches.
fn tamper(bytes: &[u8], at: usize) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[at] ^= 0x01;
    out
}

// ---------------------------------------------------------------- Telegram

#[test]
fn telegram_text_with_reply_context() {
    let m = one_message(telegram::parse_update(&fixture("telegram_text.json")).unwrap());
    assert_eq!(m.channel, Channel::Telegram);
    assert_eq!(m.provider_message_id, "5123456789:4107");
    assert_eq!(m.edit_of, None);
    assert_eq!(m.account, None);
    assert_eq!(m.sender.external_id, "5123456789");
    assert_eq!(m.sender.display_name.as_deref(), Some("Мария Смирнова"));
    assert_eq!(m.sender.language.as_deref(), Some("ru"));
    assert_eq!(m.reply_address, "5123456789");
    assert_eq!(m.text, "Добрый день! Списание 1 990 ₽ по карте — я его не совершала 😡");
    assert!(m.attachments.is_empty());
    let q = m.quoted.unwrap();
    assert_eq!(q.channel_message_id, "5123456789:4100");
    assert_eq!(q.text, "Списание 1 990 ₽, карта *4411, STORE-77. Остаток 12 004 ₽");
    assert_eq!(m.sent_at, 1_763_800_000_000);
}

#[test]
fn telegram_photo_takes_the_largest_size_and_the_caption() {
    let m = one_message(telegram::parse_update(&fixture("telegram_photo.json")).unwrap());
    assert_eq!(m.provider_message_id, "5123456789:4108");
    assert_eq!(m.text, "Вот чек");
    assert_eq!(m.sender.display_name.as_deref(), Some("Мария"));
    assert_eq!(m.attachments.len(), 1);
    let a = &m.attachments[0];
    assert_eq!(a.kind, MediaKind::Image);
    assert_eq!(a.provider_ref, "AgACAgIAAxkBAAIQC2YAAS");
    assert_eq!(a.size, Some(98123));
}

#[test]
fn telegram_edit_is_its_own_event_pointing_at_the_original() {
    let m = one_message(telegram::parse_update(&fixture("telegram_edited.json")).unwrap());
    assert_eq!(m.provider_message_id, "5123456789:4107:edit:1763800123");
    assert_eq!(m.edit_of.as_deref(), Some("5123456789:4107"));
    assert_eq!(m.sent_at, 1_763_800_123_000);
    assert_eq!(m.text, "Добрый день! Списание 1 990 ₽ по карте — я его не совершала");
    assert_eq!(telegram::parse_message_key(&m.provider_message_id), Some((5_123_456_789, 4107)));
}

#[test]
fn telegram_media_kinds() {
    let doc = one_message(telegram::parse_update(&fixture("telegram_document.json")).unwrap());
    assert_eq!(doc.text, "Выписка за ноябрь");
    let a = &doc.attachments[0];
    assert_eq!(
        (a.kind, a.provider_ref.as_str(), a.mime.as_deref(), a.file_name.as_deref(), a.size),
        (MediaKind::Document, "BQACAgIAAxkBAAIQDmYAAQdoc", Some("application/pdf"), Some("выписка.pdf"), Some(48213))
    );

    let voice = one_message(telegram::parse_update(&fixture("telegram_voice.json")).unwrap());
    assert_eq!(voice.text, "");
    assert_eq!(voice.attachments[0].kind, MediaKind::Voice);
    assert_eq!(voice.attachments[0].mime.as_deref(), Some("audio/ogg"));

    let sticker = one_message(telegram::parse_update(&fixture("telegram_sticker.json")).unwrap());
    assert_eq!(sticker.attachments[0].kind, MediaKind::Sticker);
    assert_eq!(sticker.attachments[0].provider_ref, "CAACAgIAAxkBAAIQEWYAAStkr");

    let video = one_message(telegram::parse_update(&fixture("telegram_video_reply_caption.json")).unwrap());
    assert_eq!(video.attachments[0].kind, MediaKind::Video);
    assert_eq!(video.attachments[0].file_name.as_deref(), Some("IMG_0042.MOV"));
    // The quoted message had no text, only a caption: the caption is its text.
    assert_eq!(video.quoted.as_ref().map(|q| q.text.as_str()), Some("Вот чек"));
    assert_eq!(video.quoted.map(|q| q.channel_message_id), Some("5123456789:4108".to_owned()));

    let loc = one_message(telegram::parse_update(&fixture("telegram_location.json")).unwrap());
    let l = loc.location.unwrap();
    assert_eq!((l.latitude, l.longitude), (55.755826, 37.6173));
}

#[test]
fn telegram_ignores_what_parley_does_not_handle() {
    let reason = ignored_reason(telegram::parse_update(&fixture("telegram_channel_post.json")).unwrap());
    assert!(reason.contains("channel_post"), "{reason}");
    let reason = ignored_reason(telegram::parse_update(&fixture("telegram_group.json")).unwrap());
    assert!(reason.contains("group"), "{reason}");
    let reason = ignored_reason(telegram::parse_update(&fixture("telegram_member_joined.json")).unwrap());
    assert!(reason.contains("no text"), "{reason}");
    let from_bot = br#"{"update_id":1,"message":{"message_id":5,"from":{"id":7000000001,"is_bot":true,"first_name":"Bank Alerts"},"chat":{"id":7000000001,"type":"private"},"date":1763799000,"text":"hi"}}"#;
    assert!(ignored_reason(telegram::parse_update(from_bot).unwrap()).contains("bot"));
    let callback = br#"{"update_id":2,"callback_query":{"id":"4382bfdwdsb323b2d9","from":{"id":1,"is_bot":false,"first_name":"A"},"chat_instance":"-1","data":"x"}}"#;
    assert!(ignored_reason(telegram::parse_update(callback).unwrap()).contains("callback_query"));
}

#[test]
fn telegram_refuses_malformed_updates() {
    let text = fixture("telegram_text.json");
    assert!(
        matches!(telegram::parse_update(&text[..text.len() / 2]), Err(ChannelError::Malformed(m)) if m.contains("truncated"))
    );
    assert!(matches!(telegram::parse_update(b"{\"update_id\":\"one\"}"), Err(ChannelError::Malformed(_))));
    assert!(matches!(telegram::parse_update(b"{\"message\":{}}"), Err(ChannelError::Malformed(_))));
    let wrong_type = br#"{"update_id":1,"message":{"message_id":5,"from":{"id":1,"is_bot":false,"first_name":"A"},"chat":{"id":1,"type":"private"},"date":1,"text":42}}"#;
    assert!(matches!(telegram::parse_update(wrong_type), Err(ChannelError::Malformed(_))));
    assert_eq!(telegram::parse_update(b"{\"update_id\":1,\"x\":\"\xff\"}"), Err(ChannelError::InvalidUtf8));
    assert_eq!(telegram::parse_update(b"[]").unwrap_err().code(), "malformed");
    let huge = vec![b' '; MAX_WEBHOOK_BYTES + 1];
    assert_eq!(telegram::parse_update(&huge), Err(ChannelError::TooLarge { limit: MAX_WEBHOOK_BYTES }));
}

#[test]
fn telegram_secret_token_is_compared_exactly() {
    assert_eq!(telegram::verify_secret_token("s3cr3t-Token_1", Some("s3cr3t-Token_1")), Ok(()));
    assert_eq!(
        telegram::verify_secret_token("s3cr3t-Token_1", Some("s3cr3t-Token_2")),
        Err(ChannelError::BadSignature)
    );
    assert_eq!(telegram::verify_secret_token("s3cr3t-Token_1", Some("s3cr3t-Token_")), Err(ChannelError::BadSignature));
    assert_eq!(telegram::verify_secret_token("s3cr3t-Token_1", None), Err(ChannelError::MissingSignature));
    assert_eq!(telegram::verify_secret_token("s3cr3t-Token_1", Some("")), Err(ChannelError::MissingSignature));
    // A bot configured without a secret accepts nothing rather than everything.
    assert_eq!(telegram::verify_secret_token("", Some("x")), Err(ChannelError::BadSignature));
}

#[test]
fn telegram_outbound_bodies() {
    let req = telegram::send_message("5123456789", "Здравствуйте, Мария!", Some(4107));
    assert_eq!(req.path, "sendMessage");
    assert_eq!(req.content_type, "application/json");
    assert_eq!(
        body_json(&req),
        json!({"chat_id": 5123456789i64, "text": "Здравствуйте, Мария!",
               "reply_parameters": {"message_id": 4107, "allow_sending_without_reply": true}})
    );
    let req = telegram::send_message("@bank_news", "hi", None);
    assert_eq!(body_json(&req), json!({"chat_id": "@bank_news", "text": "hi"}));
    let req = telegram::send_photo("42", "AgACAgIAAxkBAAIQC2YAAS", Some("Ваш чек"), None);
    assert_eq!(
        (req.path.as_str(), body_json(&req)),
        ("sendPhoto", json!({"chat_id": 42, "photo": "AgACAgIAAxkBAAIQC2YAAS", "caption": "Ваш чек"}))
    );
    let req = telegram::send_document("42", "https://example.com/a.pdf", None, Some(7));
    assert_eq!(req.path, "sendDocument");
    assert_eq!(body_json(&req)["document"], "https://example.com/a.pdf");
    assert_eq!(body_json(&req)["reply_parameters"]["message_id"], 7);
    assert_eq!(body_json(&telegram::get_file("abc")), json!({"file_id": "abc"}));
}

#[test]
fn telegram_get_file_answer() {
    let ok = br#"{"ok":true,"result":{"file_id":"AgACAgIAAxkBAAIQC2YAAS","file_unique_id":"AQADr8UxG-ac","file_size":98123,"file_path":"photos/file_12.jpg"}}"#;
    assert_eq!(telegram::parse_get_file(ok).unwrap(), "photos/file_12.jpg");
    let too_big = br#"{"ok":true,"result":{"file_id":"x","file_unique_id":"y","file_size":30000000}}"#;
    assert!(matches!(telegram::parse_get_file(too_big), Err(ChannelError::Malformed(_))));
    let err = br#"{"ok":false,"error_code":400,"description":"Bad Request: invalid file_id"}"#;
    assert!(
        matches!(telegram::parse_get_file(err), Err(ChannelError::Unsupported(m)) if m.contains("invalid file_id"))
    );
}

#[test]
fn telegram_response_classification() {
    let resp = |status, body: &'static [u8]| HttpResponse { status, body, retry_after: None };
    let sent = br#"{"ok":true,"result":{"message_id":4120,"from":{"id":7000000001,"is_bot":true,"first_name":"Bank"},"chat":{"id":5123456789,"type":"private"},"date":1763800000,"text":"ok"}}"#;
    assert_eq!(
        telegram::classify_response(&resp(200, sent)),
        SendOutcome::Sent { provider_message_id: Some("5123456789:4120".into()) }
    );
    let flood = br#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 35","parameters":{"retry_after":35}}"#;
    assert_eq!(
        telegram::classify_response(&resp(429, flood)),
        SendOutcome::Retry { after: Some(Duration::from_secs(35)) }
    );
    let blocked = br#"{"ok":false,"error_code":403,"description":"Forbidden: bot was blocked by the user"}"#;
    assert_eq!(
        telegram::classify_response(&resp(403, blocked)),
        SendOutcome::Failed { code: "403".into(), description: "Forbidden: bot was blocked by the user".into() }
    );
    let bad = br#"{"ok":false,"error_code":400,"description":"Bad Request: message text is empty"}"#;
    assert!(matches!(telegram::classify_response(&resp(400, bad)), SendOutcome::Failed { code, .. } if code == "400"));
    let gateway = HttpResponse { status: 502, body: b"<html>Bad Gateway</html>", retry_after: Some("3") };
    assert_eq!(telegram::classify_response(&gateway), SendOutcome::Retry { after: Some(Duration::from_secs(3)) });
}

// ---------------------------------------------------------------- WhatsApp

const WA_SECRET: &str = "test-app-secret";

#[test]
fn whatsapp_signature_vectors() {
    let body = fixture("whatsapp_text.min.json");
    let good = "sha256=05dcfbd54e968793b65ce7b450f9096f08d7c2ce45eaf02b0101e1247abb6a1e";
    assert_eq!(whatsapp::verify_signature(WA_SECRET, &body, Some(good)), Ok(()));
    assert_eq!(
        whatsapp::verify_signature(WA_SECRET, &body, Some(&good.to_uppercase().replace("SHA256=", "sha256="))),
        Ok(())
    );
    let batch = fixture("whatsapp_batch.json");
    let batch_sig = "sha256=e21b4e48047994823aedbcfb206a2b66eecfdb0ea068b81e9fced25e0fe687bb";
    assert_eq!(whatsapp::verify_signature(WA_SECRET, &batch, Some(batch_sig)), Ok(()));

    assert_eq!(whatsapp::verify_signature(WA_SECRET, &tamper(&body, 100), Some(good)), Err(ChannelError::BadSignature));
    let forged_sig = String::from_utf8(tamper(good.as_bytes(), 20)).unwrap();
    assert_eq!(whatsapp::verify_signature(WA_SECRET, &body, Some(&forged_sig)), Err(ChannelError::BadSignature));
    assert_eq!(whatsapp::verify_signature("other-secret", &body, Some(good)), Err(ChannelError::BadSignature));
    assert_eq!(whatsapp::verify_signature(WA_SECRET, &body, None), Err(ChannelError::MissingSignature));
    for malformed in [
        "sha256=",
        "sha256=zz",
        "05dcfbd54e968793b65ce7b450f9096f08d7c2ce45eaf02b0101e1247abb6a1e",
        "sha1=05dc",
        "sha256=05dcfbd5",
    ] {
        assert_eq!(
            whatsapp::verify_signature(WA_SECRET, &body, Some(malformed)),
            Err(ChannelError::BadSignature),
            "{malformed}"
        );
    }
}

#[test]
fn whatsapp_text_fixture() {
    let m = one_message(whatsapp::parse_webhook(&fixture("whatsapp_text.min.json")).unwrap());
    assert_eq!(m.channel, Channel::WhatsApp);
    assert_eq!(m.provider_message_id, "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=");
    assert_eq!(m.account.as_deref(), Some("106540352242922"));
    assert_eq!(m.provider_account.as_deref(), Some("102290129340398"));
    assert_eq!(m.sender.external_id, "16505551234");
    assert_eq!(m.sender.display_name.as_deref(), Some("Sheena Nelson"));
    assert_eq!(m.reply_address, "16505551234");
    assert_eq!(m.text, "Does it come in another color?");
    assert_eq!(m.sent_at, 1_749_416_383_000);
}

#[test]
fn whatsapp_batch_parses_every_message_and_status_in_order() {
    let events = whatsapp::parse_webhook(&fixture("whatsapp_batch.json")).unwrap();
    assert_eq!(events.len(), 14, "{events:#?}");
    let msgs: Vec<&InboundMessage> =
        events.iter().filter_map(|e| if let Inbound::Message(m) = e { Some(m) } else { None }).collect();
    assert_eq!(msgs.len(), 9);
    assert!(msgs.iter().all(|m| m.sender.display_name.as_deref() == Some("Иван Петров")));

    let image = msgs[0];
    assert_eq!(image.text, "Фото чека");
    assert_eq!(
        (image.attachments[0].kind, image.attachments[0].provider_ref.as_str()),
        (MediaKind::Image, "1003383421387256")
    );
    assert_eq!(image.attachments[0].mime.as_deref(), Some("image/jpeg"));
    assert_eq!(image.quoted.as_ref().unwrap().channel_message_id, "wamid.HBgLNzkxNjEyMzQ1NjcVAgARGBI5QUNGMDk2");

    let doc = msgs[1];
    assert_eq!(doc.attachments[0].file_name.as_deref(), Some("Договор №15.pdf"));
    assert_eq!(doc.attachments[0].kind, MediaKind::Document);
    assert_eq!(doc.text, "договор");

    assert_eq!(msgs[2].attachments[0].kind, MediaKind::Voice);
    assert_eq!(msgs[2].attachments[0].mime.as_deref(), Some("audio/ogg; codecs=opus"));

    let loc = msgs[3].location.as_ref().unwrap();
    assert_eq!((loc.latitude, loc.longitude, loc.name.as_deref()), (55.757, 37.615, Some("Офис")));
    assert_eq!(loc.address.as_deref(), Some("Тверская ул., 1, Москва"));

    let reaction = msgs[4].reaction.as_ref().unwrap();
    assert_eq!(
        (reaction.message_id.as_str(), reaction.emoji.as_deref()),
        ("wamid.HBgLNzkxNjEyMzQ1NjcVAgARGBI5QUNGMDk2", Some("👍"))
    );
    assert_eq!(msgs[5].reaction.as_ref().unwrap().emoji, None, "a reaction without emoji is a removal");

    assert_eq!((msgs[6].text.as_str(), msgs[6].reply_payload.as_deref()), ("Да, это я", Some("confirm-yes")));
    assert!(msgs[6].quoted.is_some());
    assert_eq!((msgs[7].text.as_str(), msgs[7].reply_payload.as_deref()), ("Карта", Some("topic-card")));
    assert_eq!((msgs[8].text.as_str(), msgs[8].reply_payload.as_deref()), ("Отписаться", Some("STOP_PROMO")));

    let Inbound::Ignored { reason } = &events[9] else { panic!("{:?}", events[9]) };
    assert!(reason.contains("unsupported") && reason.contains("131051"), "{reason}");

    let delivered = receipt(&events[10]);
    assert_eq!((delivered.state, delivered.at), (DeliveryState::Delivered, 1_763_801_100_000));
    assert_eq!(delivered.recipient.as_deref(), Some("79161234567"));
    assert_eq!(receipt(&events[11]).state, DeliveryState::Read);
    let failed = receipt(&events[12]);
    assert_eq!(failed.state, DeliveryState::Failed);
    assert_eq!(failed.provider_message_id, "wamid.HBgLNzkxNjEyMzQ1NjcVAgARGBJGQUlM");
    let err = failed.error.as_ref().unwrap();
    assert_eq!((err.code.as_str(), err.description.as_deref()), ("131047", Some("Re-engagement message")));
    assert_eq!(receipt(&events[13]).state, DeliveryState::Sent);
    assert_eq!(receipt(&events[13]).error, None);
}

#[test]
fn whatsapp_errors_and_other_fields_are_ignored_with_a_reason() {
    let reason = ignored_reason(whatsapp::parse_webhook(&fixture("whatsapp_value_errors.json")).unwrap());
    assert!(reason.contains("130429"), "{reason}");
    let reason = ignored_reason(whatsapp::parse_webhook(&fixture("whatsapp_other_field.json")).unwrap());
    assert!(reason.contains("message_template_status_update"), "{reason}");
}

#[test]
fn whatsapp_refuses_malformed_webhooks() {
    let body = fixture("whatsapp_text.min.json");
    assert!(matches!(whatsapp::parse_webhook(&body[..body.len() - 3]), Err(ChannelError::Malformed(_))));
    let text = String::from_utf8(body.clone()).unwrap();
    let bad_ts = text.replace("\"1749416383\"", "\"soon\"");
    assert!(
        matches!(whatsapp::parse_webhook(bad_ts.as_bytes()), Err(ChannelError::Malformed(m)) if m.contains("timestamp"))
    );
    let number_ts = text.replace("\"1749416383\"", "1749416383");
    assert!(matches!(whatsapp::parse_webhook(number_ts.as_bytes()), Err(ChannelError::Malformed(_))));
    let no_text = text.replace(",\"text\":{\"body\":\"Does it come in another color?\"}", "");
    assert!(matches!(whatsapp::parse_webhook(no_text.as_bytes()), Err(ChannelError::Malformed(_))));
    let page = text.replace("whatsapp_business_account", "page");
    assert!(matches!(whatsapp::parse_webhook(page.as_bytes()), Err(ChannelError::Unsupported(_))));
    assert_eq!(whatsapp::parse_webhook(b"{\"object\":\"\xc3\x28\"}"), Err(ChannelError::InvalidUtf8));
}

#[test]
fn whatsapp_subscription_handshake() {
    let q = "hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token=meatyhamhock";
    assert_eq!(whatsapp::verify_subscription(q, "meatyhamhock").unwrap(), "1158201444");
    assert_eq!(whatsapp::verify_subscription(q, "other"), Err(ChannelError::BadVerifyToken));
    assert_eq!(whatsapp::verify_subscription(q, ""), Err(ChannelError::BadVerifyToken));
    assert!(matches!(
        whatsapp::verify_subscription(
            "hub.mode=unsubscribe&hub.challenge=1&hub.verify_token=meatyhamhock",
            "meatyhamhock"
        ),
        Err(ChannelError::Malformed(_))
    ));
    assert_eq!(
        whatsapp::verify_subscription("hub.mode=subscribe&hub.challenge=1", "meatyhamhock"),
        Err(ChannelError::MissingSignature)
    );
    assert!(matches!(
        whatsapp::verify_subscription("hub.mode=subscribe&hub.verify_token=meatyhamhock", "meatyhamhock"),
        Err(ChannelError::Malformed(_))
    ));
}

#[test]
fn whatsapp_customer_service_window() {
    let last = 1_763_801_000_000;
    let day = 24 * 3600 * 1000;
    assert_eq!(whatsapp::customer_service_window(Some(last), last + 1), WindowState::Open { closes_at: last + day });
    assert_eq!(
        whatsapp::customer_service_window(Some(last), last + day - 1),
        WindowState::Open { closes_at: last + day }
    );
    assert_eq!(whatsapp::customer_service_window(Some(last), last + day), WindowState::Closed);
    assert_eq!(whatsapp::customer_service_window(None, last), WindowState::Closed);
    assert_eq!(whatsapp::customer_service_window(Some(i64::MAX), 0), WindowState::Open { closes_at: i64::MAX });
}

#[test]
fn whatsapp_outbound_bodies() {
    let req = whatsapp::text_message("106540352242922", "79161234567", "Добрый день!", Some("wamid.X"));
    assert_eq!(req.path, "106540352242922/messages");
    assert_eq!(
        body_json(&req),
        json!({"messaging_product": "whatsapp", "recipient_type": "individual", "to": "79161234567", "type": "text",
               "text": {"body": "Добрый день!", "preview_url": false}, "context": {"message_id": "wamid.X"}})
    );
    let img = body_json(&whatsapp::image_message("1", "2", MediaSource::Id("1003383421387256"), Some("чек"), None));
    assert_eq!(
        (img["type"].clone(), img["image"].clone()),
        (json!("image"), json!({"id": "1003383421387256", "caption": "чек"}))
    );
    assert!(img.get("context").is_none());
    let doc = body_json(&whatsapp::document_message(
        "1",
        "2",
        MediaSource::Link("https://example.com/a.pdf"),
        Some("Счёт.pdf"),
        None,
        None,
    ));
    assert_eq!(doc["document"], json!({"link": "https://example.com/a.pdf", "filename": "Счёт.pdf"}));
    let tpl = body_json(&whatsapp::template_message("1", "2", "order_update", "ru", &["4711", "завтра"]));
    assert_eq!(
        tpl["template"],
        json!({"name": "order_update", "language": {"code": "ru"}, "components": [{"type": "body", "parameters": [
            {"type": "text", "text": "4711"}, {"type": "text", "text": "завтра"}]}]})
    );
    assert!(
        body_json(&whatsapp::template_message("1", "2", "hello_world", "en_US", &[]))["template"]
            .get("components")
            .is_none()
    );
}

#[test]
fn template_references_are_checked_by_the_cloud_api_s_rules() {
    let params = |p: &[&str]| p.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    assert_eq!(whatsapp::check_template("order_update", "ru", &params(&["4711", "завтра с 10 до 14"])), Ok(()));
    assert_eq!(whatsapp::check_template("hello_world", "en_US", &[]), Ok(()));
    assert_eq!(whatsapp::check_template("hello_world", "zh_Hant_HK", &[]), Ok(()));
    let refused = [
        ("", "ru", params(&[]), "template.name"),
        ("Order-Update", "ru", params(&[]), "template.name"),
        ("order_update", "", params(&[]), "template.language"),
        ("order_update", "RU", params(&[]), "template.language"),
        ("order_update", "ru-RU", params(&[]), "template.language"),
        ("order_update", "ru", params(&["a\nb"]), "template.body_parameters[0]"),
        ("order_update", "ru", params(&["ok", "  "]), "template.body_parameters[1]"),
        ("order_update", "ru", params(&["a     b"]), "template.body_parameters[0]"),
        ("order_update", "ru", vec!["x".to_owned(); whatsapp::MAX_TEMPLATE_PARAMETERS + 1], "template.body_parameters"),
    ];
    for (name, language, parameters, field) in refused {
        let err = whatsapp::check_template(name, language, &parameters).expect_err(field);
        assert!(err.starts_with(field), "{err}");
    }
}

#[test]
fn whatsapp_response_classification() {
    let resp = |status, body: &'static [u8]| HttpResponse { status, body, retry_after: None };
    let ok = br#"{"messaging_product":"whatsapp","contacts":[{"input":"+79161234567","wa_id":"79161234567"}],"messages":[{"id":"wamid.HBgLNzkxNjEyMzQ1NjcVAgARGBJPSw=="}]}"#;
    assert_eq!(
        whatsapp::classify_response(&resp(200, ok)),
        SendOutcome::Sent { provider_message_id: Some("wamid.HBgLNzkxNjEyMzQ1NjcVAgARGBJPSw==".into()) }
    );
    let window = br#"{"error":{"message":"(#131047) Re-engagement message","type":"OAuthException","code":131047,"error_data":{"messaging_product":"whatsapp","details":"Message failed to send because more than 24 hours have passed since the customer last replied to this number."},"fbtrace_id":"AbCdEf"}}"#;
    let SendOutcome::Failed { code, description } = whatsapp::classify_response(&resp(400, window)) else { panic!() };
    assert_eq!(code, "131047");
    assert!(description.contains("24 hours"), "{description}");
    for throttled in [130429, 131048, 80007, 131056] {
        let body = format!(
            r#"{{"error":{{"message":"rate limit","type":"OAuthException","code":{throttled},"fbtrace_id":"x"}}}}"#
        );
        let r = HttpResponse { status: 400, body: body.as_bytes(), retry_after: None };
        assert_eq!(whatsapp::classify_response(&r), SendOutcome::Retry { after: None }, "{throttled}");
    }
    let bad_param =
        br#"{"error":{"message":"(#100) Invalid parameter","type":"OAuthException","code":100,"fbtrace_id":"x"}}"#;
    assert!(
        matches!(whatsapp::classify_response(&resp(400, bad_param)), SendOutcome::Failed { code, .. } if code == "100")
    );
    assert_eq!(
        whatsapp::classify_response(&HttpResponse { status: 503, body: b"", retry_after: Some("10") }),
        SendOutcome::Retry { after: Some(Duration::from_secs(10)) }
    );
}

// ---------------------------------------------------------------- Viber

const VIBER_TOKEN: &str = "445da6az1s345z78-dazcczb2542zv51a-e0vc5fva17480im9";

#[test]
fn viber_signature_vectors() {
    let body = fixture("viber_message.min.json");
    let good = "67836c9cfe2d306870b7eefa507e9da84aae7b04a012b9a4bebb9537f2873f8d";
    assert_eq!(viber::verify_signature(VIBER_TOKEN, &body, Some(good)), Ok(()));
    let pic = fixture("viber_picture.json");
    assert_eq!(
        viber::verify_signature(
            VIBER_TOKEN,
            &pic,
            Some("75e626f0910f302f6633bd6033f725d2071fc5d9d788febbe32c00057bc4d616")
        ),
        Ok(())
    );
    assert_eq!(viber::verify_signature(VIBER_TOKEN, &tamper(&body, 10), Some(good)), Err(ChannelError::BadSignature));
    assert_eq!(
        viber::verify_signature(VIBER_TOKEN, &body, Some(&good.replace("678", "679"))),
        Err(ChannelError::BadSignature)
    );
    assert_eq!(viber::verify_signature("wrong-token", &body, Some(good)), Err(ChannelError::BadSignature));
    assert_eq!(viber::verify_signature(VIBER_TOKEN, &body, None), Err(ChannelError::MissingSignature));
    assert_eq!(viber::verify_signature(VIBER_TOKEN, &body, Some("not hex")), Err(ChannelError::BadSignature));
    assert_eq!(viber::verify_signature(VIBER_TOKEN, &body, Some(&good[..62])), Err(ChannelError::BadSignature));
}

#[test]
fn viber_messages() {
    let m = one_message(viber::parse_callback(&fixture("viber_message.min.json")).unwrap());
    assert_eq!(m.channel, Channel::Viber);
    assert_eq!(m.provider_message_id, "4912661846655238145");
    assert_eq!(m.sender.external_id, "01234567890A=");
    assert_eq!(m.sender.display_name.as_deref(), Some("John McClane"));
    assert_eq!(m.sender.language.as_deref(), Some("en"));
    assert_eq!(m.text, "a message to the service");
    assert_eq!(m.sent_at, 1_457_764_197_627);

    let pic = one_message(viber::parse_callback(&fixture("viber_picture.json")).unwrap());
    assert_eq!(pic.provider_message_id, "5741311803571721087");
    assert_eq!(pic.text, "Скриншот");
    assert_eq!(pic.sender.display_name.as_deref(), Some("Анна"));
    assert_eq!(pic.attachments[0].kind, MediaKind::Image);
    assert!(pic.attachments[0].provider_ref.starts_with("https://dl-media.viber.com/1/share/"));
    assert_eq!(pic.attachments[0].size, Some(182_345));

    let file = one_message(viber::parse_callback(&fixture("viber_file.json")).unwrap());
    assert_eq!(
        (file.attachments[0].kind, file.attachments[0].file_name.as_deref()),
        (MediaKind::Document, Some("Счёт.pdf"))
    );

    let loc = one_message(viber::parse_callback(&fixture("viber_location.json")).unwrap()).location.unwrap();
    assert_eq!((loc.latitude, loc.longitude), (50.450001, 30.523333));

    let contact = one_message(viber::parse_callback(&fixture("viber_contact.json")).unwrap());
    assert_eq!(contact.text, "Itamar +972511123123");
}

#[test]
fn viber_subscriptions_receipts_and_service_events() {
    let [Inbound::Subscription { subscribed: true, identity }] =
        &viber::parse_callback(&fixture("viber_subscribed.json")).unwrap()[..]
    else {
        panic!()
    };
    assert_eq!((identity.external_id.as_str(), identity.language.as_deref()), ("01234567890A=", Some("uk")));
    let [Inbound::Subscription { subscribed: false, identity }] =
        &viber::parse_callback(&fixture("viber_unsubscribed.json")).unwrap()[..]
    else {
        panic!()
    };
    assert_eq!(identity.external_id, "01234567890A=");

    let delivered = viber::parse_callback(&fixture("viber_delivered.json")).unwrap();
    let r = receipt(&delivered[0]);
    assert_eq!(
        (r.provider_message_id.as_str(), r.state, r.at),
        ("5741311803571721093", DeliveryState::Delivered, 1_763_802_300_000)
    );
    assert_eq!(r.recipient.as_deref(), Some("01234567890A="));
    assert_eq!(receipt(&viber::parse_callback(&fixture("viber_seen.json")).unwrap()[0]).state, DeliveryState::Read);
    let failed = viber::parse_callback(&fixture("viber_failed.json")).unwrap();
    let r = receipt(&failed[0]);
    assert_eq!(r.state, DeliveryState::Failed);
    assert_eq!(r.error.as_ref().and_then(|e| e.description.as_deref()), Some("failure description"));

    assert!(
        ignored_reason(viber::parse_callback(&fixture("viber_conversation_started.json")).unwrap())
            .contains("conversation_started")
    );
    assert!(ignored_reason(viber::parse_callback(&fixture("viber_webhook.json")).unwrap()).contains("webhook"));
}

#[test]
fn viber_refuses_malformed_callbacks() {
    let text = String::from_utf8(fixture("viber_message.min.json")).unwrap();
    let float_token = text.replace("4912661846655238145", "4.9e18");
    assert!(
        matches!(viber::parse_callback(float_token.as_bytes()), Err(ChannelError::Malformed(m)) if m.contains("message_token"))
    );
    let no_sender = text.replace("\"sender\"", "\"someone\"");
    assert!(matches!(viber::parse_callback(no_sender.as_bytes()), Err(ChannelError::Malformed(_))));
    let text_ts = text.replace("1457764197627", "\"yesterday\"");
    assert!(matches!(viber::parse_callback(text_ts.as_bytes()), Err(ChannelError::Malformed(_))));
    let no_media =
        br#"{"event":"message","timestamp":1,"message_token":1,"sender":{"id":"a"},"message":{"type":"picture"}}"#;
    assert!(matches!(viber::parse_callback(no_media), Err(ChannelError::Malformed(m)) if m.contains("media")));
    assert_eq!(viber::parse_callback(b"\xfe\xff{}"), Err(ChannelError::InvalidUtf8));
    assert!(matches!(viber::parse_callback(b""), Err(ChannelError::Malformed(_))));
}

#[test]
fn viber_outbound_and_classification() {
    let req = viber::send_message("01234567890A=", "Банк", ViberContent::Text("Здравствуйте!"));
    assert_eq!(req.path, "send_message");
    assert_eq!(
        body_json(&req),
        json!({"receiver": "01234567890A=", "min_api_version": 1, "sender": {"name": "Банк"}, "type": "text", "text": "Здравствуйте!"})
    );
    let pic = body_json(&viber::send_message(
        "r",
        "Bank",
        ViberContent::Picture { url: "https://example.com/a.jpg", caption: "" },
    ));
    assert_eq!(
        (pic["type"].clone(), pic["media"].clone(), pic["text"].clone()),
        (json!("picture"), json!("https://example.com/a.jpg"), json!(""))
    );
    let file = body_json(&viber::send_message(
        "r",
        "Bank",
        ViberContent::File { url: "https://example.com/a.pdf", size: 10000, file_name: "Счёт.pdf" },
    ));
    assert_eq!((file["size"].clone(), file["file_name"].clone()), (json!(10000), json!("Счёт.pdf")));

    let resp = |body: &'static [u8]| HttpResponse { status: 200, body, retry_after: None };
    let ok = br#"{"status":0,"status_message":"ok","message_token":5741311803571721087,"chat_hostname":"SN-CHAT-05_","billing_status":1}"#;
    assert_eq!(
        viber::classify_response(&resp(ok)),
        SendOutcome::Sent { provider_message_id: Some("5741311803571721087".into()) }
    );
    let unsubscribed = br#"{"status":6,"status_message":"notSubscribed","chat_hostname":"SN-CHAT-05_"}"#;
    assert_eq!(
        viber::classify_response(&resp(unsubscribed)),
        SendOutcome::Failed { code: "6".into(), description: "notSubscribed".into() }
    );
    let busy = br#"{"status":12,"status_message":"tooManyRequests"}"#;
    assert_eq!(viber::classify_response(&resp(busy)), SendOutcome::Retry { after: None });
}

// ---------------------------------------------------------------- Twilio

const TWILIO_TOKEN: &str = "test-auth-token";
const TWILIO_URL: &str = "https://example.com/webhooks/twilio/sms";

#[test]
fn twilio_fixture_signature_and_message() {
    let body = fixture("twilio_sms.form");
    let sig = "uIDdKytBQ9w9pTtHnkz82UHIVTs=";
    let params = twilio::verify_form(TWILIO_TOKEN, TWILIO_URL, &body, Some(sig)).unwrap();
    let m = one_message(twilio::parse_webhook(&params, 1_763_803_000_000).unwrap());
    assert_eq!(m.channel, Channel::Sms);
    assert_eq!(m.provider_message_id, "SM1f0e8ae6ade43cb3c0ce4525424e404f");
    assert_eq!(m.sender.external_id, "+14155550123");
    assert_eq!(m.account.as_deref(), Some("+14155550100"));
    assert_eq!(m.provider_account.as_deref(), Some("ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"));
    assert_eq!(m.text, "Здравствуйте, где мой заказ?");
    assert!(m.attachments.is_empty());
    assert_eq!(m.sent_at, 1_763_803_000_000);

    assert_eq!(
        twilio::verify_form(TWILIO_TOKEN, TWILIO_URL, &tamper(&body, 40), Some(sig)),
        Err(ChannelError::BadSignature)
    );
    assert_eq!(twilio::verify_form("wrong", TWILIO_URL, &body, Some(sig)), Err(ChannelError::BadSignature));
    assert_eq!(
        twilio::verify_form(TWILIO_TOKEN, "https://example.com/webhooks/twilio/other", &body, Some(sig)),
        Err(ChannelError::BadSignature)
    );
    assert_eq!(
        twilio::verify_form(TWILIO_TOKEN, TWILIO_URL, &body, Some("uIDdKytBQ9w9pTtHnkz82UHIVTt=")),
        Err(ChannelError::BadSignature)
    );
    assert_eq!(twilio::verify_form(TWILIO_TOKEN, TWILIO_URL, &body, Some("%%%")), Err(ChannelError::BadSignature));
    assert_eq!(twilio::verify_form(TWILIO_TOKEN, TWILIO_URL, &body, None), Err(ChannelError::MissingSignature));
    // Twilio adds ":443" to the URL for some configurations; either form must verify.
    assert!(twilio::verify_form(TWILIO_TOKEN, "https://example.com:443/webhooks/twilio/sms", &body, Some(sig)).is_ok());
}

/// The vectors of Twilio's official Python validator tests (tests/unit/test_request_validator.py).
#[test]
fn twilio_official_validator_vectors() {
    let token = "12345";
    let uri = "https://mycompany.com/myapp.php?foo=1&bar=2";
    let params: Vec<(String, String)> = [
        ("CallSid", "CA1234567890ABCDE"),
        ("Digits", "1234"),
        ("From", "+14158675309"),
        ("To", "+18005551212"),
        ("Caller", "+14158675309"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let form: String = form_body(&params);
    assert_eq!(twilio::compute_signature(token, uri, &params), "RSOYDt4T1cUTdK1PDd93/VVr8B8=");
    assert!(twilio::verify_form(token, uri, form.as_bytes(), Some("RSOYDt4T1cUTdK1PDd93/VVr8B8=")).is_ok());
    // Removes a port on https and on http.
    assert!(
        twilio::verify_form(
            token,
            "https://mycompany.com:1234/myapp.php?foo=1&bar=2",
            form.as_bytes(),
            Some("RSOYDt4T1cUTdK1PDd93/VVr8B8=")
        )
        .is_ok()
    );
    assert!(
        twilio::verify_form(
            token,
            "http://mycompany.com:1234/myapp.php?foo=1&bar=2",
            form.as_bytes(),
            Some("Zmvh+3yNM1Phv2jhDCwEM3q5ebU=")
        )
        .is_ok()
    );
    // Adds the default port on https and on http.
    assert!(twilio::verify_form(token, uri, form.as_bytes(), Some("kvajT1Ptam85bY51eRf/AJRuM3w=")).is_ok());
    assert!(
        twilio::verify_form(
            token,
            "http://mycompany.com/myapp.php?foo=1&bar=2",
            form.as_bytes(),
            Some("0ZXoZLH/DfblKGATFgpif+LLRf4=")
        )
        .is_ok()
    );
    // A repeated key: values sorted too.
    let dup = twilio::parse_form(b"Sid=CA123&SidAccount=AC123&Digits=5678&Digits=1234").unwrap();
    assert_eq!(twilio::compute_signature(token, uri, &dup), "IK+Dwps556ElfBT0I3Rgjkr1wJU=");
    // A JSON body: the URL carries bodySHA256 and only the URL is signed.
    let body = br#"{"property": "value", "boolean": true}"#;
    let with_hash = format!("{uri}&bodySHA256=0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620");
    assert_eq!(twilio::verify_json(token, &with_hash, body, Some("a9nBmqA0ju/hNViExpshrM61xv4=")), Ok(()));
    assert_eq!(
        twilio::verify_json(
            token,
            &with_hash,
            br#"{"property": "value", "boolean": false}"#,
            Some("a9nBmqA0ju/hNViExpshrM61xv4=")
        ),
        Err(ChannelError::BadSignature)
    );
    assert!(matches!(
        twilio::verify_json(token, uri, body, Some("a9nBmqA0ju/hNViExpshrM61xv4=")),
        Err(ChannelError::Malformed(_))
    ));
    // A different port than the one signed does not verify.
    assert_eq!(
        twilio::verify_form(
            token,
            "http://mycompany.com:8080/myapp.php?foo=1&bar=2",
            form.as_bytes(),
            Some("Zmvh+3yNM1Phv2jhDCwEM3q5ebU=")
        ),
        Err(ChannelError::BadSignature)
    );
}

fn form_body(params: &[(String, String)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        s.append_pair(k, v);
    }
    s.finish()
}

#[test]
fn twilio_url_variants() {
    assert_eq!(
        twilio::url_variants("https://a.example/x?y=1"),
        ["https://a.example/x?y=1".to_owned(), "https://a.example:443/x?y=1".to_owned()]
    );
    assert_eq!(
        twilio::url_variants("http://u:p@a.example:8080"),
        ["http://u:p@a.example".to_owned(), "http://u:p@a.example:8080".to_owned()]
    );
    assert_eq!(
        twilio::url_variants("https://[::1]/x"),
        ["https://[::1]/x".to_owned(), "https://[::1]:443/x".to_owned()]
    );
}

#[test]
fn twilio_mms_and_status_callbacks() {
    let body = fixture("twilio_mms.form");
    let params = twilio::verify_form(
        TWILIO_TOKEN,
        "https://example.com/webhooks/twilio/sms?tenant=acme",
        &body,
        Some("G51UnOFpd8sefrCQDQVHw6e7FdU="),
    )
    .unwrap();
    let m = one_message(twilio::parse_webhook(&params, 5).unwrap());
    assert_eq!(m.provider_message_id, "MM8c4f1e2d3a4b5c6d7e8f9a0b1c2d3e4f");
    assert_eq!(m.text, "Фото и счёт");
    assert_eq!(m.attachments.len(), 2);
    assert_eq!((m.attachments[0].kind, m.attachments[0].mime.as_deref()), (MediaKind::Image, Some("image/jpeg")));
    assert!(m.attachments[0].provider_ref.ends_with("/Media/ME0a1b2c3d4e5f60718293a4b5c6d7e8f9"));
    assert_eq!(m.attachments[1].kind, MediaKind::Document);

    let body = fixture("twilio_status_undelivered.form");
    let params = twilio::verify_form(
        TWILIO_TOKEN,
        "https://example.com/webhooks/twilio/status",
        &body,
        Some("5q3qnLo3hrQ0IxOFExXQ4+q4BG0="),
    )
    .unwrap();
    let events = twilio::parse_webhook(&params, 1_763_803_100_000).unwrap();
    let r = receipt(&events[0]);
    assert_eq!(
        (r.provider_message_id.as_str(), r.state),
        ("SM1f0e8ae6ade43cb3c0ce4525424e404f", DeliveryState::Failed)
    );
    let e = r.error.as_ref().unwrap();
    assert_eq!((e.code.as_str(), e.description.as_deref()), ("30003", Some("unreachable destination handset")));
    assert_eq!(r.at, 1_763_803_100_000);

    let params = twilio::parse_form(&fixture("twilio_status_delivered.form")).unwrap();
    let events = twilio::parse_webhook(&params, 0).unwrap();
    assert_eq!((receipt(&events[0]).state, receipt(&events[0]).error.clone()), (DeliveryState::Delivered, None));
    for (status, state) in [
        ("queued", DeliveryState::Accepted),
        ("sent", DeliveryState::Sent),
        ("read", DeliveryState::Read),
        ("failed", DeliveryState::Failed),
    ] {
        let params =
            twilio::parse_form(format!("MessageSid=SM1&MessageStatus={status}&To=%2B1&From=%2B2").as_bytes()).unwrap();
        assert_eq!(receipt(&twilio::parse_webhook(&params, 0).unwrap()[0]).state, state, "{status}");
    }
}

#[test]
fn twilio_refuses_bad_forms() {
    assert_eq!(twilio::parse_form(b"Body=%D0%97%D0&From=%2B1"), Err(ChannelError::InvalidUtf8));
    assert_eq!(twilio::parse_form(b"Body=\xff\xfe&From=%2B1"), Err(ChannelError::InvalidUtf8));
    assert_eq!(
        twilio::verify_form(TWILIO_TOKEN, TWILIO_URL, b"Body=%C3%28", Some("x")),
        Err(ChannelError::InvalidUtf8)
    );
    let parse = |form: &str| twilio::parse_webhook(&twilio::parse_form(form.as_bytes()).unwrap(), 0);
    assert!(matches!(parse("From=%2B1&To=%2B2&Body=hi"), Err(ChannelError::Malformed(m)) if m.contains("MessageSid")));
    assert!(matches!(parse("MessageSid=SM1&To=%2B2&Body=hi"), Err(ChannelError::Malformed(m)) if m.contains("From")));
    assert!(matches!(parse("MessageSid=SM1&From=%2B1&To=%2B2&NumMedia=two"), Err(ChannelError::Malformed(_))));
    assert!(
        matches!(parse("MessageSid=SM1&From=%2B1&To=%2B2&NumMedia=1"), Err(ChannelError::Malformed(m)) if m.contains("MediaUrl0"))
    );
    assert!(matches!(parse("MessageSid=SM1&From=%2B1&To=%2B2&NumMedia=9999999"), Err(ChannelError::Malformed(_))));
    let huge = vec![b'a'; MAX_WEBHOOK_BYTES + 1];
    assert_eq!(twilio::parse_form(&huge), Err(ChannelError::TooLarge { limit: MAX_WEBHOOK_BYTES }));
}

#[test]
fn twilio_outbound_and_classification() {
    let req = twilio::send_message(
        "ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
        "+14155550123",
        TwilioSender::From("+14155550100"),
        Some("Ваш заказ в пути & скоро"),
        &["https://example.com/a.jpg"],
        Some("https://example.com/webhooks/twilio/status"),
    );
    assert_eq!(req.path, "2010-04-01/Accounts/ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX/Messages.json");
    assert_eq!(req.content_type, "application/x-www-form-urlencoded");
    let params = twilio::parse_form(&req.body).unwrap();
    let get = |k: &str| params.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    assert_eq!(get("To"), Some("+14155550123"));
    assert_eq!(get("From"), Some("+14155550100"));
    assert_eq!(get("Body"), Some("Ваш заказ в пути & скоро"));
    assert_eq!(get("MediaUrl"), Some("https://example.com/a.jpg"));
    assert_eq!(get("StatusCallback"), Some("https://example.com/webhooks/twilio/status"));
    let req = twilio::send_message("AC1", "+1", TwilioSender::MessagingService("MG1"), Some("x"), &[], None);
    let params = twilio::parse_form(&req.body).unwrap();
    assert!(params.contains(&("MessagingServiceSid".into(), "MG1".into())) && !params.iter().any(|(k, _)| k == "From"));

    let resp = |status, body: &'static [u8]| HttpResponse { status, body, retry_after: None };
    let created = br#"{"account_sid":"AC1","body":"x","sid":"SM9d3f9e4a2b1c0d8e7f6a5b4c3d2e1f0a","status":"queued","error_code":null}"#;
    assert_eq!(
        twilio::classify_response(&resp(201, created)),
        SendOutcome::Sent { provider_message_id: Some("SM9d3f9e4a2b1c0d8e7f6a5b4c3d2e1f0a".into()) }
    );
    let stop = br#"{"code":21610,"message":"Attempt to send to unsubscribed recipient","more_info":"https://www.twilio.com/docs/errors/21610","status":400}"#;
    assert_eq!(
        twilio::classify_response(&resp(400, stop)),
        SendOutcome::Failed { code: "21610".into(), description: "Attempt to send to unsubscribed recipient".into() }
    );
    let busy = br#"{"code":20429,"message":"Too Many Requests","more_info":"https://www.twilio.com/docs/errors/20429","status":429}"#;
    assert_eq!(
        twilio::classify_response(&HttpResponse { status: 429, body: busy, retry_after: Some("2") }),
        SendOutcome::Retry { after: Some(Duration::from_secs(2)) }
    );
    assert_eq!(twilio::classify_response(&resp(500, b"oops")), SendOutcome::Retry { after: None });
    assert!(
        matches!(twilio::classify_response(&resp(401, b"")), SendOutcome::Failed { code, .. } if code == "http_401")
    );
}

// ---------------------------------------------------------------- SMS segments

#[test]
fn segment_vectors_from_the_fixtures_readme() {
    let gsm = |t: &str| {
        let c = segments::count(t);
        assert_eq!(c.encoding, SmsEncoding::Gsm7, "{t}");
        c.segments
    };
    let ucs = |t: &str| {
        let c = segments::count(t);
        assert_eq!(c.encoding, SmsEncoding::Ucs2, "{t}");
        c.segments
    };
    assert_eq!((gsm(&"a".repeat(160)), gsm(&"a".repeat(161))), (1, 2));
    assert_eq!((gsm(&"a".repeat(306)), gsm(&"a".repeat(307))), (2, 3));
    assert_eq!((gsm(&"€".repeat(80)), gsm(&"€".repeat(81))), (1, 2));
    assert_eq!((gsm(&format!("{}€", "a".repeat(158))), gsm(&format!("{}€", "a".repeat(159)))), (1, 2));
    assert_eq!((ucs(&"П".repeat(70)), ucs(&"П".repeat(71))), (1, 2));
    assert_eq!((ucs(&"П".repeat(134)), ucs(&"П".repeat(135))), (2, 3));
    assert_eq!((ucs(&"😀".repeat(35)), ucs(&"😀".repeat(36))), (1, 2));
    assert_eq!(ucs("Здравствуйте! Ваш заказ №12345 передан в доставку."), 1);
}

#[test]
fn segment_edge_cases() {
    assert_eq!(segments::count(""), SegmentCount { encoding: SmsEncoding::Gsm7, units: 0, segments: 0 });
    // A surrogate pair is never split: 66 units of 'П' then an emoji (2) would straddle 67.
    let text = format!("{}😀{}", "П".repeat(66), "П".repeat(66));
    assert_eq!(segments::count(&text), SegmentCount { encoding: SmsEncoding::Ucs2, units: 134, segments: 3 });
    // One non-GSM character switches the whole text to UCS-2.
    assert_eq!(segments::count(&format!("{}ё", "a".repeat(69))).segments, 1);
    assert_eq!(segments::count(&format!("{}ё", "a".repeat(70))).segments, 2);
    // The extension table: every one costs two septets.
    assert_eq!(segments::count("^{}\\[~]|€\u{0C}").units, 20);
    assert_eq!(segments::count("@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ").encoding, SmsEncoding::Gsm7);
    // ESC itself and characters outside both tables are not GSM-7.
    assert_eq!(segments::count("\u{1b}").encoding, SmsEncoding::Ucs2);
    assert_eq!(segments::count("`").encoding, SmsEncoding::Ucs2);
}

// ---------------------------------------------------------------- Email

const MB: usize = 1024 * 1024;

#[test]
fn email_reply_fixture() {
    let e = email::parse_email(&fixture("email_reply_ru.eml"), MB, 0).unwrap();
    assert_eq!(e.from.address, "ivan@example.org");
    assert_eq!(e.from.name.as_deref(), Some("Иван Петров"));
    assert_eq!(e.to[0].address, "support@support.example.com");
    assert_eq!(e.to[0].name.as_deref(), Some("Support"));
    assert_eq!(e.subject.as_deref(), Some("Re: Заказ №12345 — где посылка?"));
    assert_eq!(e.message_id.as_deref(), Some("CAB7a1=Zq9@mail.example.org"));
    assert_eq!(e.in_reply_to, ["conv-42.msg-7@support.example.com"]);
    assert_eq!(e.references, ["conv-42.msg-1@support.example.com", "conv-42.msg-7@support.example.com"]);
    assert_eq!(e.message.text, "Добрый день! Счёт во вложении.");
    assert_eq!(e.attachments.len(), 1);
    let a = &e.attachments[0];
    assert_eq!((a.name.as_deref(), a.mime.as_str(), a.inline), (Some("Счёт.pdf"), "application/pdf", false));
    assert!(a.bytes.starts_with(b"%PDF-1.4"));
    assert_eq!(e.auto_reply, None);

    let m = &e.message;
    assert_eq!(m.channel, Channel::Email);
    assert_eq!(m.provider_message_id, "CAB7a1=Zq9@mail.example.org");
    assert_eq!(m.sender.external_id, "ivan@example.org");
    assert_eq!(m.account.as_deref(), Some("support@support.example.com"));
    assert_eq!(m.quoted.as_ref().unwrap().channel_message_id, "conv-42.msg-7@support.example.com");
    assert_eq!(m.attachments[0].provider_ref, "part:0");
    assert_eq!(m.attachments[0].file_name.as_deref(), Some("Счёт.pdf"));
    // Tue, 10 Nov 2026 12:34:50 +0300
    assert_eq!(m.sent_at, 1_794_303_290_000);
    assert_eq!(
        email::referenced_ids(&e.in_reply_to, &e.references),
        ["conv-42.msg-7@support.example.com", "conv-42.msg-1@support.example.com"]
    );
}

#[test]
fn email_legacy_cyrillic_charsets_decode() {
    let koi = email::parse_email(&fixture("email_koi8r.eml"), MB, 0).unwrap();
    assert_eq!(koi.from.name.as_deref(), Some("Олег Сидоров"));
    assert_eq!(koi.subject.as_deref(), Some("Возврат денег"));
    assert_eq!(
        koi.message.text,
        "Здравствуйте! Прошу вернуть деньги за заказ 4711, ещё не пришёл.\r\nС уважением, Олег"
    );
    let cp = email::parse_email(&fixture("email_cp1251.eml"), MB, 0).unwrap();
    assert_eq!(cp.from.name.as_deref(), Some("Олег Сидоров"));
    assert_eq!(cp.subject.as_deref(), Some("Возврат денег"));
    assert_eq!(
        cp.message.text,
        "Здравствуйте! Прошу вернуть деньги за заказ №4711, ещё не пришёл.\r\nС уважением, Олег"
    );
}

#[test]
fn email_html_only_body_and_inline_image() {
    let e = email::parse_email(&fixture("email_html_inline.eml"), MB, 0).unwrap();
    assert_eq!(e.message.text, "Где мой заказ?");
    // Addresses are lowercased for identity, kept as written in `from`.
    assert_eq!(e.from.address, "Customer@Example.COM");
    assert_eq!(e.message.sender.external_id, "customer@example.com");
    let img = &e.attachments[0];
    assert_eq!((img.name.as_deref(), img.mime.as_str(), img.inline), (Some("logo.png"), "image/png", true));
    assert_eq!(img.content_id.as_deref(), Some("logo123@example.com"));
    assert_eq!(img.bytes, b"\x89PNG\r\n\x1a\n");
    assert_eq!(e.message.attachments[0].kind, MediaKind::Image);
}

#[test]
fn email_auto_replies_are_detected() {
    let e = email::parse_email(&fixture("email_auto_reply.eml"), MB, 0).unwrap();
    assert_eq!(e.auto_reply, Some(AutoReply::AutoSubmitted("auto-replied".into())));
    let base = "From: a@example.org\r\nTo: b@example.com\r\nSubject: s\r\nMessage-ID: <x@y>\r\n";
    let cases: [(&str, Option<AutoReply>); 11] = [
        ("Auto-Submitted: no\r\n", None),
        ("Auto-Submitted: auto-generated\r\n", Some(AutoReply::AutoSubmitted("auto-generated".into()))),
        ("Precedence: bulk\r\n", Some(AutoReply::Precedence("bulk".into()))),
        ("Precedence: Junk\r\n", Some(AutoReply::Precedence("junk".into()))),
        ("Precedence: first-class\r\n", None),
        ("X-Autoreply: yes\r\n", Some(AutoReply::XAutoreply)),
        ("X-Autorespond: 1\r\n", Some(AutoReply::XAutoreply)),
        ("X-Auto-Response-Suppress: DR, AutoReply\r\n", Some(AutoReply::AutoResponseSuppress)),
        ("X-Auto-Response-Suppress: OOF\r\n", None),
        ("Return-Path: <>\r\n", Some(AutoReply::NullReturnPath)),
        ("List-Id: Shop news <news.shop.example>\r\n", Some(AutoReply::MailingList)),
    ];
    for (header, expected) in cases {
        let raw = format!("{header}{base}\r\nbody\r\n");
        assert_eq!(email::parse_email(raw.as_bytes(), MB, 0).unwrap().auto_reply, expected, "{header}");
    }
}

#[test]
fn email_limits_and_malformed_input() {
    let raw = fixture("email_reply_ru.eml");
    assert_eq!(email::parse_email(&raw, raw.len() - 1, 0), Err(ChannelError::TooLarge { limit: raw.len() - 1 }));
    assert!(email::parse_email(&raw, raw.len(), 0).is_ok());
    assert!(
        matches!(email::parse_email(b"Subject: no sender\r\n\r\nhi", MB, 0), Err(ChannelError::Malformed(m)) if m.contains("from"))
    );
    assert!(matches!(email::parse_email(b"", MB, 0), Err(ChannelError::Malformed(_))));
    // No Message-ID and no Date: the bytes' hash is the dedupe key, the received time the date.
    let raw = b"From: a@example.org\r\nTo: b@example.com\r\n\r\nhello\r\n";
    let e = email::parse_email(raw, MB, 1_700_000_000_000).unwrap();
    assert!(e.message.provider_message_id.starts_with("sha256:") && e.message.provider_message_id.len() == 71);
    assert_eq!(e.message.sent_at, 1_700_000_000_000);
    assert_eq!(e.message.text, "hello");
}

#[test]
fn email_thread_token_round_trip_and_forgery() {
    let key = b"thread-key-0123456789abcdef";
    let conv = ConversationId::parse("0190a6f2-8f1e-7c3a-9d4e-0123456789ab").unwrap();
    let other = ConversationId::parse("0190a6f2-8f1e-7c3a-9d4e-000000000000").unwrap();
    let msg = MessageId::parse("0190a6f3-0000-7000-8000-000000000001").unwrap();
    let id = email::outgoing_message_id(conv, msg, "support.example.com", key);
    assert!(
        id.starts_with("<pm1.0190a6f2-8f1e-7c3a-9d4e-0123456789ab.") && id.ends_with("@support.example.com>"),
        "{id}"
    );
    let bare = id.trim_start_matches('<').trim_end_matches('>').to_owned();

    assert_eq!(email::thread_token(std::slice::from_ref(&id), &[], key), Some(conv));
    assert_eq!(email::thread_token(&[], &["unrelated@x".into(), bare.clone()], key), Some(conv));
    assert_eq!(
        email::thread_token(&[bare.to_uppercase().replace("PM1", "pm1")], &[], key),
        None,
        "uuids are lowercase"
    );
    // Wrong key, edited conversation id, edited MAC, truncated MAC: no conversation.
    assert_eq!(email::thread_token(std::slice::from_ref(&id), &[], b"another-key"), None);
    let forged = bare.replace(&conv.to_string(), &other.to_string());
    assert_eq!(email::thread_token(&[forged], &[], key), None);
    let at = bare.find('@').unwrap();
    let mac_start = bare[..at].rfind('.').unwrap() + 1;
    let mut bad_mac = bare.clone();
    bad_mac.replace_range(mac_start..mac_start + 1, if &bare[mac_start..mac_start + 1] == "0" { "1" } else { "0" });
    assert_eq!(email::thread_token(&[bad_mac], &[], key), None);
    let (short, _) = bare.split_at(bare.find('@').unwrap() - 2);
    assert_eq!(email::thread_token(&[format!("{short}@support.example.com")], &[], key), None);
    assert_eq!(email::thread_token(&["pm1.x.y.z@a".into(), "".into()], &[], key), None);

    // The token is found through a real reply's headers, In-Reply-To first.
    let older = email::outgoing_message_id(other, msg, "support.example.com", key);
    let raw = format!(
        "From: a@example.org\r\nTo: b@example.com\r\nIn-Reply-To: {id}\r\nReferences: {older} {id}\r\n\r\nthanks\r\n"
    );
    let e = email::parse_email(raw.as_bytes(), MB, 0).unwrap();
    assert_eq!(email::thread_token(&e.in_reply_to, &e.references, key), Some(conv));
}

// ---------------------------------------------------------------- errors

#[test]
fn errors_carry_codes_statuses_and_lowercase_messages() {
    let all = [
        ChannelError::MissingSignature,
        ChannelError::BadSignature,
        ChannelError::BadVerifyToken,
        ChannelError::Malformed("x".into()),
        ChannelError::InvalidUtf8,
        ChannelError::TooLarge { limit: 1 },
        ChannelError::Unsupported("x".into()),
    ];
    for e in &all {
        let msg = e.to_string();
        assert!(msg.chars().next().unwrap().is_lowercase(), "{msg}");
        assert!((400..500).contains(&e.http_status()));
    }
    assert_eq!(ChannelError::MissingSignature.http_status(), 401);
    assert_eq!(ChannelError::BadSignature.http_status(), 403);
    assert_eq!(ChannelError::TooLarge { limit: 1 }.http_status(), 413);
    let codes: std::collections::HashSet<&str> = all.iter().map(ChannelError::code).collect();
    assert_eq!(codes.len(), all.len());
}

// ---------------------------------------------------------------- never panics

mod never_panics {
    use proptest::prelude::*;

    use super::*;

    fn config() -> ProptestConfig {
        ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() }
    }

    /// Inputs that are mostly the real fixture with some bytes changed reach deeper than
    /// random bytes, which JSON parsers reject at the first character.
    fn mutated(base: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
        let len = base.len();
        (proptest::collection::vec((0..len, any::<u8>()), 0..6), 0..=len).prop_map(move |(edits, cut)| {
            let mut b = base.clone();
            for (i, v) in edits {
                b[i] = v;
            }
            b.truncate(cut.max(1));
            b
        })
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn json_parsers_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = telegram::parse_update(&bytes);
            let _ = whatsapp::parse_webhook(&bytes);
            let _ = viber::parse_callback(&bytes);
            let _ = telegram::parse_get_file(&bytes);
            let r = HttpResponse { status: 200, body: &bytes, retry_after: None };
            let _ = (telegram::classify_response(&r), whatsapp::classify_response(&r), viber::classify_response(&r), twilio::classify_response(&r));
        }

        #[test]
        fn telegram_on_mutated_fixtures(bytes in mutated(fixture("telegram_video_reply_caption.json"))) {
            let _ = telegram::parse_update(&bytes);
        }

        #[test]
        fn whatsapp_on_mutated_fixtures(bytes in mutated(fixture("whatsapp_batch.json"))) {
            let _ = whatsapp::parse_webhook(&bytes);
            let _ = whatsapp::verify_signature(WA_SECRET, &bytes, Some("sha256=00"));
        }

        #[test]
        fn viber_on_mutated_fixtures(bytes in mutated(fixture("viber_picture.json"))) {
            let _ = viber::parse_callback(&bytes);
            let _ = viber::verify_signature(VIBER_TOKEN, &bytes, std::str::from_utf8(&bytes).ok());
        }

        #[test]
        fn twilio_on_arbitrary_forms(bytes in mutated(fixture("twilio_mms.form"))) {
            if let Ok(params) = twilio::parse_form(&bytes) {
                let _ = twilio::parse_webhook(&params, 0);
            }
            let _ = twilio::verify_form(TWILIO_TOKEN, TWILIO_URL, &bytes, Some("uIDdKytBQ9w9pTtHnkz82UHIVTs="));
        }

        #[test]
        fn twilio_signature_on_arbitrary_urls_and_headers(url in ".{0,80}", header in ".{0,40}", body in ".{0,80}") {
            let _ = twilio::url_variants(&url);
            let _ = twilio::verify_form(TWILIO_TOKEN, &url, body.as_bytes(), Some(&header));
            let _ = twilio::verify_json(TWILIO_TOKEN, &url, body.as_bytes(), Some(&header));
            let _ = whatsapp::verify_subscription(&url, "t");
            let _ = telegram::verify_secret_token("t", Some(&header));
        }

        #[test]
        fn email_on_mutated_messages(bytes in mutated(fixture("email_reply_ru.eml"))) {
            let _ = email::parse_email(&bytes, MB, 0);
        }

        #[test]
        fn email_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512), ids in proptest::collection::vec(".{0,60}", 0..4)) {
            let _ = email::parse_email(&bytes, MB, 0);
            let _ = email::thread_token(&ids, &ids, b"k");
        }

        #[test]
        fn segments_agree_with_a_naive_bound(text in ".{0,400}") {
            let c = segments::count(&text);
            let (single, part) = match c.encoding { SmsEncoding::Gsm7 => (160, 153), SmsEncoding::Ucs2 => (70, 67) };
            let lower = if c.units == 0 { 0 } else if c.units <= single { 1 } else { c.units.div_ceil(part) };
            // Moving a pair whole can cost at most one unit per part.
            prop_assert!(c.segments >= lower && c.segments <= lower.max(1) + c.units / part);
        }
    }
}

// ---------------------------------------------------------------- tidy

/// Every source file of the crate says what it is for.
#[test]
fn every_source_file_opens_with_a_doc_line() {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut checked = 0;
    for dir in ["src", "tests"] {
        for entry in std::fs::read_dir(format!("{root}/{dir}")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                assert!(text.starts_with("//! "), "{} lacks its //! line", path.display());
                checked += 1;
            }
        }
    }
    assert!(checked >= 12, "only {checked} files found");
}
