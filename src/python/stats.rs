//! `sftmask.Stats`: the one stats type of every entry point.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::Stats;

/// What a call (or, for `collator.stats`, every call so far) did: one field vocabulary for
/// the collator, `tokenize_and_mask`, `sftmask check --format json` and `docs/masking.md#stats`.
///
/// ``missing_rows`` / ``missing_instruction_rows`` list the rows of one call (indices within
/// it); running totals keep the counts only.
///
/// >>> from sftmask import Stats
/// >>> s = Stats(rows=2, tokens=10, trained_tokens=4)
/// >>> s.trained_fraction
/// 0.4
/// >>> s.rows_without_template
/// 0
#[pyclass(name = "Stats", module = "sftmask", frozen, eq)]
#[derive(Clone, PartialEq, Eq)]
pub struct PyStats {
    /// Examples.
    #[pyo3(get)]
    rows: u64,
    /// Tokens (padding excluded).
    #[pyo3(get)]
    tokens: u64,
    /// Tokens whose label is their id.
    #[pyo3(get)]
    trained_tokens: u64,
    /// Trained tokens that straddle a template boundary.
    #[pyo3(get)]
    straddling_tokens: u64,
    /// Rows without a response template (labels="keep": rows whose labels train nothing).
    #[pyo3(get)]
    rows_without_template: u64,
    /// compat="trl": rows without the instruction template.
    #[pyo3(get)]
    rows_without_instruction_template: u64,
    /// Rows with no trained token.
    #[pyo3(get)]
    rows_without_trained_tokens: u64,
    /// Rows cut by max_length (preprocessing).
    #[pyo3(get)]
    rows_truncated: u64,
    /// Rows of this call without a response template.
    #[pyo3(get)]
    missing_rows: Vec<usize>,
    /// Rows of this call without the instruction template (compat="trl").
    #[pyo3(get)]
    missing_instruction_rows: Vec<usize>,
    /// Conversations whose trained turns cannot be located exactly (labels all ignore_index).
    #[pyo3(get)]
    rows_not_located: u64,
    /// Trained turns whose region does not end in a special token (an untrained stop token).
    #[pyo3(get)]
    turns_without_end_marker: u64,
    /// Rows of this call counted in rows_not_located.
    #[pyo3(get)]
    not_located_rows: Vec<usize>,
    /// Rows of this call with a turn counted in turns_without_end_marker.
    #[pyo3(get)]
    turns_without_end_marker_rows: Vec<usize>,
}

impl From<Stats> for PyStats {
    fn from(s: Stats) -> Self {
        PyStats {
            rows: s.rows,
            tokens: s.tokens,
            trained_tokens: s.trained_tokens,
            straddling_tokens: s.straddling_tokens,
            rows_without_template: s.rows_without_template,
            rows_without_instruction_template: s.rows_without_instruction_template,
            rows_without_trained_tokens: s.rows_without_trained_tokens,
            rows_truncated: s.rows_truncated,
            missing_rows: s.missing_rows,
            missing_instruction_rows: s.missing_instruction_rows,
            rows_not_located: s.rows_not_located,
            turns_without_end_marker: s.turns_without_end_marker,
            not_located_rows: s.not_located_rows,
            turns_without_end_marker_rows: s.turns_without_end_marker_rows,
        }
    }
}

const FIELDS: [&str; 14] = [
    "rows",
    "tokens",
    "trained_tokens",
    "straddling_tokens",
    "rows_without_template",
    "rows_without_instruction_template",
    "rows_without_trained_tokens",
    "rows_truncated",
    "missing_rows",
    "missing_instruction_rows",
    "rows_not_located",
    "turns_without_end_marker",
    "not_located_rows",
    "turns_without_end_marker_rows",
];

#[pymethods]
impl PyStats {
    #[new]
    #[pyo3(signature = (*, rows = 0, tokens = 0, trained_tokens = 0, straddling_tokens = 0, rows_without_template = 0,
                        rows_without_instruction_template = 0, rows_without_trained_tokens = 0, rows_truncated = 0,
                        missing_rows = Vec::new(), missing_instruction_rows = Vec::new(), rows_not_located = 0,
                        turns_without_end_marker = 0, not_located_rows = Vec::new(),
                        turns_without_end_marker_rows = Vec::new()))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        rows: u64,
        tokens: u64,
        trained_tokens: u64,
        straddling_tokens: u64,
        rows_without_template: u64,
        rows_without_instruction_template: u64,
        rows_without_trained_tokens: u64,
        rows_truncated: u64,
        missing_rows: Vec<usize>,
        missing_instruction_rows: Vec<usize>,
        rows_not_located: u64,
        turns_without_end_marker: u64,
        not_located_rows: Vec<usize>,
        turns_without_end_marker_rows: Vec<usize>,
    ) -> Self {
        PyStats {
            rows,
            tokens,
            trained_tokens,
            straddling_tokens,
            rows_without_template,
            rows_without_instruction_template,
            rows_without_trained_tokens,
            rows_truncated,
            missing_rows,
            missing_instruction_rows,
            rows_not_located,
            turns_without_end_marker,
            not_located_rows,
            turns_without_end_marker_rows,
        }
    }

    /// Trained tokens over all tokens (0.0 when there are none).
    #[getter]
    fn trained_fraction(&self) -> f64 {
        if self.tokens == 0 {
            0.0
        } else {
            self.trained_tokens as f64 / self.tokens as f64
        }
    }

    /// The old name of ``rows`` (``CollatorStats.examples``); kept for one release.
    #[getter]
    fn examples(&self) -> u64 {
        self.rows
    }

    /// The fields as a dict (the keys of ``sftmask check --format json``), plus ``trained_fraction``.
    ///
    /// >>> Stats(rows=1).as_dict()["rows"]
    /// 1
    fn as_dict<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new(slf.py());
        for name in FIELDS {
            out.set_item(name, slf.getattr(name)?)?;
        }
        out.set_item("trained_fraction", slf.get().trained_fraction())?;
        Ok(out)
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let mut parts = Vec::with_capacity(FIELDS.len());
        for name in FIELDS {
            parts.push(format!("{name}={}", slf.getattr(name)?.repr()?));
        }
        Ok(format!("Stats({})", parts.join(", ")))
    }

    /// Pickles by its fields (DataLoader workers, `datasets.map`).
    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
        let py = slf.py();
        let kwargs = PyDict::new(py);
        for name in FIELDS {
            kwargs.set_item(name, slf.getattr(name)?)?;
        }
        let rebuild = py.import("sftmask._core")?.getattr("_stats_from_dict")?;
        Ok((rebuild, PyTuple::new(py, [kwargs])?))
    }
}

