//! The overlap rule: a token is trained iff its byte span overlaps a response region; a token of
//! zero width (a phantom space) iff its offset lies inside one.
//!
//! The rule: docs/masking.md#the-overlap-rule.

use crate::regions::Region;
use crate::text::SearchText;

/// Counts for one example.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RowStats {
    /// Tokens in the example (padding excluded).
    pub tokens: u64,
    /// Tokens whose label is their id.
    pub trained: u64,
    /// Trained tokens that reach outside their region (they straddle a template boundary).
    pub straddling: u64,
    /// Whether a response template was found (set by the caller, which saw the search).
    pub found: bool,
    /// Whether the instruction template was found (`compat="trl"` only; always true otherwise).
    pub instruction_found: bool,
    /// Whether the first token is trained (a padding-free batch masks it afterwards).
    pub first_trained: bool,
    /// Whether `max_length` cut the row (preprocessing only).
    pub truncated: bool,
    /// `compat="trl"`: TRL's masking reaches into this row's padding on (left, right).
    pub masks_padding: (bool, bool),
}

/// Writes the labels of one example: `ids[i]` where token `i` is trained, `ignore_index`
/// elsewhere. `labels` has one slot per token.
///
/// ```
/// use sftmask::{fill_labels, SearchText, Vocab};
/// let json = r#"{"model": {"type": "BPE", "vocab": {"Q:": 0, "A:": 1, "Ġyes": 2}, "merges": []},
///                "decoder": {"type": "ByteLevel"}}"#;
/// let vocab = Vocab::from_json(json).unwrap();
/// let mut text = SearchText::default();
/// let ids = [0, 1, 2];
/// text.build(&vocab, &ids, 0).unwrap();
/// let mut labels = [0i64; 3];
/// let stats = fill_labels(&ids, &text, &[(4, 8)], -100, &mut labels);
/// assert_eq!(labels, [-100, -100, 2]);
/// assert_eq!(stats.trained, 1);
/// ```
pub fn fill_labels(
    ids: &[i64],
    text: &SearchText,
    regions: &[Region],
    ignore_index: i64,
    labels: &mut [i64],
) -> RowStats {
    debug_assert_eq!(ids.len(), text.len());
    fill_labels_by_ends(ids, text.ends(), regions, ignore_index, labels)
}

/// [`fill_labels`] over token end offsets: token `i` spans `ends[i - 1]..ends[i]` (the first
/// starts at 0), so the tokens partition the text. For tokens whose spans come from elsewhere
/// than a [`SearchText`] (a tokenizer's own byte offsets, in chat-template preprocessing).
///
/// ```
/// let mut labels = [0i64; 3];
/// let stats = sftmask::labels::fill_labels_by_ends(&[7, 8, 9], &[2, 4, 8], &[(4, 8)], -100, &mut labels);
/// assert_eq!((labels, stats.trained), ([-100, -100, 9], 1));
/// ```
pub fn fill_labels_by_ends(
    ids: &[i64],
    ends: &[u32],
    regions: &[Region],
    ignore_index: i64,
    labels: &mut [i64],
) -> RowStats {
    debug_assert_eq!(ids.len(), ends.len());
    debug_assert_eq!(ids.len(), labels.len());
    let mut stats = RowStats {
        tokens: ids.len() as u64,
        ..RowStats::default()
    };
    if regions.is_empty() {
        labels.fill(ignore_index);
        return stats;
    }
    let mut r = 0usize;
    let mut start = 0u32;
    for (i, (&id, label)) in ids.iter().zip(labels.iter_mut()).enumerate() {
        let end = ends[i];
        // Regions are sorted and disjoint, and token starts only grow: skip regions that end
        // at or before this token's start; they cannot overlap it or any later token.
        while r < regions.len() && regions[r].1 <= start {
            r += 1;
        }
        let trained = match regions.get(r) {
            None => false,
            Some(&(rs, re)) => {
                if end > start {
                    let hit = end > rs; // start < re holds after the skip above
                    if hit && (start < rs || end > re) {
                        stats.straddling += 1;
                    }
                    hit
                } else {
                    rs <= start
                }
            }
        };
        if trained {
            *label = id;
            stats.trained += 1;
            stats.first_trained |= i == 0;
        } else {
            *label = ignore_index;
        }
        start = end;
    }
    stats
}
