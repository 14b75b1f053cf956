# eci demo, run inside the test VM by `cargo xtask demo`.
set -u
T=target/debug
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
mkdir -p /tmp/demo
say "The kernel: $(uname -r); active LSMs: $(cat /sys/kernel/security/lsm)"

say "Start the agent (probes BPF-LSM for real, attaches and pins its programs)"
$T/eci-agent run --protect-socket /tmp/demo/engine.sock --audit-log /tmp/demo/audit.jsonl \
    >/tmp/demo/agent.log 2>&1 &
# A stand-in for the Docker Engine's API socket.
$T/eci-demo-listener /tmp/demo/engine.sock &
for i in $(seq 1 100); do $T/eci-agent status >/dev/null 2>&1 && break; sleep 0.2; done
grep -E "probe passed|protected" /tmp/demo/agent.log | sed 's/^.*INFO /  /'

say "Make a 'container' cgroup and register it (eci-runc does this between create and start)"
mkdir -p /sys/fs/cgroup/demo-container /sys/fs/cgroup/demo-vm-task
$T/eci-agent protect --cgroup /demo-container

in_container() { unshare --fork --pid --uts --ipc --net --mount --propagation private -- \
    sh -c 'echo 0 > /sys/fs/cgroup/demo-container/cgroup.procs && exec "$@"' sh "$@"; }
in_vm() { sh -c 'echo 0 > /sys/fs/cgroup/demo-vm-task/cgroup.procs && exec "$@"' sh "$@"; }

say "From the container: connect to the engine socket"
in_container $T/eci-test-client stream /tmp/demo/engine.sock
say "From the container: the same socket through a hard link"
ln /tmp/demo/engine.sock /tmp/demo/innocent.sock
in_container $T/eci-test-client stream /tmp/demo/innocent.sock
say "From the VM (unprotected): connect to the engine socket"
in_vm $T/eci-test-client stream /tmp/demo/engine.sock

say "From the container: nsenter into the VM's network namespace"
in_container nsenter --target 1 --net -- true
say "From the container: mount debugfs"
mkdir -p /tmp/demo/debug
in_container mount -t debugfs none /tmp/demo/debug

say "The audit log (one JSON line per denial)"
sleep 1
head -n 1 /tmp/demo/audit.jsonl
echo "  ... $(wc -l < /tmp/demo/audit.jsonl) denials in all"

say "eci-agent status"
$T/eci-agent status
kill %1 2>/dev/null
say "The agent is gone; the rules are pinned in the kernel and still hold:"
sleep 1
in_container $T/eci-test-client stream /tmp/demo/engine.sock
exit 0
