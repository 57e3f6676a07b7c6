//! The Stripe API: authentication, scripted behaviours, idempotency, and the
//! objects themselves. Unknown parameters are refused as Stripe refuses them,
//! so a misspelt parameter fails in tests as it would in production.

use crate::behaviour::{ApiBehaviour, Endpoint};
use crate::objects::{Line, Metadata, Mode, PortalSession, Session, error_json, new_id, now};
use crate::server::{Body, Closed, Req, json, pause};
use crate::webhooks::{self, Batch};
use crate::{RequestRecord, Saved, State, Store};
use http::{HeaderValue, Method, Response, StatusCode};
use serde_json::Value;
use std::sync::Arc;

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    CreateSession,
    GetSession(String),
    GetSubscription(String),
    UpdateSubscription(String),
    CancelSubscription(String),
    CreatePortal,
}

impl Op {
    fn endpoint(&self) -> Endpoint {
        match self {
            Op::CreateSession | Op::GetSession(_) => Endpoint::CheckoutSessions,
            Op::GetSubscription(_) | Op::UpdateSubscription(_) | Op::CancelSubscription(_) => {
                Endpoint::Subscriptions
            }
            Op::CreatePortal => Endpoint::BillingPortal,
        }
    }
}

fn route(method: &Method, path: &str) -> Option<Op> {
    let id = |prefix: &str| {
        path.strip_prefix(prefix).filter(|id| !id.is_empty() && !id.contains('/')).map(str::to_owned)
    };
    match *method {
        Method::POST if path == "/v1/checkout/sessions" => Some(Op::CreateSession),
        Method::POST if path == "/v1/billing_portal/sessions" => Some(Op::CreatePortal),
        Method::GET => id("/v1/checkout/sessions/")
            .map(Op::GetSession)
            .or_else(|| id("/v1/subscriptions/").map(Op::GetSubscription)),
        Method::POST => id("/v1/subscriptions/").map(Op::UpdateSubscription),
        Method::DELETE => id("/v1/subscriptions/").map(Op::CancelSubscription),
        _ => None,
    }
}

/// An answer: status, body, and the events it made.
struct Answer {
    status: StatusCode,
    body: Value,
    batch: Option<Batch>,
}

impl Answer {
    fn ok(body: Value) -> Self {
        Self { status: StatusCode::OK, body, batch: None }
    }

    fn invalid(param: Option<&str>, code: Option<&str>, message: &str) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            body: error_json("invalid_request_error", code, param, message),
            batch: None,
        }
    }

    fn missing(param: &str) -> Self {
        Self::invalid(Some(param), Some("parameter_missing"), &format!("Missing required param: {param}."))
    }

    fn no_such(status: StatusCode, what: &str, id: &str, param: Option<&str>) -> Self {
        Self {
            status,
            body: error_json(
                "invalid_request_error",
                Some("resource_missing"),
                param,
                &format!("No such {what}: '{id}'"),
            ),
            batch: None,
        }
    }
}

fn stripe_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut resp = json(status, body);
    if let Ok(v) = HeaderValue::from_str(&new_id("req")) {
        resp.headers_mut().insert("request-id", v);
    }
    resp
}

/// The form parameters, in order.
struct Params(Vec<(String, String)>);

impl Params {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// `prefix[name]=value` pairs as a map of `name` to `value`.
    fn map(&self, prefix: &str) -> Metadata {
        self.0
            .iter()
            .filter_map(|(k, v)| {
                let name = k.strip_prefix(prefix)?.strip_prefix('[')?.strip_suffix(']')?;
                (!name.contains('[')).then(|| (name.to_owned(), v.clone()))
            })
            .collect()
    }

    /// The first key that is not one of `exact` and starts with none of `maps`.
    fn unknown(&self, exact: &[&str], maps: &[&str]) -> Option<&str> {
        self.0.iter().map(|(k, _)| k.as_str()).find(|k| {
            !exact.contains(k)
                && !maps.iter().any(|m| {
                    k.strip_prefix(m)
                        .and_then(|r| r.strip_prefix('['))
                        .and_then(|r| r.strip_suffix(']'))
                        .is_some_and(|name| !name.is_empty() && !name.contains('['))
                })
        })
    }

