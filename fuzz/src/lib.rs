//! Fuzz checks for the sftmask core, shared by the libFuzzer targets (`fuzz_targets/`) and the
//! stable fallback (`tests/stable_fuzz.rs`).
//!
//! [`Case`] is a structured input: a small synthetic `tokenizer.json` of one decoder family
//! (byte-level BPE, Metaspace, Llama-2-style Replace+ByteFallback, WordPiece, Unigram, no
//! decoder, unknown decoder), added/special tokens, a normalizer, a batch of ids (valid, unknown,
//! negative), templates (text or ids) and collation options. [`run_case`] builds everything
//! through the core's public API and checks, besides "no panic":
//!
//! - `collate` fails iff some id is invalid, and then names the first bad row;
//! - the searchable text: token spans are contiguous, each is the token's bytes or, for a
//!   phantom space, the bytes without their leading space (never one without a phantom rule);
//! - template occurrences, regions and labels equal an independent byte-by-byte oracle of
//!   the rule of docs/masking.md ([`naive_byte_rule`]: which template starts at each position, by slice
//!   comparison; then a left-to-right walk that gives each byte its role);
//! - `compat="trl"`: labels equal TRL 0.19.1's rule stated per position ([`naive_trl_labels`]),
//!   and the found flags and trained counts agree with them;
//! - `inspect` is deterministic;
//! - `collate` writes exactly `inspect`'s labels for every row, pads by position (pad id,
//!   `ignore_index`, attention 0), fills attention / positions / `cu_seq_lens`, masks the first
//!   label of each packed row, and gives the same arrays on 1 and 2 threads;
//! - the counts agree with the labels.

use std::sync::Arc;

use arbitrary::Arbitrary;
use serde_json::{json, Map, Value};
use sftmask::{Batch, Layout, Masker, PhantomScheme, RowIds, Stats, Template, TrainOn, Vocab};

/// Characters that text pieces are drawn from: few, so templates occur often.
const ALPHABET: &[char] = &['a', 'b', ' ', '\n', '<', '>', '|', 'é', '😀', '\u{301}'];

const MAX_TOKENS: usize = 48;
const MAX_ADDED: usize = 6;
const MAX_ROWS: usize = 8;
const MAX_ROW_LEN: usize = 96;

#[derive(Arbitrary, Debug)]
pub struct TokenSpec {
    text: Vec<u8>,
    /// WordPiece: a `##` continuation; byte-level: a literal (non byte-level) string.
    cont: bool,
    /// Metaspace/Llama-2 with byte fallback: a `<0xNN>` token instead.
    byte: Option<u8>,
}

#[derive(Arbitrary, Debug)]
pub struct AddedSpec {
    text: Vec<u8>,
    special: bool,
    normalized: Option<bool>,
    /// An explicit id (may collide with a model token); else the next free id.
    id: Option<u8>,
}

/// A row: raw ids, or a "chat" of template occurrences and filler text, tokenized greedily
/// (longest known token first) so that rows do contain their templates.
#[derive(Arbitrary, Debug)]
pub enum RowSpec {
    Ids(Vec<u16>),
    /// `(which, filler)`: which % 6 = 0 the response template, 1..=3 an instruction template,
    /// else none; then the filler text.
    Chat(Vec<(u8, Vec<u8>)>),
}

#[derive(Arbitrary, Debug)]
pub enum TemplateSpec {
    Text(Vec<u8>),
    Ids(Vec<u16>),
}

#[derive(Arbitrary, Debug)]
pub struct Case {
    family: u8,
    variant: u8,
    normalizer: u8,
    bos: bool,
    tokens: Vec<TokenSpec>,
    added: Vec<AddedSpec>,
    rows: Vec<RowSpec>,
    response: TemplateSpec,
    instructions: Vec<TemplateSpec>,
    ignore_index: u8,
    /// Bits: 1 train_on=last, 2 padding-free, 4 left padding, 8 compat=trl, 16 large parallel batch.
    options: u8,
    multiple_of: u8,
    pad: u16,
}

fn text_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()]).collect()
}

/// GPT-2's byte -> unicode map.
fn byte_level_char(b: u8) -> char {
    let mut n = 0u32;
    for x in 0u32..256 {
        let printable = (33..=126).contains(&x) || (161..=172).contains(&x) || (174..=255).contains(&x);
        let ch = if printable {
            x
        } else {
            n += 1;
            255 + n
        };
        if x == u32::from(b) {
            return char::from_u32(ch).unwrap();
        }
    }
    unreachable!()
}

struct Synth {
    json: String,
    /// Model + added token ids, to map fuzz ids into range.
    size: usize,
}

