//! The control endpoint, for tests and tools in other processes. Same port
//! as the API, no key:
//!
//! | request | effect |
//! |---|---|
//! | `POST /_sim/script` `{"endpoint": "checkout_sessions", "behaviour": {"kind": "status", "status": 500}, "times": 2}` | queues an [`crate::ApiBehaviour`] `times` times (default 1) |
//! | `POST /_sim/script` `{"endpoint": "subscriptions", "behaviour": {"kind": "latency", "delay_ms": 200}, "default": true}` | sets the endpoint's default |
//! | `POST /_sim/webhooks` `{"plan": {"duplicates": 2, "order": "reversed", "delay_ms": 100, "concurrent": true}, "times": 1}` | queues a [`crate::WebhookPlan`] for the next batches (`"default": true` sets the default) |
//! | `POST /_sim/webhook_url` `{"url": "http://127.0.0.1:8000/v1/webhooks/stripe"}` | where webhooks go (`null`: nowhere) |
//! | `POST /_sim/pay` `{"session_id": "cs_…"}` | pays it as the Pay button does; answers the session |
//! | `POST /_sim/advance` `{"subscription_id": "sub_…", "status": "past_due"}` | [`crate::StripeSim::advance_subscription`] |
//! | `POST /_sim/events` `{"type": "charge.refunded", "object": {…}}` | sends an event of any type; answers `{"id"}` |
//! | `POST /_sim/reset` | [`crate::StripeSim::reset`] |
//! | `GET /_sim/events` | the [`crate::EventRecord`]s as JSON |
//! | `GET /_sim/requests` | the [`crate::RequestRecord`]s as JSON |
//! | `GET /_sim/sessions` | every Checkout session as the API shows it |
//!
//! Answers are 204 (or 200 with JSON) on success, 400 with a one-line
//! reason for a bad body, 404 for an unknown session or subscription.

use crate::server::{Body, Req, json, no_content, response, text};
use crate::{ApiBehaviour, Endpoint, SimError, State, WebhookPlan, webhooks};
use http::{Method, Response, StatusCode};
use serde::Deserialize;
use std::sync::Arc;

/// The body of `POST /_sim/script`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptRequest {
    pub endpoint: Endpoint,
    pub behaviour: ApiBehaviour,
    #[serde(default = "one")]
    pub times: usize,
    #[serde(default)]
    pub default: bool,
}

/// The body of `POST /_sim/webhooks`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksRequest {
    pub plan: WebhookPlan,
    #[serde(default = "one")]
    pub times: usize,
    #[serde(default)]
    pub default: bool,
}

/// The body of `POST /_sim/webhook_url`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookUrlRequest {
    pub url: Option<String>,
}

/// The body of `POST /_sim/pay`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayRequest {
    pub session_id: String,
}

/// The body of `POST /_sim/advance`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdvanceRequest {
    pub subscription_id: String,
    pub status: String,
}

/// The body of `POST /_sim/events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventRequest {
    #[serde(rename = "type")]
    pub event_type: String,
    pub object: serde_json::Value,
}

fn one() -> usize {
    1
}

/// Most anything scripted at once over HTTP.
const MAX_TIMES: usize = 10_000;

fn bad_request(reason: String) -> Response<Body> {
    response(StatusCode::BAD_REQUEST, "text/plain; charset=utf-8", reason)
}

fn read<T: serde::de::DeserializeOwned>(req: &Req) -> Result<T, String> {
    serde_json::from_slice(&req.body).map_err(|e| format!("invalid body: {e}"))
}

fn sim_error(e: &SimError) -> Response<Body> {
    let status = match e {
        SimError::UnknownStatus(_) => StatusCode::BAD_REQUEST,
        SimError::NoSuchSession(_) | SimError::NoSuchSubscription(_) => StatusCode::NOT_FOUND,
    };
    response(status, "text/plain; charset=utf-8", e.to_string())
}

pub(crate) fn handle(req: &Req, state: &Arc<State>) -> Response<Body> {
    match (&req.method, req.path.as_str()) {
        (&Method::POST, "/_sim/script") => match read::<ScriptRequest>(req) {
            Ok(s) => {
                let mut store = state.lock();
                let i = s.endpoint.index();
                if s.default {
                    store.defaults[i] = s.behaviour;
                } else {
                    for _ in 0..s.times.min(MAX_TIMES) {
                        store.scripts[i].push_back(s.behaviour.clone());
                    }
                }
                no_content()
            }
            Err(e) => bad_request(e),
        },
        (&Method::POST, "/_sim/webhooks") => match read::<WebhooksRequest>(req) {
            Ok(w) => {
                let mut store = state.lock();
                if w.default {
                    store.webhook_default = w.plan;
                } else {
                    for _ in 0..w.times.min(MAX_TIMES) {
                        store.webhook_scripts.push_back(w.plan.clone());
                    }
                }
                no_content()
            }
            Err(e) => bad_request(e),
        },
        (&Method::POST, "/_sim/webhook_url") => match read::<WebhookUrlRequest>(req) {
            Ok(u) => {
                state.lock().webhook_url = u.url;
                no_content()
            }
            Err(e) => bad_request(e),
        },
        (&Method::POST, "/_sim/pay") => match read::<PayRequest>(req) {
            Ok(p) => match state.pay(&p.session_id) {
                Ok((session, batch)) => {
                    if let Some(batch) = batch {
                        webhooks::dispatch(state, batch);
                    }
                    json(StatusCode::OK, &session)
                }
                Err(e) => sim_error(&e),
            },
            Err(e) => bad_request(e),
        },
        (&Method::POST, "/_sim/advance") => match read::<AdvanceRequest>(req) {
            Ok(a) => match state.advance(&a.subscription_id, &a.status) {
                Ok(batch) => {
                    webhooks::dispatch(state, batch);
                    no_content()
                }
                Err(e) => sim_error(&e),
            },
            Err(e) => bad_request(e),
        },
        (&Method::POST, "/_sim/events") => match read::<EventRequest>(req) {
            Ok(e) => {
                let batch = {
                    let mut store = state.lock();
                    state.emit(&mut store, vec![(e.event_type.as_str(), e.object)])
                };
                let id = batch.events[0].id.clone();
                webhooks::dispatch(state, batch);
                json(StatusCode::OK, &serde_json::json!({"id": id}))
            }
            Err(e) => bad_request(e),
        },
        (&Method::POST, "/_sim/reset") => {
            state.reset();
            no_content()
        }
        (&Method::GET, "/_sim/events") => json(StatusCode::OK, &serde_json::json!(state.lock().events)),
        (&Method::GET, "/_sim/requests") => json(StatusCode::OK, &serde_json::json!(state.lock().requests)),
        (&Method::GET, "/_sim/sessions") => json(StatusCode::OK, &serde_json::json!(state.sessions())),
        _ => text(StatusCode::NOT_FOUND, "no such control endpoint"),
    }
}
