//! Webhook signatures: `Stripe-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>…]`,
//! each `v1` an HMAC-SHA256 of `"{t}.{body}"` under the endpoint's signing
//! secret. Checked on the raw bytes, before anything in the body is read.

use hmac::{KeyInit, Mac};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use terrace_ports::SignatureError;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The tolerance Stripe's own libraries use: five minutes either way.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// Checks a `Stripe-Signature` header against `body`.
///
/// Accepts when at least one `v1` signature is the HMAC-SHA256 of
/// `"{t}.{body}"` under `secret` (compared in constant time) and `t` is
/// within `tolerance` of `now`, in either direction. Elements of other
/// schemes (`v0=…`) are ignored. An empty header is [`SignatureError::Missing`].
pub fn verify(
    header: &str,
    body: &[u8],
    secret: &str,
    now: SystemTime,
    tolerance: Duration,
) -> Result<(), SignatureError> {
    let header = header.trim();
    if header.is_empty() {
        return Err(SignatureError::Missing);
    }
    let mut timestamp: Option<&str> = None;
    let mut signatures = Vec::new();
    for element in header.split(',') {
        let Some((key, value)) = element.trim().split_once('=') else { continue };
        match key.trim() {
            "t" if timestamp.is_some() => return Err(SignatureError::Malformed),
            "t" => timestamp = Some(value.trim()),
            "v1" => signatures.push(value.trim()),
            _ => {}
        }
    }
    let t_text = timestamp.ok_or(SignatureError::Malformed)?;
    if t_text.is_empty() || t_text.len() > 18 || !t_text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SignatureError::Malformed);
    }
    let t: i64 = t_text.parse().map_err(|_| SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::NoSignature);
    }
    let mac = signed_payload_mac(secret, t_text, body);
    let matched = signatures
        .iter()
        .filter_map(|s| decode_hex(s))
        .any(|expected| mac.clone().verify_slice(&expected).is_ok());
    if !matched {
        return Err(SignatureError::Mismatch);
    }
    let now = unix_seconds(now);
    let tolerance = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
    if now.saturating_sub(t) > tolerance {
        return Err(SignatureError::Stale);
    }
    if t.saturating_sub(now) > tolerance {
        return Err(SignatureError::Future);
    }
    Ok(())
}

/// The `Stripe-Signature` header Stripe would send for `body` at `t`
/// (Unix seconds), for tests and tools that play Stripe's part.
pub fn signature_header(secret: &str, t: i64, body: &[u8]) -> String {
    let tag = signed_payload_mac(secret, &t.to_string(), body).finalize().into_bytes();
    format!("t={t},v1={}", encode_hex(&tag))
}

fn signed_payload_mac(secret: &str, t: &str, body: &[u8]) -> HmacSha256 {
    // HMAC takes a key of any length.
    let mut mac =
        <HmacSha256 as KeyInit>::new_from_slice(secret.as_bytes()).expect("HMAC accepts any key length");
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// Seconds since the Unix epoch (0 for a clock before it).
pub(crate) fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)).unwrap_or(0)
}

fn encode_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    out
}

