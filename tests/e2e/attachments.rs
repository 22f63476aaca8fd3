//! Customers' attachments end to end: a photo or document sent on Telegram, WhatsApp, Viber
//! or MMS reaches the operator's desk and history as an attachment, ingest's media worker
//! fetches it from the provider double the way each provider hands files out (Telegram
//! `getFile`, WhatsApp's media endpoint with the bearer token, Viber's URL, Twilio's URL
//! behind basic auth redirecting to its CDN), and `GET /v1/attachments/{id}` serves it to
//! the tenant's operators only. Files that cannot be had are served as failures with the
//! reason; a provider's hiccup is retried. Mail brings its files along: they are stored
//! before the SMTP listener accepts the mail. The other way, an operator uploads a file
//! and replies with it: the providers get a signed, expiring link to fetch it by (Telegram
//! `sendPhoto`, WhatsApp's document message, MMS `MediaUrl`), an email carries it attached.

use std::time::Duration;

use mail_parser::MimeHeaders as _;
use parley_e2e::{Desk, assigned, history_messages};
use parley_proto::v1;
use parley_testkit::{App, eventually};

use crate::webhooks::{json, post, refused, signed, sms, start, telegram, viber, whatsapp};

const JPEG: &[u8] = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01 receipt photo";
pub(crate) const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR a scanned card";
/// Long enough for a fetch retried after the worker's first backoff (2 s).
const FETCHED: Duration = Duration::from_secs(20);

/// `GET /v1/attachments/{id}` with a token: status, content type and body.
async fn download(app: &App, id: &str, token: Option<&str>) -> (u16, String, Vec<u8>) {
    let mut request = reqwest::Client::new().get(format!("http://{}/v1/attachments/{id}", app.webhooks_addr()));
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    let response = request.send().await.expect("ingest answers");
    let status = response.status().as_u16();
    let mime = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, mime, response.bytes().await.expect("body").to_vec())
}

/// The file, once the media worker has it.
async fn fetched(app: &App, id: &str, token: &str) -> (String, Vec<u8>) {
    eventually(FETCHED, "the attachment is fetched", || async {
        let (status, mime, body) = download(app, id, Some(token)).await;
        (status == 200).then_some((mime, body))
    })
    .await
}

/// The JSON error served for a file given up on.
async fn failure(app: &App, id: &str, token: &str) -> String {
    eventually(FETCHED, "the attachment is given up", || async {
        let (status, _, body) = download(app, id, Some(token)).await;
        (status == 410).then(|| String::from_utf8(body).expect("utf-8 error"))
    })
    .await
}

/// The next assignment's first message and its attachments.
async fn assigned_message(desk: &mut Desk) -> (v1::Conversation, v1::Message) {
    let a = assigned(desk).await;
    let m = a.recent_messages.first().cloned().expect("a message");
    (a.conversation.expect("conversation"), m)
}

async fn posted(app: &App, config: &v1::ChannelConfig, body: &[u8]) {
    let (status, answer) = post(app, &format!("/webhooks/acme/{}", config.id), &signed(config, body), body).await;
    assert_eq!(status, 200, "{answer}");
}

fn wa_media(from: &str, id: &str, kind: &str, media: serde_json::Value) -> Vec<u8> {
    let mut message = serde_json::json!({"from": from, "id": id, "timestamp": "1764400000", "type": kind});
    message[kind] = media;
    serde_json::json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
            "contacts": [{"profile": {"name": "Sheena Nelson"}, "wa_id": from}],
            "messages": [message]}}]}]
    })
    .to_string()
    .into_bytes()
}

fn viber_picture(token: u64, sender: &str, media: &str) -> Vec<u8> {
    serde_json::json!({
        "event": "message", "timestamp": 1_764_400_000_000_i64, "chat_hostname": "SN-376_", "message_token": token,
        "sender": {"id": sender, "name": "John McClane", "language": "en", "api_version": 1},
        "message": {"type": "picture", "text": "the damaged parcel", "media": media, "file_name": "parcel.jpg",
                    "size": JPEG.len()},
        "silent": false
    })
    .to_string()
    .into_bytes()
}

