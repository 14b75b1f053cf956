//! `/proc/stat` of the container: `cpu` lines for its visible CPUs from
//! its own CPU time (its user and system time spread evenly over them,
//! idle the rest of its uptime), its own `procs_running` and
//! `procs_blocked`; every other line is the host's (`btime` must be: `ps`
//! computes start times from it).

use crate::{cpus::ContainerCpu, tasks::TaskCounts};

/// What a render needs besides the host's text.
#[derive(Debug, Clone, Copy)]
pub struct StatInputs<'a> {
    pub cpu: &'a ContainerCpu,
    pub tasks: &'a TaskCounts,
    /// Seconds since the container started.
    pub uptime: f64,
    pub ticks_per_second: u64,
}

fn cpu_line(name: &str, user: u64, system: u64, idle: u64) -> String {
    format!("{name} {user} 0 {system} {idle} 0 0 0 0 0 0\n")
}

pub fn render(host_stat: &str, inputs: &StatInputs) -> String {
    let ticks = inputs.ticks_per_second.max(1) as f64;
    let cpu = inputs.cpu;
    let n = cpu.visible.len().max(1) as u64;
    let to_ticks = |seconds: f64| (seconds.max(0.0) * ticks) as u64;
    // cgroup v1's cpuacct.stat and v2's cpu.stat may split less than the
    // total (or nothing): what is not split is counted as user time.
    let system = to_ticks(cpu.usage.system);
    let user = to_ticks(cpu.usage.user).max(to_ticks(cpu.usage.total).saturating_sub(system));
    let (user_each, system_each) = (user / n, system / n);
    let idle_each = to_ticks(inputs.uptime).saturating_sub(user_each + system_each);
    let mut out = cpu_line("cpu ", user_each * n, system_each * n, idle_each * n);
    for number in &cpu.visible {
        out.push_str(&cpu_line(
            &format!("cpu{number}"),
            user_each,
            system_each,
            idle_each,
        ));
    }
    for line in host_stat.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        match name {
            n if n.starts_with("cpu") => {}
            "procs_running" => out.push_str(&format!("procs_running {}\n", inputs.tasks.running)),
            "procs_blocked" => out.push_str(&format!("procs_blocked {}\n", inputs.tasks.blocked)),
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpus::CpuUsage;

    const HOST: &str = "cpu  100 0 50 1000 0 0 0 0 0 0\ncpu0 50 0 25 500 0 0 0 0 0 0\ncpu1 50 0 25 500 0 0 0 0 0 0\nintr 12345 0 1\nctxt 999\nbtime 1700000000\nprocesses 4242\nprocs_running 3\nprocs_blocked 1\nsoftirq 5 0 1\n";

    #[test]
    fn cpu_lines_are_the_containers_and_the_rest_the_hosts() {
        let cpu = ContainerCpu {
            usage: CpuUsage {
                total: 3.0,
                user: 2.0,
                system: 1.0,
            },
            cpus: 1.0,
            visible: vec![1],
        };
        let tasks = TaskCounts {
            running: 1,
            blocked: 0,
            total: 2,
            last_pid: 5,
        };
        let text = render(
            HOST,
            &StatInputs {
                cpu: &cpu,
                tasks: &tasks,
                uptime: 10.0,
                ticks_per_second: 100,
            },
        );
        assert_eq!(
            text,
            "cpu  200 0 100 700 0 0 0 0 0 0\ncpu1 200 0 100 700 0 0 0 0 0 0\nintr 12345 0 1\nctxt 999\nbtime 1700000000\nprocesses 4242\nprocs_running 1\nprocs_blocked 0\nsoftirq 5 0 1\n"
        );
    }

    #[test]
    fn usage_without_a_split_counts_as_user_and_spreads_over_the_cpus() {
        let cpu = ContainerCpu {
            usage: CpuUsage {
                total: 4.0,
                user: 0.0,
                system: 0.0,
            },
            cpus: 2.0,
            visible: vec![0, 1],
        };
        let text = render(
            HOST,
            &StatInputs {
                cpu: &cpu,
                tasks: &TaskCounts::default(),
                uptime: 3.0,
                ticks_per_second: 100,
            },
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "cpu  400 0 0 200 0 0 0 0 0 0");
        assert_eq!(lines[1], "cpu0 200 0 0 100 0 0 0 0 0 0");
        assert_eq!(lines[2], "cpu1 200 0 0 100 0 0 0 0 0 0");
    }
}
