//! Pre-tokenizers written as state machines, each exactly equivalent to one regex that
//! `tokenizers` runs through Oniguruma (Split with `Isolated`, or ByteLevel's own regex), and the
//! character classes they test, read out of Oniguruma itself so that `\p{L}`, `\p{N}` and `\s`
//! are Oniguruma's, Unicode version included.
//!
//! Every regex here matches at every position (its last alternatives are `\s+` and a run of
//! "other" characters), so `Isolated` splitting is just the sequence of matches; each function
//! below returns where the match starting at a position ends, following the alternatives in the
//! regex's order with the same greedy/backtracking outcome.

use std::sync::OnceLock;

use tokenizers::utils::SysRegex;

/// The Llama-3 (cl100k) pattern: digits in runs of up to three.
pub(crate) const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// The Qwen2 pattern: the same with single digits.
pub(crate) const QWEN2: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Mistral's Tekken pattern (o200k-like: words split at letter case, `\p{M}` inside words).
pub(crate) const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// GPT-2's pattern, as `tokenizers`' ByteLevel pre-tokenizer compiles it (`use_regex: true`);
/// the tests check [`Pattern::Gpt2`] against it.
#[cfg(test)]
pub(crate) const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// Which regex a splitter reproduces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pattern {
    /// [`LLAMA3`] (`max_digits` 3) or [`QWEN2`] (1).
    Cl100k { max_digits: usize },
    /// [`GPT2`].
    Gpt2,
    /// [`TEKKEN`].
    Tekken,
}

impl Pattern {
    /// The splitter for a Split pre-tokenizer's regex, if it is one implemented here.
    pub(crate) fn for_split_regex(regex: &str) -> Option<Pattern> {
        match regex {
            LLAMA3 => Some(Pattern::Cl100k { max_digits: 3 }),
            QWEN2 => Some(Pattern::Cl100k { max_digits: 1 }),
            TEKKEN => Some(Pattern::Tekken),
            _ => None,
        }
    }
}

const L: u8 = 1; // \p{L}
const N: u8 = 2; // \p{N}
const S: u8 = 4; // \s
const U: u8 = 8; // [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]: Tekken's upper-case side
const W: u8 = 16; // [\p{Ll}\p{Lm}\p{Lo}\p{M}]: its lower-case side
                  // Characters that `(?i:…)` lets stand for the letters of the contractions, one bit each.
const FOLD_LETTERS: &[u8; 8] = b"strevmld";

struct Tables {
    class: Vec<u8>,
    fold: Vec<u8>,
}

/// Oniguruma's classes for every code point, computed once per process by running its own
/// regexes over a string of all scalar values (~4 MB, tens of milliseconds).
fn tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(|| {
        let all: String = (0..0x11_0000u32).filter_map(char::from_u32).collect();
        let mut class = vec![0u8; 0x11_0000];
        let mut fold = vec![0u8; 0x11_0000];
        let mark = |table: &mut Vec<u8>, regex: &str, bit: u8| {
            // The patterns are fixed and valid: a failure is a bug of this file.
            let re = SysRegex::new(regex).expect("character class regex");
            for (s, e) in re.find_iter(&all) {
                for c in all[s..e].chars() {
                    table[c as usize] |= bit;
                }
            }
        };
        mark(&mut class, r"\p{L}+", L);
        mark(&mut class, r"\p{N}+", N);
        mark(&mut class, r"\s+", S);
        mark(&mut class, r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+", U);
        mark(&mut class, r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]+", W);
        for (i, &letter) in FOLD_LETTERS.iter().enumerate() {
            mark(&mut fold, &format!("(?i:{})", letter as char), 1 << i);
        }
        Tables { class, fold }
    })
}

/// Builds the character tables now, if not built yet.
pub(crate) fn warm() {
    tables();
}

/// One segment's characters with their classes, reused across segments.
#[derive(Default)]
pub(crate) struct Chars {
    /// Byte offset of each character, then the segment's length.
    pos: Vec<u32>,
    cls: Vec<u8>,
    chars: Vec<char>,
}

impl Chars {
    pub(crate) fn capacity(&self) -> usize {
        self.chars.capacity()
    }

    fn load(&mut self, text: &str) {
        let t = tables();
        self.pos.clear();
        self.cls.clear();
        self.chars.clear();
        for (i, c) in text.char_indices() {
            self.pos.push(i as u32);
            self.cls.push(t.class[c as usize]);
            self.chars.push(c);
        }
        self.pos.push(text.len() as u32);
    }

    fn is(&self, i: usize, bit: u8) -> bool {
        self.cls.get(i).is_some_and(|c| c & bit != 0)
    }

    /// Neither `\s`, `\p{L}` nor `\p{N}`.
    fn is_other(&self, i: usize) -> bool {
        self.cls.get(i).is_some_and(|c| c & (L | N | S) == 0)
    }

    fn is_crlf(&self, i: usize) -> bool {
        matches!(self.chars.get(i), Some('\r' | '\n'))
    }

