//! Kubernetes' way into eci: a containerd of the test's own (root, state,
//! socket, configuration and CNI in a temporary directory) whose CRI plugin
//! is driven over its socket as kubelet drives it, with the runtime handler
//! `eci` taken as it is from `deploy/kubernetes/containerd-runtime.toml`.
//!
//! - The generated configuration is that file's text, followed by what the
//!   test adds (sandbox image, CNI directories) in the same version-2
//!   dialect: containerd 1.6 reads it as it is, containerd 2 migrates it
//!   (as it migrates an administrator's version-2 drop-in).
//! - The handler's `BinaryName` is used as written: containerd runs in a
//!   mount namespace of its own in which the directory of that path is a
//!   bind of a test directory holding a wrapper of the built eci-runc (with
//!   the test agent's socket and private state directories). The machine's
//!   directory is not touched, and every mount containerd, its shims and
//!   eci-runc make stays in that namespace.
//! - No registry: the image (busybox, eci-test-client) is written as an OCI
//!   archive and imported with `ctr`; it is the sandbox (pause) image too.
//! - No CNI plugins needed: a stand-in plugin answers with no interfaces, so
//!   each pod gets a network namespace of its own with loopback only.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, ExecSyncRequest, ImageSpec,
    LinuxContainerConfig, LinuxContainerSecurityContext, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, Mount, NamespaceMode, NamespaceOption, PodSandboxConfig,
    PodSandboxMetadata, RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest,
    StartContainerRequest, StopPodSandboxRequest, VersionRequest, VersionResponse,
    image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient,
};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::{engine, workspace_bin};

/// The image of the test's pods and their sandbox (pause) image.
pub const IMAGE: &str = "docker.io/library/eci-cri-test:latest";
/// The CRI plugin's containerd namespace.
pub const K8S_NAMESPACE: &str = "k8s.io";

/// The stanza a node adds to its containerd configuration.
pub fn runtime_manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/containerd-runtime.toml")
}

/// `containerd --version`: (major, minor, as printed).
pub fn containerd_version() -> Result<(u32, u32, String), String> {
    let out = Command::new("containerd")
        .arg("--version")
        .output()
        .map_err(|e| format!("containerd is not installed here ({e})"))?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    // "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1"
    // "containerd containerd.io v2.1.3 <commit>"
    let version = text
        .split_whitespace()
        .nth(2)
        .ok_or_else(|| format!("`containerd --version` printed {text:?}"))?;
    let mut numbers = version
        .trim_start_matches('v')
        .split(|c: char| !c.is_ascii_digit())
        .map(str::parse::<u32>);
    match (numbers.next(), numbers.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => Ok((major, minor, text)),
        _ => Err(format!("cannot read a version in {text:?}")),
    }
}

/// The runtime handler's `BinaryName` in the manifest (version 2 keys).
pub fn manifest_binary(text: &str, handler: &str) -> Result<PathBuf, String> {
    let doc: toml::Value = toml::from_str(text).map_err(|e| format!("not TOML: {e}"))?;
    doc.get("plugins")
        .and_then(|p| p.get("io.containerd.grpc.v1.cri"))
        .and_then(|p| p.get("containerd"))
        .and_then(|p| p.get("runtimes"))
        .and_then(|p| p.get(handler))
        .and_then(|p| p.get("options"))
        .and_then(|p| p.get("BinaryName"))
        .and_then(|p| p.as_str())
        .map(PathBuf::from)
        .ok_or_else(|| format!("no BinaryName for the runtime handler {handler:?}"))
}

/// A blocking CRI client (runtime and image services) over a unix socket.
pub struct Cri {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    _images: ImageServiceClient<Channel>,
}

