//! Targets over `parley-channels`: each provider's webhook parser and signature check, email
//! parsing and thread tokens, the send-answer classifiers and SMS segment counting.

use parley_channels::segments::{self, SmsEncoding};
use parley_channels::{
    ChannelError, HttpResponse, Inbound, SendOutcome, email as mail, hmac_sha256, telegram, twilio, viber, whatsapp,
};
use parley_domain::{Channel, ConversationId, MessageId, TenantId};
use sha2::Digest;

use crate::{RECEIVED_AT, check_error, check_events, parse_events, split, utf8};

/// The key thread tokens are made with here; [`OTHER_KEY`] is anyone else's.
const KEY: &[u8] = b"parley fuzz thread-token key";
const OTHER_KEY: &[u8] = b"another installation's key";

/// The largest email the targets take (the listener's default limit is larger; nothing in
/// the parser depends on it).
const MAX_EMAIL_BYTES: usize = 1 << 20;

/// Telegram `Update` parsing: one event per update. A message's dedupe key is
/// `{chat}:{message}` (an edit's `…:edit:{date}`, with `edit_of` the original's key), its
/// reply goes to the chat, and it has text, media or a location (else it is `Ignored`).
pub fn telegram_update(data: &[u8]) {
    let Some(events) = parse_events(|| telegram::parse_update(data), Channel::Telegram) else { return };
    assert_eq!(events.len(), 1, "an update is one event");
    for event in &events {
        let Inbound::Message(m) = event else { continue };
        let (chat, _) = telegram::parse_message_key(&m.provider_message_id)
            .unwrap_or_else(|| panic!("the dedupe key {:?} is not {{chat}}:{{message}}", m.provider_message_id));
        assert_eq!(m.reply_address, chat.to_string(), "a reply goes to the message's chat");
        if let Some(original) = &m.edit_of {
            assert!(
                m.provider_message_id.starts_with(&format!("{original}:edit:")),
                "an edit's key names its original"
            );
        }
        assert!(
            !m.text.is_empty() || !m.attachments.is_empty() || m.location.is_some(),
            "a message with nothing in it is not Ignored: {m:?}"
        );
    }
}

/// `X-Telegram-Bot-Api-Secret-Token`: input `secret\nheader`. Accepted exactly when the
/// header is the configured secret, and never when no secret is configured.
pub fn telegram_secret(data: &[u8]) {
    let [expected, header] = split(data);
    let (Some(expected), Some(header)) = (utf8(expected), utf8(header)) else { return };
    let verdict = telegram::verify_secret_token(expected, Some(header));
    assert_eq!(verdict.is_ok(), !expected.is_empty() && header == expected, "{verdict:?}");
    if let Err(e) = &verdict {
        check_error(e);
    }
    assert_eq!(telegram::verify_secret_token(expected, None), Err(ChannelError::MissingSignature));
}

/// WhatsApp webhook parsing: every event well-formed, each message naming the phone
/// number and business account it was sent to.
pub fn whatsapp_webhook(data: &[u8]) {
    let Some(events) = parse_events(|| whatsapp::parse_webhook(data), Channel::WhatsApp) else { return };
    for event in &events {
        if let Inbound::Message(m) = event {
            assert!(m.account.is_some() && m.provider_account.is_some(), "a message without its account: {m:?}");
        }
    }
}

/// `X-Hub-Signature-256`: input `app secret\nheader\nbody`.
pub fn whatsapp_signature(data: &[u8]) {
    let [secret, header, body] = split(data);
    let (Some(secret), Some(header)) = (utf8(secret), utf8(header)) else { return };
    check_hex_signature(secret, body, header, "sha256=", whatsapp::verify_signature);
}

/// The subscription handshake: input `verify token\nquery`. The challenge is echoed only for
/// `hub.mode=subscribe` with the configured (non-empty) verify token.
pub fn whatsapp_subscription(data: &[u8]) {
    let [token, query] = split(data);
    let (Some(token), Some(query)) = (utf8(token), utf8(query)) else { return };
    match whatsapp::verify_subscription(query, token) {
        Ok(challenge) => {
            let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes()).into_owned().collect();
            let last = |key: &str| pairs.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
            assert!(!token.is_empty(), "a handshake passed with no verify token configured");
            assert_eq!(last("hub.mode"), Some("subscribe"));
            assert_eq!(last("hub.verify_token"), Some(token), "a handshake passed with another verify token");
            assert_eq!(last("hub.challenge"), Some(challenge.as_str()));
            assert!(!challenge.is_empty());
        }
        Err(e) => check_error(&e),
    }
    if !token.is_empty() {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("hub.mode", "subscribe")
            .append_pair("hub.verify_token", token)
            .append_pair("hub.challenge", "1158201444")
            .finish();
        assert_eq!(whatsapp::verify_subscription(&query, token).as_deref(), Ok("1158201444"), "Meta's own handshake");
    }
}