    /// The parameters as compared for idempotency: sorted.
    fn fingerprint(&self, method: &Method, path: &str) -> String {
        let mut pairs = self.0.clone();
        pairs.sort();
        let mut out = format!("{method} {path}?");
        for (k, v) in pairs {
            out.push_str(&k);
            out.push('=');
            out.push_str(&v);
            out.push('&');
        }
        out
    }
}

/// The answer of a scripted `Status` behaviour.
fn scripted_status(status: u16, should_retry: Option<bool>) -> Response<Body> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = if status == StatusCode::TOO_MANY_REQUESTS {
        error_json(
            "invalid_request_error",
            Some("rate_limit"),
            None,
            "Request rate limit exceeded. Learn more about rate limits here.",
        )
    } else if status.is_server_error() {
        error_json(
            "api_error",
            None,
            None,
            "An unknown error occurred while processing your request (simulated).",
        )
    } else {
        error_json("invalid_request_error", None, None, "The request was refused (simulated).")
    };
    let mut resp = stripe_response(status, &body);
    if let Some(r) = should_retry {
        resp.headers_mut()
            .insert("stripe-should-retry", HeaderValue::from_static(if r { "true" } else { "false" }));
    }
    resp
}

fn unauthorized(given: Option<&str>) -> Response<Body> {
    let message = match given {
        None => {
            "You did not provide an API key. You need to provide your API key in the Authorization header, \
                 using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY')."
                .to_owned()
        }
        Some(k) => {
            let tail: String = k.chars().rev().take(4).collect::<Vec<_>>().into_iter().rev().collect();
            format!("Invalid API Key provided: sk_****{tail}")
        }
    };
    stripe_response(StatusCode::UNAUTHORIZED, &error_json("invalid_request_error", None, None, &message))
}

pub(crate) async fn handle(req: &Req, state: &Arc<State>) -> Result<Response<Body>, Closed> {
    let Some(op) = route(&req.method, &req.path) else {
        let message = format!("Unrecognized request URL ({}: {}).", req.method, req.path);
        return Ok(stripe_response(
            StatusCode::NOT_FOUND,
            &error_json("invalid_request_error", None, None, &message),
        ));
    };
    let endpoint = op.endpoint();
    let given = req
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' ').filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer")))
        .map(|(_, key)| key.trim());
    let key_ok = given == Some(state.secret_key.as_str());
    let idempotency_key = req.headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let (record, behaviour) = {
        let mut store = state.lock();
        let behaviour = if key_ok { state.next_behaviour(&mut store, endpoint) } else { ApiBehaviour::Ok };
        let record = RequestRecord {
            id: 0,
            method: req.method.to_string(),
            path: req.path.clone(),
            endpoint: Some(endpoint),
            key_ok,
            idempotency_key: idempotency_key.clone(),
            behaviour: behaviour.clone(),
            status: None,
            replayed: false,
        };
        (state.record_request(&mut store, record), behaviour)
    };
    state.notify();
    if !key_ok {
        state.finish_request(record, 401, false);
        return Ok(unauthorized(given));
    }
    match behaviour {
        ApiBehaviour::Ok => {}
        ApiBehaviour::Latency { delay } => pause(state, delay).await?,
        ApiBehaviour::Hang => {
            state.cancel.cancelled().await;
            return Err(Closed);
        }
        ApiBehaviour::Disconnect => return Err(Closed),
        ApiBehaviour::Status { status, should_retry } => {
            state.finish_request(record, status, false);
            return Ok(scripted_status(status, should_retry));
        }
    }
    let params = Params(form_urlencoded::parse(&req.body).into_owned().collect());
    let (answer, replayed) = {
        let mut store = state.lock();
        let store = &mut *store;
        let key = idempotency_key.filter(|_| req.method == Method::POST);
        let fingerprint = params.fingerprint(&req.method, &req.path);
        match key.as_ref().and_then(|k| store.saved.get(k)) {
            Some(saved) if saved.fingerprint == fingerprint => {
                let status = StatusCode::from_u16(saved.status).unwrap_or(StatusCode::OK);
                (Answer { status, body: saved.body.clone(), batch: None }, true)
            }
            Some(_) => (
                Answer {
                    status: StatusCode::BAD_REQUEST,
                    body: error_json(
                        "idempotency_error",
                        None,
                        None,
                        "Keys for idempotent requests can only be used with the same parameters they were first \
                         used with. Try using a key other than the one used on the original request.",
                    ),
                    batch: None,
                },
                false,
            ),
            None => {
                let answer = execute(state, store, &op, &params);
                // Stripe saves what an endpoint answered once it ran; the
                // simulator saves successes.
                if let Some(k) = key.filter(|_| answer.status.is_success()) {
                    store.saved.insert(
                        k,
                        Saved { fingerprint, status: answer.status.as_u16(), body: answer.body.clone() },
                    );
                }
                (answer, false)
            }
        }
    };
    state.finish_request(record, answer.status.as_u16(), replayed);
    if let Some(batch) = answer.batch {
        webhooks::dispatch(state, batch);
    }
    let mut resp = stripe_response(answer.status, &answer.body);
    if replayed {
        resp.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(resp)
}

