//! The handlers of CONTRACT §4.

use crate::auth::Caller;
use crate::problem::{FieldError, Problem, field_error};
use crate::views::{self, generation_path};
use crate::{AppState, events};
use axum::body::Body;
use axum::extract::{Extension, FromRequestParts, Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::de::DeserializeOwned;
use std::future::Future;
use terrace_domain::{
    AreaKind, AreaStatus, CreditReference, Generation, GenerationId, GenerationRequest, GenerationStatus,
    GrantAmount, IdempotencyKey, RequestId, UserId,
};
use terrace_ports::{
    CancelOutcome, CreateOutcome, IdempotencyClaim, ListQuery, NewGeneration, SourceKind, blob_key,
};
use terrace_wire::{CreateRequest, GrantRequest, Page};

/// A JSON answer.
fn json_response(status: StatusCode, body: String) -> Response {
    let mut res = (status, body).into_response();
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

pub(crate) fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response {
    json_response(status, serde_json::to_string(value).expect("views always serialize"))
}

impl AppState {
    /// Runs a store call under the store timeout.
    pub(crate) async fn bounded<T, E>(
        &self,
        fut: impl Future<Output = Result<T, E>>,
        map: impl FnOnce(&E) -> Problem,
    ) -> Result<T, Problem> {
        match tokio::time::timeout(self.0.cfg.store_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(map(&e)),
            Err(_) => {
                tracing::warn!("store call exceeded its timeout");
                Err(Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_timeout",
                    "the database did not answer in time",
                )
                .retry_after(1))
            }
        }
    }

    /// The generation, if `caller` may see it; 404 otherwise.
    async fn visible(&self, caller: Caller, id: &str) -> Result<Generation, Problem> {
        let id: GenerationId = id.parse().map_err(|_| Problem::not_found())?;
        let g = self.bounded(self.0.store.get(id), Problem::from_store).await?;
        g.filter(|g| caller.admin || g.user_id == caller.user).ok_or_else(Problem::not_found)
    }
}

/// An authenticated caller whose account is open.
#[derive(Debug, Clone, Copy)]
pub struct Authed(pub Caller);

impl FromRequestParts<AppState> for Authed {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        let caller = match parts.extensions.get::<crate::edge::Verified>() {
            Some(v) => v.0,
            None => {
                let header = parts.headers.get(header::AUTHORIZATION).map(|v| v.to_str().unwrap_or(""));
                state.0.jwt.authenticate(header)?
            }
        };
        if !state.0.accounts.is_known(caller.user) {
            state
                .bounded(
                    state.0.ledger.open_account(caller.user, state.0.cfg.trial_credits),
                    Problem::from_ledger,
                )
                .await?;
            state.0.accounts.remember(caller.user);
        }
        Ok(Self(caller))
    }
}

/// An authenticated administrator (403 for other callers).
#[derive(Debug, Clone, Copy)]
pub struct Admin(pub Caller);

impl FromRequestParts<AppState> for Admin {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        let Authed(caller) = Authed::from_request_parts(parts, state).await?;
        if caller.admin { Ok(Self(caller)) } else { Err(Problem::forbidden()) }
    }
}

// ---- operations ----

pub async fn livez() -> Response {
    json_response(StatusCode::OK, r#"{"status":"ok"}"#.into())
}

pub async fn readyz(State(s): State<AppState>) -> Response {
    if s.0.shutdown.is_cancelled() {
        return json_response(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"draining"}"#.into());
    }
    match tokio::time::timeout(s.0.cfg.ready_timeout, s.0.store.ping()).await {
        Ok(Ok(())) => json_response(StatusCode::OK, r#"{"status":"ready"}"#.into()),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "not ready: the store failed");
            json_response(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"unavailable"}"#.into())
        }
        Err(_) => {
            tracing::warn!("not ready: the store did not answer within the acquire timeout");
            json_response(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"unavailable"}"#.into())
        }
    }
}

pub async fn metrics(State(s): State<AppState>) -> Response {
    let gauges = tokio::time::timeout(s.0.cfg.ready_timeout, s.0.store.gauges(s.0.cfg.lease_ttl))
        .await
        .ok()
        .and_then(Result::ok);
    let pool = s.0.store.pool_status();
    let active = Some(s.0.work.as_ref().map_or(0, |w| w.active()));
    s.0.metrics.set_state(active, gauges, pool);
    let mut res = s.0.metrics.encode().into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    res
}

// ---- request bodies ----

fn require_json(headers: &HeaderMap) -> Result<(), Problem> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let ok =
        essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"));
    if ok { Ok(()) } else { Err(Problem::unsupported_media_type()) }
}

