//! The process the integration tests put into a cgroup: it tries one thing
//! against a Unix socket and reports the result by exit code.
//!
//! `eci-test-client stream PATH` connects a stream socket;
//! `eci-test-client dgram PATH` sends one datagram (unconnected `sendto`);
//! `eci-test-client dgram-connect PATH` connects a datagram socket.
//! `eci-test-client open PATH` opens a file read-only.
//! `eci-test-client bind SOURCE TARGET` calls mount(2) with MS_BIND on the
//! paths exactly as given (no canonicalisation: the kernel resolves them).
//! `eci-test-client bind-new-api SOURCE TARGET` bind mounts with the new
//! mount API (`open_tree(OPEN_TREE_CLONE)` then `move_mount`).
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
        eprintln!(
            "usage: eci-test-client stream|dgram|dgram-connect|open PATH | bind|bind-new-api SOURCE TARGET"
        );
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
        "bind" | "bind-new-api" => match args.get(3) {
            Some(target) if mode == "bind" => bind(path, target),
            Some(target) => bind_new_api(path, target),
            None => {
                eprintln!("{mode} needs SOURCE and TARGET");
                return ExitCode::from(2);
            }
        },
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

fn cstring(s: &str) -> std::io::Result<std::ffi::CString> {
    std::ffi::CString::new(s).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
}

/// mount(2) with MS_BIND.
fn bind(source: &str, target: &str) -> std::io::Result<()> {
    let (source, target) = (cstring(source)?, cstring(target)?);
    // SAFETY: NUL-terminated strings that outlive the call; no data.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `open_tree(source, OPEN_TREE_CLONE)`, then `move_mount` of the detached
/// copy onto `target`.
fn bind_new_api(source: &str, target: &str) -> std::io::Result<()> {
    let (source, target, empty) = (cstring(source)?, cstring(target)?, cstring("")?);
    // SAFETY: plain syscalls on NUL-terminated strings that outlive them.
    unsafe {
        let fd = libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            source.as_ptr(),
            (libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC) as libc::c_uint,
        );
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let moved = libc::syscall(
            libc::SYS_move_mount,
            fd as libc::c_int,
            empty.as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        );
        let err = std::io::Error::last_os_error();
        libc::close(fd as libc::c_int);
        if moved < 0 {
            return Err(err);
        }
    }
    Ok(())
}
