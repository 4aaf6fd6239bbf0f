//! `hakube join`: what the join script runs on a new host.
//!
//! A master: pin the CA, fetch and open the key material, issue its own
//! certificates locally (no leaf key crosses the network), then join etcd one
//! member at a time (lock, gate, learner add, start as `existing`, promote,
//! gate, unlock). A worker: a CSR for its kubelet certificate, the kubelet
//! config pointing at the control-plane endpoint, registration.
//!
//! Re-running an interrupted join finishes it: the config written before
//! etcd was touched tells where the cluster is, the learner add reuses a
//! member with this node's peer URL, and promotion is idempotent.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::agent::control;
use crate::cli::install;
use crate::config::{self, ClusterConfig, Component, InitialClusterState, NodeName};
use crate::etcd::membership::{self, GatePoint};
use crate::etcd::{self, Credentials};
use crate::host::fs::{apply_files, create_dir_all, FileSpec};
use crate::host::paths::Paths;
use crate::host::{lock, net, systemd};
use crate::join::client;
use crate::join::material::{self, CertificateKey};
use crate::join::token::{JoinToken, Role};
use crate::join::wire::JoinRequest;
use crate::kube::kubeconfig;
use crate::pki::{self, Key};
use crate::preflight;
use crate::progress::Progress;

/// How long a joiner waits for its turn at the etcd membership lock.
const LOCK_WAIT: Duration = Duration::from_secs(900);
const GATE_WAIT: Duration = Duration::from_secs(120);
const PROMOTE_WAIT: Duration = Duration::from_secs(180);

pub struct Request {
    pub paths: Paths,
    pub role: Role,
    pub endpoints: Vec<String>,
    pub token: Option<JoinToken>,
    pub ca_hash: Option<String>,
    pub certificate_key: Option<CertificateKey>,
    pub node_name: Option<NodeName>,
    pub advertise_address: Option<IpAddr>,
    pub components: Option<Vec<Component>>,
    pub no_systemd: bool,
    pub bundle: Option<PathBuf>,
    pub ignore_preflight_errors: Vec<String>,
    pub timeout: Duration,
    pub metrics_address: Option<std::net::SocketAddr>,
}

/// The arguments, checked before anything is touched.
struct Checked {
    token: JoinToken,
    ca_hash: String,
    key: Option<CertificateKey>,
}

fn check(req: &Request) -> anyhow::Result<Checked> {
    let token = req.token.clone().context("no join token: run the join script, or pass --token / HAKUBE_JOIN_TOKEN")?;
    let ca_hash = req.ca_hash.clone().context("no --ca-hash (HAKUBE_CA_HASH): run the join script")?;
    crate::join::tls::check_ca_hash(&ca_hash).map_err(anyhow::Error::msg)?;
    let key = match (req.role, &req.certificate_key) {
        (Role::Master, None) => bail!("a master join needs --certificate-key (HAKUBE_CERTIFICATE_KEY): use a script from `hakube node-join-script --master`"),
        (Role::Master, Some(k)) => Some(k.clone()),
        (Role::Worker, _) => None,
    };
    if req.endpoints.is_empty() {
        bail!("no join endpoints (--endpoints / HAKUBE_JOIN_ENDPOINTS): run the join script");
    }
    for ep in &req.endpoints {
        ep.parse::<config::HostPort>().map_err(|e| anyhow::anyhow!("join endpoint {ep:?}: {}", e.0))?;
    }
    Ok(Checked { token, ca_hash: ca_hash.to_ascii_lowercase(), key })
}

