//! hakube's developer tools, beside the product and never shipped: the
//! multi-host sandbox, the VM tests, the benchmarks and the conformance run
//! (`scripts/sandbox.sh`, `scripts/test-vm.sh`, `scripts/bench-*.sh` and
//! `scripts/conformance.sh` prepare the machine, then run them). What stays
//! in bash is what bash is for: package installs, qemu and the VMs'
//! debootstrap, the bundle build.

mod bench;
mod conformance;
mod proc;
mod sandbox;
mod soak;
/// The tests' hosts and helpers, shared.
#[path = "../../tests/support/mod.rs"]
mod support;
mod vm_test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "hakube-dev", about = "hakube's developer tools (run through scripts/*.sh)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The multi-host sandbox: hosts in network namespaces on one bridge.
    #[command(subcommand)]
    Sandbox(sandbox::Action),
    /// hakube as the systemd unit of real VMs (scripts/test-vm.sh runs it).
    VmTest,
    /// Kubernetes' conformance suite (scripts/conformance.sh runs it).
    #[command(subcommand)]
    Conformance(conformance::Action),
    /// Random faults under a workload, then the invariants (scripts/soak.sh runs it).
    Soak(soak::Args),
    /// A benchmark (scripts/bench-*.sh run them).
    #[command(subcommand)]
    Bench(Bench),
}

#[derive(Subcommand)]
enum Bench {
    /// A bundle file taken in: hakube's unpack and import against tar, sha256sum -c and ctr.
    Bundle(bench::bundle::Args),
    /// The purge of a lost worker and master against the same mutations by hand.
    Purge(bench::purge::Args),
    /// A whole cluster moved to the next Kubernetes minor by one re-run,
    /// against every node moved at once.
    Upgrade(bench::upgrade::Args),
    /// From nothing to a cluster that runs applications; the bundle's cold build.
    Cluster(bench::cluster::Args),
    /// hakube's etcd install and PKI against the kubeadm way with openssl.
    Install(bench::install::Args),
    /// N masters joining etcd at once: hakube against two raw-etcd baselines.
    Join(bench::join::Args),
    /// The node-local balancer against HAProxy; failover; the address change.
    Lb(bench::lb::Args),
    /// Simulated nodes: API load, leader round, purge time, agents' cost.
    Scale(bench::scale::Args),
    /// etcd snapshots: hakube's save and verify against etcdctl and sha256sum.
    Snapshot(bench::snapshot::Args),
    /// The virtual IP's failover against keepalived's, over the same masters.
    Vip(bench::vip::Args),
}

fn main() {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Bench(_) | Command::Conformance(_) | Command::Soak(_)) {
        proc::stop_on_signals();
    }
    let result = match cli.command {
        Command::Sandbox(action) => sandbox::run(action),
        Command::Conformance(action) => conformance::run(action),
        Command::Soak(args) => soak::run(args),
        Command::Bench(Bench::Bundle(args)) => bench::bundle::run(args),
        Command::Bench(Bench::Purge(args)) => bench::purge::run(args),
        Command::Bench(Bench::Upgrade(args)) => bench::upgrade::run(args),
        Command::Bench(Bench::Cluster(args)) => bench::cluster::run(args),
        Command::Bench(Bench::Install(args)) => bench::install::run(args),
        Command::Bench(Bench::Join(args)) => bench::join::run(args),
        Command::Bench(Bench::Lb(args)) => bench::lb::run(args),
        Command::Bench(Bench::Scale(args)) => bench::scale::run(args),
        Command::Bench(Bench::Snapshot(args)) => bench::snapshot::run(args),
        Command::Bench(Bench::Vip(args)) => bench::vip::run(args),
        Command::VmTest => vm_test::run().map(|passed| {
            if !passed {
                std::process::exit(1);
            }
        }),
    };
    if let Err(e) = result {
        eprintln!("{}: error: {e:#}", proc::prog());
        std::process::exit(1);
    }
}
