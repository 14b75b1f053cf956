//! `ECI_RUNC_TIMING=1`: how long each step of a command took, one line on
//! stderr when the command ends (where the start-up time goes; the bench
//! measures the whole). Off, a mark costs one thread-local check.

use std::{
    cell::RefCell,
    time::{Duration, Instant},
};

/// The environment variable that turns the timing line on.
pub const ENV: &str = "ECI_RUNC_TIMING";

struct Steps {
    start: Instant,
    last: Instant,
    marks: Vec<(&'static str, Duration)>,
}

thread_local! {
    static STEPS: RefCell<Option<Steps>> = const { RefCell::new(None) };
}

/// Start timing this command if [`ENV`] is set.
pub fn start_from_env() {
    if std::env::var_os(ENV).is_some_and(|v| v != "0") {
        let now = Instant::now();
        STEPS.with(|s| {
            *s.borrow_mut() = Some(Steps {
                start: now,
                last: now,
                marks: Vec::new(),
            })
        });
    }
}

/// The step that just ended, named `label`.
pub fn mark(label: &'static str) {
    STEPS.with(|s| {
        if let Some(steps) = s.borrow_mut().as_mut() {
            let now = Instant::now();
            steps.marks.push((label, now - steps.last));
            steps.last = now;
        }
    });
}

/// The line `finish` prints at `end`, without printing it: every mark, the
/// time after the last one (if any), and the total.
fn line(steps: &Steps, command: &str, end: Instant) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut parts: Vec<String> = steps
        .marks
        .iter()
        .map(|(label, d)| format!("{label} {:.1}", ms(*d)))
        .collect();
    let rest = end.saturating_duration_since(steps.last);
    if !rest.is_zero() {
        parts.push(format!("the rest {:.1}", ms(rest)));
    }
    format!(
        "eci-runc timing ({command}, ms): {}; total {:.1}",
        parts.join(", "),
        ms(end.saturating_duration_since(steps.start))
    )
}

/// Print the timing line of `command` (nothing when off).
pub fn finish(command: &str) {
    STEPS.with(|s| {
        if let Some(steps) = s.borrow_mut().take() {
            eprintln!("{}", line(&steps, command, Instant::now()));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_the_time_since_the_previous_one() {
        let start = Instant::now();
        let steps = Steps {
            start,
            last: start + Duration::from_millis(5),
            marks: vec![
                ("policy", Duration::from_millis(2)),
                ("runc create", Duration::from_millis(3)),
            ],
        };
        assert_eq!(
            line(&steps, "create", steps.last),
            "eci-runc timing (create, ms): policy 2.0, runc create 3.0; total 5.0"
        );
        // Time after the last mark is shown, and counted in the total.
        assert_eq!(
            line(&steps, "create", start + Duration::from_millis(6)),
            "eci-runc timing (create, ms): policy 2.0, runc create 3.0, the rest 1.0; total 6.0"
        );
        // Off: marks do nothing.
        mark("nothing");
        STEPS.with(|s| assert!(s.borrow().is_none()));
    }
}