impl Cri {
    pub fn connect(socket: &Path) -> Result<Self, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        let path = socket.to_owned();
        let channel = rt
            .block_on(async move {
                // The URI is not used: every connection is to the socket.
                Endpoint::try_from("http://[::]:50051")?
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move {
                            let stream = tokio::net::UnixStream::connect(path).await?;
                            Ok::<_, std::io::Error>(TokioIo::new(stream))
                        }
                    }))
                    .await
            })
            .map_err(|e| format!("connecting to {}: {e}", socket.display()))?;
        Ok(Self {
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            _images: ImageServiceClient::new(channel),
        })
    }

    pub fn version(&self) -> Result<VersionResponse, tonic::Status> {
        let mut c = self.runtime.clone();
        self.rt
            .block_on(c.version(VersionRequest {
                version: "v1".into(),
            }))
            .map(tonic::Response::into_inner)
    }

    /// RunPodSandbox; returns the sandbox id.
    pub fn run_pod(
        &self,
        config: &PodSandboxConfig,
        handler: &str,
    ) -> Result<String, tonic::Status> {
        let mut c = self.runtime.clone();
        self.rt
            .block_on(c.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: handler.into(),
            }))
            .map(|r| r.into_inner().pod_sandbox_id)
    }

    /// CreateContainer then StartContainer; returns the container id.
    pub fn start_container(
        &self,
        pod: &str,
        config: &ContainerConfig,
        sandbox: &PodSandboxConfig,
    ) -> Result<String, tonic::Status> {
        let mut c = self.runtime.clone();
        let id = self
            .rt
            .block_on(c.create_container(CreateContainerRequest {
                pod_sandbox_id: pod.into(),
                config: Some(config.clone()),
                sandbox_config: Some(sandbox.clone()),
            }))?
            .into_inner()
            .container_id;
        self.rt.block_on(c.start_container(StartContainerRequest {
            container_id: id.clone(),
        }))?;
        Ok(id)
    }

    /// ExecSync: (exit code, stdout, stderr).
    pub fn exec(
        &self,
        container: &str,
        cmd: &[&str],
    ) -> Result<(i32, String, String), tonic::Status> {
        let mut c = self.runtime.clone();
        let r = self
            .rt
            .block_on(c.exec_sync(ExecSyncRequest {
                container_id: container.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: 60,
            }))?
            .into_inner();
        Ok((
            r.exit_code,
            String::from_utf8_lossy(&r.stdout).into_owned(),
            String::from_utf8_lossy(&r.stderr).into_owned(),
        ))
    }

    pub fn remove_container(&self, container: &str) -> Result<(), tonic::Status> {
        let mut c = self.runtime.clone();
        self.rt
            .block_on(c.remove_container(RemoveContainerRequest {
                container_id: container.into(),
            }))
            .map(|_| ())
    }

    /// StopPodSandbox then RemovePodSandbox, as kubelet ends a pod.
    pub fn remove_pod(&self, pod: &str) -> Result<(), tonic::Status> {
        let mut c = self.runtime.clone();
        self.rt.block_on(c.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.into(),
        }))?;
        self.rt
            .block_on(c.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod.into(),
            }))
            .map(|_| ())
    }
}

