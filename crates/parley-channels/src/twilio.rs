//! Twilio Programmable Messaging (SMS/MMS): `X-Twilio-Signature` (form and `bodySHA256`
//! variants, with and without the default port), strict form parsing, inbound messages and
//! status callbacks, the `Messages.json` form body and send-response classification.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use parley_domain::Channel;
use parley_domain::message::DeliveryState;
use percent_encoding::{NON_ALPHANUMERIC, percent_decode, utf8_percent_encode};
use serde::Deserialize;

use crate::inbound::check_id;
use crate::outbound::{FORM, HttpResponse, OutboundRequest, SendOutcome, by_status, retry_after_header, snippet};
use crate::sig::{check_size, ct_eq, hmac_sha1};
use crate::{
    ChannelError, DeliveryReceipt, Identity, Inbound, InboundMessage, MAX_WEBHOOK_BYTES, MediaKind, MediaRef,
    ProviderError,
};

/// The header Twilio signs requests in.
pub const SIGNATURE_HEADER: &str = "X-Twilio-Signature";

/// The most media an MMS carries.
const MAX_MEDIA: usize = 10;

/// Decodes an `application/x-www-form-urlencoded` body strictly: unlike lossy decoders, a
/// value that is not UTF-8 after percent-decoding is an error, not a replacement character
/// (the signature was computed over the real bytes, and the text must not silently change).
pub fn parse_form(body: &[u8]) -> Result<Vec<(String, String)>, ChannelError> {
    check_size(body, MAX_WEBHOOK_BYTES)?;
    let decode = |raw: &[u8]| -> Result<String, ChannelError> {
        let plus_as_space: Vec<u8> = raw.iter().map(|&b| if b == b'+' { b' ' } else { b }).collect();
        let bytes: Vec<u8> = percent_decode(&plus_as_space).collect();
        String::from_utf8(bytes).map_err(|_| ChannelError::InvalidUtf8)
    };
    body.split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = match pair.iter().position(|&b| b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &b""[..]),
            };
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

/// The signature Twilio computes: base64(HMAC-SHA1(auth token, url + every key and value,
/// sorted by key, then by value for a repeated key)).
pub fn compute_signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut parts: Vec<&[u8]> = vec![url.as_bytes()];
    for (k, v) in sorted {
        parts.push(k.as_bytes());
        parts.push(v.as_bytes());
    }
    BASE64.encode(hmac_sha1(auth_token.as_bytes(), &parts))
}

/// The two forms of the URL Twilio's own validators accept, because Twilio may have signed
/// either depending on how the webhook was configured: the URL with any port removed, and
/// the URL with a port (the default one for the scheme added if none was given).
pub fn url_variants(url: &str) -> [String; 2] {
    let Some((scheme, rest)) = url.split_once("://") else { return [url.to_owned(), url.to_owned()] };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let host_start = authority.rfind('@').map_or(0, |i| i + 1);
    let (userinfo, hostport) = authority.split_at(host_start);
    // A ':' after an IPv6 literal's ']' (or in a plain host) starts the port.
    let port_colon = match hostport.rfind(']') {
        Some(bracket) => hostport[bracket..].find(':').map(|i| bracket + i),
        None => hostport.rfind(':'),
    };
    let host = port_colon.map_or(hostport, |i| &hostport[..i]);
    let without = format!("{scheme}://{userinfo}{host}{tail}");
    let with = match port_colon {
        Some(_) => url.to_owned(),
        None => {
            let port = if scheme.eq_ignore_ascii_case("https") { 443 } else { 80 };
            format!("{scheme}://{userinfo}{host}:{port}{tail}")
        }
    };
    [without, with]
}

fn check(auth_token: &str, url: &str, params: &[(String, String)], header: Option<&str>) -> Result<(), ChannelError> {
    let header = header.map(str::trim).filter(|h| !h.is_empty()).ok_or(ChannelError::MissingSignature)?;
    // Both variants are always computed, so timing does not tell which one matched.
    let matches = url_variants(url)
        .iter()
        .map(|u| ct_eq(compute_signature(auth_token, u, params).as_bytes(), header.as_bytes()))
        .fold(false, |acc, m| acc | m);
    if matches { Ok(()) } else { Err(ChannelError::BadSignature) }
}

