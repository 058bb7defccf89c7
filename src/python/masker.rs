//! `sftmask._core.Masker`: the masking engine with its options, parsed once.

use std::sync::{Arc, Mutex};

use numpy::ndarray::Array2;
use numpy::IntoPyArray;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use super::convert::{example, examples_list, extra_keys, ids_vec, template_arg, Count, Example, Int};
use super::errors::{core, core_err, detach_guarded, guarded, new_err, option_err, option_type_err, Kind};
use super::stats::PyStats;
use super::vocab::PyVocab;
use crate::{Batch, Error, Layout, Masker, OnMissing, Padding, PaddingSide, RowIds, Stats, Template, TrainOn};

/// Masks and collates batches for one tokenizer, one label source and one set of options.
///
/// ``labels="mask"`` finds the templates (``compat="exact"``, or TRL 0.19.1's token rule with
/// ``compat="trl"``); ``labels="keep"`` pads the labels each example carries.
///
/// >>> masker = Masker(vocab, "<|im_start|>assistant\n", ["<|im_start|>user\n"], pad_token_id=0)
/// >>> ids = vocab_ids("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n")
/// >>> arrays, stats = masker.collate([{"input_ids": ids}])
/// >>> stats.rows, stats.rows_without_template, arrays["labels"].shape == (1, len(ids))
/// (1, 0, True)
#[pyclass(name = "Masker", module = "sftmask._core", frozen)]
pub struct PyMasker {
    // Boxed: memchr's SIMD finders need 32-byte alignment, more than Python's allocator gives
    // an object's inline storage.
    inner: Box<Masker>,
    /// `None` when a padded layout lacks a pad token: an error when a batch is collated (or
    /// [`PyMasker::check_padding`] is called), so a masker that only inspects needs none.
    padding: Option<Padding>,
    padding_options: (bool, PaddingSide, Option<usize>),
    pad_token_type_id: i64,
    threads: Option<usize>,
    totals: Mutex<Stats>,
}

fn parse<T: std::str::FromStr<Err = Error>>(s: &str) -> PyResult<T> {
    core(s.parse())
}

