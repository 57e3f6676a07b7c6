//! The targets: each takes bytes as they arrive from outside and runs them
//! through the parser Terrace runs on them, checking what must hold of the
//! answer. A failed check panics, and the runner records the input.
//!
//! Each target returns an [`Outcome`]: a hash of what the input made the
//! parser do (which error, which kind of success). The runner keeps inputs
//! whose outcome it has not seen before; with no coverage to go by, this is
//! how the corpus grows towards the parser's different paths.

use bytes::Bytes;
use fastrand::Rng;
use futures::Stream;
use serde::de::DeserializeOwned;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use terrace_api::Jwt;
use terrace_domain::billing::{Package, Plan};
use terrace_domain::{CreditReference, GenerationRequest, GrantAmount, UserId};
use terrace_google::{ApiKey, GoogleClient, GoogleConfig};
use terrace_ports::{DesignEvent, NoopObserver, PaymentEventKind, SignatureError, WebhookError};
use terrace_stripe::{SecretKey, StripeClient, StripeConfig};
use terrace_wire::{
    CancelSubscriptionRequest, CheckoutRequest, CreateRequest, GrantRequest, SubscribeRequest,
};

/// What an input made a target do, as a hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Outcome(pub u64);

impl Default for Outcome {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Outcome {
    /// Adds a word to what was done (FNV-1a; allocates nothing).
    pub fn add(&mut self, word: &str) -> &mut Self {
        self.bytes(word.as_bytes())
    }

    /// Adds a word with its digits left out: `areas[3].style` and
    /// `areas[0].style` are the same path.
    pub fn add_shape(&mut self, word: &str) -> &mut Self {
        for b in word.bytes().filter(|b| !b.is_ascii_digit()) {
            self.bytes(&[b]);
        }
        self.bytes(b"|")
    }

    /// Adds a message by its first words alone, up to what it quotes or
    /// counts (`unknown field `, `invalid type: string `, `expected value
    /// at line `): the same error about other input counts once.
    pub fn add_message(&mut self, message: &str) -> &mut Self {
        let end = message.find(|c: char| matches!(c, '`' | '"' | '\'') || c.is_ascii_digit());
        self.add(&message[..end.unwrap_or(message.len())]).bytes(b"|")
    }

    pub fn num(&mut self, n: u64) -> &mut Self {
        self.bytes(&n.to_le_bytes())
    }

    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        for &x in b {
            self.0 ^= u64::from(x);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        self
    }
}

/// FNV-1a of some bytes: names and derived seeds.
pub fn fnv(bytes: &[u8]) -> u64 {
    let mut o = Outcome::default();
    o.bytes(bytes);
    o.0
}

/// How many bytes one input may make its target allocate.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// Bytes allowed per input byte.
    pub per_byte: usize,
    /// Bytes allowed whatever the input.
    pub fixed: usize,
}

impl Bound {
    pub fn limit(&self, len: usize) -> usize {
        self.per_byte.saturating_mul(len).saturating_add(self.fixed)
    }
}

impl std::fmt::Display for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} × input length + {} KiB", self.per_byte, self.fixed / 1024)
    }
}

/// One parser under the fuzzer.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub name: &'static str,
    pub about: &'static str,
    /// The allocation bound per input, and why it is what it is.
    pub bound: Bound,
    pub bound_why: &'static str,
    /// The longest input tried.
    pub max_len: usize,
    /// Runs one input; panics when a check fails.
    pub run: fn(&[u8]) -> Outcome,
    /// Makes a fresh well-formed input (a minted token, a signed event).
    pub generate: Option<fn(&mut Rng) -> Vec<u8>>,
    /// Builds the target's shared state, so that no input pays for it.
    pub init: fn(),
}

