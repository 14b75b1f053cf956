//! Keeping the containers' /proc views current ([`eci_views`]): every
//! second, off the async threads; failures are logged, each one again only
//! after a quiet period while it persists.

use std::{
    collections::HashMap,
    path::PathBuf,
    time::{Duration, Instant},
};

/// How long a failure that keeps recurring stays unlogged.
const REPEAT_AFTER: Duration = Duration::from_secs(600);

/// Remembers which failures were logged when.
#[derive(Debug, Default)]
pub struct ErrorThrottle {
    logged: HashMap<String, Instant>,
}

impl ErrorThrottle {
    /// The failures of this round that should be logged now; failures that
    /// stopped are forgotten (logged at once if they come back).
    pub fn worth_logging(&mut self, failures: Vec<String>, now: Instant) -> Vec<String> {
        self.logged.retain(|text, _| failures.contains(text));
        failures
            .into_iter()
            .filter(|text| match self.logged.get(text) {
                Some(&at) if now.duration_since(at) < REPEAT_AFTER => false,
                _ => {
                    self.logged.insert(text.clone(), now);
                    true
                }
            })
            .collect()
    }
}

/// Re-render every container's views under `root` once a second.
pub async fn keep_current(root: PathBuf) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut throttle = ErrorThrottle::default();
    let mut refresher = Some(eci_views::Refresher::new(&root));
    loop {
        tick.tick().await;
        let mut this_round = refresher
            .take()
            .unwrap_or_else(|| eci_views::Refresher::new(&root));
        let done = tokio::task::spawn_blocking(move || {
            let round = this_round.refresh_all();
            (this_round, round)
        })
        .await;
        let failures = match done {
            Ok((kept, round)) => {
                refresher = Some(kept);
                round.errors.iter().map(ToString::to_string).collect()
            }
            // The load averages start again from zero.
            Err(e) => vec![format!("the refresh task failed: {e}")],
        };
        for failure in throttle.worth_logging(failures, Instant::now()) {
            tracing::error!(views = %root.display(), "refreshing container /proc views: {failure}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recurring_failure_is_logged_once_per_quiet_period_and_again_when_it_returns() {
        let mut throttle = ErrorThrottle::default();
        let start = Instant::now();
        let a = || vec!["a".to_owned()];
        assert_eq!(throttle.worth_logging(a(), start), a());
        assert!(
            throttle
                .worth_logging(a(), start + Duration::from_secs(1))
                .is_empty()
        );
        let both = vec!["a".to_owned(), "b".to_owned()];
        assert_eq!(
            throttle.worth_logging(both, start + Duration::from_secs(2)),
            vec!["b"]
        );
        assert_eq!(
            throttle.worth_logging(a(), start + REPEAT_AFTER + Duration::from_secs(1)),
            a()
        );
        assert!(
            throttle
                .worth_logging(Vec::new(), start + REPEAT_AFTER * 2)
                .is_empty()
        );
        assert_eq!(throttle.worth_logging(a(), start + REPEAT_AFTER * 2), a());
    }
}
