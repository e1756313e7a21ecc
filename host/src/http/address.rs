//! Which addresses a plugin's request may connect to without a grant of
//! their own: not loopback, private, link-local, the cloud metadata address
//! or any other address that reaches into the host's own network (the SSRF
//! rule), and address ranges for granting them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address may not be reached unless granted: the kind of address it
/// is, or `None` for a public address.
///
/// ```
/// use plugbus::http::special_address;
/// assert_eq!(special_address("127.0.0.1".parse().unwrap()), Some("loopback"));
/// assert_eq!(special_address("169.254.169.254".parse().unwrap()), Some("the cloud metadata address"));
/// assert_eq!(special_address("::ffff:10.0.0.1".parse().unwrap()), Some("private"));
/// assert_eq!(special_address("93.184.215.14".parse().unwrap()), None);
/// ```
pub fn special_address(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => {
            // An IPv4 address written as IPv6 reaches the IPv4 host.
            if let Some(v4) = v6.to_ipv4_mapped() {
                return special_v4(v4);
            }
            special_v6(v6)
        }
    }
}

/// The metadata service of AWS, GCP, Azure, OpenStack (and Oracle's second one).
const METADATA_V4: [Ipv4Addr; 2] = [Ipv4Addr::new(169, 254, 169, 254), Ipv4Addr::new(169, 254, 170, 2)];

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if METADATA_V4.contains(&ip) {
        Some("the cloud metadata address")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.is_unspecified() || a == 0 {
        Some("unspecified (\"this host\")")
    } else if a == 100 && (64..128).contains(&b) {
        Some("shared address space (carrier-grade NAT)")
    } else if ip.is_broadcast() || ip.is_multicast() || a >= 240 {
        Some("broadcast, multicast or reserved")
    } else if a == 198 && (b == 18 || b == 19) {
        Some("benchmarking (198.18.0.0/15)")
    } else if a == 192 && b == 0 && ip.octets()[2] == 0 {
        Some("IETF protocol assignments (192.0.0.0/24)")
    } else {
        None
    }
}

fn special_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    if ip == Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254) {
        Some("the cloud metadata address")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() {
        Some("unspecified (\"this host\")")
    } else if first & 0xffc0 == 0xfe80 {
        Some("link-local")
    } else if first & 0xfe00 == 0xfc00 {
        Some("private (unique local)")
    } else if first & 0xffc0 == 0xfec0 {
        Some("private (site-local, deprecated)")
    } else if first == 0x2001 && ip.segments()[1] == 0 {
        Some("a Teredo tunnel (2001::/32)")
    } else if ip.is_multicast() {
        Some("broadcast, multicast or reserved")
    } else if ip.to_ipv4().is_some() {
        // IPv4-compatible (::a.b.c.d, deprecated): treat like its v4 address.
        ip.to_ipv4().and_then(special_v4)
    } else if (first == 0x0064 && ip.segments()[1] == 0xff9b) || ip.segments()[..6] == [0, 0, 0, 0, 0xffff, 0] {
        // NAT64 (64:ff9b::/96) and IPv4-translated (::ffff:0:a.b.c.d)
        // addresses reach the embedded IPv4 address.
        let [.., c, d] = ip.segments();
        special_v4(v4_of(c, d))
    } else if first == 0x2002 {
        // 6to4 (2002:aabb:ccdd::/48) is routed to the IPv4 address aa.bb.cc.dd.
        let [_, c, d, ..] = ip.segments();
        special_v4(v4_of(c, d))
    } else {
        None
    }
}

/// The IPv4 address held in two IPv6 segments.
fn v4_of(high: u16, low: u16) -> Ipv4Addr {
    Ipv4Addr::from((u32::from(high) << 16) | u32::from(low))
}

/// An address or a CIDR range (`127.0.0.1`, `10.0.0.0/8`, `fd00::/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    base: IpAddr,
    prefix: u8,
}

impl IpRange {
    /// One address.
    pub fn single(ip: IpAddr) -> IpRange {
        // An IPv4-mapped address is the IPv4 address (as `contains` compares).
        let ip = ip.to_canonical();
        IpRange {
            base: ip,
            prefix: if ip.is_ipv4() { 32 } else { 128 },
        }
    }

