//! Property tests of the body checks against a differential oracle: a
//! small, separate model of how Go's `encoding/json` picks the key that
//! sets a struct field (exact name first, else the name after Go's case
//! folding; the last such key wins). Whatever case, Unicode fold variants
//! and duplicate keys the generator produces, the canonical body the proxy
//! forwards, read by the oracle, carries eci's runtime, no cgroup parent,
//! no bind of a VM path outside the shareable ones and no volume options
//! but a tmpfs; and a body the oracle reads as asking for a cgroup parent
//! or such a bind is never forwarded.

use std::fmt;

use proptest::prelude::*;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use super::*;

/// A JSON value with every object's keys in order, duplicates kept.
#[derive(Debug, Clone, PartialEq)]
enum Json {
    Object(Vec<(String, Json)>),
    List(Vec<Json>),
    Leaf(serde_json::Value),
}

impl Json {
    fn text(&self) -> String {
        match self {
            Json::Leaf(v) => v.to_string(),
            Json::List(items) => {
                let items: Vec<String> = items.iter().map(Json::text).collect();
                format!("[{}]", items.join(","))
            }
            Json::Object(entries) => {
                let entries: Vec<String> = entries
                    .iter()
                    .map(|(k, v)| format!("{}:{}", serde_json::Value::from(k.as_str()), v.text()))
                    .collect();
                format!("{{{}}}", entries.join(","))
            }
        }
    }

