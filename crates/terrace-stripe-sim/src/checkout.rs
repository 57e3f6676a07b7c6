//! The hosted pages: Checkout (`/checkout/{id}` with Pay and Cancel) and the
//! billing portal (`/portal/{id}`). Plain HTML forms, usable with a keyboard
//! alone, with nothing fetched from anywhere.

use crate::server::{Body, Req, response, see_other, text};
use crate::{State, webhooks};
use http::{Method, Response, StatusCode};
use std::fmt::Write;
use std::sync::Arc;

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn money(amount: u64, currency: &str) -> String {
    let symbol = if currency.eq_ignore_ascii_case("usd") { "$" } else { "" };
    let code = if symbol.is_empty() { format!(" {}", currency.to_uppercase()) } else { String::new() };
    format!("{symbol}{}.{:02}{code}", amount / 100, amount % 100)
}

fn page(title: &str, main: &str) -> Response<Body> {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title><style>\
         body{{font-family:system-ui,sans-serif;margin:0;background:#f6f8fa;color:#1a1a1a}}\
         main{{max-width:28rem;margin:3rem auto;padding:1.5rem;background:#fff;border-radius:8px;\
         box-shadow:0 1px 3px rgba(0,0,0,.15)}}\
         .note{{color:#555;font-size:.9rem}}.amount{{font-size:2rem;margin:.5rem 0 1.5rem}}\
         form{{display:inline}}button{{font-size:1rem;padding:.6rem 1.2rem;margin:.25rem .5rem .25rem 0;\
         border-radius:6px;border:1px solid #888;cursor:pointer}}\
         button.pay{{background:#0a5cd5;color:#fff;border-color:#0a5cd5}}\
         button:focus-visible,a:focus-visible{{outline:3px solid #f5a623;outline-offset:2px}}\
         </style></head><body><main>{main}</main></body></html>",
        title = escape(title),
    );
    response(StatusCode::OK, "text/html; charset=utf-8", html)
}

fn not_found(what: &str) -> Response<Body> {
    let mut r = page("Not found", &format!("<h1>Not found</h1><p>There is no such {}.</p>", escape(what)));
    *r.status_mut() = StatusCode::NOT_FOUND;
    r
}

pub(crate) fn handle(req: &Req, state: &Arc<State>) -> Response<Body> {
    let segments: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
    match (&req.method, segments.as_slice()) {
        (&Method::GET, ["checkout", id]) => checkout_page(state, id),
        (&Method::POST, ["checkout", id, "pay"]) => match state.pay(id) {
            Ok((_, batch)) => {
                if let Some(batch) = batch {
                    webhooks::dispatch(state, batch);
                }
                let store = state.lock();
                match store.sessions.get(*id) {
                    Some(s) => see_other(&s.success_redirect()),
                    None => not_found("checkout session"),
                }
            }
            Err(_) => not_found("checkout session"),
        },
        (&Method::POST, ["checkout", id, "cancel"]) => {
            let store = state.lock();
            match store.sessions.get(*id) {
                Some(s) => see_other(s.cancel_url.as_deref().unwrap_or(&s.url)),
                None => not_found("checkout session"),
            }
        }
        (&Method::GET, ["portal", id]) => portal_page(state, id),
        _ => text(StatusCode::NOT_FOUND, "not found"),
    }
}

fn checkout_page(state: &State, id: &str) -> Response<Body> {
    let store = state.lock();
    let Some(s) = store.sessions.get(id) else { return not_found("checkout session") };
    let what = match s.line.price.as_ref().and_then(|p| store.prices.iter().find(|x| &x.id == p)) {
        Some(p) if p.interval.is_some() => {
            format!(
                "{} — {} a {}",
                p.product_name,
                money(p.unit_amount, &p.currency),
                p.interval.as_deref().unwrap_or("month")
            )
        }
        _ => s.line.name.clone(),
    };
    let mut main = String::new();
    let _ = write!(
        main,
        "<h1>Pay Terrace</h1><p class=\"note\">Stripe simulator: no card is asked for and no money moves.</p>\
         <p>{}</p><p class=\"amount\">{}</p>",
        escape(&what),
        money(s.amount_total(), &s.line.currency)
    );
    if s.complete {
        let _ = write!(
            main,
            "<p>This session is paid.</p><p><a href=\"{}\">Return to Terrace</a></p>",
            escape(&s.success_redirect())
        );
    } else {
        let id = escape(&s.id);
        let _ = write!(
            main,
            "<form method=\"post\" action=\"/checkout/{id}/pay\"><button class=\"pay\" type=\"submit\" autofocus>Pay</button></form>\
             <form method=\"post\" action=\"/checkout/{id}/cancel\"><button type=\"submit\">Cancel</button></form>"
        );
    }
    page("Checkout", &main)
}

fn portal_page(state: &State, id: &str) -> Response<Body> {
    let store = state.lock();
    let Some(p) = store.portals.get(id) else { return not_found("billing portal session") };
    let mut subs: Vec<_> = store.subscriptions.values().filter(|s| s.customer == p.customer).collect();
    subs.sort_by_key(|s| s.created);
    let mut main =
        format!("<h1>Billing</h1><p class=\"note\">Stripe simulator: customer {}</p>", escape(&p.customer));
    if subs.is_empty() {
        main.push_str("<p>No subscriptions.</p>");
    } else {
        main.push_str("<ul>");
        for s in subs {
            let _ = write!(
                main,
                "<li>{} — {}{}</li>",
                escape(&s.price.product_name),
                escape(&s.status),
                if s.cancel_at_period_end { " (ends at the period end)" } else { "" }
            );
        }
        main.push_str("</ul>");
    }
    if let Some(url) = &p.return_url {
        let _ = write!(main, "<p><a href=\"{}\">Return to Terrace</a></p>", escape(url));
    }
    page("Billing portal", &main)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_and_escaping() {
        assert_eq!(money(1000, "usd"), "$10.00");
        assert_eq!(money(4505, "eur"), "45.05 EUR");
        assert_eq!(escape("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }
}
