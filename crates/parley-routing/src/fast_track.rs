//! Fast-track codes: an operator gives a customer a short code; a message carrying it (in
//! any channel: as the API's `fast_track_code`, or anywhere in the text) goes straight to
//! that operator. Codes use an alphabet without look-alikes, expire, may be single- or
//! multi-use, belong to one tenant, and wrong ones are counted per customer: past the
//! tenant's limit an hour, codes from that customer are ignored.

use parley_domain::{CustomerId, OperatorId, TenantId, Timestamp};
use parley_nats::config_store::{Kind, StoreError, key};
use parley_proto::{convert, events};

use crate::engine::{Engine, EngineError};

/// Digits and capitals without 0/O, 1/I/L.
pub const ALPHABET: &[u8] = b"23456789ABCDEFGHJKMNPQRSTUVWXYZ";
/// Characters in a code.
pub const LENGTH: usize = 6;

/// Whether a token has the shape of a code: six characters of the alphabet (case aside),
/// at least two digits and two letters — so ordinary words are not mistaken for codes.
pub fn is_code_shaped(token: &str) -> bool {
    token.len() == LENGTH
        && token.bytes().all(|b| ALPHABET.contains(&b.to_ascii_uppercase()))
        && token.bytes().filter(u8::is_ascii_digit).count() >= 2
        && token.bytes().filter(u8::is_ascii_alphabetic).count() >= 2
}

/// The code-shaped tokens of a text, upper-cased, in order, without repeats.
pub fn candidates(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for token in text.split(|c: char| !c.is_ascii_alphanumeric()) {
        if is_code_shaped(token) {
            let code = token.to_ascii_uppercase();
            if !out.contains(&code) {
                out.push(code);
            }
        }
    }
    out
}

/// A new code from `draw` (a source of indexes into the alphabet), re-drawn until it has
/// the shape a customer's text is searched for.
pub fn generate(mut draw: impl FnMut(usize) -> usize) -> String {
    loop {
        let code: String = (0..LENGTH).map(|_| ALPHABET[draw(ALPHABET.len()) % ALPHABET.len()] as char).collect();
        if is_code_shaped(&code) {
            return code;
        }
    }
}

/// Finds a valid code in a customer message and uses it: returns the operator it leads
/// to. Codes that lead nowhere count against the customer.
pub async fn redeem(
    engine: &Engine,
    tenant: &TenantId,
    customer: CustomerId,
    m: &events::CustomerMessage,
    now: Timestamp,
) -> Result<Option<OperatorId>, EngineError> {
    let mut found = candidates(&m.fast_track_code);
    if !m.fast_track_code.is_empty() && found.is_empty() {
        // Given explicitly but not even shaped like a code: a wrong code.
        found.push(m.fast_track_code.to_ascii_uppercase());
    }
    for c in candidates(&m.text) {
        if !found.contains(&c) {
            found.push(c);
        }
    }
    if found.is_empty() {
        return Ok(None);
    }
    let settings = engine.cache.routing_settings(tenant);
    if engine.redis.fast_track_failures(tenant, customer).await? >= settings.fast_track_max_attempts {
        tracing::warn!(tenant = %tenant, customer = %customer, "too many wrong fast-track codes; ignoring codes from this customer");
        return Ok(None);
    }
    for code in found {
        if let Some(op) = use_code(engine, tenant, &code, now).await? {
            return Ok(Some(op));
        }
        let failures = engine.redis.note_fast_track_failure(tenant, customer).await?;
        tracing::info!(tenant = %tenant, customer = %customer, failures, "wrong fast-track code");
        if failures >= settings.fast_track_max_attempts {
            break;
        }
    }
    Ok(None)
}

/// Uses one code if it is live: takes one use (compare-and-set, so two customers cannot
/// both take the last one) and returns its operator.
async fn use_code(
    engine: &Engine,
    tenant: &TenantId,
    code: &str,
    now: Timestamp,
) -> Result<Option<OperatorId>, EngineError> {
    if code.len() != LENGTH || !code.bytes().all(|b| ALPHABET.contains(&b)) {
        return Ok(None);
    }
    let store = engine.cache.store();
    let k = key(tenant, Kind::FastTrack, code);
    for _ in 0..5 {
        let Some((mut record, revision)) = store.get::<events::FastTrackRecord>(&k).await? else { return Ok(None) };
        let live = !record.revoked && convert::from_timestamp(record.expire_time.as_ref()) > now;
        let Ok(op) = OperatorId::parse(&record.operator_id) else { return Ok(None) };
        if !live || engine.cache.operator_model(tenant, op.as_str()).is_none_or(|o| o.disabled) {
            return Ok(None);
        }
        if record.uses_left == 0 {
            return Ok(Some(op));
        }
        record.uses_left -= 1;
        if record.uses_left == 0 {
            // The last use: the code is spent.
            record.revoked = true;
        }
        match store.update(&k, &record, revision).await {
            Ok(_) => return Ok(Some(op)),
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(EngineError::Unavailable("fast-track code changing too fast; retry".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_found_in_text_without_mistaking_words() {
        assert_eq!(candidates("Мой код 7KQ9MP, помогите"), ["7KQ9MP"]);
        assert_eq!(candidates("code: 7kq9mp and again 7KQ9MP"), ["7KQ9MP"]);
        // Ordinary words and numbers are not codes.
        assert!(candidates("thanks please HELLO2 123456 ABCDEF заказ 12345").is_empty());
        // Look-alike characters are not in the alphabet.
        assert!(candidates("7KQ0MP 7KQIMP").is_empty());
    }

    #[test]
    fn generated_codes_have_the_searched_shape() {
        let mut n = 0usize;
        for _ in 0..200 {
            let code = generate(|len| {
                n = n.wrapping_mul(2654435761).wrapping_add(12345);
                n % len
            });
            assert!(is_code_shaped(&code), "{code}");
            assert_eq!(candidates(&format!("код {code}.")), [code]);
        }
    }
}
