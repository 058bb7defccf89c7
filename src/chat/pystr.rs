//! Values printed as Python prints them: `str()`, `repr()` and `json.dumps()`.
//!
//! Jinja2 writes `{{ x }}` as `str(x)`, so a template that prints a list, a bool or `None` shows
//! Python's spelling (`['a', 1]`, `True`, `None`), and transformers' `tojson` is `json.dumps`
//! (`", "` and `": "` separators, floats as `repr(float)`, non-ASCII kept). minijinja's own
//! spellings differ (`["a", 1]`, `true`, `none`), hence this module.

use std::fmt::Write;

use minijinja::value::ValueKind;
use minijinja::{Error, ErrorKind, Value};

/// `str(value)` as Python writes it.
pub(crate) fn py_str(value: &Value, out: &mut String) -> Result<(), Error> {
    match value.kind() {
        ValueKind::Undefined => Ok(()),
        ValueKind::String => {
            out.push_str(value.as_str().unwrap_or_default());
            Ok(())
        }
        _ => py_repr(value, out),
    }
}

/// `repr(value)` as Python writes it (strings quoted, containers recursively).
pub(crate) fn py_repr(value: &Value, out: &mut String) -> Result<(), Error> {
    match value.kind() {
        ValueKind::Undefined => {}
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::Number => number(value, out, "inf", "nan")?,
        ValueKind::String => repr_string(value.as_str().unwrap_or_default(), out),
        ValueKind::Seq | ValueKind::Iterable => {
            // A tuple (e.g. from `dict.items()`) prints with parentheses in Python.
            let (open, close) = if value.is_tuple() { ("(", ")") } else { ("[", "]") };
            out.push_str(open);
            let mut n = 0;
            for (i, item) in value.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_repr(&item, out)?;
                n += 1;
            }
            if value.is_tuple() && n == 1 {
                out.push(',');
            }
            out.push_str(close);
        }
        ValueKind::Map => {
            out.push('{');
            for (i, key) in value.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_repr(&key, out)?;
                out.push_str(": ");
                py_repr(&value.get_item(&key)?, out)?;
            }
            out.push('}');
        }
        _ => write!(out, "{value}").map_err(|_| fmt_error())?,
    }
    Ok(())
}

fn fmt_error() -> Error {
    Error::new(ErrorKind::InvalidOperation, "formatting failed")
}

/// An integer as decimal, a float as Python's `repr(float)` (`1.0`, `1e-05`, `1.5e+16`).
fn number(value: &Value, out: &mut String, inf: &str, nan: &str) -> Result<(), Error> {
    if value.is_integer() {
        write!(out, "{value}").map_err(|_| fmt_error())?;
        return Ok(());
    }
    let f = f64::try_from(value.clone())?;
    float_repr(f, out, inf, nan);
    Ok(())
}

