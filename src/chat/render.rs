//! [`ChatTemplate`]: one compiled chat template and the environment transformers renders it in.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use minijinja::value::{Kwargs, Tuple, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State, UndefinedBehavior, Value};

use super::prefix::{self, Hooks, Messages, Plan, Shared, Trace};
use super::pystr::{py_str, to_json, JsonOptions};
use super::ChatError;

/// The special-token strings a tokenizer passes to its template (`tokenizer.special_tokens_map`).
/// A token left `None` is not defined in the template, as for a tokenizer without it.
///
/// ```
/// let s = sftmask::chat::SpecialTokens { bos: Some("<s>".into()), ..Default::default() };
/// assert!(s.eos.is_none());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    pub bos: Option<String>,
    pub eos: Option<String>,
    pub unk: Option<String>,
    pub pad: Option<String>,
}

/// Budgets that stop a runaway template (one that loops for ever or renders megabytes).
///
/// ```
/// let limits = sftmask::chat::Limits { fuel: 1_000, max_output_bytes: 100 };
/// assert!(limits.fuel < sftmask::chat::Limits::default().fuel);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// minijinja instructions per render: 10M by default (about 1 s in a debug build). Real
    /// templates spend 5k-26k on a 64-message conversation with tools (Qwen3, GPT-OSS, Gemma 4).
    pub fuel: u64,
    /// Bytes of rendered text per render.
    pub max_output_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: 10_000_000,
            max_output_bytes: 64 << 20,
        }
    }
}

const NAME: &str = "chat_template";
/// The same template with its loop over the messages instrumented ([`prefix::plan`]).
const PREFIX_NAME: &str = "chat_template_prefix";

