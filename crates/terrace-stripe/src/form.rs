//! Stripe's request bodies: `application/x-www-form-urlencoded`, nested
//! parameters in bracket notation (`line_items[0][price_data][unit_amount]=1000`).
//! Brackets in keys are sent as they are (as Stripe's own libraries do);
//! everything else is percent-encoded.

use terrace_ports::{PackageCheckout, PackagePrice, SubscriptionCheckout};

/// An ordered list of form parameters.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Form(Vec<(String, String)>);

impl Form {
    pub(crate) fn push(&mut self, key: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.0.push((key.into(), value.into()));
        self
    }

    /// The encoded body.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push('&');
            }
            out.extend(form_urlencoded::byte_serialize(k.as_bytes()).map(|s| match s {
                "%5B" => "[",
                "%5D" => "]",
                s => s,
            }));
            out.push('=');
            out.extend(form_urlencoded::byte_serialize(v.as_bytes()));
        }
        out
    }

    fn urls(&mut self, success_url: &str, cancel_url: &str) -> &mut Self {
        self.push("success_url", success_url).push("cancel_url", cancel_url)
    }
}

/// `POST /v1/checkout/sessions` for one package.
pub(crate) fn package_checkout(r: &PackageCheckout) -> Form {
    let user = r.user.to_string();
    let mut f = Form::default();
    f.push("mode", "payment");
    match &r.price {
        PackagePrice::Inline { unit_amount, currency, name } => {
            f.push("line_items[0][price_data][currency]", currency.as_str())
                .push("line_items[0][price_data][unit_amount]", unit_amount.to_string())
                .push("line_items[0][price_data][product_data][name]", name.as_str());
        }
        PackagePrice::Configured(price) => {
            f.push("line_items[0][price]", price.as_str());
        }
    }
    f.push("line_items[0][quantity]", "1")
        .push("client_reference_id", user.as_str())
        .push("metadata[package_id]", r.package_id.as_str())
        .push("metadata[user_id]", user.as_str())
        .push("payment_intent_data[metadata][package_id]", r.package_id.as_str())
        .push("payment_intent_data[metadata][user_id]", user.as_str());
    match &r.customer {
        Some(c) => f.push("customer", c.as_str()),
        // A payment makes no customer unless asked; the billing portal needs one.
        None => f.push("customer_creation", "always"),
    };
    f.urls(&r.success_url, &r.cancel_url);
    f
}

/// `POST /v1/checkout/sessions` for a subscription.
pub(crate) fn subscription_checkout(r: &SubscriptionCheckout) -> Form {
    let user = r.user.to_string();
    let mut f = Form::default();
    f.push("mode", "subscription")
        .push("line_items[0][price]", r.price_id.as_str())
        .push("line_items[0][quantity]", "1")
        .push("client_reference_id", user.as_str())
        .push("metadata[plan_id]", r.plan_id.as_str())
        .push("metadata[user_id]", user.as_str())
        // The subscription's own events carry its metadata, not the session's.
        .push("subscription_data[metadata][plan_id]", r.plan_id.as_str())
        .push("subscription_data[metadata][user_id]", user.as_str());
    if let Some(c) = &r.customer {
        f.push("customer", c.as_str());
    }
    f.urls(&r.success_url, &r.cancel_url);
    f
}

/// `POST /v1/subscriptions/{id}`: cancel at the period end.
pub(crate) fn cancel_at_period_end() -> Form {
    let mut f = Form::default();
    f.push("cancel_at_period_end", "true");
    f
}

/// `POST /v1/billing_portal/sessions`.
pub(crate) fn portal(customer: &str, return_url: &str) -> Form {
    let mut f = Form::default();
    f.push("customer", customer).push("return_url", return_url);
    f
}

