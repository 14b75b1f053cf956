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
//! `eci-test-client bpf-prog -` loads a two-instruction socket filter;
//! `eci-test-client module NAME` asks the kernel to unload module NAME (the
//! capability check comes first: EPERM without `CAP_SYS_MODULE` in the VM,
//! ENOENT — counted as "it worked" — with it);
//! `eci-test-client ptrace PID` attaches to PID (`PTRACE_SEIZE`) and detaches.
//! `eci-test-client key-add NAME` adds a "user" key NAME to the caller's
//! user keyring; `eci-test-client key-find NAME` searches the caller's user
//! keyring for it (found: it worked).
//! `eci-test-client perf -` opens a CPU-wide cycles counter on CPU 0 for all
//! tasks (the whole VM).
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
        "bpf-prog" => load_socket_filter(),
        "module" => unload_module(path),
        "ptrace" => seize(path),
        "key-add" => add_key(path),
        "key-find" => find_key(path),
        "perf" => open_cpu_counter(),
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

/// `bpf(BPF_PROG_LOAD)` of `r0 = 0; exit` as a socket filter.
fn load_socket_filter() -> std::io::Result<()> {
    // struct bpf_insn: code u8, dst:4|src:4 u8, off i16, imm i32.
    let insns: [u64; 2] = [
        0xb7, // BPF_ALU64 | BPF_MOV | BPF_K, r0, imm 0
        0x95, // BPF_JMP | BPF_EXIT
    ];
    let license = cstring("GPL")?;
    // union bpf_attr, BPF_PROG_LOAD prefix: prog_type u32, insn_cnt u32,
    // insns u64, license u64, log_level u32, log_size u32, log_buf u64,
    // kern_version u32; the rest zero.
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&1u32.to_ne_bytes()); // BPF_PROG_TYPE_SOCKET_FILTER
    attr[4..8].copy_from_slice(&2u32.to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    // SAFETY: attr is a zeroed bpf_attr whose pointers outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            5, // BPF_PROG_LOAD
            attr.as_ptr(),
            attr.len() as u32,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: our own new fd.
    unsafe { libc::close(fd as i32) };
    Ok(())
}

fn unload_module(name: &str) -> std::io::Result<()> {
    let name = cstring(name)?;
    // SAFETY: a NUL-terminated name; O_NONBLOCK.
    let rc = unsafe { libc::syscall(libc::SYS_delete_module, name.as_ptr(), libc::O_NONBLOCK) };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ENOENT) {
        println!("the capability check passed (no such module)");
        return Ok(());
    }
    Err(err)
}

fn seize(pid: &str) -> std::io::Result<()> {
    let pid: libc::pid_t = pid
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let null = std::ptr::null_mut::<libc::c_void>();
    // SAFETY: ptrace on a pid; no memory is passed.
    unsafe {
        if libc::ptrace(libc::PTRACE_SEIZE, pid, null, null) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        libc::ptrace(libc::PTRACE_DETACH, pid, null, null);
    }
    Ok(())
}

const KEY_SPEC_USER_KEYRING: i32 = -4;

fn add_key(name: &str) -> std::io::Result<()> {
    let (kind, desc, value) = (cstring("user")?, cstring(name)?, b"eci-secret");
    // SAFETY: NUL-terminated strings and a payload that outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_add_key,
            kind.as_ptr(),
            desc.as_ptr(),
            value.as_ptr(),
            value.len(),
            KEY_SPEC_USER_KEYRING,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn find_key(name: &str) -> std::io::Result<()> {
    let (kind, desc) = (cstring("user")?, cstring(name)?);
    // SAFETY: KEYCTL_SEARCH (10) with NUL-terminated strings; no attach.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            10,
            KEY_SPEC_USER_KEYRING,
            kind.as_ptr(),
            desc.as_ptr(),
            0,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// perf_event_open(cycles, pid -1, cpu 0): every task on CPU 0.
fn open_cpu_counter() -> std::io::Result<()> {
    // struct perf_event_attr: type u32, size u32, config u64, ...
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&1u32.to_ne_bytes()); // PERF_TYPE_SOFTWARE
    attr[4..8].copy_from_slice(&128u32.to_ne_bytes());
    attr[8..16].copy_from_slice(&0u64.to_ne_bytes()); // PERF_COUNT_SW_CPU_CLOCK
    // SAFETY: a zeroed perf_event_attr of the size given.
    let fd = unsafe { libc::syscall(libc::SYS_perf_event_open, attr.as_ptr(), -1, 0, -1, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: our own new fd.
    unsafe { libc::close(fd as i32) };
    Ok(())
}
