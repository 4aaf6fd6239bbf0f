//! Every file of a node, planned from its config: the PKI and kubeconfigs of
//! a master (issued by the CAs it holds), a worker's kubelet kubeconfig (its
//! credentials kept, its server as the config says), the systemd unit, and
//! the config itself, last. Nothing is written here; `install`, `join` and
//! the agent (when the cluster-wide settings change) apply the plan.

use time::OffsetDateTime;

use crate::config::{ClusterConfig, Component};
use crate::host::fs::FileSpec;
use crate::host::paths::Paths;
use crate::host::systemd;
use crate::kube::kubeconfig;
use crate::pki::{self, Decision, PkiError};

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("{0}")]
    Kubeconfig(String),
}

/// Every file of a node, planned; nothing is written.
pub struct Plan {
    pub files: Vec<FileSpec>,
    pub backups: Vec<FileSpec>,
    pub decisions: Vec<(String, Decision)>,
}

pub fn plan(paths: &Paths, c: &ClusterConfig, with_unit: bool) -> Result<Plan, PlanError> {
    plan_renewing(paths, c, with_unit, &pki::Renew::Nothing)
}

/// [`plan`], reissuing the certificates `renew` names although they match.
pub fn plan_renewing(paths: &Paths, c: &ClusterConfig, with_unit: bool, renew: &pki::Renew) -> Result<Plan, PlanError> {
    let mut plan = if c.has(Component::Etcd) { plan_master(paths, c, renew)? } else { plan_worker(paths, c)? };
    if with_unit {
        plan.files.push(systemd::unit_file(paths));
    }
    // The config goes last: its presence tells a re-run that everything it
    // names was written, so an interrupted write is simply done again.
    plan.files.push(FileSpec::new(paths.config_file(), c.to_yaml(), 0o644));
    Ok(plan)
}

fn plan_master(paths: &Paths, c: &ClusterConfig, renew: &pki::Renew) -> Result<Plan, PlanError> {
    let now = OffsetDateTime::now_utc();
    let pki_plan = pki::plan_renewing(paths, c, now, renew)?;
    let ca = pki_plan.ca("ca").expect("the plan holds the cluster CA");
    let (kc_files, kc_decisions) = kubeconfig::plan_renewing(paths, c, ca, now, renew)?;
    let mut files = pki_plan.files;
    files.extend(kc_files);
    let mut decisions = pki_plan.decisions;
    decisions.extend(kc_decisions);
    Ok(Plan { files, backups: pki_plan.backups, decisions })
}

/// The certificates of this node within their renewal margin at `now`, by
/// name: a master's PKI leaves and kubeconfigs (`apiserver`, `admin.conf`),
/// a worker's kubeconfigs (`kubelet.conf`, `kube-proxy.conf`). A master's
/// missing or unreadable one counts as due; a worker has only those it was
/// given at join.
pub fn due_for_renewal(paths: &Paths, c: &ClusterConfig, now: OffsetDateTime) -> Vec<String> {
    if !c.has(Component::Etcd) {
        let life = pki::Lifetime::of(c);
        return ["kubelet", "kube-proxy"]
            .into_iter()
            .filter(|name| paths.kubeconfig(name).exists())
            .filter(|name| kubeconfig::client_cert_end(&paths.kubeconfig(name)).is_none_or(|end| life.due(end, now)))
            .map(|name| format!("{name}.conf"))
            .collect();
    }
    let mut due = Vec::new();
    for spec in pki::cluster_cert_specs(c).into_iter().filter(|s| s.issuer.is_some()) {
        let pem = std::fs::read(paths.pki(&format!("{}.crt", spec.name))).ok();
        let end = pem.and_then(|b| pki::observe(&b, None).ok()).map(|o| o.not_after);
        if end.is_none_or(|end| spec.lifetime.due(end, now)) {
            due.push(spec.name);
        }
    }
    for name in kubeconfig::KUBECONFIGS {
        let spec = pki::kubeconfig_cert_spec(c, name);
        if kubeconfig::client_cert_end(&paths.kubeconfig(name)).is_none_or(|end| spec.lifetime.due(end, now)) {
            due.push(format!("{name}.conf"));
        }
    }
    due
}

/// A worker holds no CA key: its kubelet kubeconfig keeps the certificate
/// it was issued at join, and points where the config says.
fn plan_worker(paths: &Paths, c: &ClusterConfig) -> Result<Plan, PlanError> {
    let path = paths.kubeconfig("kubelet");
    let mut files = vec![];
    if path.exists() {
        let creds = kubeconfig::read(&path).map_err(PlanError::Kubeconfig)?;
        let text = kubeconfig::render(
            &c.cluster.name,
            &kubeconfig::server_for(c, "kubelet"),
            &creds.ca_pem,
            &format!("system:node:{}", c.node.name),
            &creds.cert_pem,
            &creds.key_pem,
        );
        files.push(FileSpec::new(path, text, 0o600));
    }
    Ok(Plan { files, backups: vec![], decisions: vec![] })
}
