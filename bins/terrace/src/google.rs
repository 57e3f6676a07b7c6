//! Builds the Google adapters (Maps and Gemini) for a base URL and keys.

use crate::config::Config;
use anyhow::Context;
use std::sync::Arc;
use terrace_google::{ApiKey, GoogleClient, GoogleConfig};
use terrace_ports::{DesignModel, Geocoder, Imagery, Observer};

/// The three Google ports.
pub struct GoogleAdapters {
    pub geocoder: Arc<dyn Geocoder>,
    pub imagery: Arc<dyn Imagery>,
    pub model: Arc<dyn DesignModel>,
}

pub fn adapters(
    cfg: &Config,
    maps_base_url: &str,
    gemini_base_url: &str,
    maps_key: &str,
    gemini_key: &str,
    observer: &Arc<dyn Observer>,
) -> anyhow::Result<GoogleAdapters> {
    let client = GoogleClient::new(
        GoogleConfig {
            maps_base_url: maps_base_url.to_owned(),
            gemini_base_url: gemini_base_url.to_owned(),
            gemini_model: cfg.gemini_model.clone(),
            maps_api_key: ApiKey::new(maps_key),
            gemini_api_key: ApiKey::new(gemini_key),
            maps_timeout: cfg.policies.maps_timeout,
            llm_connect_timeout: cfg.policies.llm_connect_timeout,
            llm_idle_timeout: cfg.policies.llm_idle_timeout,
            http: cfg.google_http,
            streams_per_connection: cfg.google_streams_per_connection,
        },
        observer.clone(),
    )
    .context("configuring the Google adapters")?;
    Ok(GoogleAdapters {
        geocoder: Arc::new(client.clone()),
        imagery: Arc::new(client.clone()),
        model: Arc::new(client),
    })
}