pub fn run(req: Request) -> anyhow::Result<()> {
    let progress = Progress::new("join");
    let paths = req.paths.clone();
    let _lock = lock::lock_root_waiting(paths.root(), std::time::Duration::from_secs(5))?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;

    if let Some(installed) = config::load_installed(&paths.config_file())? {
        return resume(&rt, &progress, &paths, installed, &req);
    }
    let checked = check(&req)?;
    let name = match &req.node_name {
        Some(n) => n.clone(),
        None => net::detect_name().map_err(anyhow::Error::msg)?.parse().map_err(|e: config::types::InvalidValue| {
            anyhow::anyhow!("the hostname is not a valid node name ({}): pass --node-name", e.0)
        })?,
    };
    let address = match req.advertise_address {
        Some(a) => a,
        None => net::detect_address().map_err(anyhow::Error::msg)?,
    };
    let components = req.components.clone().unwrap_or_else(|| match req.role {
        Role::Master => Component::MASTER.to_vec(),
        Role::Worker => Component::WORKER.to_vec(),
    });
    if req.role == Role::Master && !components.contains(&Component::Etcd) {
        bail!("a master runs etcd: add etcd to --components");
    }
    if req.role == Role::Worker && components.iter().any(|c| !Component::WORKER.contains(c)) {
        bail!(
            "a worker runs containerd, kubelet and kube-proxy (or some of them, or nothing: --components none); \
             masters join with a --master script"
        );
    }
    let use_systemd =
        systemd::decide(paths.is_host_root(), !req.no_systemd, systemd::is_running()).map_err(anyhow::Error::msg)?;
    let mut flags = serde_norway::Mapping::new();
    let node = serde_norway::to_value(serde_json::json!({
        "name": name.as_str(),
        "advertiseAddress": address.to_string(),
        "components": components.iter().map(|c| c.name()).collect::<Vec<_>>(),
        "systemd": use_systemd,
        "etcd": {"initialClusterState": "existing"},
    }))?;
    flags.insert("node".into(), node);
    let mut flags = serde_norway::Value::Mapping(flags);
    if let Some(a) = req.metrics_address {
        config::set(&mut flags, "node", "metricsAddress", a.to_string().into());
    }
    if let Some(b) = &req.bundle {
        let abs = std::path::absolute(b).unwrap_or_else(|_| b.clone());
        config::set(&mut flags, "node", "bundle", abs.display().to_string().into());
    } else if let Some(dir) = progress.phase("fetching the cluster's bundle from a master", || {
        fetch_bundle(&rt, &progress, &paths, &req.endpoints, &checked)
    })? {
        config::set(&mut flags, "node", "bundle", dir.display().to_string().into());
    }
    // The identity and components are known now: check the host before asking the cluster.
    let probe = node_config(&flags, None)?;
    progress.phase("preflight checks", || run_preflight(&paths, &probe, &req.ignore_preflight_errors))?;

    let ask = JoinRequest {
        token: checked.token.clone(),
        role: req.role,
        node_name: name.to_string(),
        advertise_address: address,
        kubelet_csr: None,
        kube_proxy_csr: None,
    };
    match req.role {
        Role::Master => join_master(&rt, &progress, &paths, flags, ask, &checked, &req),
        Role::Worker => join_worker(&rt, &progress, &paths, flags, ask, &checked, &req),
    }
}

