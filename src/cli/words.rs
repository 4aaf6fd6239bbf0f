//! kURL-style words (`ha`, `load-balancer-address=lb:6443`) folded into the
//! `--flags` of the same names.
//!
//! Every `--long` option of `install` is also a word, so the two spellings
//! can never drift apart; an unknown word gets the nearest known one, and an
//! option given both ways with different values is refused.

use std::ffi::OsString;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};

use super::{Cli, InstallArgs};

#[derive(Parser)]
#[command(no_binary_name = true)]
struct Words {
    #[command(flatten)]
    args: InstallArgs,
}

/// Parses `args.words` as flags and merges them into `args`.
pub fn fold(args: &mut InstallArgs) -> Result<(), clap::Error> {
    let words = std::mem::take(&mut args.words);
    if words.is_empty() {
        return Ok(());
    }
    // (name, takes a value, the value may be left out: `taint-control-plane`
    // alone means `=true`)
    let known: Vec<(String, bool, bool)> = Words::command()
        .get_arguments()
        .filter_map(|a| {
            let optional = a.get_num_args().is_some_and(|n| n.min_values() == 0);
            Some((a.get_long()?.to_owned(), a.get_action().takes_values(), optional))
        })
        .collect();
    let mut flags: Vec<OsString> = Vec::new();
    for word in &words {
        let (name, value) = match word.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (word.as_str(), None),
        };
        let Some((_, takes_value, optional)) = known.iter().find(|(k, _, _)| k == name) else {
            let nearest = known
                .iter()
                .map(|(k, _, _)| (strsim::jaro_winkler(name, k), k))
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .filter(|(score, _)| *score > 0.7)
                .map(|(_, k)| format!(" (did you mean `{k}`?)"))
                .unwrap_or_default();
            return Err(err(format!(
                "unknown word `{word}`{nearest}: words are install options without the leading --, \
                 e.g. ha, taint-control-plane, load-balancer-address=HOST:PORT"
            )));
        };
        match (takes_value, value) {
            (true, Some(v)) => flags.push(format!("--{name}={v}").into()),
            (true, None) if *optional => flags.push(format!("--{name}").into()),
            (true, None) => return Err(err(format!("word `{name}` needs a value: write {name}=VALUE"))),
            (false, None) => flags.push(format!("--{name}").into()),
            (false, Some(_)) => return Err(err(format!("word `{name}` takes no value: write just {name}"))),
        }
    }
    let from_words = Words::try_parse_from(flags)?.args;
    merge(args, from_words)
}

fn merge(a: &mut InstallArgs, w: InstallArgs) -> Result<(), clap::Error> {
    fn one<T: PartialEq + std::fmt::Debug>(name: &str, a: &mut Option<T>, w: Option<T>) -> Result<(), clap::Error> {
        match (a.as_ref(), w) {
            (Some(x), Some(y)) if *x != y => {
                Err(err(format!("{name} is given twice with different values ({x:?} and {y:?}): give it once")))
            }
            (None, Some(y)) => {
                *a = Some(y);
                Ok(())
            }
            _ => Ok(()),
        }
    }
    // Every field named: an option added to InstallArgs and not merged
    // here does not compile (it would be dropped when given as a word).
    let InstallArgs {
        words: _,
        ha,
        load_balancer_address,
        vip,
        taint_control_plane,
        lost_node_toleration,
        etcd_snapshot_interval,
        etcd_snapshot_retention,
        advertise_address,
        node_name,
        cert_sans,
        service_cidr,
        pod_cidr,
        components,
        no_systemd,
        config,
        bundle,
        bundle_key,
        key_algorithm,
        metrics_address,
        ignore_preflight_errors,
        timeout,
    } = w;
    a.ha |= ha;
    a.no_systemd |= no_systemd;
    one("taint-control-plane", &mut a.taint_control_plane, taint_control_plane)?;
    one("lost-node-toleration", &mut a.lost_node_toleration, lost_node_toleration)?;
    one("etcd-snapshot-interval", &mut a.etcd_snapshot_interval, etcd_snapshot_interval)?;
    one("etcd-snapshot-retention", &mut a.etcd_snapshot_retention, etcd_snapshot_retention)?;
    one("load-balancer-address", &mut a.load_balancer_address, load_balancer_address)?;
    one("vip", &mut a.vip, vip)?;
    one("advertise-address", &mut a.advertise_address, advertise_address)?;
    one("node-name", &mut a.node_name, node_name)?;
    one("service-cidr", &mut a.service_cidr, service_cidr)?;
    one("pod-cidr", &mut a.pod_cidr, pod_cidr)?;
    one("components", &mut a.components, components)?;
    one("config", &mut a.config, config)?;
    one("bundle", &mut a.bundle, bundle)?;
    one("bundle-key", &mut a.bundle_key, bundle_key)?;
    one("key-algorithm", &mut a.key_algorithm, key_algorithm)?;
    one("metrics-address", &mut a.metrics_address, metrics_address)?;
    one("timeout", &mut a.timeout, timeout)?;
    a.cert_sans.extend(cert_sans);
    a.ignore_preflight_errors.extend(ignore_preflight_errors);
    Ok(())
}

