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
