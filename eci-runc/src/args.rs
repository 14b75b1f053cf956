//! runc's command line: global flags, then a command, its flags, and the
//! container id last. Docker calls e.g. `--root R --log L --log-format json
//! create --bundle B --pid-file P [--console-socket S] ID`.

use std::path::PathBuf;

/// runc global flags that take a value.
const GLOBAL_WITH_VALUE: &[&str] = &["--root", "--log", "--log-format", "--criu", "--rootless"];
/// Command flags that take a value (of the commands eci-runc looks into).
const COMMAND_WITH_VALUE: &[&str] = &[
    "--bundle",
    "-b",
    "--pid-file",
    "--console-socket",
    "--preserve-fds",
    "--process",
    "-p",
    "--signal",
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

#[cfg(test)]
mod tests {
    use super::*;

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
