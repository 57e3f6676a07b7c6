//! The web app's router as a browser sees it: the page and its assets with
//! the right content types, the Content-Security-Policy on every answer,
//! revalidation by ETag, and the config the page reads.

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use terrace_web::{CONTENT_SECURITY_POLICY, WebConfig, router};
use tower::ServiceExt;

fn app(config: &WebConfig) -> Router {
    router(config)
}

async fn get(app: &Router, path: &str, etag: Option<&str>) -> (Response<Body>, String) {
    let mut req = Request::get(path);
    if let Some(e) = etag {
        req = req.header(header::IF_NONE_MATCH, e);
    }
    let res = app.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    let (parts, body) = res.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (Response::from_parts(parts, Body::empty()), String::from_utf8_lossy(&bytes).into_owned())
}

fn header(res: &Response<Body>, name: header::HeaderName) -> &str {
    res.headers().get(&name).map(|v| v.to_str().unwrap()).unwrap_or_else(|| panic!("no {name} header"))
}

/// The asset paths the page names, in order.
fn assets(page: &str) -> Vec<String> {
    page.split("\"/app/assets/")
        .skip(1)
        .map(|p| format!("/app/assets/{}", p.split('"').next().unwrap()))
        .collect()
}

#[tokio::test]
async fn the_page_is_served_with_its_policy_and_its_assets_with_their_types() {
    let app = app(&WebConfig::default());
    let (res, page) = get(&app, "/", None).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, header::CONTENT_TYPE), "text/html; charset=utf-8");
    let csp = header(&res, header::CONTENT_SECURITY_POLICY);
    assert_eq!(csp, CONTENT_SECURITY_POLICY);
    for directive in ["default-src 'self'", "script-src 'self'", "style-src 'self'", "frame-ancestors 'none'"]
    {
        assert!(csp.contains(directive), "{csp} lacks {directive}");
    }
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
    assert_eq!(header(&res, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
    assert_eq!(header(&res, header::CACHE_CONTROL), "no-cache");
    // No inline script or style: the policy would refuse them.
    assert!(!page.contains("<script>") && !page.contains("<style") && !page.contains("style="));

    let paths = assets(&page);
    assert!(paths.iter().any(|p| p.ends_with("/app.js")) && paths.iter().any(|p| p.ends_with("/app.css")));
    for path in &paths {
        let (res, body) = get(&app, path, None).await;
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        let want =
            if path.ends_with(".css") { "text/css; charset=utf-8" } else { "text/javascript; charset=utf-8" };
        assert_eq!(header(&res, header::CONTENT_TYPE), want, "{path}");
        assert_eq!(header(&res, header::CONTENT_SECURITY_POLICY), CONTENT_SECURITY_POLICY);
        assert_eq!(header(&res, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
        assert!(header(&res, header::CACHE_CONTROL).contains("immutable"), "{path}");
        assert!(!body.is_empty());
        // Every module a module imports is served too.
        for import in body.split("from './").skip(1) {
            let file = import.split('\'').next().unwrap();
            let sibling = format!("{}/{file}", path.rsplit_once('/').unwrap().0);
            let (res, _) = get(&app, &sibling, None).await;
            assert_eq!(res.status(), StatusCode::OK, "{path} imports {sibling}");
        }
    }
}

#[tokio::test]
async fn etags_revalidate_and_old_versions_are_gone() {
    let app = app(&WebConfig::default());
    let (res, page) = get(&app, "/", None).await;
    let etag = header(&res, header::ETAG).to_owned();
    let (again, body) = get(&app, "/", Some(&etag)).await;
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert!(body.is_empty());

    let js = assets(&page).into_iter().find(|p| p.ends_with("/app.js")).unwrap();
    let (res, _) = get(&app, &js, None).await;
    let etag = header(&res, header::ETAG).to_owned();
    assert_eq!(get(&app, &js, Some(&etag)).await.0.status(), StatusCode::NOT_MODIFIED);

    let (res, _) = get(&app, "/app/assets/000000000000/app.js", None).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let (res, _) = get(&app, &js.replace("app.js", "nope.js"), None).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_app_routes_and_checkouts_return_show_the_page() {
    let app = app(&WebConfig::default());
    for path in [
        "/app",
        "/app/history",
        "/app/account",
        "/app/generations/6f1c2d1e-0000-4000-8000-000000000000",
        "/billing/success",
        "/billing/cancel",
    ] {
        let (res, page) = get(&app, path, None).await;
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        assert_eq!(header(&res, header::CONTENT_TYPE), "text/html; charset=utf-8", "{path}");
        assert!(page.contains("/app.js\""), "{path}");
    }
}

#[tokio::test]
async fn the_config_gives_the_demo_token_only_in_dev_mode() {
    let dev = WebConfig { dev_mode: true, demo_token: Some("a.b.c".into()), supabase_url: None };
    let (res, body) = get(&app(&dev), "/app/config.json", None).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, header::CONTENT_TYPE), "application/json");
    assert_eq!(header(&res, header::CACHE_CONTROL), "no-store");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v, serde_json::json!({"dev_mode": true, "demo_token": "a.b.c", "supabase_url": null}));

    let prod = WebConfig {
        dev_mode: false,
        demo_token: Some("a.b.c".into()),
        supabase_url: Some("https://example.supabase.co".into()),
    };
    let (_, body) = get(&app(&prod), "/app/config.json", None).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"dev_mode": false, "demo_token": null, "supabase_url": "https://example.supabase.co"})
    );
}
