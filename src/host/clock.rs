//! Wall-clock time as the cluster records it (seconds since the epoch), and
//! how far one host's clock is from another's.
//!
//! Nothing in hakube judges a node by another host's clock (the purge times
//! nodes on the leader's monotonic clock), but etcd, certificates, tokens and
//! Leases assume the nodes agree on the time. Each node measures its offset
//! from a master's clock the way NTP does, from one request's send and
//! receive times and the time the master put in its answer, and reports it
//! with its heartbeat; `hakube status` warns when it is large.

pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// `2026-11-21T14:40:00Z`
pub fn rfc3339(unix: u64) -> String {
    let t = i64::try_from(unix)
        .ok()
        .and_then(|u| time::OffsetDateTime::from_unix_timestamp(u).ok())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339).expect("a time after the epoch formats")
}

/// Milliseconds since the epoch.
pub fn now_millis() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// An offset at least this large (either way) is worth a warning: etcd's
/// own peers warn above 1 s of drift.
pub const SKEW_WARN_MS: i64 = 1000;

/// A round trip longer than this says too little about the offset.
const MAX_ROUND_TRIP_MS: u64 = 2000;

/// This host's clock minus the peer's, from a request sent at `sent`, an
/// answer stamped `peer` by the peer and received at `received` (all in
/// milliseconds of each one's wall clock): the peer stamped it halfway, give
/// or take half the round trip. None when the round trip was too long (or
/// this clock stepped backwards meanwhile) to say.
pub fn offset_ms(sent: u64, peer: u64, received: u64) -> Option<i64> {
    let round_trip = received.checked_sub(sent)?;
    if round_trip > MAX_ROUND_TRIP_MS {
        return None;
    }
    let midpoint = sent + round_trip / 2;
    Some(midpoint as i64 - peer as i64)
}

/// What `status` says of a node whose clock is `offset` ms from the
/// masters', when that is worth saying.
pub fn describe_offset(offset: i64) -> Option<String> {
    if offset.abs() < SKEW_WARN_MS {
        return None;
    }
    let way = if offset > 0 { "ahead of" } else { "behind" };
    Some(format!(
        "clock {:.1}s {way} the masters' (etcd, certificates and Leases need synchronized clocks: run chrony or \
         systemd-timesyncd on every node)",
        offset.unsigned_abs() as f64 / 1000.0
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offset_is_taken_at_the_midpoint_of_the_round_trip() {
        // Sent at 10 000, the peer stamped 7 040, back at 10 080: this clock
        // is 3 s ahead.
        assert_eq!(offset_ms(10_000, 7_040, 10_080), Some(3_000));
        assert_eq!(offset_ms(10_000, 13_050, 10_100), Some(-3_000));
        assert_eq!(offset_ms(10_000, 10_000, 10_000), Some(0));
        assert_eq!(offset_ms(10_000, 9_000, 12_001), None, "a 2 s round trip says too little");
        assert_eq!(offset_ms(10_000, 9_000, 9_999), None, "the clock stepped back meanwhile");
    }

    #[test]
    fn only_an_offset_that_matters_is_reported() {
        assert_eq!(describe_offset(999), None);
        assert_eq!(describe_offset(-999), None);
        let ahead = describe_offset(3_250).unwrap();
        assert!(
            ahead.starts_with("clock 3.2s ahead of the masters'") || ahead.starts_with("clock 3.3s ahead"),
            "{ahead}"
        );
        assert!(describe_offset(-1_000).unwrap().starts_with("clock 1.0s behind the masters'"));
    }
}
