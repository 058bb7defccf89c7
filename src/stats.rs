//! The one stats type: what a collation or a preprocessing call did, and the running totals of
//! a collator. The same field names are used by the Python `Stats`, `sftmask check --format
//! json` and `docs/masking.md#stats`.

use crate::labels::RowStats;

/// Counts over the rows of one call (or, added up, over many calls).
///
/// ```
/// use sftmask::{RowStats, Stats};
/// let mut s = Stats::default();
/// s.add_row(0, &RowStats { tokens: 5, trained: 2, found: true, instruction_found: true, ..RowStats::default() }, false);
/// s.add_row(1, &RowStats { tokens: 3, instruction_found: true, ..RowStats::default() }, false);
/// assert_eq!((s.rows, s.tokens, s.trained_tokens), (2, 8, 2));
/// assert_eq!(s.missing_rows, vec![1]);
/// assert_eq!(s.rows_without_trained_tokens, 1);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Examples.
    pub rows: u64,
    /// Tokens (padding excluded).
    pub tokens: u64,
    /// Tokens whose label is their id.
    pub trained_tokens: u64,
    /// Trained tokens that straddle a template boundary.
    pub straddling_tokens: u64,
    /// Rows in which no response template was found (under `labels="keep"`: rows whose given
    /// labels train nothing).
    pub rows_without_template: u64,
    /// `compat="trl"` only: rows in which the instruction template was not found.
    pub rows_without_instruction_template: u64,
    /// Rows with no trained token at all.
    pub rows_without_trained_tokens: u64,
    /// Rows cut by `max_length` (preprocessing only).
    pub rows_truncated: u64,
    /// Conversations whose trained turns cannot be located exactly in the rendered text (their
    /// labels are all `ignore_index`, never a guessed mask).
    pub rows_not_located: u64,
    /// Trained turns whose region does not end in a special token (the end-of-turn marker is
    /// not trained: the model never learns to stop there).
    pub turns_without_end_marker: u64,
    /// Indices (within this call) of the rows without a response template. Kept per call only:
    /// [`Stats::add`] adds the counts, not the indices.
    pub missing_rows: Vec<usize>,
    /// Indices (within this call) of the rows without the instruction template (`compat="trl"`).
    pub missing_instruction_rows: Vec<usize>,
    /// Indices (within this call) of the conversations counted in `rows_not_located`.
    pub not_located_rows: Vec<usize>,
    /// Indices (within this call) of the conversations with a turn counted in
    /// `turns_without_end_marker`.
    pub turns_without_end_marker_rows: Vec<usize>,
}

impl Stats {
    /// Counts row `row`. `flat`: the row is a sequence of a padding-free batch, whose first
    /// label is masked after the row was counted.
    pub fn add_row(&mut self, row: usize, s: &RowStats, flat: bool) {
        let trained = s.trained - u64::from(flat && s.first_trained);
        self.rows += 1;
        self.tokens += s.tokens;
        self.trained_tokens += trained;
        self.straddling_tokens += s.straddling;
        self.rows_without_trained_tokens += u64::from(trained == 0);
        self.rows_truncated += u64::from(s.truncated);
        if !s.found {
            self.rows_without_template += 1;
            self.missing_rows.push(row);
        }
        if !s.instruction_found {
            self.rows_without_instruction_template += 1;
            self.missing_instruction_rows.push(row);
        }
    }

    /// Adds the counts of `other` (running totals; row indices are not carried over).
    pub fn add(&mut self, other: &Stats) {
        self.rows += other.rows;
        self.tokens += other.tokens;
        self.trained_tokens += other.trained_tokens;
        self.straddling_tokens += other.straddling_tokens;
        self.rows_without_template += other.rows_without_template;
        self.rows_without_instruction_template += other.rows_without_instruction_template;
        self.rows_without_trained_tokens += other.rows_without_trained_tokens;
        self.rows_truncated += other.rows_truncated;
        self.rows_not_located += other.rows_not_located;
        self.turns_without_end_marker += other.turns_without_end_marker;
    }
}
