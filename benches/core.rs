//! Criterion benchmarks of the pure-Rust core (no Python involved).
//!
//! ```bash
//! SFTMASK_BENCH_TOKENIZER_DIR=/path/to/tests/.tokenizer-cache cargo bench --bench core
//! cargo bench --bench core -- collate     # one group
//! ```
//!
//! Groups:
//! - `vocab_build`: the byte table, built from Llama-3's tokenizer.json (128,256 ids) and from a
//!   synthetic 262,144-id vocabulary (see [`synthetic_262k`]); `vocab_cache_hit` is the cost of
//!   [`Vocab::cached_from_json`] once the table is cached (what a second collator built from the
//!   same JSON text pays: hashing the text).
//! - `row`: one realistic Llama-3 chat row through each step of the pipeline (searchable text,
//!   template search, regions, labels) and through all of them, per token.
//! - `collate`: [`Masker::collate`] (output allocation + padding or flattening + masking) on
//!   batches of 8 and 64 rows, on 1 and 2 threads, next to the bare copy floor (allocate the
//!   padded `[B, L]` int64 array and copy the ids into it).
//! - `what_if_text`: a prototype of a change the profile suggested (not the crate's code), next
//!   to the crate's own function on the same input: a 16-byte-slot table for the searchable text.
//!
//! The tokenizer comes from the test fixtures (`tests/fixtures/build_tokenizers.py` builds it):
//! `$SFTMASK_BENCH_TOKENIZER_DIR` (a folder holding `tokenizer.json`, or the fixture cache with
//! `llama3/tokenizer.json`), else `$SFTMASK_TOKENIZER_CACHE/llama3/`, else
//! `tests/.tokenizer-cache/llama3/`. Without it the benchmarks are skipped with a message.

use std::collections::HashSet;
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput};
use serde_json::Value;
use sftmask::{
    fill_labels, regions, Batch, Layout, Masker, Occurrence, Region, RowIds, SearchText, Template, Templates, TrainOn,
    Vocab,
};

const RESPONSE: &str = "<|start_header_id|>assistant<|end_header_id|>\n\n";
const USER: &str = "<|start_header_id|>user<|end_header_id|>\n\n";
const SYSTEM: &str = "<|start_header_id|>system<|end_header_id|>\n\n";
const EOT: &str = "<|eot_id|>";
const BOS: &str = "<|begin_of_text|>";
/// Llama-3.1's `<|finetune_right_pad_id|>`.
const PAD_ID: i64 = 128_004;
const IGNORE: i64 = -100;

