//! Which docker command a Docker Engine API call is, and whether the
//! policy's `dockerSocketMount.commandList` lets it through. Pure functions:
//! the proxy (`proxy.rs`) asks, this module answers.
//!
//! A call is named by the `docker` CLI commands that make it (`POST
//! /images/{name}/push` is `push`; `POST /containers/create` is `create`
//! and `run`) and by its family (`image`, `container`, `volume`, `network`,
//! `build`, `system`, `plugin`, `swarm`). A list entry matches a call when
//! it is one of its names, or ends in `*` and its stem begins the family or
//! a name (`container*`, `image*`). `/_ping` is always allowed: every
//! client sends it first and it reveals nothing.
//!
//! Some calls are refused whatever the list says (`Verdict::Refuse`):
//! plugin endpoints (`/plugins`, `/plugins/...`: a plugin runs as the engine
//! chooses, with plain runc, outside every protected cgroup, so installing
//! or changing one is VM administration), and targets that do not decode.
//! The engine routes case-sensitively (`/PLUGINS` is a 404 there); the
//! plugin family is matched without regard to ASCII case all the same.

use crate::policy::{CommandList, CommandListType};

/// A Docker API call as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiCall {
    /// The CLI commands that make this call, most specific first.
    pub names: Vec<&'static str>,
    pub family: &'static str,
}

/// The verdict for one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Blocked by `commandList`, with the rule that blocked it (for the
    /// message).
    Deny(String),
    /// Refused to every trusted image, whatever `commandList` says.
    Refuse(Refusal),
}

/// Why a call is refused whatever `commandList` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A plugin endpoint: plugins are VM administration.
    Plugin,
    /// A target that does not decode (bad `%xx`, NUL, `..` above the root).
    UndecodableTarget,
}

impl Refusal {
    /// The rule, for the message and the audit line.
    pub fn rule(self) -> &'static str {
        match self {
            Refusal::Plugin => {
                "plugin endpoints (/plugins...) are refused to every container whatever commandList says: a plugin runs with plain runc outside eci's protection, so plugins are VM administration"
            }
            Refusal::UndecodableTarget => {
                "the request path does not decode (bad %-escape, NUL, or `..` above the root)"
            }
        }
    }

    /// What to do instead.
    pub fn fix(self) -> &'static str {
        match self {
            Refusal::Plugin => {
                "an administrator installs and manages plugins on the VM itself (docker plugin ... as root there), not from a container"
            }
            Refusal::UndecodableTarget => "send the path the docker CLI sends",
        }
    }
}

/// Decode `%xx` escapes (the engine routes on the decoded path) and
/// resolve `.`/`..`/empty segments. `None` for a path that is not valid
/// UTF-8 after decoding, holds a NUL, or climbs above the root: such a call
/// is refused rather than guessed at.
pub fn canonical_segments(target: &str) -> Option<Vec<String>> {
    // Absolute-form targets (`http://host/path`) carry the path after the authority.
    let path = match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => target,
    };
    let path = path.split(['?', '#']).next().unwrap_or("");
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            decoded.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    let text = String::from_utf8(decoded).ok()?;
    if text.contains('\0') {
        return None;
    }
    let mut segments: Vec<String> = Vec::new();
    for segment in text.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop()?;
            }
            s => segments.push(s.to_owned()),
        }
    }
    Some(segments)
}

/// `v1.41` (the engine's `/v{version:[0-9.]+}`; `V` too, to be safe).
fn is_version(segment: &str) -> bool {
    segment
        .strip_prefix(['v', 'V'])
        .is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
}

/// The canonical segments of a target without its API version prefix.
fn api_segments(target: &str) -> Option<Vec<String>> {
    let mut segments = canonical_segments(target)?;
    if segments.first().is_some_and(|s| is_version(s)) {
        segments.remove(0);
    }
    Some(segments)
}

/// The family of plugin endpoints, refused whatever the list says.
const PLUGIN: &str = "plugin";
/// The family of targets that do not decode, refused whatever the list says.
const UNDECODABLE: &str = "undecodable";