/// The namespaces kubelet asks for: the pod's network and IPC, a pid
/// namespace per container.
fn kubelet_namespaces() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// A pod as kubelet describes it, in `cgroup_parent`.
pub fn pod_config(name: &str, uid: &str, cgroup_parent: &str, logs: &Path) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: uid.into(),
            namespace: "eci-test".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: logs.join(name).display().to_string(),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent.into(),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(kubelet_namespaces()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A container of the test image running `command`, with `mounts`
/// (container path, host path).
pub fn container_config(name: &str, command: &[&str], mounts: &[(&str, &Path)]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: IMAGE.into(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        mounts: mounts
            .iter()
            .map(|(inside, host)| Mount {
                container_path: inside.to_string(),
                host_path: host.display().to_string(),
                ..Default::default()
            })
            .collect(),
        linux: Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(kubelet_namespaces()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The environment eci-runc runs with under the test's containerd.
pub struct EciRuncEnv {
    pub agent_socket: PathBuf,
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub views_dir: PathBuf,
}

/// A containerd of the test's own with the CRI plugin serving. On drop:
/// the pods' processes and shims are killed, containerd stopped (its mount
/// namespace and every mount in it go with it), the pods' cgroups removed.
pub struct PrivateContainerd {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub version: (u32, u32, String),
    child: Option<Child>,
    /// cgroup parents (cgroupfs syntax) the test's pods are put in.
    cgroup_parents: Vec<String>,
}

/// Why the CRI path cannot be exercised here (the caller skips, saying so).
#[derive(Debug)]
pub struct Unavailable(pub String);

fn write(path: &Path, text: &str) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .unwrap_or_else(|e| panic!("creating {}: {e}", parent.display()));
    }
    std::fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

fn executable(path: &Path, text: &str) {
    write(path, text);
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// A CNI plugin that sets nothing up: the pod keeps the network namespace
/// containerd made for it, with loopback only. containerd 1.6 wants an
/// address for the pod's `eth0` in the answer (it shows it as the pod's
/// IP): it gets a placeholder that no interface carries. The answer is in
/// the version it was asked in. Installed under both names containerd runs.
const NULL_CNI: &str = r#"#!/bin/sh
case "$CNI_COMMAND" in
ADD)
    version=$(tr -d '\n' | sed -n 's/.*"cniVersion" *: *"\([^"]*\)".*/\1/p')
    address=192.0.2.2/24
    [ "$CNI_IFNAME" = lo ] && address=127.0.0.1/8
    printf '{"cniVersion":"%s","interfaces":[{"name":"%s","sandbox":"%s"}],"ips":[{"version":"4","address":"%s","interface":0}],"dns":{}}\n' \
        "${version:-0.4.0}" "$CNI_IFNAME" "$CNI_NETNS" "$address" ;;
VERSION)
    printf '{"cniVersion":"1.0.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0"]}\n' ;;
*) cat >/dev/null ;;
esac
"#;

impl PrivateContainerd {
    /// Start containerd in `dir` with the manifest's stanza and the
    /// wrapper of eci-runc; wait until the CRI plugin answers.
    pub fn start(
        dir: &Path,
        eci: &EciRuncEnv,
        cgroup_parents: &[&str],
    ) -> Result<Self, Unavailable> {
        let version = containerd_version().map_err(Unavailable)?;
        if version.0 < 1 || (version.0 == 1 && version.1 < 6) {
            return Err(Unavailable(format!(
                "containerd {} is older than 1.6 (CRI v1)",
                version.2
            )));
        }
        let manifest_path = runtime_manifest();
        let manifest = std::fs::read_to_string(&manifest_path)
            .unwrap_or_else(|e| panic!("{}: {e}", manifest_path.display()));
        let binary = manifest_binary(&manifest, "eci")
            .unwrap_or_else(|e| panic!("{}: {e}", manifest_path.display()));
        let (binary_dir, binary_name) = match (binary.parent(), binary.file_name()) {
            (Some(d), Some(n)) if binary.is_absolute() => (d.to_owned(), n.to_owned()),
            _ => panic!(
                "{}: BinaryName {} is not an absolute file path",
                manifest_path.display(),
                binary.display()
            ),
        };
        if !binary_dir.is_dir() {
            return Err(Unavailable(format!(
                "the manifest's BinaryName directory {} does not exist here (nothing to bind the test's eci-runc over)",
                binary_dir.display()
            )));
        }

        // eci-runc where the manifest says, seen by containerd only.
        let bin = dir.join("runtime-bin");
        executable(
            &bin.join(&binary_name),
            &format!(
                "#!/bin/sh\nexport ECI_AGENT_SOCKET='{}' ECI_STATE_DIR='{}' ECI_RUNC_RUN_DIR='{}' ECI_VIEWS_DIR='{}' ECI_CONTAINERD_ROOT='{}'\nexec '{}' \"$@\"\n",
                eci.agent_socket.display(),
                eci.state_dir.display(),
                eci.run_dir.display(),
                eci.views_dir.display(),
                dir.join("root").display(),
                workspace_bin("eci-runc").display()
            ),
        );
        let cni_bin = dir.join("cni/bin");
        for name in ["eci-test-null", "loopback"] {
            executable(&cni_bin.join(name), NULL_CNI);
        }
        write(
            &dir.join("cni/net.d/10-eci-test.conflist"),
            r#"{"cniVersion":"0.4.0","name":"eci-test","plugins":[{"type":"eci-test-null"}]}"#,
        );

        // Where this process may not lower an oom_score_adj (a host that
        // withholds CAP_SYS_RESOURCE), runc could not apply the -998 the
        // CRI plugin gives every sandbox: containerd's own setting for such
        // hosts keeps the pods' scores at or above its own.
        let restrict_oom = if may_lower_oom_score() {
            ""
        } else {
            println!(
                "note: no CAP_SYS_RESOURCE here: restrict_oom_score_adj = true (sandboxes keep containerd's oom_score_adj)"
            );
            "  restrict_oom_score_adj = true\n"
        };
        // The manifest as it is, then the test's settings (version 2 keys;
        // TOML allows a parent table after its sub-tables).
        let config = format!(
            "# {manifest_path}, as it is:\n{manifest}\n\
             # The test's settings:\n\
             [plugins.\"io.containerd.grpc.v1.cri\"]\n\
             \x20 sandbox_image = \"{IMAGE}\"\n\
             \x20 netns_mounts_under_state_dir = true\n\
             \x20 # containerd 2's defaults, on 1.6 too: sysctls of the pod's\n\
             \x20 # network namespace in every sandbox's spec.\n\
             \x20 enable_unprivileged_ports = true\n\
             \x20 enable_unprivileged_icmp = true\n\
             {restrict_oom}\
             [plugins.\"io.containerd.grpc.v1.cri\".cni]\n\
             \x20 bin_dir = \"{cni_bin}\"\n\
             \x20 conf_dir = \"{cni_conf}\"\n\
             # The default handler, as a node's config.toml has it (containerd\n\
             # 1.6 keeps no built-in runtime once one is configured) and the\n\
             # plain runc of the test's unprotected baseline pod.\n\
             [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n\
             \x20 runtime_type = \"io.containerd.runc.v2\"\n",
            manifest_path = manifest_path.display(),
            cni_bin = cni_bin.display(),
            cni_conf = dir.join("cni/net.d").display(),
        );
        let config_path = dir.join("containerd.toml");
        write(&config_path, &config);
        let socket = dir.join("containerd.sock");
        let log = std::fs::File::create(dir.join("containerd.log")).expect("containerd log");
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(r#"mount --bind "$1" "$2" && shift 2 && exec "$@""#)
            .arg("sh")
            .arg(&bin)
            .arg(&binary_dir)
            .arg("containerd")
            .arg("--config")
            .arg(&config_path)
            .arg("--root")
            .arg(dir.join("root"))
            .arg("--state")
            .arg(dir.join("state"))
            .arg("--address")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| Unavailable(format!("cannot run unshare/containerd: {e}")))?;
        let mut containerd = Self {
            dir: dir.to_owned(),
            socket,
            version,
            child: Some(child),
            cgroup_parents: cgroup_parents.iter().map(|s| s.to_string()).collect(),
        };
        containerd.wait_for_cri()?;
        Ok(containerd)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// The log lines that say why something failed.
    pub fn log_errors(&self) -> String {
        self.log()
            .lines()
            .filter(|l| l.contains("level=error") || l.contains("level=fatal"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn wait_for_cri(&mut self) -> Result<(), Unavailable> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = String::from("the socket never appeared");
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(Unavailable(format!(
                    "containerd {} exited ({status}): {}",
                    self.version.2,
                    tail(&self.log(), 8)
                )));
            }
            if self.socket.exists() {
                match Cri::connect(&self.socket).map(|c| c.version()) {
                    Ok(Ok(_)) => return Ok(()),
                    Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
                        return Err(Unavailable(format!(
                            "containerd {} does not serve CRI v1 (the CRI plugin is disabled or failed: {}): {}",
                            self.version.2,
                            status.message(),
                            self.cri_plugin_status()
                        )));
                    }
                    Ok(Err(status)) => last = status.to_string(),
                    Err(e) => last = e,
                }
            }
            if Instant::now() > deadline {
                return Err(Unavailable(format!(
                    "containerd's CRI plugin did not answer in 60 s ({last}): {}",
                    self.cri_plugin_status()
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `ctr plugins ls` for the CRI plugins, and the log's errors.
    fn cri_plugin_status(&self) -> String {
        let plugins = self
            .ctr(&["plugins", "ls"])
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| l.contains("cri"))
                    .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_else(|e| e.to_string());
        format!("plugins: [{plugins}]; log: {}", tail(&self.log_errors(), 4))
    }

    pub fn ctr(&self, args: &[&str]) -> std::io::Result<std::process::Output> {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", K8S_NAMESPACE])
            .args(args)
            .output()
    }

    /// Write the test image (busybox and eci-test-client) as an OCI archive
    /// and import it into the CRI plugin's namespace.
    pub fn import_image(&self) {
        let work = self.dir.join("image");
        let root = engine::image_rootfs(&work);
        let layout = work.join("layout");
        let blobs = layout.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).expect("image layout");
        let layer = work.join("layer.tar");
        run(Command::new("tar")
            .arg("--numeric-owner")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&layer)
            .arg("."));
        let layer_blob = blob(&blobs, &std::fs::read(&layer).expect("layer"));
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        let config = serde_json::json!({
            "architecture": arch,
            "os": "linux",
            "config": {
                "Entrypoint": ["/bin/sleep", "2147483647"],
                "Env": ["PATH=/bin"],
            },
            "rootfs": { "type": "layers", "diff_ids": [layer_blob.0] },
        });
        let config_blob = blob(&blobs, config.to_string().as_bytes());
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_blob.0, "size": config_blob.1,
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": layer_blob.0, "size": layer_blob.1,
            }],
        });
        let manifest_blob = blob(&blobs, manifest.to_string().as_bytes());
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_blob.0, "size": manifest_blob.1,
                "annotations": {
                    "io.containerd.image.name": IMAGE,
                    "org.opencontainers.image.ref.name": "latest",
                },
            }],
        });
        write(&layout.join("index.json"), &index.to_string());
        write(
            &layout.join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        );
        let archive = work.join("image.tar");
        run(Command::new("tar")
            .arg("-C")
            .arg(&layout)
            .arg("-cf")
            .arg(&archive)
            .args(["oci-layout", "index.json", "blobs"]));
        let out = self
            .ctr(&["images", "import", &archive.display().to_string()])
            .expect("run ctr");
        assert!(
            out.status.success(),
            "ctr images import: {}",
            engine::text(&out)
        );
    }

    /// Every mount point at or below the test's directory, in containerd's
    /// mount namespace (where the shims and eci-runc mount) and in ours.
    pub fn mounts_below(&self, dir: &Path) -> Vec<String> {
        let mut found = BTreeSet::new();
        let sources = [
            self.pid().map(|p| format!("/proc/{p}/mountinfo")),
            Some("/proc/self/mountinfo".to_owned()),
        ];
        for source in sources.into_iter().flatten() {
            let text = std::fs::read_to_string(&source)
                .unwrap_or_else(|e| panic!("reading {source}: {e}"));
            for line in text.lines() {
                if let Some(point) = line.split_whitespace().nth(4)
                    && Path::new(&unescape(point)).starts_with(dir)
                {
                    found.insert(format!("{point} ({source})"));
                }
            }
        }
        found.into_iter().collect()
    }
}

