//! The one way hakube tries a step again: a [`Retry`] says how long (a
//! number of attempts, or a span of time) and how long to pause between
//! attempts (fixed, or doubling up to a ceiling); the step says, for each
//! failure, whether another attempt can help ([`Failure::Again`]) or not
//! ([`Failure::Final`]). Every wait for etcd's members, the membership
//! lock, the API servers or a re-run's convergence goes through it, so that
//! all of them end, and end the same way: with the last failure.
//!
//! Not retries, and so not here: compare-and-swap loops over one etcd key
//! (another writer won: read again at once), and a supervised process's
//! restart backoff (it never gives up).

use std::future::Future;
use std::time::Duration;

/// A failed attempt, as the step judges it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure<E> {
    /// Another attempt may succeed (a server busy, a member restarting).
    Again(E),
    /// It will not (a refusal, a wrong file): stop now.
    Final(E),
}

impl<E> Failure<E> {
    /// `Again` when `again`, else `Final`.
    pub fn when(again: bool, e: E) -> Self {
        if again {
            Failure::Again(e)
        } else {
            Failure::Final(e)
        }
    }

    fn into_inner(self) -> E {
        match self {
            Failure::Again(e) | Failure::Final(e) => e,
        }
    }
}

/// When to stop trying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// After this many attempts in all.
    Attempts(u32),
    /// Once this long has passed since the first attempt began; an attempt
    /// is never cut short, and none starts after the span.
    Within(Duration),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    limit: Limit,
    pause: Duration,
    /// The pause doubles after each failure up to this (equal to `pause`:
    /// it stays fixed).
    ceiling: Duration,
}

impl Retry {
    pub const fn attempts(n: u32, pause: Duration) -> Self {
        Retry { limit: Limit::Attempts(n), pause, ceiling: pause }
    }

    pub const fn within(span: Duration, pause: Duration) -> Self {
        Retry { limit: Limit::Within(span), pause, ceiling: pause }
    }

    /// The same, with pauses that double up to `ceiling`.
    pub const fn doubling_to(self, ceiling: Duration) -> Self {
        Retry { ceiling, ..self }
    }

    /// The pause after failed attempt number `failed` (1 for the first),
    /// `elapsed` after the first began; None when no attempt follows (pure).
    pub fn pause_after(&self, failed: u32, elapsed: Duration) -> Option<Duration> {
        let pause = (0..failed.saturating_sub(1))
            .try_fold(self.pause, |p, _| p.checked_mul(2))
            .map_or(self.ceiling, |p| p.min(self.ceiling.max(self.pause)));
        match self.limit {
            Limit::Attempts(n) => (failed < n).then_some(pause),
            Limit::Within(span) => (elapsed + pause < span).then_some(pause),
        }
    }

    /// Runs `step` until it succeeds, fails for good, or the limit is
    /// reached: the last failure then. Paused time applies (tokio's clock).
    /// Each attempt is a new future from `step` (a closure that copies in
    /// what it needs, so that the futures stay `Send`).
    pub async fn run<T, E, F, Fut>(&self, step: F) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure<E>>>,
    {
        self.run_noting(step, |_, _| {}).await
    }

    /// As [`Self::run`], telling `note` of each failure that another
    /// attempt follows, and the pause before it (progress for a person).
    pub async fn run_noting<T, E, F, Fut>(&self, mut step: F, mut note: impl FnMut(&E, Duration)) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure<E>>>,
    {
        let began = tokio::time::Instant::now();
        let mut failed = 0;
        loop {
            let e = match step().await {
                Ok(v) => return Ok(v),
                Err(Failure::Final(e)) => return Err(e),
                Err(Failure::Again(e)) => e,
            };
            failed += 1;
            let Some(pause) = self.pause_after(failed, began.elapsed()) else { return Err(e) };
            note(&e, pause);
            tokio::time::sleep(pause).await;
        }
    }

