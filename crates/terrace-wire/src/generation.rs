//! `POST /v1/generations` and the generation every generation route
//! answers with (CONTRACT §4).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use terrace_domain::state::{AreaStage, AreaStatus};
use terrace_domain::{AreaKind, GenerationStatus, Style};
use uuid::Uuid;

/// The body of `POST /v1/generations`. Unknown fields are refused.
///
/// The server checks every field and names every invalid one at once, so
/// the fields stay as they are sent (strings, a number); a client builds a
/// valid request from typed values with [`AreaSpec::new`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    pub address: String,
    pub areas: Vec<AreaSpec>,
}

impl CreateRequest {
    pub fn new(address: impl Into<String>, areas: Vec<AreaSpec>) -> Self {
        Self { address: address.into(), areas }
    }

    /// The body as the domain's unchecked request, which
    /// `GenerationRequest::parse` checks field by field.
    pub fn into_unchecked(self) -> terrace_domain::input::RawGenerationRequest {
        terrace_domain::input::RawGenerationRequest {
            address: self.address,
            areas: self
                .areas
                .into_iter()
                .map(|a| terrace_domain::input::RawAreaRequest {
                    area: a.area,
                    style: a.style,
                    custom_prompt: a.custom_prompt,
                    preservation_strength: a.preservation_strength,
                })
                .collect(),
        }
    }
}

/// One area of a [`CreateRequest`]. Unknown fields are refused; the
/// optional ones are left out when unset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AreaSpec {
    pub area: String,
    pub style: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_prompt: Option<String>,
    /// 0.0 to 1.0; the server's default is 0.5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preservation_strength: Option<f64>,
}

impl AreaSpec {
    /// An area in a style, with no custom prompt and the default
    /// preservation strength.
    pub fn new(area: AreaKind, style: Style) -> Self {
        Self {
            area: area.as_str().to_owned(),
            style: style.as_str().to_owned(),
            custom_prompt: None,
            preservation_strength: None,
        }
    }

    pub fn with_custom_prompt(self, prompt: impl Into<String>) -> Self {
        Self { custom_prompt: Some(prompt.into()), ..self }
    }

    pub fn with_preservation_strength(self, strength: f64) -> Self {
        Self { preservation_strength: Some(strength), ..self }
    }

    /// The area it names, if it names one of the contract's.
    pub fn kind(&self) -> Option<AreaKind> {
        AreaKind::parse(&self.area).ok()
    }
}

/// A generation as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    pub id: Uuid,
    pub user_id: Uuid,
    pub request_id: String,
    #[serde(with = "crate::names")]
    pub status: GenerationStatus,
    pub address: String,
    #[serde(default)]
    pub geocoded_address: Option<String>,
    #[serde(default)]
    pub location: Option<Location>,
    /// Credits held when it was created, one per area.
    pub cost: u64,
    pub captured: u64,
    pub voided: u64,
    pub areas: Vec<AreaView>,
    #[serde(default)]
    pub error: Option<ErrorInfo>,
    #[serde(with = "crate::time")]
    pub created_at: DateTime<Utc>,
    #[serde(default, with = "crate::time::option")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, with = "crate::time::option")]
    pub completed_at: Option<DateTime<Utc>>,
    #[serde(with = "crate::time")]
    pub deadline_at: DateTime<Utc>,
}

/// Where geocoding placed the address.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Location {
    pub lat: f64,
    pub lng: f64,
}

/// Why an area or a generation ended without an image: one of the
/// contract's error codes and a sentence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    pub code: String,
    pub message: String,
}

