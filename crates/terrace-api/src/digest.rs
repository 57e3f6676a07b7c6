//! SHA-256 digests in hex: the idempotency fingerprint of a create, image
//! ETags, and the idempotency keys sent to Stripe.

use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use terrace_domain::GenerationRequest;

/// The first `n` bytes (at most 32) of the SHA-256 of `data`, in lowercase hex.
pub(crate) fn sha256_hex(data: &[u8], n: usize) -> String {
    let digest = Sha256::digest(data);
    let mut out = String::with_capacity(n.min(32) * 2);
    for b in &digest[..n.min(32)] {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// What makes two creates "the same request" for an `Idempotency-Key`: the
/// parsed request in one fixed encoding, written out here field by field so
/// that no change to a type's serialisation can change it. The encoding is
/// the one earlier releases hashed (a JSON object with the fields in this
/// order), so that a key given to one release replays on the next.
pub(crate) fn request_fingerprint(req: &GenerationRequest) -> String {
    let quoted = |s: &str| serde_json::to_string(s).expect("a string always serialises");
    let mut canonical = format!("{{\"address\":{},\"areas\":[", quoted(req.address.as_str()));
    for (i, a) in req.areas.iter().enumerate() {
        if i > 0 {
            canonical.push(',');
        }
        let prompt = a.custom_prompt.as_ref().map_or_else(|| "null".to_owned(), |p| quoted(p.as_str()));
        let strength = serde_json::to_string(&a.preservation_strength.get()).expect("a finite number");
        let _ = write!(
            canonical,
            "{{\"area\":{},\"style\":{},\"custom_prompt\":{prompt},\"preservation_strength\":{strength}}}",
            quoted(a.area.as_str()),
            quoted(a.style.as_str()),
        );
    }
    canonical.push_str("]}");
    sha256_hex(canonical.as_bytes(), 32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use terrace_domain::input::{RawAreaRequest, RawGenerationRequest};

    fn request(address: &str, areas: &[(&str, &str, Option<&str>, Option<f64>)]) -> GenerationRequest {
        GenerationRequest::parse(&RawGenerationRequest {
            address: address.into(),
            areas: areas
                .iter()
                .map(|(area, style, prompt, strength)| RawAreaRequest {
                    area: (*area).into(),
                    style: (*style).into(),
                    custom_prompt: prompt.map(Into::into),
                    preservation_strength: *strength,
                })
                .collect(),
        })
        .unwrap()
    }

    #[test]
    fn the_fingerprint_is_pinned_so_that_keys_replay_across_releases() {
        let plain = request(
            "1600 Amphitheatre Parkway, Mountain View, CA",
            &[("front_yard", "japanese_zen", None, None)],
        );
        let full = request(
            "10 \"Quoted\" Road, Zürich",
            &[
                ("backyard", "mediterranean", Some("olive trees\nand a \\ bench"), Some(0.25)),
                ("patio", "modern_minimalist", None, Some(1.0)),
            ],
        );
        let edges = request(
            "x st 1",
            &[
                ("walkway", "tropical_resort", Some("é"), Some(0.0)),
                ("side_yard", "desert_landscape", None, Some(0.7)),
            ],
        );
        for (req, pinned) in [(&plain, PLAIN), (&full, FULL), (&edges, EDGES)] {
            assert_eq!(request_fingerprint(req), pinned, "{req:?}");
        }
        assert_ne!(request_fingerprint(&plain), request_fingerprint(&full));
        // The areas' order is part of the request.
        let swapped = request(
            "10 \"Quoted\" Road, Zürich",
            &[
                ("patio", "modern_minimalist", None, Some(1.0)),
                ("backyard", "mediterranean", Some("olive trees\nand a \\ bench"), Some(0.25)),
            ],
        );
        assert_ne!(request_fingerprint(&swapped), FULL);
    }

    #[test]
    fn hex_is_lowercase_and_cut_to_length() {
        assert_eq!(sha256_hex(b"abc", 4), "ba7816bf");
        assert_eq!(sha256_hex(b"abc", 64).len(), 64);
    }

    /// Computed by the release before this encoding was written out (from
    /// the parsed request's serialisation); they must never change.
    const PLAIN: &str = "1c950b22d94e342f7a428f4d1a3d606c12815875f381eceeaca0b26abb0a1063";
    const FULL: &str = "9b997fc461a8beb387aebb2c754da43b186241ef3a756db2928708acebad22f6";
    const EDGES: &str = "c3b861ef2c5246fa4f7bf0fc4ab416afecc8348fd7bd1c15949fd6469724e15a";
}
