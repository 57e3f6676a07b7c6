//! Turning what reqwest and Google say into the domain's errors, without ever
//! carrying a URL (Maps keys travel in the query) or a key.

use reqwest::StatusCode;
use serde::Deserialize;
use std::time::Duration;
use terrace_domain::{TimeoutKind, UpstreamError};

/// The configuration cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{which} is not an http(s) URL")]
    InvalidBaseUrl { which: &'static str },
    #[error("the Gemini model name must be letters, digits, '-', '.' or '_'")]
    InvalidModel,
    #[error("{which} is empty")]
    EmptyKey { which: &'static str },
    #[error("{which} has characters no API key has")]
    InvalidKey { which: &'static str },
    #[error("{which} must be greater than zero")]
    ZeroTimeout { which: &'static str },
    #[error("{which} must be greater than zero")]
    ZeroLimit { which: &'static str },
    #[error("could not build the HTTP client: {0}")]
    Client(String),
}

/// Longest piece of Google's own wording kept in an error detail.
const MAX_DETAIL: usize = 200;

/// `s` with `key` masked should Google ever echo it, then cut to at most
/// [`MAX_DETAIL`] characters (in this order, so that a cut through the key
/// leaves none of it).
pub(crate) fn clean(s: &str, key: &str) -> String {
    let masked = if key.len() >= 4 { s.replace(key, "***") } else { s.to_owned() };
    masked.chars().take(MAX_DETAIL).collect()
}

/// A reqwest error in words, without its URL: the error and its sources.
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

/// A failed send or body read: a connect timeout, or "try later".
pub(crate) fn transport(e: reqwest::Error) -> UpstreamError {
    if e.is_connect() && e.is_timeout() {
        return UpstreamError::Timeout { kind: TimeoutKind::Connect };
    }
    let what = if e.is_connect() { "could not connect" } else { "the connection failed" };
    UpstreamError::unavailable(format!("{what}: {}", describe(e)))
}

/// An HTTP status that is not success, by status alone: 408, 429 and 5xx are
/// worth retrying; other 4xx (and anything else) will not change.
pub(crate) fn http_status(
    status: StatusCode,
    retry_after: Option<Duration>,
    detail: String,
) -> UpstreamError {
    if status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || status.is_server_error()
    {
        UpstreamError::Unavailable { detail, retry_after }
    } else {
        UpstreamError::rejected(detail)
    }
}

/// The `Retry-After` header, in seconds.
pub(crate) fn retry_after_header(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Google's `{"error": {...}}` object.
#[derive(Debug, Deserialize)]
pub(crate) struct GoogleError {
    pub code: Option<u16>,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub details: Vec<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ErrorBody {
    pub error: GoogleError,
}

/// A protobuf JSON duration: `"7s"`, `"1.5s"`, `"0.250s"`.
pub(crate) fn parse_proto_duration(s: &str) -> Option<Duration> {
    let secs: f64 = s.trim().strip_suffix('s')?.parse().ok()?;
    Duration::try_from_secs_f64(secs).ok()
}

impl GoogleError {
    /// `RetryInfo.retryDelay`, when Google said how long to wait.
    pub(crate) fn retry_delay(&self) -> Option<Duration> {
        self.details.iter().find_map(|d| {
            let t = d.get("@type")?.as_str()?;
            if !t.ends_with("google.rpc.RetryInfo") {
                return None;
            }
            parse_proto_duration(d.get("retryDelay")?.as_str()?)
        })
    }

    /// Classifies the error by its code (or, without one, its status name).
    pub(crate) fn classify(
        &self,
        http: Option<StatusCode>,
        key: &str,
        fallback_retry: Option<Duration>,
    ) -> UpstreamError {
        let code = self.code.or(http.map(|s| s.as_u16()));
        let detail = clean(
            &format!("{} {}: {}", code.map(|c| c.to_string()).unwrap_or_default(), self.status, self.message),
            key,
        );
        let retry_after = self.retry_delay().or(fallback_retry);
        match code.and_then(|c| StatusCode::from_u16(c).ok()) {
            Some(status) => http_status(status, retry_after, detail),
            None => match self.status.as_str() {
                "RESOURCE_EXHAUSTED" | "UNAVAILABLE" | "INTERNAL" | "DEADLINE_EXCEEDED" | "ABORTED" => {
                    UpstreamError::Unavailable { detail, retry_after }
                }
                _ => UpstreamError::rejected(detail),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proto_durations_parse() {
        assert_eq!(parse_proto_duration("7s"), Some(Duration::from_secs(7)));
        assert_eq!(parse_proto_duration("1.500s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_proto_duration("7"), None);
        assert_eq!(parse_proto_duration("-1s"), None);
    }

    #[test]
    fn google_errors_classify_by_code_then_status() {
        let body: ErrorBody = serde_json::from_str(
            r#"{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED","details":[
                {"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"12s"}]}}"#,
        )
        .expect("parses");
        let e = body.error.classify(None, "k", None);
        assert_eq!(
            e,
            UpstreamError::Unavailable {
                detail: "429 RESOURCE_EXHAUSTED: quota".into(),
                retry_after: Some(Duration::from_secs(12))
            }
        );
        let e =
            GoogleError { code: None, message: String::new(), status: "UNAVAILABLE".into(), details: vec![] };
        assert!(matches!(e.classify(None, "k", None), UpstreamError::Unavailable { .. }));
        let e = GoogleError {
            code: Some(403),
            message: "no".into(),
            status: "PERMISSION_DENIED".into(),
            details: vec![],
        };
        assert!(matches!(e.classify(None, "k", None), UpstreamError::Rejected { .. }));
    }

    #[test]
    fn details_never_echo_the_key() {
        assert_eq!(clean("bad key SECRET123 given", "SECRET123"), "bad key *** given");
        assert_eq!(clean(&"x".repeat(1000), "SECRET123").len(), MAX_DETAIL);
        let cut_through_the_key = format!("{}SECRET123", "x".repeat(MAX_DETAIL - 4));
        assert_eq!(clean(&cut_through_the_key, "SECRET123"), format!("{}***", "x".repeat(MAX_DETAIL - 4)));
    }
}
