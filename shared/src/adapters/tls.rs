//! The process's TLS client configuration: rustls with ring, trusting the Mozilla root program
//! compiled into the binary, built once and shared by every HTTPS client: the provider clients'
//! reqwest clients here, and the AWS SDK's client (`lambda::sdk_config`, from `roots_pem`).
//!
//! Why compiled-in roots rather than the system store. Reading the system store was the one
//! expensive step of a function's start: `/etc/ssl/certs` is read file by file (147 files on a
//! Debian-style machine), and each reqwest client (through its platform verifier) and the SDK's
//! client read it again: 441 files opened before `tts` took its first event, about 80% of its
//! init time. The compiled-in roots cost no I/O and no parsing (`webpki-roots` holds them as
//! ready trust anchors) and are the same on every machine. What that gives up: the roots
//! change when the dependency is updated (`cargo update -p webpki-roots -p webpki-root-certs`;
//! the crates follow Mozilla's CCADB, a release every month or two, removals included), not when
//! the OS image is patched; and a CA added to the machine's store is not trusted unless
//! `SSL_CERT_FILE` names it (below). Lambda's `provided.al2023` image takes its CA bundle from
//! Amazon Linux's `ca-certificates`, built from the same Mozilla program, and none of the
//! endpoints this code calls (AWS, OpenAI, Suno, Kling and their CDNs) uses a private CA.
//!
//! `SSL_CERT_FILE`, when set, adds the certificates of that PEM file to the trusted roots (a
//! TLS-intercepting proxy's CA, a local emulator's): one file read, never a directory walk.
//! Lambda does not set it.

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// The trusted roots, made once.
struct Roots {
    store: Arc<RootCertStore>,
    /// The certificates of `SSL_CERT_FILE` that the store took.
    #[cfg_attr(not(feature = "aws"), allow(dead_code))]
    extra: Vec<CertificateDer<'static>>,
}

fn roots() -> &'static Roots {
    static ROOTS: OnceLock<Roots> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let extra = std::env::var_os("SSL_CERT_FILE")
            .filter(|path| !path.is_empty())
            .map(|path| file_certificates(Path::new(&path)))
            .unwrap_or_default();
        with_extra(extra)
    })
}

/// The compiled-in roots and those of `extra` that can be trust anchors (the others are skipped
/// with a warning).
fn with_extra(extra: Vec<CertificateDer<'static>>) -> Roots {
    let mut store = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let extra = extra
        .into_iter()
        .filter(|cert| {
            store
                .add(cert.clone())
                .inspect_err(|e| tracing::warn!(error = %e, "a root certificate was skipped"))
                .is_ok()
        })
        .collect();
    Roots {
        store: Arc::new(store),
        extra,
    }
}

/// The certificates of the PEM file at `path`; a file that cannot be read adds none.
fn file_certificates(path: &Path) -> Vec<CertificateDer<'static>> {
    match CertificateDer::pem_file_iter(path) {
        Ok(certs) => certs
            .filter_map(|cert| {
                cert.inspect_err(|e| {
                    tracing::warn!(path = %path.display(), error = %e, "unreadable certificate skipped");
                })
                .ok()
            })
            .collect(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "SSL_CERT_FILE not read");
            Vec::new()
        }
    }
}

/// The TLS configuration of every HTTPS client of the process, for reqwest's
/// `tls_backend_preconfigured`: TLS 1.2 and 1.3 with ring, the trusted roots, ALPN `h2` then
/// `http/1.1` (what reqwest offers with a configuration of its own). Made at the first call;
/// every copy shares the roots, the verifier and the session cache.
pub fn client_config() -> rustls::ClientConfig {
    static CONFIG: OnceLock<rustls::ClientConfig> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let ring = rustls::crypto::ring::default_provider();
            // Also the process default, for rustls users configured without this function (an
            // earlier install, of any provider, wins).
            let _ = ring.clone().install_default();
            let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(ring))
                .with_safe_default_protocol_versions()
                .expect("ring supports TLS 1.2 and 1.3")
                .with_root_certificates(Arc::clone(&roots().store))
                .with_no_client_auth();
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            config
        })
        .clone()
}