#[pymethods]
impl PyMasker {
    #[new]
    #[pyo3(
        signature = (vocab, response_template = None, instruction_templates = None, *, labels = "mask", compat = "exact",
                     ignore_index = Int(-100), train_on = "all", on_missing = "warn", pad_token_id = None,
                     padding_side = "right", padding_free = false, pad_to_multiple_of = None, num_threads = None,
                     pad_token_type_id = Int(0)),
        text_signature = "(vocab, response_template=None, instruction_templates=None, *, labels='mask', compat='exact', ignore_index=-100, train_on='all', on_missing='warn', pad_token_id=None, padding_side='right', padding_free=False, pad_to_multiple_of=None, num_threads=None, pad_token_type_id=0)"
    )]
    #[allow(clippy::too_many_arguments)]
    fn new(
        vocab: &PyVocab,
        response_template: Option<&Bound<'_, PyAny>>,
        instruction_templates: Option<&Bound<'_, PyAny>>,
        labels: &str,
        compat: &str,
        ignore_index: Int,
        train_on: &str,
        on_missing: &str,
        pad_token_id: Option<Int>,
        padding_side: &str,
        padding_free: bool,
        pad_to_multiple_of: Option<Count>,
        num_threads: Option<Count>,
        pad_token_type_id: Int,
    ) -> PyResult<Self> {
        let (ignore_index, pad_token_id, pad_token_type_id) =
            (ignore_index.0, pad_token_id.map(|p| p.0), pad_token_type_id.0);
        let (pad_to_multiple_of, num_threads) = (pad_to_multiple_of.map(|c| c.0), num_threads.map(|c| c.0));
        guarded(|| {
            let train_on: TrainOn = parse(train_on)?;
            let on_missing: OnMissing = parse(on_missing)?;
            let side: PaddingSide = parse(padding_side)?;
            if num_threads.is_some_and(|n| n > 4096) {
                return Err(option_err(format!(
                    "num_threads must be a positive int (at most 4096), got {}",
                    num_threads.unwrap_or_default()
                )));
            }
            let vocab = Arc::clone(&vocab.inner);
            let masker = match (labels, compat) {
                ("keep", "exact") => Masker::given(vocab, ignore_index),
                ("keep", "trl") => {
                    return Err(option_err(
                        "labels='keep' pads the labels it is given; compat='trl' computes them: pick one",
                    ))
                }
                ("mask", "exact") => {
                    let (response, instructions) = templates(response_template, instruction_templates)?;
                    core(Masker::new(vocab, &response, &instructions, ignore_index, train_on))?
                }
                ("mask", "trl") => {
                    let (response, mut instructions) = templates(response_template, instruction_templates)?;
                    let ids = |t: Template, name: &str| match t {
                        Template::Ids(ids) => Ok(ids),
                        Template::Text(_) => Err(option_type_err(format!(
                            "compat='trl' takes {name} as token ids (TRL tokenizes a string template alone)"
                        ))),
                    };
                    if instructions.len() > 1 {
                        return Err(option_err(
                            "compat='trl' takes at most one instruction template, as TRL 0.19.1 does",
                        ));
                    }
                    let response = ids(response, "response_template")?;
                    let instruction = instructions.pop().map(|t| ids(t, "instruction_template")).transpose()?;
                    core(Masker::trl(vocab, response, instruction, pad_token_id, ignore_index))?
                }
                ("mask" | "keep", other) => {
                    return Err(option_err(format!("compat must be 'exact' or 'trl', got {other:?}")))
                }
                (other, _) => return Err(option_err(format!("labels must be 'mask' or 'keep', got {other:?}"))),
            };
            Ok(PyMasker {
                inner: Box::new(masker.with_on_missing(on_missing)),
                padding: Padding::new(padding_free, side, pad_to_multiple_of, pad_token_id).ok(),
                padding_options: (padding_free, side, pad_to_multiple_of),
                pad_token_type_id,
                threads: num_threads,
                totals: Mutex::new(Stats::default()),
            })
        })
    }

    /// The response template as bytes of the searchable text (empty for labels="keep").
    #[getter]
    fn response_template<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        Ok(PyBytes::new(py, &core(self.inner.template_texts())?.0))
    }

    /// The instruction templates as bytes of the searchable text.
    #[getter]
    fn instruction_templates<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        let (_, instructions) = core(self.inner.template_texts())?;
        Ok(instructions.iter().map(|t| PyBytes::new(py, t)).collect())
    }

    /// Totals over every batch this masker has collated (row indices are per call: empty here).
    #[getter]
    fn totals(&self) -> PyStats {
        self.totals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .into()
    }

    /// Pads (or flattens) a batch and sets its labels.
    ///
    /// Returns ``(arrays, stats)``: ``arrays`` maps names to numpy arrays (and
    /// ``max_length_q``/``max_length_k`` to ints when padding-free); per-token keys of the
    /// examples (``token_type_ids``, …) come back padded or flattened like ``input_ids``.
    fn collate<'py>(&self, py: Python<'py>, examples: &Bound<'py, PyAny>) -> PyResult<(Bound<'py, PyDict>, PyStats)> {
        guarded(|| self.collate_inner(py, examples))
    }

    /// Raises the error `collate` would raise for the padding options (a padded layout with no
    /// pad token), so a collator can fail when it is made rather than at its first batch.
    fn check_padding(&self) -> PyResult<()> {
        self.padding().map(drop)
    }

    /// Masks one example and returns what went into it: a dict with `text` (bytes), `ends`
    /// (token end offsets), `regions` (byte ranges), `occurrences` ((start, end, is_response)),
    /// `labels` (numpy int64), `found`, `trained`, `straddling`.
    fn inspect<'py>(&self, py: Python<'py>, ids: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyDict>> {
        let ids = ids_vec(ids, 0)?;
        guarded(|| {
            let seen = core(self.inner.inspect(&ids))?;
            let out = PyDict::new(py);
            out.set_item("text", PyBytes::new(py, &seen.text))?;
            out.set_item("ends", seen.ends)?;
            out.set_item("regions", seen.regions)?;
            let occ: Vec<(u32, u32, bool)> = seen
                .occurrences
                .iter()
                .map(|o| (o.start, o.end, o.is_response))
                .collect();
            out.set_item("occurrences", occ)?;
            out.set_item("labels", seen.labels.into_pyarray(py))?;
            out.set_item("found", seen.stats.found)?;
            out.set_item("trained", seen.stats.trained)?;
            out.set_item("straddling", seen.stats.straddling)?;
            Ok(out)
        })
    }
}