/// Says a serde message in the words of the wire: JSON's types, never the
/// Rust types behind them (`expected struct GrantRequest`, `expected i64`).
/// Written into one string: the message quotes what the body sent (an
/// unknown key of many words), so a string per word would cost the body's
/// size many times over.
fn wire_words(message: &str) -> String {
    let mut out = String::with_capacity(message.len() + 16);
    let mut words = message.split(' ').peekable();
    let mut first = true;
    while let Some(w) = words.next() {
        if !std::mem::take(&mut first) {
            out.push(' ');
        }
        let (core, tail) = match w.find(|c: char| !c.is_ascii_alphanumeric()) {
            Some(i) => w.split_at(i),
            None => (w, ""),
        };
        let said = match core {
            "struct" if words.peek().is_some() => {
                // `struct Name` (and `struct Name with 2 elements`).
                let name = words.next().unwrap_or_default();
                out.push_str("an object");
                out.push_str(&name[name.find(|c: char| !c.is_ascii_alphanumeric()).unwrap_or(name.len())..]);
                continue;
            }
            "i8" | "i16" | "i32" | "i64" | "i128" | "isize" | "u8" | "u16" | "u32" | "u64" | "u128"
            | "usize" => "an integer",
            "f32" | "f64" => "a number",
            "sequence" => "list",
            "map" => "object",
            "unit" => "null",
            _ => core,
        };
        out.push_str(said);
        out.push_str(tail);
    }
    out
}

/// A request body as the API reads it: exactly one JSON value (trailing
/// whitespace allowed), as `T`; otherwise the one field it got wrong, named
/// by its path (`areas[1].style`, or `body`), in the words of the wire (JSON's
/// types, never the Rust types behind them). Public so that the fuzzer
/// drives this very parser.
pub fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, FieldError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let message = wire_words(&e.into_inner().to_string());
        let root = matches!(path.as_str(), "." | "?" | "");
        // serde names a missing field in its message, not in the path.
        let missing = message.strip_prefix("missing field `").and_then(|r| r.split('`').next());
        let field = match (root, missing) {
            (true, Some(name)) => name.to_owned(),
            (false, Some(name)) => format!("{path}.{name}"),
            (true, None) => "body".to_owned(),
            (false, None) => path,
        };
        FieldError { field, message }
    })?;
    de.end().map_err(|_| FieldError {
        field: "body".into(),
        message: "must be exactly one JSON value; more follows it".into(),
    })?;
    Ok(value)
}

fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    parse_body(bytes).map_err(|e| Problem::validation(vec![e]))
}

pub(crate) async fn json_body<T: DeserializeOwned>(
    s: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<T, Problem> {
    require_json(headers)?;
    let bytes = crate::edge::read_body(body, s.0.cfg.body_limit).await?;
    parse_json(&bytes)
}

fn query_pairs(raw: Option<String>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()).into_owned().collect()
}

fn query_limit(pairs: &[(String, String)], max: usize, errors: &mut Vec<FieldError>) -> usize {
    match pairs.iter().rev().find(|(k, _)| k == "limit") {
        None => 20.min(max),
        Some((_, v)) => match v.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => n,
            _ => {
                errors.push(FieldError {
                    field: "limit".into(),
                    message: format!("must be an integer from 1 to {max}"),
                });
                1
            }
        },
    }
}