/// A compiled chat template with the special tokens it is rendered with. `Send + Sync`: one per
/// tokenizer, shared by every worker thread.
///
/// ```
/// use sftmask::chat::{ChatTemplate, SpecialTokens, Value};
/// let t = ChatTemplate::new("{{ bos_token }}{{ messages | tojson }}", SpecialTokens {
///     bos: Some("<s>".into()), ..Default::default() }).unwrap();
/// let m: Value = serde_json::from_str(r#"[{"role": "user", "content": "é"}]"#).unwrap();
/// assert_eq!(t.render(&m, None, &[], false).unwrap(), r#"<s>[{"role": "user", "content": "é"}]"#);
/// ```
pub struct ChatTemplate {
    env: Environment<'static>,
    special: Vec<(&'static str, Value)>,
    max_output_bytes: usize,
    /// How prefix renders are made without rendering the prefix (`Err`: why they are not).
    pub(crate) plan: Result<Plan, String>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

/// The source of a `raise_exception(message)`, so that the error is told apart from
/// minijinja's own errors after it has travelled up through macros and loops.
#[derive(Debug)]
struct Raised(String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

impl ChatTemplate {
    /// Compile `source` with the default [`Limits`]. A template minijinja cannot parse is
    /// [`ChatError::Unsupported`].
    ///
    /// ```
    /// use sftmask::chat::{ChatError, ChatTemplate, SpecialTokens};
    /// let err = ChatTemplate::new("{% for %}", SpecialTokens::default()).unwrap_err();
    /// assert!(matches!(err, ChatError::Unsupported(_)));
    /// ```
    pub fn new(source: &str, special: SpecialTokens) -> Result<Self, ChatError> {
        Self::with_limits(source, special, Limits::default())
    }

    /// [`ChatTemplate::new`] with explicit budgets.
    ///
    /// ```
    /// use sftmask::chat::{ChatError, ChatTemplate, Limits, SpecialTokens, Value};
    /// let limits = Limits { fuel: 10_000, max_output_bytes: 1 << 20 };
    /// let t = ChatTemplate::with_limits("{% for i in range(1000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}",
    ///     SpecialTokens::default(), limits).unwrap();
    /// let err = t.render(&Value::from(Vec::<Value>::new()), None, &[], false).unwrap_err();
    /// assert!(matches!(err, ChatError::Limit(_)));
    /// ```
    pub fn with_limits(source: &str, special: SpecialTokens, limits: Limits) -> Result<Self, ChatError> {
        if let Some(reason) = python_only(source) {
            return Err(ChatError::Unsupported(reason.into()));
        }
        let mut env = environment(limits.fuel);
        // Jinja2's lexer turns every "\r\n" and "\r" of the source into "\n" (its
        // `newline_sequence`), in text and in string literals alike.
        let source = source.replace("\r\n", "\n").replace('\r', "\n");
        let source = rewrite_generation_tags(&source);
        env.add_template_owned(NAME, source.clone())
            .map_err(|e| ChatError::Unsupported(describe(&e)))?;
        let plan = prefix::plan(&source, syntax()).and_then(|plan| {
            env.add_template_owned(PREFIX_NAME, plan.source.clone())
                .map_err(|e| describe(&e))?;
            Ok(plan)
        });
        let special = [
            ("bos_token", special.bos),
            ("eos_token", special.eos),
            ("unk_token", special.unk),
            ("pad_token", special.pad),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, Value::from(v))))
        .collect();
        Ok(ChatTemplate {
            env,
            special,
            max_output_bytes: limits.max_output_bytes,
            plan,
        })
    }

    /// Render one conversation, as `apply_chat_template(messages, tools=tools, tokenize=False,
    /// add_generation_prompt=…, **extra)` does. `extra` holds the template kwargs
    /// (`enable_thinking`, ...); they override the special tokens, as in transformers.
    ///
    /// ```
    /// use sftmask::chat::{ChatTemplate, SpecialTokens, Value};
    /// let t = ChatTemplate::new("{{ messages | length }} {{ x }} {{ tools }}", SpecialTokens::default()).unwrap();
    /// let m = Value::from(vec![Value::from(1), Value::from(2)]);
    /// let out = t.render(&m, None, &[("x".into(), Value::from(true))], false).unwrap();
    /// assert_eq!(out, "2 True None");
    /// ```
    pub fn render(
        &self,
        messages: &Value,
        tools: Option<&Value>,
        extra: &[(String, Value)],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        self.run(NAME, messages.clone(), tools, extra, add_generation_prompt, None)
    }

    /// The same template with its prefixes always rendered in full (no plan): how locating was
    /// made before plans, kept to measure them against.
    ///
    /// ```
    /// use sftmask::chat::{ChatTemplate, SpecialTokens};
    /// let t = ChatTemplate::new("{% for m in messages %}{% endfor %}", SpecialTokens::default()).unwrap();
    /// assert!(t.rendering_prefixes_in_full().prefix_renders_in_full().is_some());
    /// ```
    #[must_use]
    pub fn rendering_prefixes_in_full(mut self) -> Self {
        self.plan = Err("prefix plans were turned off".into());
        self
    }

    /// Why this template's prefix renders are made in full (`None`: they are not; see
    /// docs/chat-templates.md, "Prefix renders").
    ///
    /// ```
    /// use sftmask::chat::{ChatTemplate, SpecialTokens};
    /// let t = ChatTemplate::new("{% for m in messages %}{{ m.content }}{% endfor %}", SpecialTokens::default()).unwrap();
    /// assert_eq!(t.prefix_renders_in_full(), None);
    /// let t = ChatTemplate::new("{% for m in messages %}{{ loop.length }}{% endfor %}", SpecialTokens::default()).unwrap();
    /// assert!(t.prefix_renders_in_full().unwrap().contains("loop.length"));
    /// ```
    pub fn prefix_renders_in_full(&self) -> Option<&str> {
        self.plan.as_ref().err().map(String::as_str)
    }

    /// The full rendering by the planned template, with what it observed; `None` when the
    /// template has no plan or this run cannot serve prefixes.
    pub(crate) fn traced(
        &self,
        items: &[Value],
        tools: Option<&Value>,
        extra: &[(String, Value)],
    ) -> Option<(String, Trace)> {
        self.plan.as_ref().ok()?;
        let shared = Shared::full();
        let messages = Messages::value(items.to_vec(), shared.clone());
        let text = self
            .run(PREFIX_NAME, messages, tools, extra, false, Some(&shared))
            .ok()?;
        Some((text, shared.trace()?))
    }

    /// `items` rendered with the loop over them started at turn `start`: the text, where the
    /// loop started in it, and whether what follows the loop read nothing of the messages.
    pub(crate) fn tail(
        &self,
        items: &[Value],
        tools: Option<&Value>,
        extra: &[(String, Value)],
        add_generation_prompt: bool,
        start: usize,
        trace: &Trace,
    ) -> Option<(String, usize, bool)> {
        let shared = Shared::tail(start, trace);
        let messages = Messages::value(items.to_vec(), shared.clone());
        let text = self
            .run(
                PREFIX_NAME,
                messages,
                tools,
                extra,
                add_generation_prompt,
                Some(&shared),
            )
            .ok()?;
        let (at, after_reads_none) = shared.started_at()?;
        Some((text, at, after_reads_none))
    }

    fn run(
        &self,
        name: &str,
        messages: Value,
        tools: Option<&Value>,
        extra: &[(String, Value)],
        add_generation_prompt: bool,
        hooks: Option<&Arc<Shared>>,
    ) -> Result<String, ChatError> {
        let mut ctx: Vec<(String, Value)> = Vec::with_capacity(self.special.len() + extra.len() + 6);
        ctx.extend(self.special.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        ctx.extend(extra.iter().cloned());
        // Named parameters of transformers' render call: they cannot be overridden by kwargs.
        ctx.retain(|(k, _)| {
            !matches!(
                k.as_str(),
                "messages" | "tools" | "documents" | "add_generation_prompt" | prefix::HOOKS | prefix::OFFSET
            )
        });
        ctx.push(("messages".into(), messages));
        ctx.push(("tools".into(), tools.cloned().unwrap_or(Value::from(()))));
        ctx.push(("documents".into(), Value::from(())));
        ctx.push(("add_generation_prompt".into(), Value::from(add_generation_prompt)));
        if let Some(shared) = hooks {
            ctx.push((
                prefix::HOOKS.into(),
                Value::from_object(Hooks { shared: shared.clone() }),
            ));
            ctx.push((prefix::OFFSET.into(), Value::from(shared.start())));
        }
        let ctx = Value::from(ctx.into_iter().collect::<std::collections::BTreeMap<String, Value>>());

        let template = self
            .env
            .get_template(name)
            .map_err(|e| ChatError::Unsupported(describe(&e)))?;
        let mut out = Capped {
            buf: Vec::new(),
            cap: self.max_output_bytes,
            written: hooks.map(|s| &s.written),
        };
        match template.render_captured_to(ctx, &mut out) {
            Ok(_) => String::from_utf8(out.buf).map_err(|_| ChatError::Unsupported("output is not UTF-8".into())),
            Err(e) => Err(classify(&e, self.max_output_bytes)),
        }
    }
}

/// The error variant for a failed render.
fn classify(err: &Error, cap: usize) -> ChatError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(raised) = e.downcast_ref::<Raised>() {
            return ChatError::Raised(raised.0.clone());
        }
        source = e.source();
    }
    match err.kind() {
        ErrorKind::OutOfFuel => ChatError::Limit("the instruction budget is spent (does the template loop?)".into()),
        ErrorKind::WriteFailure => ChatError::Limit(format!("the output is larger than {cap} bytes")),
        _ => ChatError::Unsupported(describe(err)),
    }
}

