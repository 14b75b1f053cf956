//! The checks of each value: paths, shareable host paths, cgroup parents,
//! Docker commands, runtime names and image references. Each returns what
//! is wrong in words for the person editing the file.

use std::path::Path;

/// Why a value is refused, in words for the person editing the file: the
/// message of an [`Invalid`](crate::Invalid) placed at that value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Rejected(pub(crate) String);

impl From<String> for Rejected {
    fn from(message: String) -> Self {
        Self(message)
    }
}

/// Directories no shareable host path may be, contain or lie in
/// (configuration, engine and eci state, runtime sockets, kernel
/// interfaces, boot files): sharing them hands containers the VM's system,
/// the engine's state or eci's own.
const NOTHING_BELOW: &[&str] = &[
    "/etc",
    "/var/lib/docker",
    "/var/lib/containerd",
    "/var/lib/eci",
    "/run",
    "/var/run",
    "/proc",
    "/sys",
    "/dev",
    "/boot",
];

/// Directories a shareable host path may neither be nor contain, but may
/// lie in: an administrator may share e.g. `/usr/share/fonts` on purpose.
const NOT_THEMSELVES: &[&str] = &["/usr", "/lib", "/lib64", "/bin", "/sbin", "/root"];

/// A runtime name as Docker accepts it in daemon.json `runtimes`.
pub(crate) fn check_runtime_name(name: &str) -> Result<(), Rejected> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Rejected::from(format!(
            "expected a Docker runtime name (letters, digits, `_`, `.`, `-`), found {name:?}"
        )))
    }
}

/// An absolute, normalized path: no `.`, `..` or empty segments, no
/// trailing `/`, no control characters, not `/` itself.
pub(crate) fn check_path(path: &str) -> Result<(), Rejected> {
    if !path.starts_with('/') {
        return Err(Rejected::from(format!(
            "expected an absolute path, found {path:?}"
        )));
    }
    if path == "/" {
        return Err(Rejected::from(
            "expected a path below \"/\", found \"/\"".to_owned(),
        ));
    }
    if path.chars().any(char::is_control) {
        return Err(Rejected::from(format!(
            "the path {path:?} holds a control character"
        )));
    }
    if path[1..]
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(Rejected::from(format!(
            "expected a normalized path (no `.`, `..`, `//` or trailing `/`), found {path:?}"
        )));
    }
    Ok(())
}

/// A host path containers may be given: not a system, engine or eci
/// directory, not a parent of one, not inside one of those in
/// [`NOTHING_BELOW`], and not where the audit log is.
pub(crate) fn check_shareable(path: &str, audit_log: &Path) -> Result<(), Rejected> {
    let p = Path::new(path);
    for dir in NOTHING_BELOW.iter().chain(NOT_THEMSELVES) {
        let dir_path = Path::new(dir);
        if p == dir_path {
            return Err(Rejected::from(format!(
                "{path:?} is a directory of the VM's system or of its engines; containers must \
                 not share it"
            )));
        }
        if dir_path.starts_with(p) {
            return Err(Rejected::from(format!(
                "{path:?} contains {dir}, which containers must not reach; share a directory \
                 beside it instead"
            )));
        }
    }
    for dir in NOTHING_BELOW {
        if p.starts_with(dir) {
            return Err(Rejected::from(format!(
                "{path:?} lies inside {dir}, which containers must not reach"
            )));
        }
    }
    if audit_log.starts_with(p) {
        return Err(Rejected::from(format!(
            "{path:?} contains the audit log {}, which containers must not reach",
            audit_log.display()
        )));
    }
    Ok(())
}

