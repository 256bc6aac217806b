//! Downloads of the media a provider's answer points at (Suno and Kling results, OpenAI image
//! URLs), under a [`DownloadPolicy`]: those URLs come from outside, so they must not make us fetch
//! from our own network (cloud metadata, loopback services, private ranges) or read without end.
//!
//! - Only `https`; plain `http` only to a host[:port] in the allow list (e.g. the local simulator).
//! - No loopback, private, CGNAT, link-local, unique-local, multicast, broadcast, reserved or
//!   documentation address (IPv4-mapped and translated IPv6 forms included), unless the host is in
//!   the allow list. Names are checked on the addresses DNS gave, inside the resolver the
//!   connection uses (no second lookup that could answer differently: DNS rebinding); IP-literal
//!   hosts, which skip the resolver, are checked before the request; every redirect hop is checked
//!   the same way before it is followed; no proxy (a proxy would resolve names out of our sight).
//! - A size cap per media family, enforced while the body streams in: a declared
//!   `Content-Length` over the cap is refused before reading, and reading stops at the cap.
//! - The content type must be of the expected family (`audio/*`, `image/*`, `video/*`).
//!   `application/octet-stream` (and `binary/octet-stream`, or no type at all) is accepted too:
//!   object stores and CDNs serve uploads that way, and the type we store and serve is our own
//!   canonical one, never the provider's; what it rules out is a page (`text/html`, JSON error
//!   bodies) stored as a song.
//!
//! A refusal is final ([`ProviderError::BadResponse`], not transient: the job fails and is
//! refunded) and its message is safe to show a client: it names the rule, never the URL or an
//! address. The detail goes to the log.

use super::task_http::retry_after;
use crate::domain::GeneratedMedia;
use crate::ports::ProviderError;
use bytes::BytesMut;
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// One mebibyte.
pub const MIB: u64 = 1024 * 1024;

/// What provider result URLs may be fetched, and how much of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadPolicy {
    /// Origins exempt from the rules, as `host:port` (`127.0.0.1:9100`, `[::1]:9100`) or a bare
    /// `host` for every port: plain `http` is allowed to them and they may be at any address,
    /// loopback and private ones included (e.g. the local simulator). Any other port of a host
    /// listed with a port gets the ordinary rules when the host is an address, and is refused
    /// when it is a name (the resolver, which sees names but not ports, exempts listed names).
    /// Empty by default.
    pub allowed_hosts: Vec<String>,
    /// Largest audio result (Suno songs), default 50 MiB: a song of 8 minutes (Suno's longest)
    /// at 320 kbit/s is about 19 MB.
    pub max_audio_bytes: u64,
    /// Largest image result (OpenAI image URLs), default 20 MiB: a 1792x1024 PNG is a few MB.
    pub max_image_bytes: u64,
    /// Largest video result (Kling), default 200 MiB: a 10 s 1080p clip is tens of MB.
    pub max_video_bytes: u64,
    /// Redirects followed per download (each one checked like the first URL), default 5.
    pub max_redirects: usize,
}

impl Default for DownloadPolicy {
    /// The strict policy: https only, public addresses only, the caps above.
    fn default() -> Self {
        Self {
            allowed_hosts: Vec::new(),
            max_audio_bytes: 50 * MIB,
            max_image_bytes: 20 * MIB,
            max_video_bytes: 200 * MIB,
            max_redirects: 5,
        }
    }
}

