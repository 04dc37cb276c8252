//! The guard that keeps webhooks off the internal network: which addresses
//! a delivery may not reach (loopback, private, link-local, unspecified,
//! shared CGNAT, multicast, broadcast and reserved ranges, and the IPv6
//! forms that embed such an IPv4 address), checked when an endpoint is
//! registered and again on every address a delivery connects to — after
//! resolving, so a name that later resolves somewhere internal (DNS
//! rebinding) is refused too. `--webhooks-allow-private` lifts it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// How long resolving a webhook's host name may take before a delivery
/// connects: resolvers answer in milliseconds, and a lookup stuck longer
/// than this will not help a delivery that has 15 s in all.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long registration waits for a host name to resolve before it
/// accepts the name unchecked (every delivery checks it again): an admin
/// call should not hang on a slow resolver.
pub const REGISTRATION_RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why an address may not be reached, or `None` when it may: the address
/// is public unicast.
pub fn forbidden_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(ip) => forbidden_v4(ip),
        IpAddr::V6(ip) => forbidden_v6(ip),
    }
}

fn in_v4(ip: Ipv4Addr, network: [u8; 4], prefix: u32) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(network)) & mask
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let ranges: [([u8; 4], u32, &'static str); 11] = [
        ([0, 0, 0, 0], 8, "an unspecified (this-network) address"),
        ([127, 0, 0, 0], 8, "a loopback address"),
        ([10, 0, 0, 0], 8, "a private address"),
        ([172, 16, 0, 0], 12, "a private address"),
        ([192, 168, 0, 0], 16, "a private address"),
        ([169, 254, 0, 0], 16, "a link-local address"),
        ([100, 64, 0, 0], 10, "a shared (carrier-grade NAT) address"),
        ([192, 0, 0, 0], 24, "a reserved (IETF protocol) address"),
        ([198, 18, 0, 0], 15, "a benchmarking address"),
        ([224, 0, 0, 0], 4, "a multicast address"),
        // 240.0.0.0/4 is reserved, and holds 255.255.255.255, the broadcast.
        ([240, 0, 0, 0], 4, "a reserved or broadcast address"),
    ];
    ranges
        .iter()
        .find(|(network, prefix, _)| in_v4(ip, *network, *prefix))
        .map(|(_, _, reason)| *reason)
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let segments = ip.segments();
    if ip.is_unspecified() {
        return Some("an unspecified address");
    }
    if ip.is_loopback() {
        return Some("a loopback address");
    }
    // ::ffff:a.b.c.d (IPv4-mapped) and ::a.b.c.d (the old IPv4-compatible
    // form) reach the IPv4 address they carry.
    if segments[..5] == [0; 5] && (segments[5] == 0xffff || segments[5] == 0) {
        let [a, b] = segments[6].to_be_bytes();
        let [c, d] = segments[7].to_be_bytes();
        return forbidden_v4(Ipv4Addr::new(a, b, c, d));
    }
    // 64:ff9b::/96, NAT64's well-known prefix, translates to the IPv4
    // address in its last 32 bits.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [a, b] = segments[6].to_be_bytes();
        let [c, d] = segments[7].to_be_bytes();
        return forbidden_v4(Ipv4Addr::new(a, b, c, d));
    }
    // 2002::/16, 6to4, carries an IPv4 address in bits 16..48.
    if segments[0] == 0x2002 {
        let [a, b] = segments[1].to_be_bytes();
        let [c, d] = segments[2].to_be_bytes();
        return forbidden_v4(Ipv4Addr::new(a, b, c, d));
    }
    match segments[0] {
        first if first & 0xfe00 == 0xfc00 => Some("a private (unique local) address"),
        first if first & 0xffc0 == 0xfe80 => Some("a link-local address"),
        first if first & 0xffc0 == 0xfec0 => Some("a private (site-local) address"),
        first if first & 0xff00 == 0xff00 => Some("a multicast address"),
        _ => None,
    }
}

/// Why a delivery may not go to a host, or why its name gave no address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The host is, or resolves to, an address deliveries may not reach.
    Forbidden {
        address: IpAddr,
        reason: &'static str,
    },
    /// The name did not resolve (or not in time).
    Unresolved(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Forbidden { address, reason } => write!(
                f,
                "{address} is {reason}; webhooks may not reach it unless the server runs with \
                 --webhooks-allow-private"
            ),
            Refusal::Unresolved(why) => write!(f, "{why}"),
        }
    }
}

/// Whether a host name names the local machine whatever DNS says:
/// `localhost` and every name under `.localhost` (RFC 6761).
pub fn is_localhost_name(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "localhost" || host.ends_with(".localhost")
}