/// Every target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "create_body",
        about: "the body of POST /v1/generations: terrace-wire's CreateRequest read as the server reads a body, then the domain's GenerationRequest::parse",
        bound: Bound { per_byte: 64, fixed: 64 * 1024 },
        bound_why: "an area of 23 JSON bytes (`{\"area\":\"\",\"style\":\"\"},`) becomes an AreaSpec and then a RawAreaRequest of 88 bytes each, in vectors that double, and, when both its names are wrong, two field errors whose messages list the valid names (about 700 bytes): about 48 × its length; the domain reports every invalid area and the API answers the first 50; strings are copied once",
        max_len: 4096,
        run: create_body,
        generate: None,
        init: noop,
    },
    Target {
        name: "other_bodies",
        about: "the bodies of POST /v1/admin/credits, /v1/billing/checkout, /v1/billing/subscription and /v1/billing/subscription/cancel, read as the server reads them and checked as its handlers check them",
        bound: Bound { per_byte: 64, fixed: 64 * 1024 },
        bound_why: "the bytes are read as each of the four bodies, and one reading stays within 8 × input: flat objects of strings, a number and a bool, whose strings are copied once (an escaped one through serde_json's scratch buffer, which doubles); a key the body does not know is copied into the path and the error message",
        max_len: 4096,
        run: other_bodies,
        generate: None,
        init: noop,
    },
    Target {
        name: "jwt",
        about: "an Authorization header value through terrace_api::Jwt::authenticate (HS256, a fixed secret), as anyone may send one: mostly tokens whose signature fails; the fuzzer also mints tokens with Jwt::mint and mutates them",
        bound: Bound { per_byte: 48, fixed: 64 * 1024 },
        bound_why: "before the signature is checked jsonwebtoken decodes the JOSE header segment (3/4 of its length) and reads it as its Header: an `x5c` list of short strings costs 24 bytes a string of 4 token bytes, in a vector that doubles, and a `jwk` object is buffered field by field by serde's flatten; the claims are read only under a valid signature",
        max_len: 4096,
        run: jwt,
        generate: Some(jwt_generate),
        init: jwt_init,
    },
    Target {
        name: "jwt_claims",
        about: "a claim set (and, after a newline, a JOSE header) that the harness signs with the target's secret as HS256, through terrace_api::Jwt::authenticate: the claims as Supabase Auth or Terrace itself would sign them",
        bound: Bound { per_byte: 128, fixed: 64 * 1024 },
        bound_why: "only the secret's holder signs claims; they are read twice, as Terrace's Claims and as jsonwebtoken's validation claims: an `aud` list of empty strings costs about 90 × its length (serde buffers the untagged Audience before choosing a variant, then jsonwebtoken reads it into a hash set), in vectors and tables that double",
        max_len: 4096,
        run: jwt_claims,
        generate: None,
        init: jwt_init,
    },
    Target {
        name: "gemini_sse",
        about: "a Gemini event-stream response body through terrace-google's design stream (lines, events, JSON parts, base64 images), read twice: as one chunk and cut at points drawn from the input's hash; both readings must say the same",
        bound: Bound { per_byte: 128, fixed: 64 * 1024 },
        bound_why: "two readings of at most 64 × input each: a reading copies the body into the line buffer (which doubles), the event parser's two buffers and the event's data, and decodes base64 into 3/4 of its length; the parser makes two small allocations (16 bytes) per line, 16 × a line of one byte; a part of 13 JSON bytes (`{\"text\":\"g\"},`) becomes an 80-byte Part in a vector that doubles, then an event; nothing may be copied once per line or per chunk",
        max_len: 4096,
        run: gemini_sse,
        generate: None,
        init: gemini_init,
    },
    Target {
        name: "stripe_signature",
        about: "a Stripe-Signature header (the first line) and a webhook body (the rest) through terrace_stripe's parse_webhook_at (verify, then parse_event); then the body again under Stripe's own header for it, which must verify, and under a header timestamped near the clock, which must verify exactly when within the tolerance",
        bound: Bound { per_byte: 64, fixed: 64 * 1024 },
        bound_why: "verify allocates only the list of v1 signatures; parse_event reads an event's object into the type its event type names, or not at all: a subscription item of 3 JSON bytes (`{},`) becomes a 40-byte SubscriptionItem in a vector that doubles, about 40 × its length counted cumulatively; the body is parsed at most twice, once only unless the given header verifies",
        max_len: 4096,
        run: stripe_signature,
        generate: None,
        init: stripe_init,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

fn noop() {}

// ---- request bodies ----

/// The request bodies' field names.
const FIELDS: &[&str] = &[
    "address",
    "areas",
    "area",
    "style",
    "custom_prompt",
    "preservation_strength",
    "user_id",
    "amount",
    "reference",
    "package_id",
    "plan_id",
    "at_period_end",
];

/// Words of Rust that the server's error wording must never show (it says
/// JSON's types instead), unless the input itself holds them.
const RUST_WORDS: &[&str] = &[
    "struct",
    "i8",
    "i16",
    "i32",
    "i64",
    "u8",
    "u16",
    "u32",
    "u64",
    "usize",
    "isize",
    "f32",
    "f64",
    "sequence",
    "CreateRequest",
    "AreaSpec",
    "GrantRequest",
    "CheckoutRequest",
    "SubscribeRequest",
    "CancelSubscriptionRequest",
];

/// One JSON value, nothing after it but whitespace, as `T`, through the
/// server's own parser (`terrace_api::parse_body`): a refusal names a field
/// and says what is wrong in the wire's words, never Rust's. The outcome
/// is told by serde's own path and message, so that the same error about
/// other input counts once.
fn read_body<T: DeserializeOwned>(bytes: &[u8], o: &mut Outcome) -> Option<T> {
    let refused = match terrace_api::parse_body::<T>(bytes) {
        Ok(v) => return Some(v),
        Err(e) => e,
    };
    let _harness = crate::alloc::paused();
    assert!(!refused.field.is_empty() && !refused.message.is_empty(), "an empty field error: {refused:?}");
    let input = String::from_utf8_lossy(bytes);
    for word in RUST_WORDS {
        let said = refused.message.split(|c: char| !c.is_ascii_alphanumeric()).any(|w| w == *word);
        assert!(!said || input.contains(word), "the error says {word:?}: {:?}", refused.message);
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize::<_, T>(&mut *de) {
        Ok(_) => {
            o.add("trailing");
        }
        Err(e) => {
            // The path by its known names only: a key the input made up is
            // not a new path.
            for segment in e.path().iter() {
                match segment {
                    serde_path_to_error::Segment::Seq { .. } => o.add("[]"),
                    serde_path_to_error::Segment::Map { key } if FIELDS.contains(&key.as_str()) => o.add(key),
                    _ => o.add("?"),
                };
            }
            o.add_message(&e.inner().to_string());
        }
    }
    None
}

fn create_body(bytes: &[u8]) -> Outcome {
    let mut o = Outcome::default();
    let Some(body) = read_body::<CreateRequest>(bytes, &mut o) else { return o };
    let n = body.areas.len();
    match GenerationRequest::parse(&body.into_unchecked()) {
        Ok(req) => {
            o.add("ok").num(req.areas.len() as u64);
            assert!((1..=GenerationRequest::MAX_AREAS).contains(&req.areas.len()), "accepted {n} areas");
            assert_eq!(req.areas.len(), n, "an area was dropped");
            let chars = req.address.as_str().chars().count();
            assert!((5..=200).contains(&chars), "accepted an address of {chars} characters");
            for (i, a) in req.areas.iter().enumerate() {
                assert!(!req.areas[..i].iter().any(|b| b.area == a.area), "accepted {} twice", a.area);
                let s = a.preservation_strength.get();
                assert!((0.0..=1.0).contains(&s), "accepted a strength of {s}");
                if let Some(p) = &a.custom_prompt {
                    assert!(!p.as_str().is_empty() && p.as_str().chars().count() <= 500);
                }
            }
        }
        Err(errors) => {
            assert!(!errors.is_empty(), "refused with no error");
            // Which kinds of error, not how many or in which order.
            let mut kinds = 0u64;
            for e in &errors {
                assert!(!e.field.is_empty() && !e.message.is_empty(), "an empty field error: {e:?}");
                let mut k = Outcome::default();
                k.add_shape(&e.field).add(&e.message);
                kinds |= 1 << (k.0 % 64);
            }
            o.add("refused").num(kinds);
        }
    }
    o
}

fn other_bodies(bytes: &[u8]) -> Outcome {
    let mut o = Outcome::default();
    if let Some(g) = read_body::<GrantRequest>(bytes, &mut o) {
        o.add("grant");
        o.num(g.user_id.parse::<UserId>().is_ok() as u64);
        match GrantAmount::parse(g.amount) {
            Ok(a) => assert!((1..=100_000).contains(&a.get()), "granted {}", a.get()),
            Err(e) => {
                o.add(&e.field);
            }
        }
        match CreditReference::parse(&g.reference) {
            Ok(r) => {
                let r = r.as_str();
                assert!(
                    r != CreditReference::TRIAL && !r.starts_with(CreditReference::PURCHASE_PREFIX),
                    "{r:?}"
                );
                assert!((1..=255).contains(&r.chars().count()));
            }
            Err(e) => {
                o.add(&e.message);
            }
        }
    }
    if let Some(c) = read_body::<CheckoutRequest>(bytes, &mut o) {
        o.add("checkout").num(Package::find(&c.package_id).is_some() as u64);
    }
    if let Some(s) = read_body::<SubscribeRequest>(bytes, &mut o) {
        o.add("subscribe").num(Plan::find(&s.plan_id).is_some() as u64);
    }
    if let Some(c) = read_body::<CancelSubscriptionRequest>(bytes, &mut o) {
        o.add("cancel").num(c.at_period_end as u64);
    }
    o
}

// ---- the bearer token ----

/// The secret the jwt target's tokens are checked against.
pub const JWT_SECRET: &[u8] = b"terrace-fuzz-jwt-secret-0123456789";

static JWT: LazyLock<Jwt> = LazyLock::new(|| Jwt::new(JWT_SECRET));

fn jwt_init() {
    LazyLock::force(&JWT);
}

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// `{claims}` or `{claims}\n{header}`, signed with the target's secret as
/// HS256 whatever the header says: `Bearer <token>`.
fn signed(bytes: &[u8]) -> String {
    let (claims, header) = match bytes.iter().position(|&b| b == b'\n') {
        Some(i) => (&bytes[..i], &bytes[i + 1..]),
        None => (bytes, &br#"{"alg":"HS256","typ":"JWT"}"#[..]),
    };
    let message = format!("{}.{}", b64url(header), b64url(claims));
    let key = jsonwebtoken::EncodingKey::from_secret(JWT_SECRET);
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
        .expect("HMAC signing cannot fail");
    format!("Bearer {message}.{signature}")
}

fn jwt(bytes: &[u8]) -> Outcome {
    authenticate(&String::from_utf8_lossy(bytes))
}

fn jwt_claims(bytes: &[u8]) -> Outcome {
    let header = {
        let _harness = crate::alloc::paused();
        signed(bytes)
    };
    authenticate(&header)
}

/// Checks `header` as the server does, and what must hold of the answer.
fn authenticate(header: &str) -> Outcome {
    let mut o = Outcome::default();
    {
        // What the JOSE header says, for telling inputs apart: read here,
        // outside the bound, as jsonwebtoken reads it.
        let _harness = crate::alloc::paused();
        let token = header.split_once(' ').map_or(header, |(_, t)| t).trim();
        match jsonwebtoken::decode_header(token) {
            Ok(h) => o.add(&format!("{:?} {} {}", h.alg, h.kid.is_some(), h.x5c.is_some())),
            Err(e) => o.add_message(&format!("{:?}", e.kind())),
        };
    }
    match JWT.authenticate(Some(header)) {
        Ok(caller) => {
            o.add("ok").num(caller.admin as u64);
            // Whoever it names, the token said so: the claims carry the
            // user's canonical id, and "service_role" for an admin.
            let _harness = crate::alloc::paused();
            let claims = claims_of(header);
            let user = caller.user.to_string();
            assert!(
                claims.windows(user.len()).any(|w| w == user.as_bytes()),
                "a caller the token does not name"
            );
            if caller.admin {
                assert!(claims.windows(12).any(|w| w == b"service_role"), "an admin without the role");
            }
        }
        Err(p) => {
            assert_eq!(p.status.as_u16(), 401, "{p:?}");
            assert_eq!(p.code, "unauthorized", "{p:?}");
            o.add(&p.detail);
        }
    }
    o
}

/// The decoded claims segment of a `Bearer` header.
fn claims_of(header: &str) -> Vec<u8> {
    use base64::Engine as _;
    let token = header.split_once(' ').map_or(header, |(_, t)| t).trim();
    let mut parts = token.split('.');
    let claims = parts.nth(1).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(claims).unwrap_or_default()
}

/// A token as Terrace mints it, for a random user, role and lifetime, in a
/// header with a random spelling of the scheme.
fn jwt_generate(rng: &mut Rng) -> Vec<u8> {
    let user = UserId(uuid::Uuid::from_u128(rng.u128(..)));
    let ttl = [0, 1, 3600, 100 * 365 * 86_400][rng.usize(0..4)];
    let token = JWT.mint(user, rng.bool(), Duration::from_secs(ttl));
    let scheme = ["Bearer", "bearer", "BEARER", "bEaReR"][rng.usize(0..4)];
    let space = [" ", "  ", " \t"][rng.usize(0..3)];
    format!("{scheme}{space}{token}").into_bytes()
}

// ---- Gemini's event stream ----

/// The Gemini key of the target's client: no error may carry it.
pub const GEMINI_KEY: &str = "AIzaFuzzKey-0123456789abcdef";

static GOOGLE: LazyLock<GoogleClient> = LazyLock::new(|| {
    let config = GoogleConfig {
        maps_base_url: "http://127.0.0.1:9".into(),
        gemini_base_url: "http://127.0.0.1:9".into(),
        gemini_model: "gemini-2.5-flash-image".into(),
        maps_api_key: ApiKey::new("maps-fuzz-key"),
        gemini_api_key: ApiKey::new(GEMINI_KEY),
        maps_timeout: Duration::from_secs(10),
        llm_connect_timeout: Duration::from_secs(10),
        llm_idle_timeout: Duration::from_secs(60),
        http: terrace_google::HttpVersion::Auto,
        streams_per_connection: terrace_google::DEFAULT_STREAMS_PER_CONNECTION,
    };
    GoogleClient::new(config, Arc::new(NoopObserver)).expect("a valid Google configuration")
});

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread().enable_time().build().expect("a Tokio runtime")
});

fn gemini_init() {
    LazyLock::force(&GOOGLE);
    LazyLock::force(&RUNTIME);
}

/// What a reading said, minus `Progress` (which depends on the clock).
type Said = Vec<Result<DesignEvent, String>>;

fn read_stream(chunks: Vec<Bytes>) -> Said {
    let _rt = RUNTIME.enter();
    let mut stream = terrace_google::design_stream_over(&GOOGLE, chunks);
    let mut cx = Context::from_waker(Waker::noop());
    let mut said = Vec::new();
    // Each poll takes at least one line or one event: far fewer than this.
    for _ in 0..100_000 {
        match Pin::new(&mut stream).poll_next(&mut cx) {
            Poll::Ready(Some(Ok(DesignEvent::Progress { .. }))) => {}
            Poll::Ready(Some(Ok(e))) => said.push(Ok(e)),
            Poll::Ready(Some(Err(e))) => said.push(Err(e.to_string())),
            Poll::Ready(None) => return said,
            Poll::Pending => panic!("the stream waited on a body that was all there"),
        }
    }
    panic!("the stream did not end");
}

/// The body cut into chunks at points drawn from its own hash.
fn cut(bytes: &[u8]) -> Vec<Bytes> {
    let mut rng = Rng::with_seed(fnv(bytes));
    let widest = [1, 2, 3, 7, 16, 64][rng.usize(0..6)];
    let mut chunks = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let n = rng.usize(1..=widest).min(bytes.len() - at);
        chunks.push(Bytes::copy_from_slice(&bytes[at..at + n]));
        at += n;
    }
    chunks
}

