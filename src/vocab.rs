//! The vocabulary byte table: for every token id, the exact bytes of text it stands for.
//!
//! Built once per tokenizer from its `tokenizer.json` (and cached by content, see
//! [`Vocab::cached_from_json`]). The table is what makes masking exact: an example's searchable
//! text is the concatenation of its tokens' bytes, so every token has a byte span and nothing has
//! to be re-tokenized or guessed.
//!
//! Families and their rules:
//! - byte-level BPE (GPT-2, Llama-3, Qwen2, Mistral Tekken): each character of a token string is
//!   one byte through the inverse of GPT-2's byte-to-unicode map;
//! - SentencePiece-style (Llama-2, Mistral v1/v3, Phi-3, Gemma, T5…): `▁` is a space and
//!   `<0xNN>` byte-fallback tokens are that byte;
//! - WordPiece (BERT): `##` continues a word, any other token starts one with a space (best
//!   effort: the text then reads like `decode` output);
//! - added/special tokens: their content.
//!
//! The *phantom* space: SentencePiece-style tokenizers prepend `▁` to the start of the text (and,
//! for Llama-2-style "always" tokenizers, to every segment after a special token). That byte is
//! not in the user's text, so [`crate::text`] gives it zero width. [`PhantomScheme`] records which
//! rule the tokenizer follows.
//!
//! The rule: docs/masking.md#searchable-text and #phantom-spaces.

use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, Mutex};

use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::{NormalizedString, Normalizer};

use crate::error::{Error, Result};

/// Flag: the id exists in the vocabulary.
pub(crate) const KNOWN: u8 = 1;
/// Flag: an added token that splits the text into segments (matched before normalization).
pub(crate) const SPLITS: u8 = 2;
/// Flag: the token's first byte is a word-start space that may be phantom.
pub(crate) const WORD_START: u8 = 4;
/// Flag: a special token that the post-processor puts before the text (BOS, `[CLS]`).
pub(crate) const PREFIX: u8 = 8;
/// Flag: an added or special token (content taken verbatim).
pub(crate) const ADDED: u8 = 16;

/// Where a SentencePiece-style tokenizer puts a `▁` that is not in the user's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhantomScheme {
    /// No phantom space (byte-level BPE, Gemma).
    Never,
    /// Only at the very start of the text (Metaspace `prepend_scheme="first"`, Mistral v3;
    /// WordPiece's word-start space).
    First,
    /// At the start of every segment: the text's start and after each special token
    /// (Llama-2 legacy, Phi-3, Mistral v1).
    Always,
}

/// How token strings map to bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoding {
    /// GPT-2 byte-to-unicode characters.
    ByteLevel,
    /// `▁` (or another replacement character) is a space; `<0xNN>` is a byte when `byte_fallback`.
    SentencePiece { replacement: char, byte_fallback: bool },
    /// WordPiece with its continuation prefix (`##`).
    WordPiece { prefix: String },
}

/// The byte table of one tokenizer.
///
/// ```
/// use sftmask::Vocab;
/// let json = r#"{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "Ġb": 2}, "merges": []},
///                "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false},
///                "decoder": {"type": "ByteLevel"},
///                "added_tokens": [{"id": 3, "content": "<eos>", "special": true, "normalized": false}]}"#;
/// let vocab = Vocab::from_json(json).unwrap();
/// assert_eq!(vocab.len(), 4);
/// assert_eq!(vocab.token_bytes(2), Some(&b" b"[..]));
/// assert_eq!(vocab.token_bytes(3), Some(&b"<eos>"[..]));
/// ```
pub struct Vocab {
    bytes: Vec<u8>,
    starts: Vec<u32>,
    flags: Vec<u8>,
    phantom: PhantomScheme,
    decoding: Decoding,
    template_normalizers: Vec<NormalizerWrapper>,
    fingerprint: u64,
}

impl fmt::Debug for Vocab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vocab")
            .field("len", &self.len())
            .field("decoding", &self.decoding)
            .field("phantom", &self.phantom)
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------------------------
// tokenizer.json, read lazily: only what the table needs (the merges can be megabytes).

#[derive(Deserialize)]
struct TokenizerFile<'a> {
    #[serde(default, borrow)]
    added_tokens: Vec<AddedTokenJson<'a>>,
    #[serde(default)]
    normalizer: Option<Value>,
    #[serde(default)]
    pre_tokenizer: Option<Value>,
    #[serde(default)]
    post_processor: Option<Value>,
    #[serde(default)]
    decoder: Option<Value>,
    #[serde(borrow)]
    model: ModelJson<'a>,
}

#[derive(Deserialize)]
struct AddedTokenJson<'a> {
    id: u32,
    #[serde(borrow)]
    content: Cow<'a, str>,
    #[serde(default)]
    special: bool,
    #[serde(default)]
    normalized: Option<bool>,
}

#[derive(Deserialize)]
struct ModelJson<'a> {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default, borrow)]
    vocab: Option<VocabJson<'a>>,
    #[serde(default)]
    byte_fallback: Option<bool>,
    #[serde(default)]
    continuing_subword_prefix: Option<String>,
    // Everything else (the merges can be megabytes) is skipped by serde without being kept.
}

/// A token string, borrowed from the JSON text unless it has escapes (most have none: no
/// allocation per token).
#[derive(Deserialize)]
struct Token<'a>(#[serde(borrow)] Cow<'a, str>);

/// `model.vocab`: a `{token: id}` map (BPE, WordPiece, WordLevel) or a `[[token, score], …]`
/// list (Unigram, where the id is the position).
struct VocabJson<'a>(Vec<(u32, Cow<'a, str>)>);

