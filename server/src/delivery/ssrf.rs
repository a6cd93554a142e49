//! Which addresses a delivery may connect to. The check applies to the address actually
//! connected to (after resolution), so a name that resolves to a private address, or that
//! changes what it resolves to (DNS rebinding), is caught as well.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forbidden {
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// 10/8, 172.16/12, 192.168/16, 100.64/10 (carrier-grade NAT), fc00::/7.
    Private,
    /// 169.254/16, fe80::/10.
    LinkLocal,
    /// Cloud metadata services: 169.254.169.254, 100.100.100.200, fd00:ec2::254 —
    /// refused even where private networks are allowed.
    Metadata,
    /// 224/4, ff00::/8, 255.255.255.255.
    Multicast,
    /// 0.0.0.0/8, ::, and the other addresses that are not a real destination
    /// (documentation, benchmarking, reserved ranges).
    NotRoutable,
}

impl Forbidden {
    /// The label used in errors and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Forbidden::Loopback => "loopback",
            Forbidden::Private => "private",
            Forbidden::LinkLocal => "link_local",
            Forbidden::Metadata => "cloud_metadata",
            Forbidden::Multicast => "multicast",
            Forbidden::NotRoutable => "not_routable",
        }
    }
}

fn v4(ip: Ipv4Addr) -> Option<Forbidden> {
    let [a, b, ..] = ip.octets();
    if ip == Ipv4Addr::new(169, 254, 169, 254) || ip == Ipv4Addr::new(100, 100, 100, 200) {
        Some(Forbidden::Metadata)
    } else if ip.is_loopback() {
        Some(Forbidden::Loopback)
    } else if ip.is_private() || (a == 100 && (64..128).contains(&b)) {
        Some(Forbidden::Private)
    } else if ip.is_link_local() {
        Some(Forbidden::LinkLocal)
    } else if ip.is_multicast() || ip.is_broadcast() {
        Some(Forbidden::Multicast)
    } else if a == 0
        || a >= 240
        || ip.is_documentation()
        || (a == 198 && (b == 18 || b == 19))
        || (a == 192 && b == 0)
    {
        Some(Forbidden::NotRoutable)
    } else {
        None
    }
}

fn v6(ip: Ipv6Addr) -> Option<Forbidden> {
    if let Some(mapped) = ip.to_ipv4_mapped() {
        return v4(mapped);
    }
    let first = ip.segments()[0];
    if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        Some(Forbidden::Metadata)
    } else if ip.is_loopback() {
        Some(Forbidden::Loopback)
    } else if ip.is_unspecified() {
        Some(Forbidden::NotRoutable)
    } else if first & 0xfe00 == 0xfc00 {
        Some(Forbidden::Private)
    } else if first & 0xffc0 == 0xfe80 {
        Some(Forbidden::LinkLocal)
    } else if ip.is_multicast() {
        Some(Forbidden::Multicast)
    } else if first == 0x2001 && ip.segments()[1] == 0x0db8 {
        Some(Forbidden::NotRoutable)
    } else if first == 0x0064 && ip.segments()[1] == 0xff9b {
        // NAT64: the IPv4 address is in the low 32 bits.
        let s = ip.segments();
        v4(Ipv4Addr::new(
            (s[6] >> 8) as u8,
            s[6] as u8,
            (s[7] >> 8) as u8,
            s[7] as u8,
        ))
    } else {
        None
    }
}

/// Why `ip` may not be connected to, if it may not (unless private networks are allowed).
pub fn forbidden(ip: IpAddr) -> Option<Forbidden> {
    match ip {
        IpAddr::V4(ip) => v4(ip),
        IpAddr::V6(ip) => v6(ip),
    }
}

/// The guard of one gateway: by default every [`Forbidden`] class is refused; with
/// `allow_private` (private deployments, tests on loopback) loopback, private and
/// link-local addresses are allowed, and cloud metadata, multicast and unroutable
/// addresses still refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Guard {
    /// Allow private, loopback and link-local destinations.
    pub allow_private: bool,
}

impl Guard {
    /// Whether a connection to `ip` may be made; the reason when not.
    pub fn check(&self, ip: IpAddr) -> Result<(), Forbidden> {
        match forbidden(ip) {
            Some(Forbidden::Loopback | Forbidden::Private | Forbidden::LinkLocal) if self.allow_private => {
                Ok(())
            }
            Some(why) => Err(why),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn internal_addresses_are_refused_and_public_ones_allowed() {
        let cases = [
            ("127.0.0.1", Some(Forbidden::Loopback)),
            ("127.9.9.9", Some(Forbidden::Loopback)),
            ("::1", Some(Forbidden::Loopback)),
            ("::ffff:127.0.0.1", Some(Forbidden::Loopback)),
            ("10.1.2.3", Some(Forbidden::Private)),
            ("172.16.0.1", Some(Forbidden::Private)),
            ("172.31.255.255", Some(Forbidden::Private)),
            ("192.168.1.1", Some(Forbidden::Private)),
            ("100.64.0.1", Some(Forbidden::Private)),
            ("fd00::1", Some(Forbidden::Private)),
            ("fc12::1", Some(Forbidden::Private)),
            ("169.254.169.254", Some(Forbidden::Metadata)),
            ("100.100.100.200", Some(Forbidden::Metadata)),
            ("fd00:ec2::254", Some(Forbidden::Metadata)),
            ("169.254.1.1", Some(Forbidden::LinkLocal)),
            ("fe80::1", Some(Forbidden::LinkLocal)),
            ("::ffff:169.254.169.254", Some(Forbidden::Metadata)),
            ("64:ff9b::a9fe:a9fe", Some(Forbidden::Metadata)),
            ("64:ff9b::a9fe:0101", Some(Forbidden::LinkLocal)),
            ("224.0.0.1", Some(Forbidden::Multicast)),
            ("255.255.255.255", Some(Forbidden::Multicast)),
            ("ff02::1", Some(Forbidden::Multicast)),
            ("0.0.0.0", Some(Forbidden::NotRoutable)),
            ("::", Some(Forbidden::NotRoutable)),
            ("192.0.2.1", Some(Forbidden::NotRoutable)),
            ("198.18.0.1", Some(Forbidden::NotRoutable)),
            ("240.0.0.1", Some(Forbidden::NotRoutable)),
            ("2001:db8::1", Some(Forbidden::NotRoutable)),
            ("8.8.8.8", None),
            ("172.32.0.1", None),
            ("100.128.0.1", None),
            ("2606:4700::1111", None),
            ("::ffff:1.1.1.1", None),
        ];
        for (addr, want) in cases {
            assert_eq!(forbidden(ip(addr)), want, "{addr}");
        }
    }

    #[test]
    fn the_allow_list_flag_lets_private_destinations_through() {
        let strict = Guard::default();
        let open = Guard { allow_private: true };
        assert_eq!(strict.check(ip("127.0.0.1")), Err(Forbidden::Loopback));
        assert_eq!(open.check(ip("127.0.0.1")), Ok(()));
        assert_eq!(open.check(ip("10.0.0.7")), Ok(()));
        assert_eq!(open.check(ip("fe80::1")), Ok(()));
        assert_eq!(strict.check(ip("93.184.216.34")), Ok(()));
        // Never: cloud metadata, multicast, unroutable.
        assert_eq!(open.check(ip("169.254.169.254")), Err(Forbidden::Metadata));
        assert_eq!(open.check(ip("224.0.0.1")), Err(Forbidden::Multicast));
        assert_eq!(open.check(ip("0.0.0.0")), Err(Forbidden::NotRoutable));
    }
}
