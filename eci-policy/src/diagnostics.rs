//! Where a policy file is wrong: the key path, the line and column, and
//! serde's complaint in words a person editing the file understands.

use std::fmt;

/// What is wrong with a policy file, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub file: String,
    /// 1-based; `None` when it could not be found.
    pub line: Option<usize>,
    /// 1-based, in characters.
    pub column: Option<usize>,
    /// The key path, e.g. `eci.protectedCgroupParents[1]`; `None` for the
    /// document as a whole.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for Invalid {
    /// `FILE: line L, column C: KEY: MESSAGE`, leaving out what is unknown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ": line {line}")?;
            if let Some(column) = self.column {
                write!(f, ", column {column}")?;
            }
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

fn key_path(path: &[Seg]) -> Option<String> {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) if out.is_empty() => out.push_str(k),
            Seg::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    (!out.is_empty()).then_some(out)
}

pub(crate) fn keys(names: &[&str]) -> Vec<Seg> {
    names.iter().map(|k| Seg::Key((*k).to_owned())).collect()
}

pub(crate) fn item(names: &[&str], index: usize) -> Vec<Seg> {
    let mut path = keys(names);
    path.push(Seg::Index(index));
    path
}

/// An error about the value at `path`, placed at that value in `text`.
pub(crate) fn at_value(text: &str, file: &str, path: &[Seg], message: String) -> Invalid {
    let (line, column) = match locate(text, path, false) {
        Some(offset) => {
            let (l, c) = line_col(text, offset);
            (Some(l), Some(c))
        }
        None => (None, None),
    };
    Invalid {
        file: file.to_owned(),
        line,
        column,
        key: key_path(path),
        message,
    }
}

/// Turn serde's error into ours: the key path, the place, and words a
/// person editing the file understands.
pub(crate) fn from_serde(
    text: &str,
    file: &str,
    err: serde_path_to_error::Error<serde_json::Error>,
) -> Invalid {
    let mut path: Vec<Seg> = err
        .path()
        .iter()
        .filter_map(|seg| match seg {
            serde_path_to_error::Segment::Map { key } => Some(Seg::Key(key.clone())),
            serde_path_to_error::Segment::Seq { index } => Some(Seg::Index(*index)),
            _ => None,
        })
        .collect();
    let inner = err.into_inner();
    let (line, column) = (inner.line(), inner.column());
    let full = inner.to_string();
    let bare = full
        .strip_suffix(&format!(" at line {line} column {column}"))
        .unwrap_or(&full);
    let serde_place = (
        Some(line).filter(|l| *l > 0),
        Some(column).filter(|c| *c > 0),
    );
    if !inner.is_data() {
        let message = if inner.is_eof() {
            format!("invalid JSON: the file ends too early ({bare})")
        } else {
            format!("invalid JSON: {bare}")
        };
        return Invalid {
            file: file.to_owned(),
            line: serde_place.0,
            column: serde_place.1,
            key: key_path(&path),
            message,
        };
    }
    let duplicate = bare
        .strip_prefix("duplicate field `")
        .and_then(|r| r.strip_suffix('`'));
    if let Some(name) = duplicate {
        // serde stops at the second one; that is the place to show.
        path.push(Seg::Key(name.to_owned()));
        return Invalid {
            file: file.to_owned(),
            line: serde_place.0,
            column: serde_place.1,
            key: key_path(&path),
            message: format!("the key \"{name}\" is given more than once"),
        };
    }
    let (message, at_key) = match unknown_field(bare) {
        Some((name, allowed)) => {
            // The path may or may not already end at the unknown key.
            if path.last() != Some(&Seg::Key(name.clone())) {
                path.push(Seg::Key(name.clone()));
            }
            let message = if allowed.is_empty() {
                format!("unknown key \"{name}\"; no keys are allowed here")
            } else {
                format!(
                    "unknown key \"{name}\"; the keys allowed here are {}",
                    allowed.join(", ")
                )
            };
            (message, true)
        }
        None => (plain_words(bare), false),
    };
    let (line, column) = match locate(text, &path, at_key) {
        Some(offset) => {
            let (l, c) = line_col(text, offset);
            (Some(l), Some(c))
        }
        None => serde_place,
    };
    Invalid {
        file: file.to_owned(),
        line,
        column,
        key: key_path(&path),
        message,
    }
}

