//! The Kubernetes story: the manifests and the containerd stanza parse and
//! agree with each other.

use std::path::PathBuf;

fn deploy(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/kubernetes")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn runtime_class_daemonset_and_containerd_stanza_agree() {
    let class: serde_yaml::Value =
        serde_yaml::from_str(&deploy("runtimeclass.yaml")).expect("runtimeclass.yaml");
    assert_eq!(class["apiVersion"], "node.k8s.io/v1");
    assert_eq!(class["kind"], "RuntimeClass");
    let handler = class["handler"].as_str().expect("handler");

    let containerd: toml::Value =
        toml::from_str(&deploy("containerd-runtime.toml")).expect("containerd-runtime.toml");
    let runtime =
        &containerd["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"][handler];
    assert_eq!(
        runtime["runtime_type"].as_str(),
        Some("io.containerd.runc.v2")
    );
    assert_eq!(
        runtime["options"]["BinaryName"].as_str(),
        Some("/usr/local/bin/eci-runc")
    );

    let ds: serde_yaml::Value =
        serde_yaml::from_str(&deploy("daemonset.yaml")).expect("daemonset.yaml");
    assert_eq!(ds["kind"], "DaemonSet");
    let spec = &ds["spec"]["template"]["spec"];
    let container = &spec["containers"][0];
    assert_eq!(container["command"][1], "run");
    assert_eq!(container["securityContext"]["privileged"], true);
    let mounts: Vec<&str> = container["volumeMounts"]
        .as_sequence()
        .expect("volumeMounts")
        .iter()
        .filter_map(|m| m["mountPath"].as_str())
        .collect();
    for needed in [
        "/sys/fs/bpf",
        "/sys/kernel/security",
        "/sys/fs/cgroup",
        "/run/eci",
    ] {
        assert!(
            mounts.contains(&needed),
            "the agent needs {needed} from the host: {mounts:?}"
        );
    }
    let volumes: Vec<&str> = spec["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for m in container["volumeMounts"]
        .as_sequence()
        .expect("volumeMounts")
    {
        assert!(
            volumes.contains(&m["name"].as_str().unwrap_or_default()),
            "mount without volume: {m:?}"
        );
    }
    assert_eq!(
        ds["spec"]["selector"]["matchLabels"], ds["spec"]["template"]["metadata"]["labels"],
        "the selector must match the pod labels"
    );
}

fn daemonset_pod() -> serde_yaml::Value {
    let ds: serde_yaml::Value =
        serde_yaml::from_str(&deploy("daemonset.yaml")).expect("daemonset.yaml");
    ds["spec"]["template"]["spec"].clone()
}

/// The hostPath of the pod's volume `name`.
fn host_path<'a>(pod: &'a serde_yaml::Value, name: &str) -> &'a str {
    pod["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == name)
        .and_then(|v| v["hostPath"]["path"].as_str())
        .unwrap_or_else(|| panic!("no hostPath volume {name}"))
}

/// `cargo xtask image` tags the image the DaemonSet's containers name (it
/// reads the name from daemonset.yaml: one name for all of them, as
/// `repository:tag`), and nothing pulls it: it is loaded on each node
/// (`image::` loads the archive and checks its tags in the VM).
#[test]
fn every_container_of_the_daemonset_runs_the_one_local_image_xtask_makes() {
    let pod = daemonset_pod();
    let containers: Vec<&serde_yaml::Value> = ["initContainers", "containers"]
        .iter()
        .flat_map(|k| pod[*k].as_sequence().expect(k).iter())
        .collect();
    assert_eq!(containers.len(), 2, "an init container and the agent");
    let image = containers[0]["image"].as_str().expect("image");
    let (repository, tag) = image.rsplit_once(':').expect("repository:tag");
    assert!(!repository.is_empty() && !tag.is_empty(), "{image}");
    for c in &containers {
        assert_eq!(c["image"].as_str(), Some(image), "{c:?}");
        assert!(
            matches!(
                c["imagePullPolicy"].as_str(),
                Some("IfNotPresent" | "Never")
            ),
            "a loaded image must not be pulled (there is no registry): {c:?}"
        );
    }
    assert_eq!(
        pod["automountServiceAccountToken"], false,
        "the token's mount below /var/run (the node's /run, read-only) would fail"
    );
}

/// The init container puts eci-runc at containerd-runtime.toml's
/// BinaryName on the node, renamed into place from a temporary file in the
/// same directory.
#[test]
fn the_init_container_installs_eci_runc_where_containerd_runs_it() {
    let containerd: toml::Value =
        toml::from_str(&deploy("containerd-runtime.toml")).expect("containerd-runtime.toml");
    let binary = containerd["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]
        ["eci"]["options"]["BinaryName"]
        .as_str()
        .expect("BinaryName");
    let (node_dir, file) = binary.rsplit_once('/').expect("an absolute path");
    let pod = daemonset_pod();
    let init = &pod["initContainers"][0];
    let mount = init["volumeMounts"]
        .as_sequence()
        .expect("volumeMounts")
        .iter()
        .find(|m| host_path(&pod, m["name"].as_str().expect("name")) == node_dir)
        .unwrap_or_else(|| panic!("the init container does not mount the node's {node_dir}"));
    let at = mount["mountPath"].as_str().expect("mountPath");
    let script = init["command"]
        .as_sequence()
        .expect("command")
        .last()
        .and_then(|s| s.as_str())
        .expect("the install script");
    let target = format!("{at}/{file}");
    let rename = script
        .split("&&")
        .map(str::trim)
        .find(|step| step.starts_with("mv "))
        .unwrap_or_else(|| panic!("no rename into place: {script}"));
    assert!(rename.ends_with(&format!(" {target}")), "{rename}");
    let temp = rename
        .split_whitespace()
        .rev()
        .nth(1)
        .expect("the temporary file");
    assert!(
        temp.starts_with(&format!("{at}/")) && temp != target,
        "the temporary file must be beside {target} (a rename within one directory): {rename}"
    );
    assert!(
        script.contains(&format!("/usr/local/bin/{file} {temp}")),
        "the image's {file} is copied to {temp}: {script}"
    );
}

/// The agent finds the engines' sockets the policy protects by default at
/// their paths: the node's directory that holds each is mounted at the
/// same place.
#[test]
fn the_agent_sees_the_sockets_the_policy_protects_at_their_paths() {
    let pod = daemonset_pod();
    let agent = &pod["containers"][0];
    let mounts: Vec<(&str, &str)> = agent["volumeMounts"]
        .as_sequence()
        .expect("volumeMounts")
        .iter()
        .map(|m| {
            (
                m["mountPath"].as_str().expect("mountPath"),
                host_path(&pod, m["name"].as_str().expect("name")),
            )
        })
        .collect();
    for socket in eci_policy::DEFAULT_PROTECTED_SOCKETS {
        // /var/run is the image's link to /run, as on the nodes.
        let socket = socket.replacen("/var/run/", "/run/", 1);
        let seen = mounts.iter().any(|(at, host)| {
            at == host && socket.starts_with(&format!("{}/", at.trim_end_matches('/')))
        });
        assert!(
            seen,
            "the agent does not see the node's {socket} at its path: {mounts:?}"
        );
    }
}
