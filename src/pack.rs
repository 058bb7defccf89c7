//! Packing: tokenized, masked rows into bins of at most `max_length` tokens by best-fit
//! decreasing (`docs/packing.md`). Pure bookkeeping on lengths ([`plan`]) followed by one copy
//! of the ids and labels into flat output buffers ([`pack`]); nothing here looks at what the
//! tokens mean.

use std::collections::BTreeSet;
use std::str::FromStr;

use crate::error::{Error, Result};

/// What to do with a row longer than `max_length`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Truncation {
    /// Keep its first `max_length` tokens (`"right"`).
    #[default]
    Right,
    /// Cut it into pieces of `max_length` tokens (the last one shorter), each packed as its own
    /// sequence (`"split"`).
    Split,
}

impl FromStr for Truncation {
    type Err = Error;
    /// ```
    /// use sftmask::pack::Truncation;
    /// assert_eq!("split".parse::<Truncation>().unwrap(), Truncation::Split);
    /// assert!("left".parse::<Truncation>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "right" => Ok(Truncation::Right),
            "split" => Ok(Truncation::Split),
            other => Err(Error::InvalidArgument(format!(
                "truncation must be 'right' or 'split', got {other:?}"
            ))),
        }
    }
}

/// One packed sequence: `len` tokens of row `row` starting at token `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// The row it comes from.
    pub row: usize,
    /// Offset of its first token in that row.
    pub start: usize,
    /// Number of tokens.
    pub len: usize,
}

/// Counts over one packing call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackStats {
    /// Input rows.
    pub rows: u64,
    /// Rows with no tokens (they hold nothing to pack and are left out).
    pub rows_empty: u64,
    /// Sequences packed (rows, plus the extra pieces of split rows).
    pub sequences: u64,
    /// Bins.
    pub bins: u64,
    /// Tokens packed.
    pub tokens: u64,
    /// The bin size.
    pub max_length: u64,
    /// Rows cut to `max_length` (`truncation="right"`).
    pub rows_truncated: u64,
    /// Rows cut into several sequences (`truncation="split"`).
    pub rows_split: u64,
    /// Tokens dropped by truncation.
    pub tokens_dropped: u64,
    /// Packed tokens whose label is not `ignore_index` (counted by [`pack`]; 0 after [`plan`]).
    pub trained_tokens: u64,
}

impl PackStats {
    /// `tokens / (bins * max_length)`; 0 for no bins.
    ///
    /// ```
    /// let s = sftmask::pack::PackStats { bins: 2, tokens: 6, max_length: 4, ..Default::default() };
    /// assert_eq!(s.fill_ratio(), 0.75);
    /// ```
    pub fn fill_ratio(&self) -> f64 {
        if self.bins == 0 {
            0.0
        } else {
            self.tokens as f64 / (self.bins as f64 * self.max_length as f64)
        }
    }
}

/// Which sequences go in which bin, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The sequences, bin after bin.
    pub pieces: Vec<Piece>,
    /// Bin `b` holds `pieces[bin_starts[b]..bin_starts[b + 1]]` (`bins + 1` entries).
    pub bin_starts: Vec<usize>,
    /// Counts (without `trained_tokens`).
    pub stats: PackStats,
}

impl Plan {
    /// Number of bins.
    pub fn bins(&self) -> usize {
        self.bin_starts.len().saturating_sub(1)
    }

    /// The sequences of bin `b`.
    pub fn bin(&self, b: usize) -> &[Piece] {
        &self.pieces[self.bin_starts[b]..self.bin_starts[b + 1]]
    }
}

