//! Boots a kernel of the matrix in QEMU with the host's root file system
//! shared read-only over 9p, runs a shell script in the guest and reports
//! its exit code.
//!
//! Guest layout: a busybox initramfs loads the virtio/9p modules, mounts the
//! host root, puts tmpfs on /tmp, /run, /var/log and /var/lib (host
//! /var/lib subdirectories are bound back, except eci, docker and
//! containerd, which start empty), binds the kernel's extracted modules on
//! /lib/modules/<release> (when the host has a /lib/modules directory) and
//! switch_roots. The guest stage then mounts securityfs, bpffs, cgroup2,
//! devpts and /dev/shm, brings up `lo`, exports the requested environment,
//! `cd`s to the requested directory (same absolute path as on the host) and
//! runs the script with `sh -c`.

use std::fmt;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};

use crate::kernels::{Kernel, vm_dir};
use crate::stacks;
use crate::util::{self, Line, shell_quote};

/// The default `lsm=` list: BPF-LSM enabled, AppArmor/SELinux left out.
pub const DEFAULT_LSM: &str = "lockdown,capability,landlock,yama,bpf";

/// Modules the initramfs needs, in load order; built-in or absent ones are skipped.
const INITRAMFS_MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "netfs",
    "fscache",
    "9pnet",
    "9pnet_virtio",
    "9p",
];

/// Host /var/lib subdirectories that start empty (tmpfs) in the guest.
const FRESH_VAR_LIB: &[&str] = &["eci", "docker", "containerd"];

const BUSYBOX: &str = "/bin/busybox";

/// How to run the VM.
#[derive(Clone, Debug)]
pub struct VmOptions {
    /// `lsm=` list on the kernel command line (default [`DEFAULT_LSM`]).
    pub lsm: String,
    /// Kills QEMU and fails after this long.
    pub timeout: Duration,
    pub memory_mb: u32,
    pub cpus: u32,
    /// Environment for the guest script (the guest starts from a clean
    /// environment with PATH, HOME=/tmp/home, TERM=dumb, ECI_IN_VM=1 and
    /// ECI_VM_KERNEL=<release>; these are exported on top).
    pub env: Vec<(String, String)>,
    /// Working directory of the script (a host path; same path in the guest).
    pub cwd: PathBuf,
    /// Extra kernel command-line words.
    pub extra_cmdline: Vec<String>,
    /// Echo the serial console to our stdout as it arrives.
    pub echo: bool,
    /// Label for the log file under build/vm/logs/.
    pub label: String,
}

impl Default for VmOptions {
    fn default() -> Self {
        Self {
            lsm: DEFAULT_LSM.to_string(),
            // The 6.12 run with both Docker suites takes ~21 min under TCG.
            timeout: Duration::from_secs(30 * 60),
            memory_mb: 2048,
            // One vCPU: with several, TCG can run a stale translation of kernel
            // text that was just live-patched (BPF trampolines, static keys)
            // and the guest oopses on a leftover int3 (seen on 6.12).
            cpus: 1,
            env: Vec::new(),
            cwd: util::repo_root(),
            extra_cmdline: Vec::new(),
            echo: true,
            label: "run".to_string(),
        }
    }
}

/// How a VM run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmResult {
    /// The guest script finished with this exit code.
    Exited(i32),
    /// The kernel panicked (QEMU exits through `panic=-1` + `-no-reboot`).
    KernelPanic,
    /// The run exceeded [`VmOptions::timeout`]; QEMU was killed.
    Timeout,
    /// QEMU ended without the result marker (init failed, QEMU error, ...).
    NoResultMarker { qemu_status: Option<i32> },
}

impl fmt::Display for VmResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmResult::Exited(code) => write!(f, "guest script exited with {code}"),
            VmResult::KernelPanic => write!(f, "kernel panic"),
            VmResult::Timeout => write!(f, "timeout"),
            VmResult::NoResultMarker { qemu_status } => {
                write!(f, "no result marker (qemu exit status {qemu_status:?})")
            }
        }
    }
}