/// The trusted roots as PEM certificates, for the AWS SDK's client (which takes nothing else):
/// the same Mozilla roots as whole certificates (`webpki-root-certs`), and those of
/// `SSL_CERT_FILE`. Encoded at the first call.
#[cfg(feature = "aws")]
pub fn roots_pem() -> &'static [u8] {
    static PEM: OnceLock<Vec<u8>> = OnceLock::new();
    PEM.get_or_init(|| {
        pem(webpki_root_certs::TLS_SERVER_ROOT_CERTS
            .iter()
            .chain(&roots().extra))
    })
}

/// `certs` as PEM `CERTIFICATE` sections.
#[cfg(any(feature = "aws", test))]
fn pem<'a>(certs: impl Iterator<Item = &'a CertificateDer<'a>>) -> Vec<u8> {
    use base64::Engine;
    let mut out = String::new();
    for cert in certs {
        let encoded = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in encoded.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A root certificate of the Mozilla program.
    fn a_root_certificate() -> CertificateDer<'static> {
        webpki_root_certs::TLS_SERVER_ROOT_CERTS[0].clone()
    }

    #[test]
    fn the_compiled_in_roots_are_trusted_without_a_file() {
        let roots = with_extra(Vec::new());
        assert!(roots.store.len() > 100, "{}", roots.store.len());
        assert!(roots.extra.is_empty());
    }

    #[test]
    fn the_shared_configuration_offers_h2_then_http1_and_builds_a_reqwest_client() {
        let config = client_config();
        assert_eq!(
            config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert!(
            reqwest::Client::builder()
                .tls_backend_preconfigured(config)
                .build()
                .is_ok()
        );
    }

    #[test]
    fn pem_reads_back_as_the_same_certificates() {
        let certs = vec![a_root_certificate(), a_root_certificate()];
        let read: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem(certs.iter()))
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(read, certs);
    }

    #[test]
    fn a_certificate_file_adds_its_certificates_and_skips_what_cannot_be_a_root() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("extra.pem");
        let mut text = pem([a_root_certificate()].iter());
        // A CERTIFICATE section that is no certificate, then a key (not read at all).
        text.extend_from_slice(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
        text.extend_from_slice(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
        std::fs::write(&path, text).unwrap();
        let certs = file_certificates(&path);
        assert_eq!(certs.len(), 2, "both CERTIFICATE sections are read");
        let roots = with_extra(certs);
        assert_eq!(
            roots.extra,
            vec![a_root_certificate()],
            "the bad one is skipped"
        );
        assert_eq!(roots.store.len(), webpki_roots::TLS_SERVER_ROOTS.len() + 1);
        assert!(file_certificates(&dir.path().join("missing.pem")).is_empty());
    }

    #[test]
    fn the_sdk_is_given_the_same_roots_as_rustls() {
        // Two crates of one upstream: a root in one and not the other means they were updated
        // apart (`cargo update -p webpki-roots -p webpki-root-certs`).
        let mut from_certs = RootCertStore::empty();
        let compiled_in = pem(webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter());
        for cert in CertificateDer::pem_slice_iter(&compiled_in) {
            from_certs
                .add(cert.unwrap())
                .expect("every SDK root parses");
        }
        let subjects = |store: &RootCertStore| {
            let mut subjects: Vec<Vec<u8>> = store
                .roots
                .iter()
                .map(|anchor| anchor.subject.to_vec())
                .collect();
            subjects.sort();
            subjects
        };
        assert_eq!(
            subjects(&from_certs),
            subjects(&RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec()
            })
        );
    }

    #[cfg(feature = "aws")]
    #[test]
    fn the_sdk_pem_holds_every_compiled_in_root() {
        let count = CertificateDer::pem_slice_iter(roots_pem()).count();
        assert!(
            count >= webpki_root_certs::TLS_SERVER_ROOT_CERTS.len(),
            "{count}"
        );
    }
}