fn query_cursor(pairs: &[(String, String)], errors: &mut Vec<FieldError>) -> Option<String> {
    let c = pairs.iter().rev().find(|(k, _)| k == "cursor").map(|(_, v)| v.clone())?;
    if c.is_empty() || c.len() > 200 {
        errors.push(FieldError { field: "cursor".into(), message: "is not a cursor this API gave".into() });
        return None;
    }
    Some(c)
}

// ---- account ----

pub async fn account(State(s): State<AppState>, Authed(c): Authed) -> Result<Response, Problem> {
    let a = s.bounded(s.0.ledger.open_account(c.user, s.0.cfg.trial_credits), Problem::from_ledger).await?;
    let sub = s.bounded(s.0.billing.subscription(c.user), Problem::from_ledger).await?;
    Ok(json(StatusCode::OK, &views::account(&a, &sub)))
}

pub async fn transactions(
    State(s): State<AppState>,
    Authed(c): Authed,
    RawQuery(q): RawQuery,
) -> Result<Response, Problem> {
    let pairs = query_pairs(q);
    let mut errors = Vec::new();
    let limit = query_limit(&pairs, 100, &mut errors);
    let cursor = query_cursor(&pairs, &mut errors);
    if !errors.is_empty() {
        return Err(Problem::validation(errors));
    }
    let page = s.bounded(s.0.ledger.transactions(c.user, limit, cursor), Problem::from_ledger).await?;
    let view =
        Page { items: page.items.iter().map(views::transaction).collect(), next_cursor: page.next_cursor };
    Ok(json(StatusCode::OK, &view))
}

// ---- generations ----

pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, Problem> {
    let Some(v) = headers.get("idempotency-key") else { return Ok(None) };
    let parsed = v.to_str().ok().map(IdempotencyKey::parse);
    match parsed {
        Some(Ok(k)) => Ok(Some(k)),
        Some(Err(e)) => Err(Problem::validation(vec![field_error(e)])),
        None => Err(Problem::validation(vec![FieldError {
            field: "Idempotency-Key".into(),
            message: "must be 1 to 255 visible ASCII characters".into(),
        }])),
    }
}

/// 202 with the generation and its `Location`.
fn created(g: &Generation) -> Response {
    let mut res = json_response(StatusCode::ACCEPTED, views::generation_json(g));
    if let Ok(v) = HeaderValue::from_str(&generation_path(g)) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res
}

pub async fn create(
    State(s): State<AppState>,
    Authed(c): Authed,
    Extension(request_id): Extension<RequestId>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let body: CreateRequest = json_body(&s, &headers, body).await?;
    let key = idempotency_key(&headers);
    let parsed = GenerationRequest::parse(&body.into_unchecked());
    let (request, key) = match (parsed, key) {
        (Ok(r), Ok(k)) => (r, k),
        (parsed, key) => {
            let mut errors: Vec<FieldError> =
                parsed.err().unwrap_or_default().into_iter().map(field_error).collect();
            if let Err(p) = key {
                errors.extend(p.errors.unwrap_or_default());
            }
            return Err(Problem::validation(errors));
        }
    };
    let claim = key
        .clone()
        .map(|key| IdempotencyClaim { key, request_hash: crate::digest::request_fingerprint(&request) });
    let new = NewGeneration {
        id: GenerationId::new_random(),
        user_id: c.user,
        request_id,
        request,
        deadline: s.0.cfg.generation_timeout,
        trial_credits: s.0.cfg.trial_credits,
    };
    let outcome = s.bounded(s.0.store.create(new, claim), Problem::from_create).await?;
    match outcome {
        CreateOutcome::Created(g) => {
            tracing::info!(generation_id = %g.id, areas = g.areas.len(), "generation created");
            if let Some(w) = &s.0.work {
                w.wake();
            }
            Ok(created(&g))
        }
        // The first answer again: the generation as its create left it.
        CreateOutcome::Replayed(g) => {
            tracing::info!(generation_id = %g.id, "idempotent replay");
            Ok(created(&g.as_created()))
        }
    }
}