/// A SHA-256 tag in hex (64 digits, either case), or `None`.
fn decode_hex(s: &str) -> Option<[u8; 32]> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let bytes = s.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_test_0123456789";
    const BODY: &[u8] =
        br#"{"id":"evt_1","type":"checkout.session.completed","created":1700000000,"data":{"object":{}}}"#;
    const T: i64 = 1_700_000_000;

    fn at(secs: i64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    }

    fn check(header: &str, body: &[u8], secret: &str, now: i64) -> Result<(), SignatureError> {
        verify(header, body, secret, at(now), DEFAULT_TOLERANCE)
    }

    #[test]
    fn signatures_are_checked_as_stripe_documents() {
        let good = signature_header(SECRET, T, BODY);
        let good_v1 = good.split_once(",v1=").map(|(_, v)| v.to_owned()).expect("has v1");
        let other_v1 = signature_header("whsec_other", T, BODY).split_once(",v1=").expect("v1").1.to_owned();
        let tampered = BODY.iter().map(|&b| if b == b'1' { b'2' } else { b }).collect::<Vec<_>>();
        type Case<'a> = (&'a str, String, &'a [u8], &'a str, i64, Result<(), SignatureError>);
        let table: &[Case<'_>] = &[
            ("good", good.clone(), BODY, SECRET, T, Ok(())),
            (
                "good, upper-case hex",
                good.to_uppercase().replace("T=", "t=").replace("V1=", "v1="),
                BODY,
                SECRET,
                T,
                Ok(()),
            ),
            ("spaces around elements", format!(" t={T} , v1={good_v1} "), BODY, SECRET, T, Ok(())),
            ("tampered body", good.clone(), &tampered, SECRET, T, Err(SignatureError::Mismatch)),
            ("wrong secret", good.clone(), BODY, "whsec_wrong", T, Err(SignatureError::Mismatch)),
            ("stale", good.clone(), BODY, SECRET, T + 301, Err(SignatureError::Stale)),
            ("just inside the tolerance", good.clone(), BODY, SECRET, T + 300, Ok(())),
            ("future", good.clone(), BODY, SECRET, T - 301, Err(SignatureError::Future)),
            (
                "several v1, one good",
                format!("t={T},v1={other_v1},v1={good_v1},v0={other_v1}"),
                BODY,
                SECRET,
                T,
                Ok(()),
            ),
            (
                "several v1, none good",
                format!("t={T},v1={other_v1},v1=abc"),
                BODY,
                SECRET,
                T,
                Err(SignatureError::Mismatch),
            ),
            (
                "the timestamp is signed",
                format!("t={},v1={good_v1}", T + 1),
                BODY,
                SECRET,
                T,
                Err(SignatureError::Mismatch),
            ),
            ("missing", String::new(), BODY, SECRET, T, Err(SignatureError::Missing)),
            ("blank", "  ".into(), BODY, SECRET, T, Err(SignatureError::Missing)),
            ("garbage", "hello there".into(), BODY, SECRET, T, Err(SignatureError::Malformed)),
            ("no timestamp", format!("v1={good_v1}"), BODY, SECRET, T, Err(SignatureError::Malformed)),
            (
                "two timestamps",
                format!("t={T},t={T},v1={good_v1}"),
                BODY,
                SECRET,
                T,
                Err(SignatureError::Malformed),
            ),
            (
                "timestamp not a number",
                format!("t=soon,v1={good_v1}"),
                BODY,
                SECRET,
                T,
                Err(SignatureError::Malformed),
            ),
            (
                "signed timestamp",
                format!("t=+{T},v1={good_v1}"),
                BODY,
                SECRET,
                T,
                Err(SignatureError::Malformed),
            ),
            ("no v1", format!("t={T},v0={good_v1}"), BODY, SECRET, T, Err(SignatureError::NoSignature)),
            (
                "v1 not hex",
                format!("t={T},v1={}", "z".repeat(64)),
                BODY,
                SECRET,
                T,
                Err(SignatureError::Mismatch),
            ),
        ];
        for (name, header, body, secret, now, expect) in table {
            assert_eq!(&check(header, body, secret, *now), expect, "{name}: {header}");
        }
    }

    #[test]
    fn a_header_reads_like_stripes() {
        let h = signature_header(SECRET, T, BODY);
        let (t, v1) = h.split_once(',').expect("two elements");
        assert_eq!(t, format!("t={T}"));
        assert!(v1.starts_with("v1=") && v1.len() == 3 + 64, "{h}");
        assert!(v1[3..].bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    }

    #[test]
    fn hex_round_trips() {
        let bytes: Vec<u8> = (0..32).map(|i| (i * 37) as u8).collect();
        assert_eq!(decode_hex(&encode_hex(&bytes)).map(|b| b.to_vec()), Some(bytes));
        assert_eq!(decode_hex("00"), None);
    }

    /// HMAC-SHA256 of RFC 4231's test case 2, so the primitive itself is right.
    #[test]
    fn the_mac_is_hmac_sha256() {
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(b"Jefe").expect("key");
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            encode_hex(&mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
