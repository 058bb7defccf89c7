//! Batch assembly: the output buffers of one collation (padded `[B, L]` or flattened `[1, T]`)
//! and the per-row views the masking fills in place.
//!
//! The rule: docs/masking.md#padding, #output-shapes and #extra-keys.

use crate::error::{Error, Result};

/// How rows are laid out in the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `[B, L]` with `L` the longest row rounded up to `multiple_of`; padding on the left when
    /// `left` is set.
    Padded { left: bool, multiple_of: Option<usize> },
    /// All rows concatenated into one `[1, T]` row (padding-free), with `position_ids` and
    /// `cu_seq_lens`.
    Flat,
}

/// Where one row's ids come from.
#[derive(Debug, Clone, Copy)]
pub enum RowIds<'a> {
    /// Already written into the batch's `input_ids` (the binding copies Python lists there while
    /// it holds the GIL).
    InPlace,
    /// A borrowed int64 buffer (e.g. a numpy array), copied during the parallel phase.
    I64(&'a [i64]),
    /// A borrowed int32 buffer.
    I32(&'a [i32]),
}

impl RowIds<'_> {
    /// Number of ids, if the source knows it (`InPlace` does not).
    pub fn len(&self) -> Option<usize> {
        match self {
            RowIds::InPlace => None,
            RowIds::I64(s) => Some(s.len()),
            RowIds::I32(s) => Some(s.len()),
        }
    }

    /// `true` when the source is known to hold no ids.
    pub fn is_empty(&self) -> bool {
        self.len() == Some(0)
    }

    /// Copies the values into `out` (nothing for [`RowIds::InPlace`]); `out` has the
    /// source's length.
    pub fn copy_into(&self, out: &mut [i64]) {
        match self {
            RowIds::InPlace => {}
            RowIds::I64(s) => out.copy_from_slice(s),
            RowIds::I32(s) => {
                for (d, &v) in out.iter_mut().zip(s.iter()) {
                    *d = i64::from(v);
                }
            }
        }
    }
}

/// The output arrays of one collation, row-major.
///
/// ```
/// use sftmask::{Batch, Layout};
/// let b = Batch::new(vec![2, 3], Layout::Padded { left: true, multiple_of: Some(4) }, 0, -100).unwrap();
/// assert_eq!(b.shape(), (2, 4));
/// assert_eq!(b.row_range(0), 2..4);
/// ```
#[derive(Debug, Clone)]
pub struct Batch {
    layout: Layout,
    lengths: Vec<usize>,
    offsets: Vec<usize>,
    width: usize,
    /// Token ids (`pad_token_id` on padding).
    pub input_ids: Vec<i64>,
    /// Labels (`ignore_index` on padding and masked tokens).
    pub labels: Vec<i64>,
    /// 1 on tokens, 0 on padding (padded layout only; empty otherwise).
    pub attention_mask: Vec<i64>,
    /// Position of each token in its row (flat layout only; empty otherwise).
    pub position_ids: Vec<i64>,
    /// Sequence boundaries `[0, l0, l0+l1, …]` (flat layout only; empty otherwise): the rows',
    /// or the packed sequences' after [`Batch::set_sequences`].
    pub cu_seq_lens: Vec<i32>,
    /// The sequences of each row (empty until [`Batch::set_sequences`]: one per row).
    sequences: Vec<Vec<usize>>,
}

/// Mutable views of one row's slots.
pub(crate) struct RowMut<'a> {
    pub ids: &'a mut [i64],
    pub labels: &'a mut [i64],
    pub attention: Option<&'a mut [i64]>,
    pub positions: Option<&'a mut [i64]>,
    /// The lengths of the row's packed sequences (empty: the row is one sequence).
    pub sequences: &'a [usize],
}

