//! This host's identity when the user gives none: its hostname, and the
//! address of the interface that carries the default route (as kubeadm
//! chooses it), read from the kernel without sending anything.

use std::net::{IpAddr, Ipv4Addr};

/// The interface of the IPv4 default route, from `/proc/net/route`.
fn default_route_interface(table: &str) -> Option<String> {
    table.lines().skip(1).find_map(|line| {
        let f: Vec<_> = line.split_whitespace().collect();
        (f.len() > 2 && f[1] == "00000000").then(|| f[0].to_owned())
    })
}

fn interface_ipv4(name: &str) -> Option<Ipv4Addr> {
    nix::ifaddrs::getifaddrs().ok()?.find_map(|ifa| {
        if ifa.interface_name != name {
            return None;
        }
        ifa.address?.as_sockaddr_in().map(|a| a.ip())
    })
}

pub fn detect_name() -> Result<String, String> {
    Ok(nix::unistd::gethostname()
        .map_err(|e| format!("cannot read the hostname ({e}): pass --node-name"))?
        .to_string_lossy()
        .to_ascii_lowercase())
}

pub fn detect_address() -> Result<IpAddr, String> {
    let table = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    let Some(iface) = default_route_interface(&table) else {
        return Err(no_route_message(&candidates()));
    };
    let ip = interface_ipv4(&iface).ok_or_else(|| {
        format!("interface {iface} (default route) has no IPv4 address: pass advertise-address=IP (or --advertise-address IP)")
    })?;
    Ok(IpAddr::V4(ip))
}

/// This host's IPv4 addresses other than loopback, with their interfaces.
fn candidates() -> Vec<(String, Ipv4Addr)> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else { return vec![] };
    let mut v: Vec<_> = addrs
        .filter_map(|ifa| Some((ifa.interface_name.clone(), ifa.address?.as_sockaddr_in()?.ip())))
        .filter(|(_, ip)| !ip.is_loopback())
        .collect();
    v.sort();
    v.dedup();
    v
}

/// No default route, as on a host with no way out (an airgap install): the
/// address the other nodes reach this one on cannot be guessed, so the
/// message names the host's addresses to choose from.
fn no_route_message(candidates: &[(String, Ipv4Addr)]) -> String {
    let mut m = "this host has no default route (as on a host with no way out), so hakube cannot choose the \
                 address other nodes reach it on: pass advertise-address=IP (or --advertise-address IP)"
        .to_owned();
    if candidates.is_empty() {
        m.push_str("; it has no IPv4 address but loopback: configure its network first");
    } else {
        let list: Vec<String> = candidates.iter().map(|(i, ip)| format!("{ip} ({i})")).collect();
        m.push_str(&format!(" with one of its addresses: {}", list.join(", ")));
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_default_route_interface() {
        let table = "Iface\tDestination\tGateway\tFlags\n\
                     eth1\t0000A8C0\t00000000\t0001\n\
                     eth0\t00000000\t0100A8C0\t0003\n";
        assert_eq!(default_route_interface(table).as_deref(), Some("eth0"));
        assert_eq!(default_route_interface("Iface\tDestination\n"), None);
    }

    #[test]
    fn no_default_route_names_the_fix_and_the_addresses_to_choose_from() {
        let m = no_route_message(&[
            ("eth0".into(), Ipv4Addr::new(10, 0, 0, 5)),
            ("eth1".into(), Ipv4Addr::new(192, 168, 1, 2)),
        ]);
        assert!(m.contains("no default route") && m.contains("advertise-address=IP"), "{m}");
        assert!(m.ends_with("one of its addresses: 10.0.0.5 (eth0), 192.168.1.2 (eth1)"), "{m}");
        let m = no_route_message(&[]);
        assert!(m.contains("no IPv4 address but loopback"), "{m}");
    }
}
