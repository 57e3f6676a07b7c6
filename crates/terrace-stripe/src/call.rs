//! One Stripe call: attempts under one deadline, retried only when that is
//! safe, every attempt reported to the observer, every failure turned into a
//! [`PaymentsError`] that carries neither the key nor a URL.

use crate::Inner;
use crate::form::Form;
use crate::wire::ErrorBody;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use std::time::Duration;
use terrace_domain::TimeoutKind;
use terrace_ports::{PaymentsError, Upstream, UpstreamOutcome};
use tokio::time::Instant;

/// Largest answer read.
const MAX_BODY: usize = 1024 * 1024;
/// Longest piece of Stripe's own wording kept in an error.
const MAX_DETAIL: usize = 300;

/// What to send.
#[derive(Debug)]
pub(crate) struct Request<'a> {
    pub method: Method,
    pub path: String,
    pub form: Option<Form>,
    /// Sent as `Idempotency-Key` (POST only: Stripe documents it as having
    /// no effect on GET and DELETE, which are idempotent themselves).
    pub idempotency_key: Option<&'a str>,
}

/// One failed attempt.
#[derive(Debug)]
struct Failed {
    error: PaymentsError,
    /// Whether sending the same request again is safe and may help.
    retry: bool,
    outcome: UpstreamOutcome,
    timeout: Option<TimeoutKind>,
}

impl Failed {
    fn permanent(error: PaymentsError) -> Self {
        let outcome = UpstreamOutcome::Rejected;
        Self { error, retry: false, outcome, timeout: None }
    }
}

/// `s` cut short, with the secret key masked should Stripe ever echo it.
fn clean(s: &str, key: &str) -> String {
    let s: String = s.chars().take(MAX_DETAIL).collect();
    if key.len() >= 4 { s.replace(key, "***") } else { s }
}

/// A reqwest error in words, without its URL.
pub(crate) fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut out = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn transport(e: reqwest::Error) -> Failed {
    let connect_timeout = e.is_connect() && e.is_timeout();
    let what = if e.is_connect() { "could not connect" } else { "the connection failed" };
    Failed {
        error: PaymentsError::Unavailable { detail: format!("{what}: {}", describe(e)), retry_after: None },
        // The request carries its idempotency key (POST) or is idempotent
        // itself (DELETE): sending it again never acts twice.
        retry: true,
        outcome: if connect_timeout { UpstreamOutcome::Timeout } else { UpstreamOutcome::Unavailable },
        timeout: connect_timeout.then_some(TimeoutKind::Connect),
    }
}

/// An answer that is not 2xx. Retried: connection-level trouble, 429, 5xx,
/// or `Stripe-Should-Retry: true`; never when Stripe says
/// `Stripe-Should-Retry: false`, and never another 4xx.
fn status_error(
    status: StatusCode,
    should_retry: Option<bool>,
    retry_after: Option<Duration>,
    body: &[u8],
    key: &str,
) -> Failed {
    let parsed = serde_json::from_slice::<ErrorBody>(body).ok().map(|b| b.error);
    let error_type = parsed.as_ref().and_then(|e| e.error_type.clone()).unwrap_or_else(|| "unknown".into());
    let code = parsed.as_ref().and_then(|e| e.code.clone());
    let message = clean(&parsed.and_then(|e| e.message).unwrap_or_else(|| format!("HTTP {status}")), key);
    let transient = status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
    let retry = should_retry.unwrap_or(transient);
    if transient || retry {
        let code_part = code.as_deref().map(|c| format!(" {c}")).unwrap_or_default();
        Failed {
            error: PaymentsError::Unavailable {
                detail: format!("HTTP {} {error_type}{code_part}: {message}", status.as_u16()),
                retry_after,
            },
            retry,
            outcome: UpstreamOutcome::Unavailable,
            timeout: None,
        }
    } else {
        Failed::permanent(PaymentsError::Rejected { status: status.as_u16(), error_type, code, message })
    }
}

fn header<'h>(headers: &'h reqwest::header::HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