/// Classify a call; `None` for `/_ping` (always allowed).
pub fn classify(method: &str, target: &str) -> Option<ApiCall> {
    let Some(segments) = api_segments(target) else {
        return Some(ApiCall {
            names: vec!["unknown"],
            family: UNDECODABLE,
        });
    };
    let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = method.to_ascii_uppercase();
    let call = |names: Vec<&'static str>, family: &'static str| Some(ApiCall { names, family });
    match (method.as_str(), seg.as_slice()) {
        (_, ["_ping"]) => None,
        (_, ["version"]) => call(vec!["version"], "system"),
        (_, ["info"]) => call(vec!["info"], "system"),
        (_, ["events"]) => call(vec!["events"], "system"),
        (_, ["auth"]) => call(vec!["login"], "system"),
        (_, ["system", "df"]) => call(vec!["df"], "system"),
        (_, ["commit"]) => call(vec!["commit"], "container"),
        (_, ["build" | "session" | "grpc", ..]) => call(vec!["build"], "build"),
        (_, ["containers", "json"]) => call(vec!["ps"], "container"),
        (_, ["containers", "create"]) => call(vec!["create", "run"], "container"),
        (_, ["containers", "prune"]) => call(vec!["prune"], "container"),
        ("DELETE", ["containers", _]) => call(vec!["rm"], "container"),
        (_, ["containers", _, action, ..]) => call(container_action(action), "container"),
        (_, ["exec", ..]) => call(vec!["exec"], "container"),
        (_, ["images", "json"]) => call(vec!["images"], "image"),
        (_, ["images", "create"]) => call(vec!["pull", "import"], "image"),
        (_, ["images", "load"]) => call(vec!["load"], "image"),
        (_, ["images", "search"]) => call(vec!["search"], "image"),
        (_, ["images", "prune"]) => call(vec!["prune"], "image"),
        (_, ["images", "get"]) => call(vec!["save"], "image"),
        ("DELETE", ["images", ..]) => call(vec!["rmi"], "image"),
        (_, ["images", .., action]) => call(image_action(action), "image"),
        (_, ["distribution", ..]) => call(vec!["pull"], "image"),
        (_, ["volumes", ..]) => call(vec!["volume"], "volume"),
        (_, ["networks", ..]) => call(vec!["network"], "network"),
        (_, [first, ..]) if first.eq_ignore_ascii_case("plugins") => call(vec!["plugin"], PLUGIN),
        (
            _,
            [
                "swarm" | "nodes" | "services" | "tasks" | "secrets" | "configs",
                ..,
            ],
        ) => call(vec!["swarm"], "swarm"),
        _ => call(vec!["unknown"], "unknown"),
    }
}

fn container_action(action: &str) -> Vec<&'static str> {
    match action {
        "start" => vec!["start", "run"],
        "attach" => vec!["attach", "run", "start"],
        "wait" => vec!["wait", "run"],
        "resize" => vec!["attach", "run", "start", "exec"],
        "json" => vec!["inspect"],
        "changes" => vec!["diff"],
        "archive" => vec!["cp"],
        "exec" => vec!["exec"],
        "stop" => vec!["stop"],
        "restart" => vec!["restart"],
        "kill" => vec!["kill"],
        "pause" => vec!["pause"],
        "unpause" => vec!["unpause"],
        "logs" => vec!["logs"],
        "top" => vec!["top"],
        "stats" => vec!["stats"],
        "rename" => vec!["rename"],
        "update" => vec!["update"],
        "export" => vec!["export"],
        _ => vec!["unknown"],
    }
}

fn image_action(action: &str) -> Vec<&'static str> {
    match action {
        "push" => vec!["push"],
        "tag" => vec!["tag"],
        "json" => vec!["inspect"],
        "history" => vec!["history"],
        "get" => vec!["save"],
        _ => vec!["unknown"],
    }
}

/// A call whose body the proxy judges (`docker_body`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JudgedBody {
    /// `POST /containers/create`.
    ContainerCreate,
    /// `POST /volumes/create`.
    VolumeCreate,
    /// `POST /containers/{id}/start`: before API 1.24 its body was a
    /// HostConfig that replaced the container's (runtime, binds...).
    ContainerStart,
}

/// Is this a call whose body the proxy judges?
pub fn judged_body(method: &str, target: &str) -> Option<JudgedBody> {
    if !method.eq_ignore_ascii_case("POST") {
        return None;
    }
    let segments = api_segments(target)?;
    match segments.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["containers", "create"] => Some(JudgedBody::ContainerCreate),
        ["volumes", "create"] => Some(JudgedBody::VolumeCreate),
        // The engine's route takes any name, slashes included.
        ["containers", _, .., "start"] => Some(JudgedBody::ContainerStart),
        _ => None,
    }
}