pub async fn list(
    State(s): State<AppState>,
    Authed(c): Authed,
    RawQuery(q): RawQuery,
) -> Result<Response, Problem> {
    let pairs = query_pairs(q);
    let mut errors = Vec::new();
    let limit = query_limit(&pairs, 50, &mut errors);
    let cursor = query_cursor(&pairs, &mut errors);
    let status = match pairs.iter().rev().find(|(k, _)| k == "status") {
        None => None,
        Some((_, v)) => match GenerationStatus::parse(v) {
            Some(st) => Some(st),
            None => {
                let all: Vec<_> = GenerationStatus::ALL.iter().map(|x| x.as_str()).collect();
                errors.push(FieldError {
                    field: "status".into(),
                    message: format!("must be one of: {}", all.join(", ")),
                });
                None
            }
        },
    };
    if !errors.is_empty() {
        return Err(Problem::validation(errors));
    }
    let page =
        s.bounded(s.0.store.list(c.user, ListQuery { limit, cursor, status }), Problem::from_store).await?;
    let view =
        Page { items: page.items.iter().map(views::generation).collect(), next_cursor: page.next_cursor };
    Ok(json(StatusCode::OK, &view))
}

pub async fn get_one(
    State(s): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let g = s.visible(c, &id).await?;
    Ok(json(StatusCode::OK, &views::generation(&g)))
}

pub async fn cancel(
    State(s): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let g = s.visible(c, &id).await?;
    match s.bounded(s.0.store.cancel(g.id), Problem::from_store).await? {
        CancelOutcome::Cancelled(g) => {
            if let Some(w) = &s.0.work {
                w.cancelled(g.id);
            }
            tracing::info!(generation_id = %g.id, status = g.status.as_str(), "generation cancelled");
            Ok(json(StatusCode::ACCEPTED, &views::generation(&g)))
        }
        CancelOutcome::AlreadyTerminal(g) => Err(Problem::new(
            StatusCode::CONFLICT,
            "already_terminal",
            format!("the generation is already {}", g.status.as_str()),
        )),
    }
}

pub async fn events(
    State(s): State<AppState>,
    Authed(c): Authed,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let capacity = s.capacity(Some(c), &s.0.user_streams, &s.0.streams)?;
    let notes = s.0.store.notifications();
    let g = s.visible(c, &id).await?;
    let body = Body::from_stream(events::stream(s.clone(), g, notes, capacity));
    let mut res = Response::new(body);
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(res)
}

/// A stored image: it never changes once stored, so it is cached as
/// immutable and validated by a strong `ETag` of its bytes (304 when the
/// caller has it already).
fn image_response(image: terrace_ports::Image, request: &HeaderMap) -> Response {
    let etag = format!("\"{}\"", crate::digest::sha256_hex(&image.bytes, 16));
    let cached = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut res = if cached {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(Body::from(image.bytes));
        if let Ok(v) = HeaderValue::from_str(&image.content_type) {
            r.headers_mut().insert(header::CONTENT_TYPE, v);
        }
        r
    };
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=86400, immutable"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    res
}