/// Whether this process holds CAP_SYS_RESOURCE (needed to lower an
/// oom_score_adj below its own).
fn may_lower_oom_score() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}

fn unescape(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", engine::text(&out));
}

/// Store `data` as a blob; returns its digest and size.
fn blob(blobs: &Path, data: &[u8]) -> (String, usize) {
    let tmp = blobs.join("incoming");
    std::fs::write(&tmp, data).expect("blob");
    let out = Command::new("sha256sum")
        .arg(&tmp)
        .output()
        .expect("run sha256sum");
    assert!(out.status.success(), "sha256sum: {}", engine::text(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text
        .split_whitespace()
        .next()
        .filter(|h| h.len() == 64)
        .unwrap_or_else(|| panic!("sha256sum printed {text:?}"))
        .to_owned();
    std::fs::rename(&tmp, blobs.join(&hex)).expect("blob");
    (format!("sha256:{hex}"), data.len())
}

/// pid -> parent pid, for every process.
fn parents() -> BTreeMap<u32, u32> {
    let mut map = BTreeMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        if let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
        {
            map.insert(pid, ppid);
        }
    }
    map
}

/// The shims of this containerd (they name its socket) and everything
/// below them: the pods' processes.
fn shims_and_pods(socket: &Path) -> Vec<u32> {
    let needle = socket.display().to_string();
    let parents = parents();
    let shims: Vec<u32> = parents
        .keys()
        .copied()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                .unwrap_or(false)
                && std::fs::read_link(format!("/proc/{pid}/exe"))
                    .is_ok_and(|e| e.to_string_lossy().contains("containerd-shim"))
        })
        .collect();
    let mut all: Vec<u32> = shims.clone();
    let mut i = 0;
    while i < all.len() {
        let parent = all[i];
        all.extend(
            parents
                .iter()
                .filter(|(_, p)| **p == parent)
                .map(|(c, _)| *c),
        );
        i += 1;
    }
    all
}