impl Batch {
    /// Allocates the buffers for rows of the given lengths.
    ///
    /// # Errors
    /// [`Error::EmptyBatch`] for no rows; [`Error::InvalidArgument`] for a zero `multiple_of`, or
    /// a flattened batch longer than `i32::MAX` tokens.
    pub fn new(lengths: Vec<usize>, layout: Layout, pad_token_id: i64, ignore_index: i64) -> Result<Self> {
        if lengths.is_empty() {
            return Err(Error::EmptyBatch);
        }
        let rows = lengths.len();
        let longest = lengths.iter().copied().max().unwrap_or(0);
        let mut batch = Batch {
            layout,
            lengths,
            offsets: Vec::with_capacity(rows),
            width: 0,
            input_ids: Vec::new(),
            labels: Vec::new(),
            attention_mask: Vec::new(),
            position_ids: Vec::new(),
            cu_seq_lens: Vec::new(),
            sequences: Vec::new(),
        };
        match layout {
            Layout::Padded { left, multiple_of } => {
                let too_large = || Error::Allocation("the padded batch: it is too large".into());
                let width = match multiple_of {
                    Some(0) => return Err(Error::InvalidArgument("pad_to_multiple_of must be positive".into())),
                    Some(m) => longest.div_ceil(m).checked_mul(m).ok_or_else(too_large)?,
                    None => longest,
                };
                let total = rows.checked_mul(width).ok_or_else(too_large)?;
                batch.width = width;
                for (r, &len) in batch.lengths.iter().enumerate() {
                    batch.offsets.push(r * width + if left { width - len } else { 0 });
                }
                batch.input_ids = filled(total, pad_token_id)?;
                batch.labels = filled(total, ignore_index)?;
                batch.attention_mask = filled(total, 0)?;
            }
            Layout::Flat => {
                let total: usize = batch.lengths.iter().sum();
                if total > i32::MAX as usize {
                    return Err(Error::InvalidArgument(format!(
                        "{total} tokens do not fit the int32 cu_seq_lens of a padding-free batch"
                    )));
                }
                batch.width = total;
                batch.cu_seq_lens.reserve(rows + 1);
                let mut acc = 0usize;
                batch.cu_seq_lens.push(0);
                for &len in &batch.lengths {
                    batch.offsets.push(acc);
                    acc += len;
                    batch.cu_seq_lens.push(acc as i32);
                }
                batch.input_ids = vec![0; total];
                batch.labels = vec![0; total];
                batch.position_ids = vec![0; total];
            }
        }
        Ok(batch)
    }

    /// Declares rows that are packed bins: `sequences[r]` lists row `r`'s sequence lengths
    /// (summing to its length; an empty list: one sequence). Position ids then restart at
    /// each sequence — in a padded layout too, which gains a `[B, L]` `position_ids` (0 on
    /// padding) — and a flat layout's `cu_seq_lens` follow the sequences, not the rows
    /// (`docs/packing.md#collating-packed-rows`). Zero lengths hold no token and are dropped.
    ///
    /// ```
    /// use sftmask::{Batch, Layout};
    /// let mut b = Batch::new(vec![5, 2], Layout::Flat, 0, -100).unwrap();
    /// b.set_sequences(vec![vec![3, 2], vec![]]).unwrap();
    /// assert_eq!(b.cu_seq_lens, vec![0, 3, 5, 7]);
    /// assert_eq!(b.longest_sequence(), 3);
    /// ```
    ///
    /// # Errors
    /// [`Error::Row`] for lengths that do not add up to the row's; [`Error::InvalidArgument`]
    /// for a count of lists other than the rows'.
    pub fn set_sequences(&mut self, sequences: Vec<Vec<usize>>) -> Result<()> {
        if sequences.len() != self.rows() {
            return Err(Error::InvalidArgument(format!(
                "{} sequence lists for {} rows",
                sequences.len(),
                self.rows()
            )));
        }
        let mut normalized = Vec::with_capacity(sequences.len());
        for (row, (mut seqs, &len)) in sequences.into_iter().zip(&self.lengths).enumerate() {
            seqs.retain(|&l| l > 0);
            let sum = seqs.iter().try_fold(0usize, |a, &l| a.checked_add(l));
            if seqs.is_empty() {
                seqs = if len > 0 { vec![len] } else { Vec::new() };
            } else if sum != Some(len) {
                return Err(Error::Row {
                    row,
                    reason: format!(
                        "seq_lengths {seqs:?} add up to {}, but the row has {len} input_ids",
                        sum.map_or_else(|| "more than usize::MAX".to_string(), |s| s.to_string())
                    ),
                });
            }
            normalized.push(seqs);
        }
        match self.layout {
            Layout::Flat => {
                self.cu_seq_lens.clear();
                self.cu_seq_lens.push(0);
                let mut acc = 0i32;
                for &l in normalized.iter().flatten() {
                    // The total was checked to fit i32 when the batch was made.
                    acc += l as i32;
                    self.cu_seq_lens.push(acc);
                }
            }
            Layout::Padded { .. } => {
                if self.position_ids.is_empty() {
                    self.position_ids = filled(self.input_ids.len(), 0)?;
                }
            }
        }
        self.sequences = normalized;
        Ok(())
    }