fn execute(state: &State, store: &mut Store, op: &Op, params: &Params) -> Answer {
    match op {
        Op::CreateSession => create_session(state, store, params),
        Op::GetSession(id) => match store.sessions.get(id) {
            Some(s) => Answer::ok(s.json()),
            None => Answer::no_such(StatusCode::NOT_FOUND, "checkout.session", id, None),
        },
        Op::GetSubscription(id) => match store.subscriptions.get(id) {
            Some(s) => Answer::ok(s.json()),
            None => Answer::no_such(StatusCode::NOT_FOUND, "subscription", id, None),
        },
        Op::UpdateSubscription(id) => update_subscription(state, store, id, params),
        Op::CancelSubscription(id) => cancel_subscription(state, store, id),
        Op::CreatePortal => create_portal(state, store, params),
    }
}

const SESSION_PARAMS: &[&str] = &[
    "mode",
    "success_url",
    "cancel_url",
    "client_reference_id",
    "customer",
    "customer_creation",
    "customer_email",
    "line_items[0][price]",
    "line_items[0][quantity]",
    "line_items[0][price_data][currency]",
    "line_items[0][price_data][unit_amount]",
    "line_items[0][price_data][product_data][name]",
];

const SESSION_MAPS: &[&str] = &["metadata", "subscription_data[metadata]", "payment_intent_data[metadata]"];