impl<'de: 'a, 'a> Deserialize<'de> for VocabJson<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = VocabJson<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of token to id, or a list of [token, score]")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> std::result::Result<VocabJson<'a>, A::Error> {
                let mut out = Vec::with_capacity(m.size_hint().unwrap_or(0));
                while let Some((Token(token), id)) = m.next_entry::<Token<'a>, u32>()? {
                    out.push((id, token));
                }
                Ok(VocabJson(out))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> std::result::Result<VocabJson<'a>, A::Error> {
                let mut out = Vec::with_capacity(s.size_hint().unwrap_or(0));
                let mut id = 0u32;
                while let Some((Token(token), _score)) = s.next_element::<(Token<'a>, f64)>()? {
                    out.push((id, token));
                    id += 1;
                }
                Ok(VocabJson(out))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// `model.type` and `model.vocab` of a tokenizer.json, and nothing else: the parser stops right
/// after the vocabulary when the type was already seen (where the tokenizers crate writes them,
/// before the merges, which are then never scanned: ~30% of a file); what comes before is
/// skipped without being kept.
fn model_vocab_of(file: &[u8]) -> Result<(Option<String>, VocabJson<'_>)> {
    use serde::de::{DeserializeSeed, Error as _, IgnoredAny};

    type Found<'a> = Option<(Option<String>, VocabJson<'a>)>;
    struct Top<'s, 'a>(&'s mut Found<'a>);
    struct Model<'s, 'a>(&'s mut Found<'a>);

    impl<'de: 'a, 'a> Visitor<'de> for Top<'_, 'a> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a tokenizer.json object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> std::result::Result<(), A::Error> {
            while let Some(Token(key)) = m.next_key::<Token<'de>>()? {
                if key == "model" {
                    m.next_value_seed(Model(&mut *self.0))?;
                } else {
                    m.next_value::<IgnoredAny>()?;
                }
            }
            Ok(())
        }
    }
    impl<'de: 'a, 'a> DeserializeSeed<'de> for Model<'_, 'a> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
            d.deserialize_map(self)
        }
    }
    impl<'de: 'a, 'a> Visitor<'de> for Model<'_, 'a> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a model object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> std::result::Result<(), A::Error> {
            let (mut kind, mut vocab) = (None, None);
            while let Some(Token(key)) = m.next_key::<Token<'de>>()? {
                match &*key {
                    "type" => kind = Some(m.next_value::<String>()?),
                    "vocab" => vocab = Some(m.next_value::<VocabJson<'a>>()?),
                    _ => {
                        m.next_value::<IgnoredAny>()?;
                    }
                }
                if kind.is_some() && vocab.is_some() {
                    *self.0 = Some((kind, vocab.unwrap_or(VocabJson(Vec::new()))));
                    // All that is needed is read: end the parse here. The caller knows this
                    // error by the filled slot.
                    return Err(A::Error::custom("stop"));
                }
            }
            *self.0 = Some((kind, vocab.unwrap_or(VocabJson(Vec::new()))));
            Ok(())
        }
    }

    let mut found: Found<'_> = None;
    let mut de = serde_json::Deserializer::from_slice(file);
    let parsed = de.deserialize_map(Top(&mut found));
    match (found, parsed) {
        (Some(found), _) => Ok(found),
        (None, Err(e)) => Err(Error::TokenizerJson(e.to_string())),
        (None, Ok(())) => Err(Error::TokenizerJson("missing field `model`".into())),
    }
}

/// Every component of a possibly nested `Sequence` (normalizers, pre-tokenizers, decoders,
/// processors all nest the same way, under different keys).
fn leaves(v: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    fn walk<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
        if v.is_null() {
            return;
        }
        if v.get("type").and_then(Value::as_str) == Some("Sequence") {
            for key in ["normalizers", "pretokenizers", "decoders", "processors"] {
                if let Some(items) = v.get(key).and_then(Value::as_array) {
                    for item in items {
                        walk(item, out);
                    }
                }
            }
        } else {
            out.push(v);
        }
    }
    walk(v, &mut out);
    out
}

fn type_of(v: &Value) -> &str {
    v.get("type").and_then(Value::as_str).unwrap_or("")
}

/// GPT-2's byte-to-unicode map, inverted: `char as u32` -> byte.
fn byte_level_inverse() -> [i16; 324] {
    let mut inv = [-1i16; 324];
    let mut n = 0u32;
    for b in 0u32..256 {
        let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        let ch = if printable {
            b
        } else {
            n += 1;
            255 + n
        };
        inv[ch as usize] = b as i16;
    }
    inv
}

