//! Builds the payments adapter (CONTRACT §7): Stripe, or with neither secret
//! set the Stripe simulator in-process on loopback, sending its webhooks to
//! this instance.

use crate::config::{Config, ConfigError, Stripe};
use std::net::SocketAddr;
use std::sync::Arc;
use terrace_api::BillingConfig;
use terrace_ports::{Observer, Payments};
use terrace_stripe::{SecretKey, StripeClient, StripeConfig};
use terrace_stripe_sim::{MONTHLY_PRICE_ID, StripeSim, StripeSimConfig};
use tracing::{info, warn};

/// The payments adapter, what the billing routes need, and the simulator
/// when one runs (shut down with the process).
pub struct Billing {
    pub payments: Arc<dyn Payments>,
    pub config: BillingConfig,
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

/// Builds the adapter for this configuration and the bound address.
pub async fn billing(
    cfg: &Config,
    addr: SocketAddr,
    observer: &Arc<dyn Observer>,
) -> anyhow::Result<Billing> {
    let local = local_url(addr);
    let public_url = cfg.public_url.clone().unwrap_or_else(|| local.clone());
    let (stripe_config, price, simulator) = match &cfg.stripe {
        Stripe::Real { secret_key, webhook_secret } => (
            StripeConfig::new(
                cfg.stripe_base_url.clone(),
                SecretKey::new(secret_key.clone()),
                SecretKey::new(webhook_secret.clone()),
                cfg.stripe_timeout,
            ),
            cfg.stripe_price_monthly_pro.clone(),
            None,
        ),
        Stripe::Simulator => {
            let webhook_url = format!("{local}/v1/webhooks/stripe");
            let sim = StripeSim::start(StripeSimConfig {
                webhook_url: Some(webhook_url.clone()),
                ..StripeSimConfig::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("starting the Stripe simulator: {e}"))?;
            warn!(
                url = %sim.base_url(),
                webhooks_to = %webhook_url,
                "STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET are unset: the built-in Stripe simulator takes the payments (its Checkout page pays without a card)"
            );
            let config = StripeConfig::new(
                sim.base_url(),
                SecretKey::new(sim.secret_key()),
                SecretKey::new(sim.webhook_secret()),
                cfg.stripe_timeout,
            );
            let price = cfg.stripe_price_monthly_pro.clone().or_else(|| Some(MONTHLY_PRICE_ID.to_owned()));
            (config, price, Some(sim))
        }
    };
    let client = StripeClient::new(stripe_config, observer.clone()).unwrap_or_else(|e| {
        let var = match &e {
            terrace_stripe::ConfigError::InvalidBaseUrl => "TERRACE_STRIPE_BASE_URL",
            terrace_stripe::ConfigError::EmptyKey { which: "webhook_secret" }
            | terrace_stripe::ConfigError::InvalidKey { which: "webhook_secret" } => "STRIPE_WEBHOOK_SECRET",
            terrace_stripe::ConfigError::EmptyKey { .. } | terrace_stripe::ConfigError::InvalidKey { .. } => {
                "STRIPE_SECRET_KEY"
            }
            _ => "TERRACE_STRIPE_TIMEOUT",
        };
        crate::config_exit(&ConfigError { var, message: e.to_string() })
    });
    match &price {
        Some(p) => {
            info!(public_url = %public_url, monthly_pro_price = %p, "billing ready: packages and the monthly plan")
        }
        None => info!(
            public_url = %public_url,
            "billing ready: packages only (TERRACE_STRIPE_PRICE_MONTHLY_PRO is unset, so no plan is offered)"
        ),
    }
    Ok(Billing {
        payments: Arc::new(client),
        config: BillingConfig { monthly_pro_price: price, public_url },
        simulator,
    })
}