fn tokenizer_json_path() -> Option<PathBuf> {
    let candidates = |dir: PathBuf| [dir.join("tokenizer.json"), dir.join("llama3").join("tokenizer.json")];
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("SFTMASK_BENCH_TOKENIZER_DIR") {
        dirs.push(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("SFTMASK_TOKENIZER_CACHE") {
        dirs.push(PathBuf::from(d));
    }
    dirs.push(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests")
            .join(".tokenizer-cache"),
    );
    dirs.into_iter().flat_map(candidates).find(|p| p.is_file())
}

// ---------------------------------------------------------------------------------------------
// Deterministic synthetic chat text (no dependency on a random-number crate).

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

const WORDS: &[&str] = &[
    "the",
    "model",
    "answer",
    "data",
    "training",
    "function",
    "returns",
    "value",
    "because",
    "which",
    "token",
    "sequence",
    "example",
    "should",
    "would",
    "could",
    "about",
    "between",
    "result",
    "python",
    "error",
    "memory",
    "batch",
    "question",
    "explain",
    "simple",
    "important",
    "different",
    "people",
    "history",
    "river",
    "mountain",
    "energy",
    "system",
    "language",
    "number",
    "first",
    "second",
    "however",
    "therefore",
    "algorithm",
    "request",
    "server",
    "client",
    "performance",
    "gradient",
    "loss",
    "layer",
    "attention",
    "the",
    "a",
    "of",
    "to",
    "and",
    "in",
    "is",
    "it",
    "that",
    "for",
    "on",
    "with",
    "as",
    "this",
    "be",
    "are",
    "was",
    "by",
    "from",
    "or",
    "an",
    "café",
    "naïve",
    "Zürich",
    "東京",
    "数据",
    "🙂",
    "résumé",
];

fn sentence(rng: &mut Rng, out: &mut String) {
    let n = 6 + rng.below(14);
    for i in 0..n {
        let w = WORDS[rng.below(WORDS.len())];
        if i == 0 {
            let mut c = w.chars();
            if let Some(f) = c.next() {
                out.extend(f.to_uppercase());
                out.push_str(c.as_str());
            }
        } else {
            out.push(' ');
            out.push_str(w);
        }
        if rng.chance(0.05) {
            out.push_str(&format!(" {}", rng.below(100_000)));
        }
        if rng.chance(0.06) {
            out.push(',');
        }
    }
    out.push_str([".", ".", ".", "?", "!", ":"][rng.below(6)]);
}

fn content(rng: &mut Rng, chars: usize, out: &mut String) {
    let start = out.len();
    if rng.chance(0.15) {
        // Answers that start with a newline: the case where Llama-3 merges the header's "\n\n"
        // with the text and TRL's token search misses the template.
        out.push('\n');
    }
    while out.len() - start < chars {
        match rng.below(10) {
            0 => {
                out.push_str("\n\n```python\ndef f(x):\n    return x * 2  # double\n```\n\n");
            }
            1 => {
                out.push_str(&format!("\n{}. ", 1 + rng.below(9)));
                sentence(rng, out);
            }
            2 => out.push_str("\n\n"),
            _ => {
                out.push(' ');
                sentence(rng, out);
            }
        }
    }
}

/// A Llama-3 chat of about `chars` characters: a system turn and `turns` user/assistant pairs.
fn chat(rng: &mut Rng, chars: usize, turns: usize) -> String {
    let mut s = String::with_capacity(chars + 256);
    s.push_str(BOS);
    s.push_str(SYSTEM);
    s.push_str("You are a helpful assistant.");
    s.push_str(EOT);
    let per_turn = chars / turns.max(1);
    for _ in 0..turns {
        s.push_str(USER);
        content(rng, per_turn / 4, &mut s);
        s.push_str(EOT);
        s.push_str(RESPONSE);
        content(rng, per_turn * 3 / 4, &mut s);
        s.push_str(EOT);
    }
    s
}

/// Rows of `lo..=hi` tokens (cut at a token boundary after a full chat was encoded long enough).
fn rows(tok: &tokenizers::Tokenizer, seed: u64, n: usize, lo: usize, hi: usize, turns: usize) -> Vec<Vec<i64>> {
    let mut rng = Rng(seed);
    (0..n)
        .map(|_| {
            let want = lo + rng.below(hi - lo + 1);
            let text = chat(&mut rng, want * 5, turns);
            let enc = tok.encode(text.as_str(), false).expect("encode");
            let ids = enc.get_ids();
            assert!(ids.len() >= want, "generated chat too short: {} < {want}", ids.len());
            ids[..want].iter().map(|&i| i64::from(i)).collect()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// A 262,144-id vocabulary.

/// No tokenizer in the fixture set has a ~262k vocabulary (Gemma 3's size), so one is
/// synthesized: Llama-3's tokenizer.json with its model vocabulary extended by generated
/// byte-level tokens (each the concatenation of two existing tokens, like a BPE merge, with the
/// matching merge appended) until the ids reach 262,144. The table build does the same work per
/// id as for a real vocabulary of that size; the file is ~2x Llama-3's.
fn synthetic_262k(json: &str) -> String {
    const TARGET: usize = 262_144;
    let mut file: Value = serde_json::from_str(json).expect("tokenizer.json");
    let next_id = file["added_tokens"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["id"].as_u64())
        .chain(
            file["model"]["vocab"]
                .as_object()
                .expect("model.vocab")
                .values()
                .filter_map(Value::as_u64),
        )
        .max()
        .expect("ids") as usize
        + 1;
    let base: Vec<String> = file["model"]["vocab"]
        .as_object()
        .expect("model.vocab")
        .keys()
        .cloned()
        .collect();
    let mut seen: HashSet<String> = base.iter().cloned().collect();
    let mut rng = Rng(0x5EED_0262);
    let mut new_tokens = Vec::with_capacity(TARGET - next_id);
    while next_id + new_tokens.len() < TARGET {
        let a = &base[rng.below(base.len())];
        let b = &base[rng.below(base.len())];
        let t = format!("{a}{b}");
        if t.chars().count() <= 24 && seen.insert(t.clone()) {
            new_tokens.push((t, a.clone(), b.clone()));
        }
    }
    let string_merges = file["model"]["merges"]
        .as_array()
        .and_then(|m| m.first())
        .is_some_and(Value::is_string);
    let vocab = file["model"]["vocab"].as_object_mut().expect("model.vocab");
    for (i, (t, _, _)) in new_tokens.iter().enumerate() {
        vocab.insert(t.clone(), Value::from(next_id + i));
    }
    if let Some(merges) = file["model"]["merges"].as_array_mut() {
        for (_, a, b) in &new_tokens {
            merges.push(if string_merges {
                Value::from(format!("{a} {b}"))
            } else {
                Value::from(vec![a.clone(), b.clone()])
            });
        }
    }
    serde_json::to_string(&file).expect("serialize")
}

// ---------------------------------------------------------------------------------------------

struct Fixture {
    json: String,
    json_262k: String,
    vocab: Arc<Vocab>,
    tokenizer: tokenizers::Tokenizer,
}

fn bench_vocab(c: &mut Criterion, fx: &Fixture) {
    let mut g = c.benchmark_group("vocab_build");
    g.sample_size(10);
    for (name, json) in [("llama3_128k", &fx.json), ("synthetic_262k", &fx.json_262k)] {
        let v = Vocab::from_json(json).expect("vocab");
        eprintln!(
            "{name}: {} ids, tokenizer.json {:.1} MB",
            v.len(),
            json.len() as f64 / 1e6
        );
        g.bench_function(name, |b| b.iter(|| Vocab::from_json(black_box(json)).expect("vocab")));
    }
    g.finish();

    let mut g = c.benchmark_group("vocab_cache_hit");
    g.sample_size(20);
    for (name, json) in [("llama3_128k", &fx.json), ("synthetic_262k", &fx.json_262k)] {
        Vocab::cached_from_json(json).expect("vocab");
        g.bench_function(name, |b| {
            b.iter(|| Vocab::cached_from_json(black_box(json)).expect("vocab"))
        });
    }
    g.finish();
}

fn bench_row(c: &mut Criterion, fx: &Fixture) {
    let vocab = &fx.vocab;
    let single = Templates::new(RESPONSE.as_bytes().to_vec(), vec![]).expect("templates");
    let multi = Templates::new(RESPONSE.as_bytes().to_vec(), vec![USER.as_bytes().to_vec()]).expect("templates");
    let mut g = c.benchmark_group("row");
    for (case, templates, turns, lo, hi) in [
        ("single_1k", &single, 1, 700, 1200),
        ("multi_1k", &multi, 3, 700, 1200),
        ("multi_8k", &multi, 8, 7000, 9000),
    ] {
        let ids = rows(&fx.tokenizer, 42, 1, lo, hi, turns).remove(0);
        g.throughput(Throughput::Elements(ids.len() as u64));
        let mut text = SearchText::default();
        let mut occ: Vec<Occurrence> = Vec::new();
        let mut regs: Vec<Region> = Vec::new();
        let mut labels = vec![0i64; ids.len()];
        text.build(vocab, &ids, 0).expect("text");
        templates.find(text.bytes(), &mut occ);
        regions(
            &occ,
            text.bytes().len() as u32,
            templates.has_instructions(),
            TrainOn::All,
            &mut regs,
        );
        assert!(!regs.is_empty(), "{case}: no response region");
        g.bench_function(BenchmarkId::new("text", case), |b| {
            b.iter(|| text.build(vocab, black_box(&ids), 0).expect("text"))
        });
        g.bench_function(BenchmarkId::new("search", case), |b| {
            b.iter(|| templates.find(black_box(text.bytes()), &mut occ))
        });
        g.bench_function(BenchmarkId::new("regions", case), |b| {
            b.iter(|| {
                regions(
                    black_box(&occ),
                    text.bytes().len() as u32,
                    templates.has_instructions(),
                    TrainOn::All,
                    &mut regs,
                )
            })
        });
        g.bench_function(BenchmarkId::new("labels", case), |b| {
            b.iter(|| fill_labels(black_box(&ids), &text, &regs, IGNORE, &mut labels))
        });
        g.bench_function(BenchmarkId::new("all", case), |b| {
            b.iter(|| {
                text.build(vocab, black_box(&ids), 0).expect("text");
                templates.find(text.bytes(), &mut occ);
                regions(
                    &occ,
                    text.bytes().len() as u32,
                    templates.has_instructions(),
                    TrainOn::All,
                    &mut regs,
                );
                fill_labels(&ids, &text, &regs, IGNORE, &mut labels)
            })
        });
    }
    g.finish();
}

fn bench_collate(c: &mut Criterion, fx: &Fixture) {
    let response = Template::Text(RESPONSE.into());
    let masker = Masker::new(
        Arc::clone(&fx.vocab),
        &response,
        &[Template::Text(USER.into())],
        IGNORE,
        TrainOn::All,
    )
    .expect("masker");
    let mut g = c.benchmark_group("collate");
    for (rows_n, lo, hi, label) in [(8, 700, 1200, "1k"), (64, 700, 1200, "1k"), (8, 7000, 9000, "8k")] {
        let data = rows(&fx.tokenizer, 7, rows_n, lo, hi, if label == "8k" { 8 } else { 3 });
        let lengths: Vec<usize> = data.iter().map(Vec::len).collect();
        let tokens: usize = lengths.iter().sum();
        let sources: Vec<RowIds<'_>> = data.iter().map(|r| RowIds::I64(r)).collect();
        let case = format!("b{rows_n}_{label}");
        g.throughput(Throughput::Elements(tokens as u64));
        g.bench_function(BenchmarkId::new("floor_copy_padded", &case), |b| {
            b.iter(|| {
                let width = lengths.iter().copied().max().unwrap_or(0);
                let mut out = vec![PAD_ID; rows_n * width];
                for (r, row) in data.iter().enumerate() {
                    out[r * width..r * width + row.len()].copy_from_slice(row);
                }
                out
            })
        });
        g.bench_function(BenchmarkId::new("batch_new_padded", &case), |b| {
            b.iter(|| {
                let layout = Layout::Padded {
                    left: false,
                    multiple_of: None,
                };
                Batch::new(black_box(lengths.clone()), layout, PAD_ID, IGNORE).expect("batch")
            })
        });
        for (layout_name, layout) in [
            (
                "padded",
                Layout::Padded {
                    left: false,
                    multiple_of: None,
                },
            ),
            ("flat", Layout::Flat),
        ] {
            for threads in [1usize, 2] {
                g.bench_function(BenchmarkId::new(format!("{layout_name}_t{threads}"), &case), |b| {
                    b.iter(|| {
                        let mut batch = Batch::new(lengths.clone(), layout, PAD_ID, IGNORE).expect("batch");
                        let stats = masker
                            .collate(&mut batch, black_box(&sources), &[], threads)
                            .expect("collate");
                        (batch, stats)
                    })
                });
            }
        }
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// What-if prototype: NOT the crate's code. It measures a change the profile suggested, next to
// the crate's own function on the same input, so the gain is a number, not a guess.

mod what_if {
    /// A byte table with one 16-byte slot per id (token bytes, length in the last byte; 255 =
    /// unknown id or longer than 15 bytes, read from the crate's table instead): one cache line
    /// per token instead of three (starts, flags, bytes), and a fixed 16-byte copy instead of a
    /// `memcpy` call per token. Byte-level tokenizers only (no phantom rule), enough for Llama-3.
    pub struct Fixed16 {
        slots: Vec<[u8; 16]>,
    }

    impl Fixed16 {
        pub fn new(vocab: &sftmask::Vocab) -> Self {
            let slots = (0..vocab.len() as u32)
                .map(|id| {
                    let mut slot = [0u8; 16];
                    slot[15] = 255;
                    if let Some(b) = vocab.token_bytes(id) {
                        if b.len() <= 15 {
                            slot[..b.len()].copy_from_slice(b);
                            slot[15] = b.len() as u8;
                        }
                    }
                    slot
                })
                .collect();
            Fixed16 { slots }
        }

        /// Fills `bytes` and `ends` like `SearchText::build` (same output for byte-level vocabularies).
        pub fn build(&self, vocab: &sftmask::Vocab, ids: &[i64], bytes: &mut Vec<u8>, ends: &mut Vec<u32>) {
            bytes.clear();
            ends.clear();
            ends.reserve(ids.len());
            bytes.reserve(ids.len() * 16 + 16);
            let mut len = 0usize;
            for (k, &id) in ids.iter().enumerate() {
                let slot = usize::try_from(id)
                    .ok()
                    .and_then(|i| self.slots.get(i))
                    .expect("id in vocabulary");
                let n = slot[15] as usize;
                if n <= 15 {
                    // SAFETY: capacity >= len + 16: reserved 16 bytes per remaining id (+16), and
                    // every id so far wrote at most 15.
                    unsafe { std::ptr::copy_nonoverlapping(slot.as_ptr(), bytes.as_mut_ptr().add(len), 16) };
                    len += n;
                } else {
                    let long = vocab.token_bytes(id as u32).expect("id in vocabulary");
                    // SAFETY: the first `len` bytes were written above.
                    unsafe { bytes.set_len(len) };
                    bytes.extend_from_slice(long);
                    len = bytes.len();
                    bytes.reserve((ids.len() - k) * 16 + 16);
                }
                ends.push(len as u32);
            }
            // SAFETY: the first `len` bytes were written above, within capacity.
            unsafe { bytes.set_len(len) };
        }
    }
}

fn bench_what_if(c: &mut Criterion, fx: &Fixture) {
    let fixed = what_if::Fixed16::new(&fx.vocab);
    let mut g = c.benchmark_group("what_if_text");
    for (case, turns, lo, hi) in [("single_1k", 1, 700, 1200), ("multi_8k", 8, 7000, 9000)] {
        let ids = rows(&fx.tokenizer, 42, 1, lo, hi, turns).remove(0);
        let mut text = SearchText::default();
        text.build(&fx.vocab, &ids, 0).expect("text");
        let (mut bytes, mut ends) = (Vec::new(), Vec::new());
        fixed.build(&fx.vocab, &ids, &mut bytes, &mut ends);
        assert_eq!(bytes, text.bytes(), "{case}: prototype text differs");
        assert_eq!(ends, text.ends(), "{case}: prototype offsets differ");
        g.throughput(Throughput::Elements(ids.len() as u64));
        g.bench_function(BenchmarkId::new("crate_SearchText_build", case), |b| {
            b.iter(|| text.build(&fx.vocab, black_box(&ids), 0).expect("text"))
        });
        g.bench_function(BenchmarkId::new("fixed16_slots", case), |b| {
            b.iter(|| fixed.build(&fx.vocab, black_box(&ids), &mut bytes, &mut ends))
        });
    }
    g.finish();
}

fn main() {
    let Some(path) = tokenizer_json_path() else {
        eprintln!(
            "benches/core.rs: skipped, no Llama-3 tokenizer.json found. Build the test fixtures \
             (python tests/fixtures/build_tokenizers.py llama3) or set SFTMASK_BENCH_TOKENIZER_DIR \
             to a folder holding tokenizer.json (or llama3/tokenizer.json)."
        );
        return;
    };
    eprintln!("benches/core.rs: tokenizer {}", path.display());
    let json = std::fs::read_to_string(&path).expect("read tokenizer.json");
    let tokenizer = tokenizers::Tokenizer::from_file(&path).expect("load tokenizer.json");
    let vocab = Arc::new(Vocab::from_json(&json).expect("vocab"));
    let json_262k = synthetic_262k(&json);
    let fx = Fixture {
        json,
        json_262k,
        vocab,
        tokenizer,
    };
    let mut c = Criterion::default().configure_from_args();
    bench_vocab(&mut c, &fx);
    bench_row(&mut c, &fx);
    bench_collate(&mut c, &fx);
    bench_what_if(&mut c, &fx);
    c.final_summary();
}
