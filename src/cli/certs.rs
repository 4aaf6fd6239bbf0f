//! `hakube certs check-expiration`: every certificate this node holds, on a
//! master or a worker: the PKI's files, the client certificates embedded in
//! the kubeconfigs, and kubelet's own (the client certificate it renews by
//! CSR, its serving certificate).

use std::time::Duration;

use anyhow::Context as _;
use time::OffsetDateTime;

use crate::agent::control;
use crate::config::{self, Component};
use crate::host::fs::{apply_files, FileChange};
use crate::host::paths::Paths;
use crate::host::process::PidFile;
use crate::pki::{self, Decision, Renew};
use crate::progress::Progress;

pub use crate::kube::inventory::{inventory, Row};

/// Whether a row needs an operator: expired or unreadable.
pub fn failing(r: &Row, now: OffsetDateTime) -> bool {
    r.problem.is_some() || r.not_after.is_some_and(|t| t <= now.unix_timestamp())
}

/// The table `check-expiration` prints: a leaf within `renew_before` of
/// its end is due for renewal (its agent renews it; one that stays due is
/// failing to), a CA within a year of its end is flagged (nothing renews it).
pub fn render(rows: &[Row], now: OffsetDateTime, renew_before: time::Duration) -> String {
    let mut out =
        format!("{:<32} {:<34} {:<11} {:>9}  {}\n", "CERTIFICATE", "SUBJECT (CN)", "EXPIRES", "RESIDUAL", "STATUS");
    for r in rows {
        let subject: String = r.subject.chars().take(34).collect();
        let line = match r.not_after {
            Some(t) => {
                let left = time::Duration::seconds(t - now.unix_timestamp());
                let date = OffsetDateTime::from_unix_timestamp(t).map(|d| d.date().to_string()).unwrap_or_default();
                let status = match (left.is_negative(), r.is_ca) {
                    (true, _) => "EXPIRED",
                    (false, true) if left < time::Duration::days(365) => "CA expires within a year",
                    (false, true) => "ok (CA)",
                    (false, false) if left < renew_before => "renewal due",
                    (false, false) => "ok",
                };
                format!("{:<32} {subject:<34} {date:<11} {:>9}  {status}\n", r.name, residual(left))
            }
            None => format!(
                "{:<32} {:<34} {:<11} {:>9}  UNREADABLE: {}\n",
                r.name,
                "-",
                "-",
                "-",
                r.problem.as_deref().unwrap_or_default()
            ),
        };
        out.push_str(&line);
    }
    out
}

/// `364d`, `5h`, `-2d`: the coarsest unit that says enough.
fn residual(d: time::Duration) -> String {
    let (sign, d) = if d.is_negative() { ("-", -d) } else { ("", d) };
    if d.whole_days() >= 1 {
        format!("{sign}{}d", d.whole_days())
    } else if d.whole_hours() >= 1 {
        format!("{sign}{}h", d.whole_hours())
    } else {
        format!("{sign}{}m", d.whole_minutes())
    }
}

/// What `certs renew` takes, from the names the user gave: `all`, or
/// leaves of this master by their `check-expiration` names.
pub fn renewal(c: &config::ClusterConfig, names: &[String]) -> anyhow::Result<Renew> {
    if names.iter().any(|n| n == "all") {
        anyhow::ensure!(names.len() == 1, "give `all` alone, or the certificates by name");
        return Ok(Renew::All);
    }
    let specs = pki::cluster_cert_specs(c);
    let leaves: Vec<String> = specs
        .iter()
        .filter(|s| s.issuer.is_some())
        .map(|s| s.name.clone())
        .chain(crate::kube::kubeconfig::KUBECONFIGS.iter().map(|k| format!("{k}.conf")))
        .collect();
    for n in names {
        if specs.iter().any(|s| s.issuer.is_none() && s.name == *n) {
            anyhow::bail!(
                "{n} is a CA: hakube never reissues a CA (every certificate it signed would stop verifying); \
                 CAs live 10 years (README, Certificates)"
            );
        }
        if !leaves.contains(n) {
            anyhow::bail!("no certificate named {n} on a master: renew `all` or one of {}", leaves.join(", "));
        }
    }
    Ok(Renew::Names(names.iter().cloned().collect()))
}