/// The cluster's bundle, from the first master that has one (a master
/// installed from a bundle file, or one that joined such a cluster):
/// streamed over the join API with the token, the CA pinned, unpacked as
/// it arrives and checked against its manifest. A master that fails or
/// breaks off mid-way: the next one is asked, from the start. None when no
/// master has a bundle file (the binaries are then this host's).
fn fetch_bundle(
    rt: &tokio::runtime::Runtime,
    progress: &Progress,
    paths: &Paths,
    endpoints: &[String],
    checked: &Checked,
) -> anyhow::Result<Option<std::path::PathBuf>> {
    let mut failures = Vec::new();
    let mut offered = false;
    for ep in endpoints {
        let body = match rt.block_on(client::bundle(ep, &checked.ca_hash, &checked.token)) {
            Ok(Some(b)) => {
                offered = true;
                b
            }
            Ok(None) => continue,
            Err(e) if e.try_next() => {
                failures.push(e.to_string());
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let name = std::path::PathBuf::from(format!("the bundle from {ep}"));
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let (pumped, unpacked) = std::thread::scope(|s| {
            let reader = crate::agent::unpack::ChannelReader::new(rx);
            let unpacker = s.spawn(|| crate::agent::unpack::unpack_from(paths, &name, reader, None, progress));
            let pumped = rt.block_on(crate::agent::unpack::pump(body, tx, crate::agent::unpack::STALL));
            (pumped, unpacker.join().expect("the unpacking thread"))
        });
        match (pumped, unpacked) {
            (_, Ok(dir)) => {
                progress.note(format!("  from {ep}: {}", dir.display()));
                return Ok(Some(dir));
            }
            (Err(e), Err(_)) => failures.push(format!("{ep}: the download broke off ({e})")),
            (Ok(()), Err(e)) => failures.push(format!("{e:#}")),
        }
        progress.note(format!("  {}; asking the next master", failures.last().expect("just pushed")));
    }
    if !offered {
        progress.note("  no master has a bundle file: the binaries are this host's (--bundle, or PATH)");
        return Ok(None);
    }
    bail!("no master gave the cluster's bundle: {}", failures.join("; "))
}

/// The node's config from the cluster spec (if known) and the node flags.
fn node_config(flags: &serde_norway::Value, cluster: Option<&config::ClusterSpec>) -> anyhow::Result<ClusterConfig> {
    let mut tree = flags.clone();
    if let Some(c) = cluster {
        config::merge(&mut tree, serde_norway::to_value(serde_json::json!({ "cluster": c }))?);
    }
    Ok(config::resolve(config::Sources {
        installed: None,
        file: None,
        flags: tree,
        detect_name: &|| Err("the node name is set by join".to_owned()),
        detect_address: &|| Err("the advertise address is set by join".to_owned()),
    })?)
}

fn run_preflight(paths: &Paths, c: &ClusterConfig, ignore: &[String]) -> anyhow::Result<()> {
    for w in preflight::warnings(c) {
        eprintln!("[join] warning: {w}");
    }
    for f in preflight::enforce(paths, c, ignore)? {
        eprintln!("[join] ignored preflight error [{}]: {}", f.name, f.message);
    }
    Ok(())
}

/// How long a join keeps asking a cluster that answers "not now" (or
/// `--timeout`, when shorter).
const JOIN_PATIENCE: std::time::Duration = std::time::Duration::from_secs(300);
const JOIN_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

fn ask_cluster(
    rt: &tokio::runtime::Runtime,
    progress: &Progress,
    endpoints: &[String],
    ca_hash: &str,
    ask: &JoinRequest,
    patience: std::time::Duration,
) -> anyhow::Result<crate::join::wire::JoinResponse> {
    let (ep, resp) = progress.phase(&format!("asking the cluster to join ({})", endpoints.join(", ")), || {
        // A cluster that says "not now" (etcd without quorum while a master
        // restarts, too many joins at once) is asked again for a while, as
        // an operator would.
        let give_up = std::time::Instant::now() + patience;
        let mut said = String::new();
        loop {
            match rt.block_on(client::join_any(endpoints, ca_hash, ask)) {
                Ok(accepted) => return Ok(accepted),
                Err(e) if e.worth_waiting() && std::time::Instant::now() + JOIN_RETRY < give_up => {
                    let now = e.to_string();
                    if now != said {
                        let left = give_up.saturating_duration_since(std::time::Instant::now()).as_secs();
                        progress.note(format!(
                            "  the cluster cannot take the join now; asking again every {}s for up to {left}s more:\n  {}",
                            JOIN_RETRY.as_secs(),
                            now.replace('\n', "\n  ")
                        ));
                        said = now;
                    }
                    std::thread::sleep(JOIN_RETRY);
                }
                Err(e) => return Err(e),
            }
        }
    })?;
    progress.note(format!("  accepted by {ep}; {} etcd member(s)", resp.etcd_members.len()));
    if let Some(warning) = resp.clock_offset_ms.and_then(crate::host::clock::describe_offset) {
        progress.note(format!("  warning: this host's {warning}"));
    }
    Ok(resp)
}

fn join_master(
    rt: &tokio::runtime::Runtime,
    progress: &Progress,
    paths: &Paths,
    flags: serde_norway::Value,
    ask: JoinRequest,
    checked: &Checked,
    req: &Request,
) -> anyhow::Result<()> {
    let resp = ask_cluster(rt, progress, &req.endpoints, &checked.ca_hash, &ask, JOIN_PATIENCE.min(req.timeout))?;
    let key = checked.key.as_ref().expect("checked: masters have a key");
    let sealed = resp.sealed_material.as_deref().context("the join API sent no key material for a master")?;
    // Opening the material proves the key before anything is written.
    let opened = material::open(key, sealed)?;
    let mut c = node_config(&flags, Some(&resp.cluster))?;
    c.node.etcd.join_endpoints = resp
        .etcd_members
        .iter()
        .filter(|m| !m.is_learner && m.started())
        .filter_map(|m| m.client_urls.first().cloned())
        .collect();
    if c.node.etcd.join_endpoints.is_empty() {
        bail!("the cluster reported no started etcd member to join");
    }
    progress.phase("writing the cluster's CAs and this node's certificates", || -> anyhow::Result<()> {
        create_dir_all(&paths.pki_dir(), 0o700)?;
        apply_files(&material::files(paths, &opened)?)?;
        write_node_files(paths, &c)
    })?;
    join_etcd(rt, progress, paths, c, req)
}

/// Writes the config and every planned file of a master (its leaves are
/// issued here, by the CAs just written).
fn write_node_files(paths: &Paths, c: &ClusterConfig) -> anyhow::Result<()> {
    let plan = crate::files::plan(paths, c, c.node.systemd)?;
    if c.has(Component::Etcd) {
        create_dir_all(&paths.etcd_data_dir(), 0o700)?;
    }
    apply_files(&plan.backups)?;
    apply_files(&plan.files)?;
    Ok(())
}

/// The serialized etcd join, from wherever a previous run stopped.
fn join_etcd(
    rt: &tokio::runtime::Runtime,
    progress: &Progress,
    paths: &Paths,
    mut c: ClusterConfig,
    req: &Request,
) -> anyhow::Result<()> {
    let creds = Credentials::load(paths, crate::etcd::CLIENT_CERT)?;
    let peer = c.etcd_peer_url();
    let name = c.node.name.to_string();
    rt.block_on(async {
        // The client spreads requests over its endpoints, so it gets only
        // those that answer now (never this host's own, which is not up or
        // is a stale member being replaced).
        let endpoints = reachable(&c.node.etcd.join_endpoints, &c.etcd_client_url(), &creds).await;
        if endpoints.is_empty() {
            bail!(
                "no etcd member of the cluster answers at {}: is the cluster up (`hakube status` on a master)?",
                c.node.etcd.join_endpoints.join(", ")
            );
        }
        let endpoint = endpoints.join(",");
        let mut client = etcd::connect(&endpoints, &creds, Duration::from_secs(5))
            .await
            .with_context(|| format!("cannot reach the cluster's etcd at {endpoint}"))?;
        // Waiting for the lock is bounded by LOCK_WAIT, not by a request timeout.
        let mut lock_client = etcd::connect_with(&endpoints, &creds, Duration::from_secs(5), None).await?;
        progress.note("waiting for the etcd membership lock (one master joins at a time)");
        let t = std::time::Instant::now();
        let lock = membership::Lock::acquire(&mut lock_client, &endpoint, LOCK_WAIT).await?;
        progress.note(format!("  lock held after {:.2}s", t.elapsed().as_secs_f64()));
        let result = async {
            let mut last_note = String::new();
            // The gate waits at most as long as the whole join may take.
            let gate_wait = GATE_WAIT.min(req.timeout);
            let mut before =
                membership::wait_gate(&mut client, &endpoint, &creds, &peer, GatePoint::BeforeAdd, gate_wait, |e| {
                    let s = e.to_string();
                    if s != last_note {
                        progress.note(format!("  waiting for etcd to be healthy: {s}"));
                        last_note = s;
                    }
                })
                .await?;
            let health = membership::voter_health(&before, &creds).await;
            let plan = membership::plan_etcd_join(&before, &health, &peer, has_data(&paths.etcd_data_dir()))
                .map_err(anyhow::Error::msg)?;
            if let Some(stale) = plan.remove_stale {
                membership::remove_member(&mut client, &endpoint, stale, &lock).await?;
                progress.note(format!("  removed stale member {stale:x} of this address (its data was gone)"));
                before.retain(|m| m.id != stale);
            }
            let (id, members) = match plan.reuse {
                Some(id) => (id, before),
                None => membership::add_learner(&mut client, &endpoint, &peer, before, &lock)
                    .await
                    .context("adding this node as a learner")?,
            };
            progress.note(format!(
                "  etcd member {id:x} for {peer}: {}",
                if plan.reuse.is_some() { "already added (resuming)" } else { "added as a learner" }
            ));
            fault_point("after-member-add");
            if plan.move_data_aside {
                // Data of a previous membership would make etcd refuse the new one.
                let aside = paths.data_dir().join(format!("etcd.old-{}", crate::host::clock::now_secs()));
                std::fs::rename(paths.etcd_data_dir(), &aside)
                    .with_context(|| format!("cannot move the old etcd data aside to {}", aside.display()))?;
                create_dir_all(&paths.etcd_data_dir(), 0o700)?;
                progress.note(format!("  moved stale etcd data to {}", aside.display()));
            }
            c.node.etcd.initial_cluster = Some(membership::initial_cluster(&members, &name, &peer));
            c.node.etcd.initial_cluster_state = InitialClusterState::Existing;
            write_node_files(paths, &c)?;
            let expect = control::start(paths, c.node.systemd)?;
            progress.note("  local etcd starting as an existing member; waiting to promote it");
            fault_point("after-etcd-start");
            membership::promote_when_ready(&mut client, &endpoint, id, PROMOTE_WAIT, &lock).await.map_err(|e| {
                let log = paths.component_log("etcd");
                anyhow::anyhow!("{e}\nthe local etcd log {} ends with:\n{}", log.display(), control::tail(&log, 15))
            })?;
            progress.note(format!("  member {id:x} is a voting member"));
            // Right after promotion the member may still act as a learner
            // for a moment: the gate waits for it to answer as a voter.
            membership::wait_gate(&mut client, &endpoint, &creds, &peer, GatePoint::AfterPromotion, GATE_WAIT, |_| {})
                .await?;
            anyhow::Ok(expect)
        }
        .await;
        lock.release(&mut lock_client).await;
        let expect = result?;
        let state = control::wait_healthy(paths, expect, req.timeout, progress)?;
        install::summary(progress, paths, &c, &state, c.node.systemd);
        anyhow::Ok(())
    })
}

/// Fault injection for the recovery tests: `HAKUBE_FAULT=<point>` ends the
/// process at that point as abruptly as a kill would (no unlock, no cleanup).
fn fault_point(name: &str) {
    if std::env::var("HAKUBE_FAULT").as_deref() == Ok(name) {
        eprintln!("[join] HAKUBE_FAULT={name}: stopping here as if killed");
        std::process::exit(137);
    }
}

/// The endpoints, other than `own`, whose etcd answers a status call now.
async fn reachable(endpoints: &[String], own: &str, creds: &Credentials) -> Vec<String> {
    let probes = endpoints.iter().filter(|e| e.as_str() != own).map(|e| async move {
        let ok = async {
            let mut c = etcd::connect(std::slice::from_ref(e), creds, Duration::from_secs(2)).await.ok()?;
            tokio::time::timeout(Duration::from_secs(3), c.status()).await.ok()?.ok()
        }
        .await
        .is_some();
        ok.then(|| e.clone())
    });
    futures_util::future::join_all(probes).await.into_iter().flatten().collect()
}

fn has_data(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir).map(|mut d| d.next().is_some()).unwrap_or(false)
}

fn join_worker(
    rt: &tokio::runtime::Runtime,
    progress: &Progress,
    paths: &Paths,
    flags: serde_norway::Value,
    mut ask: JoinRequest,
    checked: &Checked,
    req: &Request,
) -> anyhow::Result<()> {
    // The kubelet's key is made here and never leaves this host.
    let key = Key::generate(config::KeyAlgorithm::EcdsaP256).map_err(anyhow::Error::msg)?;
    let csr = rcgen::CertificateParams::default().serialize_request(&key.pair)?.pem()?;
    ask.kubelet_csr = Some(csr);
    // kube-proxy's likewise, when this worker runs it.
    let proxy_key = match node_config(&flags, None)?.has(Component::KubeProxy) {
        true => Some(Key::generate(config::KeyAlgorithm::EcdsaP256).map_err(anyhow::Error::msg)?),
        false => None,
    };
    if let Some(k) = &proxy_key {
        ask.kube_proxy_csr = Some(rcgen::CertificateParams::default().serialize_request(&k.pair)?.pem()?);
    }
    let resp = ask_cluster(rt, progress, &req.endpoints, &checked.ca_hash, &ask, JOIN_PATIENCE.min(req.timeout))?;
    let mut c = node_config(&flags, Some(&resp.cluster))?;
    c.node.api_servers = resp
        .etcd_members
        .iter()
        .filter(|m| !m.is_learner)
        .filter_map(|m| m.client_urls.first().and_then(|u| crate::etcd::host_of_url(u)))
        .filter_map(|h| format!("{h}:{}", c.node.api_server_port).parse().ok())
        .collect();
    let cert = resp.kubelet_cert.context("the join API sent no kubelet certificate")?;
    let ca = resp.ca_certs.get("ca.crt").context("the join API sent no cluster CA")?;
    if pki::ca_hash(ca.as_bytes()).map_err(anyhow::Error::msg)? != checked.ca_hash {
        bail!("the cluster CA received does not match --ca-hash: refusing it");
    }
    progress.phase("writing the kubelet's credentials and config", || -> anyhow::Result<()> {
        let mut files = vec![
            FileSpec::new(paths.pki("ca.crt"), ca.clone(), 0o644),
            FileSpec::new(
                paths.kubeconfig("kubelet"),
                kubeconfig::render(
                    &c.cluster.name,
                    &kubeconfig::server_for(&c, "kubelet"),
                    ca,
                    &format!("system:node:{}", c.node.name),
                    &cert,
                    &key.pem,
                ),
                0o600,
            ),
        ];
        if let Some(k) = &proxy_key {
            let cert = resp.kube_proxy_cert.as_deref().context("the join API sent no kube-proxy certificate")?;
            let text = kubeconfig::render(
                &c.cluster.name,
                &kubeconfig::server_for(&c, "kube-proxy"),
                ca,
                pki::KUBE_PROXY_USER,
                cert,
                &k.pem,
            );
            files.push(FileSpec::new(paths.kubeconfig("kube-proxy"), text, 0o600));
        }
        if c.node.systemd {
            files.push(systemd::unit_file(paths));
        }
        // Last: a re-run that finds the config takes the worker as joined.
        files.push(FileSpec::new(paths.config_file(), c.to_yaml(), 0o644));
        create_dir_all(&paths.pki_dir(), 0o700)?;
        apply_files(&files)?;
        Ok(())
    })?;
    let expect = progress.phase("starting the agent", || control::start(paths, c.node.systemd))?;
    let state = progress.phase("waiting for the node to become healthy", || {
        control::wait_healthy(paths, expect, req.timeout, progress)
    })?;
    install::summary(progress, paths, &c, &state, c.node.systemd);
    Ok(())
}

/// A re-run on a host that already has a config: finish what was started.
fn resume(
    rt: &tokio::runtime::Runtime,
    progress: &Progress,
    paths: &Paths,
    c: ClusterConfig,
    req: &Request,
) -> anyhow::Result<()> {
    if c.has(Component::Etcd) {
        if c.node.etcd.initial_cluster_state == InitialClusterState::New {
            bail!(
                "this host is the first master of cluster {} already: run `hakube reset` here before joining it elsewhere",
                c.cluster.name
            );
        }
        progress
            .note(format!("{} already has this node's config: resuming its etcd join", paths.config_file().display()));
        return join_etcd(rt, progress, paths, c, req);
    }
    progress.note("this worker is already joined: making sure its agent runs");
    let expect = control::start(paths, c.node.systemd)?;
    let state = control::wait_healthy(paths, expect, req.timeout, progress)?;
    install::summary(progress, paths, &c, &state, c.node.systemd);
    Ok(())
}
