//! Errors on the wire: `application/problem+json` (RFC 9457) with the
//! contract's fields, and `errors` naming each invalid field of a request.

use serde::{Deserialize, Serialize};

/// A problem document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// `/problems/{code}`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The status's reason phrase.
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// One of the contract's error codes.
    pub code: String,
    /// The request's `X-Request-Id`.
    #[serde(default)]
    pub request_id: Option<String>,
    /// A validation answer's invalid fields (at most 50); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldError>>,
}

/// One field a request got wrong, named by its path (`areas[1].style`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_appear_only_when_there_are_some() {
        let p = Problem {
            kind: "/problems/not_found".into(),
            title: "Not Found".into(),
            status: 404,
            detail: "no such resource".into(),
            code: "not_found".into(),
            request_id: None,
            errors: None,
        };
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(
            json,
            r#"{"type":"/problems/not_found","title":"Not Found","status":404,"detail":"no such resource","code":"not_found","request_id":null}"#
        );
        assert_eq!(serde_json::from_str::<Problem>(&json).unwrap(), p);
    }
}
