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
