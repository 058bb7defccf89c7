//! `sftmask._core.pack`: best-fit decreasing packing of masked rows (`crate::pack`).

use numpy::IntoPyArray;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::convert::{ids_source, Count, Int, Source};
use super::errors::{core, detach_guarded, guarded, row_err};
use super::stats::PyPackStats;
use crate::pack::Truncation;

/// Reads every row of `rows` (a sequence of int sequences) into one flat buffer; returns it and
/// the row offsets.
fn read_rows(rows: &Bound<'_, PyAny>, key: &str) -> PyResult<(Vec<i64>, Vec<usize>)> {
    let n = rows.len().unwrap_or(0);
    let mut sources: Vec<Source<'_>> = Vec::with_capacity(n);
    for (r, item) in rows.try_iter()?.enumerate() {
        sources.push(ids_source(item?, r, key, true)?);
    }
    let mut offsets = Vec::with_capacity(sources.len() + 1);
    offsets.push(0usize);
    for s in &sources {
        offsets.push(offsets[offsets.len() - 1] + s.len());
    }
    let mut flat = vec![0i64; offsets[offsets.len() - 1]];
    for (r, s) in sources.iter().enumerate() {
        s.copy_all(&mut flat[offsets[r]..offsets[r + 1]], r, key)?;
    }
    Ok((flat, offsets))
}

/// Packs rows into bins of at most ``max_length`` tokens (best-fit decreasing, deterministic).
///
/// ``input_ids`` and ``labels`` are sequences of int sequences (lists or 1-D int arrays), one per
/// row. Returns ``(arrays, stats)``: ``arrays`` holds flat int64 numpy arrays ``input_ids``,
/// ``labels``, ``position_ids`` (bin after bin), ``bin_offsets`` (bins + 1 token offsets),
/// ``seq_lengths`` with ``seq_offsets`` (bins + 1 offsets into it), and ``seq_rows`` /
/// ``seq_starts`` (where each sequence comes from). ``sftmask.pack`` splits them per bin.
///
/// >>> arrays, stats = pack([[1, 2, 3], [4, 5]], [[-100, 2, 3], [-100, 5]], 4)
/// >>> arrays["bin_offsets"].tolist(), stats.bins
/// ([0, 3, 5], 2)
#[pyfunction]
#[pyo3(
    signature = (input_ids, labels, max_length, *, truncation = "right", ignore_index = Int(-100)),
    text_signature = "(input_ids, labels, max_length, *, truncation='right', ignore_index=-100)"
)]
pub(crate) fn pack<'py>(
    py: Python<'py>,
    input_ids: &Bound<'py, PyAny>,
    labels: &Bound<'py, PyAny>,
    max_length: Count,
    truncation: &str,
    ignore_index: Int,
) -> PyResult<(Bound<'py, PyDict>, PyPackStats)> {
    guarded(|| {
        let truncation: Truncation = core(truncation.parse())?;
        let (ids, id_offsets) = read_rows(input_ids, "input_ids")?;
        let (labs, label_offsets) = read_rows(labels, "labels")?;
        let rows = id_offsets.len() - 1;
        if label_offsets.len() - 1 != rows {
            return Err(super::errors::option_err(format!(
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
        let packed = core(detach_guarded(py, || {
            let id_rows: Vec<&[i64]> = (0..rows).map(|r| &ids[id_offsets[r]..id_offsets[r + 1]]).collect();
            let label_rows: Vec<&[i64]> = (0..rows)
                .map(|r| &labs[label_offsets[r]..label_offsets[r + 1]])
                .collect();
            crate::pack::pack(&id_rows, &label_rows, max_length.0, truncation, ignore_index.0)
        })?)?;
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
