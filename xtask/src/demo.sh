# eci demo, run inside the test VM by `cargo xtask demo` (and by the test
# `demo::the_demo_ends_with_every_step_as_expected`). Every step is checked,
# has a time limit and says how long it took; the last line is the verdict.
set -u
T=${ECI_DEMO_BIN:-target/debug}
STEP_LIMIT=${ECI_DEMO_STEP_LIMIT:-120}
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
good=0; bad=0; failures=""
started=$(date +%s)
# check WHAT EXPECT CMD...: runs CMD under the step limit, prints its output,
# and counts it as expected or not. EXPECT: works (exit 0), refused (exit
# non-zero, not the limit), denied (eci-test-client's exit 13: EPERM/EACCES).
check() {
    what=$1; expect=$2; shift 2
    t0=$(date +%s)
    out=$(timeout --kill-after=5 "$STEP_LIMIT" "$@" 2>&1); rc=$?
    printf '%s\n' "$out" | grep -v '^pid=' | cut -c1-200 | sed 's/^/  /'
    secs=$(( $(date +%s) - t0 ))
    case "$expect:$rc" in
        *:124|*:137) ok=no; why="no answer within ${STEP_LIMIT} s (step limit; ECI_DEMO_STEP_LIMIT raises it)" ;;
        works:0) ok=yes ;;
        works:*) ok=no; why="exit $rc, expected it to work" ;;
        denied:13) ok=yes ;;
        denied:*) ok=no; why="exit $rc, expected the kernel to deny it (13)" ;;
        refused:0) ok=no; why="it worked, expected a refusal" ;;
        refused:*) ok=yes ;;
    esac
    if [ $ok = yes ]; then
        good=$((good + 1)); echo "  -> as expected ($expect, ${secs} s)"
    else
        bad=$((bad + 1)); failures="$failures; $what: $why"
        echo "  -> NOT AS EXPECTED: $why"
    fi
}
# wait_for WHAT SECONDS CMD...: polls CMD until it works, or fails the step.
wait_for() {
    what=$1; limit=$2; shift 2
    t0=$(date +%s)
    while ! "$@" >/dev/null 2>&1; do
        if [ $(( $(date +%s) - t0 )) -ge "$limit" ]; then
            bad=$((bad + 1)); failures="$failures; $what: not ready within $limit s"
            echo "  -> NOT READY: $what within $limit s"
            return 1
        fi
        sleep 0.3
    done
    echo "  -> $what ready ($(( $(date +%s) - t0 )) s)"
}
verdict() {
    total=$(( $(date +%s) - started ))
    if [ $bad -eq 0 ]; then
        echo "ECI-DEMO-VERDICT: PASS: $good of $good steps as expected in ${total} s"
        exit 0
    fi
    echo "ECI-DEMO-VERDICT: FAIL: $bad of $((good + bad)) steps not as expected in ${total} s${failures}"
    exit 1
}

mkdir -p /tmp/demo
say "The kernel: $(uname -r); active LSMs: $(cat /sys/kernel/security/lsm)"

say "Start the agent (probes BPF-LSM for real, attaches and pins its programs)"
# The policy: the agent is its only reader; eci-runc asks the agent for it.
mkdir -p /tmp/demo/docker/share
echo '{"eci": {"shareableHostPaths": ["/tmp/demo/docker/share"]}}' > /tmp/demo/policy.json
$T/eci-agent run --policy /tmp/demo/policy.json --protect-socket /tmp/demo/engine.sock --protect-socket /tmp/demo/docker/docker.sock --audit-log /tmp/demo/audit.jsonl \
    >/tmp/demo/agent.log 2>&1 &
agent_pid=$!
# A stand-in for the Docker Engine's API socket.
# (Its output goes to a file: a daemon left holding the demo's stdout would
# keep whoever reads it waiting for an end that never comes.)
$T/eci-demo-listener /tmp/demo/engine.sock >/tmp/demo/listener.log 2>&1 &
wait_for "the agent" 60 $T/eci-agent status || { tail -n 5 /tmp/demo/agent.log; verdict; }
grep -E "probe passed|protected" /tmp/demo/agent.log | sed 's/^.*INFO /  /'

say "Make a 'container' cgroup and register it (eci-runc does this between create and start)"
mkdir -p /sys/fs/cgroup/demo-container /sys/fs/cgroup/demo-vm-task
check "register a container cgroup" works $T/eci-agent protect --cgroup /demo-container

# Helpers as scripts, so that a step's time limit (timeout(1)) can run them.
B=/tmp/demo/bin; mkdir -p $B
cat > $B/in_container <<'EOS'
#!/bin/sh
exec unshare --fork --pid --uts --ipc --net --mount --propagation private -- \
    sh -c 'echo 0 > /sys/fs/cgroup/demo-container/cgroup.procs && exec "$@"' sh "$@"
EOS
cat > $B/in_vm <<'EOS'
#!/bin/sh
echo 0 > /sys/fs/cgroup/demo-vm-task/cgroup.procs && exec "$@"
EOS
chmod 755 $B/in_container $B/in_vm
in_container() { $B/in_container "$@"; }
in_vm() { $B/in_vm "$@"; }