/// One line naming what failed and where (minijinja's `Display` plus the template line).
fn describe(err: &Error) -> String {
    match err.line() {
        Some(line) => format!("{err} (template line {line})"),
        None => err.to_string(),
    }
}

/// An `io::Write` into memory that refuses to grow past `cap` bytes.
struct Capped<'a> {
    buf: Vec<u8>,
    cap: usize,
    /// Where a planned run keeps the count of bytes written (read by its hooks).
    written: Option<&'a AtomicUsize>,
}

impl io::Write for Capped<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > self.cap {
            return Err(io::Error::other("output limit"));
        }
        self.buf.extend_from_slice(data);
        if let Some(w) = self.written {
            w.store(self.buf.len(), Ordering::Relaxed);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The environment of transformers' `_compile_jinja_template`, in minijinja.
/// Jinja2's syntax as transformers configures it.
fn syntax() -> minijinja::syntax::SyntaxConfig {
    minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .keep_trailing_newline(false)
        .build()
        .expect("the default delimiters are valid")
}

fn environment(fuel: u64) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_syntax(syntax());
    // Jinja2's default `Undefined`: printing and iterating are fine, attribute access errors.
    env.set_undefined_behavior(UndefinedBehavior::Lenient);
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_fuel(Some(fuel));
    env.set_debug(false);
    env.set_unknown_method_callback(methods);
    env.set_formatter(|out, _state, value| {
        if value.kind() == ValueKind::String {
            out.write_str(value.as_str().unwrap_or_default())
                .map_err(|_| Error::new(ErrorKind::WriteFailure, "write failed"))
        } else {
            let mut s = String::new();
            py_str(value, &mut s)?;
            out.write_str(&s)
                .map_err(|_| Error::new(ErrorKind::WriteFailure, "write failed"))
        }
    });
    env.add_filter("tojson", tojson);
    // Jinja2's `trim` is `str(value).strip(chars)`.
    env.add_filter("trim", |value: Value, chars: Option<&str>| -> Result<String, Error> {
        let mut s = String::new();
        py_str(&value, &mut s)?;
        Ok(match chars {
            Some(chars) => s.trim_matches(|c| chars.contains(c)).to_owned(),
            None => s.trim_matches(py_space).to_owned(),
        })
    });
    env.add_filter("string", |value: Value| -> Result<String, Error> {
        let mut s = String::new();
        py_str(&value, &mut s)?;
        Ok(s)
    });
    // Jinja2's tests are Python's `iter()`, `len()`/`__getitem__` and `isinstance(Number)`:
    // `none is iterable` is false, a string `is sequence`, `true is number`.
    env.add_test("iterable", |v: Value| match v.kind() {
        ValueKind::None | ValueKind::Bool | ValueKind::Number => false,
        ValueKind::Plain | ValueKind::Invalid => v.try_iter().is_ok(),
        _ => true,
    });
    env.add_test("sequence", |v: Value| {
        matches!(
            v.kind(),
            ValueKind::Undefined | ValueKind::String | ValueKind::Bytes | ValueKind::Seq | ValueKind::Map
        )
    });
    env.add_test("number", |v: Value| {
        matches!(v.kind(), ValueKind::Number | ValueKind::Bool)
    });
    env.add_function("raise_exception", |message: Value| -> Result<Value, Error> {
        let mut text = String::new();
        py_str(&message, &mut text)?;
        Err(Error::new(ErrorKind::InvalidOperation, text.clone()).with_source(Raised(text)))
    });
    env.add_function("strftime_now", strftime_now);
    env.add_function("cycler", minijinja_contrib::globals::cycler);
    env.add_function("joiner", minijinja_contrib::globals::joiner);
    env
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=None, separators=None,
/// sort_keys=False)`, the options given by position or by name.
fn tojson(value: Value, args: minijinja::value::Rest<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    let names = ["ensure_ascii", "indent", "separators", "sort_keys"];
    let mut given: [Option<Value>; 4] = Default::default();
    for (slot, arg) in given.iter_mut().zip(args.iter()) {
        *slot = Some(arg.clone());
    }
    if args.len() > names.len() {
        return Err(Error::new(
            ErrorKind::TooManyArguments,
            "tojson takes at most 4 options",
        ));
    }
    for (slot, name) in given.iter_mut().zip(names) {
        if let Some(v) = kwargs.get::<Option<Value>>(name)? {
            *slot = Some(v);
        }
    }
    kwargs.assert_all_used()?;
    let set = |v: &Option<Value>| v.as_ref().filter(|v| !v.is_none() && !v.is_undefined()).cloned();
    let indent = match set(&given[1]) {
        None => None,
        Some(v) if v.kind() == ValueKind::String => Some(v.as_str().unwrap_or_default().to_owned()),
        Some(v) => {
            let n = i64::try_from(v)?;
            Some(" ".repeat(n.max(0) as usize))
        }
    };
    // json.dumps: (", ", ": ") on one line, ("," , ": ") when indenting, unless given.
    let (item_sep, key_sep) = match set(&given[2]) {
        Some(seps) => {
            let parts: Vec<Value> = seps.try_iter()?.collect();
            match parts.as_slice() {
                [a, b] => (a.to_string(), b.to_string()),
                _ => {
                    return Err(Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be a pair",
                    ))
                }
            }
        }
        None if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        None => (", ".to_owned(), ": ".to_owned()),
    };
    let opts = JsonOptions {
        ensure_ascii: set(&given[0]).is_some_and(|v| v.is_true()),
        indent,
        item_sep,
        key_sep,
        sort_keys: set(&given[3]).is_some_and(|v| v.is_true()),
    };
    let mut out = String::new();
    to_json(&value, &opts, &mut out)?;
    Ok(Value::from(out))
}