fn create_session(state: &State, store: &mut Store, p: &Params) -> Answer {
    if let Some(k) = p.unknown(SESSION_PARAMS, SESSION_MAPS) {
        return Answer::invalid(
            Some(k),
            Some("parameter_unknown"),
            &format!("Received unknown parameter: {k}"),
        );
    }
    let mode = match p.get("mode") {
        None => return Answer::missing("mode"),
        Some("payment") => Mode::Payment,
        Some("subscription") => Mode::Subscription,
        Some(_) => {
            return Answer::invalid(
                Some("mode"),
                Some("parameter_invalid_string"),
                "Invalid mode: the simulator knows `payment` and `subscription`.",
            );
        }
    };
    let Some(success_url) = p.get("success_url").filter(|u| !u.is_empty()) else {
        return Answer::missing("success_url");
    };
    let Some(quantity) = p.get("line_items[0][quantity]") else {
        return Answer::missing("line_items[0][quantity]");
    };
    let Some(quantity) = quantity.parse::<u64>().ok().filter(|q| *q >= 1) else {
        return Answer::invalid(
            Some("line_items[0][quantity]"),
            Some("parameter_invalid_integer"),
            "Invalid integer",
        );
    };
    let line = match (p.get("line_items[0][price]"), p.get("line_items[0][price_data][currency]")) {
        (Some(_), Some(_)) => {
            return Answer::invalid(
                Some("line_items[0]"),
                None,
                "You may only specify one of these parameters: price, price_data.",
            );
        }
        (Some(price_id), None) => {
            let Some(price) = store.prices.iter().find(|x| x.id == price_id) else {
                return Answer::no_such(
                    StatusCode::BAD_REQUEST,
                    "price",
                    price_id,
                    Some("line_items[0][price]"),
                );
            };
            if (mode == Mode::Subscription) != price.interval.is_some() {
                let message = if mode == Mode::Subscription {
                    "You must provide at least one recurring price in `subscription` mode when using prices."
                } else {
                    "You specified `payment` mode but passed a recurring price."
                };
                return Answer::invalid(Some("line_items[0][price]"), None, message);
            }
            Line {
                price: Some(price.id.clone()),
                unit_amount: price.unit_amount,
                currency: price.currency.clone(),
                name: price.product_name.clone(),
                quantity,
            }
        }
        (None, Some(currency)) => {
            if mode == Mode::Subscription {
                return Answer::invalid(
                    Some("line_items[0][price_data]"),
                    None,
                    "You must provide at least one recurring price in `subscription` mode when using prices.",
                );
            }
            let Some(amount) = p.get("line_items[0][price_data][unit_amount]") else {
                return Answer::missing("line_items[0][price_data][unit_amount]");
            };
            let Ok(unit_amount) = amount.parse::<u64>() else {
                return Answer::invalid(
                    Some("line_items[0][price_data][unit_amount]"),
                    Some("parameter_invalid_integer"),
                    "Invalid integer",
                );
            };
            let Some(name) = p.get("line_items[0][price_data][product_data][name]").filter(|n| !n.is_empty())
            else {
                return Answer::missing("line_items[0][price_data][product_data][name]");
            };
            Line { price: None, unit_amount, currency: currency.to_owned(), name: name.to_owned(), quantity }
        }
        (None, None) => return Answer::missing("line_items"),
    };
    let customer = p.get("customer").map(str::to_owned);
    if let Some(c) = &customer {
        if p.get("customer_creation").is_some() {
            return Answer::invalid(
                Some("customer_creation"),
                None,
                "You may only specify one of these parameters: customer, customer_creation.",
            );
        }
        if !store.customers.contains(c) {
            return Answer::no_such(StatusCode::BAD_REQUEST, "customer", c, Some("customer"));
        }
    }
    let customer_creation_always = match p.get("customer_creation") {
        None | Some("if_required") => false,
        Some("always") if mode == Mode::Payment => true,
        Some("always") => {
            return Answer::invalid(
                Some("customer_creation"),
                None,
                "`customer_creation` can only be used in `payment` mode.",
            );
        }
        Some(_) => {
            return Answer::invalid(
                Some("customer_creation"),
                Some("parameter_invalid_string"),
                "Invalid value",
            );
        }
    };
    let id = format!("cs_test_{}", &new_id("x")[2..]);
    let session = Session {
        url: format!("{}/checkout/{id}", state.base_url),
        id: id.clone(),
        mode,
        complete: false,
        line,
        success_url: success_url.to_owned(),
        cancel_url: p.get("cancel_url").map(str::to_owned),
        client_reference_id: p.get("client_reference_id").map(str::to_owned),
        customer,
        customer_creation_always,
        metadata: p.map("metadata"),
        subscription_metadata: p.map("subscription_data[metadata]"),
        payment_intent: None,
        subscription: None,
        invoice: None,
        created: now(),
    };
    let body = session.json();
    store.sessions.insert(id.clone(), session);
    store.session_order.push(id);
    Answer::ok(body)
}

fn update_subscription(state: &State, store: &mut Store, id: &str, p: &Params) -> Answer {
    if let Some(k) = p.unknown(&["cancel_at_period_end"], &["metadata"]) {
        return Answer::invalid(
            Some(k),
            Some("parameter_unknown"),
            &format!("Received unknown parameter: {k}"),
        );
    }
    let Some(sub) = store.subscriptions.get(id).cloned() else {
        return Answer::no_such(StatusCode::NOT_FOUND, "subscription", id, None);
    };
    if sub.status == "canceled" || sub.status == "incomplete_expired" {
        return Answer::invalid(
            None,
            None,
            "A canceled subscription can only update its cancellation_details and metadata.",
        );
    }
    let mut sub = sub;
    let mut changed = false;
    match p.get("cancel_at_period_end") {
        None => {}
        Some(v @ ("true" | "false")) => {
            let flag = v == "true";
            changed |= sub.cancel_at_period_end != flag;
            sub.cancel_at_period_end = flag;
        }
        Some(_) => {
            return Answer::invalid(
                Some("cancel_at_period_end"),
                Some("parameter_invalid_boolean"),
                "Invalid boolean",
            );
        }
    }
    let metadata = p.map("metadata");
    if !metadata.is_empty() {
        changed = true;
        sub.metadata.extend(metadata);
    }
    let body = sub.json();
    let batch = changed.then(|| state.emit(store, vec![("customer.subscription.updated", body.clone())]));
    store.subscriptions.insert(sub.id.clone(), sub);
    Answer { status: StatusCode::OK, body, batch }
}

