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

/// `ActiveState` of a unit (`active`, `activating`, `failed`, ...).
pub fn unit_state(unit: &str) -> Option<String> {
    let out = Command::new("systemctl").args(["show", "-p", "ActiveState", "--value", unit]).output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
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

    #[test]
    fn a_simulated_host_never_takes_the_machines_unit() {
        assert_eq!(decide(true, true, true), Ok(true));
        assert_eq!(decide(true, true, false), Ok(false), "systemd is not PID 1: detached");
        assert_eq!(decide(true, false, true), Ok(false), "--no-systemd");
        let e = decide(false, true, true).unwrap_err();
        assert!(e.contains("--no-systemd"), "{e}");
        assert_eq!(decide(false, false, true), Ok(false));
    }
}
