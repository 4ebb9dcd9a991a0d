//! Outbound HTTP (image downloads, webhooks): only to public addresses, so that a job cannot make
//! the service reach its own network (SSRF).
//!
//! - A URL's host that is an IP (in any spelling: the URL parser normalizes decimal, hex and octal
//!   IPv4) must be a public unicast address; `localhost` names are refused outright.
//! - A DNS name is resolved by [`Guard`], which refuses the name if *any* of its addresses is
//!   internal (the connection could go to any of them), so a name cannot smuggle one in.
//! - Every redirect hop is checked the same way; proxy environment variables are ignored.
//! - `security.allowed_networks` (CIDRs) lets an operator reach internal hosts it trusts.

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// Why a URL may not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum Blocked {
    /// Not http or https.
    #[error("only http and https URLs are allowed")]
    Scheme,
    /// No host, or a malformed URL.
    #[error("the URL has no usable host")]
    Host,
    /// The host is (or resolves to) an address of a private, loopback, link-local or other
    /// non-public network.
    #[error("{0} is not a public address (allow it with security.allowed_networks)")]
    Internal(String),
}

/// The policy: public addresses, plus the allowed networks.
#[derive(Debug, Clone, Default)]
pub struct Egress {
    allowed: Arc<Vec<IpNet>>,
}

impl Egress {
    /// A policy with these extra allowed networks (`10.0.0.0/8`, `192.168.1.20/32`...).
    pub fn new(allowed: &[IpNet]) -> Egress {
        Egress {
            allowed: Arc::new(allowed.to_vec()),
        }
    }

    /// True when connecting to `ip` is allowed.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.allowed.iter().any(|n| n.contains(&ip)) || is_public(ip)
    }

    /// Checks a URL before any connection: scheme, and the host when it is an address or a
    /// `localhost` name (other names are checked when they are resolved).
    pub fn check(&self, url: &reqwest::Url) -> Result<(), Blocked> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Blocked::Scheme);
        }
        let ip = match url.host() {
            Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
            Some(url::Host::Domain(name)) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                if name == "localhost" || name.ends_with(".localhost") {
                    // Resolved by the system to loopback, whatever DNS says.
                    return match self.allows(IpAddr::V4(Ipv4Addr::LOCALHOST)) {
                        true => Ok(()),
                        false => Err(Blocked::Internal(name)),
                    };
                }
                return Ok(());
            }
            None => return Err(Blocked::Host),
        };
        if self.allows(ip) {
            Ok(())
        } else {
            Err(Blocked::Internal(ip.to_string()))
        }
    }

    /// The HTTP client for image downloads: public addresses only, a few checked redirects,
    /// bounded waits.
    pub fn download_client(&self, read_timeout: std::time::Duration) -> reqwest::Client {
        self.client(5)
            .connect_timeout(std::time::Duration::from_secs(30))
            .read_timeout(read_timeout)
            .user_agent(concat!("meshroom-svc/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("static client settings")
    }

    /// A client builder with this policy: guarded resolver, checked redirects (at most
    /// `max_redirects`; 0 follows none), no proxy from the environment.
    pub fn client(&self, max_redirects: usize) -> reqwest::ClientBuilder {
        let policy = self.clone();
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > max_redirects || max_redirects == 0 {
                return attempt.stop();
            }
            match policy.check(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(e) => attempt.error(e),
            }
        });
        reqwest::Client::builder()
            .no_proxy()
            .redirect(redirects)
            .dns_resolver(Arc::new(Guard(self.clone())))
    }
}

/// The resolver of guarded clients.
struct Guard(Egress);

impl Resolve for Guard {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            policy.screen(&host, &addrs)?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

impl Egress {
    /// All of a name's addresses must be allowed.
    fn screen(&self, host: &str, addrs: &[SocketAddr]) -> Result<(), Blocked> {
        match addrs.iter().find(|a| !self.allows(a.ip())) {
            Some(bad) => Err(Blocked::Internal(format!("{host} ({})", bad.ip()))),
            None => Ok(()),
        }
    }
}

/// Whether an error (or one of its sources) is a refusal of this policy.
pub fn is_blocked(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(b) = err.downcast_ref::<Blocked>() {
            return Some(b.to_string());
        }
        cur = err.source();
    }
    None
}

