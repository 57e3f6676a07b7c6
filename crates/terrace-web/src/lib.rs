//! Terrace's web app (CONTRACT §8): a page a person uses to create, follow
//! and browse generations, see their balance and buy credits.
//!
//! The app is plain HTML, CSS and JavaScript modules in `assets/`, compiled
//! into the binary with `include_bytes!`; [`router`] serves them from memory
//! on every instance that serves the API. Nothing is loaded from another
//! origin, and every answer carries [`CONTENT_SECURITY_POLICY`].
//!
//! | path | answer | cache |
//! |---|---|---|
//! | `/`, `/app`, `/app/…`, `/billing/success`, `/billing/cancel` | the page (`index.html`); the app routes itself by path | `no-cache` with an `ETag` |
//! | `/app/config.json` | what the page must know: [`WebConfig`] as JSON | `no-store` |
//! | `/app/assets/{version}/{file}` | a script or style sheet; `version` is a hash of every asset | a year, `immutable`, with an `ETag` |
//!
//! A deploy that changes any asset changes the version, so the page of one
//! build never runs the scripts of another; an old version's path is a 404,
//! never a newer file that a cache would keep as immutable.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use std::sync::Arc;

/// What the page must know, served as `GET /app/config.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebConfig {
    /// Dev mode: the page signs in as the demo user at once.
    pub dev_mode: bool,
    /// The demo user's bearer token; given to the page only in dev mode.
    pub demo_token: Option<String>,
    /// Where the page's "Sign in" link goes (`TERRACE_SUPABASE_URL`); the page
    /// adds `redirect_to`, and Supabase sends the person back with
    /// `#access_token=…`.
    pub supabase_url: Option<String>,
}

impl WebConfig {
    /// The JSON of `GET /app/config.json`: `{"dev_mode", "demo_token", "supabase_url"}`,
    /// `demo_token` null outside dev mode.
    pub fn to_json(&self) -> String {
        let demo = if self.dev_mode { self.demo_token.as_deref() } else { None };
        serde_json::json!({
            "dev_mode": self.dev_mode,
            "demo_token": demo,
            "supabase_url": self.supabase_url,
        })
        .to_string()
    }
}

/// The policy on every answer of the web app: scripts, styles and
/// connections from this origin only, no inline script or style, images also
/// from `blob:` (designs fetched with the token) and `data:`, never framed,
/// and DOM sinks closed to strings (Trusted Types: the app builds nodes, it
/// never assigns HTML).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
img-src 'self' blob: data:; connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; \
form-action 'self'; frame-ancestors 'none'; require-trusted-types-for 'script'; trusted-types 'none'";

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset { name: $name, content_type: $type, body: include_bytes!(concat!("../assets/", $name)) }
    };
}

/// Every file the page loads besides itself.
const ASSETS: &[Asset] = &[
    asset!("app.css", CSS),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("auth.js", JS),
    asset!("dom.js", JS),
    asset!("sse.js", JS),
    asset!("words.js", JS),
    asset!("create.js", JS),
    asset!("follow.js", JS),
    asset!("history.js", JS),
    asset!("account.js", JS),
];

const INDEX: &str = include_str!("../assets/index.html");

/// FNV-1a, 64 bits: enough to tell builds of a few files apart.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        // A separator, so that moving bytes between files changes the hash.
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The rendered page and the asset tags, built once per router.
struct Site {
    version: String,
    index: String,
    index_etag: String,
    config: String,
    etags: Vec<String>,
}

impl Site {
    fn new(config: &WebConfig) -> Self {
        let bodies: Vec<&[u8]> = ASSETS.iter().map(|a| a.body).chain([INDEX.as_bytes()]).collect();
        let version = format!("{:012x}", fnv1a(&bodies) >> 16);
        let index = INDEX.replace("{{version}}", &version);
        let index_etag = format!("\"{:016x}\"", fnv1a(&[index.as_bytes()]));
        let etags = ASSETS.iter().map(|a| format!("\"{version}-{:016x}\"", fnv1a(&[a.body]))).collect();
        Self { version, index, index_etag, config: config.to_json(), etags }
    }

