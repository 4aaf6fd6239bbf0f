//! How fast hakube brings up a healthy, mTLS-secured etcd compared with doing
//! the same job the kubeadm way from a shell.
//!
//! Each trial measures, each run in a network namespace of its own so that
//! ports never clash:
//!   (a) hakube install --components etcd --no-systemd, from start to return
//!       (it returns once etcd is healthy), then checks etcd with etcdctl and
//!       records the agent's resident memory after 2 s idle;
//!   (b) the shell baseline: an RSA-2048 PKI with kubeadm's file names made
//!       with the openssl CLI (one process per step, as a script does), then
//!       etcd started with the same mTLS flags and polled with
//!       `etcdctl endpoint health` every 0.1 s until healthy;
//!   (c) the PKI alone: `hakube certs generate` (ECDSA P-256, then RSA-2048)
//!       against the openssl PKI of (b).
//! (a) and (b) alternate which runs first from one trial to the next. Goals:
//! install at most half the baseline's time; an idle agent under 20 MiB.

use std::fs::{self, File};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{median, ratio, secs};
use crate::proc::{self, bounded, in_ns, msg};

const HEALTH_TIMEOUT: Duration = Duration::from_secs(60);
const INSTALL_TIMEOUT: Duration = Duration::from_secs(300);
const IDLE: Duration = Duration::from_secs(2);
const NODE: &str = "bench";

#[derive(clap::Args)]
pub struct Args {
    /// Trials per measure.
    #[arg(long, env = "BENCH_TRIALS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    trials: u32,
}

/// A namespace with only its loopback, stopped and deleted when dropped.
struct Ns(String);