    fn run(&self, mut i: usize, keep: impl Fn(usize) -> bool) -> usize {
        while i < self.cls.len() && keep(i) {
            i += 1;
        }
        i
    }

    /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)` (or the case-sensitive form) at `i`: where it ends.
    fn contraction(&self, i: usize, fold: bool) -> Option<usize> {
        if self.chars.get(i) != Some(&'\'') {
            return None;
        }
        let letter = |j: usize, l: u8| -> bool {
            let Some(&c) = self.chars.get(j) else { return false };
            if fold {
                let bit = FOLD_LETTERS.iter().position(|&x| x == l).map_or(0, |b| 1 << b);
                tables().fold[c as usize] & bit != 0
            } else {
                c == l as char
            }
        };
        // First letters are distinct, so at most one alternative can match.
        for alt in [&b"s"[..], b"t", b"re", b"ve", b"m", b"ll", b"d"] {
            if alt.iter().enumerate().all(|(k, &l)| letter(i + 1 + k, l)) {
                return Some(i + 1 + alt.len());
            }
        }
        None
    }

    /// Whitespace at `i` once the other alternatives failed: `\s*[\r\n]+` (only for cl100k),
    /// then `\s+(?!\S)`, then `\s+`.
    fn whitespace(&self, i: usize, newline_alt: bool) -> usize {
        let j = self.run(i, |k| self.is(k, S));
        if newline_alt {
            // Greedy `\s*` gives back characters until `[\r\n]+` can match: the match ends
            // just after the run's last line break.
            if let Some(k) = (i..j).rev().find(|&k| self.is_crlf(k)) {
                return k + 1;
            }
        }
        if j == self.cls.len() || j - i == 1 {
            j
        } else {
            // Followed by a non-space: all but the last space, which `(?!\S)` needs.
            j - 1
        }
    }

    fn next_cl100k(&self, i: usize, max_digits: usize) -> usize {
        if let Some(e) = self.contraction(i, true) {
            return e;
        }
        // [^\r\n\p{L}\p{N}]?\p{L}+
        if self.is(i, L) {
            return self.run(i, |k| self.is(k, L));
        }
        if !self.is(i, N) && !self.is_crlf(i) && self.is(i + 1, L) {
            return self.run(i + 1, |k| self.is(k, L));
        }
        // \p{N}{1,max}
        if self.is(i, N) {
            return self.run(i, |k| k - i < max_digits && self.is(k, N));
        }
        //  ?[^\s\p{L}\p{N}]+[\r\n]*
        let p = if self.chars[i] == ' ' && self.is_other(i + 1) {
            i + 1
        } else {
            i
        };
        if self.is_other(p) {
            let e = self.run(p, |k| self.is_other(k));
            return self.run(e, |k| self.is_crlf(k));
        }
        self.whitespace(i, true)
    }

    /// `[U]*[W]+` at `p`: greedy `[U]*`, then giving back characters until `[W]+` can match.
    fn upper_then_lower(&self, p: usize) -> Option<usize> {
        let k = self.run(p, |j| self.is(j, U));
        if self.is(k, W) {
            return Some(self.run(k, |j| self.is(j, W)));
        }
        // The last character of the `[U]` run that is also `[W]` ends the match (the ones
        // after it are not `[W]`, and the one after the run is not either).
        (p..k).rev().find(|&j| self.is(j, W)).map(|j| j + 1)
    }

    /// `[U]+[W]*` at `p`.
    fn upper_run(&self, p: usize) -> Option<usize> {
        let k = self.run(p, |j| self.is(j, U));
        (k > p).then(|| self.run(k, |j| self.is(j, W)))
    }

    fn next_tekken(&self, i: usize) -> usize {
        // `[^\r\n\p{L}\p{N}]?` is greedy: first with the character, then without it (a mark,
        // which is not `\p{L}`, can start the word itself).
        let optional = !self.is(i, L) && !self.is(i, N) && !self.is_crlf(i);
        let starts = [optional.then_some(i + 1), Some(i)];
        for alt in [Self::upper_then_lower, Self::upper_run] {
            for p in starts.into_iter().flatten() {
                if let Some(e) = alt(self, p) {
                    return e;
                }
            }
        }
        if self.is(i, N) {
            return i + 1;
        }
        //  ?[^\s\p{L}\p{N}]+[\r\n/]*
        let p = if self.chars[i] == ' ' && self.is_other(i + 1) {
            i + 1
        } else {
            i
        };
        if self.is_other(p) {
            let e = self.run(p, |k| self.is_other(k));
            return self.run(e, |k| matches!(self.chars[k], '\r' | '\n' | '/'));
        }
        self.whitespace(i, true)
    }

    fn next_gpt2(&self, i: usize) -> usize {
        if let Some(e) = self.contraction(i, false) {
            return e;
        }
        //  ?\p{L}+ |  ?\p{N}+ |  ?[^\s\p{L}\p{N}]+
        let p = usize::from(self.chars[i] == ' ') + i;
        for bit in [L, N] {
            if self.is(p, bit) {
                return self.run(p, |k| self.is(k, bit));
            }
        }
        if self.is_other(p) {
            return self.run(p, |k| self.is_other(k));
        }
        self.whitespace(i, false)
    }
}

/// Calls `word(start, end)` with the byte range of each piece of `text` in order, as `tokenizers`
/// splits it with `pattern`.
pub(crate) fn split(pattern: Pattern, text: &str, chars: &mut Chars, mut word: impl FnMut(usize, usize)) {
    chars.load(text);
    let n = chars.cls.len();
    let mut i = 0;
    while i < n {
        let e = match pattern {
            Pattern::Cl100k { max_digits } => chars.next_cl100k(i, max_digits),
            Pattern::Gpt2 => chars.next_gpt2(i),
            Pattern::Tekken => chars.next_tekken(i),
        };
        debug_assert!(e > i);
        word(chars.pos[i] as usize, chars.pos[e] as usize);
        i = e;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `tokenizers`' own splitting with Oniguruma, the truth.
    fn onig_split(re: &SysRegex, text: &str) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut prev = 0;
        for (s, e) in re.find_iter(text) {
            if s != prev {
                out.push((prev, s));
            }
            out.push((s, e));
            prev = e;
        }
        if prev != text.len() {
            out.push((prev, text.len()));
        }
        out
    }

    fn ours(pattern: Pattern, text: &str) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        split(pattern, text, &mut Chars::default(), |s, e| out.push((s, e)));
        out
    }

    const ALL: [(Pattern, &str); 4] = [
        (Pattern::Cl100k { max_digits: 3 }, LLAMA3),
        (Pattern::Cl100k { max_digits: 1 }, QWEN2),
        (Pattern::Gpt2, GPT2),
        (Pattern::Tekken, TEKKEN),
    ];

    fn check(text: &str) {
        check_only(&[0, 1, 2, 3], text);
    }

    /// Compares the splitters `which` (indices into [`ALL`]) with Oniguruma on `text`.
    fn check_only(which: &[usize], text: &str) {
        thread_local! {
            static RES: Vec<SysRegex> = ALL.iter().map(|(_, r)| SysRegex::new(r).unwrap()).collect();
        }
        RES.with(|res| {
            for &k in which {
                let (p, re) = (ALL[k].0, &res[k]);
                assert_eq!(ours(p, text), onig_split(re, text), "{p:?} on {text:?}");
            }
        });
    }

    #[test]
    fn hand_picked_cases() {
        for t in [
            "",
            "Hello world",
            "  leading and trailing  ",
            "a\r\nb\n\n  c \n",
            "x \t\n\r  \u{a0}y",
            "I'm you'RE he'S it'ſ we'Ll 'd 'x '",
            "12345 1 22 333 4444 ٣٤٥ Ⅻ ½",
            "foo!!! ?? (bar) --- ...\n\n",
            " !x !\n\r\n",
            "👨‍👩‍👧 é e\u{301} 中文字符 ภาษาไทย ខ្មែរ שָׁלוֹם مرحبا",
            "zero\u{200b}width\u{feff} joiner\u{200d}",
            "\u{85}\u{2028}\u{3000}x\u{1680}",
            "end with space ",
            "end with spaces   ",
            " ",
            "\n",
            "HTTPServer camelCase ABCdef ǅungla Ǉ ǈx ʰʰa\u{301}A\u{301}b a//\n/ !/ x\u{301}\u{301}",
            "\u{301}abc \u{301}ABC !\u{301}a ꙮ ㄱ가 ᾈᾀ",
        ] {
            check(t);
        }
    }

    #[test]
    fn code_points_in_context() {
        // Every seventh scalar value (each class is well represented; the classes themselves
        // are Oniguruma's by construction) after contexts that change how it splits.
        let mut text = String::new();
        for c in (0..0x11_0000u32).step_by(7).filter_map(char::from_u32) {
            for ctx in ["'", " ", "a", "1", "\n ", "'r", "'l", "A", "\u{301}", "ʰ", "\t"] {
                text.push_str(ctx);
                text.push(c);
            }
            if text.len() > 4000 {
                check(&text);
                text.clear();
            }
        }
        check(&text);
    }

    #[test]
    fn contractions_fold_like_oniguruma() {
        // Every scalar value as the letter(s) of a contraction.
        let mut text = String::new();
        for c in (0..0x11_0000u32).filter_map(char::from_u32) {
            for prefix in ["'", "'r", "'v", "'l"] {
                text.push_str(prefix);
                text.push(c);
                text.push(' ');
            }
            if text.len() > 8000 {
                // The contractions: case-folded (Llama-3's) and exact (GPT-2's).
                check_only(&[0, 2], &text);
                text.clear();
            }
        }
        check_only(&[0, 2], &text);
    }
}
