//! Everything that touches the host: files, processes, systemd, preflight.

pub mod cgroups;
pub mod clock;
pub mod cloud;
pub mod fs;
pub mod lock;
pub mod logrotate;
pub mod mountns;
pub mod net;
pub mod paths;
pub mod process;
pub mod sysctl;
pub mod systemd;
