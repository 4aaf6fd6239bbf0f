//! A small HTTPS load client for `scripts/bench-lb.sh`: `GET PATH` over
//! keep-alive HTTP/1.1 connections, verified against a CA, spread over the
//! targets given, for a fixed time. Prints one JSON line: requests, failures,
//! throughput, latency percentiles, and, after the moment written to
//! `--mark FILE` (unix milliseconds, by whoever injects a fault), the
//! failures and the longest time without a successful response.
//!
//!   lb_load --ca ca.crt --target 127.0.0.1:6444 [--target …] [--connections 8]
//!           [--seconds 10] [--path /readyz] [--timeout-ms 5000] [--mark FILE]
//!           [--until-file FILE]   (stop early once FILE exists)

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

struct Args {
    ca: String,
    targets: Vec<String>,
    connections: usize,
    seconds: u64,
    path: String,
    timeout: Duration,
    mark: Option<String>,
    until_file: Option<String>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        ca: String::new(),
        targets: vec![],
        connections: 8,
        seconds: 10,
        path: "/readyz".into(),
        timeout: Duration::from_secs(5),
        mark: None,
        until_file: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().ok_or_else(|| format!("{k} needs a value"));
        let num = |s: String| s.parse::<u64>().map_err(|e| format!("{k}: {e}"));
        match k.as_str() {
            "--ca" => a.ca = v()?,
            "--target" => a.targets.push(v()?),
            "--connections" => a.connections = num(v()?)? as usize,
            "--seconds" => a.seconds = num(v()?)?,
            "--path" => a.path = v()?,
            "--timeout-ms" => a.timeout = Duration::from_millis(num(v()?)?),
            "--mark" => a.mark = Some(v()?),
            "--until-file" => a.until_file = Some(v()?),
            _ => return Err(format!("unknown argument {k}")),
        }
    }
    if a.ca.is_empty() || a.targets.is_empty() || a.connections == 0 {
        return Err("usage: lb_load --ca FILE --target HOST:PORT [--target …] [--connections N] [--seconds S] \
                    [--path P] [--timeout-ms MS] [--mark FILE]"
            .into());
    }
    Ok(a)
}

/// One outcome: when it completed (unix ms), how long it took, whether it
/// succeeded.
type Sample = (u64, u32, bool);

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(target: &str, tls: Arc<rustls::ClientConfig>) -> Result<Sender, String> {
    let hp: hakube::config::HostPort = target.parse().map_err(|e| format!("{target}: {e}"))?;
    let name = hakube::https::server_name(&hp.host).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(hakube::https::target(&hp)).await.map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let stream = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await.map_err(|e| e.to_string())?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn worker(
    target: String,
    path: String,
    tls: Arc<rustls::ClientConfig>,
    until: Instant,
    until_file: Option<String>,
    limit: Duration,
) -> Vec<Sample> {
    let mut out = vec![];
    let mut sender: Option<Sender> = None;
    let mut polled = Instant::now();
    while Instant::now() < until {
        if let Some(f) = until_file.as_deref().filter(|_| polled.elapsed() > Duration::from_millis(200)) {
            polled = Instant::now();
            if std::path::Path::new(f).exists() {
                break;
            }
        }
        let t0 = Instant::now();
        let result = tokio::time::timeout(limit, async {
            if sender.as_ref().is_none_or(|s| s.is_closed()) {
                sender = Some(connect(&target, tls.clone()).await?);
            }
            let s = sender.as_mut().expect("connected");
            s.ready().await.map_err(|e| e.to_string())?;
            let req = hyper::Request::get(path.as_str())
                .header("host", target.as_str())
                .body(Empty::<Bytes>::new())
                .map_err(|e| e.to_string())?;
            let resp = s.send_request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            resp.into_body().collect().await.map_err(|e| e.to_string())?;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("status {status}"))
            }
        })
        .await
        .unwrap_or_else(|_| Err("timed out".into()));
        let ok = result.is_ok();
        if !ok {
            sender = None;
        }
        out.push((unix_ms(), t0.elapsed().as_micros().min(u32::MAX as u128) as u32, ok));
        if !ok {
            // A refused connection fails at once: do not spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    out
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("lb_load: {e}");
            std::process::exit(2);
        }
    };
    let ca = std::fs::read(&args.ca).unwrap_or_else(|e| panic!("{}: {e}", args.ca));
    let tls = Arc::new(hakube::https::client_config(&ca, None).expect("CA"));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let started_ms = unix_ms();
    let until = Instant::now() + Duration::from_secs(args.seconds);
    let samples: Vec<Sample> = rt.block_on(async {
        let tasks: Vec<_> = (0..args.connections)
            .map(|i| {
                let target = args.targets[i % args.targets.len()].clone();
                tokio::spawn(worker(
                    target,
                    args.path.clone(),
                    tls.clone(),
                    until,
                    args.until_file.clone(),
                    args.timeout,
                ))
            })
            .collect();
        let mut all = vec![];
        for t in tasks {
            all.extend(t.await.expect("worker"));
        }
        all
    });
    let elapsed_s = (unix_ms() - started_ms) as f64 / 1000.0;
    let mut ok_lat: Vec<u32> = samples.iter().filter(|s| s.2).map(|s| s.1).collect();
    ok_lat.sort_unstable();
    let failed = samples.iter().filter(|s| !s.2).count();
    let mark: Option<u64> =
        args.mark.as_ref().and_then(|f| std::fs::read_to_string(f).ok()).and_then(|s| s.trim().parse().ok());
    let (after_failed, longest_gap_ms) = match mark {
        Some(m) => {
            let mut oks: Vec<u64> = samples.iter().filter(|s| s.2 && s.0 >= m).map(|s| s.0).collect();
            oks.sort_unstable();
            let mut prev = m;
            let mut gap = 0;
            for t in oks {
                gap = gap.max(t - prev);
                prev = t;
            }
            (samples.iter().filter(|s| !s.2 && s.0 >= m).count(), Some(gap))
        }
        None => (0, None),
    };
    let json = serde_json::json!({
        "requests": samples.len(),
        "failed": failed,
        "rps": (samples.len() - failed) as f64 / elapsed_s,
        "p50_us": percentile(&ok_lat, 0.50),
        "p99_us": percentile(&ok_lat, 0.99),
        "failed_after_mark": after_failed,
        "longest_gap_after_mark_ms": longest_gap_ms,
    });
    println!("{json}");
}