/// Verifies a form-encoded webhook (`url` is the full URL Twilio requested, query included)
/// and returns its decoded parameters.
pub fn verify_form(
    auth_token: &str,
    url: &str,
    body: &[u8],
    header: Option<&str>,
) -> Result<Vec<(String, String)>, ChannelError> {
    let params = parse_form(body)?;
    check(auth_token, url, &params, header)?;
    Ok(params)
}

/// Verifies a JSON-bodied webhook: Twilio signs the URL alone and puts the hex SHA-256 of the
/// body in the URL's `bodySHA256` query parameter.
pub fn verify_json(auth_token: &str, url: &str, body: &[u8], header: Option<&str>) -> Result<(), ChannelError> {
    check_size(body, MAX_WEBHOOK_BYTES)?;
    let query = url.split_once('?').map(|(_, q)| q.split('#').next().unwrap_or_default()).unwrap_or_default();
    let given = form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "bodySHA256")
        .map(|(_, v)| v.into_owned())
        .ok_or_else(|| ChannelError::malformed("url has no bodySHA256 parameter"))?;
    check(auth_token, url, &[], header)?;
    let actual = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(body));
    if ct_eq(actual.as_bytes(), given.to_ascii_lowercase().as_bytes()) {
        Ok(())
    } else {
        Err(ChannelError::BadSignature)
    }
}

fn get<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
}

fn require<'a>(params: &'a [(String, String)], key: &str) -> Result<&'a str, ChannelError> {
    get(params, key).ok_or_else(|| ChannelError::Malformed(format!("twilio form has no {key}")))
}

/// Descriptions of error codes common in status callbacks (which carry only the code).
fn error_description(code: &str) -> Option<&'static str> {
    Some(match code {
        "21610" => "recipient unsubscribed (replied stop)",
        "21211" => "invalid 'to' phone number",
        "21614" => "'to' number is not a valid mobile number",
        "30003" => "unreachable destination handset",
        "30004" => "message blocked",
        "30005" => "unknown destination handset",
        "30006" => "landline or unreachable carrier",
        "30007" => "message filtered by carrier",
        "30008" => "unknown error",
        _ => return None,
    })
}

/// Parses decoded webhook parameters (from [`verify_form`]): an inbound SMS/MMS or a status
/// callback. Twilio's webhooks carry no timestamp, so `received_at` (Unix ms) stands in.
pub fn parse_webhook(params: &[(String, String)], received_at: i64) -> Result<Vec<Inbound>, ChannelError> {
    let sid = get(params, "MessageSid")
        .or_else(|| get(params, "SmsSid"))
        .ok_or_else(|| ChannelError::malformed("twilio form has no MessageSid"))?;
    check_id("twilio MessageSid", sid)?;
    let status = get(params, "MessageStatus").or_else(|| get(params, "SmsStatus"));
    if let Some(status) = status.filter(|s| *s != "received") {
        let state = match status {
            "accepted" | "queued" | "scheduled" | "sending" => DeliveryState::Accepted,
            "sent" => DeliveryState::Sent,
            "delivered" => DeliveryState::Delivered,
            "read" => DeliveryState::Read,
            "undelivered" | "failed" | "canceled" => DeliveryState::Failed,
            other => {
                let other: String = other.chars().take(40).collect();
                return Ok(vec![Inbound::Ignored { reason: format!("twilio status {other} is not handled") }]);
            }
        };
        let error = get(params, "ErrorCode").map(|code| ProviderError {
            code: code.to_owned(),
            description: get(params, "ErrorMessage").map(str::to_owned).or(error_description(code).map(str::to_owned)),
        });
        return Ok(vec![Inbound::Receipt(DeliveryReceipt {
            channel: Channel::Sms,
            provider_message_id: sid.to_owned(),
            state,
            error,
            recipient: get(params, "To").map(str::to_owned),
            at: received_at,
        })]);
    }
    let from = require(params, "From")?;
    let sender = Identity { channel: Channel::Sms, external_id: from.to_owned(), display_name: None, language: None };
    let mut msg = InboundMessage::new(Channel::Sms, sid.to_owned(), sender, received_at)?;
    msg.account = Some(require(params, "To")?.to_owned());
    msg.provider_account = get(params, "AccountSid").map(str::to_owned);
    // Body is present but may be empty for a picture-only MMS.
    msg.text = params.iter().find(|(k, _)| k == "Body").map(|(_, v)| v.clone()).unwrap_or_default();
    let num_media: usize = match get(params, "NumMedia") {
        Some(n) => n.parse().map_err(|_| ChannelError::malformed("twilio NumMedia is not a number"))?,
        None => 0,
    };
    if num_media > MAX_MEDIA {
        return Err(ChannelError::Malformed(format!("twilio NumMedia {num_media} is over {MAX_MEDIA}")));
    }
    for i in 0..num_media {
        let url = require(params, &format!("MediaUrl{i}"))?;
        let mime = get(params, &format!("MediaContentType{i}"));
        msg.attachments.push(MediaRef {
            kind: mime.map_or(MediaKind::Document, MediaKind::from_mime),
            provider_ref: url.to_owned(),
            mime: mime.map(str::to_owned),
            file_name: None,
            size: None,
        });
    }
    Ok(vec![Inbound::Message(msg)])
}

