//! `sftmask._core.pack`: best-fit decreasing packing of masked rows (`crate::pack`).

use numpy::IntoPyArray;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::convert::{ids_source, ints_vec, Count, Int, Source};
use super::errors::{core, detach_guarded, guarded, option_err, row_err};
use super::stats::PyPackStats;
use crate::pack::Truncation;
use crate::RowIds;

/// Reads every row of `rows` (a sequence of int sequences) into one flat buffer; returns it and
/// the row offsets. Each row's source is dropped once copied: numpy's borrow tracking checks a new
/// borrow against the live ones of the same base array, so holding a borrow per row (views of one
/// Arrow buffer) would make reading quadratic.
fn read_rows(rows: &Bound<'_, PyAny>, key: &str) -> PyResult<(Vec<i64>, Vec<usize>)> {
    let mut flat = Vec::new();
    let mut offsets = vec![0usize];
    for (r, item) in rows.try_iter()?.enumerate() {
        let source = ids_source(item?, r, key, true)?;
        let start = flat.len();
        flat.resize(start + source.len(), 0);
        source.copy_all(&mut flat[start..], r, key)?;
        offsets.push(flat.len());
    }
    Ok((flat, offsets))
}

/// Checks flat row offsets (`rows + 1` ascending entries from 0 to `len`).
fn check_offsets(offsets: &[i64], len: usize, key: &str) -> PyResult<Vec<usize>> {
    let bad = || option_err(format!("offsets must rise from 0 to the length of {key} ({len})"));
    let mut out = Vec::with_capacity(offsets.len());
    for &o in offsets {
        let o = usize::try_from(o).map_err(|_| bad())?;
        if out.last().is_some_and(|&prev| o < prev) {
            return Err(bad());
        }
        out.push(o);
    }
    if out.first() != Some(&0) || out.last() != Some(&len) {
        return Err(bad());
    }
    Ok(out)
}

/// One flat column, borrowed where numpy allows it (int64 / int32), else copied.
enum Flat<'a> {
    I64(&'a [i64]),
    I32(&'a [i32]),
}

fn flat<'a>(source: &'a Source<'_>, copy: &'a mut Vec<i64>, key: &str) -> PyResult<Flat<'a>> {
    Ok(match source.row_ids(0)? {
        RowIds::I64(s) => Flat::I64(s),
        RowIds::I32(s) => Flat::I32(s),
        RowIds::InPlace => {
            *copy = vec![0; source.len()];
            source.copy_all(copy, 0, key)?;
            Flat::I64(copy)
        }
    })
}

/// [`crate::pack::pack`] over flat columns cut at `offsets`.
fn pack_rows<T: Copy + Into<i64>, U: Copy + Into<i64>>(
    ids: &[T],
    labels: &[U],
    offsets: &[usize],
    max_length: usize,
    truncation: Truncation,
    ignore_index: i64,
) -> crate::Result<crate::pack::Packed> {
    let ids: Vec<&[T]> = offsets.windows(2).map(|w| &ids[w[0]..w[1]]).collect();
    let labels: Vec<&[U]> = offsets.windows(2).map(|w| &labels[w[0]..w[1]]).collect();
    crate::pack::pack(&ids, &labels, max_length, truncation, ignore_index)
}