    /// Length of the longest sequence: the longest row, or the longest packed sequence after
    /// [`Batch::set_sequences`].
    pub fn longest_sequence(&self) -> usize {
        if self.sequences.is_empty() {
            self.max_length()
        } else {
            self.sequences.iter().flatten().copied().max().unwrap_or(0)
        }
    }

    /// `true` once [`Batch::set_sequences`] has declared packed rows.
    pub fn has_sequences(&self) -> bool {
        !self.sequences.is_empty()
    }

    /// The layout this batch was built with.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// `(rows, columns)` of the output arrays: `(B, L)` padded, `(1, T)` flat.
    pub fn shape(&self) -> (usize, usize) {
        match self.layout {
            Layout::Padded { .. } => (self.lengths.len(), self.width),
            Layout::Flat => (1, self.width),
        }
    }

    /// Number of examples.
    pub fn rows(&self) -> usize {
        self.lengths.len()
    }

    /// Length of each example.
    pub fn lengths(&self) -> &[usize] {
        &self.lengths
    }

    /// Length of the longest example.
    pub fn max_length(&self) -> usize {
        self.lengths.iter().copied().max().unwrap_or(0)
    }

    /// Total number of tokens (padding excluded).
    pub fn tokens(&self) -> usize {
        self.lengths.iter().sum()
    }

    /// Where row `r`'s tokens sit in the flat output buffers.
    pub fn row_range(&self, r: usize) -> std::ops::Range<usize> {
        self.offsets[r]..self.offsets[r] + self.lengths[r]
    }

    /// Row `r`'s token slots in `input_ids`, for a caller that writes the ids itself.
    pub fn row_ids_mut(&mut self, r: usize) -> &mut [i64] {
        let range = self.row_range(r);
        &mut self.input_ids[range]
    }

    /// Row `r`'s slots in `labels`, for a caller that writes given labels itself.
    pub fn row_labels_mut(&mut self, r: usize) -> &mut [i64] {
        let range = self.row_range(r);
        &mut self.labels[range]
    }

    /// Sets the labels of row `r`'s padding (padded layout; nothing in a flat one).
    pub fn fill_padding_labels(&mut self, r: usize, value: i64) {
        if let Layout::Padded { .. } = self.layout {
            let tokens = self.row_range(r);
            let row = r * self.width..(r + 1) * self.width;
            self.labels[row.start..tokens.start].fill(value);
            self.labels[tokens.end..row.end].fill(value);
        }
    }

    /// A buffer shaped like `input_ids`, filled with `pad`, for a per-token column passed
    /// through with the batch (`token_type_ids`); rows go at [`Batch::row_range`].
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the allocation is refused.
    pub fn column(&self, pad: i64) -> Result<Vec<i64>> {
        let (rows, cols) = self.shape();
        filled(rows * cols, pad)
    }

    /// Disjoint mutable views of every row, for filling rows in parallel.
    pub(crate) fn rows_mut(&mut self) -> Vec<RowMut<'_>> {
        let ids = split_rows(&mut self.input_ids, &self.offsets, &self.lengths);
        let labels = split_rows(&mut self.labels, &self.offsets, &self.lengths);
        let (attention, positions) = match self.layout {
            Layout::Padded { .. } => (
                split_rows(&mut self.attention_mask, &self.offsets, &self.lengths),
                if self.position_ids.is_empty() {
                    Vec::new()
                } else {
                    split_rows(&mut self.position_ids, &self.offsets, &self.lengths)
                },
            ),
            Layout::Flat => (
                Vec::new(),
                split_rows(&mut self.position_ids, &self.offsets, &self.lengths),
            ),
        };
        let mut attention = attention.into_iter();
        let mut positions = positions.into_iter();
        let sequences = &self.sequences;
        ids.into_iter()
            .zip(labels)
            .enumerate()
            .map(|(r, (ids, labels))| RowMut {
                ids,
                labels,
                attention: attention.next(),
                positions: positions.next(),
                sequences: sequences.get(r).map_or(&[], Vec::as_slice),
            })
            .collect()
    }
}

