//! What the node's own etcd member says of itself on its metrics listener
//! (`--listen-metrics-urls`, plain HTTP on loopback): its database against
//! its quota, the leader changes it saw, and how long its WAL takes to
//! reach the disk, the figure etcd's own tuning guide watches first.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The few of etcd's series hakube reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EtcdMetrics {
    pub db_size_bytes: Option<f64>,
    pub quota_bytes: Option<f64>,
    pub leader_changes: Option<f64>,
    pub has_leader: Option<bool>,
    /// The WAL fsync histogram: `(le, cumulative count)`, ascending.
    pub fsync_buckets: Vec<(f64, f64)>,
}

impl EtcdMetrics {
    /// Reads Prometheus text; lines it does not know are skipped.
    pub fn parse(text: &str) -> EtcdMetrics {
        let mut m = EtcdMetrics::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            let Ok(value) = value.parse::<f64>() else { continue };
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (n, l.trim_end_matches('}')),
                None => (series, ""),
            };
            match name {
                "etcd_mvcc_db_total_size_in_bytes" => m.db_size_bytes = Some(value),
                "etcd_server_quota_backend_bytes" => m.quota_bytes = Some(value),
                "etcd_server_leader_changes_seen_total" => m.leader_changes = Some(value),
                "etcd_server_has_leader" => m.has_leader = Some(value == 1.0),
                "etcd_disk_wal_fsync_duration_seconds_bucket" => {
                    let le = labels
                        .split(',')
                        .find_map(|kv| kv.trim().strip_prefix("le=\""))
                        .map(|v| v.trim_end_matches('"'));
                    let le = match le {
                        Some("+Inf") => f64::INFINITY,
                        Some(v) => match v.parse() {
                            Ok(v) => v,
                            Err(_) => continue,
                        },
                        None => continue,
                    };
                    m.fsync_buckets.push((le, value));
                }
                _ => {}
            }
        }
        m.fsync_buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        m
    }

    /// The upper bound of the bucket holding the `q` quantile of WAL fsyncs
    /// (as `histogram_quantile` would bound it): None before any fsync.
    pub fn fsync_quantile(&self, q: f64) -> Option<f64> {
        let total = self.fsync_buckets.last()?.1;
        if total <= 0.0 {
            return None;
        }
        self.fsync_buckets.iter().find(|(_, n)| *n >= q * total).map(|(le, _)| *le)
    }
}

/// `GET http://addr/metrics`, bounded in time and size.
pub async fn fetch(addr: std::net::SocketAddr, limit: Duration) -> Result<EtcdMetrics, String> {
    let body = tokio::time::timeout(limit, http_get(addr, "/metrics", 8 << 20))
        .await
        .map_err(|_| format!("etcd's metrics at {addr} did not answer within {limit:?}"))??;
    Ok(EtcdMetrics::parse(&body))
}

/// One HTTP/1.0 GET (the server closes the connection after the body, so
/// there is no chunking to undo); the body of a 200, else why not.
pub async fn http_get(addr: std::net::SocketAddr, path: &str, max: u64) -> Result<String, String> {
    let mut s = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("{addr}: {e}"))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    let mut buf = Vec::new();
    (&mut s).take(max).read_to_end(&mut buf).await.map_err(|e| format!("{addr}: {e}"))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("{addr}{path}: not an HTTP answer"))?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Err(format!("{addr}{path} answered {status}"));
    }
    Ok(body.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"# HELP etcd_mvcc_db_total_size_in_bytes Total size of the underlying database physically allocated in bytes.
# TYPE etcd_mvcc_db_total_size_in_bytes gauge
etcd_mvcc_db_total_size_in_bytes 2.4576e+06
etcd_server_quota_backend_bytes 2.147483648e+09
etcd_server_leader_changes_seen_total 3
etcd_server_has_leader 1
etcd_disk_wal_fsync_duration_seconds_bucket{le="0.001"} 10
etcd_disk_wal_fsync_duration_seconds_bucket{le="0.002"} 90
etcd_disk_wal_fsync_duration_seconds_bucket{le="0.004"} 99
etcd_disk_wal_fsync_duration_seconds_bucket{le="0.008"} 100
etcd_disk_wal_fsync_duration_seconds_bucket{le="+Inf"} 100
etcd_disk_wal_fsync_duration_seconds_sum 0.2
etcd_disk_wal_fsync_duration_seconds_count 100
"#;

    #[test]
    fn reads_the_series_it_knows() {
        let m = EtcdMetrics::parse(SAMPLE);
        assert_eq!(m.db_size_bytes, Some(2_457_600.0));
        assert_eq!(m.quota_bytes, Some(2_147_483_648.0));
        assert_eq!(m.leader_changes, Some(3.0));
        assert_eq!(m.has_leader, Some(true));
        assert_eq!(m.fsync_buckets.len(), 5);
        assert_eq!(m.fsync_quantile(0.5), Some(0.002));
        assert_eq!(m.fsync_quantile(0.99), Some(0.004));
        assert_eq!(m.fsync_quantile(1.0), Some(0.008));
    }

    #[test]
    fn no_fsync_yet_has_no_quantile() {
        let m = EtcdMetrics::parse("etcd_disk_wal_fsync_duration_seconds_bucket{le=\"+Inf\"} 0\n");
        assert_eq!(m.fsync_quantile(0.99), None);
        assert_eq!(EtcdMetrics::parse("garbage\n{}\n").fsync_quantile(0.99), None);
    }
}
