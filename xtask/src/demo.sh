# eci demo, run inside the test VM by `cargo xtask demo`.
set -u
T=target/debug
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
mkdir -p /tmp/demo
say "The kernel: $(uname -r); active LSMs: $(cat /sys/kernel/security/lsm)"

say "Start the agent (probes BPF-LSM for real, attaches and pins its programs)"
# The policy: the agent is its only reader; eci-runc asks the agent for it.
mkdir -p /tmp/demo/docker/share
echo '{"eci": {"shareableHostPaths": ["/tmp/demo/docker/share"]}}' > /tmp/demo/policy.json
$T/eci-agent run --policy /tmp/demo/policy.json --protect-socket /tmp/demo/engine.sock --protect-socket /tmp/demo/docker/docker.sock --audit-log /tmp/demo/audit.jsonl \
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

if command -v dockerd >/dev/null 2>&1; then
say "Now a real Docker Engine in this VM, with eci-runc as its runtime 'eci'"
D=/tmp/demo/docker; mkdir -p $D/share $D/rootfs/bin $D/rootfs/proc $D/rootfs/sys $D/rootfs/dev $D/rootfs/etc $D/rootfs/tmp
printf '#!/bin/sh\nexec %s "$@"\n' "$(cd $T && pwd)/eci-runc" > $D/eci-runc
chmod 755 $D/eci-runc
echo '{}' > $D/daemon.json
containerd >$D/containerd.log 2>&1 &
for i in $(seq 1 100); do [ -S /run/containerd/containerd.sock ] && break; sleep 0.2; done
dockerd --config-file $D/daemon.json --host unix://$D/docker.sock --storage-driver=vfs \
    --bridge=none --iptables=false --add-runtime eci=$D/eci-runc >$D/dockerd.log 2>&1 &
docker() { command docker --host unix://$D/docker.sock "$@"; }
for i in $(seq 1 300); do docker info >/dev/null 2>&1 && break; sleep 0.3; done
sleep 2 # the agent protects a socket within a second of its appearing
cp /bin/busybox $D/rootfs/bin/ && for a in sh cat; do ln -sf busybox $D/rootfs/bin/$a; done
cp $T/eci-test-client $D/rootfs/bin/
for lib in $(ldd $T/eci-test-client | grep -o '/[^ ]*'); do mkdir -p $D/rootfs$(dirname $lib); cp $lib $D/rootfs$lib; done
tar -C $D/rootfs -c . | docker import - demo >/dev/null
chmod 666 $D/docker.sock
ln $D/docker.sock $D/share/innocent.sock
say "docker run --runtime=eci: the container's root is an unprivileged id range of the VM"
docker run --rm --runtime=eci --network=none demo cat /proc/self/uid_map 2>/dev/null
say "docker run --runtime=eci -v <engine socket>: refused before it starts, with the rule and the fix"
docker run --rm --runtime=eci --network=none -v $D/docker.sock:/var/run/docker.sock demo true 2>&1 | grep -o 'enhanced container isolation.*' | cut -c1-160
say "docker run --runtime=eci: the engine socket, hard-linked into an allowed directory"
docker run --rm --runtime=eci --network=none -v $D/share:/share demo eci-test-client stream /share/innocent.sock 2>/dev/null | grep -v pid=
say "docker run --runtime=runc, real runc here (a runtime that bypasses eci), under /docker: its root would be the VM's root, so the kernel refuses its first exec"
docker run --rm --runtime=runc --network=none -v $D/docker.sock:/var/run/docker.sock demo eci-test-client stream /var/run/docker.sock 2>&1 | grep -v pid= | tail -n 1 | cut -c1-160
say "(eci-agent install makes eci the default runtime and stands eci-runc in for runc, so --runtime=runc gets eci too)"
fi

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