    fn str(&self) -> Option<&str> {
        match self {
            Json::Leaf(serde_json::Value::String(s)) => Some(s),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Json;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("JSON")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, Json>()? {
                    entries.push(entry);
                }
                Ok(Json::Object(entries))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Json>()? {
                    items.push(item);
                }
                Ok(Json::List(items))
            }
            fn visit_unit<E>(self) -> Result<Json, E> {
                Ok(Json::Leaf(serde_json::Value::Null))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Json, E> {
                Ok(Json::Leaf(v.into()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Json, E> {
                Ok(Json::Leaf(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Json, E> {
                Ok(Json::Leaf(v.into()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Json, E> {
                Ok(Json::Leaf(v.into()))
            }
            fn visit_str<E>(self, v: &str) -> Result<Json, E> {
                Ok(Json::Leaf(v.into()))
            }
        }
        d.deserialize_any(V)
    }
}

/// The oracle's fold of one character: ASCII upper case; else Go's
/// `ToUpper(ToLower(r))` with simple (one-character) case mappings.
fn go_fold_char(c: char) -> char {
    if c.is_ascii() {
        return c.to_ascii_uppercase();
    }
    // Go's simple lower case of U+0130 is `i` (Rust's full mapping adds a
    // combining dot).
    let lower = if c == '\u{130}' {
        'i'
    } else {
        single(c.to_lowercase().collect(), c)
    };
    single(lower.to_uppercase().collect(), lower)
}

/// A case mapping that gives one character, else `c` itself.
fn single(mapped: Vec<char>, c: char) -> char {
    match mapped[..] {
        [one] => one,
        _ => c,
    }
}

fn go_fold(s: &str) -> String {
    s.chars().map(go_fold_char).collect()
}

/// The struct field (of `fields`) a key sets, as Go picks it.
fn go_field_of<'f>(key: &str, fields: &[&'f str]) -> Option<&'f str> {
    fields
        .iter()
        .find(|f| **f == key)
        .or_else(|| fields.iter().find(|f| go_fold(f) == go_fold(key)))
        .copied()
}

/// Every value the engine would decode into `field` of a struct with
/// `fields`, in order (the last one wins for a string).
fn go_values<'a>(object: &'a Json, field: &str, fields: &[&str]) -> Vec<&'a Json> {
    match object {
        Json::Object(entries) => entries
            .iter()
            .filter(|(k, _)| go_field_of(k, fields) == Some(field))
            .map(|(_, v)| v)
            .collect(),
        _ => Vec::new(),
    }
}

/// The one value of `field` in a canonical body (it must be given at most
/// once).
fn go_value<'a>(object: &'a Json, field: &str, fields: &[&str]) -> Option<&'a Json> {
    let values = go_values(object, field, fields);
    assert!(
        values.len() <= 1,
        "{field} given {} times in {}",
        values.len(),
        object.text()
    );
    values.into_iter().next()
}

/// The top of a create body: Config's fields, HostConfig, and (the
/// deprecated form the engine still reads) HostConfig's own fields.
const TOP: &[&str] = &[
    "Image",
    "Cmd",
    "HostConfig",
    "NetworkingConfig",
    "Runtime",
    "VolumeDriver",
    "Binds",
];
const HOST: &[&str] = &[
    "Binds",
    "Runtime",
    "CgroupParent",
    "Mounts",
    "Privileged",
    "Memory",
    "VolumeDriver",
];
const MOUNT: &[&str] = &["Type", "Source", "Target", "ReadOnly", "VolumeOptions"];
const VOLUME_OPTIONS: &[&str] = &["NoCopy", "Labels", "DriverConfig"];
const DRIVER: &[&str] = &["Name", "Options"];
const VOLUME: &[&str] = &["Name", "Driver", "DriverOpts", "Labels"];

/// A spelling of a field name the engine reads as that field: any ASCII
/// case, and the non-ASCII letters that fold to ASCII ones.
fn spelling(name: &'static str) -> impl Strategy<Value = String> + Clone {
    proptest::collection::vec(0u8..6, name.len()).prop_map(move |choices| {
        name.chars()
            .zip(choices)
            .map(|(c, choice)| match (c.to_ascii_lowercase(), choice) {
                ('k', 0) => '\u{212A}',
                ('s', 0) => '\u{17F}',
                ('i', 0) => '\u{131}',
                ('i', 1) => '\u{130}',
                (_, 2 | 3) => c.to_ascii_lowercase(),
                (_, 4) => c.to_ascii_uppercase(),
                _ => c,
            })
            .collect()
    })
}

/// No key, one or (less often) two keys spelling `name`, each with a
/// value from `values`.
fn entries(
    name: &'static str,
    values: impl Strategy<Value = Json> + Clone + 'static,
) -> impl Strategy<Value = Vec<(String, Json)>> + Clone {
    let entry = (spelling(name), values);
    prop_oneof![
        3 => Just(Vec::new()),
        6 => proptest::collection::vec(entry.clone(), 1),
        1 => proptest::collection::vec(entry, 2),
    ]
}

fn leaf(v: serde_json::Value) -> Json {
    Json::Leaf(v)
}

fn strings(options: &'static [&'static str]) -> impl Strategy<Value = Json> + Clone {
    prop_oneof![
        4 => proptest::sample::select(options).prop_map(|s| leaf(s.into())),
        1 => Just(leaf(serde_json::Value::Null)),
    ]
}

/// An object of `parts`, shuffled, with a key the engine ignores.
fn object(parts: Vec<BoxedStrategy<Vec<(String, Json)>>>) -> impl Strategy<Value = Json> + Clone {
    (parts, any::<bool>()).prop_map(|(parts, noise)| {
        let mut entries: Vec<(String, Json)> = parts.into_iter().flatten().collect();
        if noise {
            entries.push(("NotAField".into(), leaf(1.into())));
        }
        Json::Object(entries)
    })
}

fn driver_options() -> impl Strategy<Value = Json> + Clone {
    let pairs = proptest::sample::select(
        &[
            ("type", "tmpfs"),
            ("type", "none"),
            ("type", "ext4"),
            ("o", "bind"),
            ("o", "size=64m"),
            ("o", "ro,rbind"),
            ("device", "/etc"),
            ("device", "tmpfs"),
            ("device", "/dev/vda1"),
            ("Type", "none"),
        ][..],
    );
    proptest::collection::vec(pairs, 0..4).prop_map(|pairs| {
        Json::Object(
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_owned(), leaf(v.into())))
                .collect(),
        )
    })
}