/// Plans best-fit decreasing packing of rows of the given lengths.
///
/// Sequences are placed longest first (ties: lower row, then earlier piece, first); each goes
/// into the open bin with the least room that still fits it (ties: the older bin), or a new bin.
/// Bins are numbered in the order they are opened, and a bin lists its sequences in the order
/// they were placed. Rows longer than `max_length` are truncated or split; empty rows are left
/// out and counted in [`PackStats::rows_empty`]. `O(n log n)` in the number of sequences: the
/// open bins sit in an ordered set keyed by (room left, bin index).
///
/// ```
/// use sftmask::pack::{plan, Truncation};
/// let p = plan(&[3, 5, 2, 4], 8, Truncation::Right).unwrap();
/// // 5 first (bin 0), then 4 (does not fit bin 0's 3: bin 1), 3 -> bin 0 (exactly full), 2 -> bin 1.
/// let rows: Vec<Vec<usize>> = (0..p.bins()).map(|b| p.bin(b).iter().map(|s| s.row).collect()).collect();
/// assert_eq!(rows, vec![vec![1, 0], vec![3, 2]]);
/// assert_eq!(p.stats.fill_ratio(), 14.0 / 16.0);
/// ```
///
/// # Errors
/// [`Error::InvalidArgument`] for `max_length == 0`.
pub fn plan(lengths: &[usize], max_length: usize, truncation: Truncation) -> Result<Plan> {
    if max_length == 0 {
        return Err(Error::InvalidArgument("max_length must be positive".into()));
    }
    let mut stats = PackStats {
        rows: lengths.len() as u64,
        max_length: max_length as u64,
        ..PackStats::default()
    };
    let mut pieces = Vec::with_capacity(lengths.len());
    for (row, &len) in lengths.iter().enumerate() {
        if len == 0 {
            stats.rows_empty += 1;
        } else if len <= max_length {
            pieces.push(Piece { row, start: 0, len });
        } else {
            match truncation {
                Truncation::Right => {
                    stats.rows_truncated += 1;
                    stats.tokens_dropped += (len - max_length) as u64;
                    pieces.push(Piece {
                        row,
                        start: 0,
                        len: max_length,
                    });
                }
                Truncation::Split => {
                    stats.rows_split += 1;
                    for start in (0..len).step_by(max_length) {
                        pieces.push(Piece {
                            row,
                            start,
                            len: max_length.min(len - start),
                        });
                    }
                }
            }
        }
    }
    // Longest first; pieces were pushed in (row, start) order, so a stable sort keeps that order
    // among equal lengths.
    pieces.sort_by_key(|p| std::cmp::Reverse(p.len));

    let mut open: BTreeSet<(usize, usize)> = BTreeSet::new(); // (room left, bin)
    let mut bin_of = Vec::with_capacity(pieces.len());
    let mut room = Vec::new();
    for p in &pieces {
        let bin = match open.range((p.len, 0)..).next().copied() {
            Some(key) => {
                open.remove(&key);
                key.1
            }
            None => {
                room.push(max_length);
                room.len() - 1
            }
        };
        room[bin] -= p.len;
        if room[bin] > 0 {
            open.insert((room[bin], bin));
        }
        bin_of.push(bin);
    }
    // Counting sort of the pieces by bin, keeping placement order inside a bin.
    let bins = room.len();
    let mut bin_starts = vec![0usize; bins + 1];
    for &b in &bin_of {
        bin_starts[b + 1] += 1;
    }
    for b in 0..bins {
        bin_starts[b + 1] += bin_starts[b];
    }
    let mut next = bin_starts.clone();
    let mut ordered = vec![
        Piece {
            row: 0,
            start: 0,
            len: 0
        };
        pieces.len()
    ];
    for (p, &b) in pieces.iter().zip(&bin_of) {
        ordered[next[b]] = *p;
        next[b] += 1;
    }
    stats.bins = bins as u64;
    stats.sequences = ordered.len() as u64;
    stats.tokens = ordered.iter().map(|p| p.len as u64).sum();
    Ok(Plan {
        pieces: ordered,
        bin_starts,
        stats,
    })
}

/// Packed bins, flat: bin `b`'s tokens are `input_ids[bin_offsets[b]..bin_offsets[b + 1]]`
/// (likewise `labels`, `position_ids`), and its sequence lengths are
/// `seq_lengths[seq_offsets[b]..seq_offsets[b + 1]]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Packed {
    /// Token ids, bin after bin.
    pub input_ids: Vec<i64>,
    /// Labels, as given.
    pub labels: Vec<i64>,
    /// Position of each token in its sequence (restarting at 0 per sequence).
    pub position_ids: Vec<i64>,
    /// Token offsets of the bins (`bins + 1` entries).
    pub bin_offsets: Vec<usize>,
    /// Length of every sequence, bin after bin.
    pub seq_lengths: Vec<usize>,
    /// Offsets of the bins in `seq_lengths` (`bins + 1` entries).
    pub seq_offsets: Vec<usize>,
    /// Where every sequence comes from, in the order of `seq_lengths`.
    pub pieces: Vec<Piece>,
    /// Counts.
    pub stats: PackStats,
}