fn gemini_sse(bytes: &[u8]) -> Outcome {
    let mut o = Outcome::default();
    // The body as it arrives is the network's, not the parser's.
    let (one, many) = {
        let _harness = crate::alloc::paused();
        (vec![Bytes::copy_from_slice(bytes)], cut(bytes))
    };
    let whole = read_stream(one);
    let pieces = read_stream(many);
    assert_eq!(whole, pieces, "the chunks' boundaries changed what the stream said");
    if let Some(i) = whole.iter().position(Result::is_err) {
        assert_eq!(i + 1, whole.len(), "the stream went on after an error");
    }
    if let Some(Err(e)) = whole.last() {
        // Not the key, nor a piece of it, unless the body had that piece
        // elsewhere than in the key.
        let _harness = crate::alloc::paused();
        assert!(!e.contains(GEMINI_KEY), "an error carries the API key: {e}");
        let piece = &GEMINI_KEY[..8];
        if !String::from_utf8_lossy(bytes).replace(GEMINI_KEY, "").contains(piece) {
            assert!(!e.contains(piece), "an error carries a piece of the API key: {e}");
        }
    }
    // Which kinds of event, not how many; the kind of error.
    let texts = whole.iter().filter(|e| matches!(e, Ok(DesignEvent::Text(_)))).count();
    let images = whole.iter().filter(|e| matches!(e, Ok(DesignEvent::Image(_)))).count();
    o.num(texts.min(2) as u64).num(images.min(2) as u64);
    if let Some(Err(e)) = whole.last() {
        // "upstream rejected the request", "… : Gemini sent malformed
        // JSON", not what Google, the model or the JSON said.
        let colons: Vec<usize> = e.match_indices(':').map(|(i, _)| i).take(2).collect();
        let end = match colons[..] {
            [first, second] if e[first..].starts_with(": Gemini") => second,
            [first, ..] => first,
            [] => e.len(),
        };
        o.add_message(&e[..end]);
    }
    o
}

