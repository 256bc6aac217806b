//! Test support for the AWS side: environment, the Lambda application served on loopback, a
//! DynamoDB call recorder.

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::FinalizerInterceptorContextRef;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use media_cache::lambda::Function;
use media_cache::lambda::{Backend, LambdaConfig, SecretSource};
use provider_sim::{SimConfig, SimHandle};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A variable the test script sets; its absence means the emulator is not running.
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run ./scripts/test.sh, which starts the AWS emulator")
    })
}

/// The SDK configuration pointing at the emulator.
pub async fn sdk() -> aws_config::SdkConfig {
    env("AWS_ENDPOINT_URL");
    media_cache::lambda::sdk_config().await
}

/// A simulator on a free loopback port.
pub async fn simulator() -> SimHandle {
    provider_sim::spawn(SimConfig::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

/// The Lambda configuration of the test table and bucket, with the simulator as OpenAI.
pub fn lambda_config(sim: &SimHandle) -> LambdaConfig {
    LambdaConfig {
        backend: Backend::Aws {
            table: env("MEDIA_TEST_TABLE"),
            bucket: env("MEDIA_TEST_BUCKET"),
        },
        public_base_url: None,
        openai_base_url: sim.base_url.clone(),
        openai_api_key: SecretSource::Value("sim-key".into()),
        url_ttl: Duration::from_secs(600),
        provider_timeout: Duration::from_secs(10),
        pricing_toml: None,
        jobs_queue_url: None,
        callback_secret: None,
        public_api_url: String::new(),
        suno: None,
        kling: None,
        job_policy: Default::default(),
    }
}

/// A function's application served on a loopback port: its base URL.
pub async fn serve_function(sim: &SimHandle, function: Function) -> String {
    let app = media_cache::lambda::app(&lambda_config(sim), &sdk().await, function)
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

/// Records the name of every DynamoDB operation a client sends.
#[derive(Debug, Clone, Default)]
pub struct CallLog(Arc<Mutex<Vec<String>>>);

impl CallLog {
    /// The operations sent so far.
    pub fn calls(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// Forgets them.
    pub fn clear(&self) {
        self.0.lock().unwrap().clear();
    }
}

impl Intercept for CallLog {
    fn name(&self) -> &'static str {
        "CallLog"
    }

    fn read_after_execution(
        &self,
        _context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(metadata) = cfg.load::<Metadata>() {
            self.0.lock().unwrap().push(metadata.name().to_owned());
        }
        Ok(())
    }
}