/// One area of a [`Generation`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AreaView {
    #[serde(with = "crate::names")]
    pub area: AreaKind,
    #[serde(with = "crate::names")]
    pub style: Style,
    #[serde(with = "crate::names")]
    pub status: AreaStatus,
    #[serde(with = "crate::names")]
    pub stage: AreaStage,
    /// 0 to 100.
    pub progress: u8,
    /// Where the design image is, once the area is completed.
    #[serde(default)]
    pub image_url: Option<String>,
    #[serde(default)]
    pub error: Option<ErrorInfo>,
    #[serde(default, with = "crate::time::option")]
    pub completed_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_s_request_is_the_body_the_server_reads() {
        let req = CreateRequest::new(
            "12 Garden Lane",
            vec![
                AreaSpec::new(AreaKind::FrontYard, Style::JapaneseZen),
                AreaSpec::new(AreaKind::Patio, Style::Mediterranean)
                    .with_custom_prompt("olive trees")
                    .with_preservation_strength(0.25),
            ],
        );
        let body = serde_json::to_string(&req).unwrap();
        assert_eq!(
            body,
            concat!(
                r#"{"address":"12 Garden Lane","areas":[{"area":"front_yard","style":"japanese_zen"},"#,
                r#"{"area":"patio","style":"mediterranean","custom_prompt":"olive trees","preservation_strength":0.25}]}"#
            )
        );
        assert_eq!(serde_json::from_str::<CreateRequest>(&body).unwrap(), req);
        assert_eq!(req.areas[1].kind(), Some(AreaKind::Patio));
    }

    #[test]
    fn the_server_reads_what_it_checks_itself_as_sent() {
        let raw = r#"{"address":"x","areas":[{"area":"roof","style":"gothic","custom_prompt":null,"preservation_strength":7}]}"#;
        let req: CreateRequest = serde_json::from_str(raw).unwrap();
        assert_eq!((req.areas[0].area.as_str(), req.areas[0].style.as_str()), ("roof", "gothic"));
        assert_eq!(
            (req.areas[0].custom_prompt.as_deref(), req.areas[0].preservation_strength),
            (None, Some(7.0))
        );
        assert_eq!(req.areas[0].kind(), None);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let bad = r#"{"address":"12 Main St","areas":[],"extra":1}"#;
        assert!(serde_json::from_str::<CreateRequest>(bad).is_err());
        let bad = r#"{"address":"12 Main St","areas":[{"area":"patio","style":"japanese_zen","x":1}]}"#;
        assert!(serde_json::from_str::<CreateRequest>(bad).is_err());
    }

    #[test]
    fn a_generation_reads_back_and_unknown_answer_fields_are_tolerated() {
        let json = concat!(
            r#"{"id":"01234567-89ab-cdef-0123-456789abcdef","user_id":"00000000-0000-0000-0000-000000000001","#,
            r#""request_id":"r1","status":"partially_completed","address":"12 Garden Lane","geocoded_address":null,"#,
            r#""location":{"lat":1.5,"lng":-2.25},"cost":2,"captured":1,"voided":1,"areas":["#,
            r#"{"area":"front_yard","style":"japanese_zen","status":"completed","stage":"done","progress":100,"#,
            r#""image_url":"/v1/generations/01234567-89ab-cdef-0123-456789abcdef/areas/front_yard/image","#,
            r#""error":null,"completed_at":"2026-01-01T00:00:42.999Z"},"#,
            r#"{"area":"patio","style":"tropical_resort","status":"failed","stage":"generating_design","progress":60,"#,
            r#""image_url":null,"error":{"code":"no_image","message":"the model drew nothing"},"#,
            r#""completed_at":"2026-01-01T00:00:43.000Z"}],"#,
            r#""error":null,"created_at":"2026-01-01T00:00:00.123Z","started_at":"2026-01-01T00:00:01.005Z","#,
            r#""completed_at":"2026-01-01T00:00:43.000Z","deadline_at":"2026-01-01T00:05:00.123Z"}"#,
        );
        let g: Generation = serde_json::from_str(json).unwrap();
        assert_eq!(g.status, GenerationStatus::PartiallyCompleted);
        assert_eq!((g.areas[1].area, g.areas[1].stage), (AreaKind::Patio, AreaStage::GeneratingDesign));
        assert_eq!(g.areas[1].error.as_ref().map(|e| e.code.as_str()), Some("no_image"));
        assert_eq!(serde_json::to_string(&g).unwrap(), json, "written back byte for byte");

        let mut more: serde_json::Value = serde_json::from_str(json).unwrap();
        more["new_field"] = serde_json::json!(1);
        more["areas"][0]["new_field"] = serde_json::json!(true);
        assert_eq!(serde_json::from_value::<Generation>(more).unwrap(), g);

        let mut bad: serde_json::Value = serde_json::from_str(json).unwrap();
        bad["status"] = serde_json::json!("exploded");
        let e = serde_json::from_value::<Generation>(bad).unwrap_err().to_string();
        assert!(e.contains("exploded") && e.contains("a generation status"), "{e}");
    }
}