    fn page(&self, headers: &HeaderMap) -> Response {
        if matches_etag(headers, &self.index_etag) {
            return not_modified(&self.index_etag, "no-cache");
        }
        let mut res = respond(StatusCode::OK, HTML, "no-cache", self.index.clone());
        set(&mut res, header::ETAG, &self.index_etag);
        res
    }

    fn asset(&self, version: &str, file: &str, headers: &HeaderMap) -> Response {
        let found = ASSETS.iter().position(|a| a.name == file).filter(|_| version == self.version);
        let Some(i) = found else {
            return respond(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "no-store", "no such file\n");
        };
        const IMMUTABLE: &str = "public, max-age=31536000, immutable";
        let etag = &self.etags[i];
        if matches_etag(headers, etag) {
            return not_modified(etag, IMMUTABLE);
        }
        let mut res = respond(StatusCode::OK, ASSETS[i].content_type, IMMUTABLE, ASSETS[i].body);
        set(&mut res, header::ETAG, etag);
        res
    }
}

/// Whether `If-None-Match` names `etag` (or `*`), weak or strong.
fn matches_etag(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').map(str::trim).any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag))
}

fn set(res: &mut Response, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        res.headers_mut().insert(name, v);
    }
}

fn not_modified(etag: &str, cache: &'static str) -> Response {
    let mut res = respond(StatusCode::NOT_MODIFIED, "", cache, "");
    res.headers_mut().remove(header::CONTENT_TYPE);
    set(&mut res, header::ETAG, etag);
    res
}

/// An answer with the web app's security headers.
fn respond(
    status: StatusCode,
    content_type: &'static str,
    cache: &'static str,
    body: impl Into<axum::body::Body>,
) -> Response {
    let mut res = Response::new(body.into());
    *res.status_mut() = status;
    let h = res.headers_mut();
    if !content_type.is_empty() {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(HeaderName::from_static("cross-origin-opener-policy"), HeaderValue::from_static("same-origin"));
    h.insert(
        HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("same-origin"),
    );
    res
}

/// The web app's routes, for any router state: merge them into the API's
/// router on instances that serve the API.
pub fn router<S>(config: &WebConfig) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let site = Arc::new(Site::new(config));
    let page = {
        let site = site.clone();
        get(move |headers: HeaderMap| {
            let site = site.clone();
            async move { site.page(&headers) }
        })
    };
    let config = {
        let site = site.clone();
        get(move || {
            let site = site.clone();
            async move { respond(StatusCode::OK, "application/json", "no-store", site.config.clone()) }
        })
    };
    let asset = get(move |Path((version, file)): Path<(String, String)>, headers: HeaderMap| {
        let site = site.clone();
        async move { site.asset(&version, &file, &headers) }
    });
    Router::new()
        .route("/", page.clone())
        .route("/app", page.clone())
        .route("/app/{*path}", page.clone())
        .route("/billing/success", page.clone())
        .route("/billing/cancel", page)
        .route("/app/config.json", config)
        .route("/app/assets/{version}/{file}", asset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_token_is_given_only_in_dev_mode() {
        let mut c = WebConfig { dev_mode: false, demo_token: Some("t".into()), supabase_url: None };
        assert_eq!(c.to_json(), r#"{"demo_token":null,"dev_mode":false,"supabase_url":null}"#);
        c.dev_mode = true;
        assert!(c.to_json().contains(r#""demo_token":"t""#));
    }

    #[test]
    fn etags_match_weak_strong_and_lists() {
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"a\", W/\"b\""));
        assert!(matches_etag(&h, "\"b\""));
        assert!(matches_etag(&h, "\"a\""));
        assert!(!matches_etag(&h, "\"c\""));
    }

    #[test]
    fn every_asset_the_page_names_exists() {
        let site = Site::new(&WebConfig::default());
        for part in site.index.split("/app/assets/").skip(1) {
            let path = part.split('"').next().unwrap_or_default();
            let (version, file) = path.split_once('/').unwrap_or_default();
            assert_eq!(version, site.version);
            assert!(ASSETS.iter().any(|a| a.name == file), "{file} is not an asset");
        }
    }
}
