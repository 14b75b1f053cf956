//! The policy reader's unit tests.

use super::*;
use crate::checks::{check_cgroup_parent, split_image};

const FILE: &str = "/etc/eci/admin-settings.json";

const FULL: &str = r#"{
  "configurationFileVersion": 2,
  "enhancedContainerIsolation": {
"value": true,
"locked": true,
"dockerSocketMount": {
  "imageList": {
    "images": ["docker.io/testcontainers/ryuk:*", "docker:cli"],
    "allowDerivedImages": false
  },
  "commandList": { "type": "deny", "commands": ["push", "build", "container*"] }
}
  },
  "eci": {
"protectedCgroupParents": ["/docker", "/system.slice/docker-*.scope"],
"protectedSockets": ["/run/docker.sock"],
"shareableHostPaths": ["/home"],
"audit": { "path": "/var/log/eci/audit.jsonl", "maxBytes": 52428800, "keep": 5, "linesPerSecond": 250 }
  }
}
"#;

fn invalid(text: &str) -> Invalid {
    match parse(text, FILE) {
        Err(PolicyError::Invalid(invalid)) => invalid,
        other => panic!("expected an invalid policy, got {other:?}"),
    }
}

/// The error's text, after checking it names the file, `key` and `line`.
fn expect(text: &str, key: &str, line: usize) -> String {
    let e = invalid(text);
    let shown = e.to_string();
    assert!(
        shown.starts_with(&format!("{FILE}: line {line}")),
        "{shown}"
    );
    assert_eq!(e.key.as_deref(), Some(key), "{shown}");
    assert!(shown.contains(&format!(": {key}: ")), "{shown}");
    assert_eq!(e.line, Some(line), "{shown}");
    shown
}

#[test]
fn a_missing_file_means_the_secure_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let (policy, source) = load(&dir.path().join("admin-settings.json")).unwrap();
    assert_eq!(source, Source::BuiltInDefaults);
    assert_eq!(policy, Policy::default());
    assert!(policy.enforcement && !policy.locked);
    assert!(policy.protected_cgroup_parents.contains(&"/docker".into()));
    assert!(
        policy
            .protected_sockets
            .contains(&PathBuf::from("/run/docker.sock"))
    );
    // The users' homes (projects bound with -v "$PWD":/src), nothing else.
    assert_eq!(policy.shareable_host_paths, [PathBuf::from("/home")]);
    assert!(policy.docker_socket_mount.image_list.images.is_empty());
    assert_eq!(
        policy.docker_socket_mount.command_list,
        CommandList {
            kind: CommandListType::Deny,
            commands: vec![]
        }
    );
    assert_eq!(policy.audit.path, PathBuf::from("/var/log/eci/audit.jsonl"));
    assert_eq!((policy.audit.max_bytes, policy.audit.keep), (52_428_800, 5));
    assert_eq!(policy.audit.lines_per_second, 100);
    // The defaults pass their own checks.
    for parent in DEFAULT_PROTECTED_CGROUP_PARENTS {
        check_cgroup_parent(parent).unwrap();
    }
    assert_eq!(parse("{}", FILE).unwrap(), Policy::default());
}

#[test]
fn a_file_that_exists_is_read_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admin-settings.json");
    std::fs::write(&path, FULL).unwrap();
    let (policy, source) = load(&path).unwrap();
    assert_eq!(source, Source::File(path.clone()));
    assert!(policy.locked);
    std::fs::write(&path, "{\"eci\": 3}").unwrap();
    let e = load(&path).unwrap_err().to_string();
    assert!(e.starts_with(&format!("{}: line 1", path.display())), "{e}");
}

#[test]
fn an_unreadable_file_is_an_error_not_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    // A directory where the file should be cannot be read as one.
    let e = load(dir.path()).unwrap_err();
    assert!(matches!(e, PolicyError::Read { .. }), "{e:?}");
    let shown = e.to_string();
    assert!(
        shown.starts_with(&format!(
            "{}: cannot read the policy file",
            dir.path().display()
        )),
        "{shown}"
    );
    // Invalid UTF-8 is no policy either.
    let path = dir.path().join("admin-settings.json");
    std::fs::write(&path, b"{\"eci\": \xff}").unwrap();
    assert!(matches!(load(&path), Err(PolicyError::Read { .. })));
    // Without permission (root reads anything, so only as a user).
    if !nix::unistd::geteuid().is_root() {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(&path, "{}").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("Permission denied"), "{e}");
    }
}

