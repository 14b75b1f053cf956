//! The process the integration tests put into a cgroup: it tries one thing
//! against a Unix socket and reports the result by exit code.
//!
//! `eci-test-client stream PATH` connects a stream socket;
//! `eci-test-client dgram PATH` sends one datagram (unconnected `sendto`);
//! `eci-test-client dgram-connect PATH` connects a datagram socket.
//! `eci-test-client open PATH` opens a file read-only.
//! It first prints `pid=<pid>` as the VM sees it (from /proc/self, which
//! resolves in the proc mount's pid namespace even inside a new one).
//! Exit 0: it worked. Exit 13: EPERM/EACCES (denied). Exit 1: other error.

use std::{
    os::unix::net::{UnixDatagram, UnixStream},
    process::ExitCode,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mode), Some(path)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: eci-test-client stream|dgram|dgram-connect|open PATH");
        return ExitCode::from(2);
    };
    if let Ok(pid) = std::fs::read_link("/proc/self") {
        println!("pid={}", pid.display());
    }
    let result = match mode.as_str() {
        "open" => std::fs::File::open(path).map(|_| ()),
        "stream" => UnixStream::connect(path).map(|_| ()),
        "dgram" => UnixDatagram::unbound()
            .and_then(|s| s.send_to(b"eci", path))
            .map(|_| ()),
        "dgram-connect" => UnixDatagram::unbound().and_then(|s| s.connect(path)),
        other => {
            eprintln!("unknown mode {other}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(err) if matches!(err.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)) => {
            println!("denied: {err}");
            ExitCode::from(13)
        }
        Err(err) => {
            println!("error: {err}");
            ExitCode::from(1)
        }
    }
}