/// Viber callback parsing: one event per callback; message tokens are decimal text.
pub fn viber_callback(data: &[u8]) {
    let Some(events) = parse_events(|| viber::parse_callback(data), Channel::Viber) else { return };
    assert_eq!(events.len(), 1, "a callback is one event");
    for event in &events {
        let token = match event {
            Inbound::Message(m) => &m.provider_message_id,
            Inbound::Receipt(r) => &r.provider_message_id,
            _ => continue,
        };
        let digits = token.strip_prefix('-').unwrap_or(token);
        assert!(!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()), "token {token:?} is not decimal");
    }
}

/// `X-Viber-Content-Signature`: input `auth token\nheader\nbody`.
pub fn viber_signature(data: &[u8]) {
    let [token, header, body] = split(data);
    let (Some(token), Some(header)) = (utf8(token), utf8(header)) else { return };
    check_hex_signature(token, body, header, "", viber::verify_signature);
}

type HexVerifier = fn(&str, &[u8], Option<&str>) -> Result<(), ChannelError>;

/// A `{prefix}hex(HMAC-SHA256(key, body))` header check: what it accepts is the body's MAC
/// under the key; the right MAC passes in either letter case; the same MAC under another key
/// or over another body, and a missing header, do not.
fn check_hex_signature(key: &str, body: &[u8], header: &str, prefix: &str, verify: HexVerifier) {
    let mac = hmac_sha256(key.as_bytes(), body);
    let verdict = verify(key, body, Some(header));
    match &verdict {
        Ok(()) => {
            let given = header.trim().strip_prefix(prefix).map(str::trim);
            let given = given.and_then(|g| hex::decode(g).ok());
            assert_eq!(given.as_deref(), Some(&mac[..]), "accepted {header:?}, which is not the body's MAC");
        }
        Err(e) => check_error(e),
    }
    let good = format!("{prefix}{}", hex::encode(mac));
    assert_eq!(verify(key, body, Some(&good)), Ok(()), "refused the right signature");
    assert_eq!(verify(key, body, Some(&format!("{prefix}{}", hex::encode_upper(mac)))), Ok(()));
    assert!(verify(&format!("{key}x"), body, Some(&good)).is_err(), "accepted a signature made with another key");
    let longer = [body, b" "].concat();
    assert!(verify(key, &longer, Some(&good)).is_err(), "accepted a signature over another body");
    assert_eq!(verify(key, body, None), Err(ChannelError::MissingSignature));
}

/// Twilio's form decoding and webhook parsing. The decoded parameters (what the signature is
/// computed over) survive encoding and decoding again; a message names the number it was
/// sent to and at most ten media; Twilio gives no time, so the receipt time stands in.
pub fn twilio_form(data: &[u8]) {
    let params = match twilio::parse_form(data) {
        Ok(params) => params,
        Err(e) => return check_error(&e),
    };
    let mut form = form_urlencoded::Serializer::new(String::new());
    for (k, v) in &params {
        form.append_pair(k, v);
    }
    assert_eq!(twilio::parse_form(form.finish().as_bytes()).as_ref(), Ok(&params), "decoding is not faithful");
    let Some(events) = parse_events(|| twilio::parse_webhook(&params, RECEIVED_AT), Channel::Sms) else { return };
    assert_eq!(events.len(), 1, "a webhook is one event");
    for event in &events {
        match event {
            Inbound::Message(m) => {
                assert!(m.account.as_ref().is_some_and(|a| !a.is_empty()), "a message without its To: {m:?}");
                assert!(m.attachments.len() <= 10, "more media than an MMS carries");
                assert_eq!(m.sent_at, RECEIVED_AT);
            }
            Inbound::Receipt(r) => assert_eq!(r.at, RECEIVED_AT),
            _ => {}
        }
    }
}

