//! Progress on stderr for long commands: each phase with its duration, so a
//! user at a terminal sees what is happening and what took the time.

use std::time::Instant;

pub struct Progress {
    started: Instant,
    prefix: &'static str,
}

impl Progress {
    pub fn new(prefix: &'static str) -> Self {
        Self { started: Instant::now(), prefix }
    }

    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    pub fn note(&self, msg: impl std::fmt::Display) {
        eprintln!("[{}] {msg}", self.prefix);
    }

    /// Runs one phase, reporting its start and how it ended.
    pub fn phase<T, E: std::fmt::Display>(&self, name: &str, f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        eprintln!("[{}] {name} ...", self.prefix);
        let t = Instant::now();
        let r = f();
        let secs = t.elapsed().as_secs_f64();
        match &r {
            Ok(_) => eprintln!("[{}] {name}: done in {secs:.2}s", self.prefix),
            Err(_) => eprintln!("[{}] {name}: FAILED after {secs:.2}s", self.prefix),
        }
        r
    }
}