pub(crate) fn float_repr(f: f64, out: &mut String, inf: &str, nan: &str) {
    if f.is_nan() {
        out.push_str(nan);
        return;
    }
    if f.is_infinite() {
        if f < 0.0 {
            out.push('-');
        }
        out.push_str(inf);
        return;
    }
    // Rust's `{:e}` gives the shortest round-trip digits, as Python's repr does; only the
    // layout differs: Python writes positional notation for exponents in [-4, 16).
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    out.push_str(sign);
    if (-4..16).contains(&exp) {
        if exp < 0 {
            out.push_str("0.");
            for _ in 0..(-exp - 1) {
                out.push('0');
            }
            out.push_str(&digits);
        } else {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                out.push_str(&digits);
                for _ in digits.len()..int_len {
                    out.push('0');
                }
                out.push_str(".0");
            } else {
                out.push_str(&digits[..int_len]);
                out.push('.');
                out.push_str(&digits[int_len..]);
            }
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
}

/// Characters Python's `str.isprintable()` rejects that can appear in chat text: controls,
/// and the Unicode separators and format characters (NBSP, zero-width space, U+2028, BOM...).
fn py_unprintable(c: char) -> bool {
    matches!(c as u32,
        0..=0x1f | 0x7f..=0xa0 | 0xad | 0x1680 | 0x2000..=0x200f | 0x2028..=0x202f
        | 0x205f..=0x2064 | 0x3000 | 0xfeff | 0xd800..=0xdfff)
}

/// Python's `repr` of a string (quotes chosen as Python does, unprintables escaped).
pub(crate) fn repr_string(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if py_unprintable(c) => {
                let n = c as u32;
                let _ = if n <= 0xff {
                    write!(out, "\\x{n:02x}")
                } else {
                    write!(out, "\\u{n:04x}")
                };
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// The options of `json.dumps` that transformers' `tojson` filter passes through.
pub(crate) struct JsonOptions {
    pub ensure_ascii: bool,
    /// `None`: one line; `Some(s)`: newline and `s` repeated per level (`indent=2` is `"  "`).
    pub indent: Option<String>,
    pub item_sep: String,
    pub key_sep: String,
    pub sort_keys: bool,
}

/// `json.dumps(value, **options)`.
pub(crate) fn to_json(value: &Value, opts: &JsonOptions, out: &mut String) -> Result<(), Error> {
    json_value(value, opts, 0, out)
}

fn newline(opts: &JsonOptions, level: usize, out: &mut String) {
    if let Some(indent) = &opts.indent {
        out.push('\n');
        for _ in 0..level {
            out.push_str(indent);
        }
    }
}

fn json_value(value: &Value, opts: &JsonOptions, level: usize, out: &mut String) -> Result<(), Error> {
    match value.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => number(value, out, "Infinity", "NaN")?,
        ValueKind::String => json_string(value.as_str().unwrap_or_default(), opts.ensure_ascii, out),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_sep);
                }
                newline(opts, level + 1, out);
                json_value(item, opts, level + 1, out)?;
            }
            newline(opts, level, out);
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<(String, Value)> = Vec::new();
            for key in value.try_iter()? {
                keys.push((json_key(&key)?, key));
            }
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            if opts.sort_keys {
                keys.sort_by(|a, b| a.0.cmp(&b.0));
            }
            out.push('{');
            for (i, (text, key)) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_sep);
                }
                newline(opts, level + 1, out);
                json_string(text, opts.ensure_ascii, out);
                out.push_str(&opts.key_sep);
                json_value(&value.get_item(key)?, opts, level + 1, out)?;
            }
            newline(opts, level, out);
            out.push('}');
        }
        kind => {
            // Python raises TypeError ("Object of type Undefined is not JSON serializable").
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: a value of kind {kind} is not JSON serializable"),
            ));
        }
    }
    Ok(())
}

/// A dict key as `json.dumps` writes it: strings as they are, numbers, bools and None spelled.
fn json_key(key: &Value) -> Result<String, Error> {
    let mut s = String::new();
    match key.kind() {
        ValueKind::String => s.push_str(key.as_str().unwrap_or_default()),
        ValueKind::None => s.push_str("null"),
        ValueKind::Bool => s.push_str(if key.is_true() { "true" } else { "false" }),
        ValueKind::Number => number(key, &mut s, "Infinity", "NaN")?,
        kind => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: keys must be str, int, float, bool or None, not {kind}"),
            ))
        }
    }
    Ok(s)
}

fn json_string(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && (c as u32) > 0x7e) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repr_f(f: f64) -> String {
        let mut s = String::new();
        float_repr(f, &mut s, "inf", "nan");
        s
    }

    #[test]
    fn floats_as_python_repr() {
        // Expected values are what CPython's repr() prints for these floats.
        for (f, want) in [
            (1.0, "1.0"),
            (0.5, "0.5"),
            (22.5, "22.5"),
            (-3.25, "-3.25"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (1e15, "1000000000000000.0"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.2345e-7, "1.2345e-07"),
            (0.1 + 0.2, "0.30000000000000004"),
            (123456.789, "123456.789"),
            (0.0, "0.0"),
        ] {
            assert_eq!(repr_f(f), want, "{f}");
        }
    }
}