#[test]
fn the_full_example_parses() {
    let p = parse(FULL, FILE).unwrap();
    assert!(p.enforcement && p.locked);
    let images = &p.docker_socket_mount.image_list.images;
    assert_eq!(
        images.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["docker.io/testcontainers/ryuk:*", "docker:cli"]
    );
    assert!(!p.docker_socket_mount.image_list.allow_derived_images);
    assert_eq!(
        p.docker_socket_mount.command_list,
        CommandList {
            kind: CommandListType::Deny,
            commands: vec!["push".into(), "build".into(), "container*".into()]
        }
    );
    assert_eq!(
        p.protected_cgroup_parents,
        ["/docker", "/system.slice/docker-*.scope"]
    );
    assert_eq!(p.protected_sockets, [PathBuf::from("/run/docker.sock")]);
    assert_eq!(p.shareable_host_paths, [PathBuf::from("/home")]);
    assert_eq!(
        p.audit,
        AuditSettings {
            lines_per_second: 250,
            ..AuditSettings::default()
        }
    );
    // Written out and read back, a policy stays the same.
    let text = p.to_file_text();
    assert_eq!(parse(&text, FILE).unwrap(), p);
    assert_eq!(
        parse(&Policy::default_file_text(), FILE).unwrap(),
        Policy::default()
    );
    // Serialisable for `status`.
    let json = serde_json::to_value(&p).unwrap();
    assert_eq!(json["docker_socket_mount"]["command_list"]["type"], "deny");
    assert_eq!(json["audit"]["max_bytes"], 52_428_800);
    let summary = p.summary();
    assert!(
        summary.starts_with("enforcement on (locked)\n"),
        "{summary}"
    );
    assert!(
        summary.contains("/system.slice/docker-*.scope"),
        "{summary}"
    );
}