fn mms(sid: &str, from: &str, media_url: &str) -> Vec<u8> {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("MessageSid", sid)
        .append_pair("SmsSid", sid)
        .append_pair("AccountSid", "ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX")
        .append_pair("From", from)
        .append_pair("To", "+14155550100")
        .append_pair("Body", "")
        .append_pair("NumMedia", "1")
        .append_pair("MediaContentType0", "image/png")
        .append_pair("MediaUrl0", media_url)
        .append_pair("ApiVersion", "2010-04-01")
        .finish()
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_from_every_provider_reach_the_desk_and_are_served_to_the_tenant_only() {
    let (app, fx, mut desk, _alive) = start().await;
    let token = fx.operator_token("anna").to_owned();

    // Telegram: the largest size of the photo is the one fetched, by getFile.
    app.providers.add_file("AgACAgIAAxkBAAIQC2YAAS", "image/jpeg", JPEG);
    posted(&app, &telegram(), &parley_e2e::fixture("telegram_photo.json")).await;
    let (_, m) = assigned_message(&mut desk).await;
    assert_eq!(m.text, "Вот чек");
    assert_eq!(m.attachments.len(), 1, "{m:?}");
    let photo = m.attachments[0].clone();
    assert_eq!(photo.kind, v1::AttachmentKind::Image as i32);
    assert_eq!(photo.size_bytes, 98_123, "the size Telegram declared");
    assert_eq!(fetched(&app, &photo.id, &token).await, ("image/jpeg".to_owned(), JPEG.to_vec()));
    let calls = app.providers.received("telegram");
    assert!(
        calls.iter().any(|r| r.path == "bot123:bot/getFile"),
        "{:?}",
        calls.iter().map(|r| &r.path).collect::<Vec<_>>()
    );
    assert!(calls.iter().any(|r| r.path == "file/bot123:bot/photos/AgACAgIAAxkBAAIQC2YAAS.jpg" && r.status == 200));

    // WhatsApp: the media endpoint, then the download, both with the access token.
    app.providers.add_file("1003383421387256", "application/pdf", b"%PDF-1.7 statement");
    let body = wa_media(
        "16505551234",
        "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQUFERjg0NDEzNDdFODU3MUMxMAA=",
        "document",
        serde_json::json!({"filename": "выписка.pdf", "mime_type": "application/pdf", "sha256": "x", "id": "1003383421387256"}),
    );
    posted(&app, &whatsapp(), &body).await;
    let (_, m) = assigned_message(&mut desk).await;
    let statement = m.attachments.first().cloned().expect("the document");
    assert_eq!((statement.kind, statement.file_name.as_str()), (v1::AttachmentKind::Document as i32, "выписка.pdf"));
    assert_eq!(m.text, "[document: выписка.pdf]");
    assert_eq!(fetched(&app, &statement.id, &token).await.1, b"%PDF-1.7 statement");
    for r in app.providers.received("whatsapp") {
        assert_eq!(r.credential.as_deref(), Some("Bearer graph-token"), "{}", r.path);
    }

    // Viber: the URL in the callback.
    app.providers.add_file("parcel-7", "image/jpeg", JPEG);
    posted(
        &app,
        &viber(),
        &viber_picture(5_000_000_001, "viber-user-1=", &app.providers.media_url("viber", "parcel-7")),
    )
    .await;
    let (_, m) = assigned_message(&mut desk).await;
    let parcel = m.attachments.first().cloned().expect("the picture");
    assert_eq!(parcel.file_name, "parcel.jpg");
    assert_eq!(fetched(&app, &parcel.id, &token).await.1, JPEG);

    // MMS: Twilio's media URL wants the account's basic auth and redirects to the CDN.
    app.providers.add_file("ME5f1a", "image/png", PNG);
    let media_url = app.providers.media_url("twilio", "ME5f1a");
    posted(&app, &sms(), &mms("MM5f1a0e8ae6ade43cb3c0ce4525424e40", "+14155550199", &media_url)).await;
    let (conversation, m) = assigned_message(&mut desk).await;
    assert_eq!(m.text, "[photo]");
    let card = m.attachments.first().cloned().expect("the MMS picture");
    assert_eq!(fetched(&app, &card.id, &token).await, ("image/png".to_owned(), PNG.to_vec()));
    let twilio = app.providers.received("twilio");
    let media = twilio.iter().find(|r| r.path.contains("/Media/")).expect("the media URL asked");
    assert!(media.credential.as_deref().is_some_and(|c| c.starts_with("Basic ")), "{media:?}");

    // History keeps the attachments with the message.
    let kept = eventually(Duration::from_secs(10), "history has the MMS", || async {
        let messages = history_messages(&app, &token, &conversation.id).await?;
        messages.into_iter().find(|m| !m.attachments.is_empty())
    })
    .await;
    assert_eq!(kept.attachments, vec![card.clone()]);

    // Only the tenant's own people get a file.
    let other = app.tenant("globex", &["boris"]).await;
    let (status, _, body) = download(&app, &card.id, Some(other.operator_token("boris"))).await;
    refused((status, String::from_utf8(body).unwrap()), 404, "not_found");
    let (status, _, body) = download(&app, &card.id, None).await;
    refused((status, String::from_utf8(body).unwrap()), 401, "unauthenticated");
    let (status, _, body) = download(&app, &card.id, Some(&app.platform_token())).await;
    refused((status, String::from_utf8(body).unwrap()), 403, "permission_denied");
    let (status, _, body) = download(&app, "not-an-id", Some(&token)).await;
    refused((status, String::from_utf8(body).unwrap()), 400, "invalid_argument");
    let (status, _, body) = download(&app, &uuid::Uuid::now_v7().to_string(), Some(&token)).await;
    refused((status, String::from_utf8(body).unwrap()), 404, "not_found");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_that_cannot_be_had_fail_with_the_reason_and_a_provider_hiccup_is_retried() {
    let (app, fx, mut desk, _alive) = start().await;
    let token = fx.operator_token("anna").to_owned();

    // The CDN fails once; the next delivery fetches it.
    app.providers.add_file("flaky-1", "image/jpeg", JPEG);
    app.providers.fail_downloads("flaky-1", 1);
    posted(
        &app,
        &viber(),
        &viber_picture(5_000_000_002, "viber-user-2=", &app.providers.media_url("viber", "flaky-1")),
    )
    .await;
    let (_, m) = assigned_message(&mut desk).await;
    let flaky = m.attachments.first().cloned().expect("picture");
    assert_eq!(fetched(&app, &flaky.id, &token).await.1, JPEG);
    let tries = app.providers.received("viber").iter().filter(|r| r.path == "media/flaky-1").count();
    assert_eq!(tries, 2, "one failure, one success");

    // A file Telegram does not know: refused for good, with Telegram's reason.
    let unknown = String::from_utf8(parley_e2e::fixture("telegram_photo.json"))
        .unwrap()
        .replace("815700232", "815700299")
        .replace("\"message_id\":4108", "\"message_id\":4199")
        .replace("\"id\":5123456789", "\"id\":5123456788");
    posted(&app, &telegram(), unknown.as_bytes()).await;
    let (_, m) = assigned_message(&mut desk).await;
    let reason = failure(&app, &m.attachments[0].id, &token).await;
    assert!(json(&reason)["error"]["message"].as_str().unwrap().contains("invalid file_id"), "{reason}");
    assert_eq!(json(&reason)["error"]["code"], "attachment_failed");

    // A type customers may not send (a web page posing as a document).
    app.providers.add_file("2003383421387257", "text/html", b"<script>alert(1)</script>");
    let body = wa_media(
        "16505551235",
        "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQUFERjg0NDEzNDdFODU3MUMxMQA=",
        "document",
        serde_json::json!({"filename": "invoice.pdf", "mime_type": "application/pdf", "id": "2003383421387257"}),
    );
    posted(&app, &whatsapp(), &body).await;
    let (_, m) = assigned_message(&mut desk).await;
    let reason = failure(&app, &m.attachments[0].id, &token).await;
    assert!(reason.contains("text/html"), "{reason}");

    // A URL into the private network, in a callback that verifies: never requested.
    posted(&app, &viber(), &viber_picture(5_000_000_003, "viber-user-3=", "http://10.0.0.1/photo.jpg")).await;
    let (_, m) = assigned_message(&mut desk).await;
    let reason = failure(&app, &m.attachments[0].id, &token).await;
    assert!(reason.contains("10.0.0.1") && reason.contains("not allowed"), "{reason}");

    // Still down after every delivery: given up with the cause.
    app.providers.add_file("down-1", "image/jpeg", JPEG);
    app.providers.fail_downloads("down-1", 100);
    posted(&app, &viber(), &viber_picture(5_000_000_004, "viber-user-4=", &app.providers.media_url("viber", "down-1")))
        .await;
    let (_, m) = assigned_message(&mut desk).await;
    let reason = failure(&app, &m.attachments[0].id, &token).await;
    assert!(reason.contains("gave up after 3 attempts") && reason.contains("503"), "{reason}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_attachments_and_inline_images_are_stored_before_the_mail_is_accepted() {
    let (app, fx, mut desk, _alive) = crate::email::start().await;
    let token = fx.operator_token("anna").to_owned();
    let pdf = b"%PDF-1.4 the contract, page 1";
    let b64 = |b: &[u8]| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(b)
    };
    let mail = format!(
        "From: Oleg <oleg@example.ru>\r\nTo: support@acme.example\r\nSubject: =?UTF-8?B?{subject}?=\r\n\
         Message-ID: <attachments-1@example.ru>\r\nDate: Sat, 5 Dec 2026 10:00:00 +0300\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
         --b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nДоговор и скан во вложении.\r\n\
         --b1\r\nContent-Type: application/pdf; name=\"=?UTF-8?B?{name}?=\"\r\nContent-Disposition: attachment\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{pdf}\r\n\
         --b1\r\nContent-Type: image/png\r\nContent-Disposition: inline; filename=\"scan.png\"\r\nContent-ID: <scan1>\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{png}\r\n--b1--\r\n",
        subject = b64("Договор".as_bytes()),
        name = b64("договор.pdf".as_bytes()),
        pdf = b64(pdf),
        png = b64(PNG),
    );
    let (code, reply) =
        crate::email::deliver(&app, "oleg@example.ru", &["support@acme.example"], mail.as_bytes()).await;
    assert_eq!(code, 250, "{reply}");
    // Accepted means stored: the files are there at once, no fetching.
    let (_, m) = assigned_message(&mut desk).await;
    assert_eq!(m.text, "Договор и скан во вложении.");
    let names: Vec<&str> = m.attachments.iter().map(|a| a.file_name.as_str()).collect();
    assert_eq!(names, ["договор.pdf", "scan.png"]);
    let (status, mime, body) = download(&app, &m.attachments[0].id, Some(&token)).await;
    assert_eq!((status, mime.as_str(), body.as_slice()), (200, "application/pdf", &pdf[..]));
    let (status, mime, body) = download(&app, &m.attachments[1].id, Some(&token)).await;
    assert_eq!((status, mime.as_str(), body.as_slice()), (200, "image/png", PNG));
    assert_eq!(m.attachments[1].kind, v1::AttachmentKind::Image as i32);
    app.stop().await;
}

/// `POST /v1/attachments?name=…` with a token and a content type: status and JSON answer.
pub(crate) async fn upload(
    app: &App,
    token: Option<&str>,
    mime: &str,
    name: &str,
    bytes: &[u8],
) -> (u16, serde_json::Value) {
    let mut request = reqwest::Client::new()
        .post(format!("http://{}/v1/attachments", app.webhooks_addr()))
        .query(&[("name", name)])
        .header(reqwest::header::CONTENT_TYPE, mime)
        .body(bytes.to_vec());
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    let response = request.send().await.expect("ingest answers");
    let status = response.status().as_u16();
    let body = response.bytes().await.expect("body");
    (status, serde_json::from_slice(&body).expect("a JSON answer"))
}

fn file_reply(conversation: &str, client: &str, text: &str, files: &[&str]) -> v1::SendReply {
    v1::SendReply {
        conversation_id: conversation.into(),
        client_message_id: client.into(),
        text: text.into(),
        template: None,
        attachment_ids: files.iter().map(|f| (*f).to_owned()).collect(),
    }
}

fn rejected(frame: v1::open_session_response::Frame) -> v1::ReplyRejected {
    match frame {
        v1::open_session_response::Frame::ReplyRejected(r) => r,
        other => panic!("expected the reply refused, got {other:?}"),
    }
}

/// The bytes behind a link, as a provider fetching it gets them.
async fn fetch_link(link: &str) -> (u16, Vec<u8>) {
    let response = reqwest::get(link).await.expect("ingest answers the link");
    (response.status().as_u16(), response.bytes().await.expect("body").to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_send_files_that_providers_fetch_by_a_signed_link() {
    let (app, fx, mut desk, _alive) = start().await;
    let token = fx.operator_token("anna").to_owned();

    // Uploads: the tenant's people only, the types customers may be sent, a name on one line.
    let (status, photo) = upload(&app, Some(&token), "image/jpeg", "фото.jpg", JPEG).await;
    assert_eq!(status, 201, "{photo}");
    assert_eq!((photo["kind"].as_str(), photo["size_bytes"].as_u64()), (Some("image"), Some(JPEG.len() as u64)));
    let (status, pdf) = upload(&app, Some(&token), "application/pdf", "договор.pdf", b"%PDF-1.4 contract").await;
    assert_eq!(status, 201, "{pdf}");
    let (photo, pdf) = (photo["id"].as_str().unwrap().to_owned(), pdf["id"].as_str().unwrap().to_owned());
    let refusals = [
        (upload(&app, None, "image/jpeg", "a.jpg", JPEG).await, 401, "unauthenticated"),
        (upload(&app, Some(&token), "text/html", "a.html", b"<script>").await, 415, "unsupported_type"),
        (upload(&app, Some(&token), "image/jpeg", "a.jpg", b"").await, 400, "invalid_argument"),
        (upload(&app, Some(&token), "image/jpeg", "a\nb.jpg", JPEG).await, 400, "invalid_argument"),
        (upload(&app, Some(&app.platform_token()), "image/jpeg", "a.jpg", JPEG).await, 403, "permission_denied"),
    ];
    for ((status, body), want, code) in refusals {
        assert_eq!((status, body["error"]["code"].as_str()), (want, Some(code)), "{body}");
    }

    // Telegram: the photo by link, with its caption.
    let tg = parley_e2e::fixture("telegram_text.json");
    posted(&app, &telegram(), &tg).await;
    let (chat, _) = assigned_message(&mut desk).await;
    let tg_chat = chat.id.clone();
    let ok = parley_e2e::accepted(desk.send_reply(file_reply(&chat.id, "f-1", "Ваш чек", &[&photo])).await);
    parley_e2e::delivery_state(&mut desk, &ok.message_id, v1::DeliveryState::Sent).await;
    let sent =
        app.providers.received("telegram").into_iter().find(|r| r.path.ends_with("/sendPhoto")).expect("sendPhoto");
    let body = sent.json();
    assert_eq!(body["caption"], "Ваш чек");
    let link = body["photo"].as_str().expect("the photo's link").to_owned();
    assert_eq!(fetch_link(&link).await, (200, JPEG.to_vec()), "{link}");
    // The link is the credential: altered, it opens nothing.
    let last = if link.ends_with('0') { '1' } else { '0' };
    let forged = format!("{}{last}", &link[..link.len() - 1]);
    assert_eq!(fetch_link(&forged).await.0, 403);
    let elsewhere = link.replace("/acme/", "/globex/");
    assert_eq!(fetch_link(&elsewhere).await.0, 403);

    // WhatsApp: a document message by link, with the file's name.
    let wa = parley_e2e::fixture("whatsapp_text.min.json");
    posted(&app, &whatsapp(), &wa).await;
    let (chat, _) = assigned_message(&mut desk).await;
    let ok = parley_e2e::accepted(desk.send_reply(file_reply(&chat.id, "f-2", "", &[&pdf])).await);
    parley_e2e::delivery_state(&mut desk, &ok.message_id, v1::DeliveryState::Sent).await;
    let body = app.providers.received("whatsapp").last().expect("a send").json();
    assert_eq!((body["type"].as_str(), body["document"]["filename"].as_str()), (Some("document"), Some("договор.pdf")));
    assert!(body["document"].get("caption").is_none(), "no text, no caption: {body}");
    let link = body["document"]["link"].as_str().expect("the document's link").to_owned();
    assert_eq!(fetch_link(&link).await, (200, b"%PDF-1.4 contract".to_vec()));

    // MMS: both files as MediaUrl.
    let form = parley_e2e::fixture("twilio_sms.form");
    posted(&app, &sms(), &form).await;
    let (chat, _) = assigned_message(&mut desk).await;
    let ok = parley_e2e::accepted(desk.send_reply(file_reply(&chat.id, "f-3", "Документы", &[&photo, &pdf])).await);
    parley_e2e::delivery_state(&mut desk, &ok.message_id, v1::DeliveryState::Sent).await;
    let form = app.providers.received("twilio").last().expect("a send").form();
    let media: Vec<&str> = form.iter().filter(|(k, _)| k == "MediaUrl").map(|(_, v)| v.as_str()).collect();
    assert_eq!(media.len(), 2, "{form:?}");
    assert_eq!(fetch_link(media[1]).await.1, b"%PDF-1.4 contract");

    // What a channel cannot carry is refused before anything is sent.
    let r = rejected(desk.send_reply(file_reply(&tg_chat, "f-4", "", &[&photo, &pdf])).await);
    assert_eq!(r.code, "INVALID_ARGUMENT", "{}", r.message);
    assert!(r.message.contains("at most 1"), "{}", r.message);
    let viber_body = parley_e2e::fixture("viber_message.min.json");
    posted(&app, &viber(), &viber_body).await;
    let (viber_chat, _) = assigned_message(&mut desk).await;
    let r = rejected(desk.send_reply(file_reply(&viber_chat.id, "f-7", "see the contract", &[&pdf])).await);
    assert!(r.code == "INVALID_ARGUMENT" && r.message.contains("Viber sends a file without text"), "{}", r.message);
    let ok = parley_e2e::accepted(desk.send_reply(file_reply(&viber_chat.id, "f-8", "", &[&pdf])).await);
    parley_e2e::delivery_state(&mut desk, &ok.message_id, v1::DeliveryState::Sent).await;
    let body = app.providers.received("viber").last().expect("a send").json();
    assert_eq!((body["type"].as_str(), body["file_name"].as_str()), (Some("file"), Some("договор.pdf")), "{body}");
    let r = rejected(desk.send_reply(file_reply(&chat.id, "f-5", "", &[&uuid::Uuid::now_v7().to_string()])).await);
    assert_eq!(r.code, "NOT_FOUND", "{}", r.message);
    let other = app.tenant("globex", &["boris"]).await;
    let (_, theirs) = upload(&app, Some(other.operator_token("boris")), "image/jpeg", "x.jpg", JPEG).await;
    let r = rejected(desk.send_reply(file_reply(&chat.id, "f-6", "", &[theirs["id"].as_str().unwrap()])).await);
    assert_eq!(r.code, "NOT_FOUND", "another tenant's file is no file here: {}", r.message);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_replies_carry_the_operator_s_files_attached() {
    let (app, relay, fx, mut desk, _alive) = crate::email::start_relayed().await;
    let token = fx.operator_token("anna").to_owned();
    let answer = crate::email::deliver(
        &app,
        "oleg@example.ru",
        &["support@acme.example"],
        &parley_e2e::fixture("email_koi8r.eml"),
    )
    .await;
    assert_eq!(answer.0, 250, "{}", answer.1);
    let (conversation, _) = assigned_message(&mut desk).await;

    let (_, pdf) = upload(&app, Some(&token), "application/pdf", "акт сверки.pdf", b"%PDF-1.4 reconciliation").await;
    let (_, scan) = upload(&app, Some(&token), "image/png", "", PNG).await;
    let files = [pdf["id"].as_str().unwrap(), scan["id"].as_str().unwrap()];
    let ok =
        parley_e2e::accepted(desk.send_reply(file_reply(&conversation.id, "m-1", "Акт во вложении.", &files)).await);
    parley_e2e::delivery_state(&mut desk, &ok.message_id, v1::DeliveryState::Sent).await;
    let mails = relay.mails();
    assert_eq!(mails.len(), 1);
    let parsed = mail_parser::MessageParser::default().parse(&mails[0].raw).expect("a readable mail");
    assert_eq!(parsed.body_text(0).map(|t| t.trim_end().to_owned()).as_deref(), Some("Акт во вложении."));
    let attached: Vec<(Option<&str>, &[u8])> =
        parsed.attachments().map(|a| (a.attachment_name(), a.contents())).collect();
    assert_eq!(attached, [(Some("акт сверки.pdf"), &b"%PDF-1.4 reconciliation"[..]), (Some("attachment-2"), PNG)],);
    app.stop().await;
}