/// `datetime.now().strftime(format)`, in the local time zone as Python uses it.
fn strftime_now(format: &str) -> Result<String, Error> {
    let now = jiff::Zoned::now();
    jiff::fmt::strtime::format(format, &now)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("strftime_now: {e}")))
}

/// Python methods on values: minijinja-contrib's `pycompat` plus the few it lacks that chat
/// templates call.
fn methods(state: &mut State, value: &Value, method: &str, args: &[Value]) -> Result<Value, Error> {
    if let Some(s) = value.as_str() {
        let arg = |i: usize| args.get(i).and_then(|v| v.as_str());
        let no_chars = args.first().is_none_or(|v| v.is_none());
        match (method, args.len()) {
            // Python's whitespace (str.isspace) also holds the separators \x1c-\x1f, which
            // Rust's `char::is_whitespace` does not.
            ("strip", 0 | 1) if no_chars => return Ok(Value::from(s.trim_matches(py_space))),
            ("lstrip", 0 | 1) if no_chars => return Ok(Value::from(s.trim_start_matches(py_space))),
            ("rstrip", 0 | 1) if no_chars => return Ok(Value::from(s.trim_end_matches(py_space))),
            ("isspace", 0) => return Ok(Value::from(!s.is_empty() && s.chars().all(py_space))),
            ("split", 0) => return Ok(Value::from(py_split_whitespace(s, -1))),
            ("split", 1 | 2) if no_chars => {
                let max = args.get(1).map(|v| i64::try_from(v.clone())).transpose()?.unwrap_or(-1);
                return Ok(Value::from(py_split_whitespace(s, max)));
            }
            ("splitlines", 0 | 1) => {
                let keep = args.first().is_some_and(|v| v.is_true());
                return Ok(Value::from(py_splitlines(s, keep)));
            }
            ("title", 0) => return Ok(Value::from(py_title(s))),
            ("removeprefix", 1) => {
                let p = arg(0).unwrap_or_default();
                return Ok(Value::from(s.strip_prefix(p).unwrap_or(s)));
            }
            ("removesuffix", 1) => {
                let p = arg(0).unwrap_or_default();
                return Ok(Value::from(s.strip_suffix(p).unwrap_or(s)));
            }
            ("rsplit", 1 | 2) if arg(0).is_some() => {
                let sep = arg(0).unwrap_or_default();
                let max = args.get(1).map(|v| i64::try_from(v.clone())).transpose()?.unwrap_or(-1);
                let mut parts: Vec<Value> = if max < 0 {
                    s.rsplit(sep).map(Value::from).collect()
                } else {
                    s.rsplitn(max as usize + 1, sep).map(Value::from).collect()
                };
                parts.reverse();
                return Ok(Value::from(parts));
            }
            ("partition" | "rpartition", 1) => {
                let sep = arg(0).unwrap_or_default();
                let found = if method == "partition" {
                    s.find(sep)
                } else {
                    s.rfind(sep)
                };
                let parts = match found {
                    Some(i) => [&s[..i], sep, &s[i + sep.len()..]],
                    None if method == "partition" => [s, "", ""],
                    None => ["", "", s],
                };
                return Ok(Value::from(Tuple::from(parts.map(Value::from))));
            }
            _ => {}
        }
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

/// `str.isspace()` for one character.
fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `str.split()` / `str.split(None, maxsplit)`: runs of whitespace separate, ends are dropped.
fn py_split_whitespace(s: &str, maxsplit: i64) -> Vec<Value> {
    let mut out = Vec::new();
    let mut rest = s.trim_start_matches(py_space);
    while !rest.is_empty() {
        if maxsplit >= 0 && out.len() as i64 == maxsplit {
            out.push(Value::from(rest));
            break;
        }
        let end = rest.find(py_space).unwrap_or(rest.len());
        out.push(Value::from(&rest[..end]));
        rest = rest[end..].trim_start_matches(py_space);
    }
    out
}

/// `str.splitlines(keepends)`: Python's line boundaries, not only `\n`.
fn py_splitlines(s: &str, keepends: bool) -> Vec<Value> {
    let boundary = |c: char| {
        matches!(
            c,
            '\n' | '\r' | '\u{b}' | '\u{c}' | '\u{1c}'..='\u{1e}' | '\u{85}' | '\u{2028}' | '\u{2029}'
        )
    };
    let mut out = Vec::new();
    let mut start = 0;
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if !boundary(c) {
            continue;
        }
        let mut end = i + c.len_utf8();
        if c == '\r' && chars.peek().is_some_and(|&(_, n)| n == '\n') {
            chars.next();
            end += 1;
        }
        out.push(Value::from(if keepends { &s[start..end] } else { &s[start..i] }));
        start = end;
    }
    if start < s.len() {
        out.push(Value::from(&s[start..]));
    }
    out
}

/// `str.title()`: a cased character after an uncased one is upper case, the others lower
/// (so `"they're"` becomes `"They'Re"`, unlike Jinja2's `|title` filter).
fn py_title(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut prev_cased = false;
    for c in s.chars() {
        let cased = c.is_lowercase() || c.is_uppercase();
        if prev_cased {
            out.extend(c.to_lowercase());
        } else {
            out.extend(c.to_uppercase());
        }
        prev_cased = cased;
    }
    out
}

/// A construct whose Jinja2 meaning rests on Python types minijinja does not have.
///
/// `"text"|safe + x` is a `Markup` in Jinja2, and `Markup + str` HTML-escapes the `str`
/// (`"` becomes `&#34;`); minijinja concatenates plainly. Such templates fall back.
fn python_only(source: &str) -> Option<&'static str> {
    let compact: String = source.chars().filter(|c| !c.is_whitespace()).collect();
    if compact.contains("|safe+") || compact.contains("|safe)+") {
        return Some("`|safe` followed by `+`: Jinja2's Markup HTML-escapes what is added to it");
    }
    // `+ "text"|safe`: `str + Markup` escapes the left operand too.
    let bytes = compact.as_bytes();
    let mut at = 0;
    while let Some(i) = compact[at..].find("|safe") {
        let i = at + i;
        if i > 0 && matches!(bytes[i - 1], b'"' | b'\'') {
            let quote = bytes[i - 1];
            if let Some(open) = compact[..i - 1].rfind(quote as char) {
                if open > 0 && bytes[open - 1] == b'+' {
                    return Some("`+ \"text\"|safe`: Jinja2's Markup HTML-escapes what it is added to");
                }
            }
        }
        at = i + 5;
    }
    None
}