impl Packed {
    /// Number of bins.
    pub fn bins(&self) -> usize {
        self.bin_offsets.len().saturating_sub(1)
    }
}

/// Packs rows (`ids[r]` with labels `labels[r]`, as long as each other) into bins of at most
/// `max_length` tokens, as [`plan`] places them. The rows may be `i64` or narrower integers
/// (borrowed int32 Arrow buffers are read in place, not copied first).
///
/// ```
/// use sftmask::pack::{pack, Truncation};
/// let ids: [&[i64]; 3] = [&[1, 2, 3], &[4, 5], &[6, 7, 8, 9, 10]];
/// let labels: [&[i64]; 3] = [&[-100, 2, 3], &[-100, 5], &[-100, -100, 8, 9, 10]];
/// let p = pack(&ids, &labels, 4, Truncation::Split, -100).unwrap();
/// assert_eq!(p.bin_offsets, vec![0, 4, 8, 10]);
/// assert_eq!(p.input_ids, vec![6, 7, 8, 9, 1, 2, 3, 10, 4, 5]);
/// assert_eq!(p.position_ids, vec![0, 1, 2, 3, 0, 1, 2, 0, 0, 1]);
/// assert_eq!(p.seq_lengths, vec![4, 3, 1, 2]);
/// assert_eq!((p.stats.bins, p.stats.rows_split, p.stats.trained_tokens), (3, 1, 6));
/// ```
///
/// # Errors
/// [`Error::InvalidArgument`] for `max_length == 0` or `ids` and `labels` of different counts;
/// [`Error::Row`] for a row whose labels and ids differ in length.
pub fn pack<T, U>(
    ids: &[&[T]],
    labels: &[&[U]],
    max_length: usize,
    truncation: Truncation,
    ignore_index: i64,
) -> Result<Packed>
where
    T: Copy + Into<i64>,
    U: Copy + Into<i64>,
{
    if ids.len() != labels.len() {
        return Err(Error::InvalidArgument(format!(
            "{} rows of input_ids and {} of labels",
            ids.len(),
            labels.len()
        )));
    }
    for (row, (i, l)) in ids.iter().zip(labels).enumerate() {
        if i.len() != l.len() {
            return Err(Error::Row {
                row,
                reason: format!("{} labels for {} input_ids", l.len(), i.len()),
            });
        }
    }
    let lengths: Vec<usize> = ids.iter().map(|r| r.len()).collect();
    let plan = plan(&lengths, max_length, truncation)?;
    let total = plan.stats.tokens as usize;
    let mut out = Packed {
        input_ids: Vec::with_capacity(total),
        labels: Vec::with_capacity(total),
        position_ids: Vec::with_capacity(total),
        bin_offsets: Vec::with_capacity(plan.bins() + 1),
        seq_lengths: Vec::with_capacity(plan.pieces.len()),
        seq_offsets: Vec::with_capacity(plan.bins() + 1),
        pieces: Vec::new(),
        stats: plan.stats.clone(),
    };
    out.bin_offsets.push(0);
    out.seq_offsets.push(0);
    for b in 0..plan.bins() {
        for p in plan.bin(b) {
            let range = p.start..p.start + p.len;
            out.input_ids
                .extend(ids[p.row][range.clone()].iter().map(|&x| x.into()));
            let before = out.labels.len();
            out.labels.extend(labels[p.row][range].iter().map(|&x| x.into()));
            let trained = out.labels[before..].iter().filter(|&&x| x != ignore_index).count();
            out.stats.trained_tokens += trained as u64;
            out.position_ids.extend(0..p.len as i64);
            out.seq_lengths.push(p.len);
        }
        out.bin_offsets.push(out.input_ids.len());
        out.seq_offsets.push(out.seq_lengths.len());
    }
    out.pieces = plan.pieces;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny deterministic generator (no dependency) for the property checks.
    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        *seed >> 33
    }

    /// Best fit by brute force: for each sequence (longest first), scan every bin.
    fn brute_force_bins(lengths: &[usize], max_length: usize) -> usize {
        let mut seqs: Vec<usize> = lengths.iter().map(|&l| l.min(max_length)).filter(|&l| l > 0).collect();
        seqs.sort_by(|a, b| b.cmp(a));
        let mut room: Vec<usize> = Vec::new();
        for s in seqs {
            let best = room
                .iter()
                .enumerate()
                .filter(|(_, &r)| r >= s)
                .min_by_key(|(i, &r)| (r, *i))
                .map(|(i, _)| i);
            match best {
                Some(i) => room[i] -= s,
                None => room.push(max_length - s),
            }
        }
        room.len()
    }

    #[test]
    fn every_token_once_and_bins_bounded() {
        let mut seed = 7u64;
        for _ in 0..200 {
            let max_length = 1 + (lcg(&mut seed) % 40) as usize;
            let n = (lcg(&mut seed) % 30) as usize;
            let lengths: Vec<usize> = (0..n).map(|_| (lcg(&mut seed) % 60) as usize).collect();
            for truncation in [Truncation::Right, Truncation::Split] {
                let p = plan(&lengths, max_length, truncation).unwrap();
                let mut seen: Vec<Vec<bool>> = lengths.iter().map(|&l| vec![false; l]).collect();
                for b in 0..p.bins() {
                    let used: usize = p.bin(b).iter().map(|s| s.len).sum();
                    assert!(used <= max_length && used > 0);
                    for s in p.bin(b) {
                        for slot in &mut seen[s.row][s.start..s.start + s.len] {
                            assert!(!*slot, "token placed twice");
                            *slot = true;
                        }
                    }
                }
                for (r, row) in seen.iter().enumerate() {
                    let kept = row.iter().filter(|&&x| x).count();
                    let expected = match truncation {
                        Truncation::Split => lengths[r],
                        Truncation::Right => lengths[r].min(max_length),
                    };
                    assert_eq!(kept, expected);
                    // What is kept is a prefix (right truncation) or everything (split).
                    assert!(row[..kept].iter().all(|&x| x));
                }
                if truncation == Truncation::Right {
                    assert_eq!(p.bins(), brute_force_bins(&lengths, max_length));
                }
            }
        }
    }

    #[test]
    fn deterministic_ties_by_row() {
        let p = plan(&[2, 2, 2, 2], 4, Truncation::Right).unwrap();
        assert_eq!(p.pieces.iter().map(|s| s.row).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
        assert_eq!(p.bin_starts, vec![0, 2, 4]);
    }

    #[test]
    fn empty_rows_and_errors() {
        let p = plan(&[0, 3, 0], 4, Truncation::Right).unwrap();
        assert_eq!((p.stats.rows, p.stats.rows_empty, p.stats.bins), (3, 2, 1));
        let none = plan(&[], 4, Truncation::Right).unwrap();
        assert_eq!((none.bins(), none.stats.fill_ratio()), (0, 0.0));
        assert!(plan(&[1], 0, Truncation::Right).is_err());
        let ids: [&[i64]; 1] = [&[1, 2]];
        let labels: [&[i64]; 1] = [&[1]];
        assert_eq!(
            pack(&ids, &labels, 4, Truncation::Right, -100).unwrap_err().row(),
            Some(0)
        );
    }

    #[test]
    fn right_truncation_counts() {
        let ids: [&[i64]; 2] = [&[1, 2, 3, 4, 5], &[6]];
        let labels: [&[i64]; 2] = [&[1, 2, 3, 4, 5], &[-100]];
        let p = pack(&ids, &labels, 3, Truncation::Right, -100).unwrap();
        assert_eq!(p.input_ids, vec![1, 2, 3, 6]);
        assert_eq!(p.bin_offsets, vec![0, 3, 4]);
        assert_eq!(
            (p.stats.rows_truncated, p.stats.tokens_dropped, p.stats.trained_tokens),
            (1, 2, 3)
        );
    }
}