impl PyMasker {
    pub(crate) fn masker(&self) -> &Masker {
        &self.inner
    }

    pub(crate) fn threads(&self) -> usize {
        self.threads.unwrap_or_else(crate::pool::default_threads)
    }

    fn padding(&self) -> PyResult<Padding> {
        match self.padding {
            Some(p) => Ok(p),
            None => {
                let (free, side, multiple) = self.padding_options;
                core(Padding::new(free, side, multiple, None))
            }
        }
    }

    fn collate_inner<'py>(
        &self,
        py: Python<'py>,
        examples: &Bound<'py, PyAny>,
    ) -> PyResult<(Bound<'py, PyDict>, PyStats)> {
        let padding = self.padding()?;
        let examples = examples_list(examples)?;
        if examples.is_empty() {
            return Err(core_err(Error::EmptyBatch));
        }
        let given = matches!(self.inner.source(), crate::LabelSource::Given);
        let keys = extra_keys(&examples.get_item(0)?)?;
        let mut rows: Vec<Example<'py>> = Vec::with_capacity(examples.len());
        for (r, ex) in examples.iter().enumerate() {
            rows.push(example(&ex, r, given, &keys)?);
        }
        let lengths: Vec<usize> = rows.iter().map(|e| e.ids.len()).collect();
        let mut batch = core(Batch::new(
            lengths.clone(),
            padding.layout,
            padding.pad_token_id,
            self.inner.padding_label(),
        ))?;
        // Python lists are read now, with the GIL, straight into the output; arrays are borrowed
        // and copied in the parallel phase.
        for (r, e) in rows.iter().enumerate() {
            e.ids.copy_python(batch.row_ids_mut(r), r, "input_ids")?;
            if let Some(labels) = &e.labels {
                if labels.len() != e.ids.len() {
                    return Err(core_err(Error::Row {
                        row: r,
                        reason: format!("{} labels for {} input_ids", labels.len(), e.ids.len()),
                    }));
                }
                labels.copy_python(batch.row_labels_mut(r), r, "labels")?;
            }
        }
        if rows.iter().any(|e| e.sequences.is_some()) {
            let sequences = rows
                .iter_mut()
                .map(|e| e.sequences.take().unwrap_or_default())
                .collect();
            core(batch.set_sequences(sequences))?;
        }
        let ids = rows
            .iter()
            .enumerate()
            .map(|(r, e)| e.ids.row_ids(r))
            .collect::<PyResult<Vec<RowIds<'_>>>>()?;
        let labels = rows
            .iter()
            .enumerate()
            .filter_map(|(r, e)| e.labels.as_ref().map(|l| l.row_ids(r)))
            .collect::<PyResult<Vec<RowIds<'_>>>>()?;
        let threads = self.threads();
        let masker = &self.inner;
        let stats = core(detach_guarded(py, || {
            masker.collate(&mut batch, &ids, &labels, threads)
        })?)?;
        drop((ids, labels));

        self.totals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .add(&stats);

        let out = PyDict::new(py);
        let (n_rows, cols) = batch.shape();
        let to_2d = |v: Vec<i64>, shape: (usize, usize)| -> PyResult<_> {
            let arr = Array2::from_shape_vec(shape, v)
                .map_err(|e| new_err(Kind::Internal, format!("output shape: {e}"), None, None))?;
            Ok(arr.into_pyarray(py))
        };
        out.set_item(
            "input_ids",
            to_2d(std::mem::take(&mut batch.input_ids), (n_rows, cols))?,
        )?;
        self.extras(py, &out, &keys, &rows, &batch, &lengths)?;
        if matches!(padding.layout, Layout::Flat) {
            let max_length = batch.longest_sequence();
            out.set_item("labels", to_2d(std::mem::take(&mut batch.labels), (n_rows, cols))?)?;
            out.set_item(
                "position_ids",
                to_2d(std::mem::take(&mut batch.position_ids), (n_rows, cols))?,
            )?;
            let cu = std::mem::take(&mut batch.cu_seq_lens).into_pyarray(py);
            out.set_item("cu_seq_lens_q", &cu)?;
            out.set_item("cu_seq_lens_k", &cu)?;
            out.set_item("max_length_q", max_length)?;
            out.set_item("max_length_k", max_length)?;
        } else {
            out.set_item(
                "attention_mask",
                to_2d(std::mem::take(&mut batch.attention_mask), (n_rows, cols))?,
            )?;
            out.set_item("labels", to_2d(std::mem::take(&mut batch.labels), (n_rows, cols))?)?;
            if batch.has_sequences() {
                // Packed bins, padded: each bin's positions restart per sequence.
                out.set_item(
                    "position_ids",
                    to_2d(std::mem::take(&mut batch.position_ids), (n_rows, cols))?,
                )?;
            }
        }
        Ok((out, stats.into()))
    }

    /// The per-token keys passed through: padded like `input_ids` (with `pad_token_type_id`
    /// for `token_type_ids`, 0 otherwise), flattened in a padding-free batch — except under
    /// `compat="trl"`, where they stay padded `[B, L]` on the padding side, as TRL 0.19.1
    /// leaves them (`docs/masking.md#extra-keys`).
    #[allow(clippy::too_many_arguments)]
    fn extras<'py>(
        &self,
        py: Python<'py>,
        out: &Bound<'py, PyDict>,
        keys: &[String],
        rows: &[Example<'py>],
        batch: &Batch,
        lengths: &[usize],
    ) -> PyResult<()> {
        if keys.is_empty() {
            return Ok(());
        }
        // TRL pads extras with the tokenizer's padding even when it flattens the ids.
        let trl_padded;
        let shape_of: &Batch = if self.inner.is_trl() && matches!(batch.layout(), Layout::Flat) {
            let (_, side, multiple) = self.padding_options;
            let layout = Layout::Padded {
                left: side == PaddingSide::Left,
                multiple_of: multiple,
            };
            trl_padded = core(Batch::new(lengths.to_vec(), layout, 0, 0))?;
            &trl_padded
        } else {
            batch
        };
        for (k, key) in keys.iter().enumerate() {
            let pad = if key == "token_type_ids" {
                self.pad_token_type_id
            } else {
                0
            };
            let mut data = core(shape_of.column(pad))?;
            for (r, e) in rows.iter().enumerate() {
                e.extras[k].copy_all(&mut data[shape_of.row_range(r)], r, key)?;
            }
            let arr = Array2::from_shape_vec(shape_of.shape(), data)
                .map_err(|e| new_err(Kind::Internal, format!("output shape: {e}"), None, None))?;
            out.set_item(key, arr.into_pyarray(py))?;
        }
        Ok(())
    }
}

/// The response template (required with labels="mask") and the instruction templates.
fn templates(
    response: Option<&Bound<'_, PyAny>>,
    instructions: Option<&Bound<'_, PyAny>>,
) -> PyResult<(Template, Vec<Template>)> {
    let response = match response {
        Some(r) if !r.is_none() => template_arg(r, "response_template")?,
        _ => {
            return Err(option_type_err(
                "response_template is required (or pass labels='keep' to use the examples' own labels)",
            ))
        }
    };
    let mut out = Vec::new();
    if let Some(list) = instructions.filter(|l| !l.is_none()) {
        for item in list.try_iter()? {
            out.push(template_arg(&item?, "instruction_template")?);
        }
    }
    Ok((response, out))
}
