//! Fetching customers' attachments from providers without becoming a proxy into the
//! network Parley runs in (server-side request forgery, as in CVE-2024-39713).
//!
//! A URL is fetched only when every check passes:
//! - the scheme is `https` (plain `http` only where the policy allows it, for tests);
//! - the host is one of the provider's media hosts (exact, or a subdomain of an entry that
//!   starts with a dot), never an IP literal — in whatever form the URL gives it (`2130706433`,
//!   `0x7f.1` and `[::ffff:127.0.0.1]` are all parsed to the addresses they mean first);
//! - every address the host resolves to is public: no loopback, private, link-local (cloud
//!   metadata at 169.254.169.254), carrier-grade NAT, unspecified, multicast, broadcast,
//!   documentation or benchmarking ranges, no IPv6 unique-local or link-local, no IPv4 hidden
//!   in an IPv6 address. The connection is made to the checked addresses, so a second DNS
//!   answer cannot slip another in (rebinding);
//! - redirects (at most three) go through the same checks;
//! - the answer's type is one a customer may send (images, audio, video, PDF, office
//!   documents, plain text), and its size stays under the limit while it is read — a
//!   declared `Content-Length` over the limit is refused before any byte is read.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Where and what may be fetched.
#[derive(Debug, Clone)]
pub struct FetchPolicy {
    /// Media hosts: `api.telegram.org` (exactly that host) or `.whatsapp.net` (any subdomain).
    pub hosts: Vec<String>,
    pub max_bytes: usize,
    /// Allowed content types: `image/` (a prefix) or `application/pdf` (exact).
    pub types: Vec<String>,
    /// Plain `http` allowed (tests only).
    pub allow_http: bool,
    /// Addresses allowed although not public (tests only: the local stand-in of a provider).
    pub allow_addresses: Vec<IpAddr>,
}

impl FetchPolicy {
    /// The providers' media hosts, with the limits customers' files need.
    pub fn providers() -> Self {
        let hosts = [
            "api.telegram.org",    // Telegram getFile downloads
            "graph.facebook.com",  // WhatsApp media id → URL
            "lookaside.fbsbx.com", // WhatsApp media downloads
            ".whatsapp.net",       // WhatsApp media CDN
            "api.twilio.com",      // Twilio MediaUrl
            ".twiliocdn.com",      // Twilio media redirects
            ".twilio.com",
            "dl-media.viber.com", // Viber media
            ".viber.com",
        ];
        let types = [
            "image/",
            "audio/",
            "video/",
            "application/pdf",
            "text/plain",
            "application/msword",
            "application/vnd.openxmlformats-officedocument.",
            "application/vnd.ms-excel",
            "application/vnd.oasis.opendocument.",
            "application/zip",
        ];
        Self {
            hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            max_bytes: 25 * 1024 * 1024,
            types: types.iter().map(|t| (*t).to_owned()).collect(),
            allow_http: false,
            allow_addresses: Vec::new(),
        }
    }

    fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.hosts.iter().any(|h| match h.strip_prefix('.') {
            Some(suffix) => host.ends_with(&format!(".{suffix}")),
            None => host == *h,
        })
    }

    fn address_allowed(&self, ip: IpAddr) -> bool {
        is_public(ip) || self.allow_addresses.contains(&ip)
    }

    pub fn type_allowed(&self, mime: &str) -> bool {
        let mime = mime.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        self.types
            .iter()
            .any(|t| if t.ends_with('/') || t.ends_with('.') { mime.starts_with(t.as_str()) } else { mime == *t })
    }

    /// The checks on a URL before it is requested (and on each redirect).
    pub fn check_url(&self, url: &Url) -> Result<(), FetchError> {
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            s => return Err(FetchError::Refused(format!("scheme {s} is not allowed"))),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(FetchError::Refused("credentials in the URL are not allowed".into()));
        }
        match url.host() {
            None => Err(FetchError::Refused("the URL has no host".into())),
            // Parsed by the URL standard, so `2130706433` and `0x7f.1` are already 127.0.0.1.
            Some(url::Host::Ipv4(ip)) => self.ip_literal(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.ip_literal(IpAddr::V6(ip)),
            Some(url::Host::Domain(d)) if self.host_allowed(d) => Ok(()),
            Some(url::Host::Domain(d)) => {
                Err(FetchError::Refused(format!("host {d} is not a media host of the provider")))
            }
        }
    }

    fn ip_literal(&self, ip: IpAddr) -> Result<(), FetchError> {
        // Providers link media by name; an address is allowed only when the policy names it.
        if self.allow_addresses.contains(&ip) {
            Ok(())
        } else {
            Err(FetchError::Refused(format!(
                "address {ip} is not allowed (media is fetched from the provider's hosts only)"
            )))
        }
    }
}

/// Why a fetch did not happen or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// A check refused it: do not retry.
    #[error("refused: {0}")]
    Refused(String),
    #[error("larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("content type {0:?} is not allowed")]
    Type(String),
    /// The provider answered with an error status.
    #[error("the provider answered {0}")]
    Status(u16),
    /// Network trouble: worth retrying.
    #[error("fetch failed: {0}")]
    Transport(String),
}

/// A fetched file.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub bytes: Vec<u8>,
    pub mime: String,
}

