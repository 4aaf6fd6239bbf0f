//! Gratuitous ARP: the new holder of an address tells the segment which
//! MAC answers for it, so that clients and the router stop sending to the
//! old holder. Each announcement is sent twice, as an ARP request and as an
//! ARP reply (sender and target both the address), because devices differ
//! in which one they honour (RFC 5944 §4.6; kube-vip does the same).

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `ETH_P_ARP`.
const ETH_P_ARP: u16 = 0x0806;

/// An interface's index and MAC address, read through the kernel's
/// interface list (the calling thread's network namespace).
pub fn link(interface: &str) -> Result<(u32, [u8; 6]), String> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(|e| format!("cannot list the interfaces: {e}"))?;
    for a in addrs.filter(|a| a.interface_name == interface) {
        if let Some(ll) = a.address.as_ref().and_then(|s| s.as_link_addr()) {
            if let Some(mac) = ll.addr() {
                return Ok((ll.ifindex() as u32, mac));
            }
        }
    }
    Err(format!("interface {interface} has no link-layer address"))
}

/// The 28-byte ARP body announcing that `mac` holds `ip`: a request when
/// `reply` is false, else a reply.
pub fn packet(ip: Ipv4Addr, mac: [u8; 6], reply: bool) -> [u8; 28] {
    let mut p = [0u8; 28];
    p[0..2].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    p[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    p[4] = 6;
    p[5] = 4;
    p[6..8].copy_from_slice(&(if reply { 2u16 } else { 1u16 }).to_be_bytes());
    p[8..14].copy_from_slice(&mac);
    p[14..18].copy_from_slice(&ip.octets());
    // The target hardware address: unknown in a request, everyone in a reply.
    p[18..24].copy_from_slice(if reply { &[0xff; 6] } else { &[0; 6] });
    p[24..28].copy_from_slice(&ip.octets());
    p
}

/// A packet socket for ARP on `ifindex`, and the broadcast destination.
fn socket(ifindex: u32) -> Result<(OwnedFd, libc::sockaddr_ll), String> {
    // SAFETY: a plain socket(2) call; the descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, ETH_P_ARP.to_be() as i32) };
    if fd < 0 {
        return Err(format!("cannot open a packet socket: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_protocol = ETH_P_ARP.to_be();
    to.sll_ifindex = ifindex as i32;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    Ok((fd, to))
}

fn send(fd: &OwnedFd, to: &libc::sockaddr_ll, body: &[u8; 28]) -> std::io::Result<()> {
    // SAFETY: body and to outlive the call; the lengths are theirs.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            body.as_ptr().cast(),
            body.len(),
            0,
            std::ptr::from_ref(to).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Sends one announcement (a request, then a reply) of `ip` from
/// `interface` to the broadcast address.
pub fn announce(interface: &str, ip: Ipv4Addr) -> Result<(), String> {
    let (ifindex, mac) = link(interface)?;
    let (fd, to) = socket(ifindex)?;
    for reply in [false, true] {
        send(&fd, &to, &packet(ip, mac, reply)).map_err(|e| format!("cannot send ARP on {interface}: {e}"))?;
    }
    Ok(())
}

/// An ARP probe for `ip` (RFC 5227: sender address 0.0.0.0, so that no
/// neighbour learns anything from it).
pub fn probe_packet(ip: Ipv4Addr, mac: [u8; 6]) -> [u8; 28] {
    let mut p = packet(ip, mac, false);
    p[14..18].copy_from_slice(&[0; 4]);
    p
}

/// Who answers for `ip`, if anyone, in an ARP packet `body`: its sender
/// when the sender's protocol address is `ip`.
pub fn answer_for(body: &[u8], ip: Ipv4Addr) -> Option<[u8; 6]> {
    if body.len() < 28 || body[0..6] != [0, 1, 8, 0, 6, 4] || body[14..18] != ip.octets() {
        return None;
    }
    body[8..14].try_into().ok()
}

/// Whether another host on `interface`'s segment answers for `ip`: three
/// ARP probes 300 ms apart, then 300 ms more. The MAC that answered.
pub fn probe(interface: &str, ip: Ipv4Addr) -> Result<Option<[u8; 6]>, String> {
    let (ifindex, mac) = link(interface)?;
    let (fd, to) = socket(ifindex)?;
    // Only this interface's packets.
    // SAFETY: to is a valid sockaddr_ll of the size given.
    let bound = unsafe {
        libc::bind(fd.as_raw_fd(), std::ptr::from_ref(&to).cast(), std::mem::size_of::<libc::sockaddr_ll>() as u32)
    };
    if bound < 0 {
        return Err(format!("cannot listen for ARP on {interface}: {}", std::io::Error::last_os_error()));
    }
    let wait = libc::timeval { tv_sec: 0, tv_usec: 50_000 };
    // SAFETY: wait is a valid timeval of the size given.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::from_ref(&wait).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    let started = std::time::Instant::now();
    let mut sent = 0;
    let mut buf = [0u8; 64];
    while started.elapsed() < std::time::Duration::from_millis(1200) {
        if sent < 3 && started.elapsed() >= std::time::Duration::from_millis(300 * sent) {
            send(&fd, &to, &probe_packet(ip, mac)).map_err(|e| format!("cannot send ARP on {interface}: {e}"))?;
            sent += 1;
        }
        // SAFETY: buf outlives the call; its length is given.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n > 0 {
            if let Some(from) = answer_for(&buf[..n as usize], ip).filter(|from| *from != mac) {
                return Ok(Some(from));
            }
        }
    }
    Ok(None)
}

/// A MAC address as `ip link` shows it.
pub fn mac_text(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_announcement_names_the_address_as_sender_and_target() {
        let mac = [0x02, 0, 0, 0, 0, 0x11];
        let ip = Ipv4Addr::new(10, 0, 0, 100);
        let req = packet(ip, mac, false);
        assert_eq!(&req[..8], &[0, 1, 8, 0, 6, 4, 0, 1], "Ethernet, IPv4, request");
        assert_eq!(&req[8..14], &mac);
        assert_eq!(&req[14..18], &[10, 0, 0, 100]);
        assert_eq!(&req[18..24], &[0; 6]);
        assert_eq!(&req[24..28], &[10, 0, 0, 100]);
        let rep = packet(ip, mac, true);
        assert_eq!(&rep[6..8], &[0, 2], "a reply");
        assert_eq!(&rep[18..24], &[0xff; 6]);
        assert_eq!(&rep[..6], &req[..6]);
    }

    #[test]
    fn a_probe_says_nothing_of_itself_and_only_the_address_owner_answers() {
        let (ip, mac) = (Ipv4Addr::new(10, 0, 0, 100), [0x02, 0, 0, 0, 0, 0x11]);
        let p = probe_packet(ip, mac);
        assert_eq!(&p[14..18], &[0; 4], "sender address 0.0.0.0");
        assert_eq!(answer_for(&p, ip), None, "our own probe is no answer");
        let owner = [0x02, 0, 0, 0, 0, 0x22];
        let mut reply = packet(ip, owner, true);
        assert_eq!(answer_for(&reply, ip), Some(owner));
        assert_eq!(answer_for(&reply, Ipv4Addr::new(10, 0, 0, 101)), None);
        reply[2] = 0x86;
        assert_eq!(answer_for(&reply, ip), None, "not IPv4 over Ethernet");
        assert_eq!(answer_for(&reply[..20], ip), None, "short");
        assert_eq!(mac_text(owner), "02:00:00:00:00:22");
    }
}
