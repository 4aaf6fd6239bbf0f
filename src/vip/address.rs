//! The floating address on this host's interface, through iproute2 (which
//! the agent already runs for the pod network's routes): added /32 with a
//! short valid lifetime that the holder refreshes, so that the kernel
//! drops it by itself when the agent stops refreshing (hung, killed), and a
//! preferred lifetime of 0, so that the host never picks it as the source
//! of its own connections.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;

fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("cannot run ip: {e}"))?;
    if !out.status.success() {
        return Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// An interface address: the interface, the address and its prefix length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assigned {
    pub interface: String,
    pub address: Ipv4Addr,
    pub prefix: u8,
}

/// Every IPv4 address of this host (the calling thread's network namespace).
pub fn assigned() -> Result<Vec<Assigned>, String> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(|e| format!("cannot list the interfaces' addresses: {e}"))?;
    Ok(addrs
        .filter_map(|a| {
            let address = a.address.as_ref()?.as_sockaddr_in()?.ip();
            let mask = a.netmask.as_ref()?.as_sockaddr_in()?.ip();
            Some(Assigned { interface: a.interface_name, address, prefix: u32::from(mask).count_ones() as u8 })
        })
        .collect())
}

/// The interface that holds `local` (the node's advertise address), with
/// that address's prefix: where the floating address goes.
pub fn home(local: IpAddr, all: &[Assigned]) -> Result<Assigned, String> {
    let IpAddr::V4(local) = local else {
        return Err(format!("the advertise address {local} is IPv6: the virtual IP is IPv4 only"));
    };
    all.iter()
        .find(|a| a.address == local && a.prefix < 32)
        .cloned()
        .ok_or_else(|| format!("no interface of this host holds the advertise address {local} with a subnet"))
}

/// Whether `vip` lies in `home`'s subnet (and is neither its network nor
/// its broadcast address).
pub fn in_subnet(vip: Ipv4Addr, home: &Assigned) -> bool {
    if home.prefix == 0 || home.prefix >= 31 {
        return false;
    }
    let mask = u32::MAX << (32 - u32::from(home.prefix));
    let (v, h) = (u32::from(vip), u32::from(home.address));
    v & mask == h & mask && v & !mask != 0 && v & !mask != !mask
}

/// Adds `vip`/32 on `interface`, or refreshes its lifetime when it is there.
pub fn hold(interface: &str, vip: Ipv4Addr, valid_secs: u32) -> Result<(), String> {
    let cidr = format!("{vip}/32");
    let valid = valid_secs.to_string();
    ip(&["address", "replace", &cidr, "dev", interface, "valid_lft", &valid, "preferred_lft", "0"]).map(drop)
}

/// Removes `vip` from every interface that has it (a holder stepping down,
/// or a copy a previous run left). Returns the interfaces it was on.
pub fn release(vip: Ipv4Addr) -> Result<Vec<String>, String> {
    let mut from = vec![];
    for a in assigned()?.into_iter().filter(|a| a.address == vip) {
        let cidr = format!("{vip}/{}", a.prefix);
        match ip(&["address", "del", &cidr, "dev", &a.interface]) {
            Ok(_) => from.push(a.interface),
            // Gone meanwhile (its lifetime ran out): what was wanted.
            Err(e) if e.contains("Cannot assign requested address") => {}
            Err(e) => return Err(e),
        }
    }
    Ok(from)
}

/// Whether this host has `vip` on any interface.
pub fn present(vip: Ipv4Addr) -> bool {
    assigned().is_ok_and(|all| all.iter().any(|a| a.address == vip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(interface: &str, address: [u8; 4], prefix: u8) -> Assigned {
        Assigned { interface: interface.into(), address: address.into(), prefix }
    }

    #[test]
    fn the_home_is_the_interface_of_the_advertise_address() {
        let all = [a("lo", [127, 0, 0, 1], 8), a("eth0", [10, 0, 0, 11], 24), a("eth0", [10, 0, 0, 100], 32)];
        assert_eq!(home("10.0.0.11".parse().unwrap(), &all), Ok(all[1].clone()));
        let err = home("10.0.0.12".parse().unwrap(), &all).unwrap_err();
        assert!(err.contains("no interface of this host holds the advertise address 10.0.0.12"), "{err}");
        assert!(home("10.0.0.100".parse().unwrap(), &all).is_err(), "a /32 (another floating address) is no home");
        assert!(home("fd00::1".parse().unwrap(), &all).unwrap_err().contains("IPv4 only"));
    }

    #[test]
    fn the_address_must_be_a_host_of_the_home_subnet() {
        let home = a("eth0", [10, 0, 0, 11], 24);
        assert!(in_subnet([10, 0, 0, 100].into(), &home));
        assert!(!in_subnet([10, 0, 1, 100].into(), &home), "another subnet");
        assert!(!in_subnet([10, 0, 0, 0].into(), &home), "the network address");
        assert!(!in_subnet([10, 0, 0, 255].into(), &home), "the broadcast address");
        assert!(!in_subnet([10, 0, 0, 5].into(), &a("eth0", [10, 0, 0, 4], 31)), "a point-to-point link");
    }
}