// ---- Stripe's webhook ----

/// The webhook signing secret of the target's client.
pub const STRIPE_SECRET: &str = "whsec_fuzz_0123456789abcdef";
/// The clock the target checks signatures against.
pub const STRIPE_NOW: i64 = 1_700_000_000;

static STRIPE: LazyLock<StripeClient> = LazyLock::new(|| {
    let config = StripeConfig::new(
        "http://127.0.0.1:9",
        SecretKey::new("sk_test_fuzz"),
        SecretKey::new(STRIPE_SECRET),
        Duration::from_secs(10),
    );
    StripeClient::new(config, Arc::new(NoopObserver)).expect("a valid Stripe configuration")
});

fn stripe_init() {
    LazyLock::force(&STRIPE);
}

fn at(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64)
}

fn stripe_signature(bytes: &[u8]) -> Outcome {
    let mut o = Outcome::default();
    let (header, body) = match bytes.iter().position(|&b| b == b'\n') {
        Some(i) => (&bytes[..i], &bytes[i + 1..]),
        None => (bytes, &[][..]),
    };
    let header = String::from_utf8_lossy(header);
    let now = at(STRIPE_NOW);
    let given = STRIPE.parse_webhook_at(Some(&header), body, now);
    let own = terrace_stripe::signature_header(STRIPE_SECRET, STRIPE_NOW, body);
    let signed = STRIPE.parse_webhook_at(Some(&own), body, now);
    match &given {
        Err(WebhookError::Signature(why)) => o.add("signature").num(*why as u64),
        Ok(_) | Err(WebhookError::Malformed(_)) => {
            // Accepted: the header signs this body under this secret, and
            // nothing else.
            let _harness = crate::alloc::paused();
            let mut other = body.to_vec();
            match other.last_mut() {
                Some(b) => *b ^= 1,
                None => other.push(b'x'),
            }
            let tolerance = terrace_stripe::DEFAULT_TOLERANCE;
            let refused = |r: Result<(), SignatureError>| r.is_err();
            assert!(
                refused(terrace_stripe::verify(&header, &other, STRIPE_SECRET, now, tolerance)),
                "it verifies another body"
            );
            assert!(
                refused(terrace_stripe::verify(&header, body, "whsec_another_secret", now, tolerance)),
                "it verifies under another secret"
            );
            assert_eq!(given, signed, "the same body read two ways");
            o.add("accepted")
        }
    };
    match &signed {
        Err(WebhookError::Signature(why)) => panic!("Stripe's own header was refused: {why}"),
        Ok(e) => o.add("event").add(match e.kind {
            PaymentEventKind::CheckoutCompleted(_) => "checkout",
            PaymentEventKind::SubscriptionChanged(_) => "subscription",
            PaymentEventKind::InvoicePaid(_) => "paid",
            PaymentEventKind::InvoiceFailed(_) => "failed",
            PaymentEventKind::Other => "other",
        }),
        Err(WebhookError::Malformed(m)) => o.add("malformed").add_message(m),
    };
    // A timestamp near the clock: accepted exactly within the tolerance.
    let tolerance = terrace_stripe::DEFAULT_TOLERANCE.as_secs() as i64;
    let t = STRIPE_NOW - 2 * tolerance + (fnv(body) % (4 * tolerance as u64 + 1)) as i64;
    let near = terrace_stripe::signature_header(STRIPE_SECRET, t, body);
    let got = terrace_stripe::verify(&near, body, STRIPE_SECRET, now, terrace_stripe::DEFAULT_TOLERANCE);
    let expected = match t - STRIPE_NOW {
        d if d < -tolerance => Err(SignatureError::Stale),
        d if d > tolerance => Err(SignatureError::Future),
        _ => Ok(()),
    };
    assert_eq!(got, expected, "a signature made {}s from the clock", t - STRIPE_NOW);
    o
}
