//! Tokenize and mask in one pass, for preprocessing a dataset once instead of masking every
//! batch: text -> token ids (the `tokenizers` crate over the same tokenizer.json) -> optional
//! truncation -> labels by the [`Masker`]'s rule, rows in parallel on the fork-safe [`pool`].

use crate::engine::Tokenize;
use crate::error::{Error, Result};
use crate::labels::RowStats;
use crate::masker::{LabelSource, Masker};
use crate::pool;
use crate::stats::Stats;

/// How texts become token ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodeOptions {
    /// Let the tokenizer's post-processor add its special tokens (BOS, …), as `tokenizer(text)`
    /// does; `false` for text that already spells them out (a rendered chat template).
    pub add_special_tokens: bool,
    /// Keep only the first `max_length` tokens of each row (as `SFTTrainer`'s `max_length`).
    pub max_length: Option<usize>,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions {
            add_special_tokens: true,
            max_length: None,
        }
    }
}

/// The rows of a preprocessed batch and their stats.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Encoded {
    /// Token ids of each row.
    pub input_ids: Vec<Vec<u32>>,
    /// Labels of each row: the id where trained, `ignore_index` elsewhere.
    pub labels: Vec<Vec<i64>>,
    /// What the call did (rows without a template, truncated rows, …).
    pub stats: Stats,
}

/// Tokenizes `texts` and masks each row with `masker`, using up to `threads` threads.
///
/// ```
/// use std::sync::Arc;
/// use sftmask::encode::{tokenize_and_mask, EncodeOptions};
/// use sftmask::{Masker, Template, TrainOn, Vocab};
/// // Byte-level BPE without merges: every byte is a token.
/// let json = r#"{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
///   "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
///   "post_processor": null, "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
///   "use_regex": false}, "model": {"type": "BPE", "dropout": null, "unk_token": null,
///   "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
///   "ignore_merges": false, "vocab": {"Q": 0, "A": 1, ":": 2, "x": 3}, "merges": []}}"#;
/// let tokenizer: tokenizers::Tokenizer = json.parse().unwrap();
/// let vocab = Arc::new(Vocab::from_json(json).unwrap());
/// let masker = Masker::new(vocab, &Template::Text("A:".into()), &[], -100, TrainOn::All).unwrap();
/// let out = tokenize_and_mask(&tokenizer, &masker, &["Q:xA:x"], EncodeOptions::default(), 1).unwrap();
/// assert_eq!(out.input_ids, vec![vec![0, 2, 3, 1, 2, 3]]);
/// assert_eq!(out.labels, vec![vec![-100, -100, -100, -100, -100, 3]]);
/// assert_eq!(out.stats.trained_tokens, 1);
/// ```
///
/// # Errors
/// [`Error::Row`] naming the first row the tokenizer fails on; the masker's errors (an id the
/// byte table does not know: the tokenizer and the table disagree), with the row;
/// [`Error::InvalidArgument`] for a masker that takes given labels.
pub fn tokenize_and_mask<S: AsRef<str> + Sync>(
    tokenizer: &impl Tokenize,
    masker: &Masker,
    texts: &[S],
    options: EncodeOptions,
    threads: usize,
) -> Result<Encoded> {
    let rows = encode_rows(tokenizer, masker, texts, options, threads)?;
    let mut input_ids = Vec::with_capacity(texts.len());
    let mut labels = Vec::with_capacity(texts.len());
    let stats = collect_rows(masker, rows, |ids, row_labels| {
        input_ids.push(ids);
        labels.push(row_labels);
    })?;
    Ok(Encoded {
        input_ids,
        labels,
        stats,
    })
}

/// One row's token ids, labels and counts.
pub(crate) type EncodedRow = (Vec<u32>, Vec<i64>, RowStats);