/// serde's `unknown field `x`, expected one of `a`, `b`` as (x, [a, b]).
fn unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (name, allowed) = match rest.rfind("`, expected ") {
        Some(i) => (&rest[..i], &rest[i + 2..]),
        None => (rest.strip_suffix("`, there are no fields")?, ""),
    };
    let allowed = allowed
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    Some((name.to_owned(), allowed))
}

/// serde's `invalid type: string "yes", expected a boolean` as
/// `expected a boolean (true or false), found the string "yes"`.
fn plain_words(message: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix)
            && let Some((found, expected)) = rest.rsplit_once(", expected ")
        {
            let expected = match expected {
                "a boolean" => "a boolean (true or false)",
                "u8" | "u16" | "u32" | "u64" => "a whole number",
                "a sequence" => "a list (a JSON array)",
                other => other,
            };
            return format!("expected {expected}, found {}", found_words(found));
        }
    }
    message.to_owned()
}

fn found_words(found: &str) -> String {
    let literal = |s: &str| s.trim_start_matches('`').trim_end_matches('`').to_owned();
    if let Some(s) = found.strip_prefix("string ") {
        format!("the string {s}")
    } else if let Some(n) = found
        .strip_prefix("integer ")
        .or_else(|| found.strip_prefix("floating point "))
    {
        format!("the number {}", literal(n))
    } else if let Some(b) = found.strip_prefix("boolean ") {
        literal(b)
    } else {
        match found {
            "map" => "an object".into(),
            "sequence" => "a list".into(),
            "unit value" | "null" => "null".into(),
            other => other.into(),
        }
    }
}

// ---------------------------------------------------------------------------
// Finding a key's value in the text, to point at the line of a bad value.

/// The byte offset of the value at `path` in `text` (or of the last key
/// itself with `at_key`). `text` must be valid JSON up to that value.
fn locate(text: &str, path: &[Seg], at_key: bool) -> Option<usize> {
    let mut c = Cursor {
        b: text.as_bytes(),
        i: 0,
    };
    c.ws();
    for (n, seg) in path.iter().enumerate() {
        let last = n + 1 == path.len();
        match seg {
            Seg::Key(want) => {
                c.eat(b'{')?;
                loop {
                    c.ws();
                    let key_at = c.i;
                    let key = c.string()?;
                    c.ws();
                    c.eat(b':')?;
                    c.ws();
                    if key == *want {
                        if last && at_key {
                            return Some(key_at);
                        }
                        break;
                    }
                    c.skip_value()?;
                    c.ws();
                    c.eat(b',')?;
                }
            }
            Seg::Index(want) => {
                c.eat(b'[')?;
                c.ws();
                for _ in 0..*want {
                    c.skip_value()?;
                    c.ws();
                    c.eat(b',')?;
                    c.ws();
                }
                if c.peek()? == b']' {
                    return None;
                }
            }
        }
    }
    Some(c.i)
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_whitespace()) {
            self.i += 1;
        }
    }

    fn eat(&mut self, want: u8) -> Option<()> {
        (self.peek()? == want).then(|| self.i += 1)
    }

    fn string(&mut self) -> Option<String> {
        let start = self.i;
        self.eat(b'"')?;
        loop {
            match self.peek()? {
                b'\\' => self.i += 2,
                b'"' => break,
                _ => self.i += 1,
            }
        }
        self.i += 1;
        let raw = std::str::from_utf8(self.b.get(start..self.i)?).ok()?;
        serde_json::from_str(raw).ok()
    }

    fn skip_value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            open @ (b'{' | b'[') => {
                let close = if open == b'{' { b'}' } else { b']' };
                self.i += 1;
                self.ws();
                if self.eat(close).is_some() {
                    return Some(());
                }
                loop {
                    if open == b'{' {
                        self.string()?;
                        self.ws();
                        self.eat(b':')?;
                        self.ws();
                    }
                    self.skip_value()?;
                    self.ws();
                    if self.eat(close).is_some() {
                        return Some(());
                    }
                    self.eat(b',')?;
                    self.ws();
                }
            }
            _ => {
                let start = self.i;
                while self
                    .peek()
                    .is_some_and(|b| !matches!(b, b',' | b']' | b'}') && !b.is_ascii_whitespace())
                {
                    self.i += 1;
                }
                (self.i > start).then_some(())
            }
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}