/// Running (a zombie is not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .map(|state| state != "Z")
        })
        .unwrap_or(false)
}

fn kill(pid: u32, signal: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
}

/// The cgroup directories of `parent` (cgroupfs syntax) in every mounted
/// hierarchy (v1 controllers and cgroup2).
fn cgroup_dirs(parent: &str) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fields: Vec<&str> = left.split_whitespace().collect();
            let point = fields.get(4)?;
            (right.starts_with("cgroup ") || right.starts_with("cgroup2 "))
                .then(|| PathBuf::from(unescape(point)))
        })
        .map(|mount| mount.join(parent.trim_start_matches('/')))
        .filter(|d| d.is_dir())
        .collect()
}

/// Remove a cgroup directory and everything below it, deepest first.
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    for _ in 0..50 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for PrivateContainerd {
    fn drop(&mut self) {
        let leftovers = shims_and_pods(&self.socket);
        for pid in leftovers.iter().rev() {
            kill(*pid, nix::sys::signal::Signal::SIGKILL);
        }
        // Gone before the directory goes: a shim's last eci-runc call
        // would otherwise write into it again.
        let deadline = Instant::now() + Duration::from_secs(10);
        while leftovers.iter().any(|p| alive(*p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(mut child) = self.child.take() {
            kill(child.id(), nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(15);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // runc's state of the killed containers (the shims keep it in the
        // machine's /run/containerd/runc/<namespace>, whatever --state is).
        let tasks = self
            .dir
            .join("state/io.containerd.runtime.v2.task")
            .join(K8S_NAMESPACE);
        for entry in std::fs::read_dir(&tasks).into_iter().flatten().flatten() {
            let _ = Command::new("runc")
                .arg("--root")
                .arg(Path::new("/run/containerd/runc").join(K8S_NAMESPACE))
                .args(["delete", "--force"])
                .arg(entry.file_name())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        for parent in &self.cgroup_parents {
            for dir in cgroup_dirs(parent) {
                remove_cgroup_tree(&dir);
            }
        }
    }
}