/// Tokenizes and masks every row of `texts` (in parallel), each row's result on its own: the
/// one row path of preprocessing, whatever the input and output containers (lists, Arrow).
///
/// # Errors
/// [`Error::InvalidArgument`] for a masker that is not an exact one; each row's own error
/// (naming its index in `texts`) is in its slot.
pub(crate) fn encode_rows<S: AsRef<str> + Sync>(
    tokenizer: &impl Tokenize,
    masker: &Masker,
    texts: &[S],
    options: EncodeOptions,
    threads: usize,
) -> Result<Vec<Result<EncodedRow>>> {
    if !matches!(masker.source(), LabelSource::Exact { .. }) {
        return Err(Error::InvalidArgument(
            "tokenize_and_mask takes an exact masker (compat='exact', labels='mask')".into(),
        ));
    }
    let row = |(): &mut (), (r, text): (usize, &S)| -> Result<EncodedRow> {
        let mut ids = tokenizer
            .encode_ids(text.as_ref(), options.add_special_tokens)
            .map_err(|e| Error::Row {
                row: r,
                reason: format!("the tokenizer failed: {e}"),
            })?;
        let truncated = options.max_length.is_some_and(|n| ids.len() > n);
        if let Some(n) = options.max_length {
            ids.truncate(n);
        }
        let wide: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
        let seen = masker.inspect(&wide).map_err(|e| e.at_row(r))?;
        let stats = RowStats {
            truncated,
            ..seen.stats
        };
        Ok((ids, seen.labels, stats))
    };
    // Tokenizing costs far more than waking the pool, so two rows are enough to go parallel.
    Ok(pool::map_rows(texts.iter().collect(), threads, true, || (), row))
}

/// Hands each row of `rows` to `sink` in order and counts it; the first row error, or the
/// masker's `on_missing="error"` verdict over all rows, stops the call.
pub(crate) fn collect_rows(
    masker: &Masker,
    rows: Vec<Result<EncodedRow>>,
    mut sink: impl FnMut(Vec<u32>, Vec<i64>),
) -> Result<Stats> {
    let mut stats = Stats::default();
    for (r, result) in rows.into_iter().enumerate() {
        let (ids, labels, row_stats) = result?;
        stats.add_row(r, &row_stats, false);
        sink(ids, labels);
    }
    masker.check_missing(&stats)?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokenizers::Tokenizer;

    use super::*;
    use crate::{Template, TrainOn, Vocab};

    use crate::test_support::BYTE_TOKENIZER as JSON;

    fn setup(instructions: &[&str]) -> (Tokenizer, Masker) {
        let tokenizer: Tokenizer = JSON.parse().unwrap();
        let vocab = Arc::new(Vocab::from_json(JSON).unwrap());
        let instructions: Vec<Template> = instructions.iter().map(|t| Template::Text((*t).into())).collect();
        let masker = Masker::new(vocab, &Template::Text("A:".into()), &instructions, -100, TrainOn::All).unwrap();
        (tokenizer, masker)
    }

    #[test]
    fn rows_in_order_serial_and_parallel_agree() {
        let (tok, masker) = setup(&["U:"]);
        let texts: Vec<String> = (0..64)
            .map(|i| {
                if i % 5 == 0 {
                    "U: x".to_string()
                } else {
                    "U: xA: yU: xA: y".repeat(i % 3 + 1)
                }
            })
            .collect();
        let serial = tokenize_and_mask(&tok, &masker, &texts, EncodeOptions::default(), 1).unwrap();
        let parallel = tokenize_and_mask(&tok, &masker, &texts, EncodeOptions::default(), 4).unwrap();
        assert_eq!(serial, parallel);
        assert_eq!(
            serial.stats.missing_rows,
            (0..64).filter(|i| i % 5 == 0).collect::<Vec<_>>()
        );
        // "U: xA: yU: xA: y": each byte a token; each answer " y" is trained, templates and
        // questions are not.
        let turn = [0, 2, 3, 4, 1, 2, 3, 5];
        assert_eq!(serial.input_ids[3], [turn, turn].concat());
        let labels = [-100, -100, -100, -100, -100, -100, 3, 5];
        assert_eq!(serial.labels[3], [labels, labels].concat());
    }

    #[test]
    fn truncation_cuts_before_masking() {
        let (tok, masker) = setup(&[]);
        let opts = EncodeOptions {
            max_length: Some(4),
            ..EncodeOptions::default()
        };
        let out = tokenize_and_mask(&tok, &masker, &["U: xA: y"], opts, 1).unwrap();
        assert_eq!(out.input_ids, vec![vec![0, 2, 3, 4]]);
        assert_eq!(out.stats.missing_rows, vec![0]);
        assert_eq!(out.stats.tokens, 4);
        assert_eq!(out.stats.rows_truncated, 1);
    }

    #[test]
    fn empty_input_is_empty_output() {
        let (tok, masker) = setup(&[]);
        let out = tokenize_and_mask::<&str>(&tok, &masker, &[], EncodeOptions::default(), 4).unwrap();
        assert_eq!(out, Encoded::default());
    }
}