impl DownloadPolicy {
    /// The strict policy with `hosts` (host or host:port) exempt from it.
    pub fn allowing<I, S>(hosts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            allowed_hosts: hosts.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// The `host:port` of `url`, for the allow list: `http://127.0.0.1:9100/x` gives
    /// `127.0.0.1:9100` (e.g. the simulator's base URL). None when `url` has no host.
    pub fn host_of(url: &str) -> Option<String> {
        let url = Url::parse(url).ok()?;
        let host = url.host_str()?;
        let port = url.port_or_known_default()?;
        Some(format!("{host}:{port}"))
    }

    /// A comma- or space-separated list of hosts, as an environment variable holds it
    /// (`"127.0.0.1:9100, sim.local"`).
    pub fn parse_hosts(list: &str) -> Vec<String> {
        list.split([',', ' ', '\t', '\n'])
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(str::to_owned)
            .collect()
    }

    fn max_bytes(&self, family: Family) -> u64 {
        match family {
            Family::Audio => self.max_audio_bytes,
            Family::Image => self.max_image_bytes,
            Family::Video => self.max_video_bytes,
        }
    }
}

/// Whether `ip` is an ordinary public unicast address, one a provider's CDN may live at.
/// Refused: unspecified, loopback, private (10/8, 172.16/12, 192.168/16), CGNAT (100.64/10),
/// link-local (169.254/16, fe80::/10), multicast, broadcast and the reserved 240/4, benchmarking,
/// documentation and protocol-assignment ranges, IPv6 unique-local (fc00::/7) and site-local,
/// the deprecated IPv4-compatible range, Teredo, ORCHID, discard-only; IPv4-mapped
/// (`::ffff:a.b.c.d`), NAT64 (`64:ff9b::/96`) and 6to4 (`2002::/16`) addresses are judged by the
/// IPv4 address they carry.
pub fn is_public_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let refused = a == 0 // "this network", 0.0.0.0 included
        || a == 10
        || a == 127
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64/10
        || (a == 169 && b == 254) // link-local, cloud metadata
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 168)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2) // TEST-NET-1
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || (a == 198 && b == 51 && c == 100) // TEST-NET-2
        || (a == 203 && b == 0 && c == 113) // TEST-NET-3
        || a >= 224; // multicast 224/4, reserved 240/4, broadcast 255.255.255.255
    !refused
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    let embedded_v4 = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    // NAT64's well-known prefix reaches the IPv4 address it carries.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_public_v4(embedded_v4(s[6], s[7]));
    }
    // 6to4 carries an IPv4 address in bits 16..48.
    if s[0] == 0x2002 {
        return is_public_v4(embedded_v4(s[1], s[2]));
    }
    // Only global unicast (2000::/3) is public: this refuses ::, ::1, the IPv4-compatible ::/96,
    // 64:ff9b:1::/48, discard-only 100::/64, unique-local fc00::/7, link-local fe80::/10,
    // site-local fec0::/10 and multicast ff00::/8.
    if s[0] & 0xe000 != 0x2000 {
        return false;
    }
    let refused = match s[0] {
        // Teredo 2001::/32, documentation 2001:db8::/32, ORCHID 2001:10::/28, ORCHIDv2 2001:20::/28.
        0x2001 => s[1] == 0 || s[1] == 0x0db8 || (0x10..0x30).contains(&s[1]),
        // Documentation 3fff::/20.
        0x3fff => s[1] < 0x1000,
        _ => false,
    };
    !refused
}

/// Why a download was refused. The text is shown to clients: it names the rule, never the URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("the provider's result URL was refused: not a valid URL")]
    InvalidUrl,
    #[error("the provider's result URL was refused: not https")]
    NotHttps,
    #[error("the provider's result URL was refused: a port not allowed for its host")]
    Port,
    #[error("the provider's result URL was refused: it leads to a private or reserved address")]
    Address,
    #[error("the provider's result URL was refused: more than {0} redirects")]
    TooManyRedirects(usize),
    #[error("the provider's result was refused: larger than the {} limit for {family}", size(*.limit))]
    TooLarge { family: &'static str, limit: u64 },
    #[error("the provider's result was refused: {found} is not {family}")]
    ContentType { found: String, family: &'static str },
}

impl From<Refusal> for ProviderError {
    fn from(refusal: Refusal) -> Self {
        ProviderError::Refused {
            message: refusal.to_string(),
        }
    }
}

fn size(bytes: u64) -> String {
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{bytes} bytes")
    }
}

/// The media family a download must be of, from the content type we will store it under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Audio,
    Image,
    Video,
}

impl Family {
    fn of(content_type: &str) -> Self {
        match content_type.split('/').next() {
            Some("image") => Family::Image,
            Some("video") => Family::Video,
            _ => Family::Audio,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Family::Audio => "audio",
            Family::Image => "image",
            Family::Video => "video",
        }
    }
}

/// The served type, checked against the family; None accepted (RFC 9110 8.3: octet-stream).
fn check_content_type(served: Option<&str>, family: Family) -> Result<(), Refusal> {
    let Some(served) = served else {
        return Ok(());
    };
    let essence = served
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let ok = essence
        .strip_prefix(family.as_str())
        .is_some_and(|rest| rest.len() > 1 && rest.starts_with('/'))
        || essence == "application/octet-stream"
        || essence == "binary/octet-stream";
    if ok {
        return Ok(());
    }
    // The provider's type is echoed only when it looks like one, and bounded.
    let printable = !essence.is_empty()
        && essence.len() <= 64
        && essence
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/+-.".contains(&b))
        && essence.len() <= 64;
    Err(Refusal::ContentType {
        found: if printable {
            essence
        } else {
            "an unexpected content type".into()
        },
        family: family.as_str(),
    })
}

