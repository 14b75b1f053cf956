//! `cargo xtask bench --compare SAVED`: the figures of this run against a
//! saved one, so a change in review shows what it did to them. `SAVED` is a
//! copy of `build/bench/` (or one of its files); every number found at the
//! same place in both JSON documents is shown with its ratio, new / old.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// One number at the same place in both runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// `file: key.key[index]`.
    pub place: String,
    pub old: f64,
    pub new: f64,
}

impl Change {
    /// new / old; `None` when old is 0.
    pub fn ratio(&self) -> Option<f64> {
        (self.old != 0.0).then(|| self.new / self.old)
    }
}

/// Every number of `old` that `new` has at the same place (objects in key
/// order, arrays in theirs).
pub fn changes(file: &str, old: &Value, new: &Value) -> Vec<Change> {
    let mut out = Vec::new();
    walk(file.to_owned(), old, new, &mut out);
    out
}

fn walk(place: String, old: &Value, new: &Value, out: &mut Vec<Change>) {
    match (old, new) {
        (Value::Number(a), Value::Number(b)) => {
            if let (Some(old), Some(new)) = (a.as_f64(), b.as_f64()) {
                out.push(Change { place, old, new });
            }
        }
        (Value::Object(a), Value::Object(b)) => {
            let sep = if place.ends_with(':') { " " } else { "." };
            for (key, value) in a {
                if let Some(other) = b.get(key) {
                    walk(format!("{place}{sep}{key}"), value, other, out);
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (index, value) in a.iter().enumerate() {
                // Entries that name themselves pair by name, the rest by place.
                let name = label(value);
                let other = match name {
                    Some(name) => b.iter().find(|o| label(o) == Some(name)),
                    None => b.get(index),
                };
                if let Some(other) = other {
                    let at = name.map_or_else(|| index.to_string(), str::to_owned);
                    walk(format!("{place}[{at}]"), value, other, out);
                }
            }
        }
        _ => {}
    }
}

/// What an array entry calls itself (`benchmark`, `name` or `variant`).
fn label(value: &Value) -> Option<&str> {
    ["benchmark", "name", "variant"]
        .iter()
        .find_map(|key| value.get(key).and_then(Value::as_str))
}

/// The JSON files to compare: `saved` itself, or each `*.json` in it.
fn files(saved: &Path) -> Result<Vec<PathBuf>> {
    if saved.is_file() {
        return Ok(vec![saved.to_owned()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(saved)
        .with_context(|| format!("reading the saved run {}", saved.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    Ok(files)
}

fn read(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

/// Print every change of this run (`current`, build/bench) against `saved`.
pub fn compare(saved: &Path, current: &Path) -> Result<()> {
    let mut shown = 0;
    for old_path in files(saved)? {
        let Some(name) = old_path.file_name() else {
            continue;
        };
        let new_path = current.join(name);
        if !new_path.exists() {
            println!(
                "bench compare: {} has no counterpart in this run",
                name.to_string_lossy()
            );
            continue;
        }
        let file = format!("{}:", name.to_string_lossy().trim_end_matches(".json"));
        for change in changes(&file, &read(&old_path)?, &read(&new_path)?) {
            let ratio = change
                .ratio()
                .map(|r| format!("{r:.2}×"))
                .unwrap_or_else(|| "-".into());
            println!(
                "{:<70} {:>14.3} → {:>14.3}  {ratio}",
                change.place, change.old, change.new
            );
            shown += 1;
        }
    }
    if shown == 0 {
        bail!(
            "nothing to compare: {} and {} share no figure",
            saved.display(),
            current.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_at_the_same_place_are_paired_and_the_rest_skipped() {
        let old = serde_json::json!({
            "ratio": 1.5, "name": "x", "runs": [10, 20], "only_old": 3,
            "views": {"eci": {"cpu": 2.0}},
            "startup": [{"benchmark": "a", "ms": 4}, {"benchmark": "b", "ms": 8}]
        });
        let new = serde_json::json!({
            "ratio": 1.2, "name": "y", "runs": [11], "views": {"eci": {"cpu": 0.0}},
            "startup": [{"benchmark": "b", "ms": 6}]
        });
        let got = changes("startup:", &old, &new);
        let places: Vec<&str> = got.iter().map(|c| c.place.as_str()).collect();
        assert_eq!(
            places,
            [
                "startup: ratio",
                "startup: runs[0]",
                "startup: startup[b].ms",
                "startup: views.eci.cpu"
            ]
        );
        assert_eq!(got[0].ratio().map(|r| (r * 100.0).round()), Some(80.0));
        assert_eq!(got[2].ratio(), Some(0.75));
        assert_eq!(got[3].ratio(), Some(0.0));
        let zero = Change {
            place: String::new(),
            old: 0.0,
            new: 1.0,
        };
        assert_eq!(zero.ratio(), None);
    }

    #[test]
    fn a_saved_directory_is_compared_file_by_file() {
        let tmp = std::env::temp_dir().join(format!("eci-bench-compare-{}", std::process::id()));
        let (saved, current) = (tmp.join("saved"), tmp.join("current"));
        std::fs::create_dir_all(&saved).unwrap();
        std::fs::create_dir_all(&current).unwrap();
        std::fs::write(saved.join("startup.json"), r#"{"ratio": 1.4}"#).unwrap();
        std::fs::write(saved.join("notes.txt"), "not a figure").unwrap();
        assert!(compare(&saved, &current).is_err(), "nothing shared");
        std::fs::write(current.join("startup.json"), r#"{"ratio": 1.1}"#).unwrap();
        compare(&saved, &current).unwrap();
        compare(&saved.join("startup.json"), &current).unwrap();
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
