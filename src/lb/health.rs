//! A backend's health, as the balancer judges it (pure): active checks
//! move it after `fall` failures or `rise` successes in a row; a failed
//! dial takes it out at once.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// New, not checked yet: used only when no backend is up.
    Unchecked,
    Up,
    Down,
}

/// The counters behind a backend's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Track {
    pub health: Health,
    oks: u32,
    fails: u32,
}

/// What an observation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    /// Now up.
    Rose,
    /// Now down: every connection through it must be closed.
    Fell,
}

impl Default for Track {
    fn default() -> Self {
        Track { health: Health::Unchecked, oks: 0, fails: 0 }
    }
}

impl Track {
    /// An active check's result. A backend never checked before is up
    /// after one success (nothing speaks against it); one that was down
    /// needs `rise`.
    pub fn check(&mut self, ok: bool, fall: u32, rise: u32) -> Transition {
        if ok {
            self.fails = 0;
            self.oks = self.oks.saturating_add(1);
            let up = match self.health {
                Health::Up => false,
                Health::Unchecked => true,
                Health::Down => self.oks >= rise,
            };
            if up {
                self.health = Health::Up;
                return Transition::Rose;
            }
        } else {
            self.oks = 0;
            self.fails = self.fails.saturating_add(1);
            if self.health != Health::Down && self.fails >= fall {
                self.health = Health::Down;
                return Transition::Fell;
            }
        }
        Transition::None
    }

    /// A dial through the balancer failed (refused, unreachable, timed
    /// out): down at once, and the checks bring it back.
    pub fn dial_failed(&mut self, fall: u32) -> Transition {
        self.oks = 0;
        self.fails = self.fails.max(fall);
        if self.health == Health::Down {
            return Transition::None;
        }
        self.health = Health::Down;
        Transition::Fell
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fall_and_rise_count_results_in_a_row() {
        let mut t = Track::default();
        assert_eq!(t.check(true, 2, 2), Transition::Rose, "unchecked: one success is enough");
        assert_eq!(t.check(false, 2, 2), Transition::None);
        assert_eq!(t.check(true, 2, 2), Transition::None, "a success resets the failures");
        assert_eq!(t.check(false, 2, 2), Transition::None);
        assert_eq!(t.check(false, 2, 2), Transition::Fell);
        assert_eq!(t.health, Health::Down);
        assert_eq!(t.check(false, 2, 2), Transition::None);
        assert_eq!(t.check(true, 2, 2), Transition::None);
        assert_eq!(t.check(false, 2, 2), Transition::None, "a failure resets the successes");
        assert_eq!(t.check(true, 2, 2), Transition::None);
        assert_eq!(t.check(true, 2, 2), Transition::Rose);
        assert_eq!(t.health, Health::Up);
    }

    #[test]
    fn a_failed_dial_takes_it_out_at_once_and_checks_bring_it_back() {
        let mut t = Track::default();
        t.check(true, 2, 3);
        assert_eq!(t.dial_failed(2), Transition::Fell);
        assert_eq!(t.dial_failed(2), Transition::None);
        assert_eq!(t.check(true, 2, 3), Transition::None);
        assert_eq!(t.check(true, 2, 3), Transition::None);
        assert_eq!(t.check(true, 2, 3), Transition::Rose);
    }

    #[test]
    fn an_unchecked_backend_that_fails_goes_down_after_fall() {
        let mut t = Track::default();
        assert_eq!(t.check(false, 2, 2), Transition::None);
        assert_eq!(t.health, Health::Unchecked);
        assert_eq!(t.check(false, 2, 2), Transition::Fell);
    }
}
