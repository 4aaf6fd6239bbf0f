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
    let iface = default_route_interface(&table)
        .ok_or("this host has no default route, so its address cannot be chosen: pass --advertise-address")?;
    let ip = interface_ipv4(&iface)
        .ok_or_else(|| format!("interface {iface} (default route) has no IPv4 address: pass --advertise-address"))?;
    Ok(IpAddr::V4(ip))
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
}