fn decoding_of(file: &TokenizerFile) -> Result<Decoding> {
    let replacement_of = |v: &Value| -> char {
        v.get("replacement")
            .and_then(Value::as_str)
            .and_then(|s| s.chars().next())
            .unwrap_or('▁')
    };
    let byte_fallback_model = file.model.byte_fallback.unwrap_or(false);
    if let Some(dec) = file.decoder.as_ref().filter(|d| !d.is_null()) {
        let parts = leaves(dec);
        let has = |t: &str| parts.iter().any(|p| type_of(p) == t);
        if has("ByteLevel") {
            return Ok(Decoding::ByteLevel);
        }
        if let Some(m) = parts.iter().find(|p| type_of(p) == "Metaspace") {
            return Ok(Decoding::SentencePiece {
                replacement: replacement_of(m),
                byte_fallback: byte_fallback_model || has("ByteFallback"),
            });
        }
        // Llama-2-style decoders: Replace("▁", " ") + ByteFallback + Fuse + Strip.
        let replace_space = parts.iter().find(|p| {
            type_of(p) == "Replace"
                && p.get("content").and_then(Value::as_str) == Some(" ")
                && p.pointer("/pattern/String").and_then(Value::as_str).is_some()
        });
        if let Some(r) = replace_space {
            let pat = r.pointer("/pattern/String").and_then(Value::as_str).unwrap_or("▁");
            return Ok(Decoding::SentencePiece {
                replacement: pat.chars().next().unwrap_or('▁'),
                byte_fallback: byte_fallback_model || has("ByteFallback"),
            });
        }
        if let Some(w) = parts.iter().find(|p| type_of(p) == "WordPiece") {
            let prefix = w.get("prefix").and_then(Value::as_str).unwrap_or("##");
            return Ok(Decoding::WordPiece {
                prefix: prefix.to_owned(),
            });
        }
        let names: Vec<&str> = parts.iter().map(|p| type_of(p)).collect();
        return Err(Error::UnsupportedTokenizer(format!(
            "decoder {} is not supported (supported: ByteLevel, Metaspace, Replace('▁', ' ') + ByteFallback, WordPiece)",
            names.join(" + ")
        )));
    }
    // No decoder: fall back on the pre-tokenizer and the model.
    if let Some(pre) = file.pre_tokenizer.as_ref() {
        let parts = leaves(pre);
        if parts.iter().any(|p| type_of(p) == "ByteLevel") {
            return Ok(Decoding::ByteLevel);
        }
        if let Some(m) = parts.iter().find(|p| type_of(p) == "Metaspace") {
            return Ok(Decoding::SentencePiece {
                replacement: replacement_of(m),
                byte_fallback: byte_fallback_model,
            });
        }
    }
    match file.model.kind.as_deref() {
        Some("WordPiece") => Ok(Decoding::WordPiece {
            prefix: file
                .model
                .continuing_subword_prefix
                .clone()
                .unwrap_or_else(|| "##".into()),
        }),
        other => Err(Error::UnsupportedTokenizer(format!(
            "tokenizer.json has no decoder, and its model ({}) and pre-tokenizer do not say how tokens map to text",
            other.unwrap_or("unknown")
        ))),
    }
}

fn phantom_of(file: &TokenizerFile, decoding: &Decoding) -> PhantomScheme {
    if let Decoding::WordPiece { .. } = decoding {
        // Only the very first word of the text has no space before it.
        return PhantomScheme::First;
    }
    if let Some(pre) = file.pre_tokenizer.as_ref() {
        for p in leaves(pre) {
            match type_of(p) {
                "Metaspace" => {
                    if let Some(s) = p.get("prepend_scheme").and_then(Value::as_str) {
                        return match s {
                            "first" => PhantomScheme::First,
                            "never" => PhantomScheme::Never,
                            _ => PhantomScheme::Always,
                        };
                    }
                    // Files older than `prepend_scheme` say `add_prefix_space`.
                    return match p.get("add_prefix_space").and_then(Value::as_bool) {
                        Some(false) => PhantomScheme::Never,
                        _ => PhantomScheme::Always,
                    };
                }
                "ByteLevel" if p.get("add_prefix_space").and_then(Value::as_bool) == Some(true) => {
                    return PhantomScheme::Always;
                }
                _ => {}
            }
        }
    }
    if let Some(norm) = file.normalizer.as_ref() {
        let prepends = leaves(norm).iter().any(|n| {
            type_of(n) == "Prepend"
                && n.get("prepend")
                    .and_then(Value::as_str)
                    .is_some_and(|s| s.starts_with(['▁', ' ']))
        });
        if prepends {
            return PhantomScheme::Always;
        }
    }
    PhantomScheme::Never
}

/// Ids the post-processor puts before the text of a single sequence (BOS, `[CLS]`).
fn prefix_ids(post: Option<&Value>) -> Vec<u32> {
    let mut out = Vec::new();
    let Some(post) = post else { return out };
    for p in leaves(post) {
        match type_of(p) {
            "TemplateProcessing" => {
                let specials = p.get("special_tokens");
                if let Some(single) = p.get("single").and_then(Value::as_array) {
                    for piece in single {
                        if piece.get("Sequence").is_some() {
                            break;
                        }
                        let name = piece.pointer("/SpecialToken/id").and_then(Value::as_str);
                        let ids = name
                            .and_then(|n| specials.and_then(|s| s.get(n)))
                            .and_then(|s| s.get("ids"))
                            .and_then(Value::as_array);
                        for id in ids.into_iter().flatten() {
                            if let Some(id) = id.as_u64() {
                                out.push(id as u32);
                            }
                        }
                    }
                }
            }
            "BertProcessing" | "RobertaProcessing" => {
                if let Some(id) = p.pointer("/cls/1").and_then(Value::as_u64) {
                    out.push(id as u32);
                }
            }
            _ => {}
        }
    }
    out
}

/// The tokenizer's content-changing normalizers (Unicode forms, lower-casing…), applied to string
/// templates so they are written in the same form as the searchable text. Structural ones
/// (`Prepend("▁")`, `Replace(" ", "▁")`) are left out: the byte table already undoes them.
fn template_normalizers(norm: Option<&Value>) -> Result<Vec<NormalizerWrapper>> {
    let mut out = Vec::new();
    let Some(norm) = norm else { return Ok(out) };
    for n in leaves(norm) {
        let keep = matches!(
            type_of(n),
            "NFC" | "NFD" | "NFKC" | "NFKD" | "Lowercase" | "StripAccents" | "BertNormalizer" | "Precompiled" | "Nmt"
        );
        if keep {
            if type_of(n) == "Precompiled" {
                check_precompiled(n)?;
            }
            // The tokenizers crate panics on some corrupt normalizers (Precompiled charsmaps):
            // a bad tokenizer.json must be an error, not a crash.
            let parsed = std::panic::catch_unwind(|| serde_json::from_value::<NormalizerWrapper>(n.clone()));
            let w = match parsed {
                Ok(Ok(w)) => w,
                Ok(Err(e)) => return Err(Error::TokenizerJson(format!("normalizer {}: {e}", type_of(n)))),
                Err(_) => return Err(Error::TokenizerJson(format!("normalizer {} is corrupt", type_of(n)))),
            };
            out.push(w);
        }
    }
    Ok(out)
}