/// `hakube certs renew`: reissues the named leaves of this master with
/// their keys, then has a running agent restart what reads them (the API
/// server re-reads its serving pair by itself) and waits until the node is
/// healthy.
pub fn renew(paths: &Paths, names: &[String], timeout: Duration) -> anyhow::Result<()> {
    let progress = Progress::new("certs");
    let lock = crate::host::lock::lock_root_waiting(paths.root(), Duration::from_secs(5))?;
    let c = config::load_installed(&paths.config_file())?
        .with_context(|| format!("hakube is not installed under {}", paths.root().display()))?;
    anyhow::ensure!(
        c.has(Component::Etcd),
        "this node is a worker: its kubelet renews its own client certificate by CSR (README, Certificates)"
    );
    let renew = renewal(&c, names)?;
    let plan = progress.phase("planning certificates", || crate::files::plan_renewing(paths, &c, false, &renew))?;
    let changes = progress.phase("writing certificates", || -> anyhow::Result<_> {
        apply_files(&plan.backups)?;
        Ok(apply_files(&plan.files)?)
    })?;
    for (name, d) in plan.decisions.iter().filter(|(_, d)| *d != Decision::Keep) {
        progress.note(format!("  {name}: {d}"));
    }
    let written = changes.iter().filter(|(_, ch)| *ch != FileChange::Unchanged).count();
    progress.note(format!("{written} files written (the old ones are in {})", paths.pki_backup_dir().display()));
    if PidFile::holder(&paths.agent_pid_file()).is_none() {
        progress.note("the agent is not running: its components read the new certificates when it starts");
        return Ok(());
    }
    let expect = progress.phase("reloading the agent", || control::start(paths, false))?;
    drop(lock);
    progress
        .phase("waiting for the node to become healthy", || control::wait_healthy(paths, expect, timeout, &progress))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renew_takes_all_or_leaves_by_name_and_never_a_ca() {
        let c = crate::config::tests::test_config("{}");
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(renewal(&c, &names(&["all"])).unwrap(), Renew::All);
        let r = renewal(&c, &names(&["apiserver", "etcd/peer", "admin.conf"])).unwrap();
        assert!(r.wants("etcd/peer") && r.wants("admin.conf") && !r.wants("etcd/server"));
        let e = renewal(&c, &names(&["etcd/ca"])).unwrap_err().to_string();
        assert!(e.contains("is a CA"), "{e}");
        let e = renewal(&c, &names(&["apisrever"])).unwrap_err().to_string();
        assert!(e.contains("no certificate named apisrever") && e.contains("apiserver, "), "{e}");
        assert!(renewal(&c, &names(&["all", "apiserver"])).is_err());
    }

    #[test]
    fn residual_time_reads_at_a_glance() {
        let d = time::Duration::seconds;
        assert_eq!(residual(d(364 * 86_400 + 5)), "364d");
        assert_eq!(residual(d(5 * 3600 + 59)), "5h");
        assert_eq!(residual(d(59)), "0m");
        assert_eq!(residual(d(-2 * 86_400 - 1)), "-2d");
    }

    #[test]
    fn every_certificate_of_a_node_is_listed_and_the_bad_ones_named() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path());
        let now = OffsetDateTime::now_utc();
        let c = crate::config::tests::test_config("{}");
        let plan = pki::plan(&paths, &c, now).unwrap();
        for f in plan.files.iter().chain(&plan.backups) {
            crate::host::fs::write_atomic(&f.path, &f.contents, f.mode).unwrap();
        }
        // A kubeconfig, kubelet's rotated client certificate, an unreadable file.
        let ca = plan.ca("ca").unwrap();
        let (files, _) = crate::kube::kubeconfig::plan(&paths, &c, ca, now).unwrap();
        for f in files.iter().filter(|f| f.path.ends_with("kubelet.conf")) {
            crate::host::fs::write_atomic(&f.path, &f.contents, f.mode).unwrap();
        }
        let apiserver = std::fs::read(paths.pki("apiserver.crt")).unwrap();
        crate::host::fs::write_atomic(&paths.kubelet_cert_dir().join("kubelet-client-current.pem"), &apiserver, 0o600)
            .unwrap();
        crate::host::fs::write_atomic(&paths.pki("broken.crt"), b"not a certificate", 0o644).unwrap();
        let rows = inventory(&paths);
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        for want in ["ca", "etcd/ca", "front-proxy-ca", "apiserver", "etcd/peer", "kubelet.conf", "kubelet client"] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        assert!(rows.iter().take_while(|r| r.is_ca).count() == 3, "CAs first: {names:?}");
        let kubelet = rows.iter().find(|r| r.name == "kubelet.conf").unwrap();
        assert_eq!(kubelet.subject, format!("system:node:{}", c.node.name.as_str()));
        let broken: Vec<&Row> = rows.iter().filter(|r| failing(r, now)).collect();
        assert_eq!(broken.len(), 1, "{broken:?}");
        assert_eq!(broken[0].name, "broken");
        let table = render(&rows, now, time::Duration::days(120));
        assert!(table.contains("UNREADABLE"), "{table}");
        let apiserver = rows.iter().find(|r| r.name == "apiserver").unwrap();
        let days = (apiserver.not_after.unwrap() - now.unix_timestamp()) / 86_400;
        assert!((364..=365).contains(&days), "a leaf lives a year: {apiserver:?}");
        let want = format!(" {days}d  ok");
        assert!(table.lines().any(|l| l.starts_with("apiserver ") && l.ends_with(&want)), "{table}");
        // A year on, every leaf has expired; the CAs live on.
        let later = now + time::Duration::days(366);
        let table = render(&rows, later, time::Duration::days(120));
        assert!(table.lines().any(|l| l.starts_with("apiserver ") && l.ends_with("EXPIRED")), "{table}");
        assert!(table.lines().any(|l| l.starts_with("ca ") && l.ends_with("ok (CA)")), "{table}");
        assert!(rows.iter().filter(|r| !r.is_ca && r.problem.is_none()).all(|r| failing(r, later)));
        // Inside the renewal margin, a leaf is due; in its last year, a CA is flagged.
        let due = render(&rows, now + time::Duration::days(300), time::Duration::days(120));
        assert!(due.lines().any(|l| l.starts_with("apiserver ") && l.ends_with("renewal due")), "{due}");
        let old = render(&rows, now + time::Duration::days(3400), time::Duration::days(120));
        assert!(old.lines().any(|l| l.starts_with("ca ") && l.ends_with("CA expires within a year")), "{old}");
    }
}