say "From the container: connect to the engine socket"
check "container -> engine socket" denied $B/in_container $T/eci-test-client stream /tmp/demo/engine.sock
say "From the container: the same socket through a hard link"
ln /tmp/demo/engine.sock /tmp/demo/innocent.sock
check "container -> hard link of the engine socket" denied $B/in_container $T/eci-test-client stream /tmp/demo/innocent.sock
say "From the VM (unprotected): connect to the engine socket"
check "VM -> engine socket" works $B/in_vm $T/eci-test-client stream /tmp/demo/engine.sock

say "From the container: nsenter into the VM's network namespace"
check "container -> nsenter into the VM" refused $B/in_container nsenter --target 1 --net -- true
say "From the container: mount debugfs"
mkdir -p /tmp/demo/debug
check "container -> mount debugfs" refused $B/in_container mount -t debugfs none /tmp/demo/debug

if command -v dockerd >/dev/null 2>&1; then
say "Now a real Docker Engine in this VM, with eci-runc as its runtime 'eci' (containerd, then dockerd: about a minute under emulation)"
D=/tmp/demo/docker; mkdir -p $D/share $D/rootfs/bin $D/rootfs/proc $D/rootfs/sys $D/rootfs/dev $D/rootfs/etc $D/rootfs/tmp
printf '#!/bin/sh\nexec %s "$@"\n' "$(cd $T && pwd)/eci-runc" > $D/eci-runc
chmod 755 $D/eci-runc
echo '{}' > $D/daemon.json
containerd >$D/containerd.log 2>&1 &
wait_for "containerd" 120 test -S /run/containerd/containerd.sock || { tail -n 5 $D/containerd.log; verdict; }
dockerd --config-file $D/daemon.json --host unix://$D/docker.sock --storage-driver=vfs \
    --bridge=none --iptables=false --add-runtime eci=$D/eci-runc >$D/dockerd.log 2>&1 &
printf '#!/bin/sh\nexec docker --host unix://%s/docker.sock "$@"\n' $D > $B/dk; chmod 755 $B/dk
wait_for "dockerd" 180 $B/dk info || { tail -n 5 $D/dockerd.log; verdict; }
wait_for "the agent protecting the engine socket" 30 sh -c "$T/eci-agent status | grep -q $D/docker.sock"
cp /bin/busybox $D/rootfs/bin/ && for a in sh cat; do ln -sf busybox $D/rootfs/bin/$a; done
cp $T/eci-test-client $D/rootfs/bin/
for lib in $(ldd $T/eci-test-client | grep -o '/[^ ]*'); do mkdir -p $D/rootfs$(dirname $lib); cp $lib $D/rootfs$lib; done
check "import the demo image" works sh -c "tar -C $D/rootfs -c . | $B/dk import - demo"
chmod 666 $D/docker.sock
ln $D/docker.sock $D/share/innocent.sock
say "docker run --runtime=eci: the container's root is an unprivileged id range of the VM"
check "docker run --runtime=eci: own id range" works sh -c "$B/dk run --rm --runtime=eci --network=none demo cat /proc/self/uid_map > /tmp/demo/uid_map && cat /tmp/demo/uid_map && awk '\$2 == 0 {exit 1}' /tmp/demo/uid_map"
say "docker run --runtime=eci -v <engine socket>: refused before it starts, with the rule and the fix"
check "docker run -v <engine socket>" refused sh -c "$B/dk run --rm --runtime=eci --network=none -v $D/docker.sock:/var/run/docker.sock demo true > /tmp/demo/out 2>&1; rc=\$?; grep -o 'enhanced container isolation.*' /tmp/demo/out | cut -c1-160; exit \$rc"
say "docker run --runtime=eci: the engine socket, hard-linked into an allowed directory"
check "docker run: hard link of the engine socket" denied $B/dk run --rm --runtime=eci --network=none -v $D/share:/share demo eci-test-client stream /share/innocent.sock
say "docker run --runtime=runc, real runc here (a runtime that bypasses eci), under /docker: its root would be the VM's root, so the kernel refuses its first exec"
check "docker run --runtime=runc under /docker" refused $B/dk run --rm --runtime=runc --network=none -v $D/docker.sock:/var/run/docker.sock demo eci-test-client stream /var/run/docker.sock
say "(eci-agent install makes eci the default runtime and stands eci-runc in for runc, so --runtime=runc gets eci too)"
fi

say "The audit log (one JSON line per denial)"
sleep 1
head -n 1 /tmp/demo/audit.jsonl | cut -c1-300
echo "  ... $(wc -l < /tmp/demo/audit.jsonl) denials in all"

say "eci-agent status"
$T/eci-agent status
kill $agent_pid 2>/dev/null
say "The agent is gone; the rules are pinned in the kernel and still hold:"
sleep 1
check "container -> engine socket, agent gone" denied $B/in_container $T/eci-test-client stream /tmp/demo/engine.sock
verdict
