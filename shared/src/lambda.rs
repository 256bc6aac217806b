//! The Lambda entry point: configuration from the environment, clients built once in `main`, the
//! function's axum routes handed to `lambda_http::run`.

use crate::adapters::dynamodb::DynamoStore;
use crate::adapters::openai::{OpenAiClient, OpenAiConfig};
use crate::adapters::s3_objects::S3ObjectStore;
use crate::clock::{Clock, SystemClock};
use crate::domain::{MediaType, PriceTable};
use crate::http::{AppState, function_router};
use crate::ports::{ObjectStore, Store};
use crate::service::MediaService;
use axum::Router;
use std::sync::Arc;
use std::time::Duration;

/// A configuration or start-up failure, reported before the function takes traffic.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartupError(pub String);

/// Where the OpenAI key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// The key itself (`OPENAI_API_KEY`), for local runs.
    Value(String),
    /// The name of an SSM SecureString parameter holding it (`OPENAI_API_KEY_PARAMETER`).
    SsmParameter(String),
}

/// Which store and object storage the function uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// DynamoDB table and S3 bucket.
    Aws {
        /// `TABLE_NAME`.
        table: String,
        /// `BUCKET_NAME`.
        bucket: String,
    },
    /// SQLite and local files under `MEDIA_DATA_DIR` (`MEDIA_STORE=embedded`), for
    /// `cargo lambda watch`; needs the function's `embedded` feature.
    Embedded {
        /// The data directory.
        data_dir: std::path::PathBuf,
    },
}

/// Everything a function reads from its environment.
#[derive(Debug, Clone)]
pub struct LambdaConfig {
    /// Store and objects.
    pub backend: Backend,
    /// Base of result URLs instead of presigned ones (e.g. a CDN), `PUBLIC_BASE_URL`.
    pub public_base_url: Option<String>,
    /// `OPENAI_BASE_URL`, default `https://api.openai.com`.
    pub openai_base_url: String,
    /// The OpenAI key's source.
    pub openai_api_key: SecretSource,
    /// `URL_TTL_SECS`, default 3600.
    pub url_ttl: Duration,
    /// `PROVIDER_TIMEOUT_SECS`, default 25 (API Gateway gives up after 30 s).
    pub provider_timeout: Duration,
    /// `PRICING_TOML`: a whole price list, replacing the defaults.
    pub pricing_toml: Option<String>,
}

impl LambdaConfig {
    /// Reads the configuration from `var` (the process environment in production).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, StartupError> {
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let required =
            |name: &str| var(name).ok_or_else(|| StartupError(format!("{name} is not set")));
        let secs = |name: &str, default: u64| -> Result<Duration, StartupError> {
            match var(name) {
                None => Ok(Duration::from_secs(default)),
                Some(v) => v
                    .parse()
                    .map(Duration::from_secs)
                    .map_err(|_| StartupError(format!("{name} must be a number of seconds"))),
            }
        };
        let backend = match var("MEDIA_STORE").as_deref() {
            Some("embedded") => Backend::Embedded {
                data_dir: var("MEDIA_DATA_DIR")
                    .unwrap_or_else(|| "mediactl-data".into())
                    .into(),
            },
            None | Some("aws") => Backend::Aws {
                table: required("TABLE_NAME")?,
                bucket: required("BUCKET_NAME")?,
            },
            Some(other) => {
                return Err(StartupError(format!(
                    "MEDIA_STORE must be aws or embedded, not {other:?}"
                )));
            }
        };
        let openai_api_key = match (var("OPENAI_API_KEY"), var("OPENAI_API_KEY_PARAMETER")) {
            (Some(key), _) => SecretSource::Value(key),
            (None, Some(name)) => SecretSource::SsmParameter(name),
            (None, None) => {
                return Err(StartupError(
                    "set OPENAI_API_KEY_PARAMETER (an SSM SecureString name) or OPENAI_API_KEY"
                        .into(),
                ));
            }
        };
        Ok(Self {
            backend,
            public_base_url: var("PUBLIC_BASE_URL"),
            openai_base_url: var("OPENAI_BASE_URL")
                .unwrap_or_else(|| "https://api.openai.com".into()),
            openai_api_key,
            url_ttl: secs("URL_TTL_SECS", 3600)?,
            provider_timeout: secs("PROVIDER_TIMEOUT_SECS", 25)?,
            pricing_toml: var("PRICING_TOML"),
        })
    }
}