/// An absolute cgroup2 path, normalized, not the root; `*` only in the last
/// segment, which must not be all wildcard (that would take in every
/// sibling: the engine's and the agent's own cgroups too).
pub(crate) fn check_cgroup_parent(parent: &str) -> Result<(), Rejected> {
    if parent == "/" {
        return Err(Rejected::from(
            "protecting the root cgroup would lock out the agent and the container engine; \
             name the engines' container cgroups (e.g. \"/docker\")"
                .to_owned(),
        ));
    }
    if !parent.starts_with('/') {
        return Err(Rejected::from(format!(
            "expected a cgroup path from the cgroup2 root, starting with '/' (e.g. \"/docker\"), \
             found {parent:?}"
        )));
    }
    if parent.chars().any(char::is_control) {
        return Err(Rejected::from(format!(
            "the cgroup path {parent:?} holds a control character"
        )));
    }
    let segments: Vec<&str> = parent[1..].split('/').collect();
    if segments
        .iter()
        .any(|s| s.is_empty() || *s == "." || *s == "..")
    {
        return Err(Rejected::from(format!(
            "expected a normalized cgroup path (no `.`, `..`, `//` or trailing `/`), found \
             {parent:?}"
        )));
    }
    let (last, above) = segments.split_last().unwrap_or((&"", &[]));
    if above.iter().any(|s| s.contains('*')) {
        return Err(Rejected::from(format!(
            "{parent:?}: `*` is allowed in the last segment only (e.g. \
             \"/system.slice/docker-*.scope\")"
        )));
    }
    if last.chars().all(|c| c == '*') {
        return Err(Rejected::from(format!(
            "{parent:?}: a last segment of only `*` matches every sibling cgroup, the engine's \
             and the agent's included; protect the parent or use a pattern such as \"docker-*.scope\""
        )));
    }
    Ok(())
}

/// A Docker command name (`push`, `build`, `container`), optionally with a
/// trailing `*` for a family (`container*`).
pub(crate) fn check_command(command: &str) -> Result<(), Rejected> {
    let name = command.strip_suffix('*').unwrap_or(command);
    let ok = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Rejected::from(format!(
            "expected a docker command such as \"push\", or a family such as \"container*\" \
             (`*` only at the end), found {command:?}"
        )))
    }
}

/// `*`, `name[:tag]` or `name@sha256:<64 hex>`, as (name, tag, digest).
/// The name follows Docker's reference grammar: an optional registry
/// (`host[:port]/`, recognised by a `.` or `:` or as `localhost`), then
/// lowercase path components separated by `/`.
pub(crate) fn split_image(image: &str) -> Result<(&str, Option<&str>, Option<&str>), Rejected> {
    if image == "*" {
        return Ok((image, None, None));
    }
    let fail = |why: &str| {
        Err(Rejected::from(format!(
            "{image:?} is not an image reference (name[:tag], name@sha256:<digest>, or \"*\"): {why}"
        )))
    };
    let (name, tag, digest) = match image.split_once('@') {
        Some((name, digest)) => {
            let hex = digest.strip_prefix("sha256:").unwrap_or("");
            if hex.len() != 64
                || !hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return fail("a digest is sha256: and 64 lowercase hex digits");
            }
            (name, None, Some(digest))
        }
        None => {
            let last_slash = image.rfind('/').map_or(0, |i| i + 1);
            match image[last_slash..].rfind(':') {
                Some(i) => (
                    &image[..last_slash + i],
                    Some(&image[last_slash + i + 1..]),
                    None,
                ),
                None => (image, None, None),
            }
        }
    };
    if let Some(tag) = tag {
        let tag_ok = tag == "*"
            || (tag.len() <= 128
                && tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                && tag
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)));
        if !tag_ok {
            return fail("a tag is letters, digits, `_`, `.` and `-` (at most 128), or `*`");
        }
    }
    let mut components: Vec<&str> = name.split('/').collect();
    if components.len() > 1 && (components[0].contains(['.', ':']) || components[0] == "localhost")
    {
        let registry = components.remove(0);
        let (host, port) = match registry.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (registry, None),
        };
        let host_ok = host.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
        let port_ok = port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        if !host_ok || !port_ok {
            return fail("the registry is host[:port]");
        }
    }
    if components.iter().any(|c| !path_component_ok(c)) {
        return fail(
            "a name is lowercase letters and digits, separated by `/`, `.`, `_`, `__` or `-`",
        );
    }
    Ok((name, tag, digest))
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
pub(crate) fn path_component_ok(component: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let Some(first) = component.chars().next() else {
        return false;
    };
    let Some(last) = component.chars().last() else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    // Runs of separators between alphanumerics: `.`, `_`, `__` or any `-`s.
    component
        .split(alnum)
        .filter(|sep| !sep.is_empty())
        .all(|sep| sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-'))
        && component
            .chars()
            .all(|c| alnum(c) || matches!(c, '.' | '_' | '-'))
}