impl Inner {
    /// Sends `request` until it succeeds, fails for good, or the deadline
    /// (`timeout`, counted from now) passes, and reads the answer as `T`.
    pub(crate) async fn call<T: DeserializeOwned>(&self, request: Request<'_>) -> Result<T, PaymentsError> {
        let deadline = Instant::now() + self.timeout;
        let body = request.form.as_ref().map(Form::encode);
        let mut attempt: u32 = 1;
        loop {
            let start = Instant::now();
            let result =
                match tokio::time::timeout_at(deadline, self.attempt(&request, body.as_deref())).await {
                    Ok(r) => r,
                    Err(_) => Err(Failed {
                        error: PaymentsError::Timeout,
                        retry: false,
                        outcome: UpstreamOutcome::Timeout,
                        timeout: Some(TimeoutKind::Request),
                    }),
                };
            let result = result.and_then(|bytes| {
                serde_json::from_slice::<T>(&bytes).map_err(|e| {
                    Failed::permanent(PaymentsError::Internal {
                        detail: format!("Stripe answered JSON this adapter cannot read: {e}"),
                    })
                })
            });
            match result {
                Ok(value) => {
                    self.report(UpstreamOutcome::Ok, None, start.elapsed(), attempt);
                    return Ok(value);
                }
                Err(failed) => {
                    self.report(failed.outcome, failed.timeout, start.elapsed(), attempt);
                    if !failed.retry || attempt >= self.retry.max_attempts {
                        return Err(failed.error);
                    }
                    let wait = self.retry.backoff(attempt, failed.error_retry_after(), fastrand::f64());
                    if Instant::now() + wait >= deadline {
                        return Err(failed.error);
                    }
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
            }
        }
    }

    /// One request, its whole answer read; `Ok` only for a 2xx.
    async fn attempt(&self, request: &Request<'_>, body: Option<&str>) -> Result<Vec<u8>, Failed> {
        let url = format!("{}{}", self.base_url, request.path);
        let mut builder = self
            .http
            .request(request.method.clone(), url)
            .header(reqwest::header::AUTHORIZATION, self.auth_header.clone())
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(key) = request.idempotency_key.filter(|_| request.method == Method::POST) {
            builder = builder.header("Idempotency-Key", key);
        }
        if let Some(body) = body {
            builder = builder
                .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(body.to_owned());
        }
        let mut resp = builder.send().await.map_err(transport)?;
        let status = resp.status();
        let should_retry = header(resp.headers(), "stripe-should-retry").and_then(|v| match v {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        });
        let retry_after = header(resp.headers(), "retry-after")
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_secs);
        let mut bytes = Vec::with_capacity(resp.content_length().unwrap_or(0).min(MAX_BODY as u64) as usize);
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            if bytes.len() + chunk.len() > MAX_BODY {
                return Err(Failed::permanent(PaymentsError::Internal {
                    detail: format!("Stripe's answer is larger than {MAX_BODY} bytes"),
                }));
            }
            bytes.extend_from_slice(&chunk);
        }
        if status.is_success() {
            Ok(bytes)
        } else {
            Err(status_error(status, should_retry, retry_after, &bytes, self.secret_key.expose()))
        }
    }

    fn report(
        &self,
        outcome: UpstreamOutcome,
        timeout: Option<TimeoutKind>,
        elapsed: Duration,
        attempt: u32,
    ) {
        if let Some(kind) = timeout {
            self.observer.upstream_timeout(Upstream::Stripe, kind);
        }
        self.observer.upstream_request(Upstream::Stripe, outcome, elapsed);
        tracing::debug!(
            upstream = "stripe",
            outcome = outcome.as_str(),
            attempt,
            elapsed_ms = elapsed.as_millis() as u64,
            "stripe request ended"
        );
    }
}

impl Failed {
    fn error_retry_after(&self) -> Option<Duration> {
        match &self.error {
            PaymentsError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(status: u16, should_retry: Option<bool>, body: &str) -> (PaymentsError, bool) {
        let f = status_error(
            StatusCode::from_u16(status).expect("status"),
            should_retry,
            None,
            body.as_bytes(),
            "sk_test_secret",
        );
        (f.error, f.retry)
    }

    #[test]
    fn statuses_and_stripes_hint_decide_what_is_retried() {
        let body = r#"{"error":{"type":"api_error","message":"An unknown error occurred"}}"#;
        for (status, hint, retry) in [
            (500, None, true),
            (502, None, true),
            (503, None, true),
            (429, None, true),
            (500, Some(false), false),
            (429, Some(false), false),
            (409, Some(true), true),
            (400, None, false),
            (401, None, false),
            (404, None, false),
            (409, None, false),
        ] {
            let (error, r) = classify(status, hint, body);
            assert_eq!(r, retry, "{status} {hint:?}");
            let transient = status == 429 || status >= 500 || hint == Some(true);
            assert_eq!(
                matches!(error, PaymentsError::Unavailable { .. }),
                transient,
                "{status} {hint:?}: {error:?}"
            );
        }
    }

    #[test]
    fn stripes_error_object_is_kept_and_the_key_is_not() {
        let (e, _) = classify(
            400,
            None,
            r#"{"error":{"type":"invalid_request_error","code":"resource_missing","param":"customer",
                "message":"No such customer: 'cus_x' (key sk_test_secret)","doc_url":"https://x"}}"#,
        );
        assert_eq!(
            e,
            PaymentsError::Rejected {
                status: 400,
                error_type: "invalid_request_error".into(),
                code: Some("resource_missing".into()),
                message: "No such customer: 'cus_x' (key ***)".into(),
            }
        );
        let (e, _) = classify(
            400,
            None,
            r#"{"error":{"type":"idempotency_error","message":"Keys for idempotent requests can only be used with the same parameters"}}"#,
        );
        assert!(e.idempotency_key_reused(), "{e:?}");
        let (e, _) = classify(404, None, "<html>not json</html>");
        assert_eq!(
            e,
            PaymentsError::Rejected {
                status: 404,
                error_type: "unknown".into(),
                code: None,
                message: "HTTP 404 Not Found".into()
            }
        );
        let (e, _) = classify(
            429,
            None,
            r#"{"error":{"type":"invalid_request_error","code":"rate_limit","message":"Too many requests"}}"#,
        );
        assert_eq!(
            e,
            PaymentsError::Unavailable {
                detail: "HTTP 429 invalid_request_error rate_limit: Too many requests".into(),
                retry_after: None
            }
        );
    }
}