/// True for addresses on the public internet.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => public_v4(v4),
        IpAddr::V6(v6) => {
            // IPv4 inside IPv6 (mapped ::ffff:a.b.c.d, compatible ::a.b.c.d, NAT64 64:ff9b::/96)
            // is judged as the IPv4 address it carries.
            if let Some(v4) = v6.to_ipv4_mapped() {
                return public_v4(v4);
            }
            let s = v6.segments();
            if s[..6] == [0, 0, 0, 0, 0, 0] || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return public_v4(Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated) fec0::/10
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x2001 && s[1] < 0x0200)) // IETF protocol assignments, Teredo
        }
    }
}

fn public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240) // reserved
}

/// Resolves names, then keeps only the addresses the policy allows; none left is an error.
struct CheckedResolver(Arc<FetchPolicy>);

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found.iter().copied().filter(|a| policy.address_allowed(a.ip())).collect();
            if allowed.is_empty() {
                return Err(format!("{host} resolves to no public address ({found:?})").into());
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// An HTTP client that enforces a policy on every connection and redirect.
#[derive(Clone)]
pub struct Fetcher {
    policy: Arc<FetchPolicy>,
    client: reqwest::Client,
}

impl Fetcher {
    pub fn new(policy: FetchPolicy, timeout: Duration) -> anyhow::Result<Self> {
        let policy = Arc::new(policy);
        let for_redirects = policy.clone();
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(CheckedResolver(policy.clone())))
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= 3 {
                    return attempt.error("more than 3 redirects");
                }
                match for_redirects.check_url(attempt.url()) {
                    Ok(()) => attempt.follow(),
                    Err(e) => attempt.error(format!("redirect {e}")),
                }
            }))
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(5))
            .no_proxy()
            .build()?;
        Ok(Self { policy, client })
    }

    /// Fetches a URL with the provider's credential (a bearer token, or basic auth).
    pub async fn fetch(&self, url: &str, auth: Option<FetchAuth<'_>>) -> Result<Fetched, FetchError> {
        let url = Url::parse(url).map_err(|e| FetchError::Refused(format!("not a URL: {e}")))?;
        self.policy.check_url(&url)?;
        let mut request = self.client.get(url);
        request = match auth {
            None => request,
            Some(FetchAuth::Bearer(t)) => request.bearer_auth(t),
            Some(FetchAuth::Basic(u, p)) => request.basic_auth(u, Some(p)),
        };
        let mut response = request.send().await.map_err(describe)?;
        let status = response.status();
        if !status.is_success() {
            return Err(FetchError::Status(status.as_u16()));
        }
        let mime = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_owned();
        if !self.policy.type_allowed(&mime) {
            return Err(FetchError::Type(mime));
        }
        let limit = self.policy.max_bytes;
        if response.content_length().is_some_and(|n| n > limit as u64) {
            return Err(FetchError::TooLarge { limit });
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(describe)? {
            if bytes.len() + chunk.len() > limit {
                return Err(FetchError::TooLarge { limit });
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(Fetched { bytes, mime })
    }
}

/// A provider's credential for its media.
#[derive(Debug, Clone, Copy)]
pub enum FetchAuth<'a> {
    Bearer(&'a str),
    Basic(&'a str, &'a str),
}

/// A request error, refused or transient, without the URL (it can carry a credential).
fn describe(e: reqwest::Error) -> FetchError {
    let mut text = String::new();
    let mut source: Option<&dyn std::error::Error> = Some(&e);
    while let Some(cause) = source {
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause.to_string().replace(e.url().map(|u| u.as_str()).unwrap_or("\u{0}"), "<url>"));
        source = cause.source();
    }
    if e.is_redirect() || text.contains("no public address") {
        FetchError::Refused(text)
    } else {
        FetchError::Transport(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_public() {
        let private = [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.1",
            "198.18.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::10.0.0.1",
            "2001:db8::1",
            "ff02::1",
        ];
        for ip in private {
            assert!(!is_public(ip.parse().unwrap()), "{ip} must not count as public");
        }
        for ip in ["149.154.167.220", "157.240.1.1", "2a03:2880:f12f:83:face:b00c::25de", "::ffff:8.8.8.8", "1.1.1.1"] {
            assert!(is_public(ip.parse().unwrap()), "{ip} is public");
        }
    }

    #[test]
    fn urls_are_checked_before_any_request() {
        let p = FetchPolicy::providers();
        let ok = |u: &str| p.check_url(&Url::parse(u).unwrap()).is_ok();
        assert!(ok("https://api.telegram.org/file/bot123:abc/photos/file_1.jpg"));
        assert!(ok("https://mmg.whatsapp.net/v/t62/abc"));
        assert!(!ok("http://api.telegram.org/file/x"), "plain http");
        assert!(!ok("https://api.telegram.org.evil.example/x"), "a lookalike suffix");
        assert!(!ok("https://whatsapp.net.evil.example/x"));
        assert!(!ok("https://evil.example/x"), "not a media host");
        assert!(!ok("https://user:pw@api.telegram.org/x"), "credentials in the URL");
        // Addresses in every spelling the URL standard accepts are addresses, and refused.
        for u in [
            "https://127.0.0.1/x",
            "https://2130706433/x",
            "https://0x7f000001/x",
            "https://0x7f.1/x",
            "https://017700000001/x",
            "https://[::1]/x",
            "https://[::ffff:127.0.0.1]/x",
            "https://169.254.169.254/latest/meta-data/",
            "https://8.8.8.8/x",
        ] {
            assert!(!ok(u), "{u}");
        }
        assert!(p.type_allowed("image/jpeg") && p.type_allowed("application/pdf; charset=binary"));
        assert!(!p.type_allowed("text/html") && !p.type_allowed("application/x-msdownload"));
    }
}
