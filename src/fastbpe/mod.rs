//! A fast exact path for byte-level BPE tokenizers (Llama-3, Qwen2/2.5/3, GPT-2, Mistral's
//! Tekken): the same ids and byte spans as the `tokenizers` crate for the tokenizer.json files
//! [`eligible`] accepts.
//!
//! Where the time goes in `tokenizers` for these models is the Oniguruma pre-tokenizer and the
//! per-piece string machinery; here the pre-tokenizer is a state machine ([`pretok`]), pieces
//! stay byte slices of the text, and each piece's ids come from a per-thread cache or from
//! `tokenizers`' own merge rule ([`merge`]). See docs/fast-tokenization.md.

mod eligible;
mod merge;
mod pretok;

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use aho_corasick::{AhoCorasick, MatchKind};
use rustc_hash::FxHashMap;

use merge::Merges;
use pretok::{Chars, Pattern};

/// GPT-2's byte -> printable character map, which byte-level vocabularies are written in.
fn byte_chars() -> [char; 256] {
    let mut out = ['\0'; 256];
    let mut extra = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        out[usize::from(b)] = if printable {
            char::from(b)
        } else {
            extra += 1;
            char::from_u32(255 + extra).unwrap_or('\0')
        };
    }
    out
}

/// Added tokens matched in one pass (leftmost-longest, as `tokenizers`' AddedVocabulary).
struct Added {
    finder: AhoCorasick,
    ids: Vec<u32>,
}

impl Added {
    fn new(tokens: Vec<(String, u32)>) -> Result<Option<Added>, String> {
        if tokens.is_empty() {
            return Ok(None);
        }
        let (patterns, ids): (Vec<String>, Vec<u32>) = tokens.into_iter().unzip();
        let finder = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&patterns)
            .map_err(|e| format!("the added tokens cannot be searched for: {e}"))?;
        Ok(Some(Added { finder, ids }))
    }
}

/// A byte-level BPE tokenizer that reproduces `tokenizers` exactly for the tokenizer.json it
/// was built from.
pub struct FastBpe {
    pattern: Pattern,
    nfc: bool,
    ignore_merges: bool,
    merges: Merges,
    /// Byte string -> id of every model token, for `ignore_merges`.
    whole: FxHashMap<Box<[u8]>, u32>,
    /// Byte length of each model token, by id.
    token_len: Vec<u32>,
    /// Added tokens matched before normalization, then those matched after it.
    raw: Option<Added>,
    normalized: Option<Added>,
    prefix: Vec<u32>,
    suffix: Vec<u32>,
    /// Tells this tokenizer's entries of the per-thread piece cache from another's.
    cache_key: u64,
}

impl std::fmt::Debug for FastBpe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastBpe")
            .field("pattern", &self.pattern)
            .finish_non_exhaustive()
    }
}

/// Pieces longer than this are not cached (they are rare, and would crowd the cache).
const CACHE_PIECE_MAX: usize = 64;
/// Entries per thread before the cache starts over (a few MB per thread).
const CACHE_ENTRIES_MAX: usize = 1 << 16;
/// Characters of per-thread scratch space kept between calls.
const SCRATCH_CHARS_MAX: usize = 1 << 20;

type PieceCache = FxHashMap<Box<[u8]>, Box<[u32]>>;

thread_local! {
    static CACHE: RefCell<(u64, PieceCache, Chars)> = RefCell::new((0, PieceCache::default(), Chars::default()));
}