fn err(msg: String) -> clap::Error {
    Cli::command().error(ErrorKind::InvalidValue, msg)
}

#[cfg(test)]
mod tests {
    use super::super::{parse, Command};

    fn install(args: &[&str]) -> Result<super::InstallArgs, String> {
        let argv = std::iter::once("hakube").chain(args.iter().copied()).map(Into::into).collect();
        match parse(argv).map_err(|e| e.to_string())?.command {
            Command::Install(a) => Ok(*a),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_setting_can_be_turned_off_by_word_or_flag() {
        let on = install(&["install", "taint-control-plane"]).unwrap();
        assert_eq!(on.taint_control_plane, Some(true));
        let off = install(&["install", "taint-control-plane=false"]).unwrap();
        assert_eq!(off.taint_control_plane, Some(false));
        let flag = install(&["install", "--taint-control-plane=false"]).unwrap();
        assert_eq!(flag.flags_tree(), off.flags_tree());
        let t = install(&["install", "lost-node-toleration=20s"]).unwrap();
        assert_eq!(serde_norway::to_string(&t.flags_tree()).unwrap(), "cluster:\n  lostNodeToleration: 20s\n");
        let e = install(&["install", "taint-control-plane=maybe"]).unwrap_err();
        assert!(e.contains("maybe"), "{e}");
    }

    #[test]
    fn words_and_flags_are_the_same_options() {
        let w =
            install(&["install", "ha", "load-balancer-address=lb.example.test:6443", "taint-control-plane"]).unwrap();
        let f =
            install(&["install", "--ha", "--load-balancer-address", "lb.example.test:6443", "--taint-control-plane"])
                .unwrap();
        assert_eq!(w.flags_tree(), f.flags_tree());
        let w = install(&["install", "vip=10.0.0.100"]).unwrap();
        let f = install(&["install", "--vip", "10.0.0.100"]).unwrap();
        let addr = Some(crate::cli::VipArg::Address([10, 0, 0, 100].into()));
        assert_eq!((w.vip, f.vip), (addr, addr));
        let e = install(&["install", "vip=fd00::1"]).unwrap_err().to_string();
        assert!(e.contains("fd00::1 is not an IPv4 address: the virtual IP is IPv4 (or none, to remove it)"), "{e}");
        let off = install(&["install", "vip=none", "load-balancer-address=lb:6443"]).unwrap();
        assert_eq!(off.vip, Some(crate::cli::VipArg::None));
        assert!(serde_norway::to_string(&off.flags_tree()).unwrap().contains("vip: null"));
        let w = install(&["install", "metrics-address=0.0.0.0:9469", "etcd-snapshot-retention=3"]).unwrap();
        let f = install(&["install", "--metrics-address", "0.0.0.0:9469", "--etcd-snapshot-retention=3"]).unwrap();
        assert_eq!(w.flags_tree(), f.flags_tree());
        assert!(serde_norway::to_string(&w.flags_tree()).unwrap().contains("metricsAddress: 0.0.0.0:9469"));
        let mixed = install(&["--root", "/tmp/x", "install", "ha", "--advertise-address", "127.0.0.1", "node-name=m1"])
            .unwrap();
        let tree = serde_norway::to_string(&mixed.flags_tree()).unwrap();
        crate::golden::check("words-mixed.yaml", &tree);
    }

    #[test]
    fn join_arguments_never_show_their_secrets_in_debug() {
        let key = "ab".repeat(32);
        let argv = ["hakube", "join", "--master", "--token", "abcdef.0123456789abcdef", "--certificate-key", &key];
        let cli = parse(argv.iter().map(Into::into).collect()).unwrap();
        let dbg = format!("{cli:?}");
        assert!(!dbg.contains("0123456789abcdef") && !dbg.contains(&key), "{dbg}");
        let bad = ["hakube", "join", "--token", "not-a-token"];
        let e = parse(bad.iter().map(Into::into).collect()).unwrap_err().to_string();
        assert!(e.contains("a join token has the form"), "{e}");
    }

    #[test]
    fn bad_words_are_named_with_the_nearest_one() {
        let e = install(&["install", "taint-controlplane"]).unwrap_err();
        assert!(
            e.contains("unknown word `taint-controlplane`") && e.contains("did you mean `taint-control-plane`"),
            "{e}"
        );
        let e = install(&["install", "load-balancer-address"]).unwrap_err();
        assert!(e.contains("needs a value"), "{e}");
        let e = install(&["install", "ha=yes"]).unwrap_err();
        assert!(e.contains("takes no value"), "{e}");
        let e = install(&["install", "lost-node-toleration=1fortnight"]).unwrap_err();
        assert!(e.contains("write a duration such as 20s"), "{e}");
        let e = install(&["install", "load-balancer-address=https://lb:6443"]).unwrap_err();
        assert!(e.contains("has a scheme"), "{e}");
        let e = install(&["install", "load-balancer-address=a:1", "--load-balancer-address", "b:1"]).unwrap_err();
        assert!(e.contains("given twice"), "{e}");
        let e = install(&["install", "load-balancer-address=fd00::1"]).unwrap_err();
        assert!(e.contains("without brackets"), "{e}");
    }
}
