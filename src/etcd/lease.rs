//! Keeping an etcd lease alive, and knowing when it is lost: before etcd
//! can have let it go.

use std::time::Duration;

use etcd_client::Client;
use tokio::sync::watch;
use tokio::time::{sleep, timeout, Instant};

/// Every keep-alive call is bounded by this.
const CALL: Duration = Duration::from_secs(5);

/// When the holder of a lease stops counting on it: a whole TTL after the
/// last keep-alive etcd answered was *sent* (etcd renewed it on receipt,
/// later, so it expires no sooner), less `margin`.
pub fn fence(last_sent: Instant, ttl: Duration, margin: Duration) -> Instant {
    last_sent + ttl.saturating_sub(margin)
}

/// The margin for clocks that run at slightly different rates and for the
/// check's own lateness: a tenth of the TTL, at least 500 ms, never more
/// than half of it.
pub fn default_margin(ttl: Duration) -> Duration {
    (ttl / 10).max(Duration::from_millis(500)).min(ttl / 2)
}

/// Whether a lease is still held, as its keeper judges it. Cloned freely;
/// once lost it stays lost.
#[derive(Clone, Debug)]
pub struct Held(watch::Receiver<bool>);

impl Held {
    pub fn is_held(&self) -> bool {
        // A keeper that is gone (aborted) keeps nothing alive.
        *self.0.borrow() && self.0.has_changed().is_ok()
    }

    /// Waits until the keeper finds the lease lost (at once if it has).
    /// A keeper its holder aborted (letting the term go itself) is no loss
    /// to react to: this then never returns, and [`Self::is_held`] says
    /// false.
    pub async fn lost(&mut self) {
        if self.0.wait_for(|held| !held).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Waits until `held` (a term's lease, when there is one) is lost; never
/// returns without one: the arm of a `select!` beside the holder's round.
pub async fn lost(held: Option<&mut Held>) {
    match held {
        Some(h) => h.lost().await,
        None => std::future::pending().await,
    }
}

/// Keeps `lease` (granted with `ttl` seconds by a request sent at
/// `granted`) alive until it is lost: etcd answers TTL 0, or the fence
/// (with [`default_margin`]) passes with no keep-alive answered. A broken stream (a leader change, a
/// member restart) is opened again. Every wait is bounded by the fence, so
/// the holder learns of the loss before etcd can expire the lease, however
/// a call hangs.
pub fn keep_alive(client: Client, lease: i64, ttl: i64, granted: Instant) -> (tokio::task::JoinHandle<()>, Held) {
    let margin = default_margin(Duration::from_secs(ttl.max(1) as u64));
    keep_alive_fenced(client, lease, ttl, granted, margin)
}

/// As [`keep_alive`], with the fence `margin` before the TTL, and a
/// keep-alive every sixth of the TTL.
pub fn keep_alive_fenced(
    client: Client,
    lease: i64,
    ttl: i64,
    granted: Instant,
    margin: Duration,
) -> (tokio::task::JoinHandle<()>, Held) {
    let (tx, rx) = watch::channel(true);
    let keeper = tokio::spawn(async move {
        keep(client, lease, ttl, granted, margin).await;
        tx.send_replace(false);
    });
    (keeper, Held(rx))
}

async fn keep(mut client: Client, lease: i64, ttl: i64, granted: Instant, margin: Duration) {
    let ttl_span = Duration::from_secs(ttl.max(1) as u64);
    let every = Duration::from_secs_f64((ttl as f64 / 6.0).max(0.2));
    let mut last_sent = granted;
    // The time left before the fence, if any.
    let left = |last_sent: Instant| fence(last_sent, ttl_span, margin).checked_duration_since(Instant::now());
    loop {
        let Some(rest) = left(last_sent) else { return };
        if let Ok(Ok((mut keeper, mut stream))) = timeout(rest.min(CALL), client.lease_keep_alive(lease)).await {
            loop {
                let Some(rest) = left(last_sent) else { return };
                let sent = Instant::now();
                let answer = async {
                    keeper.keep_alive().await.ok()?;
                    stream.message().await.ok().flatten()
                };
                match timeout(rest.min(CALL), answer).await {
                    Ok(Some(resp)) if resp.ttl() > 0 => last_sent = sent,
                    Ok(Some(_)) => return,
                    _ => break,
                }
                let Some(rest) = left(last_sent) else { return };
                sleep(every.min(rest)).await;
            }
        }
        let Some(rest) = left(last_sent) else { return };
        sleep(Duration::from_millis(500).min(rest)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fence_falls_before_etcd_could_expire_the_lease() {
        let t = Instant::now();
        let s = Duration::from_secs(1);
        let d = |ttl| fence(t, ttl, default_margin(ttl));
        assert_eq!(d(10 * s), t + 9 * s, "a tenth of a 10 s lease");
        assert_eq!(d(2 * s), t + 2 * s - Duration::from_millis(500), "at least 500 ms");
        assert_eq!(d(s), t + Duration::from_millis(500), "at most half");
        for ttl in 1..=120 {
            let ttl = Duration::from_secs(ttl);
            assert!(d(ttl) < t + ttl && d(ttl) >= t + ttl / 2, "{ttl:?}");
        }
        assert_eq!(fence(t, 5 * s, 2 * s), t + 3 * s, "a margin of its own");
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_lease_wakes_its_holder_but_an_aborted_keeper_does_not() {
        // The keeper found it lost: the holder hears it at once.
        let (tx, rx) = watch::channel(true);
        let mut held = Held(rx);
        assert!(held.is_held());
        tx.send_replace(false);
        tokio::time::timeout(Duration::from_secs(1), held.lost()).await.expect("woken");
        assert!(!held.is_held());

        // The holder aborted the keeper itself (it let the term go, and may
        // be revoking the lease right now): nothing to wake for, and the
        // lease counts as gone.
        let (tx, rx) = watch::channel(true);
        let mut held = Held(rx);
        drop(tx);
        assert!(tokio::time::timeout(Duration::from_secs(3600), held.lost()).await.is_err(), "no wake-up");
        assert!(!held.is_held());
    }
}