/// Whether `id` may be put into a path: Stripe's ids are `prefix_` and
/// letters and digits.
pub(crate) fn path_safe(id: &str) -> bool {
    !id.is_empty() && id.len() <= 255 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use terrace_domain::UserId;

    fn user() -> UserId {
        "6f1c0f5e-8d7a-4c51-9a57-1c2b3d4e5f60".parse().expect("uuid")
    }

    fn pairs(body: &str) -> Vec<(String, String)> {
        form_urlencoded::parse(body.as_bytes()).into_owned().collect()
    }

    #[test]
    fn keys_keep_their_brackets_and_values_are_encoded() {
        let mut f = Form::default();
        f.push("line_items[0][price_data][product_data][name]", "10 tokens & more")
            .push("success_url", "https://t.example/billing/success?session_id={CHECKOUT_SESSION_ID}");
        assert_eq!(
            f.encode(),
            "line_items[0][price_data][product_data][name]=10+tokens+%26+more\
             &success_url=https%3A%2F%2Ft.example%2Fbilling%2Fsuccess%3Fsession_id%3D%7BCHECKOUT_SESSION_ID%7D"
        );
        assert_eq!(pairs(&f.encode()), f.0);
    }

    #[test]
    fn a_package_checkout_is_a_one_time_payment_naming_the_user_and_package() {
        let r = PackageCheckout {
            user: user(),
            package_id: "package_10".into(),
            price: PackagePrice::Inline {
                unit_amount: 1000,
                currency: "usd".into(),
                name: "10 tokens".into(),
            },
            customer: None,
            success_url: "https://t.example/billing/success".into(),
            cancel_url: "https://t.example/billing/cancel".into(),
        };
        let u = user().to_string();
        let expect: Vec<(String, String)> = [
            ("mode", "payment"),
            ("line_items[0][price_data][currency]", "usd"),
            ("line_items[0][price_data][unit_amount]", "1000"),
            ("line_items[0][price_data][product_data][name]", "10 tokens"),
            ("line_items[0][quantity]", "1"),
            ("client_reference_id", &u),
            ("metadata[package_id]", "package_10"),
            ("metadata[user_id]", &u),
            ("payment_intent_data[metadata][package_id]", "package_10"),
            ("payment_intent_data[metadata][user_id]", &u),
            ("customer_creation", "always"),
            ("success_url", "https://t.example/billing/success"),
            ("cancel_url", "https://t.example/billing/cancel"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let body = package_checkout(&r).encode();
        assert_eq!(pairs(&body), expect);
        assert!(body.starts_with("mode=payment&line_items[0][price_data][currency]=usd&"), "{body}");

        let r = PackageCheckout {
            price: PackagePrice::Configured("price_10".into()),
            customer: Some("cus_1".into()),
            ..r
        };
        let got = pairs(&package_checkout(&r).encode());
        assert!(got.contains(&("line_items[0][price]".into(), "price_10".into())));
        assert!(got.contains(&("customer".into(), "cus_1".into())));
        assert!(!got.iter().any(|(k, _)| k.contains("price_data") || k == "customer_creation"));
    }

    #[test]
    fn a_subscription_checkout_names_the_price_and_the_plan_in_both_metadata() {
        let r = SubscriptionCheckout {
            user: user(),
            plan_id: "monthly_pro".into(),
            price_id: "price_pro".into(),
            customer: Some("cus_1".into()),
            success_url: "https://t.example/s".into(),
            cancel_url: "https://t.example/c".into(),
        };
        let u = user().to_string();
        let got = pairs(&subscription_checkout(&r).encode());
        let expect: Vec<(String, String)> = [
            ("mode", "subscription"),
            ("line_items[0][price]", "price_pro"),
            ("line_items[0][quantity]", "1"),
            ("client_reference_id", &u),
            ("metadata[plan_id]", "monthly_pro"),
            ("metadata[user_id]", &u),
            ("subscription_data[metadata][plan_id]", "monthly_pro"),
            ("subscription_data[metadata][user_id]", &u),
            ("customer", "cus_1"),
            ("success_url", "https://t.example/s"),
            ("cancel_url", "https://t.example/c"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(got, expect);
    }

    #[test]
    fn cancel_and_portal_bodies() {
        assert_eq!(cancel_at_period_end().encode(), "cancel_at_period_end=true");
        assert_eq!(
            portal("cus_1", "https://t.example/").encode(),
            "customer=cus_1&return_url=https%3A%2F%2Ft.example%2F"
        );
        assert!(path_safe("sub_1MowQVLkdIwHu7ix"));
        for bad in ["", "sub/../x", "sub 1", "sub?x=1"] {
            assert!(!path_safe(bad), "{bad}");
        }
    }
}