/// The AWS SDK configuration of this process: region, credentials, `AWS_ENDPOINT_URL`, and one
/// HTTPS client (hyper, rustls with ring) shared by every AWS client.
pub async fn sdk_config() -> aws_config::SdkConfig {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    let https = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(https)
        .load()
        .await
}

/// An S3 client; path-style addressing when a custom endpoint (an emulator) is configured.
pub fn s3_client(sdk: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::config::Builder::from(sdk)
        .force_path_style(sdk.endpoint_url().is_some())
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

async fn openai_key(
    sdk: &aws_config::SdkConfig,
    source: &SecretSource,
) -> Result<String, StartupError> {
    match source {
        SecretSource::Value(key) => Ok(key.clone()),
        SecretSource::SsmParameter(name) => aws_sdk_ssm::Client::new(sdk)
            .get_parameter()
            .name(name)
            .with_decryption(true)
            .send()
            .await
            .map_err(|e| {
                StartupError(format!(
                    "reading SSM parameter {name}: {}",
                    aws_sdk_ssm::error::DisplayErrorContext(e)
                ))
            })?
            .parameter
            .and_then(|p| p.value)
            .ok_or_else(|| StartupError(format!("SSM parameter {name} has no value"))),
    }
}

/// The store, object storage and any extra routes (the embedded object server) of a backend.
type Parts = (Arc<dyn Store>, Arc<dyn ObjectStore>, Router);

/// Builds the function's application: clients, store, objects, provider, service, routes.
pub async fn app(
    config: &LambdaConfig,
    sdk: &aws_config::SdkConfig,
    media: MediaType,
) -> Result<Router, StartupError> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let pricing = match &config.pricing_toml {
        Some(text) => PriceTable::from_toml(text).map_err(|e| StartupError(e.to_string()))?,
        None => PriceTable::default(),
    };
    let openai = Arc::new(
        OpenAiClient::new(OpenAiConfig {
            timeout: config.provider_timeout,
            max_retries: 1,
            ..OpenAiConfig::new(
                &config.openai_base_url,
                openai_key(sdk, &config.openai_api_key).await?,
            )
        })
        .map_err(|e| StartupError(e.to_string()))?,
    );
    let (store, objects, extra): Parts = match &config.backend {
        Backend::Aws { table, bucket } => {
            let objects =
                S3ObjectStore::new(s3_client(sdk), bucket, config.public_base_url.clone());
            let store = DynamoStore::new(
                aws_sdk_dynamodb::Client::new(sdk),
                table,
                objects.location_prefix(),
            );
            (Arc::new(store), Arc::new(objects), Router::new())
        }
        Backend::Embedded { data_dir } => embedded(config, data_dir, media, Arc::clone(&clock))?,
    };
    let service = Arc::new(MediaService::new(
        store,
        objects,
        openai.clone(),
        openai,
        pricing,
        clock,
    ));
    let state = AppState {
        service,
        url_ttl: chrono::Duration::from_std(config.url_ttl).unwrap_or(chrono::Duration::hours(1)),
    };
    Ok(function_router(state, media).merge(extra))
}