    /// Parses an address or `address/prefix`.
    ///
    /// # Errors
    /// A message naming `text`.
    ///
    /// ```
    /// use plugbus::http::IpRange;
    /// let r = IpRange::parse("10.0.0.0/8").unwrap();
    /// assert!(r.contains("10.2.3.4".parse().unwrap()));
    /// assert!(!r.contains("11.0.0.1".parse().unwrap()));
    /// assert!(IpRange::parse("10.0.0.0/33").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<IpRange, String> {
        let bad = || format!("`{text}` is not an IP address or CIDR range (e.g. 127.0.0.1, 10.0.0.0/8)");
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (
                a,
                Some(
                    crate::http::grant::digits(p)
                        .and_then(|p| p.parse::<u8>().ok())
                        .ok_or_else(bad)?,
                ),
            ),
            None => (text, None),
        };
        let base: IpAddr = addr
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| bad())?;
        let max = if base.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        // An IPv4-mapped range (`::ffff:10.0.0.0/104`) is the IPv4 range it
        // maps (`10.0.0.0/8`): kept as IPv6 it would be a different set of
        // addresses (`::ffff:10.0.0.0/8` is `::/8`, loopback and NAT64
        // included) while `contains` reads its base as IPv4.
        if let IpAddr::V6(v6) = base
            && let Some(v4) = v6.to_ipv4_mapped()
        {
            return match prefix.checked_sub(96) {
                Some(p4) => Ok(IpRange {
                    base: IpAddr::V4(v4),
                    prefix: p4,
                }),
                None => Err(format!(
                    "`{text}`: an IPv4-mapped range needs a prefix of at least /96 (write the IPv4 range instead)"
                )),
            };
        }
        Ok(IpRange { base, prefix })
    }

    /// Whether `ip` is in the range (an IPv4-mapped IPv6 address counts as
    /// its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.base, ip) {
            (IpAddr::V4(base), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(base) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(base), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(base) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl IpRange {
    /// Whether every address of `other` is in this range (ranges of one
    /// family only: an IPv6 range never covers an IPv4 one, nor the reverse).
    pub fn covers(&self, other: &IpRange) -> bool {
        self.base.is_ipv4() == other.base.is_ipv4() && other.prefix >= self.prefix && self.contains(other.base)
    }
}

impl std::fmt::Display for IpRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(text: &str) -> Option<&'static str> {
        special_address(text.parse().unwrap())
    }

    #[test]
    fn every_way_into_the_host_network_is_special() {
        for (addr, what) in [
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("192.168.1.1", "private"),
            ("169.254.1.1", "link-local"),
            ("fe80::1", "link-local"),
            ("fd12::1", "private (unique local)"),
            ("169.254.169.254", "the cloud metadata address"),
            ("fd00:ec2::254", "the cloud metadata address"),
            ("0.0.0.0", "unspecified (\"this host\")"),
            ("::", "unspecified (\"this host\")"),
            ("100.64.0.1", "shared address space (carrier-grade NAT)"),
            ("64:ff9b::a9fe:a9fe", "the cloud metadata address"),
            ("::ffff:0:7f00:1", "loopback"),
            ("2002:a9fe:a9fe::1", "the cloud metadata address"),
            ("2002:c0a8:101::1", "private"),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "a Teredo tunnel (2001::/32)"),
            ("fec0::1", "private (site-local, deprecated)"),
            ("192.0.0.8", "IETF protocol assignments (192.0.0.0/24)"),
        ] {
            assert_eq!(kind(addr), Some(what), "{addr}");
        }
        for public in [
            "93.184.215.14",
            "2606:2800:21f:cb07:6820:80da:af6b:8b2c",
            "8.8.8.8",
            "2002:808:808::1",
            "2001:4860:4860::8888",
        ] {
            assert_eq!(kind(public), None, "{public}");
        }
    }

    #[test]
    fn ranges_contain_their_addresses() {
        let lo = IpRange::parse("127.0.0.1").unwrap();
        assert!(lo.contains("127.0.0.1".parse().unwrap()));
        assert!(lo.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!lo.contains("127.0.0.2".parse().unwrap()));
        let all = IpRange::parse("0.0.0.0/0").unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        let v6 = IpRange::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        assert!(IpRange::parse("host.example").is_err());
    }

    #[test]
    fn an_ipv4_mapped_range_is_its_ipv4_range() {
        // Kept as IPv6, `::ffff:10.0.0.0/8` would be `::/8`: loopback, NAT64
        // and IPv4-compatible addresses, passed off as "10.0.0.0/8".
        let mapped = IpRange::parse("::ffff:10.0.0.0/104").unwrap();
        assert_eq!(mapped, IpRange::parse("10.0.0.0/8").unwrap());
        assert!(!mapped.contains("::1".parse().unwrap()));
        assert!(!mapped.contains("64:ff9b::a9fe:a9fe".parse().unwrap()));
        assert!(IpRange::parse("::ffff:10.0.0.0/8").is_err());
        assert_eq!(
            IpRange::parse("::ffff:127.0.0.1").unwrap(),
            IpRange::parse("127.0.0.1").unwrap()
        );
        // A policy's IPv4 range never covers an IPv6 one, nor the reverse.
        let policy = IpRange::parse("10.0.0.0/8").unwrap();
        assert!(policy.covers(&mapped));
        assert!(!policy.covers(&IpRange::parse("::a00:0/104").unwrap()));
        assert!(!IpRange::parse("::/0").unwrap().covers(&policy));
    }
}
