//! Provider callback URLs: `{base}/api/v1/callbacks/{provider}/{job id}.{mac}`, where the MAC is
//! an HMAC-SHA256 of the provider and job under a secret only we hold, so a URL can't be guessed
//! or moved to another job.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Makes and checks callback URLs.
#[derive(Clone)]
pub struct CallbackSigner {
    secret: Vec<u8>,
    base_url: String,
}

impl std::fmt::Debug for CallbackSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackSigner")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

/// The path prefix of callback routes.
pub const CALLBACK_PATH: &str = "/api/v1/callbacks";

impl CallbackSigner {
    /// Signs with `secret`; URLs start with `base_url` (the API as the provider reaches it;
    /// empty: the origin the request came in on).
    pub fn new(secret: impl Into<Vec<u8>>, base_url: &str) -> Self {
        Self {
            secret: secret.into(),
            base_url: base_url.trim_end_matches('/').to_owned(),
        }
    }

    fn mac(&self, provider: &str, job_id: &str) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.secret)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(format!("callback\n{provider}\n{job_id}").as_bytes());
        mac
    }

    /// The token of `job_id` at `provider`.
    pub fn token(&self, provider: &str, job_id: &str) -> String {
        let tag = hex::encode(self.mac(provider, job_id).finalize().into_bytes());
        format!("{job_id}.{tag}")
    }

    /// The callback URL of `job_id` at `provider`, on the configured base URL or else on
    /// `origin` (where the request that started the job came in).
    pub fn url(&self, provider: &str, job_id: &str, origin: Option<&str>) -> String {
        let base = match (self.base_url.as_str(), origin) {
            ("", Some(origin)) => origin.trim_end_matches('/'),
            (base, _) => base,
        };
        format!(
            "{base}{CALLBACK_PATH}/{provider}/{}",
            self.token(provider, job_id)
        )
    }

    /// The job a token was made for, if it is genuine (checked in constant time).
    pub fn verify<'t>(&self, provider: &str, token: &'t str) -> Option<&'t str> {
        let (job_id, tag) = token.rsplit_once('.')?;
        let tag = hex::decode(tag).ok()?;
        self.mac(provider, job_id).verify_slice(&tag).ok()?;
        Some(job_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_only_for_their_job_provider_and_secret() {
        let signer = CallbackSigner::new(b"secret".to_vec(), "http://api/");
        let token = signer.token("kling", "job_1");
        assert_eq!(signer.verify("kling", &token), Some("job_1"));
        assert_eq!(signer.verify("suno", &token), None, "another provider");
        let moved = token.replace("job_1", "job_2");
        assert_eq!(signer.verify("kling", &moved), None, "another job");
        let other = CallbackSigner::new(b"other".to_vec(), "http://api");
        assert_eq!(other.verify("kling", &token), None, "another secret");
        assert_eq!(signer.verify("kling", "job_1"), None);
        assert_eq!(signer.verify("kling", "job_1.zz"), None);
        assert!(
            signer
                .url("kling", "job_1", Some("https://other"))
                .starts_with("http://api/api/v1/callbacks/kling/job_1.")
        );
        let unset = CallbackSigner::new(b"secret".to_vec(), "");
        assert!(
            unset
                .url("suno", "job_1", Some("https://x.example/"))
                .starts_with("https://x.example/api/v1/callbacks/suno/job_1.")
        );
    }
}