pub async fn area_image(
    State(s): State<AppState>,
    Authed(c): Authed,
    Path((id, area)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let g = s.visible(c, &id).await?;
    let kind = AreaKind::parse(&area).map_err(|_| Problem::not_found())?;
    let a = g.area(kind).ok_or_else(Problem::not_found)?;
    if a.status != AreaStatus::Completed {
        return Err(Problem::new(StatusCode::NOT_FOUND, "not_found", "this area has no image yet"));
    }
    let key = a.image_key.clone().unwrap_or_else(|| blob_key::design(g.id, kind));
    let image = s.bounded(s.0.blobs.get(&key), Problem::from_blob).await?;
    Ok(image_response(image, &headers))
}

pub async fn source_image(
    State(s): State<AppState>,
    Authed(c): Authed,
    Path((id, source)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let g = s.visible(c, &id).await?;
    let kind = SourceKind::parse(&source).ok_or_else(Problem::not_found)?;
    let image = s.bounded(s.0.blobs.get(&blob_key::source(g.id, kind)), Problem::from_blob).await?;
    Ok(image_response(image, &headers))
}

// ---- admin ----

pub async fn grant(
    State(s): State<AppState>,
    Admin(admin): Admin,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let raw: GrantRequest = json_body(&s, &headers, body).await?;
    let mut errors = Vec::new();
    let user = raw
        .user_id
        .parse::<UserId>()
        .map_err(|_| errors.push(FieldError { field: "user_id".into(), message: "must be a UUID".into() }))
        .ok();
    let amount = GrantAmount::parse(raw.amount).map_err(|e| errors.push(field_error(e))).ok();
    let reference = CreditReference::parse(&raw.reference).map_err(|e| errors.push(field_error(e))).ok();
    let (Some(user), Some(amount), Some(reference)) = (user, amount, reference) else {
        return Err(Problem::validation(errors));
    };
    let g = s
        .bounded(s.0.ledger.grant(user, amount, &reference, s.0.cfg.trial_credits), Problem::from_ledger)
        .await?;
    tracing::info!(%user, admin = %admin.user, amount = amount.get(), applied = g.applied, "credits granted");
    let status = if g.applied { StatusCode::CREATED } else { StatusCode::OK };
    let sub = s.bounded(s.0.billing.subscription(user), Problem::from_ledger).await?;
    Ok(json(status, &views::account(&g.account, &sub)))
}

pub async fn tasks(State(s): State<AppState>, Admin(_): Admin) -> Response {
    let tasks = s.0.work.as_ref().map(|w| w.tasks()).unwrap_or_default();
    json(StatusCode::OK, &tasks)
}

// ---- fallbacks ----

pub async fn not_found() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

pub async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not answer that method",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_words_become_the_wires() {
        for (serde, wire) in [
            (
                "invalid type: string \"x\", expected struct GrantRequest",
                "invalid type: string \"x\", expected an object",
            ),
            (
                "invalid length 2, expected struct Pair with 3 elements",
                "invalid length 2, expected an object with 3 elements",
            ),
            (
                "invalid type: floating point `1.5`, expected i64",
                "invalid type: floating point `1.5`, expected an integer",
            ),
            ("invalid type: map, expected a sequence", "invalid type: object, expected a list"),
            ("invalid type: unit value, expected f64", "invalid type: null value, expected a number"),
            // Spaces are kept as they were, even doubled or leading.
            (" unknown field `a  b`,  expected `x`", " unknown field `a  b`,  expected `x`"),
            ("", ""),
        ] {
            assert_eq!(wire_words(serde), wire, "{serde:?}");
        }
    }

    #[test]
    fn a_refused_body_names_its_field() {
        use terrace_wire::GrantRequest;
        let e = parse_body::<GrantRequest>(br#"{"user_id": "u", "amount": "ten", "reference": "r"}"#)
            .unwrap_err();
        assert_eq!(e.field, "amount");
        assert!(e.message.contains("expected an integer"), "{}", e.message);
        assert_eq!(
            parse_body::<GrantRequest>(br#"{"amount": 1, "reference": "r"}"#).unwrap_err().field,
            "user_id"
        );
        let trailing = br#"{"user_id": "u", "amount": 1, "reference": "r"} {}"#;
        assert_eq!(parse_body::<GrantRequest>(trailing).unwrap_err().field, "body");
        let ok = parse_body::<GrantRequest>(br#"{"user_id": "u", "amount": 1, "reference": "r"}"#).unwrap();
        assert_eq!(ok.amount, 1);
    }
}
