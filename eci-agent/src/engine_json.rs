//! JSON objects read the way the Docker Engine reads them, so that the
//! proxy judges what the engine will act on.
//!
//! The engine decodes request bodies with Go's `encoding/json` into
//! structs: a key names a field when it equals the field's name, else when
//! it equals it after case folding (`hostconfig`, `HOSTCONFIG`, and
//! non-ASCII letters that fold to ASCII ones: `K` U+212A KELVIN SIGN to
//! `K`, `ſ` U+017F to `S`, and in Go 1.21 and later `İ` U+0130 and `ı`
//! U+0131 to `I`); unknown keys are ignored; when several keys name one
//! field, each is decoded in turn into it (the later value wins for a
//! string, objects merge into the same struct, `null` keeps a string).
//!
//! [`Object`] keeps an object's keys in order with their values as raw
//! JSON, untouched. The proxy *takes* the fields it judges or sets
//! ([`Object::take`]: every key that folds to the field, so none is left
//! behind for the engine to read), judges them, and *puts* them back under
//! their canonical names; [`Object::to_raw`] re-encodes the object with
//! every other key and value byte for byte as it came. The folding here
//! accepts every letter any Go version folds, so a key some engine would
//! read as a judged field is always taken.
//!
//! Two keys naming one judged field are refused
//! ([`JsonError::Duplicate`]) rather than resolved: the docker CLI never
//! sends them, and Go's rules for them (merging objects into one struct,
//! merging maps, `null` that keeps a string but clears a pointer, lists
//! that replace) are easy to model wrongly, and a wrong model would be a
//! way around the checks. A refusal cannot be wrong that way.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    #[error("{path} is not valid JSON: {source}")]
    Syntax {
        path: String,
        source: serde_json::Error,
    },
    #[error("{path} is not a JSON object")]
    NotAnObject { path: String },
    #[error("{path} is not a JSON list")]
    NotAList { path: String },
    #[error("{path} is not a string")]
    NotAString { path: String },
    #[error(
        "{path} is given more than once ({keys}): the engine would read all of them (keys match case-insensitively), so the proxy refuses to guess; send it once"
    )]
    Duplicate { path: String, keys: String },
}

/// Does `key` name the struct field `field` (ASCII) as Go's decoder matches
/// keys: exactly, or after folding? Accepts every fold of every Go version
/// (see the module's doc).
pub fn folds_to(key: &str, field: &str) -> bool {
    let mut key = key.chars();
    for wanted in field.chars() {
        let Some(c) = key.next() else {
            return false;
        };
        let folded = match c {
            c if c.is_ascii() => c.to_ascii_uppercase(),
            '\u{212A}' => 'K',
            '\u{017F}' => 'S',
            '\u{0130}' | '\u{0131}' => 'I',
            _ => return false,
        };
        if folded != wanted.to_ascii_uppercase() {
            return false;
        }
    }
    key.next().is_none()
}

/// A JSON object: its keys in order (duplicates kept), values as raw JSON.
#[derive(Debug, Default)]
pub struct Object {
    entries: Vec<(String, Box<RawValue>)>,
}

impl Object {
    /// A whole request body: one JSON object (`None` for `null`), nothing
    /// after it.
    pub fn parse_body(body: &[u8]) -> Result<Option<Object>, JsonError> {
        let raw: Box<RawValue> =
            serde_json::from_slice(body).map_err(|source| JsonError::Syntax {
                path: "the body".into(),
                source,
            })?;
        Self::parse(&raw, "the body")
    }

    /// The object `raw` holds (`None` for `null`); `path` names it in
    /// errors.
    pub fn parse(raw: &RawValue, path: &str) -> Result<Option<Object>, JsonError> {
        let text = raw.get().trim_start();
        if text.starts_with("null") {
            return Ok(None);
        }
        if !text.starts_with('{') {
            return Err(JsonError::NotAnObject { path: path.into() });
        }
        let entries: Entries = serde_json::from_str(text).map_err(|source| JsonError::Syntax {
            path: path.into(),
            source,
        })?;
        Ok(Some(Object { entries: entries.0 }))
    }

    /// Remove every key that names the struct field `field` (as Go
    /// matches keys) and return its value; `path` names the field in errors.
    pub fn take(&mut self, field: &str, path: &str) -> Result<Option<Box<RawValue>>, JsonError> {
        self.take_where(|key| folds_to(key, field), path)
    }

    fn take_where(
        &mut self,
        names: impl Fn(&str) -> bool,
        path: &str,
    ) -> Result<Option<Box<RawValue>>, JsonError> {
        let (taken, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.entries)
            .into_iter()
            .partition(|(key, _)| names(key));
        self.entries = kept;
        let mut taken = taken.into_iter();
        let first = taken.next();
        let rest: Vec<String> = taken.map(|(key, _)| format!("{key:?}")).collect();
        match first {
            Some((key, _)) if !rest.is_empty() => Err(JsonError::Duplicate {
                path: path.into(),
                keys: std::iter::once(format!("{key:?}"))
                    .chain(rest)
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
            first => Ok(first.map(|(_, value)| value)),
        }
    }

    /// Add `field` with `value` (after removing it: see [`Object::take`]).
    pub fn put(&mut self, field: &str, value: Box<RawValue>) {
        self.entries.push((field.to_owned(), value));
    }

    /// No keys at all?
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The keys, in order.
    #[cfg(test)]
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(key, _)| key.as_str())
    }