/// Rebuilds a pickled `Stats` (keyword-only constructors cannot be reached from `__reduce__`).
#[pyfunction]
pub(crate) fn _stats_from_dict(py: Python<'_>, fields: &Bound<'_, PyDict>) -> PyResult<Py<PyStats>> {
    let cls = py.get_type::<PyStats>();
    Ok(cls.call((), Some(fields))?.cast_into::<PyStats>()?.unbind())
}

/// What one ``sftmask.pack`` call did. A type of its own rather than more ``Stats`` fields:
/// ``Stats`` counts what masking did to rows, and bins or a fill ratio mean nothing for a
/// collation or a preprocessing call.
///
/// >>> _, stats = pack([[1, 2, 3], [4, 5]], [[1, 2, 3], [-100, 5]], 4)
/// >>> stats.bins, stats.fill_ratio, stats.trained_tokens
/// (2, 0.625, 4)
#[pyclass(name = "PackStats", module = "sftmask", frozen, eq)]
#[derive(Clone, PartialEq, Eq)]
pub struct PyPackStats {
    /// Input rows.
    #[pyo3(get)]
    rows: u64,
    /// Rows with no tokens (nothing to pack; left out).
    #[pyo3(get)]
    rows_empty: u64,
    /// Sequences packed (rows, plus the extra pieces of split rows).
    #[pyo3(get)]
    sequences: u64,
    /// Bins.
    #[pyo3(get)]
    bins: u64,
    /// Tokens packed.
    #[pyo3(get)]
    tokens: u64,
    /// The bin size.
    #[pyo3(get)]
    max_length: u64,
    /// Rows cut to max_length (truncation="right").
    #[pyo3(get)]
    rows_truncated: u64,
    /// Rows cut into several sequences (truncation="split").
    #[pyo3(get)]
    rows_split: u64,
    /// Tokens dropped by truncation.
    #[pyo3(get)]
    tokens_dropped: u64,
    /// Packed tokens whose label is not ignore_index.
    #[pyo3(get)]
    trained_tokens: u64,
}

impl From<crate::pack::PackStats> for PyPackStats {
    fn from(s: crate::pack::PackStats) -> Self {
        PyPackStats {
            rows: s.rows,
            rows_empty: s.rows_empty,
            sequences: s.sequences,
            bins: s.bins,
            tokens: s.tokens,
            max_length: s.max_length,
            rows_truncated: s.rows_truncated,
            rows_split: s.rows_split,
            tokens_dropped: s.tokens_dropped,
            trained_tokens: s.trained_tokens,
        }
    }
}

const PACK_FIELDS: [&str; 10] = [
    "rows",
    "rows_empty",
    "sequences",
    "bins",
    "tokens",
    "max_length",
    "rows_truncated",
    "rows_split",
    "tokens_dropped",
    "trained_tokens",
];

#[pymethods]
impl PyPackStats {
    /// tokens / (bins * max_length); 0.0 for no bins.
    #[getter]
    fn fill_ratio(&self) -> f64 {
        if self.bins == 0 {
            0.0
        } else {
            self.tokens as f64 / (self.bins as f64 * self.max_length as f64)
        }
    }

    /// The fields as a dict, plus ``fill_ratio``.
    fn as_dict<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new(slf.py());
        for name in PACK_FIELDS {
            out.set_item(name, slf.getattr(name)?)?;
        }
        out.set_item("fill_ratio", slf.get().fill_ratio())?;
        Ok(out)
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let mut parts = Vec::with_capacity(PACK_FIELDS.len() + 1);
        for name in PACK_FIELDS {
            parts.push(format!("{name}={}", slf.getattr(name)?.repr()?));
        }
        parts.push(format!("fill_ratio={:.4}", slf.get().fill_ratio()));
        Ok(format!("PackStats({})", parts.join(", ")))
    }
}
