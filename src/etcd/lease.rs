//! Keeping an etcd lease alive, and knowing when it is lost.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::Client;
use tokio::time::{sleep, timeout, Instant};

/// Every keep-alive call is bounded by this.
const CALL: Duration = Duration::from_secs(5);

/// Keeps `lease` alive until it is lost: etcd answers TTL 0, or no
/// keep-alive succeeded for a whole TTL. A broken stream (a leader change,
/// a member restart) is opened again.
pub async fn keep_alive(mut client: Client, lease: i64, ttl: i64, held: Arc<AtomicBool>) {
    let ttl_span = Duration::from_secs(ttl.max(1) as u64);
    let every = Duration::from_secs_f64((ttl as f64 / 6.0).max(0.2));
    let mut last_ok = Instant::now();
    loop {
        if let Ok(Ok((mut keeper, mut stream))) = timeout(CALL, client.lease_keep_alive(lease)).await {
            loop {
                let answer = async {
                    keeper.keep_alive().await.ok()?;
                    stream.message().await.ok().flatten()
                };
                match timeout(CALL, answer).await {
                    Ok(Some(resp)) if resp.ttl() > 0 => last_ok = Instant::now(),
                    Ok(Some(_)) => {
                        held.store(false, Ordering::SeqCst);
                        return;
                    }
                    _ => break,
                }
                if last_ok.elapsed() >= ttl_span {
                    break;
                }
                sleep(every).await;
            }
        }
        if last_ok.elapsed() >= ttl_span {
            held.store(false, Ordering::SeqCst);
            return;
        }
        sleep(Duration::from_millis(500)).await;
    }
}