    /// The entries of an object decoded into a map (keys match exactly),
    /// each key once: a key given twice is refused.
    pub fn map_entries(&self, path: &str) -> Result<Vec<(&str, &RawValue)>, JsonError> {
        let mut out: Vec<(&str, &RawValue)> = Vec::with_capacity(self.entries.len());
        for (key, value) in &self.entries {
            if out.iter().any(|(k, _)| k == key) {
                return Err(JsonError::Duplicate {
                    path: format!("{path}[{key:?}]"),
                    keys: format!("{key:?}, {key:?}"),
                });
            }
            out.push((key, value));
        }
        Ok(out)
    }

    /// The object re-encoded: every key and value as it came, except those
    /// taken and put back.
    pub fn to_raw(&self) -> Result<Box<RawValue>, JsonError> {
        let mut text = String::from("{");
        for (i, (key, value)) in self.entries.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            text.push_str(&string_literal(key));
            text.push(':');
            text.push_str(value.get());
        }
        text.push('}');
        raw(text)
    }
}

/// `text` (built from valid JSON parts) as a raw value.
fn raw(text: String) -> Result<Box<RawValue>, JsonError> {
    RawValue::from_string(text).map_err(|source| JsonError::Syntax {
        path: "the re-encoded body".into(),
        source,
    })
}

/// A JSON string literal for `s`.
fn string_literal(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// A raw JSON string.
pub fn string_value(s: &str) -> Result<Box<RawValue>, JsonError> {
    raw(string_literal(s))
}

/// The string `raw` holds; `None` for `null` (which leaves a Go string as
/// it was: empty, in a fresh struct).
pub fn string(raw: &RawValue, path: &str) -> Result<Option<String>, JsonError> {
    serde_json::from_str(raw.get()).map_err(|_| JsonError::NotAString { path: path.into() })
}

/// The list `raw` holds, its items raw; `None` for `null`.
pub fn list(raw: &RawValue, path: &str) -> Result<Option<Vec<Box<RawValue>>>, JsonError> {
    serde_json::from_str(raw.get()).map_err(|_| JsonError::NotAList { path: path.into() })
}

/// A list of raw values, encoded.
pub fn list_value(items: &[Box<RawValue>]) -> Result<Box<RawValue>, JsonError> {
    let items: Vec<&str> = items.iter().map(|item| item.get()).collect();
    raw(format!("[{}]", items.join(",")))
}

/// An object's entries in order, duplicates kept.
struct Entries(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor;
        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, Box<RawValue>>()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(EntriesVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(text: &str) -> Object {
        Object::parse_body(text.as_bytes())
            .expect("parse")
            .expect("object")
    }

    #[test]
    fn keys_fold_like_gos_decoder() {
        for key in [
            "Runtime",
            "runtime",
            "RUNTIME",
            "rUnTiMe",
            "Runt\u{0131}me",
            "RUNT\u{0130}ME",
        ] {
            assert!(folds_to(key, "Runtime"), "{key}");
        }
        assert!(folds_to("hostconfig", "HostConfig"));
        assert!(folds_to("Ho\u{017F}tConfig", "HostConfig"));
        assert!(folds_to("\u{212A}ernelMemory", "KernelMemory"));
        for key in ["Runtim", "Runtimes", "Run_time", "Rüntime", ""] {
            assert!(!folds_to(key, "Runtime"), "{key}");
        }
    }

    #[test]
    fn taking_a_field_takes_every_spelling_and_refuses_two() {
        let mut o = object(r#"{"a":1,"runtime":"runc","b":[1, 2]}"#);
        let taken = o.take("Runtime", "HostConfig.Runtime").expect("take");
        assert_eq!(
            taken.map(|r| r.get().to_owned()).as_deref(),
            Some(r#""runc""#)
        );
        o.put("Runtime", string_value("eci").expect("string"));
        assert_eq!(
            o.to_raw().expect("encode").get(),
            r#"{"a":1,"b":[1, 2],"Runtime":"eci"}"#
        );

        let mut o = object(r#"{"Runtime":"eci","RUNTIME":"runc"}"#);
        let err = o
            .take("Runtime", "HostConfig.Runtime")
            .expect_err("duplicate");
        assert!(matches!(err, JsonError::Duplicate { .. }), "{err}");
        let mut o = object(r#"{"Runtime":"eci","Runtime":"runc"}"#);
        assert!(o.take("Runtime", "HostConfig.Runtime").is_err());
    }

    #[test]
    fn escaped_keys_are_read_decoded() {
        let mut o = object(r#"{"Runtim\u0065":"runc"}"#);
        assert!(o.take("Runtime", "Runtime").expect("take").is_some());
        assert_eq!(o.keys().count(), 0);
    }

    #[test]
    fn bodies_that_are_not_one_object_are_refused() {
        for bad in [&b"[]"[..], b"\"x\"", b"{", b"{} {}", b"{\"a\":1,}", b"\xff"] {
            assert!(Object::parse_body(bad).is_err(), "{bad:?}");
        }
        assert!(Object::parse_body(b"null").expect("null").is_none());
    }
}