/// A SentencePiece charsmap starts with the byte size of its trie (u32, little-endian); a size
/// larger than the data would make the parser reserve that much memory before failing.
fn check_precompiled(n: &Value) -> Result<()> {
    let corrupt = || Error::TokenizerJson("normalizer Precompiled: the charsmap is corrupt".into());
    let Some(b64) = n.get("precompiled_charsmap").and_then(Value::as_str) else {
        return Err(corrupt());
    };
    let digit = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        })
    };
    let raw = b64.trim_end_matches('=').as_bytes();
    if raw.len() < 6 || raw.iter().any(|&c| digit(c).is_none()) {
        return Err(corrupt());
    }
    // The first 6 base64 digits hold the first 4 bytes (and 4 bits more).
    let bits = raw[..6]
        .iter()
        .fold(0u64, |acc, &c| (acc << 6) | u64::from(digit(c).unwrap_or(0)));
    let head = (bits >> 4) as u32;
    let trie_size = u32::from_le_bytes(head.to_be_bytes()) as usize;
    let data_len = raw.len() * 3 / 4;
    if trie_size > data_len.saturating_sub(4) || trie_size % 4 != 0 {
        return Err(corrupt());
    }
    Ok(())
}

fn content_hash(json: &str) -> u64 {
    // Keys the cache together with the length, so an accidental collision is negligible.
    let mut h = Mix::default();
    h.bytes(json.as_bytes());
    h.finish()
}

impl Vocab {
    /// Builds the table from the text of a `tokenizer.json`.
    ///
    /// ```
    /// let json = r#"{"model": {"type": "BPE", "vocab": {"▁Hi": 0, "<0x0A>": 1}, "merges": [], "byte_fallback": true},
    ///                "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": false},
    ///                "decoder": {"type": "Sequence", "decoders": [
    ///                   {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
    ///                   {"type": "ByteFallback"}, {"type": "Fuse"}]}}"#;
    /// let v = sftmask::Vocab::from_json(json).unwrap();
    /// assert_eq!(v.token_bytes(0), Some(&b" Hi"[..]));
    /// assert_eq!(v.token_bytes(1), Some(&b"\n"[..]));
    /// ```
    ///
    /// # Errors
    /// [`Error::TokenizerJson`] when the text is not a tokenizer.json, and
    /// [`Error::UnsupportedTokenizer`] when its decoder has no exact byte rule.
    pub fn from_json(json: &str) -> Result<Self> {
        let file: TokenizerFile = serde_json::from_str(json).map_err(|e| Error::TokenizerJson(e.to_string()))?;
        let model_vocab = file.model.vocab.as_ref().map(|v| v.0.as_slice()).unwrap_or(&[]);
        Self::build(&file, model_vocab)
    }

    /// Builds the table from a tokenizer.json text without its model vocabulary (`parts`: what
    /// a loaded tokenizer reports about itself, cheaply) and the model vocabulary of the file
    /// `vocab_file` (of which nothing else is read: the merges are skipped unparsed).
    ///
    /// This spares serializing a loaded tokenizer back to JSON (~0.3 s for a 128k vocabulary)
    /// when the file it was loaded from is at hand. The [`VocabFileCheck`] says what the caller
    /// must confirm against the loaded tokenizer before trusting the table: that its model has
    /// `len` ids and that each sampled id has the sampled token.
    ///
    /// ```
    /// let file = br#"{"model": {"type": "BPE", "vocab": {"a": 0, "\u0120b": 1}, "merges": ["a b"]}}"#;
    /// let parts = r#"{"model": {"type": "BPE"}, "decoder": {"type": "ByteLevel"},
    ///                 "added_tokens": [{"id": 2, "content": "<eos>", "special": true}]}"#;
    /// let (v, check) = sftmask::Vocab::from_parts(parts, file).unwrap();
    /// assert_eq!(v.token_bytes(1), Some(&b" b"[..]));
    /// assert_eq!(v.token_bytes(2), Some(&b"<eos>"[..]));
    /// assert_eq!(check.len, Some(2));
    /// assert_eq!(check.kind.as_deref(), Some("BPE"));
    /// assert!(check.sample.contains(&(1, "\u{120}b".to_string())));
    /// ```
    ///
    /// # Errors
    /// As [`Vocab::from_json`], for either text.
    pub fn from_parts(parts: &str, vocab_file: &[u8]) -> Result<(Self, VocabFileCheck)> {
        let file: TokenizerFile = serde_json::from_str(parts).map_err(|e| Error::TokenizerJson(e.to_string()))?;
        let (kind, vocab) = model_vocab_of(vocab_file)?;
        let model_vocab = vocab.0.as_slice();
        let table = Self::build(&file, model_vocab)?;
        Ok((
            table,
            VocabFileCheck {
                kind,
                len: unique_ids_len(model_vocab),
                sample: sample_of(model_vocab),
            },
        ))
    }

