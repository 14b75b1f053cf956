//! runc's command line: global flags, then a command, its flags, and the
//! container id last. Docker calls e.g. `--root R --log L --log-format json
//! create --bundle B --pid-file P [--console-socket S] ID`.

use std::path::PathBuf;

/// runc global flags that take a value.
const GLOBAL_WITH_VALUE: &[&str] = &["--root", "--log", "--log-format", "--criu", "--rootless"];
/// Command flags that take a value, as runc 1.1 to 1.3 define them (a flag
/// missing here would make its value look like the container id: runc 1.2
/// added `--pidfd-socket` to create, run and exec).
const COMMAND_WITH_VALUE: &[&str] = &[
    // create, run, restore
    "--bundle",
    "-b",
    "--pid-file",
    "--console-socket",
    "--pidfd-socket",
    "--preserve-fds",
    // exec
    "--process",
    "-p",
    "--cwd",
    "--env",
    "-e",
    "--user",
    "-u",
    "--additional-gids",
    "-g",
    "--process-label",
    "--apparmor",
    "--cap",
    "-c",
    "--cgroup",
    // kill (older runc), events
    "--signal",
    "--interval",
    // update
    "--resources",
    "-r",
    "--blkio-weight",
    "--cpu-period",
    "--cpu-quota",
    "--cpu-rt-period",
    "--cpu-rt-runtime",
    "--cpu-share",
    "--cpuset-cpus",
    "--cpuset-mems",
    "--cpu-idle",
    "--kernel-memory",
    "--kernel-memory-tcp",
    "--memory",
    "--memory-reservation",
    "--memory-swap",
    "--pids-limit",
    "--l3-cache-schema",
    "--mem-bw-schema",
    // checkpoint, restore
    "--image-path",
    "--work-path",
    "--parent-path",
    "--page-server",
    "--manage-cgroups-mode",
    "--empty-ns",
    "--status-fd",
    "--lsm-profile",
    "--lsm-mount-context",
    // ps, list
    "--format",
];

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Invocation {
    /// Everything, unchanged, for runc.
    pub argv: Vec<String>,
    pub root: Option<PathBuf>,
    pub log: Option<PathBuf>,
    pub log_format_json: bool,
    pub command: Option<String>,
    pub bundle: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    pub container_id: Option<String>,
    pub force: bool,
}

fn value_of(args: &[String], i: usize, flag: &str) -> Option<(String, usize)> {
    let arg = &args[i];
    if let Some(v) = arg.strip_prefix(&format!("{flag}=")) {
        return Some((v.to_owned(), 1));
    }
    if arg == flag {
        return args.get(i + 1).map(|v| (v.clone(), 2));
    }
    None
}

pub fn parse(argv: &[String]) -> Invocation {
    let mut inv = Invocation {
        argv: argv.to_vec(),
        ..Default::default()
    };
    let mut i = 0;
    // Global flags.
    while i < argv.len() && argv[i].starts_with('-') {
        let mut step = 1;
        for flag in GLOBAL_WITH_VALUE {
            if let Some((v, n)) = value_of(argv, i, flag) {
                match *flag {
                    "--root" => inv.root = Some(PathBuf::from(&v)),
                    "--log" => inv.log = Some(PathBuf::from(&v)),
                    "--log-format" => inv.log_format_json = v == "json",
                    _ => {}
                }
                step = n;
                break;
            }
        }
        i += step;
    }
    let Some(command) = argv.get(i) else {
        return inv;
    };
    inv.command = Some(command.clone());
    i += 1;
    let mut positional = Vec::new();
    while i < argv.len() {
        let mut step = 1;
        if argv[i].starts_with('-') {
            // `-f` is `--force` for delete, `--format <f>` for ps and list.
            let short_format = argv[i] == "-f" && matches!(command.as_str(), "ps" | "list");
            if short_format {
                i += 2;
                continue;
            }
            if argv[i] == "--force" || argv[i] == "-f" {
                inv.force = true;
            }
            for flag in COMMAND_WITH_VALUE {
                if let Some((v, n)) = value_of(argv, i, flag) {
                    if *flag == "--bundle" || *flag == "-b" {
                        inv.bundle = Some(PathBuf::from(v));
                    } else if *flag == "--pid-file" {
                        inv.pid_file = Some(PathBuf::from(v));
                    }
                    step = n;
                    break;
                }
            }
        } else {
            positional.push(argv[i].clone());
        }
        i += step;
    }
    inv.container_id = positional.first().cloned();
    inv
}

/// `run` as runc's `create` and `start`: what eci-runc runs instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAsCreate {
    /// The global flags, as given (for `start`, `delete`).
    pub globals: Vec<String>,
    /// `<globals> create <run's flags but -d/--detach, --keep,
    /// --no-subreaper> <id>`.
    pub create_argv: Vec<String>,
    /// `-d`/`--detach`: return once started.
    pub detach: bool,
    /// `--keep`: do not delete the container when it has exited.
    pub keep: bool,
}