    /// As [`Self::run`], for a thread that is not in a runtime.
    pub fn run_blocking<T, E>(&self, mut step: impl FnMut() -> Result<T, Failure<E>>) -> Result<T, E> {
        let began = std::time::Instant::now();
        let mut failed = 0;
        loop {
            let e = match step() {
                Ok(v) => return Ok(v),
                Err(f @ Failure::Final(_)) => return Err(f.into_inner()),
                Err(Failure::Again(e)) => e,
            };
            failed += 1;
            let Some(pause) = self.pause_after(failed, began.elapsed()) else { return Err(e) };
            std::thread::sleep(pause);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn pauses_are_fixed_or_double_to_their_ceiling_and_stop_at_the_limit() {
        let fixed = Retry::attempts(3, 100 * MS);
        let doubling = Retry::attempts(6, 200 * MS).doubling_to(1000 * MS);
        let timed = Retry::within(2000 * MS, 500 * MS);
        let cases: &[(Retry, u32, Duration, Option<Duration>)] = &[
            (fixed, 1, Duration::ZERO, Some(100 * MS)),
            (fixed, 2, Duration::ZERO, Some(100 * MS)),
            (fixed, 3, Duration::ZERO, None),
            (doubling, 1, Duration::ZERO, Some(200 * MS)),
            (doubling, 2, Duration::ZERO, Some(400 * MS)),
            (doubling, 3, Duration::ZERO, Some(800 * MS)),
            (doubling, 4, Duration::ZERO, Some(1000 * MS)),
            (doubling, 5, Duration::ZERO, Some(1000 * MS)),
            (doubling, 6, Duration::ZERO, None),
            (Retry::attempts(u32::MAX, 200 * MS).doubling_to(1000 * MS), 90, Duration::ZERO, Some(1000 * MS)),
            (timed, 1, Duration::ZERO, Some(500 * MS)),
            (timed, 9, 1400 * MS, Some(500 * MS)),
            // No attempt would begin after the span.
            (timed, 9, 1500 * MS, None),
            (timed, 1, 2500 * MS, None),
        ];
        for &(retry, failed, elapsed, want) in cases {
            assert_eq!(retry.pause_after(failed, elapsed), want, "{retry:?} after {failed} at {elapsed:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_step_is_tried_until_it_succeeds_within_the_span() {
        let began = tokio::time::Instant::now();
        let mut tries = 0;
        let mut noted = vec![];
        let got = Retry::within(Duration::from_secs(10), Duration::from_secs(1))
            .run_noting(
                || {
                    tries += 1;
                    let t = tries;
                    async move {
                        if t < 4 {
                            Err(Failure::Again(format!("not yet ({t})")))
                        } else {
                            Ok(t)
                        }
                    }
                },
                |e, pause| noted.push(format!("{e}, again in {pause:?}")),
            )
            .await;
        assert_eq!(got, Ok(4));
        assert_eq!(began.elapsed(), Duration::from_secs(3));
        assert_eq!(noted, ["not yet (1), again in 1s", "not yet (2), again in 1s", "not yet (3), again in 1s"]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_last_failure_is_returned_at_the_limit_and_a_final_one_at_once() {
        let began = tokio::time::Instant::now();
        let mut tries = 0;
        let got: Result<(), _> = Retry::within(Duration::from_secs(3), Duration::from_secs(1))
            .run(|| {
                tries += 1;
                std::future::ready(Err(Failure::Again(tries)))
            })
            .await;
        assert_eq!(got, Err(3), "attempts at 0, 1 and 2 s; none at 3 s");
        assert_eq!(began.elapsed(), Duration::from_secs(2));

        let began = tokio::time::Instant::now();
        let got: Result<(), _> =
            Retry::attempts(5, Duration::from_secs(1)).run(|| async { Err(Failure::Final("refused")) }).await;
        assert_eq!((got, began.elapsed()), (Err("refused"), Duration::ZERO));
    }

    #[test]
    fn a_blocking_step_is_tried_the_same_way() {
        let mut tries = 0;
        let got: Result<(), _> = Retry::attempts(3, MS).run_blocking(|| {
            tries += 1;
            Err(Failure::when(tries < 2, tries))
        });
        assert_eq!(got, Err(2), "the second failure was final");
    }
}