/// `X-Twilio-Signature`: input `auth token\nurl\nheader\nbody`. A form is accepted only with
/// the signature over one of the URL's two forms and its parameters; the JSON variant only
/// when `bodySHA256` is the body's hash too. The right signature passes, another key's not.
pub fn twilio_signature(data: &[u8]) {
    let [token, url, header, body] = split(data);
    let (Some(token), Some(url), Some(header)) = (utf8(token), utf8(url), utf8(header)) else { return };
    let variants = twilio::url_variants(url);
    let signed = |params: &[(String, String)]| {
        variants.iter().any(|u| twilio::compute_signature(token, u, params) == header.trim())
    };
    match twilio::verify_form(token, url, body, Some(header)) {
        Ok(params) => assert!(signed(&params), "accepted a form whose signature is not its own"),
        Err(e) => check_error(&e),
    }
    let digest = hex::encode(sha2::Sha256::digest(body));
    match twilio::verify_json(token, url, body, Some(header)) {
        Ok(()) => {
            assert!(signed(&[]), "accepted a JSON body whose URL signature is not its own");
            let query = url.split_once('?').map_or("", |(_, q)| q.split('#').next().unwrap_or_default());
            let given = form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "bodySHA256").map(|(_, v)| v);
            assert_eq!(given.map(|g| g.to_ascii_lowercase()), Some(digest.clone()), "accepted another body's hash");
        }
        Err(e) => check_error(&e),
    }
    let other = format!("{token}x");
    if let Ok(params) = twilio::parse_form(body) {
        let good = twilio::compute_signature(token, url, &params);
        assert_eq!(twilio::verify_form(token, url, body, Some(&good)), Ok(params), "refused the right signature");
        assert!(twilio::verify_form(&other, url, body, Some(&good)).is_err(), "accepted another key's signature");
    }
    let json_url = if url.contains(['?', '#']) || url.is_empty() {
        format!("https://parley.test/webhooks/acme/sms?bodySHA256={digest}")
    } else {
        format!("{url}?bodySHA256={digest}")
    };
    let good = twilio::compute_signature(token, &json_url, &[]);
    assert_eq!(twilio::verify_json(token, &json_url, body, Some(&good)), Ok(()), "refused the right JSON signature");
    assert!(twilio::verify_json(&other, &json_url, body, Some(&good)).is_err(), "accepted another key's signature");
    let longer = [body, b" "].concat();
    assert!(twilio::verify_json(token, &json_url, &longer, Some(&good)).is_err(), "accepted another body");
}

/// Email parsing. The sender is the lowercase `From` address; the dedupe key is the
/// `Message-ID` or the hash of the bytes; the quoted message is the first `In-Reply-To`;
/// attachments are numbered parts; the size limit holds; and nothing a customer writes in
/// the threading headers names a conversation without our key.
pub fn email(data: &[u8]) {
    let parsed = mail::parse_email(data, MAX_EMAIL_BYTES, RECEIVED_AT);
    assert_eq!(parsed, mail::parse_email(data, MAX_EMAIL_BYTES, RECEIVED_AT), "parsing is not deterministic");
    let e = match parsed {
        Ok(e) => e,
        Err(e) => return check_error(&e),
    };
    check_events(&[Inbound::Message(e.message.clone())], Channel::Email);
    assert!(e.from.address.contains('@'), "a sender without an address: {:?}", e.from);
    assert_eq!(e.message.sender.external_id, e.from.address.to_lowercase());
    match &e.message_id {
        Some(id) => assert_eq!(&e.message.provider_message_id, id),
        None => assert!(e.message.provider_message_id.starts_with("sha256:")),
    }
    assert!(e.in_reply_to.iter().chain(&e.references).all(|id| !id.is_empty()), "an empty referenced id");
    let quoted = e.message.quoted.as_ref().map(|q| q.channel_message_id.as_str());
    assert_eq!(quoted, e.in_reply_to.first().map(String::as_str));
    assert_eq!(e.message.attachments.len(), e.attachments.len());
    for (i, (r, a)) in e.message.attachments.iter().zip(&e.attachments).enumerate() {
        assert_eq!((r.provider_ref.as_str(), r.size), (format!("part:{i}").as_str(), Some(a.bytes.len() as u64)));
    }
    assert_eq!(
        mail::parse_email(data, data.len() - 1, RECEIVED_AT),
        Err(ChannelError::TooLarge { limit: data.len() - 1 }),
        "the size limit did not hold"
    );
    assert_eq!(mail::thread_token(&e.in_reply_to, &e.references, KEY), None, "a customer forged a thread token");
}

