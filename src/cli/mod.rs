//! The command line. `install` takes kURL-style words (`ha`,
//! `load-balancer-address=HOST:PORT`, `taint-control-plane`, any other option
//! as `name=value`) as well as the same options as `--flags`; both become one
//! partial config tree, validated with everything else.

pub mod bundle;
pub mod certs;
pub mod check;
pub mod console;
pub mod install;
pub mod join;
pub mod logs;
pub mod node;
pub mod reset;
pub mod restore;
pub mod show_config;
pub mod snapshot;
pub mod status;
pub mod support;
pub mod tokens;
pub mod upgrade;
mod words;

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use serde_norway::Value;

use crate::config::{self, CertSan, Cidr, Component, HostPort, KeyAlgorithm, NodeName};
use crate::host::paths::Paths;

#[derive(Debug, Parser)]
#[command(name = "hakube", version, about = "Highly available Kubernetes on bare machines", propagate_version = true)]
pub struct Cli {
    /// Prefix of every host path (a sandbox or test host uses its own).
    #[arg(long, global = true, default_value = "/", value_name = "DIR")]
    pub root: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Install the first master, or converge an installed node onto new options.
    Install(Box<InstallArgs>),
    /// Join this host to a cluster (what a join script runs).
    Join(Box<JoinArgs>),
    /// Print a script that joins a new host (run on a master).
    NodeJoinScript {
        /// A script for a master (control plane and etcd member); default a worker.
        #[arg(long)]
        master: bool,
        /// How long the script's token lives (default 2h for masters, 24h for workers).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        ttl: Option<Duration>,
        /// Write the script to FILE, readable by its owner only (it holds
        /// secrets), instead of printing it.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Join tokens (run on a master).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Print a one-time link that signs a browser in to the cluster page (run on a master).
    Console {
        /// List the page's open sessions instead: who printed the link, where the browser signed in from, when.
        #[arg(long)]
        sessions: bool,
        /// End every session and every unused sign-in link, on every master (a cookie or a link that may have leaked).
        #[arg(long, conflicts_with = "sessions")]
        end_sessions: bool,
    },
    /// The cluster's nodes (run on a master).
    #[command(subcommand)]
    Node(NodeCommand),
    /// Show the node's components and etcd; exit 0 only when all are healthy.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check this node and, from a master, the cluster: one line per check
    /// (✓ fine, ‼ warning, × error) with a hint; exit 0 when all pass, 1
    /// with warnings, 2 with errors, 3 when nothing is installed.
    Check {
        /// `text`, or `json` for a list of {group, name, outcome, message, hint}.
        #[arg(long, value_enum, default_value = "text")]
        output: CheckOutput,
    },
    /// Show a component's log (or the agent's: `agent`); without a name,
    /// list the logs there are.
    Logs {
        #[arg(value_name = "COMPONENT")]
        name: Option<String>,
        /// How many of the last lines to show (0: all).
        #[arg(long, short = 'n', default_value_t = 100, value_name = "N")]
        tail: usize,
        /// Keep printing what is written, until interrupted.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Write one archive (.tar.gz) for support: status, check, metrics,
    /// recent logs, etcd's members, the cluster's Nodes, Events and add-on
    /// objects, the config; secrets redacted.
    SupportBundle {
        /// The archive to write (default hakube-support-NODE-TIME.tar.gz here).
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Stop everything hakube runs here and remove what it created under the root
    /// (a master first leaves the etcd cluster).
    Reset {
        /// Reset even when leaving etcd fails or would cost the rest its quorum.
        #[arg(long)]
        force: bool,
    },
    /// Run the host agent (what the systemd unit starts).
    Agent,
    /// Config file helpers.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Certificate helpers.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// etcd helpers (run on a master).
    #[command(subcommand)]
    Etcd(EtcdCommand),
    /// The airgap bundle: one file with hakube, Kubernetes and its images.
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// Monitoring helpers: the alert rules for hakube's /metrics.
    #[command(subcommand)]
    Monitoring(MonitoringCommand),
    /// Print the version.
    Version,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CheckOutput {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum MonitoringCommand {
    /// Print the alert rules (a Prometheus rule file).
    Rules {
        /// Print them as a PrometheusRule object for the Prometheus Operator.
        #[arg(long)]
        prometheus_rule: bool,
        /// The PrometheusRule's namespace.
        #[arg(long, default_value = "monitoring", requires = "prometheus_rule", value_name = "NAME")]
        namespace: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Take a node that is gone for good out of the cluster (its etcd member,
    /// only if the rest keeps quorum, and its registration).
    Remove { name: NodeName },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// List the live tokens (never their secrets).
    List,
    /// Revoke a token by its id (the part before the dot).
    Revoke { id: String },
}

/// `--components` for a join: a list, or `none` for an agent-only worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentList(pub Vec<Component>);

impl std::str::FromStr for ComponentList {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "none" {
            return Ok(ComponentList(vec![]));
        }
        s.split(',')
            .map(|c| c.trim().parse::<Component>().map_err(|e| e.0))
            .collect::<Result<_, _>>()
            .map(ComponentList)
    }
}

#[derive(Debug, Clone, Args)]
pub struct JoinArgs {
    /// Join as a master (control plane and etcd member).
    #[arg(long)]
    pub master: bool,
    /// Masters' join APIs, HOST:PORT, comma-separated.
    #[arg(long, env = "HAKUBE_JOIN_ENDPOINTS", value_delimiter = ',', value_name = "HOST:PORT,…")]
    pub endpoints: Vec<String>,
    #[arg(long, env = "HAKUBE_JOIN_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub token: Option<crate::join::token::JoinToken>,
    /// sha256:<hex> of the cluster CA's public key.
    #[arg(long, env = "HAKUBE_CA_HASH", value_name = "HASH")]
    pub ca_hash: Option<String>,
    /// Opens the cluster's key material (masters).
    #[arg(long, env = "HAKUBE_CERTIFICATE_KEY", hide_env_values = true, value_name = "KEY")]
    pub certificate_key: Option<crate::join::material::CertificateKey>,
    #[arg(long, value_name = "IP")]
    pub advertise_address: Option<IpAddr>,
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<NodeName>,
    /// What this host runs (comma-separated, or `none` for an agent-only worker).
    #[arg(long, value_name = "LIST")]
    pub components: Option<ComponentList>,
    #[arg(long)]
    pub no_systemd: bool,
    #[arg(long, value_name = "DIR")]
    pub bundle: Option<PathBuf>,
    #[arg(long, value_delimiter = ',', value_name = "NAME,…")]
    pub ignore_preflight_errors: Vec<String>,
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Where the agent serves /metrics, plain HTTP (default 127.0.0.1:9469).
    #[arg(long, value_name = "IP:PORT")]
    pub metrics_address: Option<std::net::SocketAddr>,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print this node's effective config, and where each value comes from.
    Print,
    /// Print the default cluster config (node name and address are detected at install).
    PrintDefaults,
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Plan and write only the PKI for the given options (no agent, no config).
    Generate(Box<InstallArgs>),
    /// List every certificate of this node (PKI, kubeconfigs, kubelet's) with
    /// its residual time; exit 1 when one has expired or cannot be read.
    CheckExpiration {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Reissue certificates of this master now, keeping their keys, and
    /// restart what reads them: NAME as check-expiration lists them
    /// (apiserver, etcd/peer, admin.conf, …), or all.
    Renew {
        #[arg(value_name = "NAME|all", required = true)]
        names: Vec<String>,
        /// How long to wait for the node to be healthy again (e.g. 90s, 5m).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        timeout: Option<Duration>,
    },
}

#[derive(Debug, Subcommand)]
pub enum EtcdCommand {
    /// Snapshots of this master's etcd member.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Make this bare server the first master of the cluster a snapshot
    /// holds (same CA, same objects, a new one-member etcd).
    Restore(Box<RestoreArgs>),
}

#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Pack a Kubernetes bundle directory (scripts/kube-bundle.sh's) and this
    /// hakube binary into one file.
    Create {
        /// The bundle directory.
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
        /// The file to write.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Sign it with this Ed25519 key (`openssl genpkey -algorithm ed25519`).
        #[arg(long, value_name = "KEY")]
        sign: Option<PathBuf>,
    },
    /// Read a bundle file through: every member against its manifest, and
    /// the signature when a public key is given.
    Verify {
        file: PathBuf,
        /// The Ed25519 public key (`openssl pkey -in KEY -pubout`).
        #[arg(long, value_name = "PUBKEY")]
        key: Option<PathBuf>,
    },
    /// Unpack a bundle file under the data directory as `install
    /// bundle=FILE` does (checked as it is written, once per bundle), and
    /// print the directory: a bundle staged before an install, or looked into.
    Unpack {
        file: PathBuf,
        /// Accept it only if signed with this Ed25519 public key (PEM).
        #[arg(long, value_name = "PUBKEY")]
        key: Option<PathBuf>,
    },
    /// Print a bundle's manifest: versions, architecture, members.
    List {
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The snapshot, with its record (FILE.json) beside it.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// A copy of a master's PKI directory (/var/lib/hakube/pki): the CAs,
    /// the service-account key and the key Secrets are encrypted with.
    #[arg(long, value_name = "DIR")]
    pub pki: PathBuf,
    /// This node's options, as for install (the cluster-wide ones are the snapshot's).
    #[command(flatten)]
    pub install: InstallArgs,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Take a snapshot now (kept until deleted by hand; scheduled ones are pruned).
    Save {
        /// Directory to write it to (default /var/backups/hakube/etcd).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// List the snapshots on this host, oldest first.
    List {
        /// Directory to list (default /var/backups/hakube/etcd).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Read a snapshot through and check it against its record and etcd's own checksum.
    Verify { file: PathBuf },
}

/// `vip=`: the cluster's virtual IP, or `none` to remove it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VipArg {
    Address(std::net::Ipv4Addr),
    None,
}

impl std::str::FromStr for VipArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "none" {
            return Ok(VipArg::None);
        }
        s.parse()
            .map(VipArg::Address)
            .map_err(|_| format!("{s} is not an IPv4 address: the virtual IP is IPv4 (or none, to remove it)"))
    }
}

#[derive(Debug, Clone, Default, Args)]
pub struct InstallArgs {
    /// kURL-style words: ha, taint-control-plane, load-balancer-address=HOST:PORT, vip=IPV4, NAME=VALUE.
    #[arg(value_name = "WORD")]
    pub words: Vec<String>,
    /// Multi-master mode (sticky once set).
    #[arg(long)]
    pub ha: bool,
    /// External TCP load balancer for the API servers; the port defaults to 6443.
    #[arg(long, value_name = "HOST:PORT")]
    pub load_balancer_address: Option<HostPort>,
    /// A virtual IP (IPv4, free, in the masters' subnet) that one healthy
    /// master holds: the cluster's external address, with no load balancer.
    /// A re-run may move it, or remove it (`none`) with a load-balancer address.
    #[arg(long, value_name = "IPV4|none")]
    pub vip: Option<VipArg>,
    /// Keep workloads off the masters (`=false` takes it back).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub taint_control_plane: Option<bool>,
    /// How long a node may be lost before it is purged (e.g. 20m, 1h, never).
    #[arg(long, value_name = "DURATION|never")]
    pub lost_node_toleration: Option<crate::config::Toleration>,
    /// How often every master snapshots its etcd member (e.g. 12h, 30m, never).
    #[arg(long, value_name = "DURATION|never")]
    pub etcd_snapshot_interval: Option<crate::config::SnapshotInterval>,
    /// How many scheduled etcd snapshots each master keeps (1 to 1000).
    #[arg(long, value_name = "N")]
    pub etcd_snapshot_retention: Option<crate::config::Retention>,
    /// This host's address for etcd and the API server (default: the default route's).
    #[arg(long, value_name = "IP")]
    pub advertise_address: Option<IpAddr>,
    /// This node's name (default: the hostname).
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<NodeName>,
    /// Extra names or IPs for the API server certificate (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "SAN,…")]
    pub cert_sans: Vec<CertSan>,
    #[arg(long, value_name = "CIDR")]
    pub service_cidr: Option<Cidr>,
    #[arg(long, value_name = "CIDR")]
    pub pod_cidr: Option<Cidr>,
    /// Which components this host runs (comma-separated; default all).
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub components: Option<Vec<Component>>,
    /// Start the agent detached instead of as a systemd unit.
    #[arg(long)]
    pub no_systemd: bool,
    /// A cluster config file to merge (same format as /etc/hakube/cluster.yaml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The component binaries: a bundle directory, or a bundle file.
    #[arg(long, value_name = "DIR|FILE")]
    pub bundle: Option<PathBuf>,
    /// Accept only bundle files signed with this Ed25519 public key (PEM).
    #[arg(long, value_name = "PUBKEY")]
    pub bundle_key: Option<PathBuf>,
    /// Algorithm for new keys.
    #[arg(long, value_name = "ALG")]
    pub key_algorithm: Option<KeyAlgorithm>,
    /// Where the agent serves /metrics, plain HTTP (default 127.0.0.1:9469;
    /// give an address the scraper reaches, e.g. 0.0.0.0:9469).
    #[arg(long, value_name = "IP:PORT")]
    pub metrics_address: Option<std::net::SocketAddr>,
    /// Preflight checks to skip (names as printed, or `all`).
    #[arg(long, value_delimiter = ',', value_name = "NAME,…")]
    pub ignore_preflight_errors: Vec<String>,
    /// How long to wait for the node to become healthy (e.g. 90s, 5m).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
}

/// A duration flag: as [`config::types::parse_seconds`], and a bare number
/// is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    config::types::parse_seconds(s).map_err(|e| format!("{s:?} is not a duration ({e}): write e.g. 90s, 5m or 1h30m"))
}

impl InstallArgs {
    /// The options given, as a partial config tree.
    pub fn flags_tree(&self) -> Value {
        let mut t = Value::Mapping(Default::default());
        let mut set = |section, key, v: Value| config::set(&mut t, section, key, v);
        if self.ha {
            set("cluster", "ha", Value::Bool(true));
        }
        if let Some(lb) = &self.load_balancer_address {
            set("cluster", "loadBalancerAddress", lb.to_string().into());
        }
        match self.vip {
            Some(VipArg::Address(v)) => set("cluster", "vip", v.to_string().into()),
            Some(VipArg::None) => set("cluster", "vip", Value::Null),
            None => {}
        }
        if let Some(t) = self.taint_control_plane {
            set("cluster", "taintControlPlane", Value::Bool(t));
        }
        if let Some(t) = self.lost_node_toleration {
            set("cluster", "lostNodeToleration", t.to_string().into());
        }
        if let Some(i) = self.etcd_snapshot_interval {
            set("cluster", "etcdSnapshotInterval", i.to_string().into());
        }
        if let Some(r) = self.etcd_snapshot_retention {
            set("cluster", "etcdSnapshotRetention", r.get().into());
        }
        if !self.cert_sans.is_empty() {
            set("cluster", "certSans", self.cert_sans.iter().map(|s| Value::from(s.as_str())).collect());
        }
        if let Some(c) = self.service_cidr {
            set("cluster", "serviceCidr", c.to_string().into());
        }
        if let Some(c) = self.pod_cidr {
            set("cluster", "podCidr", c.to_string().into());
        }
        if let Some(k) = self.key_algorithm {
            set("cluster", "keyAlgorithm", k.to_string().into());
        }
        if let Some(a) = self.advertise_address {
            set("node", "advertiseAddress", a.to_string().into());
        }
        if let Some(n) = &self.node_name {
            set("node", "name", n.as_str().into());
        }
        if let Some(cs) = &self.components {
            set("node", "components", cs.iter().map(|c| Value::from(c.name())).collect());
        }
        if self.no_systemd {
            set("node", "systemd", Value::Bool(false));
        }
        if let Some(b) = &self.bundle {
            let abs = std::path::absolute(b).unwrap_or_else(|_| b.clone());
            set("node", "bundle", abs.display().to_string().into());
        }
        if let Some(k) = &self.bundle_key {
            let abs = std::path::absolute(k).unwrap_or_else(|_| k.clone());
            set("node", "bundleKey", abs.display().to_string().into());
        }
        if let Some(a) = self.metrics_address {
            set("node", "metricsAddress", a.to_string().into());
        }
        t
    }
}

/// What a command that reads the installed node got: nothing installed is
/// said on stderr and becomes its exit code (3), not an error.
fn installed<T>(read: anyhow::Result<T>) -> anyhow::Result<Result<T, i32>> {
    match read {
        Ok(r) => Ok(Ok(r)),
        Err(e) if e.is::<crate::cli::status::NotInstalled>() => {
            eprintln!("error: {e}");
            Ok(Err(crate::cli::status::EXIT_NOT_INSTALLED))
        }
        Err(e) => Err(e),
    }
}

/// Parses the command line, folding kURL-style words into the flags.
pub fn parse(argv: Vec<OsString>) -> Result<Cli, clap::Error> {
    let mut cli = Cli::try_parse_from(&argv)?;
    if let Command::Install(a) = &mut cli.command {
        words::fold(a)?;
    }
    if let Command::Certs(CertsCommand::Generate(a)) = &mut cli.command {
        words::fold(a)?;
    }
    if let Command::Etcd(EtcdCommand::Restore(r)) = &mut cli.command {
        words::fold(&mut r.install)?;
    }
    Ok(cli)
}

pub fn main(argv: Vec<OsString>) -> anyhow::Result<i32> {
    let cli = match parse(argv) {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version to stdout and errors to stderr.
            let code = if e.use_stderr() { 2 } else { 0 };
            e.print().ok();
            return Ok(code);
        }
    };
    // Read by the parse (a join script exports them): gone before anything
    // is spawned, so that the agent and its components never inherit them.
    for secret in ["HAKUBE_JOIN_TOKEN", "HAKUBE_CERTIFICATE_KEY"] {
        std::env::remove_var(secret);
    }
    let paths = Paths::new(crate::host::paths::resolve_root(&cli.root)?);
    match cli.command {
        Command::Install(a) => {
            crate::cli::install::run(crate::cli::install::Request {
                paths,
                flags: a.flags_tree(),
                config_file: a.config.clone(),
                ignore_preflight_errors: a.ignore_preflight_errors.clone(),
                timeout: a.timeout.unwrap_or(Duration::from_secs(300)),
                restored: None,
            })?;
            Ok(0)
        }
        Command::Etcd(EtcdCommand::Restore(r)) => {
            let a = r.install;
            crate::cli::restore::run(crate::cli::restore::Request {
                paths,
                file: r.file,
                pki: r.pki,
                flags: a.flags_tree(),
                config_file: a.config.clone(),
                ignore_preflight_errors: a.ignore_preflight_errors.clone(),
                timeout: a.timeout.unwrap_or(Duration::from_secs(300)),
            })?;
            Ok(0)
        }
        Command::Join(a) => {
            use crate::cluster::Role;
            crate::cli::join::run(crate::cli::join::Request {
                paths,
                role: if a.master { Role::Master } else { Role::Worker },
                endpoints: a.endpoints,
                token: a.token,
                ca_hash: a.ca_hash,
                certificate_key: a.certificate_key,
                node_name: a.node_name,
                advertise_address: a.advertise_address,
                components: a.components.map(|c| c.0),
                no_systemd: a.no_systemd,
                bundle: a.bundle,
                ignore_preflight_errors: a.ignore_preflight_errors,
                timeout: a.timeout.unwrap_or(Duration::from_secs(600)),
                metrics_address: a.metrics_address,
            })?;
            Ok(0)
        }
        Command::NodeJoinScript { master, ttl, output } => {
            use crate::cluster::Role;
            let role = if master { Role::Master } else { Role::Worker };
            let script = crate::cli::tokens::node_join_script(&paths, role, ttl)?;
            match output {
                Some(file) => {
                    crate::host::fs::write_atomic(&file, script.as_bytes(), 0o600)?;
                    eprintln!("[node-join-script] wrote {} (mode 0600)", file.display());
                }
                None => print!("{script}"),
            }
            Ok(0)
        }
        Command::Console { sessions: false, end_sessions: false } => {
            print!("{}", crate::cli::console::run(&paths)?);
            Ok(0)
        }
        Command::Console { sessions: true, .. } => {
            print!("{}", crate::cli::console::sessions(&paths)?);
            Ok(0)
        }
        Command::Console { end_sessions: true, .. } => {
            print!("{}", crate::cli::console::end_sessions(&paths)?);
            Ok(0)
        }
        Command::Token(TokenCommand::List) => {
            let tokens = crate::cli::tokens::list(&paths)?;
            print!("{}", crate::cli::tokens::render_list(&tokens, crate::host::clock::now_secs()));
            Ok(0)
        }
        Command::Node(NodeCommand::Remove { name }) => {
            crate::cli::node::remove(&paths, name.as_str())?;
            Ok(0)
        }
        Command::Token(TokenCommand::Revoke { id }) => {
            crate::cli::tokens::revoke(&paths, &id)?;
            Ok(0)
        }
        Command::Logs { name: None, .. } => {
            let logs = crate::cli::logs::available(&paths);
            if logs.is_empty() {
                println!("no logs under {}", paths.log_dir().display());
            }
            for (name, size) in logs {
                println!("{name:<26} {:>8} KiB", size.div_ceil(1024));
            }
            Ok(0)
        }
        Command::Logs { name: Some(name), tail, follow } => {
            use std::io::Write as _;
            let path = crate::cli::logs::path_of(&paths, &name)?;
            let shown = crate::cli::logs::tail(&path, tail).with_context(|| path.display().to_string())?;
            let mut out = std::io::stdout().lock();
            let shown = out.write_all(&shown).map_err(anyhow::Error::from).and_then(|()| match follow {
                true => crate::cli::logs::follow(&path, std::fs::metadata(&path)?.len(), &mut out),
                false => Ok(()),
            });
            match shown {
                // `hakube logs kubelet | head`: the reader has seen enough.
                Err(e)
                    if e.downcast_ref::<std::io::Error>()
                        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
                {
                    Ok(0)
                }
                r => r.map(|()| 0),
            }
        }
        Command::SupportBundle { output } => {
            let say = |what: &str| eprintln!("collecting {what}…");
            let entries = match installed(runtime()?.block_on(crate::cli::support::collect(&paths, &say)))? {
                Ok(r) => r,
                Err(code) => return Ok(code),
            };
            let file = match output {
                Some(f) => f,
                None => {
                    let node = config::load_installed(&paths.config_file())?.map(|c| c.node.name.to_string());
                    crate::cli::support::default_file(&node.unwrap_or_default(), crate::host::clock::now_secs())
                }
            };
            crate::cli::support::write(&file, &entries)?;
            let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
            println!(
                "{} ({} files, {} KiB): secrets redacted, see its README.txt",
                file.display(),
                entries.len(),
                size.div_ceil(1024)
            );
            Ok(0)
        }
        Command::Check { output } => {
            let reading = match installed(runtime()?.block_on(crate::cli::check::read(&paths)))? {
                Ok(r) => r,
                Err(code) => return Ok(code),
            };
            let checks = crate::cli::check::judge(&reading);
            match output {
                CheckOutput::Json => println!("{}", serde_json::to_string_pretty(&checks)?),
                CheckOutput::Text => print!("{}", crate::cli::check::render(&checks)),
            }
            Ok(crate::cli::check::worst(&checks).exit_code())
        }
        Command::Status { json } => {
            let report = match installed(runtime()?.block_on(crate::cli::status::gather(&paths)))? {
                Ok(r) => r,
                Err(code) => return Ok(code),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", crate::cli::status::render(&report));
            }
            Ok(if report.healthy { 0 } else { 1 })
        }
        Command::Reset { force } => {
            crate::cli::reset::run(&paths, force)?;
            Ok(0)
        }
        Command::Agent => {
            // While the process has one thread: what a predecessor handed
            // over is taken from the environment.
            let handed = crate::agent::handover::take().transpose().map_err(anyhow::Error::msg)?;
            // Before the runtime starts threads: a mount namespace is the
            // unsharing thread's. A successor is in its predecessor's.
            if handed.is_none() {
                crate::host::mountns::isolate(&paths)?;
            }
            runtime()?.block_on(crate::agent::run(paths, handed))?;
            Ok(0)
        }
        Command::Config(ConfigCommand::Print) => {
            print!("{}", crate::cli::show_config::print(&paths)?);
            Ok(0)
        }
        Command::Config(ConfigCommand::PrintDefaults) => {
            print!(
                "# node.name and node.advertiseAddress are detected at install when not given\n{}",
                serde_norway::to_string(&config::defaults())?
            );
            Ok(0)
        }
        Command::Certs(CertsCommand::Generate(a)) => {
            crate::cli::install::generate_certs(&paths, a.flags_tree(), a.config.as_ref())?;
            Ok(0)
        }
        Command::Certs(CertsCommand::Renew { names, timeout }) => {
            crate::cli::certs::renew(&paths, &names, timeout.unwrap_or(Duration::from_secs(300)))?;
            Ok(0)
        }
        Command::Certs(CertsCommand::CheckExpiration { json }) => {
            let c = config::load_installed(&paths.config_file())?.with_context(|| {
                format!("hakube is not installed under {}: nothing to check", paths.root().display())
            })?;
            let now = time::OffsetDateTime::now_utc();
            let rows = crate::cli::certs::inventory(&paths);
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", crate::cli::certs::render(&rows, now, crate::pki::Lifetime::of(&c).renew_before));
            }
            Ok(if rows.iter().any(|r| crate::cli::certs::failing(r, now)) { 1 } else { 0 })
        }
        Command::Etcd(EtcdCommand::Snapshot(c)) => crate::cli::snapshot::run(&paths, c),
        Command::Bundle(BundleCommand::Create { from, out, sign }) => {
            crate::cli::bundle::create(&from, &out, sign.as_deref())?;
            Ok(0)
        }
        Command::Bundle(BundleCommand::Verify { file, key }) => {
            crate::cli::bundle::verify(&file, key.as_deref())?;
            Ok(0)
        }
        Command::Bundle(BundleCommand::Unpack { file, key }) => {
            let _lock = crate::host::lock::lock_root_waiting(paths.root(), Duration::from_secs(5))?;
            let progress = crate::progress::Progress::new("bundle");
            let dir = progress.phase(&format!("unpacking {}", file.display()), || {
                crate::agent::unpack::unpack(&paths, &file, key.as_deref(), &progress)
            })?;
            println!("{}", dir.display());
            Ok(0)
        }
        Command::Bundle(BundleCommand::List { file, json }) => {
            crate::cli::bundle::list(&file, json)?;
            Ok(0)
        }
        Command::Monitoring(MonitoringCommand::Rules { prometheus_rule, namespace }) => {
            if prometheus_rule {
                print!("{}", crate::metrics::prometheus_rule(&namespace)?);
            } else {
                print!("{}", crate::metrics::RULES);
            }
            Ok(0)
        }
        Command::Version => {
            println!("hakube {}", env!("CARGO_PKG_VERSION"));
            Ok(0)
        }
    }
}

/// One thread: the agent idles small, and nothing here needs more.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_flags_take_units_or_bare_seconds() {
        for (flag, secs) in [("90", 90), ("90s", 90), ("5m", 300), ("1h30m", 5400), ("0", 0)] {
            assert_eq!(parse_duration(flag), Ok(Duration::from_secs(secs)), "{flag}");
        }
        for bad in ["", "5x", "1.5", "250ms", "99999999999999999999"] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains("is not a duration") && e.contains("write e.g. 90s"), "{bad:?}: {e}");
        }
    }
}