/// A URL's host: an IP address (the URL parser has already turned `2130706433`, `0x7f.1` and
/// the like into dotted IPv4), or a name as the allow list spells it (lower case, no trailing
/// dot).
enum UrlHost {
    Ip(IpAddr),
    Name(String),
}

impl UrlHost {
    fn of(url: &Url) -> Option<Self> {
        let host = url.host_str()?;
        let unbracketed = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        Some(match unbracketed.parse::<IpAddr>() {
            Ok(ip) => UrlHost::Ip(ip),
            Err(_) => UrlHost::Name(host.trim_end_matches('.').to_ascii_lowercase()),
        })
    }

    /// The allow-list key: the name, or the address in its canonical form.
    fn key(&self) -> String {
        match self {
            UrlHost::Ip(ip) => ip.to_string(),
            UrlHost::Name(name) => name.clone(),
        }
    }
}

/// The parsed allow list.
#[derive(Debug, Default)]
struct AllowList {
    /// (host key, port; None for any port).
    entries: Vec<(String, Option<u16>)>,
}

impl AllowList {
    fn parse(hosts: &[String]) -> Self {
        let entries = hosts
            .iter()
            .filter_map(|entry| {
                let parsed = Self::parse_entry(entry.trim());
                if parsed.is_none() {
                    tracing::warn!(entry = %entry, "ignoring an unreadable download allow-list entry");
                }
                parsed
            })
            .collect();
        Self { entries }
    }

    /// `host`, `host:port`, `[v6]`, `[v6]:port`, a bare IPv6 address, or a URL's host and port.
    fn parse_entry(entry: &str) -> Option<(String, Option<u16>)> {
        if entry.contains("://") {
            let url = Url::parse(entry).ok()?;
            return Some((UrlHost::of(&url)?.key(), url.port_or_known_default()));
        }
        let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
            let (host, after) = rest.split_once(']')?;
            match after {
                "" => (host, None),
                _ => (host, Some(after.strip_prefix(':')?)),
            }
        } else if entry.matches(':').count() == 1 {
            let (host, port) = entry.split_once(':')?;
            (host, Some(port))
        } else {
            (entry, None)
        };
        let port = match port {
            Some(p) => Some(p.parse::<u16>().ok()?),
            None => None,
        };
        let host = match host.parse::<IpAddr>() {
            Ok(ip) => ip.to_string(),
            Err(_) => host.trim_end_matches('.').to_ascii_lowercase(),
        };
        (!host.is_empty()).then_some((host, port))
    }

    /// Whether `host` is listed, with any port: the resolver exempts it from the address rule.
    fn allows_host(&self, host: &str) -> bool {
        self.entries.iter().any(|(h, _)| h == host)
    }

    /// Whether `host:port` is listed (or `host` bare): exempt from every rule.
    fn allows_origin(&self, host: &str, port: u16) -> bool {
        self.entries
            .iter()
            .any(|(h, p)| h == host && p.is_none_or(|p| p == port))
    }
}

/// Checks a URL (the first one and every redirect hop) before any connection: scheme, and the
/// address of an IP-literal host. Hosts that are names are checked by [`GuardedResolver`].
fn check_url(url: &Url, allow: &AllowList) -> Result<(), Refusal> {
    let scheme = url.scheme();
    if scheme != "https" && scheme != "http" {
        tracing::warn!(scheme, "result download refused: not https");
        return Err(Refusal::NotHttps);
    }
    let (Some(host), Some(port)) = (UrlHost::of(url), url.port_or_known_default()) else {
        return Err(Refusal::InvalidUrl);
    };
    let key = host.key();
    if allow.allows_origin(&key, port) {
        return Ok(());
    }
    if scheme == "http" {
        tracing::warn!(host = %key, port, "result download refused: plain http to an origin not listed");
        return Err(Refusal::NotHttps);
    }
    match host {
        // Listed for another port: the resolver would exempt the name, so it is refused here.
        UrlHost::Name(_) if allow.allows_host(&key) => {
            tracing::warn!(host = %key, port, "result download refused: a port not listed for this host");
            Err(Refusal::Port)
        }
        // A name is checked on the addresses it resolves to, by the resolver.
        UrlHost::Name(_) => Ok(()),
        UrlHost::Ip(ip) if is_public_address(ip) => Ok(()),
        UrlHost::Ip(ip) => {
            tracing::warn!(address = %ip, "result download refused: a non-public address");
            Err(Refusal::Address)
        }
    }
}