/// The result of [`run_in_vm`].
#[derive(Clone, Debug)]
pub struct VmOutcome {
    pub result: VmResult,
    /// Every line of the serial console (kernel and guest), `\r` stripped.
    pub output: Vec<String>,
    /// From starting QEMU to QEMU gone.
    pub duration: Duration,
    /// From starting QEMU to the guest script starting, if it did.
    pub boot_to_script: Option<Duration>,
    /// Where the serial log was written.
    pub log: PathBuf,
}

impl VmOutcome {
    pub fn success(&self) -> bool {
        self.result == VmResult::Exited(0)
    }
    /// The guest exit code, if the script ran to the end.
    pub fn exit_code(&self) -> Option<i32> {
        match self.result {
            VmResult::Exited(c) => Some(c),
            _ => None,
        }
    }
    pub fn ensure_success(&self) -> Result<()> {
        if self.success() {
            Ok(())
        } else {
            bail!(
                "VM run failed: {} (log: {})",
                self.result,
                self.log.display()
            )
        }
    }
}

/// CPU acceleration for QEMU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    fn args(self) -> [&'static str; 4] {
        match self {
            Accel::Kvm => ["-accel", "kvm", "-cpu", "host"],
            // A plain x86-64 CPU, not `max`: with `max` the guest's libraries
            // take AVX/AVX-512 paths that TCG emulates slowly. Measured on
            // 6.12 (one run each): an agent start 14.8 -> 10.5 s, gzip
            // 17.7 -> 10.2 s, 5 Go starts 20.4 -> 16.6 s, the whole script
            // 96 -> 73 s.
            Accel::Tcg => ["-accel", "tcg,thread=multi", "-cpu", "qemu64"],
        }
    }
}

/// KVM only if the CPU advertises vmx/svm, /dev/kvm exists and a test boot
/// works; TCG otherwise. Decided once per process.
pub fn accel(kernel: &Kernel) -> Accel {
    static ACCEL: OnceLock<Accel> = OnceLock::new();
    *ACCEL.get_or_init(|| {
        let cpu_has_virt = fs::read_to_string("/proc/cpuinfo")
            .map(|c| {
                c.lines()
                    .filter(|l| l.starts_with("flags"))
                    .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
            })
            .unwrap_or(false);
        if !cpu_has_virt || !Path::new("/dev/kvm").exists() {
            println!("vm: using TCG (no vmx/svm in /proc/cpuinfo or no /dev/kvm)");
            return Accel::Tcg;
        }
        let opts = VmOptions {
            timeout: Duration::from_secs(120),
            echo: false,
            label: "kvm-probe".to_string(),
            ..VmOptions::default()
        };
        match boot(kernel, "exit 0", &opts, Accel::Kvm) {
            Ok(o) if o.success() => {
                println!("vm: using KVM (test boot worked)");
                Accel::Kvm
            }
            Ok(o) => {
                println!("vm: using TCG (KVM test boot failed: {})", o.result);
                Accel::Tcg
            }
            Err(e) => {
                println!("vm: using TCG (KVM test boot failed: {e:#})");
                Accel::Tcg
            }
        }
    })
}

/// Boots `kernel`, runs `guest_script` with `sh -c` in the guest and returns
/// how it ended. An `Err` means the run could not be set up (missing files,
/// QEMU not startable); guest failures are reported in [`VmOutcome::result`].
pub fn run_in_vm(kernel: &Kernel, guest_script: &str, opts: &VmOptions) -> Result<VmOutcome> {
    let accel = accel(kernel);
    boot(kernel, guest_script, opts, accel)
}

fn nonce() -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}{:x}", std::process::id(), t)
}