/// `vec![value; n]`, but an allocation the system refuses is an error, not an abort (a huge
/// `pad_to_multiple_of` must not kill a training process).
fn filled(n: usize, value: i64) -> Result<Vec<i64>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|_| Error::Allocation(format!("a padded batch of {n} tokens")))?;
    v.resize(n, value);
    Ok(v)
}

/// Cuts `buf` into the disjoint slices `[offset, offset + length)` (offsets ascending).
fn split_rows<'a>(mut buf: &'a mut [i64], offsets: &[usize], lengths: &[usize]) -> Vec<&'a mut [i64]> {
    let mut out = Vec::with_capacity(lengths.len());
    let mut consumed = 0usize;
    for (&offset, &len) in offsets.iter().zip(lengths) {
        let (_, rest) = std::mem::take(&mut buf).split_at_mut(offset - consumed);
        let (row, rest) = rest.split_at_mut(len);
        out.push(row);
        buf = rest;
        consumed = offset + len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_right_and_left() {
        let mut b = Batch::new(
            vec![1, 3],
            Layout::Padded {
                left: false,
                multiple_of: None,
            },
            7,
            -1,
        )
        .unwrap();
        assert_eq!(b.shape(), (2, 3));
        assert_eq!(b.row_range(0), 0..1);
        assert_eq!(b.row_range(1), 3..6);
        let rows = b.rows_mut();
        assert_eq!(rows[0].ids.len(), 1);
        assert_eq!(rows[1].ids.len(), 3);
        let b = Batch::new(
            vec![1, 3],
            Layout::Padded {
                left: true,
                multiple_of: Some(8),
            },
            7,
            -1,
        )
        .unwrap();
        assert_eq!(b.shape(), (2, 8));
        assert_eq!(b.row_range(0), 7..8);
        assert_eq!(b.row_range(1), 13..16);
    }

    #[test]
    fn flat_boundaries() {
        let mut b = Batch::new(vec![2, 0, 3], Layout::Flat, 0, -100).unwrap();
        assert_eq!(b.shape(), (1, 5));
        assert_eq!(b.cu_seq_lens, vec![0, 2, 2, 5]);
        assert_eq!(b.row_range(2), 2..5);
        let rows = b.rows_mut();
        assert_eq!(rows.iter().map(|r| r.ids.len()).collect::<Vec<_>>(), vec![2, 0, 3]);
        assert!(rows[2].positions.is_some());
    }

    #[test]
    fn packed_sequences() {
        let mut b = Batch::new(vec![4, 3], Layout::Flat, 0, -100).unwrap();
        b.set_sequences(vec![vec![1, 0, 3], vec![3]]).unwrap();
        assert_eq!(b.cu_seq_lens, vec![0, 1, 4, 7]);
        assert!(b.set_sequences(vec![vec![2], vec![]]).unwrap_err().row() == Some(0));
        let padded = Layout::Padded {
            left: false,
            multiple_of: None,
        };
        let mut b = Batch::new(vec![4, 3], padded, 0, -100).unwrap();
        b.set_sequences(vec![vec![2, 2], vec![]]).unwrap();
        assert_eq!(b.position_ids.len(), 8);
        let rows = b.rows_mut();
        assert_eq!(rows[0].sequences, &[2, 2]);
        assert_eq!(rows[1].sequences, &[3]);
        assert!(rows[1].positions.is_some());
    }

    #[test]
    fn errors() {
        assert_eq!(Batch::new(vec![], Layout::Flat, 0, 0).unwrap_err(), Error::EmptyBatch);
        assert!(Batch::new(
            vec![1],
            Layout::Padded {
                left: false,
                multiple_of: Some(0)
            },
            0,
            0
        )
        .is_err());
    }
}
