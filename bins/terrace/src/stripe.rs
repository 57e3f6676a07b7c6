//! The payments adapter (CONTRACT §7): Stripe, or with neither secret set the
//! Stripe simulator in-process on loopback, sending its webhooks to this
//! instance.

use crate::config::{Config, ConfigError, Stripe};
use std::net::SocketAddr;
use std::sync::Arc;
use terrace_api::BillingConfig;
use terrace_ports::{Observer, Payments as PaymentsPort};
use terrace_stripe::{SecretKey, StripeClient, StripeConfig};
use terrace_stripe_sim::{MONTHLY_PRICE_ID, StripeSim, StripeSimConfig};
use tracing::{info, warn};

/// The payments adapter, and the simulator when one runs (shut down with
/// the instance).
pub struct Payments {
    pub adapter: Arc<dyn PaymentsPort>,
    pub simulator: Option<StripeSim>,
}

/// `http://host:port` for the bound address, with loopback for an
/// unspecified one (0.0.0.0 is not somewhere a browser can go).
pub fn local_url(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        format!("http://127.0.0.1:{}", addr.port())
    } else {
        format!("http://{addr}")
    }
}

/// Builds the adapter, before anything binds: a configuration Stripe's
/// client refuses is a [`ConfigError`].
pub async fn payments(cfg: &Config, observer: &Arc<dyn Observer>) -> Result<Payments, crate::AppError> {
    let (stripe_config, simulator) = match &cfg.stripe {
        Stripe::Real { secret_key, webhook_secret } => (
            StripeConfig::new(
                cfg.stripe_base_url.clone(),
                SecretKey::new(secret_key.clone()),
                SecretKey::new(webhook_secret.clone()),
                cfg.stripe_timeout,
            ),
            None,
        ),
        Stripe::Simulator => {
            let sim = StripeSim::start(StripeSimConfig::default())
                .await
                .map_err(|e| crate::AppError::start("starting the Stripe simulator", e))?;
            let config = StripeConfig::new(
                sim.base_url(),
                SecretKey::new(sim.secret_key()),
                SecretKey::new(sim.webhook_secret()),
                cfg.stripe_timeout,
            );
            (config, Some(sim))
        }
    };
    let client = StripeClient::new(stripe_config, observer.clone()).map_err(|e| {
        use terrace_stripe::ConfigError as E;
        let var = match &e {
            E::InvalidBaseUrl => "TERRACE_STRIPE_BASE_URL",
            E::EmptyKey { which: "webhook_secret" } | E::InvalidKey { which: "webhook_secret" } => {
                "STRIPE_WEBHOOK_SECRET"
            }
            E::EmptyKey { .. } | E::InvalidKey { .. } => "STRIPE_SECRET_KEY",
            _ => "TERRACE_STRIPE_TIMEOUT",
        };
        crate::AppError::Config(ConfigError { var, message: e.to_string() })
    })?;
    Ok(Payments { adapter: Arc::new(client), simulator })
}

/// What the billing routes need, once the address is bound; points the
/// simulator's webhooks at it.
pub fn billing_config(cfg: &Config, addr: SocketAddr, payments: &Payments) -> BillingConfig {
    let local = local_url(addr);
    let public_url = cfg.public_url.clone().unwrap_or_else(|| local.clone());
    let mut price = cfg.stripe_price_monthly_pro.clone();
    if let Some(sim) = &payments.simulator {
        let webhook_url = format!("{local}/v1/webhooks/stripe");
        sim.set_webhook_url(Some(webhook_url.clone()));
        warn!(
            url = %sim.base_url(),
            webhooks_to = %webhook_url,
            "STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET are unset: the built-in Stripe simulator takes the payments (its Checkout page pays without a card)"
        );
        price = price.or_else(|| Some(MONTHLY_PRICE_ID.to_owned()));
    }
    match &price {
        Some(p) => {
            info!(public_url = %public_url, monthly_pro_price = %p, "billing ready: packages and the monthly plan")
        }
        None => info!(
            public_url = %public_url,
            "billing ready: packages only (TERRACE_STRIPE_PRICE_MONTHLY_PRO is unset, so no plan is offered)"
        ),
    }
    BillingConfig { monthly_pro_price: price, public_url }
}