/// `run`'s flags that `create` does not take.
const RUN_ONLY: &[&str] = &["-d", "--detach", "--keep", "--no-subreaper"];

/// The `create` of a `run` invocation; `None` when `inv` is no `run`.
pub fn run_as_create(inv: &Invocation) -> Option<RunAsCreate> {
    if inv.command.as_deref() != Some("run") {
        return None;
    }
    let argv = &inv.argv;
    let mut i = 0;
    while i < argv.len() && argv[i].starts_with('-') {
        let step = GLOBAL_WITH_VALUE
            .iter()
            .find_map(|flag| value_of(argv, i, flag).map(|(_, n)| n))
            .unwrap_or(1);
        i += step;
    }
    let globals = argv[..i.min(argv.len())].to_vec();
    let mut create_argv = globals.clone();
    create_argv.push("create".into());
    let (mut detach, mut keep) = (false, false);
    for arg in argv.iter().skip(i + 1) {
        match arg.as_str() {
            "-d" | "--detach" => detach = true,
            "--keep" => keep = true,
            _ if RUN_ONLY.contains(&arg.as_str()) => {}
            _ => create_argv.push(arg.clone()),
        }
    }
    Some(RunAsCreate {
        globals,
        create_argv,
        detach,
        keep,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_becomes_create_with_runs_own_flags_taken_out() {
        let argv: Vec<String> = [
            "--root",
            "/run/r",
            "--log=/l",
            "run",
            "--bundle",
            "/b",
            "-d",
            "--keep",
            "--pid-file",
            "/p",
            "--no-subreaper",
            "c1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let plan = run_as_create(&parse(&argv)).unwrap();
        assert_eq!(plan.globals, ["--root", "/run/r", "--log=/l"]);
        assert_eq!(
            plan.create_argv,
            [
                "--root",
                "/run/r",
                "--log=/l",
                "create",
                "--bundle",
                "/b",
                "--pid-file",
                "/p",
                "c1"
            ]
        );
        assert!(plan.detach && plan.keep);
        let created = parse(&plan.create_argv);
        assert_eq!(created.command.as_deref(), Some("create"));
        assert_eq!(created.container_id.as_deref(), Some("c1"));
        assert!(run_as_create(&parse(&["create".to_string(), "c1".to_string()])).is_none());
    }

    #[test]
    fn runc_1_2_and_1_3_flags_with_values_are_not_taken_for_the_container_id() {
        let inv = parse(&v(
            "--root /r --systemd-cgroup create --pidfd-socket /run/p.sock --bundle /b --pid-file /b/p abc",
        ));
        assert_eq!(inv.container_id.as_deref(), Some("abc"));
        assert_eq!(inv.bundle, Some(PathBuf::from("/b")));
        let inv = parse(&v(
            "exec --env A=B -e C=D --cwd /x --user 0:0 --cgroup sub --pidfd-socket /s --process-label l --cap CAP_X abc sh",
        ));
        assert_eq!(inv.container_id.as_deref(), Some("abc"));
        let inv = parse(&v("update --memory 100 --pids-limit 5 abc"));
        assert_eq!(inv.container_id.as_deref(), Some("abc"));
        let inv = parse(&v("ps -f json abc"));
        assert_eq!(inv.container_id.as_deref(), Some("abc"));
        assert!(!inv.force);
        let inv = parse(&v("delete -f abc"));
        assert_eq!(inv.container_id.as_deref(), Some("abc"));
        assert!(inv.force);
    }

    fn v(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn docker_create() {
        let inv = parse(&v(
            "--root /var/run/docker/runtime-runc/moby --log /b/log.json --log-format json create --bundle /b --pid-file /b/init.pid --console-socket /s abc123",
        ));
        assert_eq!(inv.command.as_deref(), Some("create"));
        assert_eq!(inv.bundle, Some(PathBuf::from("/b")));
        assert_eq!(inv.pid_file, Some(PathBuf::from("/b/init.pid")));
        assert_eq!(inv.container_id.as_deref(), Some("abc123"));
        assert_eq!(
            inv.root,
            Some(PathBuf::from("/var/run/docker/runtime-runc/moby"))
        );
        assert_eq!(inv.log, Some(PathBuf::from("/b/log.json")));
        assert!(inv.log_format_json);
    }

    #[test]
    fn delete_force_and_equals_forms() {
        let inv = parse(&v("--root=/r delete --force abc"));
        assert_eq!(inv.command.as_deref(), Some("delete"));
        assert!(inv.force);
        assert_eq!(inv.container_id.as_deref(), Some("abc"));
        assert_eq!(inv.root, Some(PathBuf::from("/r")));
    }

    #[test]
    fn exec_with_process_file() {
        let inv = parse(&v(
            "--root /r exec --process /tmp/p.json --detach --pid-file /tmp/p.pid abc",
        ));
        assert_eq!(inv.command.as_deref(), Some("exec"));
        assert_eq!(inv.container_id.as_deref(), Some("abc"));
    }

    #[test]
    fn no_command() {
        assert_eq!(parse(&v("--version")).command, None);
    }
}
