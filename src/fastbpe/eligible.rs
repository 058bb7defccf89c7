//! Which tokenizer.json files the fast path reproduces exactly: a strict whitelist on the parsed
//! JSON. Anything not named here (another model, normalizer, pre-tokenizer or regex, a flag on an
//! added token, truncation…) is refused with the first feature found, and `tokenizers` runs.

use serde_json::{Map, Value};

use super::pretok::Pattern;

/// What the fast path needs from an accepted tokenizer.json.
pub(crate) struct Spec {
    pub(crate) pattern: Pattern,
    /// The normalizer is NFC: rows not already in NFC go to `tokenizers`.
    pub(crate) nfc: bool,
    pub(crate) ignore_merges: bool,
    /// Model vocabulary: token text (byte-level characters) -> id.
    pub(crate) vocab: Vec<(String, u32)>,
    /// Merges in rank order.
    pub(crate) merges: Vec<(String, String)>,
    /// Added tokens: (content, id, normalized).
    pub(crate) added: Vec<(String, u32, bool)>,
    /// Ids the post-processor puts before and after a single sequence (`add_special_tokens`).
    pub(crate) prefix: Vec<u32>,
    pub(crate) suffix: Vec<u32>,
}

type Refusal = String;

fn obj<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>, Refusal> {
    v.as_object().ok_or_else(|| format!("{what} is not an object"))
}

fn kind(o: &Map<String, Value>) -> &str {
    o.get("type").and_then(Value::as_str).unwrap_or("?")
}

/// Refuses any key of `o` outside `known`: an option this file does not know could change ids.
fn only(o: &Map<String, Value>, what: &str, known: &[&str]) -> Result<(), Refusal> {
    match o.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(format!("{what} option {k:?}")),
        None => Ok(()),
    }
}

fn is(o: &Map<String, Value>, key: &str, want: &Value) -> bool {
    o.get(key) == Some(want)
}

fn null_or_empty(o: &Map<String, Value>, key: &str) -> bool {
    match o.get(key) {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        _ => false,
    }
}

fn pre_tokenizer(v: &Value) -> Result<Pattern, Refusal> {
    if v.is_null() {
        return Err("no pre-tokenizer".into());
    }
    let o = obj(v, "pre_tokenizer")?;
    match kind(o) {
        // GPT-2: the ByteLevel pre-tokenizer with its own regex.
        "ByteLevel" => {
            only(
                o,
                "ByteLevel pre-tokenizer",
                &["type", "add_prefix_space", "trim_offsets", "use_regex"],
            )?;
            if !is(o, "add_prefix_space", &Value::Bool(false)) {
                return Err("ByteLevel pre-tokenizer with add_prefix_space".into());
            }
            if is(o, "use_regex", &Value::Bool(true)) {
                Ok(Pattern::Gpt2)
            } else {
                Err("ByteLevel pre-tokenizer without its regex (use_regex false) alone".into())
            }
        }
        // Llama-3, Qwen2: Split(regex, Isolated) then ByteLevel without regex.
        "Sequence" => {
            only(o, "Sequence pre-tokenizer", &["type", "pretokenizers"])?;
            let parts = o
                .get("pretokenizers")
                .and_then(Value::as_array)
                .map_or(&[][..], Vec::as_slice);
            let [split, bytes] = parts else {
                return Err(format!(
                    "a Sequence of {} pre-tokenizers (not Split + ByteLevel)",
                    parts.len()
                ));
            };
            let split = obj(split, "pre-tokenizer")?;
            let bytes = obj(bytes, "pre-tokenizer")?;
            if kind(split) != "Split" || kind(bytes) != "ByteLevel" {
                return Err(format!(
                    "pre-tokenizers {} + {} (not Split + ByteLevel)",
                    kind(split),
                    kind(bytes)
                ));
            }
            only(split, "Split pre-tokenizer", &["type", "pattern", "behavior", "invert"])?;
            only(
                bytes,
                "ByteLevel pre-tokenizer",
                &["type", "add_prefix_space", "trim_offsets", "use_regex"],
            )?;
            if !is(split, "behavior", &Value::from("Isolated")) || !is(split, "invert", &Value::Bool(false)) {
                return Err("a Split pre-tokenizer that is not behavior Isolated, invert false".into());
            }
            if !is(bytes, "add_prefix_space", &Value::Bool(false)) || !is(bytes, "use_regex", &Value::Bool(false)) {
                return Err("a ByteLevel pre-tokenizer with add_prefix_space or use_regex after Split".into());
            }
            let regex = split
                .get("pattern")
                .and_then(|p| p.get("Regex"))
                .and_then(Value::as_str);
            let regex = regex.ok_or("a Split pre-tokenizer on a string, not a regex")?;
            Pattern::for_split_regex(regex)
                .ok_or_else(|| format!("the Split regex {regex:?} (implemented: Llama-3's, Qwen2's, Tekken's)"))
        }
        other => Err(format!("the {other} pre-tokenizer")),
    }
}

