//! `/proc/loadavg` of the container: the kernel's 1/5/15-minute averages
//! (fixed point, sampled every 5 seconds, `calc_load`) of its runnable
//! and uninterruptible tasks.

use crate::tasks::TaskCounts;

/// Fixed-point shift of the kernel's load averages.
const FSHIFT: u32 = 11;
const FIXED_1: u64 = 1 << FSHIFT;
/// `1/exp(5s/1min)`, `1/exp(5s/5min)`, `1/exp(5s/15min)` in fixed point.
const EXP: [u64; 3] = [1884, 2014, 2037];
/// The kernel samples every 5 seconds.
pub const SAMPLE_SECONDS: u64 = 5;

/// One container's averages, fixed point.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadAverage {
    loads: [u64; 3],
}

impl LoadAverage {
    /// One 5-second step with `active` runnable + uninterruptible tasks.
    pub fn sample(&mut self, active: u64) {
        let active = active.saturating_mul(FIXED_1);
        for (load, exp) in self.loads.iter_mut().zip(EXP) {
            let mut next = *load * exp + active * (FIXED_1 - exp);
            if active >= *load {
                next += FIXED_1 - 1;
            }
            *load = next / FIXED_1;
        }
    }

    /// `0.50 0.20 0.05 R/T LAST`, the kernel's rounding.
    pub fn render(&self, tasks: &TaskCounts) -> String {
        let mut out = String::new();
        for load in self.loads {
            let load = load + FIXED_1 / 200;
            out.push_str(&format!(
                "{}.{:02} ",
                load >> FSHIFT,
                ((load & (FIXED_1 - 1)) * 100) >> FSHIFT
            ));
        }
        out.push_str(&format!(
            "{}/{} {}\n",
            tasks.running, tasks.total, tasks.last_pid
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_busy_task_climbs_as_the_kernels_average_does() {
        let tasks = TaskCounts {
            running: 1,
            blocked: 0,
            total: 3,
            last_pid: 9,
        };
        let mut load = LoadAverage::default();
        assert_eq!(load.render(&tasks), "0.00 0.00 0.00 1/3 9\n");
        // One minute of one busy task: 1 - 1/e of the way for the 1-minute.
        for _ in 0..12 {
            load.sample(1);
        }
        let text = load.render(&tasks);
        let one: f64 = text.split(' ').next().unwrap().parse().unwrap();
        assert!((0.60..=0.66).contains(&one), "{text}");
        let five: f64 = text.split(' ').nth(1).unwrap().parse().unwrap();
        assert!(five < one && five > 0.1, "{text}");
        // Idle again: it decays towards zero.
        for _ in 0..200 {
            load.sample(0);
        }
        assert!(
            load.render(&tasks).starts_with("0.00 "),
            "{}",
            load.render(&tasks)
        );
    }
}