/// Who a message is sent from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TwilioSender<'a> {
    /// A phone number or alphanumeric sender id.
    From(&'a str),
    /// A Messaging Service, which picks the number.
    MessagingService(&'a str),
}

/// The form body for `POST /2010-04-01/Accounts/{sid}/Messages.json`.
pub fn send_message(
    account_sid: &str,
    to: &str,
    sender: TwilioSender<'_>,
    body: Option<&str>,
    media_urls: &[&str],
    status_callback: Option<&str>,
) -> OutboundRequest {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("To", to);
    match sender {
        TwilioSender::From(from) => form.append_pair("From", from),
        TwilioSender::MessagingService(sid) => form.append_pair("MessagingServiceSid", sid),
    };
    if let Some(b) = body {
        form.append_pair("Body", b);
    }
    for url in media_urls {
        form.append_pair("MediaUrl", url);
    }
    if let Some(cb) = status_callback {
        form.append_pair("StatusCallback", cb);
    }
    OutboundRequest {
        path: format!("2010-04-01/Accounts/{}/Messages.json", utf8_percent_encode(account_sid, NON_ALPHANUMERIC)),
        content_type: FORM,
        body: form.finish().into_bytes(),
    }
}

#[derive(Deserialize)]
struct ApiAnswer {
    sid: Option<String>,
    code: Option<i64>,
    message: Option<String>,
}

/// Classifies the answer to `Messages.json`.
pub fn classify_response(resp: &HttpResponse<'_>) -> SendOutcome {
    let Ok(parsed) = serde_json::from_slice::<ApiAnswer>(resp.body) else {
        return by_status(resp, &snippet(resp.body));
    };
    if (200..300).contains(&resp.status) {
        // An empty sid is no sid: no receipt could name it.
        return SendOutcome::Sent { provider_message_id: parsed.sid.filter(|sid| !sid.is_empty()) };
    }
    match parsed.code {
        // 20429: too many requests.
        Some(20429) => SendOutcome::Retry { after: retry_after_header(resp.retry_after) },
        _ if resp.status == 429 || resp.status >= 500 => {
            SendOutcome::Retry { after: retry_after_header(resp.retry_after) }
        }
        // 21610: the recipient replied STOP; 21211/21614: not a (mobile) number.
        Some(code) => SendOutcome::failed(code, parsed.message.unwrap_or_default()),
        None => by_status(resp, &snippet(resp.body)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing (`parley-fuzz`): `%00` decoded into a MessageSid or a From that
    /// history cannot store.
    #[test]
    fn a_sid_or_sender_with_control_characters_is_malformed() {
        let form = |sid: &str, from: &str| format!("MessageSid={sid}&From={from}&To=%2B14155550100&Body=hi");
        let parse = |body: String| parse_webhook(&parse_form(body.as_bytes()).unwrap(), 0);
        assert!(parse(form("SM1", "%2B14155550123")).is_ok());
        for (sid, from) in [("SM%00", "%2B14155550123"), ("SM1", "%2B1415%00"), ("SM%0A1", "%2B14155550123")] {
            assert!(matches!(parse(form(sid, from)), Err(ChannelError::Malformed(_))), "{sid} {from}");
        }
        let status = "MessageSid=SM%00&MessageStatus=delivered";
        assert!(matches!(parse(status.to_owned()), Err(ChannelError::Malformed(_))));
    }

    /// Found by fuzzing: an empty sid in a 2xx answer was kept as the sent message's id.
    #[test]
    fn an_empty_sent_sid_is_no_sid() {
        let resp = HttpResponse { status: 201, body: br#"{"sid":"","status":"queued"}"#, retry_after: None };
        assert_eq!(classify_response(&resp), SendOutcome::Sent { provider_message_id: None });
    }
}