fn mount() -> impl Strategy<Value = Json> + Clone {
    let driver = object(vec![
        entries("Name", strings(&["", "local", "sshfs"])).boxed(),
        entries("Options", driver_options()).boxed(),
    ]);
    let volume_options = object(vec![entries("DriverConfig", driver).boxed()]);
    object(vec![
        entries("Type", strings(&["bind", "volume", "tmpfs"])).boxed(),
        entries("Source", strings(&["/etc", "/", "/home/me", "data"])).boxed(),
        entries("Target", strings(&["/x"])).boxed(),
        entries("VolumeOptions", volume_options).boxed(),
    ])
}

fn host_config() -> impl Strategy<Value = Json> + Clone {
    let binds = proptest::collection::vec(
        proptest::sample::select(&["/etc:/x", "/:/host:ro", "/home/me:/x", "data:/x"][..]),
        0..3,
    )
    .prop_map(|binds| Json::List(binds.into_iter().map(|b| leaf(b.into())).collect()));
    let mounts = proptest::collection::vec(mount(), 0..3).prop_map(Json::List);
    object(vec![
        entries("Runtime", strings(&["runc", "eci", ""])).boxed(),
        entries("CgroupParent", strings(&["", "/", "system.slice"])).boxed(),
        entries("Binds", binds).boxed(),
        entries("Mounts", mounts).boxed(),
        entries("Privileged", Just(leaf(true.into()))).boxed(),
    ])
}

fn create_body() -> impl Strategy<Value = Json> {
    object(vec![
        entries("Image", strings(&["busybox"])).boxed(),
        prop_oneof![9 => Just(Vec::new()), 1 => entries("VolumeDriver", strings(&["sshfs"]))]
            .boxed(),
        prop_oneof![9 => Just(Vec::new()), 1 => entries("Runtime", strings(&["runc"]))].boxed(),
        entries(
            "HostConfig",
            prop_oneof![6 => host_config(), 1 => Just(leaf(serde_json::Value::Null))],
        )
        .boxed(),
    ])
}

fn volume_body() -> impl Strategy<Value = Json> {
    object(vec![
        entries("Name", strings(&["v"])).boxed(),
        entries("Driver", strings(&["", "local", "sshfs"])).boxed(),
        entries("DriverOpts", driver_options()).boxed(),
    ])
}

fn shareable() -> Vec<PathBuf> {
    vec![PathBuf::from("/home")]
}

fn below_home(path: &str) -> bool {
    Path::new(path).starts_with("/home")
}

/// A bind source the oracle reads in a `Binds` entry (a VM path).
fn bind_source(bind: &str) -> Option<&str> {
    bind.split_once(':')
        .map(|(source, _)| source)
        .filter(|s| s.starts_with('/'))
}

/// Local driver options the proxy may forward: none, or a tmpfs.
fn assert_tmpfs_or_none(options: Option<&Json>) {
    let Some(Json::Object(options)) = options else {
        return;
    };
    if options.is_empty() {
        return;
    }
    let get = |key: &str| {
        options
            .iter()
            .rfind(|(k, _)| k == key)
            .and_then(|(_, v)| v.str())
    };
    assert_eq!(get("type"), Some("tmpfs"), "{options:?}");
    assert!(matches!(get("device"), None | Some("tmpfs")), "{options:?}");
    assert!(!get("o").unwrap_or("").contains("bind"), "{options:?}");
}