impl Ns {
    fn new(name: String) -> Result<Ns> {
        proc::ns(proc::netns::loopback(&name))?;
        Ok(Ns(name))
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        proc::netns::stop(&self.0, false);
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn openssl(args: &[&str]) -> Result<()> {
    let mut cmd = Command::new("openssl");
    cmd.args(args).stdout(Stdio::null());
    proc::output(cmd, &format!("openssl {}", args.first().unwrap_or(&""))).map(drop)
}

fn rsa_key(path: &str) -> Result<()> {
    openssl(&["genpkey", "-quiet", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", path])?;
    fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok(())
}

/// kubeadm's control-plane PKI with the openssl CLI, RSA-2048 throughout.
fn openssl_pki(dir: &Path) -> Result<()> {
    let d = |name: &str| dir.join(name).display().to_string();
    fs::create_dir_all(dir.join("etcd"))?;
    let ca = |name: &str, cn: &str| -> Result<()> {
        rsa_key(&d(&format!("{name}.key")))?;
        openssl(&[
            "req",
            "-x509",
            "-new",
            "-key",
            &d(&format!("{name}.key")),
            "-sha256",
            "-days",
            "3650",
            "-subj",
            &format!("/CN={cn}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign",
            "-out",
            &d(&format!("{name}.crt")),
        ])
    };
    let leaf = |name: &str, ca: &str, cn: &str, org: &str, eku: &str, san: &str| -> Result<()> {
        let subj = if org.is_empty() { format!("/CN={cn}") } else { format!("/O={org}/CN={cn}") };
        let ext = d(&format!("{name}.ext"));
        let mut text = format!(
            "basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature, keyEncipherment\nextendedKeyUsage = {eku}\n"
        );
        if !san.is_empty() {
            text += &format!("subjectAltName = {san}\n");
        }
        fs::write(&ext, text)?;
        let (key, csr, crt) = (d(&format!("{name}.key")), d(&format!("{name}.csr")), d(&format!("{name}.crt")));
        rsa_key(&key)?;
        openssl(&["req", "-new", "-key", &key, "-subj", &subj, "-out", &csr])?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &d(&format!("{ca}.crt")),
            "-CAkey",
            &d(&format!("{ca}.key")),
            "-CAcreateserial",
            "-CAserial",
            &d(&format!("{ca}.srl")),
            "-days",
            "365",
            "-sha256",
            "-extfile",
            &ext,
            "-out",
            &crt,
        ])?;
        fs::remove_file(csr)?;
        fs::remove_file(ext)?;
        Ok(())
    };
    let san = format!("DNS:{NODE},DNS:localhost,IP:127.0.0.1");
    let api_san = format!("{san},DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:10.96.0.1");
    let (server, client, both) = ("serverAuth", "clientAuth", "serverAuth, clientAuth");
    ca("ca", "kubernetes")?;
    leaf("apiserver", "ca", "kube-apiserver", "", server, &api_san)?;
    leaf("apiserver-kubelet-client", "ca", "kube-apiserver-kubelet-client", "system:masters", client, "")?;
    ca("front-proxy-ca", "front-proxy-ca")?;
    leaf("front-proxy-client", "front-proxy-ca", "front-proxy-client", "", client, "")?;
    ca("etcd/ca", "etcd-ca")?;
    leaf("etcd/server", "etcd/ca", NODE, "", both, &san)?;
    leaf("etcd/peer", "etcd/ca", NODE, "", both, &san)?;
    leaf("etcd/healthcheck-client", "etcd/ca", "kube-etcd-healthcheck-client", "", client, "")?;
    leaf("apiserver-etcd-client", "etcd/ca", "kube-apiserver-etcd-client", "", client, "")?;
    rsa_key(&d("sa.key"))?;
    openssl(&["pkey", "-in", &d("sa.key"), "-pubout", "-out", &d("sa.pub")])
}

fn etcd_healthy(ns: &str, pki: &Path) -> bool {
    let mut cmd = in_ns(ns, "etcdctl");
    cmd.args(["--endpoints", "https://127.0.0.1:2379", "--dial-timeout", "2s", "--command-timeout", "5s"]);
    cmd.arg("--cacert").arg(pki.join("etcd/ca.crt")).arg("--cert").arg(pki.join("etcd/healthcheck-client.crt"));
    cmd.arg("--key").arg(pki.join("etcd/healthcheck-client.key")).args(["endpoint", "health"]).env("ETCDCTL_API", "3");
    cmd.output().is_ok_and(|o| o.status.success())
}

/// (a): seconds to a healthy etcd, and the idle agent's RSS in MiB.
fn hakube_install(work: &Path, bin: &Path, trial: u32) -> Result<(f64, f64)> {
    let ns = Ns::new(format!("hk-bench-{}-{trial}-hakube", std::process::id()))?;
    let root = work.join(format!("{trial}-hakube"));
    fs::create_dir_all(&root)?;
    let hakube = |args: &[&str], log: &str| -> Result<Command> {
        let mut cmd = in_ns(&ns.0, bin);
        cmd.arg("--root").arg(&root).args(args);
        // The agent keeps the install log open: later steps log elsewhere.
        proc::to_log(bounded(INSTALL_TIMEOUT, cmd), &work.join(format!("{trial}-hakube-{log}.log")))
    };
    let t0 = Instant::now();
    let install = hakube(
        &["install", "--advertise-address", "127.0.0.1", "--node-name", NODE, "--components", "etcd", "--no-systemd"],
        "install",
    )?;
    let installed = proc::run(install, &format!("hakube install (trial {trial})"));
    let took = t0.elapsed().as_secs_f64();
    let measured = installed.and_then(|()| {
        anyhow::ensure!(
            etcd_healthy(&ns.0, &root.join("var/lib/hakube/pki")),
            "etcdctl endpoint health after hakube install (trial {trial})"
        );
        std::thread::sleep(IDLE);
        let pid = fs::read_to_string(root.join("var/lib/hakube/agent.pid"))?;
        let status = fs::read_to_string(format!("/proc/{}/status", pid.trim()))?;
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("the agent's VmRSS")?;
        Ok(kib / 1024.0)
    });
    // Reset whatever happened, so that no agent outlives the trial.
    let reset = proc::run(hakube(&["reset"], "reset")?, &format!("hakube reset (trial {trial})"));
    let rss = measured?;
    reset?;
    drop(ns);
    fs::remove_dir_all(&root)?;
    Ok((took, rss))
}

/// (b): seconds from nothing to a healthy etcd, the shell way.
fn shell_install(work: &Path, trial: u32) -> Result<f64> {
    let ns = Ns::new(format!("hk-bench-{}-{trial}-shell", std::process::id()))?;
    let dir = work.join(format!("{trial}-shell"));
    let (pki, data) = (dir.join("pki"), dir.join("etcd-data"));
    let t0 = Instant::now();
    openssl_pki(&pki).with_context(|| format!("shell baseline: openssl PKI (trial {trial})"))?;
    fs::create_dir(&data)?;
    fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    let mut etcd = in_ns(&ns.0, "etcd");
    let url = |port: u16| format!("https://127.0.0.1:{port}");
    etcd.args(["--name", NODE, "--logger", "zap", "--log-outputs", "stderr"]).arg("--data-dir").arg(&data);
    etcd.args(["--listen-client-urls", &url(2379), "--advertise-client-urls", &url(2379)]);
    etcd.args(["--listen-peer-urls", &url(2380), "--initial-advertise-peer-urls", &url(2380)]);
    etcd.args(["--initial-cluster", &format!("{NODE}={}", url(2380)), "--initial-cluster-state", "new"]);
    etcd.args(["--client-cert-auth", "--peer-client-cert-auth"]);
    for (flag, file) in [("--trusted-ca-file", "ca.crt"), ("--cert-file", "server.crt"), ("--key-file", "server.key")] {
        etcd.arg(flag).arg(pki.join("etcd").join(file));
    }
    for (flag, file) in
        [("--peer-trusted-ca-file", "ca.crt"), ("--peer-cert-file", "peer.crt"), ("--peer-key-file", "peer.key")]
    {
        etcd.arg(flag).arg(pki.join("etcd").join(file));
    }
    let log_path = dir.join("etcd.log");
    let log = File::create(&log_path)?;
    let mut etcd = etcd.stdout(log.try_clone()?).stderr(log).spawn()?;
    let deadline = Instant::now() + HEALTH_TIMEOUT;
    while !etcd_healthy(&ns.0, &pki) {
        if !matches!(etcd.try_wait(), Ok(None)) {
            bail!("the baseline's etcd exited before it was healthy (trial {trial}); its log: {}", log_path.display());
        }
        if Instant::now() > deadline {
            bail!("the baseline's etcd was not healthy after {} s (trial {trial})", HEALTH_TIMEOUT.as_secs());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = t0.elapsed().as_secs_f64();
    drop(ns); // stops etcd
    let _ = etcd.wait();
    fs::remove_dir_all(&dir)?;
    Ok(took)
}

/// (c): seconds for `hakube certs generate EXTRA…`.
fn hakube_pki(work: &Path, bin: &Path, trial: u32, label: &str, extra: &[&str]) -> Result<f64> {
    let root = work.join(format!("{trial}-pki-{label}"));
    fs::create_dir_all(&root)?;
    let mut cmd = Command::new(bin);
    cmd.arg("--root")
        .arg(&root)
        .args(["certs", "generate", "--advertise-address", "127.0.0.1", "--node-name", NODE, "--components", "etcd"])
        .args(extra);
    let t0 = Instant::now();
    proc::output(bounded(INSTALL_TIMEOUT, cmd), &format!("hakube certs generate {label} (trial {trial})"))?;
    let took = t0.elapsed().as_secs_f64();
    anyhow::ensure!(
        root.join("var/lib/hakube/pki/etcd/ca.crt").is_file(),
        "hakube certs generate {label} wrote no etcd CA"
    );
    fs::remove_dir_all(&root)?;
    Ok(took)
}

fn openssl_pki_alone(work: &Path, trial: u32) -> Result<f64> {
    let dir = work.join(format!("{trial}-pki-openssl"));
    let t0 = Instant::now();
    openssl_pki(&dir).with_context(|| format!("openssl PKI generation (trial {trial})"))?;
    let took = t0.elapsed().as_secs_f64();
    fs::remove_dir_all(&dir)?;
    Ok(took)
}

pub fn run(args: Args) -> Result<()> {
    let bin = proc::script_output("hakube_binary \"$repo\"").context("no hakube binary to measure")?;
    anyhow::ensure!(
        Command::new("etcd").arg("--version").output().is_ok_and(|o| o.status.success()),
        "etcd --version failed: is etcd installed?"
    );
    let work = super::WorkDir::new("bench-install")?;
    let result = bench(&args, work.path(), &bin);
    work.finish(result)
}

fn bench(args: &Args, work: &Path, bin: &Path) -> Result<()> {
    msg!("{} trial(s); hakube: {}", args.trials, bin.display());
    let mut f: [Vec<f64>; 6] = Default::default();
    for t in 1..=args.trials {
        proc::check_stop()?;
        let (h, rss, s) = if t % 2 == 1 {
            let (h, rss) = hakube_install(work, bin, t)?;
            (h, rss, shell_install(work, t)?)
        } else {
            let s = shell_install(work, t)?;
            let (h, rss) = hakube_install(work, bin, t)?;
            (h, rss, s)
        };
        let pe = hakube_pki(work, bin, t, "ecdsa", &[])?;
        let pr = hakube_pki(work, bin, t, "rsa", &["--key-algorithm", "rsa-2048"])?;
        let po = openssl_pki_alone(work, t)?;
        for (v, x) in f.iter_mut().zip([h, rss, s, pe, pr, po]) {
            v.push(x);
        }
        msg!("trial {t}/{}: install->healthy hakube {h:.3}s (agent RSS {rss:.1} MiB), shell {s:.3}s; PKI hakube ECDSA {pe:.3}s, RSA {pr:.3}s, openssl {po:.3}s", args.trials);
    }
    let [h, rss, s, pe, pr, po] = f.map(|v| median(&v));
    let r = |a, b| ratio(a, b).map_or("-".into(), |r: f64| format!("{r:.2}"));
    let install_met = ratio(h, s).is_some_and(|r| r <= 0.5);
    let rss_met = rss.is_some_and(|m| m < 20.0);
    let verdict = |met: bool| if met { "met" } else { "missed" };
    println!("\nMedians of {} trial(s). Baseline: openssl CLI (RSA-2048) + etcd polled with etcdctl.\n", args.trials);
    println!("{:<32} {:>10} {:>10} {:>8}  {:<16} result", "measure", "hakube", "baseline", "ratio", "goal");
    println!(
        "{:<32} {:>10} {:>10} {:>8}  {:<16} {}",
        "install -> etcd healthy (s)",
        secs(h),
        secs(s),
        r(h, s),
        "ratio <= 0.5",
        verdict(install_met)
    );
    let rss_text = rss.map_or("-".into(), |m| format!("{m:.1}"));
    println!(
        "{:<32} {:>10} {:>10} {:>8}  {:<16} {}",
        "idle agent RSS (MiB)",
        rss_text,
        "-",
        "-",
        "< 20 MiB",
        verdict(rss_met)
    );
    println!("{:<32} {:>10} {:>10} {:>8}  {:<16} -", "PKI only, ECDSA P-256 (s)", secs(pe), secs(po), r(pe, po), "-");
    println!("{:<32} {:>10} {:>10} {:>8}  {:<16} -", "PKI only, RSA-2048 (s)", secs(pr), secs(po), r(pr, po), "-");
    Ok(())
}