    fn build(file: &TokenizerFile<'_>, model_vocab: &[(u32, Cow<'_, str>)]) -> Result<Self> {
        if let Some(kind) = file.model.kind.as_deref() {
            if !matches!(kind, "BPE" | "WordPiece" | "WordLevel" | "Unigram") {
                return Err(Error::UnsupportedTokenizer(format!(
                    "model type {kind:?} is not supported (supported: BPE, WordPiece, WordLevel, Unigram)"
                )));
            }
        }
        let decoding = decoding_of(file)?;
        let phantom = phantom_of(file, &decoding);
        let template_normalizers = template_normalizers(file.normalizer.as_ref())?;

        let size = model_vocab
            .iter()
            .map(|(id, _)| *id as usize + 1)
            .chain(file.added_tokens.iter().map(|t| t.id as usize + 1))
            .max()
            .unwrap_or(0);
        if size == 0 {
            return Err(Error::TokenizerJson("the vocabulary is empty".into()));
        }
        if size > 16 << 20 {
            return Err(Error::TokenizerJson(format!(
                "a vocabulary of {size} ids is implausibly large"
            )));
        }

        // Every entry's bytes go into one scratch buffer (no allocation per token); `slot[id]`
        // is the entry that id ends up with (the last one written, as in the file's order).
        const NONE: u32 = u32::MAX;
        let mut scratch: Vec<u8> = Vec::with_capacity(model_vocab.len() * 8);
        let mut entries: Vec<(u32, u32, u8)> = Vec::with_capacity(model_vocab.len() + file.added_tokens.len());
        let mut slot = vec![NONE; size];
        let too_big = || Error::TokenizerJson("the vocabulary's text is implausibly large".into());
        let inverse = byte_level_inverse();
        for (id, token) in model_vocab {
            let start = scratch.len();
            let flags = token_bytes(token, &decoding, &inverse, &mut scratch);
            if scratch.len() > u32::MAX as usize / 2 {
                return Err(too_big());
            }
            slot[*id as usize] = entries.len() as u32;
            entries.push((start as u32, scratch.len() as u32, flags));
        }
        let prefixes = prefix_ids(file.post_processor.as_ref());
        let wordpiece = matches!(decoding, Decoding::WordPiece { .. });
        for t in &file.added_tokens {
            let start = scratch.len();
            let flags = if wordpiece {
                // WordPiece text reads like `decode` output: every token but a `##` piece is a
                // word preceded by a space, special tokens included.
                scratch.push(b' ');
                KNOWN | ADDED | WORD_START
            } else {
                // Special tokens are matched on the raw text; so are added tokens marked
                // `normalized: false`. Both end a segment (the next one may get a phantom `▁`).
                let normalized = t.normalized.unwrap_or(!t.special);
                if normalized {
                    KNOWN | ADDED
                } else {
                    KNOWN | ADDED | SPLITS
                }
            };
            scratch.extend_from_slice(t.content.as_bytes());
            if scratch.len() > u32::MAX as usize / 2 {
                return Err(too_big());
            }
            slot[t.id as usize] = entries.len() as u32;
            entries.push((start as u32, scratch.len() as u32, flags));
        }
        for id in prefixes {
            if let Some(&e) = slot.get(id as usize).filter(|e| **e != NONE) {
                entries[e as usize].2 |= PREFIX;
            }
        }

        let total: usize = slot
            .iter()
            .filter(|e| **e != NONE)
            .map(|&e| (entries[e as usize].1 - entries[e as usize].0) as usize)
            .sum();
        let mut bytes = Vec::with_capacity(total);
        let mut starts = Vec::with_capacity(size + 1);
        let mut flags = Vec::with_capacity(size);
        for &e in &slot {
            starts.push(bytes.len() as u32);
            if e == NONE {
                flags.push(0);
            } else {
                let (a, b, f) = entries[e as usize];
                bytes.extend_from_slice(&scratch[a as usize..b as usize]);
                flags.push(f);
            }
        }
        starts.push(bytes.len() as u32);
        let mut vocab = Vocab {
            bytes,
            starts,
            flags,
            phantom,
            decoding,
            template_normalizers,
            fingerprint: 0,
        };
        vocab.fingerprint = vocab.table_hash();
        Ok(vocab)
    }

    /// A hash of everything the table holds, so two tables are equal exactly when (up to a
    /// negligible chance) their fingerprints are, whatever text they were built from.
    fn table_hash(&self) -> u64 {
        let mut h = Mix::default();
        h.bytes(&self.bytes);
        for s in &self.starts {
            h.bytes(&s.to_le_bytes());
        }
        h.bytes(&self.flags);
        h.bytes(&[self.phantom as u8]);
        match &self.decoding {
            Decoding::ByteLevel => h.bytes(b"B"),
            Decoding::SentencePiece {
                replacement,
                byte_fallback,
            } => {
                h.bytes(b"S");
                h.bytes(&u32::from(*replacement).to_le_bytes());
                h.bytes(&[u8::from(*byte_fallback)]);
            }
            Decoding::WordPiece { prefix } => {
                h.bytes(b"W");
                h.bytes(&(prefix.len() as u64).to_le_bytes());
                h.bytes(prefix.as_bytes());
            }
        }
        for n in &self.template_normalizers {
            // The tokenizers crate's own serialization: the same for equal normalizers, however
            // the text they came from was written.
            let text = serde_json::to_string(n).unwrap_or_default();
            h.bytes(&(text.len() as u64).to_le_bytes());
            h.bytes(text.as_bytes());
        }
        h.finish()
    }

    /// Like [`Vocab::from_json`], but returns the table already built for the same text in this
    /// process (a small cache keyed by a hash of the text), so a second collator costs nothing.
    ///
    /// # Errors
    /// As [`Vocab::from_json`].
    pub fn cached_from_json(json: &str) -> Result<Arc<Self>> {
        const CAPACITY: usize = 8;
        static CACHE: Mutex<Vec<(u64, usize, Arc<Vocab>)>> = Mutex::new(Vec::new());
        let key = (content_hash(json), json.len());
        {
            let cache = CACHE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((_, _, v)) = cache.iter().find(|(h, n, _)| (*h, *n) == key) {
                return Ok(Arc::clone(v));
            }
        }
        let vocab = Arc::new(Vocab::from_json(json)?);
        let mut cache = CACHE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() >= CAPACITY {
            cache.remove(0);
        }
        cache.push((key.0, key.1, Arc::clone(&vocab)));
        Ok(vocab)
    }

    /// Number of ids (one more than the largest id).
    pub fn len(&self) -> usize {
        self.flags.len()
    }

    /// `true` for a table without ids (never built by [`Vocab::from_json`]).
    pub fn is_empty(&self) -> bool {
        self.flags.is_empty()
    }

    /// The bytes `id` stands for, without any phantom rule; `None` for an unknown id.
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        let i = id as usize;
        if i >= self.flags.len() || self.flags[i] & KNOWN == 0 {
            return None;
        }
        Some(&self.bytes[self.starts[i] as usize..self.starts[i + 1] as usize])
    }

    /// `true` when `id` is an added or special token.
    pub fn is_added(&self, id: u32) -> bool {
        self.flags.get(id as usize).is_some_and(|f| f & ADDED != 0)
    }

    /// The phantom-space rule of this tokenizer.
    pub fn phantom(&self) -> PhantomScheme {
        self.phantom
    }

    /// How token strings map to bytes.
    pub fn decoding(&self) -> &Decoding {
        &self.decoding
    }

    /// A stable hash of the table (every id's bytes and flags, the phantom and decoding rules,
    /// the template normalizers): equal tables have equal fingerprints, whichever text (or
    /// [`Vocab::from_parts`]) they were built from, in any process.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// Applies the tokenizer's content-changing normalization (e.g. NFC for Qwen) to a template
    /// written as text, so it matches the searchable text.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if a normalizer fails.
    pub fn normalize_template(&self, text: &str) -> Result<String> {
        if self.template_normalizers.is_empty() {
            return Ok(text.to_owned());
        }
        let mut n = NormalizedString::from(text);
        for norm in &self.template_normalizers {
            // See `template_normalizers`: a corrupt normalizer may panic inside tokenizers.
            let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| norm.normalize(&mut n)));
            match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(Error::InvalidArgument(format!("normalizing the template failed: {e}"))),
                Err(_) => return Err(Error::TokenizerJson("the tokenizer's normalizer is corrupt".into())),
            }
        }
        Ok(n.get().to_owned())
    }

    #[inline]
    pub(crate) fn raw(&self) -> (&[u8], &[u32], &[u8]) {
        (&self.bytes, &self.starts, &self.flags)
    }
}