/// Public unicast: not loopback, private, shared, link-local, multicast, documentation,
/// benchmarking, reserved or unspecified; IPv6 forms that embed IPv4 (mapped, compatible, NAT64,
/// 6to4, Teredo) are judged by the address they carry or refused.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let s = ip.segments();
    let in_net = |net: &str| net.parse::<ipnet::Ipv6Net>().expect("static network").contains(&ip);
    let embeds_v4 = ["::/96", "64:ff9b::/96", "64:ff9b:1::/48", "2002::/16", "2001::/32"];
    // Only global unicast (2000::/3), without the special ranges inside it.
    (s[0] & 0xe000) == 0x2000
        && !embeds_v4.iter().any(|n| in_net(n))
        && !in_net("2001:db8::/32")
        && !in_net("2001:10::/28")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> reqwest::Url {
        reqwest::Url::parse(s).unwrap()
    }

    #[test]
    fn internal_hosts_in_every_spelling_are_refused() {
        let e = Egress::default();
        for u in [
            "http://127.0.0.1/",
            "http://127.1/",
            "http://2130706433/",
            "http://0x7f000001/",
            "http://017700000001/",
            "http://0177.0.0.1/",
            "http://0.0.0.0/",
            "http://10.0.0.1/",
            "http://172.16.0.1/",
            "http://192.168.1.1/",
            "http://169.254.169.254/latest/meta-data/",
            "http://100.64.0.1/",
            "http://224.0.0.1/",
            "http://255.255.255.255/",
            "http://[::1]/",
            "http://[::]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]/",
            "http://[::127.0.0.1]/",
            "http://[64:ff9b::7f00:1]/",
            "http://[2002:7f00:1::]/",
            "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",
            "http://[fe80::1]/",
            "http://[fc00::1]/",
            "http://[fd12:3456::1]/",
            "http://[ff02::1]/",
            "http://localhost/",
            "http://localhost./",
            "http://LOCALHOST/",
            "http://a.localhost/",
            "http://192.0.0.1/",
            "http://198.18.0.1/",
            "http://240.0.0.1/",
            "http://[2001:db8::1]/",
        ] {
            assert!(matches!(e.check(&url(u)), Err(Blocked::Internal(_))), "{u} was allowed");
        }
        for u in ["file:///etc/passwd", "ftp://8.8.8.8/", "gopher://8.8.8.8/"] {
            assert!(matches!(e.check(&url(u)), Err(Blocked::Scheme)), "{u}");
        }
        for u in [
            "http://8.8.8.8/",
            "https://[2606:4700::1111]/",
            "https://example.com/a.jpg",
        ] {
            assert!(e.check(&url(u)).is_ok(), "{u} was refused");
        }
    }

    #[test]
    fn a_name_with_one_internal_address_is_refused() {
        let e = Egress::default();
        let public: SocketAddr = "93.184.216.34:0".parse().unwrap();
        let private: SocketAddr = "10.1.2.3:0".parse().unwrap();
        assert!(e.screen("example.com", &[public]).is_ok());
        assert!(e.screen("rebind.example", &[public, private]).is_err());
        assert!(e.screen("v6.example", &["[::1]:0".parse().unwrap()]).is_err());
    }

    #[test]
    fn operators_can_allow_networks() {
        let nets: crate::config::AllowedNetworks = "10.0.0.0/8, 127.0.0.1".parse().unwrap();
        let e = Egress::new(nets.nets());
        assert!(e.check(&url("http://10.2.3.4/")).is_ok());
        assert!(e.check(&url("http://127.0.0.1:8080/")).is_ok());
        assert!(e.check(&url("http://127.0.0.2/")).is_err());
        assert!(e.check(&url("http://192.168.0.1/")).is_err());
    }
}