#[test]
fn docker_only_files_and_the_first_versions_audit_log_key_still_parse() {
    let p = parse(
        "{\"configurationFileVersion\": 1, \"enhancedContainerIsolation\": {\"value\": false}}",
        FILE,
    )
    .unwrap();
    assert!(!p.enforcement);
    assert_eq!(
        p.protected_cgroup_parents,
        Policy::default().protected_cgroup_parents
    );
    let p = parse(r#"{"eci": {"auditLog": "/var/log/x.jsonl"}}"#, FILE).unwrap();
    assert_eq!(p.audit.path, PathBuf::from("/var/log/x.jsonl"));
    let e = invalid(r#"{"eci": {"auditLog": "/a", "audit": {"path": "/b"}}}"#);
    assert_eq!(e.key.as_deref(), Some("eci.auditLog"));
}

#[test]
fn a_wrong_type_names_file_key_line_and_what_was_expected() {
    let text = "{\n  \"enhancedContainerIsolation\": {\n    \"value\": \"yes\"\n  }\n}\n";
    let e = expect(text, "enhancedContainerIsolation.value", 3);
    assert_eq!(
        e,
        "/etc/eci/admin-settings.json: line 3, column 14: enhancedContainerIsolation.value: \
         expected a boolean (true or false), found the string \"yes\""
    );
    let e = expect(
        "{\n\"eci\": {\"protectedSockets\": \"/run/docker.sock\"}}",
        "eci.protectedSockets",
        2,
    );
    assert!(
        e.contains("expected a list (a JSON array), found the string"),
        "{e}"
    );
    let e = expect(
        "{\"eci\": {\"protectedSockets\": [\"/a\", 7]}}",
        "eci.protectedSockets[1]",
        1,
    );
    assert!(
        e.contains("column 37") && e.contains("expected a string, found the number 7"),
        "{e}"
    );
    let e = expect(
        "{\"eci\": {\"audit\": {\"keep\": -1}}}",
        "eci.audit.keep",
        1,
    );
    assert!(
        e.contains("expected a whole number, found the number -1"),
        "{e}"
    );
    let e = expect(
        "{\"eci\": {\"audit\": {\"keep\": 2.5}}}",
        "eci.audit.keep",
        1,
    );
    assert!(e.contains("found the number 2.5"), "{e}");
    let e = expect(
        "{\"enhancedContainerIsolation\": {\"locked\": null}}",
        "enhancedContainerIsolation.locked",
        1,
    );
    assert!(e.contains("found null"), "{e}");
    let e = expect("{\n\"eci\": [\"/home\"]}", "eci", 2);
    assert!(e.contains("expected an object, found a list"), "{e}");
    let e = invalid("[]").to_string();
    assert!(e.contains("expected an object, found a list"), "{e}");
}

#[test]
fn unknown_keys_are_named_with_the_allowed_ones() {
    let text = "{\n  \"eci\": {\n    \"protectedCgroupParents\": [],\n    \"protectedParents\": []\n  }\n}";
    let e = expect(text, "eci.protectedParents", 4);
    assert!(e.contains("line 4, column 5:"), "{e}");
    assert!(
        e.contains("unknown key \"protectedParents\"; the keys allowed here are protectedCgroupParents, protectedSockets, shareableHostPaths, dockerApiSockets, dockerRuntimeName, allowedDevices, audit, auditLog"),
        "{e}"
    );
    // Deeper down.
    let text = "{\"enhancedContainerIsolation\": {\n \"dockerSocketMount\": {\n  \"imageList\": {\n   \"images\": [],\n   \"allowDerived\": true}}}}";
    let e = expect(
        text,
        "enhancedContainerIsolation.dockerSocketMount.imageList.allowDerived",
        5,
    );
    assert!(e.contains("images, allowDerivedImages"), "{e}");
    // At the top.
    let e = expect(
        "{\n\"exposeDockerAPIOnTCP2375\": true}",
        "exposeDockerAPIOnTCP2375",
        2,
    );
    assert!(
        e.contains("configurationFileVersion, enhancedContainerIsolation, eci"),
        "{e}"
    );
    let e = expect("{\"eci\": {\"audit\": {}, \"audit\": {}}}", "eci.audit", 1);
    assert!(e.contains("given more than once"), "{e}");
}

#[test]
fn syntax_errors_have_the_line_and_column() {
    let e = invalid("{\n  \"eci\": {,\n}");
    assert_eq!(e.line, Some(2), "{e}");
    assert!(e.to_string().contains("invalid JSON"), "{e}");
    let e = invalid("{\n  \"eci\": {}\n");
    assert!(e.to_string().contains("ends too early"), "{e}");
    let e = invalid("{}\n{}");
    assert_eq!(e.line, Some(2), "{e}");
    assert!(invalid("  \n").to_string().contains("empty"));
    assert_eq!(parse("\u{feff}{}", FILE).unwrap(), Policy::default());
}

#[test]
fn the_version_must_be_1_or_2() {
    let e = expect(
        "{\n\n  \"configurationFileVersion\": 7\n}",
        "configurationFileVersion",
        3,
    );
    assert!(e.ends_with("expected 1 or 2, found 7"), "{e}");
    let e = expect(
        "{\"configurationFileVersion\": \"2\"}",
        "configurationFileVersion",
        1,
    );
    assert!(
        e.contains("expected a whole number, found the string \"2\""),
        "{e}"
    );
}

#[test]
fn bad_cgroup_parents_name_the_index_and_the_line() {
    for (parent, why) in [
        ("/", "lock out"),
        ("/docker/../system.slice", "normalized"),
        ("/docker/./x", "normalized"),
        ("/docker//x", "normalized"),
        ("/docker/", "normalized"),
        ("docker", "starting with '/'"),
        ("", "starting with '/'"),
        ("/system.slice/*/x", "last segment only"),
        ("/docker-*/x.scope", "last segment only"),
        ("/system.slice/*", "every sibling"),
        ("/*", "every sibling"),
    ] {
        let text = format!(
            "{{\n \"eci\": {{\n  \"protectedCgroupParents\": [\"/docker\",\n   \"{parent}\"]\n }}\n}}"
        );
        let e = expect(&text, "eci.protectedCgroupParents[1]", 4);
        assert!(e.contains(why), "{parent}: {e}");
    }
    for good in [
        "/docker",
        "/system.slice/docker-*.scope",
        "/a/b/c*d*",
        "/kubepods.slice",
    ] {
        check_cgroup_parent(good).unwrap();
    }
}

#[test]
fn bad_sockets_and_audit_settings() {
    for bad in [
        "run/docker.sock",
        "/run/../docker.sock",
        "/",
        "/run/docker.sock/",
    ] {
        let text = format!("{{\"eci\": {{\n\"protectedSockets\": [\"{bad}\"]}}}}");
        expect(&text, "eci.protectedSockets[0]", 2);
    }
    let e = expect(
        "{\"eci\": {\"audit\": {\n\"maxBytes\": 100}}}",
        "eci.audit.maxBytes",
        2,
    );
    assert!(e.contains("at least 4096"), "{e}");
    for keep in [0_u64, 101, 1 << 40] {
        let e = expect(
            &format!("{{\"eci\": {{\"audit\": {{\"keep\": {keep}}}}}}}"),
            "eci.audit.keep",
            1,
        );
        assert!(e.contains("from 1 to 100"), "{e}");
    }
    for rate in [0_u64, 100_001, 1 << 40] {
        let e = expect(
            &format!("{{\"eci\": {{\"audit\": {{\"linesPerSecond\": {rate}}}}}}}"),
            "eci.audit.linesPerSecond",
            1,
        );
        assert!(e.contains("from 1 to 100000"), "{e}");
    }
    expect(
        "{\"eci\": {\"audit\": {\"path\": \"audit.jsonl\"}}}",
        "eci.audit.path",
        1,
    );
}

#[test]
fn bad_shareable_paths_are_refused() {
    for (bad, why) in [
        ("/etc", "must not share it"),
        ("/", "below \"/\""),
        ("/var/lib/docker/volumes", "lies inside /var/lib/docker"),
        ("/var/lib/docker", "must not share it"),
        ("/var", "contains /var/lib/docker"),
        ("/var/lib", "contains /var/lib/docker"),
        ("/usr", "must not share it"),
        ("/run/user/1000", "lies inside /run"),
        ("/etc/eci", "lies inside /etc"),
        ("/proc/1", "lies inside /proc"),
        ("/var/log", "contains the audit log"),
        ("home", "absolute"),
        ("/home/../etc", "normalized"),
    ] {
        let text = format!(
            "{{\n  \"eci\": {{\n    \"shareableHostPaths\": [\n      \"/home\", \"{bad}\"\n    ]\n  }}\n}}"
        );
        let e = expect(&text, "eci.shareableHostPaths[1]", 4);
        assert!(e.contains(why), "{bad}: {e}");
    }
    let p = parse(
        r#"{"eci": {"shareableHostPaths": ["/home", "/Users", "/tmp", "/mnt/data", "/usr/share/fonts", "/var/log"],
                    "audit": {"path": "/var/lib/eci-audit/audit.jsonl"}}}"#,
        FILE,
    )
    .unwrap();
    assert_eq!(p.shareable_host_paths.len(), 6);
}