#[cfg(feature = "embedded")]
fn embedded(
    config: &LambdaConfig,
    data_dir: &std::path::Path,
    media: MediaType,
    clock: Arc<dyn Clock>,
) -> Result<Parts, StartupError> {
    use crate::adapters::fs_objects::{FsObjectStore, UrlSigner};
    use crate::adapters::sqlite::SqliteStore;
    let err = |e: &dyn std::fmt::Display| StartupError(e.to_string());
    std::fs::create_dir_all(data_dir).map_err(|e| err(&e))?;
    let store = SqliteStore::open(&data_dir.join("media.db")).map_err(|e| err(&e))?;
    let signer = UrlSigner::from_dir(data_dir).map_err(|e| err(&e))?;
    // `cargo lambda watch` serves function F under /lambda-url/F.
    let base = config
        .public_base_url
        .clone()
        .unwrap_or_else(|| format!("http://127.0.0.1:9000/lambda-url/{media}"));
    let objects = FsObjectStore::new(data_dir.join("objects"), &base, signer);
    let route = crate::http::objects::objects_router(objects.clone(), clock);
    Ok((Arc::new(store), Arc::new(objects), route))
}

#[cfg(not(feature = "embedded"))]
fn embedded(
    _config: &LambdaConfig,
    _data_dir: &std::path::Path,
    _media: MediaType,
    _clock: Arc<dyn Clock>,
) -> Result<Parts, StartupError> {
    Err(StartupError(
        "MEDIA_STORE=embedded needs the function built with --features embedded".into(),
    ))
}

/// JSON log lines for CloudWatch, at `AWS_LAMBDA_LOG_LEVEL` (set by the template's LoggingConfig)
/// or `RUST_LOG`, INFO by default.
fn init_logging() {
    let level = ["AWS_LAMBDA_LOG_LEVEL", "RUST_LOG"]
        .iter()
        .find_map(|name| std::env::var(name).ok()?.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    tracing_subscriber::fmt()
        .json()
        .with_max_level(level)
        .with_current_span(false)
        .with_ansi(false)
        .with_target(false)
        .init();
}

/// Runs a media function: reads the environment, builds everything once, serves events.
pub async fn run(media: MediaType) -> Result<(), lambda_http::Error> {
    init_logging();
    let config = LambdaConfig::from_vars(|name| std::env::var(name).ok())?;
    let sdk = sdk_config().await;
    let app = app(&config, &sdk, media).await?;
    lambda_http::run(app).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<LambdaConfig, StartupError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        LambdaConfig::from_vars(|name| vars.get(name).cloned())
    }

    #[test]
    fn aws_is_the_default_backend_and_needs_table_and_bucket() {
        let c = config(&[
            ("TABLE_NAME", "t"),
            ("BUCKET_NAME", "b"),
            ("OPENAI_API_KEY_PARAMETER", "/media/openai"),
        ])
        .unwrap();
        assert_eq!(
            c.backend,
            Backend::Aws {
                table: "t".into(),
                bucket: "b".into()
            }
        );
        assert_eq!(
            c.openai_api_key,
            SecretSource::SsmParameter("/media/openai".into())
        );
        assert_eq!(c.provider_timeout, Duration::from_secs(25));
        let missing = config(&[("BUCKET_NAME", "b"), ("OPENAI_API_KEY", "k")]).unwrap_err();
        assert!(missing.0.contains("TABLE_NAME"), "{missing}");
    }

    #[test]
    fn bad_values_are_reported_by_name() {
        let no_key = config(&[("TABLE_NAME", "t"), ("BUCKET_NAME", "b")]).unwrap_err();
        assert!(no_key.0.contains("OPENAI_API_KEY_PARAMETER"));
        let bad_ttl = config(&[
            ("MEDIA_STORE", "embedded"),
            ("OPENAI_API_KEY", "k"),
            ("URL_TTL_SECS", "soon"),
        ])
        .unwrap_err();
        assert!(bad_ttl.0.contains("URL_TTL_SECS"));
        let bad_store = config(&[("MEDIA_STORE", "redis"), ("OPENAI_API_KEY", "k")]).unwrap_err();
        assert!(bad_store.0.contains("MEDIA_STORE"));
    }
}