/// Appends the bytes of `token` to `out`; returns its flags.
fn token_bytes(token: &str, decoding: &Decoding, inverse: &[i16; 324], out: &mut Vec<u8>) -> u8 {
    let start = out.len();
    match decoding {
        Decoding::ByteLevel => {
            for ch in token.chars() {
                match inverse.get(ch as usize).copied().filter(|b| *b >= 0) {
                    Some(b) => out.push(b as u8),
                    // Not a byte-level character: the token is literal text (some vocabularies
                    // carry such entries); take it as written.
                    None => {
                        out.truncate(start);
                        out.extend_from_slice(token.as_bytes());
                        return KNOWN;
                    }
                }
            }
            if out.get(start) == Some(&b' ') {
                KNOWN | WORD_START
            } else {
                KNOWN
            }
        }
        Decoding::SentencePiece {
            replacement,
            byte_fallback,
        } => {
            if *byte_fallback {
                if let Some(b) = byte_fallback_piece(token) {
                    out.push(b);
                    return KNOWN;
                }
            }
            let mut buf = [0u8; 4];
            for ch in token.chars() {
                if ch == *replacement {
                    out.push(b' ');
                } else {
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
            }
            if token.starts_with(*replacement) {
                KNOWN | WORD_START
            } else {
                KNOWN
            }
        }
        Decoding::WordPiece { prefix } => match token.strip_prefix(prefix.as_str()) {
            Some(rest) if !rest.is_empty() => {
                out.extend_from_slice(rest.as_bytes());
                KNOWN
            }
            _ => {
                out.push(b' ');
                out.extend_from_slice(token.as_bytes());
                KNOWN | WORD_START
            }
        },
    }
}

/// What [`Vocab::from_parts`] read from the vocabulary file, for the caller to confirm against
/// the tokenizer it has loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VocabFileCheck {
    /// The file's `model.type`.
    pub kind: Option<String>,
    /// The file's number of vocabulary entries when no id repeats in it; `None` otherwise (a
    /// loaded tokenizer keeps one of the tokens of a repeated id, which one is not known: do not
    /// trust the table). A loaded model has as many tokens as entries unless a token repeats.
    pub len: Option<usize>,
    /// Ids spread over the whole vocabulary, with the token the file gives each.
    pub sample: Vec<(u32, String)>,
}

