//! The kernel settings Services and the pod network need on a node: IPv4
//! forwarding, and bridged traffic through iptables (`br_netfilter`), so
//! that a pod reaching a ClusterIP whose endpoint is on its own bridge is
//! rewritten by kube-proxy's rules. Both are per network namespace, so a
//! simulated host sets its own. Preflight sets them on install and join;
//! the agent again at each start (a reboot resets them).

use std::path::{Path, PathBuf};

/// A setting and the value it must have.
pub const SETTINGS: [(&str, &str); 2] = [("net/ipv4/ip_forward", "1"), ("net/bridge/bridge-nf-call-iptables", "1")];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SysctlError {
    #[error(
        "the br_netfilter kernel module is not loaded and `modprobe br_netfilter` failed ({0}): load it \
         (and list it in /etc/modules-load.d/ so it stays), kube-proxy needs it for Services"
    )]
    BrNetfilter(String),
    #[error("cannot set {path} to {value}: {reason}")]
    Write { path: String, value: String, reason: String },
}

fn proc_sys(name: &str) -> PathBuf {
    Path::new("/proc/sys").join(name)
}

/// A setting's value now (None: absent, e.g. `br_netfilter` not loaded).
pub fn current(name: &str) -> Option<String> {
    std::fs::read_to_string(proc_sys(name)).ok().map(|v| v.trim().to_owned())
}

/// Loads `br_netfilter` when its settings are missing.
fn ensure_br_netfilter() -> Result<(), SysctlError> {
    if proc_sys("net/bridge").exists() {
        return Ok(());
    }
    let out = std::process::Command::new("modprobe").arg("br_netfilter").output();
    match out {
        Ok(o) if o.status.success() && proc_sys("net/bridge").exists() => Ok(()),
        Ok(o) => Err(SysctlError::BrNetfilter(String::from_utf8_lossy(&o.stderr).trim().to_owned())),
        Err(e) => Err(SysctlError::BrNetfilter(e.to_string())),
    }
}

/// Sets every setting that does not have its value yet; returns the ones
/// it changed.
pub fn ensure() -> Result<Vec<&'static str>, SysctlError> {
    ensure_br_netfilter()?;
    let mut changed = vec![];
    for (name, value) in SETTINGS {
        if current(name).as_deref() == Some(value) {
            continue;
        }
        let path = proc_sys(name);
        std::fs::write(&path, value).map_err(|e| SysctlError::Write {
            path: path.display().to_string(),
            value: value.into(),
            reason: e.to_string(),
        })?;
        changed.push(name);
    }
    Ok(changed)
}
