//! Kubernetes versions: what a binary says it is, which versions hakube
//! renders command lines for, and the few flags that differ between them
//! (kubeadm keeps the same kind of table in its manifests code).

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct KubeVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl KubeVersion {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        KubeVersion { major, minor, patch }
    }

    /// Whether this is at least `major.minor`.
    pub fn at_least(self, major: u32, minor: u32) -> bool {
        (self.major, self.minor) >= (major, minor)
    }
}

impl fmt::Display for KubeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The oldest and newest minor versions whose command lines hakube renders
/// and tests (golden files for each): the three newest minors, as upstream
/// supports them. 1.35 is the first kubelet that refuses a cgroup v1 host
/// unless told `failCgroupV1: false`, which every supported version is told
/// where the host is v1; 1.38 may drop cgroup v1 altogether.
pub const OLDEST: KubeVersion = KubeVersion::new(1, 35, 0);
pub const NEWEST_MINOR: (u32, u32) = (1, 37);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    #[error("cannot run {binary} --version: {reason}")]
    Run { binary: String, reason: String },
    #[error("{binary} --version printed {output:?}, which names no Kubernetes version (expected e.g. \"Kubernetes v1.37.2\")")]
    Unparsable { binary: String, output: String },
    #[error(
        "{binary} is Kubernetes {found}, which hakube does not support: use a release from v1.{}.0 to v1.{}.x",
        OLDEST.minor,
        NEWEST_MINOR.1
    )]
    Unsupported { binary: String, found: KubeVersion },
}

/// Parses what `kube-apiserver --version` and friends print:
/// `Kubernetes v1.37.2`, possibly with a pre-release or build suffix.
pub fn parse(output: &str) -> Option<KubeVersion> {
    let word =
        output.split_whitespace().find(|w| w.starts_with('v') && w[1..].starts_with(|c: char| c.is_ascii_digit()))?;
    let core = word[1..].split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u32>().ok());
    let (major, minor, patch) = (parts.next()??, parts.next()??, parts.next().flatten().unwrap_or(0));
    Some(KubeVersion { major, minor, patch })
}

/// Refuses versions outside the supported range.
pub fn check_supported(binary: &Path, v: KubeVersion) -> Result<KubeVersion, VersionError> {
    if v < OLDEST || (v.major, v.minor) > NEWEST_MINOR {
        return Err(VersionError::Unsupported { binary: binary.display().to_string(), found: v });
    }
    Ok(v)
}

/// Runs `binary --version` (bounded) and checks the version it reports.
pub fn detect(binary: &Path) -> Result<KubeVersion, VersionError> {
    let name = binary.display().to_string();
    let run_err = |reason: String| VersionError::Run { binary: name.clone(), reason };
    let out = crate::host::process::version_output(binary, Duration::from_secs(10)).map_err(run_err)?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let v = parse(&text).ok_or_else(|| VersionError::Unparsable { binary: name.clone(), output: text.clone() })?;
    check_supported(binary, v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_binaries_print() {
        assert_eq!(parse("Kubernetes v1.20.2"), Some(KubeVersion::new(1, 20, 2)));
        assert_eq!(parse("Kubernetes v1.33.1-rc.0+abc123"), Some(KubeVersion::new(1, 33, 1)));
        assert_eq!(parse("Kubernetes v1.21"), Some(KubeVersion::new(1, 21, 0)));
        assert_eq!(parse("Kubernetes v0.0.0-master+$Format:%H$"), Some(KubeVersion::new(0, 0, 0)));
        assert_eq!(parse("kubelet version unknown"), None);
        assert_eq!(parse(""), None);
    }

    #[test]
    fn the_supported_range_is_named_in_refusals() {
        let bin = Path::new("/b/kubelet");
        assert!(check_supported(bin, KubeVersion::new(1, 35, 0)).is_ok());
        assert!(check_supported(bin, KubeVersion::new(1, 37, 9)).is_ok());
        let e = check_supported(bin, KubeVersion::new(1, 34, 4)).unwrap_err().to_string();
        assert!(e.contains("/b/kubelet is Kubernetes v1.34.4") && e.contains("from v1.35.0 to v1.37.x"), "{e}");
        assert!(check_supported(bin, KubeVersion::new(1, 38, 0)).is_err());
        assert!(check_supported(bin, KubeVersion::new(1, 20, 2)).is_err());
        // An unstamped build (no version ldflags) is refused, not guessed.
        assert!(check_supported(bin, KubeVersion::new(0, 0, 0)).is_err());
    }

    #[test]
    fn detection_runs_the_binary() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("kubelet");
        std::fs::write(&fake, "#!/bin/sh\necho 'Kubernetes v1.37.2'\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(detect(&fake), Ok(KubeVersion::new(1, 37, 2)));
        std::fs::write(&fake, "#!/bin/sh\necho 'Kubernetes v1.18.0'\n").unwrap();
        assert!(matches!(detect(&fake), Err(VersionError::Unsupported { .. })));
        assert!(matches!(detect(&dir.path().join("missing")), Err(VersionError::Run { .. })));
    }
}