fn template_ids(o: &Map<String, Value>) -> Result<(Vec<u32>, Vec<u32>), Refusal> {
    only(o, "TemplateProcessing", &["type", "single", "pair", "special_tokens"])?;
    let single = o
        .get("single")
        .and_then(Value::as_array)
        .ok_or("TemplateProcessing without single")?;
    let specials = o.get("special_tokens").and_then(Value::as_object);
    let (mut prefix, mut suffix) = (Vec::new(), Vec::new());
    let mut seen_sequence = false;
    for piece in single {
        if let Some(seq) = piece.get("Sequence") {
            if seen_sequence || seq.get("id") != Some(&Value::from("A")) {
                return Err("a TemplateProcessing single template that is not [special…, $A, special…]".into());
            }
            seen_sequence = true;
        } else if let Some(name) = piece
            .get("SpecialToken")
            .and_then(|s| s.get("id"))
            .and_then(Value::as_str)
        {
            let ids = specials
                .and_then(|s| s.get(name))
                .and_then(|s| s.get("ids"))
                .and_then(Value::as_array)
                .ok_or_else(|| format!("TemplateProcessing special token {name:?} without ids"))?;
            let side = if seen_sequence { &mut suffix } else { &mut prefix };
            for id in ids {
                let id = id.as_u64().and_then(|i| u32::try_from(i).ok());
                side.push(id.ok_or("a TemplateProcessing id that is not a u32")?);
            }
        } else {
            return Err("a TemplateProcessing piece that is neither Sequence nor SpecialToken".into());
        }
    }
    if !seen_sequence {
        return Err("a TemplateProcessing single template without $A".into());
    }
    Ok((prefix, suffix))
}

/// The ids a post-processor adds around a single sequence; ByteLevel must not trim offsets.
fn post_processor(v: &Value) -> Result<(Vec<u32>, Vec<u32>), Refusal> {
    if v.is_null() {
        return Ok((Vec::new(), Vec::new()));
    }
    let o = obj(v, "post_processor")?;
    match kind(o) {
        "ByteLevel" => {
            only(
                o,
                "ByteLevel post-processor",
                &["type", "add_prefix_space", "trim_offsets", "use_regex"],
            )?;
            if is(o, "trim_offsets", &Value::Bool(false)) {
                Ok((Vec::new(), Vec::new()))
            } else {
                Err("a ByteLevel post-processor that trims offsets".into())
            }
        }
        "TemplateProcessing" => template_ids(o),
        "Sequence" => {
            only(o, "Sequence post-processor", &["type", "processors"])?;
            let (mut prefix, mut suffix) = (Vec::new(), Vec::new());
            for p in o.get("processors").and_then(Value::as_array).into_iter().flatten() {
                let (a, b) = post_processor(p)?;
                let adds = |x: &[u32], y: &[u32]| !(x.is_empty() && y.is_empty());
                if adds(&a, &b) && adds(&prefix, &suffix) {
                    return Err("two post-processors that both add tokens".into());
                }
                prefix.extend(a);
                suffix.extend(b);
            }
            Ok((prefix, suffix))
        }
        other => Err(format!("the {other} post-processor")),
    }
}

/// `ignore_merges`, the vocabulary and the merges of a BPE model.
type Model = (bool, Vec<(String, u32)>, Vec<(String, String)>);