/// Packs rows into bins of at most ``max_length`` tokens (best-fit decreasing, deterministic).
///
/// ``input_ids`` and ``labels`` are sequences of int sequences (lists or 1-D int arrays), one per
/// row. Returns ``(arrays, stats)``: ``arrays`` holds flat int64 numpy arrays ``input_ids``,
/// ``labels``, ``position_ids`` (bin after bin), ``bin_offsets`` (bins + 1 token offsets),
/// ``seq_lengths`` with ``seq_offsets`` (bins + 1 offsets into it), and ``seq_rows`` /
/// ``seq_starts`` (where each sequence comes from). ``sftmask.pack`` splits them per bin.
///
/// With ``offsets`` (``rows + 1`` ints), ``input_ids`` and ``labels`` are instead flat 1-D
/// arrays holding every row, row ``r`` at ``offsets[r]:offsets[r + 1]`` in both (an Arrow list
/// column's values and offsets: int64/int32 arrays are read in place, no Python object per row).
///
/// >>> arrays, stats = pack([[1, 2, 3], [4, 5]], [[-100, 2, 3], [-100, 5]], 4)
/// >>> arrays["bin_offsets"].tolist(), stats.bins
/// ([0, 3, 5], 2)
#[pyfunction]
#[pyo3(
    signature = (input_ids, labels, max_length, *, truncation = "right", ignore_index = Int(-100), offsets = None),
    text_signature = "(input_ids, labels, max_length, *, truncation='right', ignore_index=-100, offsets=None)"
)]
pub(crate) fn pack<'py>(
    py: Python<'py>,
    input_ids: &Bound<'py, PyAny>,
    labels: &Bound<'py, PyAny>,
    max_length: Count,
    truncation: &str,
    ignore_index: Int,
    offsets: Option<&Bound<'py, PyAny>>,
) -> PyResult<(Bound<'py, PyDict>, PyPackStats)> {
    guarded(|| {
        let truncation: Truncation = core(truncation.parse())?;
        let (max_length, ignore_index) = (max_length.0, ignore_index.0);
        let run = |ids: Flat<'_>, labels: Flat<'_>, offsets: &[usize]| {
            detach_guarded(py, || {
                let (m, t, ig) = (max_length, truncation, ignore_index);
                match (ids, labels) {
                    (Flat::I64(i), Flat::I64(l)) => pack_rows(i, l, offsets, m, t, ig),
                    (Flat::I64(i), Flat::I32(l)) => pack_rows(i, l, offsets, m, t, ig),
                    (Flat::I32(i), Flat::I64(l)) => pack_rows(i, l, offsets, m, t, ig),
                    (Flat::I32(i), Flat::I32(l)) => pack_rows(i, l, offsets, m, t, ig),
                }
            })
        };
        let packed = match offsets.filter(|o| !o.is_none()) {
            Some(o) => {
                // Flat columns (Arrow values): borrowed, one offsets array for both.
                let o = ints_vec(o, 0, "offsets")?;
                let id_values = ids_source(input_ids.clone(), 0, "input_ids", true)?;
                let label_values = ids_source(labels.clone(), 0, "labels", true)?;
                let offsets = check_offsets(&o, id_values.len(), "input_ids")?;
                check_offsets(&o, label_values.len(), "labels")?;
                let (mut a, mut b) = (Vec::new(), Vec::new());
                let ids = flat(&id_values, &mut a, "input_ids")?;
                let labels = flat(&label_values, &mut b, "labels")?;
                core(run(ids, labels, &offsets)?)?
            }
            None => {
                let (ids, id_offsets) = read_rows(input_ids, "input_ids")?;
                let (labs, label_offsets) = read_rows(labels, "labels")?;
                let rows = id_offsets.len() - 1;
                if label_offsets.len() - 1 != rows {
                    return Err(option_err(format!(
                        "{rows} rows of input_ids and {} of labels",
                        label_offsets.len() - 1
                    )));
                }
                for r in 0..rows {
                    let (n, m) = (
                        id_offsets[r + 1] - id_offsets[r],
                        label_offsets[r + 1] - label_offsets[r],
                    );
                    if n != m {
                        return Err(row_err(r, format!("{m} labels for {n} input_ids")));
                    }
                }
                core(run(Flat::I64(&ids), Flat::I64(&labs), &id_offsets)?)?
            }
        };
        let out = PyDict::new(py);
        let as_i64 = |v: &[usize]| v.iter().map(|&x| x as i64).collect::<Vec<i64>>();
        out.set_item("bin_offsets", as_i64(&packed.bin_offsets).into_pyarray(py))?;
        out.set_item("seq_lengths", as_i64(&packed.seq_lengths).into_pyarray(py))?;
        out.set_item("seq_offsets", as_i64(&packed.seq_offsets).into_pyarray(py))?;
        let rows_of: Vec<usize> = packed.pieces.iter().map(|p| p.row).collect();
        let starts_of: Vec<usize> = packed.pieces.iter().map(|p| p.start).collect();
        out.set_item("seq_rows", as_i64(&rows_of).into_pyarray(py))?;
        out.set_item("seq_starts", as_i64(&starts_of).into_pyarray(py))?;
        let stats = PyPackStats::from(packed.stats);
        out.set_item("input_ids", packed.input_ids.into_pyarray(py))?;
        out.set_item("labels", packed.labels.into_pyarray(py))?;
        out.set_item("position_ids", packed.position_ids.into_pyarray(py))?;
        Ok((out, stats))
    })
}