/// Does a list entry name this call?
fn matches(entry: &str, call: &ApiCall) -> bool {
    match entry.strip_suffix('*') {
        Some(stem) => {
            call.family.starts_with(stem) || call.names.iter().any(|n| n.starts_with(stem))
        }
        None => call.names.contains(&entry),
    }
}

/// The policy's verdict on a call (`None` call: `/_ping`, always allowed).
pub fn judge(list: &CommandList, call: Option<&ApiCall>) -> Verdict {
    let Some(call) = call else {
        return Verdict::Allow;
    };
    match call.family {
        PLUGIN => return Verdict::Refuse(Refusal::Plugin),
        UNDECODABLE => return Verdict::Refuse(Refusal::UndecodableTarget),
        _ => {}
    }
    let hit = list.commands.iter().find(|c| matches(c, call));
    match (list.kind, hit) {
        (CommandListType::Deny, Some(entry)) => Verdict::Deny(format!(
            "{entry:?} is on the deny list (commandList type \"deny\")"
        )),
        (CommandListType::Deny, None) => Verdict::Allow,
        (CommandListType::Allow, Some(_)) => Verdict::Allow,
        (CommandListType::Allow, None) => Verdict::Deny(format!(
            "{:?} is not on the allow list (commandList type \"allow\")",
            call.names.first().copied().unwrap_or("unknown")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(method: &str, target: &str) -> Vec<&'static str> {
        classify(method, target)
            .map(|c| c.names)
            .unwrap_or_default()
    }

    fn list(kind: CommandListType, items: &[&str]) -> CommandList {
        CommandList {
            kind,
            commands: items.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn calls_are_named_by_the_cli_commands_that_make_them() {
        assert_eq!(
            names("POST", "/v1.41/images/myimage/push?tag=latest"),
            ["push"]
        );
        assert_eq!(names("POST", "/v1.41/images/reg.io/a/b/push"), ["push"]);
        assert_eq!(names("POST", "/build?t=x"), ["build"]);
        assert_eq!(names("DELETE", "/v1.43/containers/abc?force=1"), ["rm"]);
        assert_eq!(names("POST", "/v1.41/containers/create"), ["create", "run"]);
        assert_eq!(names("GET", "/v1.41/containers/json"), ["ps"]);
        assert_eq!(names("DELETE", "/v1.41/images/busybox"), ["rmi"]);
        assert_eq!(names("POST", "/v1.41/exec/123/start"), ["exec"]);
        assert_eq!(names("GET", "/v1.41/volumes"), ["volume"]);
        assert!(classify("HEAD", "/_ping").is_none());
        assert!(classify("GET", "/v1.41/_ping").is_none());
    }

    #[test]
    fn encoded_and_dotted_paths_are_classified_as_the_engine_routes_them() {
        assert_eq!(names("POST", "/v1.41/images/x/pu%73h"), ["push"]);
        assert_eq!(
            names("POST", "/v1.41/containers/../images/x/./push"),
            ["push"]
        );
        assert_eq!(names("POST", "//v1.41//images/x/push"), ["push"]);
        assert_eq!(names("POST", "http://docker/v1.41/images/x/push"), ["push"]);
        // Undecodable: refused whatever the list says.
        let deny_nothing = list(CommandListType::Deny, &[]);
        for target in ["/../../x", "/v1.41/images/%zz/push", "/v1.41/%00/push"] {
            assert_eq!(
                judge(&deny_nothing, classify("GET", target).as_ref()),
                Verdict::Refuse(Refusal::UndecodableTarget),
                "{target}"
            );
        }
    }

    #[test]
    fn plugin_endpoints_are_refused_whatever_the_command_list_says() {
        let lists = [
            list(CommandListType::Deny, &[]),
            list(CommandListType::Allow, &["plugin", "plugin*", "*"]),
        ];
        for (method, target) in [
            ("GET", "/plugins"),
            ("GET", "/v1.41/plugins"),
            ("GET", "/v1.41/plugins/"),
            ("GET", "/v1.41/plugins/privileges?remote=x"),
            ("POST", "/v1.41/plugins/pull?remote=vieux/sshfs"),
            ("POST", "/v1.41/plugins/create?name=x"),
            ("POST", "/v1.41/plugins/vieux/sshfs:latest/enable"),
            ("POST", "/v1.41/plugins/x/disable"),
            ("POST", "/v1.41/plugins/x/set"),
            ("POST", "/v1.41/plugins/x/upgrade"),
            ("POST", "/v1.41/plugins/x/push"),
            ("DELETE", "/v1.41/plugins/x"),
            ("GET", "/v1.41/plugins/x/json"),
            ("POST", "/v1.41/%70lugins/x/enable"),
            ("POST", "/v1.41/plugins%2Fx%2Fenable"),
            ("POST", "/v1.41/images/../plugins/x/enable"),
            ("POST", "//v1.41/./plugins//x/enable"),
            ("POST", "/V1.41/PLUGINS/x/enable"),
            ("POST", "/v1.41/Plugins/pull"),
            ("POST", "http://docker/v1.41/plugins/pull"),
        ] {
            for commands in &lists {
                assert_eq!(
                    judge(commands, classify(method, target).as_ref()),
                    Verdict::Refuse(Refusal::Plugin),
                    "{method} {target}"
                );
            }
        }
        // Not plugin endpoints: a container or an image named "plugins".
        let anything = list(CommandListType::Deny, &[]);
        assert_eq!(
            judge(
                &anything,
                classify("GET", "/v1.41/containers/plugins/json").as_ref()
            ),
            Verdict::Allow
        );
    }

    #[test]
    fn deny_lists_block_the_listed_commands_and_families() {
        let deny = list(CommandListType::Deny, &["push", "container*"]);
        let verdict = |m, t| judge(&deny, classify(m, t).as_ref());
        assert!(matches!(
            verdict("POST", "/v1.41/images/a/push"),
            Verdict::Deny(_)
        ));
        assert!(matches!(
            verdict("DELETE", "/v1.41/containers/a"),
            Verdict::Deny(_)
        ));
        assert!(matches!(
            verdict("POST", "/v1.41/exec/a/start"),
            Verdict::Deny(_)
        ));
        assert_eq!(verdict("GET", "/v1.41/images/json"), Verdict::Allow);
        assert_eq!(verdict("GET", "/v1.41/version"), Verdict::Allow);
        assert_eq!(verdict("HEAD", "/_ping"), Verdict::Allow);
    }

    #[test]
    fn allow_lists_pass_only_the_listed_and_always_ping() {
        let allow = list(CommandListType::Allow, &["ps", "image*", "version"]);
        let verdict = |m, t| judge(&allow, classify(m, t).as_ref());
        assert_eq!(verdict("GET", "/v1.41/containers/json"), Verdict::Allow);
        assert_eq!(verdict("POST", "/v1.41/images/a/push"), Verdict::Allow);
        assert_eq!(verdict("GET", "/_ping"), Verdict::Allow);
        assert!(matches!(
            verdict("POST", "/v1.41/containers/create"),
            Verdict::Deny(_)
        ));
        assert!(matches!(verdict("GET", "/v1.41/nothing"), Verdict::Deny(_)));
    }

    #[test]
    fn create_and_start_bodies_are_judged() {
        assert_eq!(
            judged_body("POST", "/v1.41/containers/create?name=x"),
            Some(JudgedBody::ContainerCreate)
        );
        assert_eq!(
            judged_body("POST", "/v1.41/volumes/%63reate"),
            Some(JudgedBody::VolumeCreate)
        );
        for target in ["/v1.23/containers/abc/start", "/containers/a/b/start"] {
            assert_eq!(
                judged_body("POST", target),
                Some(JudgedBody::ContainerStart),
                "{target}"
            );
        }
        assert_eq!(judged_body("GET", "/v1.41/containers/create"), None);
        assert_eq!(judged_body("POST", "/v1.41/containers/json"), None);
    }

    #[test]
    fn run_is_denied_at_create_and_start() {
        let deny = list(CommandListType::Deny, &["run"]);
        for (m, t) in [
            ("POST", "/v1.41/containers/create"),
            ("POST", "/v1.41/containers/x/start"),
        ] {
            assert!(
                matches!(judge(&deny, classify(m, t).as_ref()), Verdict::Deny(_)),
                "{m} {t}"
            );
        }
        assert_eq!(
            judge(&deny, classify("GET", "/v1.41/containers/json").as_ref()),
            Verdict::Allow
        );
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// `segments` spelled as a client may spell them and the engine routes
    /// the same: any byte percent-encoded (either hex case), runs of `/`,
    /// `.` and `x/..` segments, an optional absolute form and query.
    fn spelled(segments: Vec<String>, choices: Vec<u8>, absolute: bool, query: bool) -> String {
        let mut choices = choices.into_iter().cycle();
        let mut next = move || choices.next().unwrap_or(0);
        let mut out = String::new();
        if absolute {
            out.push_str("http://docker");
        }
        for segment in segments {
            out.push('/');
            match next() % 8 {
                0 => out.push('/'),
                1 => out.push_str("./"),
                2 => out.push_str("junk/../"),
                _ => {}
            }
            for byte in segment.bytes() {
                match next() % 5 {
                    0 => out.push_str(&format!("%{byte:02X}")),
                    1 => out.push_str(&format!("%{byte:02x}")),
                    _ => out.push(char::from(byte)),
                }
            }
        }
        if query {
            out.push_str("?name=x&remote=y");
        }
        out
    }

    fn version() -> impl Strategy<Value = Option<String>> {
        proptest::option::of(
            proptest::sample::select(&["v1.41", "v1.24", "v1.47", "v1"][..])
                .prop_map(str::to_owned),
        )
    }

    const NAMES: &[&[&str]] = &[&["sshfs"], &["vieux", "sshfs:latest"], &["x"]];

    /// A plugin endpoint the engine routes, with `plugins` in any ASCII case.
    fn plugin_call() -> impl Strategy<Value = (&'static str, Vec<String>)> {
        let name = proptest::sample::select(NAMES);
        let endpoint = prop_oneof![
            Just(("GET", vec![])),
            Just(("GET", vec!["privileges"])),
            Just(("POST", vec!["pull"])),
            Just(("POST", vec!["create"])),
            name.clone().prop_flat_map(|name| {
                proptest::sample::select(
                    &[
                        ("POST", "enable"),
                        ("POST", "disable"),
                        ("POST", "set"),
                        ("POST", "upgrade"),
                        ("POST", "push"),
                        ("GET", "json"),
                    ][..],
                )
                .prop_map(move |(method, action)| {
                    let mut path: Vec<&str> = name.to_vec();
                    path.push(action);
                    (method, path)
                })
            }),
            name.prop_map(|name| ("DELETE", name.to_vec())),
        ];
        let case = proptest::collection::vec(any::<bool>(), 7);
        (version(), case, endpoint).prop_map(|(version, case, (method, rest))| {
            let plugins: String = "plugins"
                .chars()
                .zip(case)
                .map(|(c, upper)| if upper { c.to_ascii_uppercase() } else { c })
                .collect();
            let segments = version
                .into_iter()
                .chain(std::iter::once(plugins))
                .chain(rest.into_iter().map(str::to_owned))
                .collect();
            (method, segments)
        })
    }

    fn any_list() -> impl Strategy<Value = CommandList> {
        let kind = prop_oneof![Just(CommandListType::Deny), Just(CommandListType::Allow)];
        let commands = proptest::collection::vec(
            proptest::sample::select(&["plugin", "plugin*", "*", "push", "container*"][..]),
            0..3,
        );
        (kind, commands).prop_map(|(kind, commands)| CommandList {
            kind,
            commands: commands.into_iter().map(str::to_owned).collect(),
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn every_spelling_of_a_plugin_endpoint_is_refused_whatever_the_list(
            (method, segments) in plugin_call(),
            choices in proptest::collection::vec(any::<u8>(), 1..64),
            absolute in any::<bool>(),
            query in any::<bool>(),
            commands in any_list(),
        ) {
            let target = spelled(segments, choices, absolute, query);
            prop_assert_eq!(
                judge(&commands, classify(method, &target).as_ref()),
                Verdict::Refuse(Refusal::Plugin),
                "{} {}", method, target
            );
        }

        #[test]
        fn every_spelling_of_a_denied_command_is_denied(
            version in version(),
            image in proptest::sample::select(&["busybox", "reg.io/a/b", "x"][..]),
            choices in proptest::collection::vec(any::<u8>(), 1..64),
            absolute in any::<bool>(),
            query in any::<bool>(),
        ) {
            let deny = CommandList {
                kind: CommandListType::Deny,
                commands: vec!["push".into(), "create".into()],
            };
            let push: Vec<String> = version
                .iter()
                .cloned()
                .chain(["images".to_owned()])
                .chain(image.split('/').map(str::to_owned))
                .chain(["push".to_owned()])
                .collect();
            let create: Vec<String> = version
                .into_iter()
                .chain(["containers".to_owned(), "create".to_owned()])
                .collect();
            for segments in [push, create] {
                let target = spelled(segments, choices.clone(), absolute, query);
                prop_assert!(
                    matches!(judge(&deny, classify("POST", &target).as_ref()), Verdict::Deny(_)),
                    "{}", target
                );
            }
        }
    }
}