/// TRL's training templates wrap assistant output in `{% generation %}…{% endgeneration %}`, a
/// tag only transformers' extension knows. Outside mask tracking it renders its body unchanged,
/// which is what `{% if true %}…{% endif %}` does, with the same whitespace control: block tags
/// are trimmed alike, and the `-`/`+` modifiers are kept.
fn rewrite_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(at) = rest.find("{%") {
        out.push_str(&rest[..at]);
        let tag = &rest[at..];
        let Some(end) = tag.find("%}") else {
            out.push_str(tag);
            return out;
        };
        let inner = &tag[2..end];
        let (open, body) = split_modifier_front(inner);
        let (body, close) = split_modifier_back(body);
        match body.trim() {
            "generation" => {
                out.push_str(&format!("{{%{open} if true {close}%}}"));
            }
            "endgeneration" => {
                out.push_str(&format!("{{%{open} endif {close}%}}"));
            }
            _ => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

fn split_modifier_front(s: &str) -> (&str, &str) {
    match s.as_bytes().first() {
        Some(b'-' | b'+') => (&s[..1], &s[1..]),
        _ => ("", s),
    }
}

fn split_modifier_back(s: &str) -> (&str, &str) {
    match s.as_bytes().last() {
        Some(b'-' | b'+') => (&s[..s.len() - 1], &s[s.len() - 1..]),
        _ => (s, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_by_worker_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<ChatTemplate>();
    }

    #[test]
    fn generation_tags_become_if_blocks() {
        assert_eq!(
            rewrite_generation_tags("a{%- generation %}b{% endgeneration -%}c{% if x %}"),
            "a{%- if true %}b{% endif -%}c{% if x %}"
        );
    }
}