/// A tokenizer.json text for the case's family.
fn synthesize(case: &Case) -> Synth {
    let family = case.family % 7;
    let v = case.variant;
    let byte_fallback = v & 8 != 0;
    let replacement = if v & 16 != 0 && family != 2 { '_' } else { '▁' };
    let mut model_vocab: Vec<(String, u32)> = Vec::new();
    // Unless variant says otherwise, one token per alphabet character first, so any text can
    // be spelled; then the fuzzer's tokens.
    let base = if v & 0xC0 != 0xC0 { ALPHABET.len() } else { 0 };
    let specs = (0..base)
        .map(|i| TokenSpec {
            text: vec![i as u8],
            cont: false,
            byte: None,
        })
        .collect::<Vec<_>>();
    for (i, t) in specs.iter().chain(case.tokens.iter().take(MAX_TOKENS)).enumerate() {
        let text = text_of(&t.text);
        let s = match family {
            0 if t.cont => format!("{text}\u{2581}"), // not a byte-level character: literal token
            0 => text.bytes().map(byte_level_char).collect(),
            3 => {
                let word: String = text.chars().filter(|c| !c.is_whitespace()).collect();
                if t.cont {
                    format!("##{word}")
                } else {
                    word
                }
            }
            _ => match (byte_fallback, t.byte) {
                (true, Some(b)) => format!("<0x{b:02X}>"),
                _ => text.replace(' ', &replacement.to_string()),
            },
        };
        model_vocab.push((s, i as u32));
    }
    let mut next = model_vocab.len() as u32;
    let mut added = Vec::new();
    let mut specials = Vec::new();
    for a in case.added.iter().take(MAX_ADDED) {
        let id = match a.id {
            Some(id) => u32::from(id) % (next + 2),
            None => {
                next += 1;
                next - 1
            }
        };
        let content = format!("<|{}|>", text_of(&a.text));
        if a.special {
            specials.push((content.clone(), id));
        }
        let mut t = json!({"id": id, "content": content, "special": a.special});
        if let Some(n) = a.normalized {
            t["normalized"] = json!(n);
        }
        added.push(t);
        next = next.max(id + 1);
    }
    let vocab_value = if family == 4 {
        Value::Array(model_vocab.iter().map(|(s, _)| json!([s, -1.0])).collect())
    } else {
        let mut m = Map::new();
        for (s, id) in &model_vocab {
            m.insert(s.clone(), json!(id));
        }
        Value::Object(m)
    };
    let model_type = match family {
        3 => "WordPiece",
        4 => "Unigram",
        _ => "BPE",
    };
    let mut model = json!({"type": model_type, "vocab": vocab_value});
    if family != 4 {
        model["merges"] = json!([]);
    }
    if byte_fallback {
        model["byte_fallback"] = json!(true);
    }
    let metaspace = |v: u8| {
        let mut m = json!({"type": "Metaspace", "replacement": replacement.to_string(), "split": v & 32 != 0});
        match v % 4 {
            0 => m["prepend_scheme"] = json!("first"),
            1 => m["prepend_scheme"] = json!("always"),
            2 => m["prepend_scheme"] = json!("never"),
            _ => m["add_prefix_space"] = json!(v & 64 != 0),
        }
        m
    };
    let mut file = json!({"version": "1.0", "model": model, "added_tokens": added});
    match family {
        0 => {
            file["pre_tokenizer"] = json!({"type": "ByteLevel", "add_prefix_space": v & 1 != 0});
            file["decoder"] = json!({"type": "ByteLevel"});
        }
        1 | 4 => {
            file["pre_tokenizer"] = metaspace(v);
            file["decoder"] = metaspace(v);
        }
        2 => {
            if v & 1 != 0 {
                file["normalizer"] = json!({"type": "Sequence", "normalizers": [
                    {"type": "Prepend", "prepend": "▁"},
                    {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]});
            } else {
                file["pre_tokenizer"] = metaspace(v);
            }
            file["decoder"] = json!({"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0}]});
        }
        3 => {
            file["decoder"] = json!({"type": "WordPiece", "prefix": "##", "cleanup": true});
            if v & 1 != 0 {
                file["model"]["continuing_subword_prefix"] = json!("##");
                file["decoder"] = Value::Null;
            }
        }
        5 => match v % 3 {
            0 => file["pre_tokenizer"] = json!({"type": "ByteLevel", "add_prefix_space": false}),
            1 => file["pre_tokenizer"] = metaspace(v),
            _ => {}
        },
        _ => {
            let kind = ["CTC", "BPEDecoder", "Sequence"][v as usize % 3];
            file["decoder"] = json!({ "type": kind });
        }
    }
    if family != 2 {
        let norm = match case.normalizer % 7 {
            1 => json!({"type": "NFC"}),
            2 => json!({"type": "NFKC"}),
            3 => json!({"type": "Lowercase"}),
            4 => {
                json!({"type": "Sequence", "normalizers": [{"type": "NFD"}, {"type": "StripAccents"}, {"type": "Lowercase"}]})
            }
            5 => json!({"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                        "strip_accents": null, "lowercase": true}),
            #[cfg(feature = "precompiled")]
            6 => {
                let raw: Vec<u8> = case.tokens.iter().flat_map(|t| t.text.iter().copied()).collect();
                json!({"type": "Precompiled", "precompiled_charsmap": base64(&raw)})
            }
            _ => Value::Null,
        };
        file["normalizer"] = norm;
    }
    if case.bos {
        if let Some((content, id)) = specials.first() {
            let single = if family == 3 {
                file["post_processor"] = json!({"type": "BertProcessing", "sep": [content, id], "cls": [content, id]});
                None
            } else {
                Some(json!([{"SpecialToken": {"id": content, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]))
            };
            if let Some(single) = single {
                file["post_processor"] = json!({"type": "TemplateProcessing", "single": single, "pair": [],
                    "special_tokens": {content.clone(): {"id": content, "ids": [id], "tokens": [content]}}});
            }
        }
    }
    Synth {
        json: file.to_string(),
        size: next as usize,
    }
}

#[cfg(feature = "precompiled")]
fn base64(data: &[u8]) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A fuzz value as a token id: mostly in range, sometimes one past the end, sometimes negative.
fn id_of(v: u16, size: usize) -> i64 {
    match v {
        0xFFFF => -1,
        0xFFFE => i64::MIN,
        _ => (usize::from(v) % (size + 1)) as i64,
    }
}

/// Longest-match tokenization of `text` over the table's bytes (skipping bytes no token starts).
fn greedy_ids(vocab: &Vocab, text: &[u8]) -> Vec<i64> {
    let known: Vec<(u32, &[u8])> = sftmask::vocab::known_ids(vocab)
        .filter_map(|id| vocab.token_bytes(id).filter(|b| !b.is_empty()).map(|b| (id, b)))
        .collect();
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < text.len() {
        let best = known
            .iter()
            .filter(|(_, b)| text[pos..].starts_with(b))
            .max_by_key(|(id, b)| (b.len(), std::cmp::Reverse(*id)));
        match best {
            Some((id, b)) => {
                out.push(i64::from(*id));
                pos += b.len();
            }
            None => pos += 1,
        }
    }
    out
}

fn valid(vocab: &Vocab, id: i64) -> bool {
    u32::try_from(id).ok().and_then(|i| vocab.token_bytes(i)).is_some()
}

/// What one byte of the searchable text is, for the oracle below.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ByteRole {
    /// Part of a template occurrence (never trained).
    Template,
    /// Ordinary text after the `k`-th response occurrence of the row (counted from 0) and
    /// before any later occurrence of either kind.
    AfterResponse(usize),
    /// Ordinary text before any response occurrence, or after an instruction occurrence.
    Other,
}

/// The rule of docs/masking.md computed byte by byte, written independently of `src/search.rs` and
/// `src/regions.rs`: first, at every position, which template (if any) starts there, by slice
/// comparison (the response first, then the instructions in order); then a left-to-right walk
/// that skips over each occurrence it takes (so occurrences never overlap) and gives every byte
/// its role. Returns the occurrences taken and, per byte, whether it is in a trained region.
fn naive_byte_rule(
    text: &[u8],
    response: &[u8],
    instructions: &[Vec<u8>],
    train_last: bool,
) -> (Vec<(u32, u32, bool)>, Vec<bool>) {
    let templates: Vec<(&[u8], bool)> = std::iter::once((response, true))
        .chain(instructions.iter().map(|t| (t.as_slice(), false)))
        .collect();
    let starting_here: Vec<Option<(usize, bool)>> = (0..text.len())
        .map(|p| {
            templates
                .iter()
                .find(|(t, _)| !t.is_empty() && text.get(p..p + t.len()) == Some(*t))
                .map(|(t, is_response)| (t.len(), *is_response))
        })
        .collect();
    let mut occurrences = Vec::new();
    let mut roles = vec![ByteRole::Other; text.len()];
    let mut state = ByteRole::Other;
    let mut responses = 0usize;
    let mut p = 0usize;
    while p < text.len() {
        if let Some((len, is_response)) = starting_here[p] {
            occurrences.push((p as u32, (p + len) as u32, is_response));
            for role in &mut roles[p..p + len] {
                *role = ByteRole::Template;
            }
            state = if is_response {
                responses += 1;
                ByteRole::AfterResponse(responses - 1)
            } else {
                ByteRole::Other
            };
            p += len;
        } else {
            roles[p] = state;
            p += 1;
        }
    }
    // Without instruction templates only the last answer is trained (TRL's rule); with them,
    // every answer, or the last one under `train_on="last"`.
    let only_last = instructions.is_empty() || train_last;
    let trained = roles
        .iter()
        .map(|r| match r {
            ByteRole::AfterResponse(k) => !only_last || *k + 1 == responses,
            _ => false,
        })
        .collect();
    (occurrences, trained)
}

/// Maximal runs of `true` as half-open ranges.
fn runs(flags: &[bool]) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    for (i, &f) in flags.iter().enumerate() {
        match out.last_mut() {
            Some((_, end)) if f && *end == i as u32 => *end += 1,
            _ if f => out.push((i as u32, i as u32 + 1)),
            _ => {}
        }
    }
    out
}

/// TRL 0.19.1's rule for one row, stated per position from its documented behaviour (not from
/// `src/trl.rs`'s fill loops): the labels start as the ids with the pad id replaced by -100, and
/// templates are matched (overlaps allowed) in those labels.
/// - Response template only: no match masks the row; else every position before the end of the
///   last match is masked.
/// - With an instruction template: no response match, or no instruction match, masks the row.
///   Else, with `R` the response ends and `H` the instruction starts (with 0 put in front when
///   `H` starts after `R`), position `i` is masked iff some pair `k < min(|H|, |R|)` has
///   `start_k <= i < R[k]` (`start_0 = 0`), or `|R| < |H|` and `i >= H.last()`.
fn naive_trl_labels(ids: &[i64], response: &[i64], instruction: Option<&[i64]>, pad: i64, ignore: i64) -> Vec<i64> {
    let base: Vec<i64> = ids.iter().map(|&id| if id == pad { -100 } else { id }).collect();
    let starts = |t: &[i64]| -> Vec<usize> {
        (0..base.len())
            .filter(|&p| !t.is_empty() && base.get(p..p + t.len()) == Some(t))
            .collect()
    };
    let ends: Vec<usize> = starts(response).iter().map(|p| p + response.len()).collect();
    let masked: Vec<bool> = match instruction {
        None => match ends.last() {
            None => vec![true; base.len()],
            Some(&end) => (0..base.len()).map(|i| i < end).collect(),
        },
        Some(instruction) => {
            let mut human = starts(instruction);
            if ends.is_empty() || human.is_empty() {
                vec![true; base.len()]
            } else {
                if human[0] > ends[0] {
                    human.insert(0, 0);
                }
                let pairs = human.len().min(ends.len());
                (0..base.len())
                    .map(|i| {
                        (0..pairs).any(|k| (if k == 0 { 0 } else { human[k] }) <= i && i < ends[k])
                            || (ends.len() < human.len() && i >= *human.last().unwrap())
                    })
                    .collect()
            }
        }
    };
    base.iter()
        .zip(&masked)
        .map(|(&b, &m)| if m { ignore } else { b })
        .collect()
}

/// Whether `pattern` occurs (overlaps allowed) in `ids` with the pad id read as -100.
fn trl_found(ids: &[i64], pattern: &[i64], pad: i64) -> bool {
    let base: Vec<i64> = ids.iter().map(|&id| if id == pad { -100 } else { id }).collect();
    !pattern.is_empty() && base.windows(pattern.len()).any(|w| w == pattern)
}

/// How far a case got (for the stable driver's summary).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The synthetic tokenizer.json was refused (a clean error).
    NoVocab,
    /// The templates were refused (a clean error).
    NoMasker,
    /// Some id was invalid; collate refused it, naming the row.
    BadIds,
    /// Collated and checked; `found` when some row had a response template, `trained` when
    /// some label was trained.
    Checked {
        found: bool,
        trained: bool,
        trl: bool,
        parallel: bool,
    },
}

impl Outcome {
    /// A short name, used as the file name of seed corpus inputs (`corpus-seed/collate/`), whose
    /// replay checks that each input still reaches the outcome it was kept for.
    pub fn slug(&self) -> String {
        match *self {
            Outcome::NoVocab => "no-vocab".into(),
            Outcome::NoMasker => "no-masker".into(),
            Outcome::BadIds => "bad-ids".into(),
            Outcome::Checked {
                found,
                trained,
                trl,
                parallel,
            } => format!(
                "{}-{}{}{}",
                if trl { "trl" } else { "exact" },
                if found { "found" } else { "missing" },
                if trained { "-trained" } else { "" },
                if parallel { "-parallel" } else { "" }
            ),
        }
    }
}

/// Builds the case and checks every invariant; panics (a fuzz crash) on a violation.
pub fn run_case(case: &Case) -> Outcome {
    let synth = synthesize(case);
    let vocab = match Vocab::from_json(&synth.json) {
        Ok(v) => Arc::new(v),
        Err(e) => {
            if std::env::var_os("SFTMASK_FUZZ_DEBUG").is_some() {
                eprintln!("no vocab (family {}): {e}", case.family % 7);
            }
            return Outcome::NoVocab;
        } // unsupported families, empty vocabularies: a clean error is the contract
    };
    let size = synth.size.max(vocab.len());
    // An empty template is a clean error (tested elsewhere); here it falls back on a default so
    // that short inputs still reach the masking.
    let template = |t: &TemplateSpec, default: &str| match t {
        TemplateSpec::Text(b) if b.is_empty() => Template::Text(default.into()),
        TemplateSpec::Ids(ids) if ids.is_empty() => Template::Text(default.into()),
        TemplateSpec::Text(b) => Template::Text(text_of(&b[..b.len().min(6)])),
        // Mostly known ids; `id_of`'s specials (0xFFFF, 0xFFFE) and `size` stay possible.
        TemplateSpec::Ids(ids) => Template::Ids(
            ids.iter()
                .take(6)
                .map(|&v| {
                    if v >= 0xFFF0 {
                        id_of(v, size)
                    } else {
                        i64::from(v) % size as i64
                    }
                })
                .collect(),
        ),
    };
    let ignore_index = [-100i64, -1, 0, 1, 3][case.ignore_index as usize % 5];
    let trl = case.options & 8 != 0;
    let train_last = case.options & 1 != 0;
    let response = template(&case.response, "b|");
    let instructions: Vec<Template> = case
        .instructions
        .iter()
        .take(3)
        .enumerate()
        .map(|(i, t)| template(t, ["a|", "<a", "é>"][i]))
        .collect();
    let pad = id_of(case.pad, size);
    // TRL mode: the template ids, kept for the TRL oracle.
    let trl_templates = trl.then(|| {
        let ids = |t: &Template| match t {
            Template::Ids(ids) => ids.clone(),
            Template::Text(s) => s.bytes().map(|b| i64::from(b) % size as i64).collect(),
        };
        TrlTemplates {
            response: ids(&response),
            instruction: instructions.first().map(ids),
            pad,
        }
    });
    let masker = if let Some(t) = &trl_templates {
        Masker::trl(
            Arc::clone(&vocab),
            t.response.clone(),
            t.instruction.clone(),
            Some(pad),
            ignore_index,
        )
    } else {
        let train_on = if train_last { TrainOn::Last } else { TrainOn::All };
        Masker::new(Arc::clone(&vocab), &response, &instructions, ignore_index, train_on)
    };
    let masker = match masker {
        Ok(m) => m,
        Err(e) => {
            if std::env::var_os("SFTMASK_FUZZ_DEBUG").is_some() {
                eprintln!("no masker: {e}");
            }
            return Outcome::NoMasker;
        }
    };
    let (response_bytes, instruction_bytes) = masker.template_texts().expect("template texts");
    if !trl {
        assert!(!response_bytes.is_empty(), "an empty template was accepted");
    }

    let mut rows: Vec<Vec<i64>> = case
        .rows
        .iter()
        .take(MAX_ROWS)
        .map(|r| match r {
            RowSpec::Ids(ids) => ids.iter().take(MAX_ROW_LEN).map(|&v| id_of(v, size)).collect(),
            RowSpec::Chat(parts) => {
                let mut text = Vec::new();
                for (which, filler) in parts.iter().take(8) {
                    match which % 6 {
                        0 => text.extend_from_slice(&response_bytes),
                        1..=3 => text.extend(instruction_bytes.get(usize::from(which % 6) - 1).into_iter().flatten()),
                        _ => {}
                    }
                    text.extend(text_of(&filler[..filler.len().min(8)]).bytes());
                }
                let mut ids = greedy_ids(&vocab, &text);
                ids.truncate(MAX_ROW_LEN);
                ids
            }
        })
        .collect();
    if rows.is_empty() {
        rows.push(Vec::new());
    }
    // Per row: inspect, checked against the naive rule.
    let mut expected: Vec<Option<Vec<i64>>> = Vec::with_capacity(rows.len());
    for ids in &rows {
        let all_valid = ids.iter().all(|&id| valid(&vocab, id));
        match masker.inspect(ids) {
            Err(e) => {
                assert!(!all_valid, "inspect failed on valid ids: {e}");
                expected.push(None);
            }
            Ok(seen) => {
                assert!(all_valid, "inspect accepted an invalid id in {ids:?}");
                check_inspection(
                    &vocab,
                    &masker,
                    ids,
                    &seen,
                    &response_bytes,
                    &instruction_bytes,
                    train_last,
                    trl_templates.as_ref(),
                );
                expected.push(Some(seen.labels));
            }
        }
    }
    // Large batches (the parallel path): the same rows repeated, when they are long enough that
    // at most a few thousand rows are needed.
    let base_tokens: usize = rows.iter().map(Vec::len).sum();
    let large = case.options & 16 != 0 && base_tokens >= 16;
    if large {
        let (base_rows, base_expected) = (rows.clone(), expected.clone());
        while rows.iter().map(Vec::len).sum::<usize>() < sftmask::masker::PARALLEL_MIN_TOKENS {
            rows.extend(base_rows.iter().cloned());
            expected.extend(base_expected.iter().cloned());
        }
    }
    let first_bad = expected.iter().position(Option::is_none);

    let flat = case.options & 2 != 0;
    let left = case.options & 4 != 0;
    let multiple_of = match case.multiple_of % 4 {
        0 => None,
        m => Some([1usize, 8, 64][m as usize - 1]),
    };
    let layout = if flat {
        Layout::Flat
    } else {
        Layout::Padded { left, multiple_of }
    };
    let run = |threads: usize, in_place: bool| -> (Batch, sftmask::Result<Stats>) {
        let lengths = rows.iter().map(Vec::len).collect();
        let mut batch = Batch::new(lengths, layout, pad, masker.padding_label()).expect("batch");
        if in_place {
            for (r, ids) in rows.iter().enumerate() {
                batch.row_ids_mut(r).copy_from_slice(ids);
            }
        }
        // Sources: in place, i64 slices, or i32 slices where the ids fit.
        let narrow: Vec<Option<Vec<i32>>> = rows
            .iter()
            .map(|r| r.iter().map(|&i| i32::try_from(i).ok()).collect())
            .collect();
        let sources: Vec<RowIds<'_>> = rows
            .iter()
            .zip(&narrow)
            .enumerate()
            .map(|(i, (r, n))| match (in_place, i % 2, n) {
                (true, _, _) => RowIds::InPlace,
                (false, 1, Some(n)) => RowIds::I32(n),
                _ => RowIds::I64(r),
            })
            .collect();
        let stats = masker.collate(&mut batch, &sources, &[], threads);
        (batch, stats)
    };
    let (batch, stats) = run(1, false);
    match (first_bad, &stats) {
        (Some(r), Err(e)) => {
            assert!(e.to_string().contains(&format!("row {r}:")), "{e} should name row {r}");
            Outcome::BadIds
        }
        (Some(r), Ok(_)) => panic!("collate accepted row {r} with an invalid id"),
        (None, Err(e)) => panic!("collate failed on valid ids: {e}"),
        (None, Ok(stats)) => {
            let expected: Vec<Vec<i64>> = expected.into_iter().map(Option::unwrap).collect();
            check_batch(
                &batch,
                stats,
                &rows,
                &expected,
                &masker,
                pad,
                flat,
                left,
                multiple_of,
                trl_templates.as_ref(),
            );
            // Other sources and thread counts fill identical arrays.
            for (threads, in_place) in [(2, true), (if large { 3 } else { 2 }, false)] {
                let (b2, s2) = run(threads, in_place);
                assert_eq!(s2.as_ref().ok(), Some(stats), "stats differ with {threads} threads");
                assert_eq!(b2.input_ids, batch.input_ids);
                assert_eq!(b2.labels, batch.labels, "labels differ with {threads} threads");
                assert_eq!(b2.attention_mask, batch.attention_mask);
                assert_eq!(b2.position_ids, batch.position_ids);
                assert_eq!(b2.cu_seq_lens, batch.cu_seq_lens);
            }
            Outcome::Checked {
                found: stats.missing_rows.len() < rows.len(),
                trained: stats.trained_tokens > 0,
                trl,
                parallel: large,
            }
        }
    }
}

/// The templates of a `compat="trl"` case, as the masker got them.
struct TrlTemplates {
    response: Vec<i64>,
    instruction: Option<Vec<i64>>,
    pad: i64,
}

#[allow(clippy::too_many_arguments)]
fn check_inspection(
    vocab: &Vocab,
    masker: &Masker,
    ids: &[i64],
    seen: &sftmask::Inspection,
    response: &[u8],
    instructions: &[Vec<u8>],
    train_last: bool,
    trl: Option<&TrlTemplates>,
) {
    let ignore = masker.ignore_index();
    assert_eq!(seen.ends.len(), ids.len());
    assert_eq!(seen.labels.len(), ids.len());
    assert_eq!(seen.ends.last().copied().unwrap_or(0) as usize, seen.text.len());
    let mut start = 0u32;
    for (i, (&id, &end)) in ids.iter().zip(&seen.ends).enumerate() {
        assert!(end >= start, "token {i}: ends go backwards");
        let span = &seen.text[start as usize..end as usize];
        let bytes = vocab.token_bytes(id as u32).unwrap();
        let phantom = vocab.phantom() != PhantomScheme::Never && bytes.first() == Some(&b' ') && span == &bytes[1..];
        assert!(
            span == bytes || phantom,
            "token {i} (id {id}): span {span:?} is not its bytes {bytes:?}"
        );
        start = end;
    }
    for (&l, &id) in seen.labels.iter().zip(ids) {
        assert!(
            l == id || l == ignore || (trl.is_some() && l == -100),
            "label {l} is neither {id} nor {ignore}"
        );
    }
    // The same ids give the same inspection.
    let again = masker.inspect(ids).expect("inspect succeeded once");
    assert_eq!(again.labels, seen.labels, "inspect is not deterministic");
    assert_eq!(again.text, seen.text);
    if let Some(t) = trl {
        check_trl_row(ids, seen, t, ignore);
        return;
    }
    let (occ, in_region) = naive_byte_rule(&seen.text, response, instructions, train_last);
    let got: Vec<(u32, u32, bool)> = seen
        .occurrences
        .iter()
        .map(|o| (o.start, o.end, o.is_response))
        .collect();
    assert_eq!(got, occ, "occurrences in {:?}", String::from_utf8_lossy(&seen.text));
    assert_eq!(
        seen.regions,
        runs(&in_region),
        "regions in {:?}",
        String::from_utf8_lossy(&seen.text)
    );
    let mut start = 0u32;
    let mut trained = 0u64;
    for (i, (&id, &end)) in ids.iter().zip(&seen.ends).enumerate() {
        let (s, e) = (start as usize, end as usize);
        // Trained iff one of its bytes is in a region; a zero-width token iff the byte at its
        // offset is.
        let hit = if e > s {
            in_region[s..e].iter().any(|&b| b)
        } else {
            in_region.get(s).copied().unwrap_or(false)
        };
        let want = if hit {
            trained += 1;
            id
        } else {
            ignore
        };
        assert_eq!(
            seen.labels[i],
            want,
            "token {i} span {start}..{end} in {:?}",
            String::from_utf8_lossy(&seen.text)
        );
        start = end;
    }
    assert_eq!(seen.stats.trained, trained);
    assert_eq!(seen.stats.found, occ.iter().any(|o| o.2));
}

/// `compat="trl"`: the labels are TRL's rule (see [`naive_trl_labels`]), and the row's counts and
/// found flags agree with them.
fn check_trl_row(ids: &[i64], seen: &sftmask::Inspection, t: &TrlTemplates, ignore: i64) {
    let want = naive_trl_labels(ids, &t.response, t.instruction.as_deref(), t.pad, ignore);
    assert_eq!(
        seen.labels, want,
        "TRL labels of {ids:?} (response {:?}, instruction {:?}, pad {})",
        t.response, t.instruction, t.pad
    );
    let response_found = trl_found(ids, &t.response, t.pad);
    assert_eq!(seen.stats.found, response_found, "TRL response found");
    if let Some(ins) = &t.instruction {
        // TRL searches the instruction in the labels after a row without a response was
        // masked whole: then it is "found" only when it is made of ignore_index alone.
        let instruction_found = if response_found {
            trl_found(ids, ins, t.pad)
        } else {
            ins.len() <= ids.len() && ins.iter().all(|&id| id == ignore)
        };
        assert_eq!(seen.stats.instruction_found, instruction_found, "TRL instruction found");
    } else {
        assert!(seen.stats.instruction_found);
    }
    let trained = want.iter().filter(|&&l| l != ignore && l != -100).count() as u64;
    assert_eq!(seen.stats.trained, trained, "TRL trained count");
    assert!(seen.occurrences.is_empty() && seen.regions.is_empty());
}

#[allow(clippy::too_many_arguments)]
fn check_batch(
    batch: &Batch,
    stats: &Stats,
    rows: &[Vec<i64>],
    expected: &[Vec<i64>],
    masker: &Masker,
    pad: i64,
    flat: bool,
    left: bool,
    multiple_of: Option<usize>,
    trl: Option<&TrlTemplates>,
) {
    let ignore = masker.ignore_index();
    let padding_label = masker.padding_label();
    let longest = rows.iter().map(Vec::len).max().unwrap_or(0);
    let (b, width) = batch.shape();
    assert_eq!(stats.rows as usize, rows.len());
    assert_eq!(stats.tokens as usize, rows.iter().map(Vec::len).sum::<usize>());
    if flat {
        let total: usize = rows.iter().map(Vec::len).sum();
        assert_eq!((b, width), (1, total));
        let mut acc = 0usize;
        assert_eq!(batch.cu_seq_lens[0], 0);
        for (r, ids) in rows.iter().enumerate() {
            let range = acc..acc + ids.len();
            assert_eq!(&batch.input_ids[range.clone()], ids.as_slice());
            let positions: Vec<i64> = (0..ids.len() as i64).collect();
            assert_eq!(&batch.position_ids[range.clone()], positions.as_slice());
            let mut want = expected[r].clone();
            if let Some(f) = want.first_mut() {
                *f = ignore;
            }
            assert_eq!(&batch.labels[range], want.as_slice(), "row {r}");
            acc += ids.len();
            assert_eq!(batch.cu_seq_lens[r + 1] as usize, acc);
        }
        assert_eq!(batch.max_length(), longest);
    } else {
        let want_width = multiple_of.map_or(longest, |m| longest.div_ceil(m) * m);
        assert_eq!((b, width), (rows.len(), want_width));
        let mut trained = 0u64;
        for (r, ids) in rows.iter().enumerate() {
            let off = if left { width - ids.len() } else { 0 };
            // TRL masks the padded row: its rule, run on the padded ids, labels the padding
            // (-100 from the parent, or ignore_index where a masked range covers it).
            let padded_labels = trl.map(|t| {
                let mut padded = vec![pad; width];
                padded[off..off + ids.len()].copy_from_slice(ids);
                naive_trl_labels(&padded, &t.response, t.instruction.as_deref(), t.pad, ignore)
            });
            for c in 0..width {
                let k = r * width + c;
                if c >= off && c < off + ids.len() {
                    assert_eq!(batch.input_ids[k], ids[c - off]);
                    assert_eq!(batch.labels[k], expected[r][c - off]);
                    assert_eq!(batch.attention_mask[k], 1);
                } else {
                    assert_eq!(batch.input_ids[k], pad, "padding holds the pad id");
                    let want = padded_labels.as_ref().map_or(padding_label, |l| l[c]);
                    assert_eq!(batch.labels[k], want, "padding is masked by position");
                    assert_eq!(batch.attention_mask[k], 0);
                }
            }
            if !masker.is_trl() {
                trained += expected[r]
                    .iter()
                    .zip(ids)
                    .filter(|(l, id)| *l == *id && **l != ignore)
                    .count() as u64;
            }
        }
        if !masker.is_trl() && !rows.iter().flatten().any(|&id| id == ignore) {
            assert_eq!(stats.trained_tokens, trained, "trained count");
        }
    }
    if masker.is_trl() {
        // TRL mode counts a label as trained when it is neither ignore_index nor -100; a packed
        // row's first label is masked after counting.
        let counted = |l: i64| l != ignore && l != -100;
        let trained: u64 = expected
            .iter()
            .map(|labels| {
                let n = labels.iter().filter(|&&l| counted(l)).count() as u64;
                n - u64::from(flat && labels.first().is_some_and(|&l| counted(l)))
            })
            .sum();
        assert_eq!(stats.trained_tokens, trained, "TRL trained count");
        let missing: Vec<usize> = (0..rows.len())
            .filter(|&r| masker.inspect(&rows[r]).is_ok_and(|s| !s.stats.found))
            .collect();
        assert_eq!(stats.missing_rows, missing, "TRL rows without a response");
    }
}

/// Raw bytes as a tokenizer.json: never a panic; when it loads, a masker over it works.
pub fn run_json(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(vocab) = Vocab::from_json(text) else { return };
    let vocab = Arc::new(vocab);
    let n = vocab.len().min(64) as i64;
    let ids: Vec<i64> = (0..n).filter(|&i| valid(&vocab, i)).collect();
    for template in [Template::Text("a".into()), Template::Text("<|x|>\n".into())] {
        if let Ok(m) = Masker::new(Arc::clone(&vocab), &template, &[], -100, TrainOn::All) {
            let seen = m.inspect(&ids).expect("valid ids");
            assert_eq!(seen.labels.len(), ids.len());
        }
    }
    let _ = vocab.normalize_template("Ab\u{301}");
}