fn parse(bytes: &[u8]) -> Json {
    serde_json::from_slice(bytes).expect("the proxy forwards JSON")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_forwarded_create_carries_ecis_runtime_and_nothing_refused_whatever_the_spelling(
        body in create_body()
    ) {
        let paths = shareable();
        let policy = BodyPolicy { runtime: "eci", shareable_host_paths: &paths };
        let text = body.text();
        let Ok(out) = container_create(text.as_bytes(), policy) else {
            return Ok(());
        };
        let out = parse(&out);
        for field in ["Runtime", "VolumeDriver", "Binds"] {
            prop_assert!(go_value(&out, field, TOP).is_none(), "{} at the top: {}", field, out.text());
        }
        let host = go_value(&out, "HostConfig", TOP).expect("HostConfig");
        let runtime = go_value(host, "Runtime", HOST).and_then(Json::str);
        prop_assert_eq!(runtime, Some("eci"), "{}", out.text());
        let parent = go_value(host, "CgroupParent", HOST).and_then(Json::str);
        prop_assert!(parent.is_none_or(str::is_empty), "{}", out.text());
        if let Some(Json::List(binds)) = go_value(host, "Binds", HOST) {
            for bind in binds.iter().filter_map(Json::str) {
                prop_assert!(bind_source(bind).is_none_or(below_home), "{bind}");
            }
        }
        if let Some(Json::List(mounts)) = go_value(host, "Mounts", HOST) {
            for mount in mounts {
                let kind = go_value(mount, "Type", MOUNT).and_then(Json::str);
                let source = go_value(mount, "Source", MOUNT).and_then(Json::str);
                if kind == Some("bind") {
                    prop_assert!(source.is_some_and(below_home), "{}", mount.text());
                }
                let driver = go_value(mount, "VolumeOptions", MOUNT)
                    .and_then(|o| go_value(o, "DriverConfig", VOLUME_OPTIONS));
                if let Some(driver) = driver {
                    let name = go_value(driver, "Name", DRIVER).and_then(Json::str);
                    prop_assert!(matches!(name, None | Some("" | "local")), "{}", driver.text());
                    assert_tmpfs_or_none(go_value(driver, "Options", DRIVER));
                }
            }
        }
    }

    #[test]
    fn a_create_the_engine_would_read_as_asking_for_a_cgroup_parent_or_a_vm_bind_is_never_forwarded(
        body in create_body()
    ) {
        let paths = shareable();
        let policy = BodyPolicy { runtime: "eci", shareable_host_paths: &paths };
        // What the engine reads, by the oracle: the last key for a field.
        let hosts = go_values(&body, "HostConfig", TOP);
        let asks = hosts.iter().any(|host| {
            let parent = go_values(host, "CgroupParent", HOST)
                .into_iter()
                .any(|p| p.str().is_some_and(|p| !p.is_empty()));
            let bind = go_values(host, "Binds", HOST).into_iter().any(|binds| match binds {
                Json::List(binds) => binds
                    .iter()
                    .filter_map(Json::str)
                    .any(|b| bind_source(b).is_some_and(|s| !below_home(s))),
                _ => false,
            });
            parent || bind
        });
        if asks {
            prop_assert!(container_create(body.text().as_bytes(), policy).is_err(), "{}", body.text());
        }
    }

    #[test]
    fn a_forwarded_volume_create_is_local_and_plain_or_tmpfs_whatever_the_spelling(
        body in volume_body()
    ) {
        let Ok(out) = volume_create(body.text().as_bytes()) else {
            return Ok(());
        };
        let out = parse(&out);
        let driver = go_value(&out, "Driver", VOLUME).and_then(Json::str);
        prop_assert!(matches!(driver, None | Some("" | "local")), "{}", out.text());
        assert_tmpfs_or_none(go_value(&out, "DriverOpts", VOLUME));
    }
}

#[test]
fn the_oracle_folds_like_go() {
    assert_eq!(go_fold("hostconfig"), go_fold("HostConfig"));
    assert_eq!(go_fold("Ho\u{17F}tConfig"), go_fold("HostConfig"));
    assert_eq!(go_fold("\u{212A}ernel"), go_fold("Kernel"));
    assert_eq!(go_fold("Runt\u{130}me"), go_fold("Runtime"));
    assert_eq!(go_fold("Runt\u{131}me"), go_fold("Runtime"));
    assert_ne!(go_fold("Runtimé"), go_fold("Runtime"));
    let body: Json =
        serde_json::from_str(r#"{"runtime":"a","Runtime":"b","RUNTIME":"c"}"#).expect("json");
    let values: Vec<_> = go_values(&body, "Runtime", HOST)
        .into_iter()
        .filter_map(Json::str)
        .collect();
    assert_eq!(values, ["a", "b", "c"]);
}
