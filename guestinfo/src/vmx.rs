//! VMX text: the `key = "value"` lines of a .vmx file's extraConfig, which is also what QEMU's
//! fw_cfg carries for tether. Inside the quotes, `"`, `|`, `#` and control characters are written
//! as `|XX` (two hex digits), as VMware does; other bytes (UTF-8 included) are literal.

use std::collections::BTreeMap;

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VmxError {
    #[error("line {line}: expected `key = \"value\"`, got {text:?}")]
    Syntax { line: usize, text: String },
    #[error("line {line}: bad escape {escape:?} in value; write |XX with two hex digits")]
    BadEscape { line: usize, escape: String },
    #[error("line {line}: value of {key} is not UTF-8 after unescaping")]
    NotUtf8 { line: usize, key: String },
    #[error("line {line}: key {key} already set on line {first}; each key may appear once")]
    Duplicate {
        line: usize,
        first: usize,
        key: String,
    },
}

/// Parses VMX text into a key -> value map.
pub fn parse(text: &str) -> Result<BTreeMap<String, String>, VmxError> {
    let mut out = BTreeMap::new();
    let mut lines_of: BTreeMap<String, usize> = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let t = raw.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let syntax = || VmxError::Syntax {
            line,
            text: raw.to_string(),
        };
        let (key, rest) = t.split_once('=').ok_or_else(syntax)?;
        let key = key.trim();
        let rest = rest.trim();
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(syntax());
        }
        let quoted = rest
            .strip_prefix('"')
            .and_then(|r| r.strip_suffix('"'))
            .ok_or_else(syntax)?;
        if quoted.contains('"') {
            return Err(syntax());
        }
        let value = unescape(quoted).map_err(|escape| VmxError::BadEscape { line, escape })?;
        let value = String::from_utf8(value).map_err(|_| VmxError::NotUtf8 {
            line,
            key: key.to_string(),
        })?;
        if let Some(&first) = lines_of.get(key) {
            return Err(VmxError::Duplicate {
                line,
                first,
                key: key.to_string(),
            });
        }
        lines_of.insert(key.to_string(), line);
        out.insert(key.to_string(), value);
    }
    Ok(out)
}

fn unescape(s: &str) -> Result<Vec<u8>, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'|' {
            let hex = bytes.get(i + 1..i + 3).ok_or_else(|| s[i..].to_string())?;
            let text = std::str::from_utf8(hex).map_err(|_| s[i..].to_string())?;
            let b = u8::from_str_radix(text, 16).map_err(|_| format!("|{text}"))?;
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '"' | '|' | '#' => out.push_str(&format!("|{:02X}", c as u32)),
            c if (c as u32) < 0x20 || c == '\x7f' => out.push_str(&format!("|{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Writes key/value pairs as VMX text, one per line, in the order given.
pub fn write<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = String::new();
    for (k, v) in pairs {
        out.push_str(k);
        out.push_str(" = \"");
        out.push_str(&escape(v));
        out.push_str("\"\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_quoted_values_with_escapes() {
        let text = "# comment\n\nguestinfo.a = \"x|7Cy |22q|22\"\n  b=\"\"\nc = \"tab|09é\"\n";
        let m = parse(text).unwrap();
        assert_eq!(m["guestinfo.a"], "x|y \"q\"");
        assert_eq!(m["b"], "");
        assert_eq!(m["c"], "tab\té");
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(
            parse("a = \"ok\"\nb = unquoted\n").unwrap_err(),
            VmxError::Syntax {
                line: 2,
                text: "b = unquoted".into()
            }
        );
        assert!(matches!(
            parse("a = \"|Z1\""),
            Err(VmxError::BadEscape { line: 1, .. })
        ));
        assert!(matches!(
            parse("a = \"|4\""),
            Err(VmxError::BadEscape { line: 1, .. })
        ));
        assert!(matches!(
            parse("a = \"|FF\""),
            Err(VmxError::NotUtf8 { line: 1, .. })
        ));
        assert_eq!(
            parse("a = \"1\"\na = \"2\"").unwrap_err(),
            VmxError::Duplicate {
                line: 2,
                first: 1,
                key: "a".into()
            }
        );
        assert!(matches!(parse("a b = \"1\""), Err(VmxError::Syntax { .. })));
        assert!(matches!(
            parse("a = \"1\"\"\""),
            Err(VmxError::Syntax { .. })
        ));
    }

    #[test]
    fn write_then_parse_round_trips() {
        let v = "a|b \"c\" #d\n\u{1}ü€";
        let text = write([("k", v)]);
        assert_eq!(parse(&text).unwrap()["k"], v);
    }
}