fn cancel_subscription(state: &State, store: &mut Store, id: &str) -> Answer {
    let Some(mut sub) = store.subscriptions.get(id).cloned() else {
        return Answer::no_such(StatusCode::NOT_FOUND, "subscription", id, None);
    };
    if sub.status == "canceled" {
        // Cancelling again changes nothing and sends nothing.
        return Answer::ok(sub.json());
    }
    sub.status = "canceled".into();
    sub.cancel_at_period_end = false;
    sub.canceled_at = Some(now());
    let body = sub.json();
    let batch = state.emit(store, vec![("customer.subscription.deleted", body.clone())]);
    store.subscriptions.insert(sub.id.clone(), sub);
    Answer { status: StatusCode::OK, body, batch: Some(batch) }
}

fn create_portal(state: &State, store: &mut Store, p: &Params) -> Answer {
    if let Some(k) = p.unknown(&["customer", "return_url"], &[]) {
        return Answer::invalid(
            Some(k),
            Some("parameter_unknown"),
            &format!("Received unknown parameter: {k}"),
        );
    }
    let Some(customer) = p.get("customer") else { return Answer::missing("customer") };
    if !store.customers.contains(customer) {
        return Answer::no_such(StatusCode::BAD_REQUEST, "customer", customer, Some("customer"));
    }
    let id = new_id("bps");
    let portal = PortalSession {
        url: format!("{}/portal/{id}", state.base_url),
        id: id.clone(),
        customer: customer.to_owned(),
        return_url: p.get("return_url").map(str::to_owned),
        created: now(),
    };
    let body = portal.json();
    store.portals.insert(id, portal);
    Answer::ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        Params(pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect())
    }

    #[test]
    fn routes() {
        assert_eq!(route(&Method::POST, "/v1/checkout/sessions"), Some(Op::CreateSession));
        assert_eq!(route(&Method::GET, "/v1/checkout/sessions/cs_1"), Some(Op::GetSession("cs_1".into())));
        assert_eq!(
            route(&Method::POST, "/v1/subscriptions/sub_1"),
            Some(Op::UpdateSubscription("sub_1".into()))
        );
        assert_eq!(
            route(&Method::DELETE, "/v1/subscriptions/sub_1"),
            Some(Op::CancelSubscription("sub_1".into()))
        );
        assert_eq!(route(&Method::POST, "/v1/billing_portal/sessions"), Some(Op::CreatePortal));
        assert_eq!(route(&Method::DELETE, "/v1/subscriptions/"), None);
        assert_eq!(route(&Method::GET, "/v1/subscriptions/sub_1/items"), None);
        assert_eq!(route(&Method::PUT, "/v1/checkout/sessions"), None);
    }

    #[test]
    fn parameters_read_as_stripe_reads_them() {
        let p = params(&[
            ("metadata[user_id]", "u1"),
            ("metadata[package_id]", "package_10"),
            ("subscription_data[metadata][plan_id]", "monthly_pro"),
            ("mode", "payment"),
        ]);
        assert_eq!(p.map("metadata").get("user_id").map(String::as_str), Some("u1"));
        assert_eq!(p.map("metadata").len(), 2);
        assert_eq!(p.map("subscription_data[metadata]").len(), 1);
        assert_eq!(p.unknown(SESSION_PARAMS, SESSION_MAPS), None);
        let typo = params(&[("mode", "payment"), ("line_items[0][price_data][unit_ammount]", "1")]);
        assert_eq!(
            typo.unknown(SESSION_PARAMS, SESSION_MAPS),
            Some("line_items[0][price_data][unit_ammount]")
        );
        let nested = params(&[("metadata[a][b]", "1")]);
        assert_eq!(nested.unknown(SESSION_PARAMS, SESSION_MAPS), Some("metadata[a][b]"));
        let a = params(&[("a", "1"), ("b", "2")]).fingerprint(&Method::POST, "/v1/x");
        let b = params(&[("b", "2"), ("a", "1")]).fingerprint(&Method::POST, "/v1/x");
        assert_eq!(a, b);
        assert_ne!(a, params(&[("a", "1"), ("b", "3")]).fingerprint(&Method::POST, "/v1/x"));
    }
}