impl FastBpe {
    /// Builds the fast path for a parsed tokenizer.json, or says which feature of it the fast
    /// path does not cover.
    ///
    /// ```
    /// let json: serde_json::Value = serde_json::from_str(r#"{"model": {"type": "WordPiece"}}"#).unwrap();
    /// let refusal = sftmask::fastbpe::FastBpe::from_json(&json).unwrap_err();
    /// assert_eq!(refusal, "the WordPiece model");
    /// ```
    ///
    /// # Errors
    /// The first feature not covered, in words.
    pub fn from_json(json: &serde_json::Value) -> Result<FastBpe, String> {
        let spec = eligible::check(json)?;
        let chars = byte_chars();
        let mut char_byte: FxHashMap<char, u8> = FxHashMap::default();
        for (b, c) in chars.iter().enumerate() {
            char_byte.insert(*c, b as u8);
        }
        let to_bytes = |s: &str| -> Option<Vec<u8>> { s.chars().map(|c| char_byte.get(&c).copied()).collect() };
        let mut ids: FxHashMap<&str, u32> = FxHashMap::default();
        let mut whole = FxHashMap::default();
        let max_id = spec.vocab.iter().map(|&(_, id)| id).max().unwrap_or(0);
        let mut token_len = vec![0u32; max_id as usize + 1];
        let mut seen = vec![false; max_id as usize + 1];
        for (text, id) in &spec.vocab {
            // Two tokens on one id: which one `tokenizers` decodes to is not known here.
            if std::mem::replace(&mut seen[*id as usize], true) {
                return Err(format!("a vocabulary that gives id {id} to two tokens"));
            }
            ids.insert(text.as_str(), *id);
            // A token outside the byte alphabet can never be produced from text: skip it.
            if let Some(bytes) = to_bytes(text) {
                token_len[*id as usize] = bytes.len() as u32;
                whole.insert(bytes.into_boxed_slice(), *id);
            }
        }
        let mut byte_ids = [0u32; 256];
        for (b, c) in chars.iter().enumerate() {
            byte_ids[b] = *ids
                .get(c.encode_utf8(&mut [0; 4]) as &str)
                .ok_or_else(|| format!("a byte-level vocabulary without byte {b:#04x}"))?;
        }
        let mut pairs = Vec::with_capacity(spec.merges.len());
        for (rank, (a, b)) in spec.merges.iter().enumerate() {
            let (Some(&ia), Some(&ib)) = (ids.get(a.as_str()), ids.get(b.as_str())) else {
                return Err(format!("a merge of tokens not in the vocabulary ({a:?} {b:?})"));
            };
            let merged = format!("{a}{b}");
            let Some(&new_id) = ids.get(merged.as_str()) else {
                return Err(format!("a merge whose result {merged:?} is not in the vocabulary"));
            };
            pairs.push(((ia, ib), (rank as u32, new_id)));
        }
        let (mut raw, mut normalized) = (Vec::new(), Vec::new());
        for (content, id, is_normalized) in spec.added {
            if let Some(&model_id) = ids.get(content.as_str()) {
                if model_id != id {
                    return Err(format!(
                        "added token {content:?} with id {id}, not its model id {model_id}"
                    ));
                }
            }
            if is_normalized { &mut normalized } else { &mut raw }.push((content, id));
        }
        static NEXT: AtomicU64 = AtomicU64::new(1);
        pretok::warm(); // the character tables, here rather than on the first row
        Ok(FastBpe {
            pattern: spec.pattern,
            nfc: spec.nfc,
            ignore_merges: spec.ignore_merges,
            merges: Merges::new(byte_ids, pairs),
            whole,
            token_len,
            raw: Added::new(raw)?,
            normalized: Added::new(normalized)?,
            prefix: spec.prefix,
            suffix: spec.suffix,
            cache_key: NEXT.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// Appends the ids of `text` to `ids`, and with `ends` where each token ends in the text,
    /// in bytes, as `tokenizers`' offsets say it (a token ending inside a character ends where
    /// the character does). `false`: this text is not covered (a row not in NFC for an NFC
    /// normalizer) and nothing was appended.
    pub fn encode(
        &self,
        text: &str,
        add_special_tokens: bool,
        ids: &mut Vec<u32>,
        mut ends: Option<&mut Vec<u32>>,
    ) -> bool {
        if self.nfc && !is_nfc(text) {
            return false;
        }
        if add_special_tokens {
            ids.extend_from_slice(&self.prefix);
            if let Some(e) = ends.as_deref_mut() {
                e.extend(self.prefix.iter().map(|_| 0));
            }
        }
        CACHE.with(|cell| {
            let (key, cache, chars) = &mut *cell.borrow_mut();
            if *key != self.cache_key || cache.len() > CACHE_ENTRIES_MAX {
                *key = self.cache_key;
                cache.clear();
            }
            if chars.capacity() > SCRATCH_CHARS_MAX {
                *chars = Chars::default(); // one huge row must not pin its scratch space
            }
            let mut piece = |start: usize, end: usize, ids: &mut Vec<u32>, ends: Option<&mut Vec<u32>>| {
                let from = ids.len();
                self.encode_piece(&text.as_bytes()[start..end], cache, ids);
                if let Some(e) = ends {
                    let mut at = start;
                    for &id in &ids[from..] {
                        at += self.token_len.get(id as usize).copied().unwrap_or(0) as usize;
                        let mut end = at;
                        while !text.is_char_boundary(end) {
                            end += 1;
                        }
                        e.push(end as u32);
                    }
                }
            };
            let mut segment = |start: usize, end: usize, ids: &mut Vec<u32>, ends: &mut Option<&mut Vec<u32>>| {
                pretok::split(self.pattern, &text[start..end], chars, |s, e| {
                    piece(start + s, start + e, ids, ends.as_deref_mut());
                });
            };
            // Added tokens before normalization, then (within the rest) those after it: with
            // the text already normalized, both run on the text itself.
            split_added(text, 0, text.len(), self.raw.as_ref(), &mut |s, e, token| match token {
                Some(id) => push_added(id, e, ids, ends.as_deref_mut()),
                None => split_added(text, s, e, self.normalized.as_ref(), &mut |s, e, token| match token {
                    Some(id) => push_added(id, e, ids, ends.as_deref_mut()),
                    None => segment(s, e, ids, &mut ends),
                }),
            });
        });
        if add_special_tokens {
            ids.extend_from_slice(&self.suffix);
            if let Some(e) = ends {
                let last = e.last().copied().unwrap_or(0);
                e.extend(self.suffix.iter().map(|_| last));
            }
        }
        true
    }

    fn encode_piece(&self, piece: &[u8], cache: &mut PieceCache, ids: &mut Vec<u32>) {
        if self.ignore_merges {
            if let Some(&id) = self.whole.get(piece) {
                ids.push(id);
                return;
            }
        }
        if piece.len() > CACHE_PIECE_MAX {
            self.merges.encode(piece, ids);
            return;
        }
        if let Some(hit) = cache.get(piece) {
            ids.extend_from_slice(hit);
            return;
        }
        let from = ids.len();
        self.merges.encode(piece, ids);
        cache.insert(piece.into(), ids[from..].into());
    }
}

fn push_added(id: u32, end: usize, ids: &mut Vec<u32>, ends: Option<&mut Vec<u32>>) {
    ids.push(id);
    if let Some(e) = ends {
        e.push(end as u32);
    }
}

/// Calls `f(start, end, Some(id))` for each added token in `text[start..end]` and
/// `f(start, end, None)` for each non-empty stretch between them, in order.
fn split_added(
    text: &str,
    start: usize,
    end: usize,
    added: Option<&Added>,
    f: &mut dyn FnMut(usize, usize, Option<u32>),
) {
    let Some(added) = added else {
        if end > start {
            f(start, end, None);
        }
        return;
    };
    let mut at = start;
    for m in added.finder.find_iter(&text[start..end]) {
        let (s, e) = (start + m.start(), start + m.end());
        if s > at {
            f(at, s, None);
        }
        f(s, e, Some(added.ids[m.pattern().as_usize()]));
        at = e;
    }
    if end > at {
        f(at, end, None);
    }
}

/// Whether NFC leaves `text` as it is, by the tables `tokenizers`' NFC normalizer uses.
fn is_nfc(text: &str) -> bool {
    use unicode_normalization_alignments::{is_nfc_quick, IsNormalized};
    // ASCII and most text pass the quick check without normalizing anything.
    text.is_ascii()
        || match is_nfc_quick(text.chars()) {
            IsNormalized::Yes => true,
            IsNormalized::No => false,
            IsNormalized::Maybe => unicode_normalization_alignments::is_nfc(text),
        }
}

#[cfg(test)]
mod tests {
    use crate::engine::{EngineChoice, TokenEngine, Tokenize};

    #[rustfmt::skip]
    const PIECES: &[&str] = &[
        "Hello", " world", "  ", "   ", "\n", "\n\n", "\r\n", " \n ", "\t", "x", "I'm", "'S", "'ll", "'Re", "'ſ",
        "123", "4567", " 89", "٣٤", "½", "!!", " (", "...", "--", "é", "e\u{301}", "Å", "👨\u{200d}👩\u{200d}👧",
        "🇫🇷", "中文", "ภาษาไทย", "ខ្មែរ", "שָׁלוֹם", "مرحبا", "\u{200b}", "\u{feff}", "\u{a0}", "\u{3000}", "ǅ", "ﬁ",
        "<|im_start|>", "<|im_end|>", "<|eot_id|>", "<|begin_of_text|>", "<|endoftext|>", "<tool_call>", "<s>",
    ];

    fn texts(n: usize) -> Vec<String> {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as usize
        };
        (0..n)
            .map(|_| (0..next() % 40).map(|_| PIECES[next() % PIECES.len()]).collect())
            .collect()
    }

    /// Ids and token ends equal `tokenizers`' on every real fixture the fast path takes (the
    /// test fixtures' cache, `$SFTMASK_TOKENIZER_CACHE`; skipped without it).
    #[test]
    fn fixtures_match_tokenizers() {
        let Some(cache) = std::env::var_os("SFTMASK_TOKENIZER_CACHE") else {
            eprintln!("SFTMASK_TOKENIZER_CACHE not set: skipped");
            return;
        };
        let texts = texts(400);
        for family in [
            "llama3",
            "qwen2",
            "gpt2",
            "tekken",
            "mistral_v1",
            "mistral_v3",
            "phi3",
            "bert",
        ] {
            let path = std::path::Path::new(&cache).join(family).join("tokenizer.json");
            let Ok(json) = std::fs::read_to_string(&path) else {
                continue;
            };
            let engine = TokenEngine::from_json(&json, EngineChoice::Auto).unwrap();
            eprintln!("{family}: fast {} ({:?})", engine.is_fast(), engine.refusal());
            // The same decision from a loaded tokenizer's parts over the file (`crate::load`).
            let mut parts: serde_json::Value = serde_json::from_str(&json).unwrap();
            let model = parts["model"].as_object_mut().unwrap();
            model.remove("vocab");
            model.remove("merges");
            if let Ok((from_parts, _)) = TokenEngine::from_parts(&parts.to_string(), &json, EngineChoice::Auto) {
                assert_eq!(from_parts.refusal(), engine.refusal(), "{family}");
            }
            for text in &texts {
                for special in [false, true] {
                    assert_eq!(
                        engine.encode_with_ends(text, special),
                        engine.tokenizer().encode_with_ends(text, special),
                        "{family} {text:?}"
                    );
                }
            }
        }
    }
}