fn model(v: &Value) -> Result<Model, Refusal> {
    let o = obj(v, "model")?;
    if kind(o) != "BPE" {
        return Err(format!("the {} model", kind(o)));
    }
    only(
        o,
        "BPE model",
        &[
            "type",
            "dropout",
            "unk_token",
            "continuing_subword_prefix",
            "end_of_word_suffix",
            "fuse_unk",
            "byte_fallback",
            "ignore_merges",
            "vocab",
            "merges",
        ],
    )?;
    match o.get("dropout") {
        None | Some(Value::Null) => {}
        Some(d) if d.as_f64() == Some(0.0) => {}
        Some(d) => return Err(format!("BPE dropout {d}")),
    }
    if !matches!(o.get("unk_token"), None | Some(Value::Null)) {
        return Err("a BPE unk_token".into());
    }
    if !null_or_empty(o, "continuing_subword_prefix") || !null_or_empty(o, "end_of_word_suffix") {
        return Err("a BPE continuing_subword_prefix or end_of_word_suffix".into());
    }
    if !matches!(o.get("byte_fallback"), None | Some(Value::Bool(false))) {
        return Err("BPE byte_fallback".into());
    }
    let ignore_merges = match o.get("ignore_merges") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(format!("BPE ignore_merges {other}")),
    };
    let vocab = o
        .get("vocab")
        .and_then(Value::as_object)
        .ok_or("a BPE model without a vocab object")?;
    let mut tokens = Vec::with_capacity(vocab.len());
    for (k, v) in vocab {
        let id = v
            .as_u64()
            .and_then(|i| u32::try_from(i).ok())
            .ok_or("a vocab id that is not a u32")?;
        tokens.push((k.clone(), id));
    }
    let list = o
        .get("merges")
        .and_then(Value::as_array)
        .ok_or("a BPE model without a merges list")?;
    let mut merges = Vec::with_capacity(list.len());
    for m in list {
        let pair = match m {
            Value::String(s) => s.split_once(' ').map(|(a, b)| (a.to_owned(), b.to_owned())),
            Value::Array(ab) => match ab.as_slice() {
                [Value::String(a), Value::String(b)] => Some((a.clone(), b.clone())),
                _ => None,
            },
            _ => None,
        };
        merges.push(pair.ok_or_else(|| format!("a merge {m} that is not a pair"))?);
    }
    Ok((ignore_merges, tokens, merges))
}

fn added_tokens(v: &Value) -> Result<Vec<(String, u32, bool)>, Refusal> {
    let list = match v {
        Value::Null => return Ok(Vec::new()),
        v => v.as_array().ok_or("added_tokens is not a list")?,
    };
    let mut out = Vec::with_capacity(list.len());
    for t in list {
        let o = obj(t, "an added token")?;
        only(
            o,
            "added token",
            &[
                "id",
                "content",
                "single_word",
                "lstrip",
                "rstrip",
                "normalized",
                "special",
            ],
        )?;
        let content = o.get("content").and_then(Value::as_str).unwrap_or_default();
        for flag in ["single_word", "lstrip", "rstrip"] {
            if o.get(flag) == Some(&Value::Bool(true)) {
                return Err(format!("added token {content:?} with {flag}"));
            }
        }
        if content.is_empty() {
            return Err("an empty added token".into());
        }
        let id = o.get("id").and_then(Value::as_u64).and_then(|i| u32::try_from(i).ok());
        let normalized = o.get("normalized") != Some(&Value::Bool(false));
        out.push((
            content.to_owned(),
            id.ok_or("an added token id that is not a u32")?,
            normalized,
        ));
    }
    Ok(out)
}

/// The spec of a tokenizer.json the fast path covers, or the first feature it does not.
pub(crate) fn check(json: &Value) -> Result<Spec, Refusal> {
    let top = obj(json, "tokenizer.json")?;
    only(
        top,
        "tokenizer.json",
        &[
            "version",
            "truncation",
            "padding",
            "added_tokens",
            "normalizer",
            "pre_tokenizer",
            "post_processor",
            "decoder",
            "model",
        ],
    )?;
    // The model first: for another kind of tokenizer, that is the telling difference.
    let (ignore_merges, vocab, merges) = model(top.get("model").unwrap_or(&Value::Null))?;
    // `truncation` and `padding` are not looked at: `crate::load` drops them (they are a
    // transformers tokenizer's call state), for `tokenizers` and the fast path alike.
    let nfc = match top.get("normalizer") {
        None | Some(Value::Null) => false,
        Some(n) if n == &serde_json::json!({"type": "NFC"}) => true,
        Some(n) => {
            return Err(format!(
                "the {} normalizer",
                n.get("type").and_then(Value::as_str).unwrap_or("?")
            ))
        }
    };
    let pattern = pre_tokenizer(top.get("pre_tokenizer").unwrap_or(&Value::Null))?;
    let added = added_tokens(top.get("added_tokens").unwrap_or(&Value::Null))?;
    let (prefix, suffix) = post_processor(top.get("post_processor").unwrap_or(&Value::Null))?;
    Ok(Spec {
        pattern,
        nfc,
        ignore_merges,
        vocab,
        merges,
        added,
        prefix,
        suffix,
    })
}