/// `Some(number of entries)` when no id repeats. Holes are fine (a loaded model has them too,
/// where added tokens sit between model ids); a repeated id is not: which token a loaded model
/// keeps for it depends on a hash map's order.
fn unique_ids_len(model_vocab: &[(u32, Cow<'_, str>)]) -> Option<usize> {
    let max = model_vocab.iter().map(|(id, _)| *id as usize + 1).max().unwrap_or(0);
    let mut seen = vec![false; max];
    for (id, _) in model_vocab {
        if std::mem::replace(&mut seen[*id as usize], true) {
            return None;
        }
    }
    Some(model_vocab.len())
}

/// About a thousand entries, evenly spread, plus the last one.
fn sample_of(model_vocab: &[(u32, Cow<'_, str>)]) -> Vec<(u32, String)> {
    const SAMPLES: usize = 1024;
    let step = (model_vocab.len() / SAMPLES).max(1);
    let mut out: Vec<(u32, String)> = model_vocab
        .iter()
        .step_by(step)
        .chain(model_vocab.last())
        .map(|(id, t)| (*id, t.to_string()))
        .collect();
    out.dedup();
    out
}

/// A fast streaming 64-bit mix over 8-byte words (SipHash would cost ~30 ms on a 20 MB text).
/// Not for adversaries: it keys caches and tells tables apart.
#[derive(Default)]
struct Mix {
    h: u64,
    pending: [u8; 8],
    n: usize,
    total: u64,
}

impl Mix {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;

    #[inline]
    fn word(&mut self, w: u64) {
        self.h = (self.h ^ w).wrapping_mul(Self::K).rotate_left(29);
    }

    fn bytes(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        if self.n > 0 {
            let take = (8 - self.n).min(data.len());
            self.pending[self.n..self.n + take].copy_from_slice(&data[..take]);
            self.n += take;
            data = &data[take..];
            if self.n < 8 {
                return;
            }
            self.word(u64::from_le_bytes(self.pending));
            self.n = 0;
        }
        let mut chunks = data.chunks_exact(8);
        for c in &mut chunks {
            self.word(u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]));
        }
        let rest = chunks.remainder();
        self.pending[..rest.len()].copy_from_slice(rest);
        self.n = rest.len();
    }

    fn finish(mut self) -> u64 {
        if self.n > 0 {
            let mut last = [0u8; 8];
            last[..self.n].copy_from_slice(&self.pending[..self.n]);
            self.word(u64::from_le_bytes(last) ^ (self.n as u64) << 56);
        }
        self.word(self.total.wrapping_mul(Self::K));
        self.h ^ (self.h >> 32)
    }
}

/// `<0xNN>` -> the byte `NN`.
fn byte_fallback_piece(token: &str) -> Option<u8> {
    let hex = token.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// The id of the token whose text is `content`: an added/special token first, else any
/// token. WordPiece tables store added tokens as words, with their leading space, so that space
/// is allowed there.
///
/// ```
/// use sftmask::Vocab;
/// let json = r#"{"model": {"type": "BPE", "vocab": {"a": 0, "<eos>": 1}, "merges": []},
///                "added_tokens": [{"id": 1, "content": "<eos>", "special": true}], "decoder": {"type": "ByteLevel"}}"#;
/// let vocab = Vocab::from_json(json).unwrap();
/// assert_eq!(sftmask::vocab::token_id(&vocab, "<eos>"), Some(1));
/// assert_eq!(sftmask::vocab::token_id(&vocab, "zz"), None);
/// ```
pub fn token_id(vocab: &Vocab, content: &str) -> Option<u32> {
    let want = content.as_bytes();
    let wordpiece = matches!(vocab.decoding(), Decoding::WordPiece { .. });
    let is = |b: &[u8]| b == want || (wordpiece && b.len() == want.len() + 1 && b[0] == b' ' && &b[1..] == want);
    known_ids(vocab)
        .find(|&id| vocab.is_added(id) && vocab.token_bytes(id).is_some_and(is))
        .or_else(|| known_ids(vocab).find(|&id| vocab.token_bytes(id).is_some_and(is)))
}

/// Token ids of the table, for tests and tools: `id -> bytes` for every known id.
pub fn known_ids(vocab: &Vocab) -> impl Iterator<Item = u32> + '_ {
    vocab
        .flags
        .iter()
        .enumerate()
        .filter(|(_, f)| **f & KNOWN != 0)
        .map(|(i, _)| i as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_map_round_trips_all_bytes() {
        let inv = byte_level_inverse();
        let mut seen = [false; 256];
        for b in inv.iter().filter(|b| **b >= 0) {
            assert!(!seen[*b as usize]);
            seen[*b as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
        assert_eq!(inv['Ġ' as usize], b' ' as i16);
        assert_eq!(inv['Ċ' as usize], b'\n' as i16);
        assert_eq!(inv['A' as usize], b'A' as i16);
    }

    #[test]
    fn byte_fallback_pieces() {
        assert_eq!(byte_fallback_piece("<0x0A>"), Some(b'\n'));
        assert_eq!(byte_fallback_piece("<0xFF>"), Some(0xff));
        assert_eq!(byte_fallback_piece("<0x0>"), None);
        assert_eq!(byte_fallback_piece("0x0A"), None);
    }

    #[test]
    fn unknown_decoder_is_named() {
        let json = r#"{"model": {"type": "BPE", "vocab": {"a</w>": 0}, "merges": []},
                       "decoder": {"type": "CTC", "pad_token": "<pad>", "word_delimiter_token": "|", "cleanup": true}}"#;
        let err = Vocab::from_json(json).unwrap_err();
        assert!(err.to_string().contains("CTC"), "{err}");
    }

    #[test]
    fn corrupt_json_is_an_error() {
        assert!(matches!(Vocab::from_json("{\"model\": "), Err(Error::TokenizerJson(_))));
        assert!(matches!(Vocab::from_json("[]"), Err(Error::TokenizerJson(_))));
    }

    #[test]
    fn unigram_list_vocab() {
        let json = r#"{"model": {"type": "Unigram", "vocab": [["<unk>", 0.0], ["▁a", -1.0], ["b", -2.0]], "unk_id": 0},
                       "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true},
                       "decoder": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true}}"#;
        let v = Vocab::from_json(json).unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v.token_bytes(1), Some(&b" a"[..]));
        assert_eq!(v.phantom(), PhantomScheme::Always);
    }

    fn same_table(a: &Vocab, b: &Vocab) -> bool {
        a.raw() == b.raw() && a.phantom() == b.phantom() && a.decoding() == b.decoding()
    }

    const SP: &str = r#"{"added_tokens": [{"id": 1, "content": "<s>", "special": true, "normalized": false},
                          {"id": 4, "content": "▁x", "special": false, "normalized": true}],
                         "normalizer": {"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "Prepend", "prepend": "▁"}]},
                         "pre_tokenizer": null,
                         "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                                            "pair": [], "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
                         "decoder": {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"}]},
                         "model": {"type": "BPE", "byte_fallback": true,
                                   "vocab": {"<unk>": 0, "▁a": 2, "<0x0A>": 3, "b\u00e9": 5, "▁x": 4},
                                   "merges": [["▁", "a"]]}}"#;

    #[test]
    fn from_parts_equals_from_json() {
        let whole = Vocab::from_json(SP).unwrap();
        // The parts without a vocabulary, the vocabulary from a file written differently.
        let parts = SP.replace(
            r#""vocab": {"<unk>": 0, "▁a": 2, "<0x0A>": 3, "b\u00e9": 5, "▁x": 4},"#,
            "",
        );
        let file = r#"{ "model" : { "merges": [], "type": "BPE", "vocab": {"▁x": 4, "bé": 5, "<0x0A>": 3, "▁a": 2, "<unk>": 0} } }"#;
        let (v, check) = Vocab::from_parts(&parts, file.as_bytes()).unwrap();
        assert!(same_table(&v, &whole));
        assert_eq!(v.fingerprint(), whole.fingerprint());
        assert_eq!(v.token_bytes(5), Some("bé".as_bytes()));
        assert!(v.is_added(4) && v.raw().2[1] & PREFIX != 0);
        assert_eq!(check.len, Some(5), "holes (id 1) are fine");
        assert_eq!(check.kind.as_deref(), Some("BPE"));
        assert!(check.sample.contains(&(5, "bé".into())) && check.sample.contains(&(0, "<unk>".into())));
    }

    #[test]
    fn repeated_ids_are_not_vouched_for() {
        let file = br#"{"model": {"type": "BPE", "vocab": {"a": 0, "b": 0}}}"#;
        let parts = r#"{"model": {"type": "BPE"}, "decoder": {"type": "ByteLevel"}}"#;
        assert_eq!(Vocab::from_parts(parts, file).unwrap().1.len, None);
        let unigram = br#"{"model": {"type": "Unigram", "vocab": [["a", 0.0], ["a", -1.0]]}}"#;
        assert_eq!(Vocab::from_parts(parts, unigram).unwrap().1.len, Some(2));
        assert!(Vocab::from_parts(parts, b"{\"model\": ").is_err());
    }

    #[test]
    fn vocab_file_is_read_up_to_its_vocabulary() {
        let parts = r#"{"model": {"type": "BPE"}, "decoder": {"type": "ByteLevel"}}"#;
        let read = |file: &str| Vocab::from_parts(parts, file.as_bytes()).map(|(v, c)| (v.len(), c.kind, c.len));
        let want = Ok((2, Some("BPE".to_string()), Some(2)));
        // Where tokenizers writes them: the parse ends after the vocabulary, merges unread.
        assert_eq!(
            read(r#"{"added_tokens": [], "model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": [oops"#),
            want
        );
        // Type after the vocabulary: read to the end of the model.
        assert_eq!(
            read(r#"{"model": {"vocab": {"a": 0, "b": 1}, "merges": [], "type": "BPE"}, "x": 1}"#),
            want
        );
        assert!(read(r#"{"model": {"vocab": {"a": 0, "b": 1}, "merges": [oops"#).is_err());
        assert!(read(r#"{"added_tokens": [oops], "model": {"type": "BPE", "vocab": {"a": 0}}}"#).is_err());
        assert!(matches!(read(r#"{"version": "1.0"}"#), Err(Error::TokenizerJson(_))));
        assert!(matches!(read("[]"), Err(Error::TokenizerJson(_))));
    }

    #[test]
    fn fingerprint_is_the_tables() {
        let a = Vocab::from_json(SP).unwrap();
        let spaced = Vocab::from_json(&SP.replace(": ", " :  ")).unwrap();
        assert_eq!(a.fingerprint(), spaced.fingerprint(), "same table, other text");
        let other = Vocab::from_json(&SP.replace(r#""▁a": 2"#, r#""▁b": 2"#)).unwrap();
        assert_ne!(a.fingerprint(), other.fingerprint());
        let nfkc = Vocab::from_json(&SP.replace(r#"{"type": "NFC"}"#, r#"{"type": "NFKC"}"#)).unwrap();
        assert!(
            a.raw() == nfkc.raw() && a.fingerprint() != nfkc.fingerprint(),
            "normalizers count"
        );
    }

    #[test]
    fn mix_does_not_depend_on_chunking() {
        let data: Vec<u8> = (0..100u8).collect();
        let mut whole = Mix::default();
        whole.bytes(&data);
        let mut parts = Mix::default();
        for c in data.chunks(3) {
            parts.bytes(c);
        }
        assert_eq!(whole.finish(), parts.finish());
        let mut shorter = Mix::default();
        shorter.bytes(&data[..99]);
        let mut zero = Mix::default();
        zero.bytes(&[&data[..99], &[0u8][..]].concat());
        assert_ne!(shorter.finish(), zero.finish());
    }

    #[test]
    fn cache_returns_same_table() {
        let json = r#"{"model": {"type": "BPE", "vocab": {"x": 0}, "merges": []}, "decoder": {"type": "ByteLevel"}}"#;
        let a = Vocab::cached_from_json(json).unwrap();
        let b = Vocab::cached_from_json(json).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
    }
}
