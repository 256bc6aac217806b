//! The provider flags `serve` and `worker` share: which OpenAI, Suno and Kling they call (the
//! built-in simulator for those not configured) and how.

use crate::serve::ServeConfig;
use media_cache::adapters::download::DownloadPolicy;
use media_cache::adapters::kling::KlingAuth;
use std::net::SocketAddr;
use std::time::Duration;

/// Where the providers are and how they are called.
#[derive(clap::Args, Debug, Clone)]
pub struct ProviderArgs {
    /// Use the real OpenAI API with this key instead of the simulator.
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    pub openai_api_key: Option<String>,
    /// OpenAI base URL (used with a key).
    #[arg(
        long,
        env = "OPENAI_BASE_URL",
        default_value = "https://api.openai.com"
    )]
    pub openai_base_url: String,
    /// Address of the built-in simulator (port 0: any free port).
    #[arg(long, env = "MEDIACTL_SIM_ADDR", default_value = "127.0.0.1:0")]
    pub sim_addr: SocketAddr,
    /// Timeout of one provider attempt, in seconds.
    #[arg(long, env = "MEDIACTL_PROVIDER_TIMEOUT_SECS", default_value_t = 120)]
    pub provider_timeout_secs: u64,
    /// Use the real Suno API with this key instead of the simulator.
    #[arg(long, env = "SUNO_API_KEY", hide_env_values = true)]
    pub suno_api_key: Option<String>,
    /// Suno base URL (used with a key).
    #[arg(long, env = "SUNO_BASE_URL", default_value = "https://api.sunoapi.org")]
    pub suno_base_url: String,
    /// Use the real Kling API with this API key instead of the simulator.
    #[arg(long, env = "KLING_API_KEY", hide_env_values = true)]
    pub kling_api_key: Option<String>,
    /// Kling access key (with --kling-secret-key: JWT auth instead of an API key).
    #[arg(long, env = "KLING_ACCESS_KEY")]
    pub kling_access_key: Option<String>,
    /// Kling secret key.
    #[arg(long, env = "KLING_SECRET_KEY", hide_env_values = true)]
    pub kling_secret_key: Option<String>,
    /// Kling base URL (used with credentials).
    #[arg(
        long,
        env = "KLING_BASE_URL",
        default_value = "https://api-singapore.klingai.com"
    )]
    pub kling_base_url: String,
    /// `host[:port]` list (comma separated) whose results may be downloaded over plain http or
    /// from a private address: a simulator this process did not start (the built-in one always
    /// may). Empty for real providers.
    #[arg(long, env = "DOWNLOAD_ALLOWED_HOSTS", default_value = "")]
    pub download_allowed_hosts: String,
    /// How long the simulator's music and video tasks take, in milliseconds.
    #[arg(long, env = "MEDIACTL_SIM_TASK_MS", default_value_t = 3000)]
    pub sim_task_ms: u64,
    /// How long the simulator takes to answer speech and image requests, in milliseconds (to
    /// see a request answer 202 at its budget).
    #[arg(long, env = "MEDIACTL_SIM_LATENCY_MS", default_value_t = 0)]
    pub sim_latency_ms: u64,
}

impl ProviderArgs {
    /// `config` calling these providers (an empty key counts as none).
    pub fn apply(self, config: ServeConfig) -> ServeConfig {
        let given = |key: Option<String>| key.filter(|k| !k.trim().is_empty());
        let kling = match (
            given(self.kling_api_key),
            given(self.kling_access_key),
            given(self.kling_secret_key),
        ) {
            (Some(key), _, _) => Some((self.kling_base_url, KlingAuth::ApiKey(key))),
            (None, Some(access_key), Some(secret_key)) => Some((
                self.kling_base_url,
                KlingAuth::AccessKey {
                    access_key,
                    secret_key,
                },
            )),
            _ => None,
        };
        ServeConfig {
            openai_api_key: given(self.openai_api_key),
            openai_base_url: self.openai_base_url,
            sim_addr: self.sim_addr,
            provider_timeout: Duration::from_secs(self.provider_timeout_secs),
            suno: given(self.suno_api_key).map(|key| (self.suno_base_url, key)),
            kling,
            download_allowed_hosts: DownloadPolicy::parse_hosts(&self.download_allowed_hosts),
            sim_task_duration: Duration::from_millis(self.sim_task_ms),
            sim_latency: Duration::from_millis(self.sim_latency_ms),
            ..config
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ProviderArgs {
        ProviderArgs {
            openai_api_key: None,
            openai_base_url: "https://api.openai.com".into(),
            sim_addr: "127.0.0.1:0".parse().unwrap(),
            provider_timeout_secs: 120,
            suno_api_key: None,
            suno_base_url: "https://api.sunoapi.org".into(),
            kling_api_key: None,
            kling_access_key: None,
            kling_secret_key: None,
            kling_base_url: "https://api-singapore.klingai.com".into(),
            download_allowed_hosts: String::new(),
            sim_task_ms: 3000,
            sim_latency_ms: 0,
        }
    }

    #[test]
    fn providers_without_a_key_are_left_to_the_simulator() {
        let config = ProviderArgs {
            openai_api_key: Some(" ".into()),
            ..args()
        }
        .apply(ServeConfig::default());
        assert_eq!(config.openai_api_key, None, "an empty key is no key");
        assert!(config.suno.is_none() && config.kling.is_none());
        assert!(
            config.download_allowed_hosts.is_empty(),
            "strict by default"
        );
    }

    #[test]
    fn a_simulator_started_elsewhere_is_called_like_a_real_provider_and_may_be_downloaded_from() {
        let sim = "http://127.0.0.1:9100";
        let config = ProviderArgs {
            openai_api_key: Some("sim".into()),
            openai_base_url: sim.into(),
            suno_api_key: Some("sim".into()),
            suno_base_url: sim.into(),
            kling_access_key: Some("ak".into()),
            kling_secret_key: Some("sk".into()),
            kling_base_url: sim.into(),
            download_allowed_hosts: "127.0.0.1:9100".into(),
            ..args()
        }
        .apply(ServeConfig::default());
        assert_eq!(config.openai_base_url, sim);
        assert_eq!(config.suno, Some((sim.into(), "sim".into())));
        assert!(matches!(
            config.kling,
            Some((ref base, KlingAuth::AccessKey { ref access_key, .. })) if base == sim && access_key == "ak"
        ));
        assert_eq!(config.download_allowed_hosts, vec!["127.0.0.1:9100"]);
    }
}
