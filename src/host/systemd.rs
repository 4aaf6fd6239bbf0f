//! The `hakube.service` unit and the few systemctl calls install and reset make.

use std::path::Path;
use std::process::Command;

use super::fs::FileSpec;
use super::paths::Paths;

/// The unit, as shipped in `systemd/hakube.service`.
pub const UNIT: &str = include_str!("../../systemd/hakube.service");
pub const UNIT_NAME: &str = "hakube.service";

/// Whether systemd manages this machine (sd_booted(3): the directory exists
/// only when systemd is PID 1).
pub fn is_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// Whether the agent runs as the systemd unit (pure). The unit is the
/// machine's own `hakube.service`: a simulated host (a root other than `/`)
/// must never start, stop or remove it.
pub fn decide(root_is_host: bool, wanted: bool, running: bool) -> Result<bool, String> {
    match (wanted, running, root_is_host) {
        (true, true, false) => Err("with a --root other than /, the agent cannot be the machine's hakube.service: \
             pass --no-systemd (the agent then runs detached)"
            .into()),
        (true, true, true) => Ok(true),
        _ => Ok(false),
    }
}

pub fn unit_file(paths: &Paths) -> FileSpec {
    FileSpec::new(paths.systemd_unit(), UNIT, 0o644)
}

/// What systemd says of a unit: its `ActiveState` (`active`,
/// `activating`, `failed`, ...) and `NRestarts`, how often it restarted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitState {
    pub active: String,
    pub restarts: u32,
}

pub fn unit_state(unit: &str) -> Option<UnitState> {
    let out = Command::new("systemctl").args(["show", "-p", "ActiveState,NRestarts", unit]).output().ok()?;
    parse_show(&String::from_utf8_lossy(&out.stdout))
}

/// `systemctl show -p ActiveState,NRestarts` output (`Key=value` lines).
fn parse_show(text: &str) -> Option<UnitState> {
    let get = |k: &str| text.lines().find_map(|l| l.strip_prefix(k)?.strip_prefix('=')).map(str::trim);
    Some(UnitState {
        active: get("ActiveState")?.to_owned(),
        restarts: get("NRestarts").and_then(|n| n.parse().ok()).unwrap_or(0),
    })
}

pub fn systemctl(args: &[&str]) -> Result<(), String> {
    let out = Command::new("systemctl").args(args).output().map_err(|e| format!("cannot run systemctl: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("systemctl {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of `key=` in the unit's `[section]`, as systemd reads it (the
    /// last assignment wins; comments and other sections are skipped).
    fn directive<'a>(unit: &'a str, section: &str, key: &str) -> Option<&'a str> {
        let mut current = "";
        let mut value = None;
        for line in unit.lines().map(str::trim) {
            if line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                current = name;
            } else if let Some((k, v)) = line.split_once('=') {
                if current == section && k.trim() == key {
                    value = Some(v.trim());
                }
            }
        }
        value
    }

    #[test]
    fn the_unit_comes_back_by_itself_and_keeps_the_pods_across_a_restart() {
        let get = |section, key| directive(UNIT, section, key).unwrap_or_else(|| panic!("no {key}= in [{section}]"));
        assert_eq!(get("Service", "ExecStart"), "/usr/local/bin/hakube agent");
        // Enabled for boot, after the node's address is configured.
        assert_eq!(get("Install", "WantedBy"), "multi-user.target");
        assert_eq!(get("Unit", "After"), "network-online.target");
        assert_eq!(get("Unit", "Wants"), "network-online.target");
        // Restarted however often it fails.
        assert_eq!(get("Service", "Restart"), "always");
        assert_eq!(get("Unit", "StartLimitIntervalSec"), "0");
        // Only the agent is signalled: it stops its children in order, and
        // the containerd shims (the pods) outlive a restart of the agent.
        assert_eq!(get("Service", "KillMode"), "process");
        // Long enough for the agent's ordered stop: six components, 12 s
        // each at most, and 6 s for the leader election.
        let stop: u64 = get("Service", "TimeoutStopSec").parse().expect("TimeoutStopSec in seconds");
        assert!(stop >= 6 * 12 + 6, "TimeoutStopSec={stop}");
        assert_eq!(get("Service", "Delegate"), "yes");
    }

    #[test]
    fn directives_are_read_as_systemd_reads_them() {
        let unit = "[Unit]\n# KillMode=none\nAfter=a\n[Service]\nKillMode=mixed\nKillMode = process\n";
        assert_eq!(directive(unit, "Service", "KillMode"), Some("process"));
        assert_eq!(directive(unit, "Unit", "After"), Some("a"));
        assert_eq!(directive(unit, "Unit", "KillMode"), None);
        assert_eq!(directive(unit, "Install", "WantedBy"), None);
    }

    #[test]
    fn a_simulated_host_never_takes_the_machines_unit() {
        assert_eq!(decide(true, true, true), Ok(true));
        assert_eq!(decide(true, true, false), Ok(false), "systemd is not PID 1: detached");
        assert_eq!(decide(true, false, true), Ok(false), "--no-systemd");
        let e = decide(false, true, true).unwrap_err();
        assert!(e.contains("--no-systemd"), "{e}");
        assert_eq!(decide(false, false, true), Ok(false));
    }

    #[test]
    fn systemctl_show_is_read_whatever_the_order() {
        let u = parse_show("NRestarts=4\nActiveState=activating\n").unwrap();
        assert_eq!(u, UnitState { active: "activating".into(), restarts: 4 });
        // systemd older than 235 has no NRestarts.
        assert_eq!(parse_show("ActiveState=active\n").unwrap().restarts, 0);
        assert_eq!(parse_show(""), None);
    }
}