/// The download client's resolver: the system's lookup, then every address checked. Refusing
/// here, on the very addresses the connection will use, is what makes the check immune to DNS
/// rebinding.
struct GuardedResolver {
    allow: Arc<AllowList>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().trim_end_matches('.').to_ascii_lowercase();
        let exempt = self.allow.allows_host(&host);
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if !exempt && let Some(bad) = addrs.iter().find(|a| !is_public_address(a.ip())) {
                tracing::warn!(host = %host, address = %bad.ip(), "result download refused: the name resolves to a non-public address");
                return Err(Box::new(Refusal::Address) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// The refusal somewhere in `e`'s chain of causes (from the resolver or the redirect policy).
fn refusal_in(e: &reqwest::Error) -> Option<Refusal> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cause {
        if let Some(refusal) = err.downcast_ref::<Refusal>() {
            return Some(refusal.clone());
        }
        cause = err.source();
    }
    None
}

/// A failed exchange: a refusal, else what `transport_error` says.
fn download_error(e: &reqwest::Error) -> ProviderError {
    match refusal_in(e) {
        Some(refusal) => refusal.into(),
        None => super::task_http::transport_error(e),
    }
}

/// A client that fetches provider results under a policy; one per provider client.
#[derive(Clone)]
pub(crate) struct Downloader {
    http: reqwest::Client,
    allow: Arc<AllowList>,
    policy: DownloadPolicy,
}

impl std::fmt::Debug for Downloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Downloader")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Downloader {
    /// A downloader for `policy`, each download limited to `timeout`.
    pub(crate) fn new(policy: &DownloadPolicy, timeout: Duration) -> Result<Self, ProviderError> {
        let allow = Arc::new(AllowList::parse(&policy.allowed_hosts));
        let hops = Arc::clone(&allow);
        let max_redirects = policy.max_redirects;
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > max_redirects {
                tracing::warn!("result download refused: too many redirects");
                return attempt.error(Refusal::TooManyRedirects(max_redirects));
            }
            match check_url(attempt.url(), &hops) {
                Ok(()) => attempt.follow(),
                Err(refusal) => attempt.error(refusal),
            }
        });
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(super::tls::client_config())
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(10))
            // A proxy would resolve names itself, out of the resolver's sight.
            .no_proxy()
            .dns_resolver(GuardedResolver {
                allow: Arc::clone(&allow),
            })
            .redirect(redirects)
            .referer(false)
            .build()
            .map_err(|e| ProviderError::BadResponse {
                message: format!("HTTP client: {e}"),
            })?;
        Ok(Self {
            http,
            allow,
            policy: policy.clone(),
        })
    }

    /// Downloads `url`, to be stored as `content_type` (its family is what the body must be);
    /// `timeout` shortens the configured one. A URL that is gone (expired, deleted) will not
    /// come back: Rejected.
    pub(crate) async fn fetch(
        &self,
        url: &str,
        content_type: &str,
        timeout: Option<Duration>,
    ) -> Result<GeneratedMedia, ProviderError> {
        let family = Family::of(content_type);
        let parsed = Url::parse(url).map_err(|_| Refusal::InvalidUrl)?;
        check_url(&parsed, &self.allow)?;
        let mut req = self.http.get(parsed);
        if let Some(timeout) = timeout {
            req = req.timeout(timeout);
        }
        let mut resp = req.send().await.map_err(|e| download_error(&e))?;
        let status = resp.status();
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(ProviderError::Unavailable {
                message: format!("result download: HTTP {status}"),
                retry_after: retry_after(&resp),
            });
        }
        if !status.is_success() {
            return Err(ProviderError::Rejected {
                message: format!("result URL answered HTTP {status} (expired or deleted)"),
            });
        }
        let served = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap_or("?"));
        if let Err(refusal) = check_content_type(served, family) {
            tracing::warn!(served = ?served, expected = family.as_str(), "result download refused: content type");
            return Err(refusal.into());
        }
        let limit = self.policy.max_bytes(family);
        let too_large = || {
            tracing::warn!(
                limit,
                family = family.as_str(),
                "result download refused: over the size cap"
            );
            Refusal::TooLarge {
                family: family.as_str(),
                limit,
            }
        };
        let declared = resp.content_length();
        if declared.is_some_and(|len| len > limit) {
            return Err(too_large().into());
        }
        // Never more than the cap in memory; a lying Content-Length reserves at most 8 MiB.
        let reserve = declared.unwrap_or(0).min(8 * MIB) as usize;
        let mut body = BytesMut::with_capacity(reserve);
        while let Some(chunk) = resp.chunk().await.map_err(|e| download_error(&e))? {
            if (body.len() + chunk.len()) as u64 > limit {
                // Dropping the response closes the connection: nothing more is read.
                return Err(too_large().into());
            }
            body.extend_from_slice(&chunk);
        }
        if body.is_empty() {
            return Err(ProviderError::BadResponse {
                message: "empty result".into(),
            });
        }
        Ok(GeneratedMedia {
            bytes: body.freeze(),
            content_type: content_type.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn checked(url: &str, allowed: &[&str]) -> Result<(), Refusal> {
        let allowed: Vec<String> = allowed.iter().map(|h| (*h).to_owned()).collect();
        check_url(&Url::parse(url).unwrap(), &AllowList::parse(&allowed))
    }

    #[test]
    fn loopback_private_link_local_and_reserved_addresses_are_not_public() {
        for refused in [
            "127.0.0.1",
            "127.8.9.10",
            "0.0.0.0",
            "10.0.0.1",
            "10.255.255.255",
            "172.16.0.1",
            "172.31.255.254",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.255",
            "169.254.169.254",
            "169.254.0.1",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.2.10",
            "198.18.0.1",
            "::",
            "::1",
            "fe80::1",
            "febf::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::10.0.0.1",
            "64:ff9b::a00:1",
            "2002:a00:1::1",
            "2001:db8::1",
            "2001::1",
        ] {
            assert!(!is_public_address(ip(refused)), "{refused} must be refused");
        }
    }

    #[test]
    fn ordinary_public_addresses_are_public() {
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "192.169.0.1",
            "2606:4700::1111",
            "2a00:1450:4001::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert!(is_public_address(ip(public)), "{public} must be allowed");
        }
    }

    #[test]
    fn only_https_is_allowed_unless_the_host_and_port_are_listed() {
        assert_eq!(checked("https://cdn.example.com/a.mp3", &[]), Ok(()));
        assert_eq!(
            checked("http://cdn.example.com/a.mp3", &[]),
            Err(Refusal::NotHttps)
        );
        assert_eq!(
            checked("ftp://cdn.example.com/a.mp3", &[]),
            Err(Refusal::NotHttps)
        );
        assert_eq!(checked("file:///etc/passwd", &[]), Err(Refusal::NotHttps));
        assert_eq!(
            checked("http://127.0.0.1:9100/a", &["127.0.0.1:9100"]),
            Ok(())
        );
        assert_eq!(
            checked("http://127.0.0.1:9101/a", &["127.0.0.1:9100"]),
            Err(Refusal::NotHttps)
        );
        assert_eq!(checked("http://sim.local:80/a", &["SIM.local"]), Ok(()));
        assert_eq!(checked("http://[::1]:9100/a", &["[::1]:9100"]), Ok(()));
    }

    #[test]
    fn ip_literal_hosts_are_checked_before_any_connection() {
        for url in [
            "https://169.254.169.254/latest/meta-data/",
            "https://10.0.0.1/a.mp3",
            "https://127.0.0.1:8443/a.mp3",
            "https://[::1]/a.mp3",
            "https://[fe80::1]/a.mp3",
            "https://[fc00::1]/a.mp3",
            "https://[::ffff:10.0.0.1]/a.mp3",
            // Spellings the URL parser turns into 127.0.0.1 and 169.254.169.254.
            "https://2130706433/a.mp3",
            "https://0x7f.1/a.mp3",
            "https://0251.0376.0251.0376/a.mp3",
        ] {
            assert_eq!(checked(url, &[]), Err(Refusal::Address), "{url}");
        }
        assert_eq!(checked("https://93.184.215.14/a.mp3", &[]), Ok(()));
        assert_eq!(
            checked("https://127.0.0.1:8443/a.mp3", &["127.0.0.1"]),
            Ok(()),
            "a host listed without a port may use any address on any port"
        );
        assert_eq!(
            checked("https://127.0.0.1:8443/a.mp3", &["127.0.0.1:9100"]),
            Err(Refusal::Address),
            "another port of a listed address gets the ordinary rules"
        );
        assert_eq!(
            checked("https://sim.local:8443/a.mp3", &["sim.local:9100"]),
            Err(Refusal::Port),
            "another port of a listed name is refused"
        );
    }

    #[test]
    fn allow_list_entries_are_read_in_every_spelling() {
        let parse = |e: &str| AllowList::parse_entry(e);
        assert_eq!(
            parse("127.0.0.1:9100"),
            Some(("127.0.0.1".into(), Some(9100)))
        );
        assert_eq!(parse("Sim.Local."), Some(("sim.local".into(), None)));
        assert_eq!(parse("[::1]:80"), Some(("::1".into(), Some(80))));
        assert_eq!(parse("::1"), Some(("::1".into(), None)));
        assert_eq!(
            parse("http://127.0.0.1:9100/"),
            Some(("127.0.0.1".into(), Some(9100)))
        );
        assert_eq!(parse("host:notaport"), None);
        assert_eq!(
            DownloadPolicy::host_of("http://127.0.0.1:9100").as_deref(),
            Some("127.0.0.1:9100")
        );
        assert_eq!(
            DownloadPolicy::host_of("http://[::1]:9100/x").as_deref(),
            Some("[::1]:9100")
        );
        assert_eq!(
            DownloadPolicy::parse_hosts(" 127.0.0.1:9100, sim.local  "),
            vec!["127.0.0.1:9100".to_owned(), "sim.local".to_owned()]
        );
    }

    #[test]
    fn the_content_type_must_be_of_the_expected_family_or_octet_stream() {
        let check = |served, family| check_content_type(served, family);
        assert_eq!(check(Some("audio/mpeg"), Family::Audio), Ok(()));
        assert_eq!(check(Some("Audio/MPEG; charset=x"), Family::Audio), Ok(()));
        assert_eq!(check(Some("video/mp4"), Family::Video), Ok(()));
        assert_eq!(check(Some("image/png"), Family::Image), Ok(()));
        assert_eq!(
            check(Some("application/octet-stream"), Family::Video),
            Ok(())
        );
        assert_eq!(check(None, Family::Audio), Ok(()));
        assert_eq!(
            check(Some("text/html; charset=utf-8"), Family::Audio),
            Err(Refusal::ContentType {
                found: "text/html".into(),
                family: "audio"
            })
        );
        assert!(check(Some("video/mp4"), Family::Audio).is_err());
        assert!(check(Some("audio/"), Family::Audio).is_err());
        assert!(check(Some("audiox/mpeg"), Family::Audio).is_err());
    }

    #[test]
    fn refusals_are_final_and_name_no_url_or_address() {
        let e: ProviderError = Refusal::Address.into();
        assert!(!e.is_transient());
        assert_eq!(
            e.public_message(),
            e.to_string(),
            "shown to clients as it is"
        );
        assert_eq!(
            e.to_string(),
            "the provider's result URL was refused: it leads to a private or reserved address"
        );
        let e: ProviderError = Refusal::TooLarge {
            family: "audio",
            limit: 50 * MIB,
        }
        .into();
        assert!(
            e.to_string()
                .ends_with("larger than the 50 MiB limit for audio")
        );
        assert!(!e.is_transient());
    }

    #[tokio::test]
    async fn the_resolver_refuses_a_name_that_resolves_to_loopback_unless_listed() {
        // `localhost` comes from /etc/hosts: no DNS traffic, and no connection is made.
        let strict = GuardedResolver {
            allow: Arc::new(AllowList::default()),
        };
        let err = strict
            .resolve("localhost".parse().unwrap())
            .await
            .err()
            .expect("refused");
        assert_eq!(err.downcast_ref::<Refusal>(), Some(&Refusal::Address));
        let listed = GuardedResolver {
            allow: Arc::new(AllowList::parse(&["localhost:9100".into()])),
        };
        let addrs: Vec<SocketAddr> = listed
            .resolve("localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
    }
}