/// The addresses a delivery to `host:port` may connect to: an IP literal
/// as it is, a name resolved; unless `allow_private`, forbidden addresses
/// are dropped, and when none is left the first forbidden one is the
/// refusal. This is the check on the address actually connected to: the
/// caller connects only to what this returns.
pub async fn resolve(
    host: &url::Host<String>,
    port: u16,
    allow_private: bool,
) -> Result<Vec<SocketAddr>, Refusal> {
    let resolved: Vec<SocketAddr> = match host {
        url::Host::Ipv4(ip) => vec![SocketAddr::new(IpAddr::V4(*ip), port)],
        url::Host::Ipv6(ip) => vec![SocketAddr::new(IpAddr::V6(*ip), port)],
        url::Host::Domain(name) => {
            if !allow_private && is_localhost_name(name) {
                return Err(Refusal::Forbidden {
                    address: IpAddr::V4(Ipv4Addr::LOCALHOST),
                    reason: "a loopback address (localhost)",
                });
            }
            let lookup = tokio::net::lookup_host((name.as_str(), port));
            match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
                Ok(Ok(addresses)) => addresses.collect(),
                Ok(Err(error)) => {
                    return Err(Refusal::Unresolved(format!(
                        "cannot resolve {name}: {error}"
                    )));
                }
                Err(_) => {
                    return Err(Refusal::Unresolved(format!(
                        "resolving {name} took longer than {} s",
                        RESOLVE_TIMEOUT.as_secs()
                    )));
                }
            }
        }
    };
    if allow_private {
        return if resolved.is_empty() {
            Err(Refusal::Unresolved(format!("{host} has no address")))
        } else {
            Ok(resolved)
        };
    }
    let mut first_refusal = None;
    let mut allowed = Vec::with_capacity(resolved.len());
    for address in resolved {
        match forbidden_reason(address.ip()) {
            None => allowed.push(address),
            Some(reason) => {
                first_refusal.get_or_insert(Refusal::Forbidden {
                    address: address.ip(),
                    reason,
                });
            }
        }
    }
    if allowed.is_empty() {
        return Err(
            first_refusal.unwrap_or_else(|| Refusal::Unresolved(format!("{host} has no address")))
        );
    }
    Ok(allowed)
}

/// The check at registration: refused when the host is, or resolves to,
/// any forbidden address (stricter than at delivery, which drops such
/// addresses and uses the rest). A name that does not resolve now is
/// accepted — its deliveries fail until it does, and each one is checked
/// again then.
pub async fn check_registration(host: &url::Host<String>, port: u16) -> Result<(), Refusal> {
    let addresses: Vec<IpAddr> = match host {
        url::Host::Ipv4(ip) => vec![IpAddr::V4(*ip)],
        url::Host::Ipv6(ip) => vec![IpAddr::V6(*ip)],
        url::Host::Domain(name) => {
            if is_localhost_name(name) {
                return Err(Refusal::Forbidden {
                    address: IpAddr::V4(Ipv4Addr::LOCALHOST),
                    reason: "a loopback address (localhost)",
                });
            }
            let lookup = tokio::net::lookup_host((name.as_str(), port));
            match tokio::time::timeout(REGISTRATION_RESOLVE_TIMEOUT, lookup).await {
                Ok(Ok(addresses)) => addresses.map(|address| address.ip()).collect(),
                _ => return Ok(()),
            }
        }
    };
    for address in addresses {
        if let Some(reason) = forbidden_reason(address) {
            return Err(Refusal::Forbidden { address, reason });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forbidden(text: &str) -> bool {
        forbidden_reason(text.parse().expect("an address")).is_some()
    }

    #[test]
    fn internal_addresses_are_forbidden() {
        for address in [
            "0.0.0.0",
            "0.1.2.3",
            "127.0.0.1",
            "127.255.255.254",
            "10.0.0.1",
            "10.255.255.255",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.0.8",
            "198.18.0.1",
            "::",
            "::1",
            "fc00::1",
            "fd12:3456:789a::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
            "::ffff:0.0.0.0",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "2002:a00:1::1",
            "2002:7f00:1::",
        ] {
            assert!(forbidden(address), "{address} must be forbidden");
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        for address in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "169.253.255.255",
            "192.167.255.255",
            "192.169.0.0",
            "223.255.255.255",
            "203.0.113.7",
            "2606:4700:4700::1111",
            "2a00:1450:4001:80b::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(!forbidden(address), "{address} must be allowed");
        }
    }

    #[test]
    fn localhost_names() {
        assert!(is_localhost_name("localhost"));
        assert!(is_localhost_name("LOCALHOST."));
        assert!(is_localhost_name("api.localhost"));
        assert!(!is_localhost_name("localhost.example.com"));
        assert!(!is_localhost_name("mylocalhost"));
    }

    #[tokio::test]
    async fn the_connect_check_refuses_literals_and_names_of_internal_addresses() {
        let loopback = url::Host::Ipv4(Ipv4Addr::LOCALHOST);
        assert!(matches!(
            resolve(&loopback, 80, false).await,
            Err(Refusal::Forbidden { .. })
        ));
        let mapped = url::Host::Ipv6("::ffff:10.0.0.1".parse().expect("address"));
        assert!(matches!(
            resolve(&mapped, 80, false).await,
            Err(Refusal::Forbidden { .. })
        ));
        // `localhost` is refused by name, before any lookup.
        let name = url::Host::Domain("localhost".to_owned());
        assert!(matches!(
            resolve(&name, 80, false).await,
            Err(Refusal::Forbidden { .. })
        ));
        // With the operator's permission all of them pass.
        assert_eq!(
            resolve(&loopback, 80, true).await,
            Ok(vec!["127.0.0.1:80".parse().expect("address")])
        );
        let public = url::Host::Ipv4(Ipv4Addr::new(8, 8, 8, 8));
        assert_eq!(
            resolve(&public, 443, false).await,
            Ok(vec!["8.8.8.8:443".parse().expect("address")])
        );
    }

    #[tokio::test]
    async fn registration_refuses_internal_hosts() {
        for host in ["127.0.0.1", "10.1.2.3", "[::1]", "[fe80::1]", "localhost"] {
            let parsed = url::Host::parse(host).expect("a host");
            assert!(
                check_registration(&parsed, 443).await.is_err(),
                "{host} must be refused"
            );
        }
        let public = url::Host::parse("8.8.8.8").expect("a host");
        assert_eq!(check_registration(&public, 443).await, Ok(()));
    }
}
