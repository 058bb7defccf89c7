//! An example's searchable text `D` and the byte span of every token in it.
//!
//! `D` is the concatenation of the tokens' bytes from the [`Vocab`] table, except that a phantom
//! space (see [`crate::vocab::PhantomScheme`]) is left out: its token keeps its place but has
//! zero width. Tokens are contiguous, so token `i` spans `ends[i-1]..ends[i]`.
//!
//! The rule: docs/masking.md#searchable-text and #phantom-spaces.

use crate::error::{Error, Result};
use crate::vocab::{PhantomScheme, Vocab, KNOWN, PREFIX, SPLITS, WORD_START};

/// Searchable text of one example, reused across examples to avoid allocations.
///
/// ```
/// use sftmask::{SearchText, Vocab};
/// let json = r#"{"model": {"type": "BPE", "vocab": {"Hi": 0, "Ġthere": 1}, "merges": []},
///                "decoder": {"type": "ByteLevel"}}"#;
/// let vocab = Vocab::from_json(json).unwrap();
/// let mut text = SearchText::default();
/// text.build(&vocab, &[0, 1], 0).unwrap();
/// assert_eq!(text.bytes(), b"Hi there");
/// assert_eq!(text.span(1), (2, 8));
/// ```
#[derive(Debug, Default, Clone)]
pub struct SearchText {
    bytes: Vec<u8>,
    ends: Vec<u32>,
}

impl SearchText {
    /// Rebuilds the text for `ids` (the row number only goes into error messages).
    ///
    /// # Errors
    /// [`Error::NegativeId`] / [`Error::IdOutOfVocab`] naming the row and position.
    pub fn build(&mut self, vocab: &Vocab, ids: &[i64], row: usize) -> Result<()> {
        self.bytes.clear();
        self.ends.clear();
        self.ends.reserve(ids.len());
        let (table, starts, flags) = vocab.raw();
        let size = flags.len();
        let scheme = vocab.phantom();
        // `open`: the next text token starts a segment, so its word-start space is phantom.
        let mut open = scheme != PhantomScheme::Never;
        let mut seen_text = false;
        for (position, &id) in ids.iter().enumerate() {
            if id < 0 || id as u64 >= size as u64 {
                return Err(bad_id(id, row, position, size));
            }
            let i = id as usize;
            let f = flags[i];
            if f & KNOWN == 0 {
                return Err(bad_id(id, row, position, size));
            }
            let mut tok = &table[starts[i] as usize..starts[i + 1] as usize];
            if f & SPLITS != 0 {
                open = match scheme {
                    PhantomScheme::Always => true,
                    // "first": only text that begins the input gets the `▁`, and special tokens
                    // the post-processor puts in front (BOS) do not count as text.
                    PhantomScheme::First => open && !seen_text && f & PREFIX != 0,
                    PhantomScheme::Never => false,
                };
                if f & PREFIX == 0 {
                    seen_text = true;
                }
            } else {
                if open && f & WORD_START != 0 {
                    tok = &tok[1..];
                }
                open = false;
                seen_text = true;
            }
            self.bytes.extend_from_slice(tok);
            self.ends.push(self.bytes.len() as u32);
        }
        Ok(())
    }

    /// The searchable text.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// `true` when there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// End offset of every token (token `i` starts where token `i-1` ends).
    pub fn ends(&self) -> &[u32] {
        &self.ends
    }

    /// Byte span `(start, end)` of token `i`.
    pub fn span(&self, i: usize) -> (u32, u32) {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        (start, self.ends[i])
    }
}

#[cold]
fn bad_id(id: i64, row: usize, position: usize, size: usize) -> Error {
    if id < 0 {
        Error::NegativeId { row, position, id }
    } else {
        Error::IdOutOfVocab {
            row,
            position,
            id,
            vocab_size: size,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spm(scheme: &str) -> Vocab {
        let json = format!(
            r#"{{"model": {{"type": "BPE", "byte_fallback": true, "merges": [],
                  "vocab": {{"<unk>": 0, "<s>": 1, "</s>": 2, "▁": 3, "▁Hi": 4, "Hi": 5, "<0x0A>": 6, "▁▁": 7}}}},
                "added_tokens": [
                  {{"id": 1, "content": "<s>", "special": true, "normalized": false}},
                  {{"id": 2, "content": "</s>", "special": true, "normalized": false}},
                  {{"id": 8, "content": "<|user|>", "special": true, "normalized": false}}],
                "pre_tokenizer": {{"type": "Metaspace", "replacement": "▁", "prepend_scheme": "{scheme}", "split": false}},
                "post_processor": {{"type": "TemplateProcessing",
                  "single": [{{"SpecialToken": {{"id": "<s>", "type_id": 0}}}}, {{"Sequence": {{"id": "A", "type_id": 0}}}}],
                  "pair": [], "special_tokens": {{"<s>": {{"id": "<s>", "ids": [1], "tokens": ["<s>"]}}}}}},
                "decoder": {{"type": "Sequence", "decoders": [
                  {{"type": "Replace", "pattern": {{"String": "▁"}}, "content": " "}},
                  {{"type": "ByteFallback"}}, {{"type": "Fuse"}}, {{"type": "Strip", "content": " ", "start": 1, "stop": 0}}]}}}}"#
        );
        Vocab::from_json(&json).unwrap()
    }

    fn text(v: &Vocab, ids: &[i64]) -> (Vec<u8>, Vec<(u32, u32)>) {
        let mut t = SearchText::default();
        t.build(v, ids, 0).unwrap();
        (t.bytes().to_vec(), (0..t.len()).map(|i| t.span(i)).collect())
    }

    #[test]
    fn always_scheme_drops_the_space_after_every_special() {
        let v = spm("always");
        // <s> ▁Hi <|user|> ▁ \n Hi: both `▁`s at segment starts are phantom.
        let (b, spans) = text(&v, &[1, 4, 8, 3, 6, 5]);
        assert_eq!(b, b"<s>Hi<|user|>\nHi");
        assert_eq!(spans[3], (13, 13), "phantom ▁ has zero width");
        // A real space after the phantom one stays.
        let (b, _) = text(&v, &[8, 7, 5]);
        assert_eq!(b, b"<|user|> Hi");
    }

    #[test]
    fn first_scheme_only_at_text_start() {
        let v = spm("first");
        assert_eq!(text(&v, &[4]).0, b"Hi");
        assert_eq!(text(&v, &[1, 4]).0, b"<s>Hi", "BOS from the post-processor is not text");
        assert_eq!(
            text(&v, &[8, 4]).0,
            b"<|user|> Hi",
            "a special token in the text starts it"
        );
        assert_eq!(text(&v, &[1, 8, 4]).0, b"<s><|user|> Hi");
        assert_eq!(text(&v, &[4, 8, 4]).0, b"Hi<|user|> Hi");
    }

    #[test]
    fn never_scheme_keeps_spaces() {
        let v = spm("never");
        assert_eq!(text(&v, &[4, 8, 4]).0, b" Hi<|user|> Hi");
    }

    #[test]
    fn bad_ids_name_row_and_position() {
        let v = spm("first");
        let mut t = SearchText::default();
        assert_eq!(
            t.build(&v, &[4, -1], 3),
            Err(Error::NegativeId {
                row: 3,
                position: 1,
                id: -1
            })
        );
        assert_eq!(
            t.build(&v, &[4, 4, 9], 0),
            Err(Error::IdOutOfVocab {
                row: 0,
                position: 2,
                id: 9,
                vocab_size: 9
            })
        );
    }
}