#[test]
fn image_references() {
    let digest = format!("alpine@sha256:{}", "a".repeat(64));
    for ok in [
        "*",
        "alpine",
        "docker:cli",
        "docker.io/testcontainers/ryuk:*",
        "localhost:5000/my-team/app_x:1.2.3",
        "ghcr.io/a/b__c/d--e:latest",
        &digest,
    ] {
        ImageRef::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    assert_eq!(
        split_image("docker.io/testcontainers/ryuk:*"),
        Ok(("docker.io/testcontainers/ryuk", Some("*"), None))
    );
    assert_eq!(
        split_image("localhost:5000/app"),
        Ok(("localhost:5000/app", None, None))
    );
    assert_eq!(
        split_image(&digest),
        Ok(("alpine", None, Some(&digest["alpine@".len()..])))
    );
    for bad in [
        "",
        "Alpine",
        "alpine:",
        "alpine@sha256:abc",
        "alpine@md5:0123",
        "docker.io/*",
        "alpine:la*st",
        "a..b",
        "-alpine",
        "alpine/",
        "reg:port/x",
    ] {
        assert!(ImageRef::parse(bad).is_err(), "{bad}");
    }
    let text = "{\"enhancedContainerIsolation\": {\"dockerSocketMount\": {\"imageList\": {\n  \"images\": [\"docker:cli\",\n    \"Bad Image\"]}}}}";
    let e = expect(
        text,
        "enhancedContainerIsolation.dockerSocketMount.imageList.images[1]",
        3,
    );
    assert!(
        e.contains("column 5") && e.contains("not an image reference"),
        "{e}"
    );
}

#[test]
fn command_lists() {
    let text = "{\"enhancedContainerIsolation\": {\"dockerSocketMount\": {\n  \"commandList\": {\n    \"type\": \"maybe\"}}}}";
    let e = expect(
        text,
        "enhancedContainerIsolation.dockerSocketMount.commandList.type",
        3,
    );
    assert!(
        e.ends_with("expected \"allow\" or \"deny\", found \"maybe\""),
        "{e}"
    );
    let e = expect(
        "{\"enhancedContainerIsolation\": {\"dockerSocketMount\": {\"commandList\": {\"type\": true}}}}",
        "enhancedContainerIsolation.dockerSocketMount.commandList.type",
        1,
    );
    assert!(
        e.ends_with("expected \"allow\" or \"deny\", found true"),
        "{e}"
    );
    for bad in ["", "*", "con*tainer", "Push", "push "] {
        let text = format!(
            "{{\"enhancedContainerIsolation\": {{\"dockerSocketMount\": {{\"commandList\": {{\n\"commands\": [\"push\", \"{bad}\"]}}}}}}}}"
        );
        expect(
            &text,
            "enhancedContainerIsolation.dockerSocketMount.commandList.commands[1]",
            2,
        );
    }
    let p = parse(
        r#"{"enhancedContainerIsolation": {"dockerSocketMount": {"commandList": {"type": "allow", "commands": ["image*", "ps"]}}}}"#,
        FILE,
    )
    .unwrap();
    assert_eq!(
        p.docker_socket_mount.command_list.kind,
        CommandListType::Allow
    );
}

#[test]
fn values_are_found_past_lookalike_keys_and_strings() {
    // The same key in another section, and the value as a string elsewhere,
    // do not mislead the locator.
    let text = "{\"enhancedContainerIsolation\": {\"dockerSocketMount\": {\"imageList\": {\"images\": [\"/\"]}}},\n \"eci\": {\"protectedSockets\": [\"/\"],\n  \"protectedCgroupParents\": [\"/docker\", \"/\"]}}";
    let e = invalid(text);
    // Images are checked first: "/" is not an image.
    assert_eq!((e.line, e.column), (Some(1), Some(80)), "{e}");
    let text = "{\"eci\": {\"shareableHostPaths\": [\"/home\"], \"audit\": {\"path\": \"/x\"},\n \"protectedCgroupParents\": [\"/docker\", {\"nested\": [1, \"/\"]}]}}";
    let e = invalid(text);
    assert_eq!(
        e.key.as_deref(),
        Some("eci.protectedCgroupParents[1]"),
        "{e}"
    );
    assert_eq!((e.line, e.column), (Some(2), Some(40)), "{e}");
}

#[test]
fn allowed_devices_are_read_by_kind_and_number_and_written_back() {
    let p = parse(
        r#"{"eci": {"allowedDevices": ["c 10:200", "c 10:*", "b 7:0"]}}"#,
        FILE,
    )
    .unwrap();
    assert_eq!(
        p.allowed_devices,
        [
            DeviceRule {
                block: false,
                major: 10,
                minor: Some(200)
            },
            DeviceRule {
                block: false,
                major: 10,
                minor: None
            },
            DeviceRule {
                block: true,
                major: 7,
                minor: Some(0)
            },
        ]
    );
    assert_eq!(parse(&p.to_file_text(), FILE).unwrap(), p);
    assert!(Policy::default().allowed_devices.is_empty());
    let shown = expect(
        "{\"eci\": {\n\"allowedDevices\": [\"/dev/sda\"]}}",
        "eci.allowedDevices[0]",
        2,
    );
    assert!(shown.contains("c MAJOR:MINOR"), "{shown}");
}