fn boot(kernel: &Kernel, guest_script: &str, opts: &VmOptions, accel: Accel) -> Result<VmOutcome> {
    let initramfs = ensure_initramfs(kernel)?;
    let nonce = nonce();
    let run_dir = vm_dir().join("runs").join(&nonce);
    fs::create_dir_all(&run_dir)?;
    let stage = run_dir.join("stage.sh");
    fs::write(&stage, stage_script(kernel, guest_script, opts, &nonce))?;
    fs::set_permissions(&stage, fs::Permissions::from_mode(0o755))?;
    let logs = vm_dir().join("logs");
    fs::create_dir_all(&logs)?;
    let log_path = logs.join(format!("{}-{}.log", opts.label, kernel.name));
    let mut log = fs::File::create(&log_path)?;

    let mut cmdline = vec![
        "console=ttyS0".to_string(),
        "panic=-1".to_string(),
        "oops=panic".to_string(),
        "loglevel=4".to_string(),
        format!("lsm={}", opts.lsm),
        format!("eci_stage={}", stage.display()),
        format!("eci_release={}", kernel.release),
        format!("eci_modules={}", kernel.modules_dir().display()),
        format!("eci_repo={}", util::repo_root().display()),
        format!("eci_root={}", stacks::root(&kernel.stack)?.display()),
        format!("eci_9p_cache={}", nine_p_cache()),
    ];
    cmdline.extend(opts.extra_cmdline.iter().cloned());

    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(accel.args())
        .args(["-m", &opts.memory_mb.to_string(), "-smp", &opts.cpus.to_string()])
        .args(["-nographic", "-no-reboot"])
        .arg("-kernel")
        .arg(kernel.vmlinuz())
        .arg("-initrd")
        .arg(&initramfs)
        .args(["-append", &cmdline.join(" ")])
        .args([
            "-virtfs",
            "local,path=/,mount_tag=hostroot,security_model=passthrough,readonly=on,multidevs=remap",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("failed to start `{}`", util::describe(&cmd)))?;
    let out_rx = util::line_channel(child.stdout.take().context("qemu stdout")?);
    let err_rx = util::line_channel(child.stderr.take().context("qemu stderr")?);

    let start_marker = format!("ECI-VM-START {nonce}");
    let result_marker = format!("ECI-VM-RESULT {nonce} ");
    let mut output = Vec::new();
    let mut boot_to_script = None;
    let mut exit_code = None;
    let mut panicked = false;
    let mut marker_at: Option<Instant> = None;
    let mut stdout_open = true;
    loop {
        // qemu's own stderr (errors such as a bad -accel) is echoed as is.
        while let Ok(Line::Out(l) | Line::Err(l)) = err_rx.try_recv() {
            eprintln!("qemu: {l}");
            let _ = writeln!(log, "qemu: {l}");
            output.push(format!("qemu: {l}"));
        }
        if stdout_open {
            match out_rx.recv_timeout(Duration::from_millis(100)) {
                Ok(Line::Out(l) | Line::Err(l)) => {
                    if opts.echo {
                        let mut so = std::io::stdout().lock();
                        let _ = writeln!(so, "{l}");
                        let _ = so.flush();
                    }
                    let _ = writeln!(log, "{l}");
                    if l.contains(&start_marker) && boot_to_script.is_none() {
                        boot_to_script = Some(started.elapsed());
                    }
                    if let Some(rest) = l.split(&result_marker).nth(1) {
                        exit_code = rest.trim().parse::<i32>().ok();
                        marker_at = Some(Instant::now());
                    }
                    if l.contains("Kernel panic - not syncing") {
                        panicked = true;
                    }
                    output.push(l);
                    continue;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => stdout_open = false,
            }
        } else {
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(status) = child.try_wait()? {
            // Drain what is left of the console.
            for l in out_rx.try_iter() {
                let (Line::Out(l) | Line::Err(l)) = l;
                if opts.echo {
                    println!("{l}");
                }
                let _ = writeln!(log, "{l}");
                if let Some(rest) = l.split(&result_marker).nth(1) {
                    exit_code = rest.trim().parse::<i32>().ok();
                }
                if l.contains("Kernel panic - not syncing") {
                    panicked = true;
                }
                output.push(l);
            }
            let result = if let Some(code) = exit_code {
                VmResult::Exited(code)
            } else if panicked {
                VmResult::KernelPanic
            } else {
                VmResult::NoResultMarker {
                    qemu_status: status.code(),
                }
            };
            let outcome = VmOutcome {
                result,
                output,
                duration: started.elapsed(),
                boot_to_script,
                log: log_path,
            };
            let _ = fs::remove_dir_all(&run_dir);
            return Ok(outcome);
        }
        // After the marker, poweroff should end QEMU at once; don't wait forever.
        let marker_stale = marker_at.is_some_and(|t| t.elapsed() > Duration::from_secs(30));
        if started.elapsed() > opts.timeout || marker_stale {
            let timed_out = marker_at.is_none();
            let _ = child.kill();
            let _ = child.wait();
            if timed_out {
                println!("vm: timeout after {:?}; killed QEMU", opts.timeout);
            }
            let result = match (timed_out, exit_code) {
                (false, Some(code)) => VmResult::Exited(code),
                _ => VmResult::Timeout,
            };
            let _ = fs::remove_dir_all(&run_dir);
            return Ok(VmOutcome {
                result,
                output,
                duration: started.elapsed(),
                boot_to_script,
                log: log_path,
            });
        }
    }
}

/// The script the guest runs after switch_root (as /bin/sh on the host root).
fn stage_script(kernel: &Kernel, guest_script: &str, opts: &VmOptions, nonce: &str) -> String {
    let mut s = String::new();
    s.push_str("#!/bin/sh\n# Generated by `cargo xtask` (vm.rs): guest stage.\n");
    s.push_str(
        r#"mountpoint -q /sys/kernel/security || mount -t securityfs securityfs /sys/kernel/security
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
mountpoint -q /sys/fs/cgroup || mount -t cgroup2 cgroup2 /sys/fs/cgroup
mkdir -p /dev/pts /dev/shm
mountpoint -q /dev/pts || mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mountpoint -q /dev/shm || mount -t tmpfs -o mode=1777 shm /dev/shm
[ -e /dev/ptmx ] || ln -s pts/ptmx /dev/ptmx
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
if command -v ip >/dev/null 2>&1; then ip link set lo up; else /bin/busybox ip link set lo up; fi
/bin/busybox hostname eci-vm 2>/dev/null
mkdir -p /tmp/home
chmod 1777 /tmp
echo "eci-vm: kernel $(uname -r), lsm=$(cat /sys/kernel/security/lsm)"
"#,
    );
    s.push_str("unset $(env | sed -n 's/^\\([A-Za-z_][A-Za-z0-9_]*\\)=.*/\\1/p') 2>/dev/null\n");
    let mut env: Vec<(String, String)> = vec![
        (
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ),
        ("HOME".into(), "/tmp/home".into()),
        ("TERM".into(), "dumb".into()),
        ("ECI_IN_VM".into(), "1".into()),
        ("ECI_VM_KERNEL".into(), kernel.release.clone()),
    ];
    env.extend(opts.env.iter().cloned());
    for (k, v) in &env {
        s.push_str(&format!("export {k}={}\n", shell_quote(v)));
    }
    s.push_str(&format!(
        "cd {} || exit 99\n",
        shell_quote(&opts.cwd.to_string_lossy())
    ));
    s.push_str(&format!("echo 'ECI-VM-START {nonce}'\n"));
    s.push_str(&format!("/bin/sh -c {}\n", shell_quote(guest_script)));
    s.push_str("rc=$?\nsync\n");
    s.push_str(&format!("echo \"ECI-VM-RESULT {nonce} $rc\"\n"));
    s.push_str("poweroff -f 2>/dev/null || /bin/busybox poweroff -f\n");
    s
}

/// The guest's cache mode for the host root over 9p. `loose` keeps what the
/// guest has read in its page cache (each exec of dockerd, runc or the test
/// binary otherwise reads the file again through 9p); safe because the guest
/// mounts the share read-only and nothing it reads changes during a run.
/// `ECI_9P_CACHE=none` turns it off.
fn nine_p_cache() -> String {
    match std::env::var("ECI_9P_CACHE") {
        Ok(v) if ["none", "loose", "mmap", "fscache"].contains(&v.as_str()) => v,
        _ => "loose".into(),
    }
}

/// The initramfs /init: load modules, mount the host root, switch_root.
fn init_script() -> String {
    let fresh = FRESH_VAR_LIB.join(" ");
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
fail() {{ echo "eci-init: FAILED: $*"; poweroff -f; sleep 10; }}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules.list); do
    insmod "/modules/$m.ko" || echo "eci-init: insmod $m failed"
done
arg() {{ sed -n "s/.*\<$1=\([^ ]*\).*/\1/p" /proc/cmdline; }}
stage=$(arg eci_stage)
release=$(arg eci_release)
modules=$(arg eci_modules)
mkdir -p /newroot /hostvarlib /hostfs
cache=$(arg eci_9p_cache)
mount -t 9p -o "trans=virtio,version=9p2000.L,ro,msize=262144,cache=${{cache:-none}}" hostroot /hostfs \
    || fail "mounting the host root over 9p"
# The root the guest runs on: the host's own (/) or an engine stack's root
# below it (build/vm/roots/sid).
root=$(arg eci_root)
mount --bind "/hostfs${{root:-/}}" /newroot || fail "binding the stack root ${{root:-/}}"
# The repository may live below a directory that gets a tmpfs (a CI clone
# in /tmp, say): hold it aside and put it back on top afterwards.
repo=$(arg eci_repo)
mkdir -p /repo-hold
[ -n "$repo" ] && [ -d "/hostfs$repo" ] && mount --bind "/hostfs$repo" /repo-hold
for d in /tmp /run /var/log; do
    mount -t tmpfs -o mode=0755 tmpfs "/newroot$d" || fail "tmpfs on $d"
done
chmod 1777 /newroot/tmp
mount --bind /newroot/var/lib /hostvarlib
mount -t tmpfs -o mode=0755 tmpfs /newroot/var/lib || fail "tmpfs on /var/lib"
for d in /hostvarlib/*; do
    n=${{d##*/}}
    case " {fresh} " in *" $n "*) continue ;; esac
    [ -d "$d" ] || continue
    mkdir -p "/newroot/var/lib/$n" && mount --bind "$d" "/newroot/var/lib/$n"