/// Thread tokens: input is referenced ids, one a line (the first half `In-Reply-To`, the rest
/// `References`). Ours names its conversation wherever it stands among them, under our key
/// only; changed, it names that conversation or none; theirs never name one.
pub fn email_thread_token(data: &[u8]) {
    let Some(text) = utf8(data) else { return };
    let ids: Vec<String> = text.lines().map(str::to_owned).collect();
    let (in_reply_to, references) = ids.split_at(ids.len() / 2);

    let referenced = mail::referenced_ids(in_reply_to, references);
    for (i, id) in referenced.iter().enumerate() {
        assert!(!id.is_empty() && !id.starts_with('<') && !id.ends_with('>'), "referenced id {id:?}");
        assert!(!referenced[..i].contains(id), "referenced id {id:?} twice");
    }
    assert_eq!(mail::thread_token(in_reply_to, references, KEY), None, "ids made without the key named a conversation");

    let tenant = TenantId::parse("acme").expect("a valid tenant");
    let message = MessageId::derive(&tenant, "fuzz", text);
    let conversation = ConversationId::opened_by(message);
    let ours = mail::outgoing_message_id(conversation, message, "parley.test", KEY);
    let mut with_ours = references.to_vec();
    with_ours.insert(data.len() % (references.len() + 1), ours.clone());
    assert_eq!(mail::thread_token(in_reply_to, &with_ours, KEY), Some(conversation), "our token was not found");
    assert_eq!(mail::thread_token(in_reply_to, &with_ours, OTHER_KEY), None, "our token verified under another key");

    // One character of ours changed to one of the input's.
    let (at, by) = (data.len() % ours.len(), text.chars().next().unwrap_or('0'));
    let changed: String = ours.chars().enumerate().map(|(i, c)| if i == at { by } else { c }).collect();
    let found = mail::thread_token(std::slice::from_ref(&changed), &[], KEY);
    assert!(found.is_none() || found == Some(conversation), "{changed:?} named another conversation: {found:?}");
}

type Classifier = fn(&HttpResponse<'_>) -> SendOutcome;

/// The providers' answers to a send: input `status[ retry-after]\nbody`. A sent message's id,
/// when given, is not empty (receipts are matched by it); a failure has a code; except for
/// Telegram (whose body holds the verdict), only a 2xx is sent, and 429 and 5xx are retried.
/// Telegram's `getFile` answer is read too.
pub fn send_response(data: &[u8]) {
    let [head, body] = split(data);
    let head = String::from_utf8_lossy(head);
    let mut words = head.splitn(2, ' ');
    let status = words.next().and_then(|s| s.trim().parse::<u16>().ok()).unwrap_or(200);
    let resp = HttpResponse { status, body, retry_after: words.next() };
    let classifiers: [(&str, Classifier); 4] = [
        ("telegram", telegram::classify_response),
        ("whatsapp", whatsapp::classify_response),
        ("viber", viber::classify_response),
        ("twilio", twilio::classify_response),
    ];
    for (provider, classify) in classifiers {
        let outcome = classify(&resp);
        assert_eq!(outcome, classify(&resp), "{provider}: classifying is not deterministic");
        match &outcome {
            SendOutcome::Sent { provider_message_id } => {
                assert!(provider_message_id.as_ref().is_none_or(|id| !id.is_empty()), "{provider}: sent with id \"\"");
                if provider != "telegram" {
                    assert!((200..300).contains(&status), "{provider}: sent on HTTP {status}");
                }
            }
            SendOutcome::Failed { code, .. } => {
                assert!(!code.is_empty(), "{provider}: a failure without a code");
                if provider != "telegram" {
                    let busy = status == 429 || (500..600).contains(&status);
                    assert!(!busy, "{provider}: HTTP {status} is not retried: {outcome:?}");
                }
            }
            SendOutcome::Retry { .. } => {}
        }
    }
    assert_eq!(telegram::parse_get_file(body), telegram::parse_get_file(body), "getFile: not deterministic");
}

/// SMS segment counting on any text: an empty text costs nothing, any other at least one
/// segment, and no more than the parts its units fill (a pair moved whole costs at most a
/// unit a part).
pub fn sms_segments(data: &[u8]) {
    let Some(text) = utf8(data) else { return };
    let c = segments::count(text);
    assert_eq!(c.units == 0, c.segments == 0, "{c:?}");
    assert_eq!(c.units == 0, text.is_empty(), "{c:?}");
    let (single, part) = match c.encoding {
        SmsEncoding::Gsm7 => (160, 153),
        SmsEncoding::Ucs2 => (70, 67),
    };
    let lower = match c.units {
        0 => 0,
        u if u <= single => 1,
        u => u.div_ceil(part),
    };
    assert!(c.segments >= lower && c.segments <= lower.max(1) + c.units / part, "{c:?}");
    if c.encoding == SmsEncoding::Ucs2 {
        assert_eq!(c.units, text.encode_utf16().count(), "{c:?}");
    }
}