done
umount /hostvarlib
for n in {fresh}; do mkdir -p "/newroot/var/lib/$n"; done
if grep -q " /repo-hold " /proc/mounts; then
    mkdir -p "/newroot$repo" 2>/dev/null
    mount --move /repo-hold "/newroot$repo" || fail "putting the repository back at $repo"
fi
if [ -d /newroot/lib/modules ] && [ -d "/newroot$modules" ]; then
    mount -t tmpfs -o mode=0755 tmpfs /newroot/lib/modules
    mkdir -p "/newroot/lib/modules/$release"
    mount --bind "/newroot$modules" "/newroot/lib/modules/$release"
fi
[ -n "$stage" ] && [ -f "/newroot$stage" ] || fail "no guest stage ($stage)"
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
mount --move /dev /newroot/dev
exec switch_root /newroot /bin/sh "$stage"
"#
    )
}

/// Builds (or reuses) the initramfs for a kernel; rebuilt when the init
/// script, busybox or the module files change.
pub fn ensure_initramfs(kernel: &Kernel) -> Result<PathBuf> {
    let dir = vm_dir().join("initramfs");
    fs::create_dir_all(&dir)?;
    let image = dir.join(format!("{}.cpio", kernel.release));
    let stamp_path = dir.join(format!("{}.stamp", kernel.release));

    let busybox = Path::new(BUSYBOX);
    if !busybox.is_file() {
        bail!("{BUSYBOX} is missing (apt-get install busybox-static; `cargo xtask setup` does it)");
    }
    // sid's packages carry no modules.builtin (it is in linux-base-<v>): a
    // module that is neither listed there nor found as a file is built in.
    let builtin =
        fs::read_to_string(kernel.modules_dir().join("modules.builtin")).unwrap_or_default();
    let mut modules: Vec<(&str, PathBuf)> = Vec::new();
    for name in INITRAMFS_MODULES {
        let is_builtin = builtin
            .lines()
            .any(|l| l.rsplit('/').next() == Some(&format!("{name}.ko")));
        if is_builtin {
            continue;
        }
        if let Some(path) = find_module(&kernel.modules_dir(), name)? {
            modules.push((name, path));
        }
    }
    let init = init_script();
    let mut stamp = format!("{init}\n");
    for p in std::iter::once(busybox.to_path_buf()).chain(modules.iter().map(|m| m.1.clone())) {
        let md = fs::metadata(&p)?;
        let mtime = md
            .modified()?
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        stamp.push_str(&format!("{} {} {}\n", p.display(), md.len(), mtime));
    }
    if image.is_file() && fs::read_to_string(&stamp_path).ok().as_deref() == Some(stamp.as_str()) {
        return Ok(image);
    }

    let root = dir.join(format!("{}.root", kernel.release));
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    for d in ["bin", "proc", "sys", "dev", "modules", "newroot"] {
        fs::create_dir_all(root.join(d))?;
    }
    fs::copy(busybox, root.join("bin/busybox"))?;
    let mut list = String::new();
    for (name, path) in &modules {
        let dest = root.join("modules").join(format!("{name}.ko"));
        let fname = path.to_string_lossy();
        if fname.ends_with(".ko") {
            fs::copy(path, &dest)?;
        } else {
            // busybox insmod passes the file to init_module() as is, so
            // compressed modules are unpacked here.
            let tool = if fname.ends_with(".xz") {
                "xz"
            } else if fname.ends_with(".zst") {
                "zstd"
            } else if fname.ends_with(".gz") {
                "gzip"
            } else {
                bail!("unknown module compression: {fname}")
            };
            let out = Command::new(tool)
                .arg("-dc")
                .arg(path)
                .output()
                .with_context(|| format!("running {tool} (install it)"))?;
            if !out.status.success() {
                bail!(
                    "{tool} -dc {fname} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            fs::write(&dest, out.stdout)?;
        }
        list.push_str(name);
        list.push('\n');
    }
    fs::write(root.join("modules.list"), list)?;
    fs::write(root.join("init"), &init)?;
    fs::set_permissions(root.join("init"), fs::Permissions::from_mode(0o755))?;
    // busybox cpio reads the file list from stdin.
    let out = fs::File::create(&image)?;
    util::run(
        Command::new("sh")
            .args([
                "-c",
                "find . | LC_ALL=C sort | /bin/busybox cpio -o -H newc 2>/dev/null",
            ])
            .current_dir(&root)
            .stdout(out),
    )?;
    fs::write(&stamp_path, stamp)?;
    fs::remove_dir_all(&root)?;
    println!(
        "vm: built initramfs for {} ({} modules: {})",
        kernel.release,
        modules.len(),
        modules.iter().map(|m| m.0).collect::<Vec<_>>().join(" ")
    );
    Ok(image)
}

/// Finds `<name>.ko[.xz|.zst|.gz]` under a modules tree (names may use - or _).
fn find_module(dir: &Path, name: &str) -> Result<Option<PathBuf>> {
    let wanted = |f: &str| {
        let base = f
            .strip_suffix(".ko")
            .or_else(|| f.strip_suffix(".ko.xz"))
            .or_else(|| f.strip_suffix(".ko.zst"))
            .or_else(|| f.strip_suffix(".ko.gz"));
        base.is_some_and(|b| b.replace('-', "_") == name.replace('-', "_"))
    };
    let mut stack = vec![dir.join("kernel")];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd {
            let e = e?;
            let ft = e.file_type()?;
            if ft.is_dir() {
                stack.push(e.path());
            } else if wanted(&e.file_name().to_string_lossy()) {
                return Ok(Some(e.path()));
            }
        }
    }
    Ok(None)
}
