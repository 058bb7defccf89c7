//! `sftmask._core.Encoder` (the `tokenizers` crate over the same tokenizer.json) and the
//! preprocessing entry point `tokenize_and_mask` that uses it.

use pyo3::prelude::*;

use super::convert::Count;
use super::errors::{core, detach_guarded, row_err, tokenizer_err};
use super::masker::PyMasker;
use super::stats::PyStats;
use crate::encode::EncodeOptions;

/// A tokenizer run in Rust, so that the demo and the preprocessing API need no Python tokenizer.
///
/// >>> enc = Encoder.from_json(open(tokenizer_json, encoding="utf-8").read())
/// >>> enc.encode_batch(["<|im_start|>"], add_special_tokens=False) == [[vocab.token_id("<|im_start|>")]]
/// True
#[pyclass(name = "Encoder", module = "sftmask._core", frozen)]
pub struct PyEncoder {
    pub(crate) inner: Box<tokenizers::Tokenizer>,
}

#[pymethods]
impl PyEncoder {
    /// Loads a tokenizer from the text of a tokenizer.json. Its truncation and padding settings
    /// are dropped: they are the state of the last call a transformers tokenizer made (a
    /// ``tok(..., truncation=True, max_length=5)`` leaves one behind in ``to_str()``), not part
    /// of the tokenizer; preprocessing truncates by its own ``max_length`` only.
    ///
    /// >>> import json
    /// >>> spec = json.loads(open(tokenizer_json, encoding="utf-8").read())
    /// >>> spec["truncation"] = {"direction": "Right", "max_length": 1, "strategy": "LongestFirst", "stride": 0}
    /// >>> len(Encoder.from_json(json.dumps(spec)).encode_batch(["a b c"], add_special_tokens=False)[0]) > 1
    /// True
    #[staticmethod]
    fn from_json(py: Python<'_>, json: &str) -> PyResult<Self> {
        let mut inner = detach_guarded(py, || json.parse::<tokenizers::Tokenizer>())?
            .map_err(|e| tokenizer_err(format!("could not load tokenizer.json: {e}")))?;
        inner
            .with_truncation(None)
            .map_err(|e| tokenizer_err(format!("could not load tokenizer.json: {e}")))?;
        inner.with_padding(None);
        Ok(PyEncoder { inner: Box::new(inner) })
    }

    /// Token ids of each text, in parallel and without the GIL.
    #[pyo3(signature = (texts, *, add_special_tokens = true, num_threads = None))]
    fn encode_batch(
        &self,
        py: Python<'_>,
        texts: Vec<String>,
        add_special_tokens: bool,
        num_threads: Option<Count>,
    ) -> PyResult<Vec<Vec<u32>>> {
        let threads = num_threads.map_or_else(crate::pool::default_threads, |c| c.0.min(4096));
        let tok = &self.inner;
        let results = detach_guarded(py, || {
            crate::pool::map_rows(
                texts.iter().collect(),
                threads,
                true,
                || (),
                |(), (_, t): (usize, &String)| {
                    tok.encode(t.as_str(), add_special_tokens)
                        .map(|e| e.get_ids().to_vec())
                        .map_err(|e| e.to_string())
                },
            )
        })?;
        results
            .into_iter()
            .enumerate()
            .map(|(r, res)| res.map_err(|e| row_err(r, format!("the tokenizer failed: {e}"))))
            .collect()
    }
}

/// What `tokenize_and_mask` returns: `(input_ids, labels, stats)`.
type Preprocessed = (Vec<Vec<u32>>, Vec<Vec<i64>>, PyStats);

/// Tokenizes `texts` with `encoder` and masks each row with `masker` (an exact one), in
/// parallel and without the GIL. Returns ``(input_ids, labels, stats)``.
///
/// >>> masker = Masker(vocab, "<|im_start|>assistant\n")
/// >>> ids, labels, stats = tokenize_and_mask(["<|im_start|>assistant\nHi<|im_end|>"], enc, masker,
/// ...                                        add_special_tokens=False)
/// >>> stats.rows, stats.rows_without_template, labels[0][0]
/// (1, 0, -100)
#[pyfunction]
#[pyo3(signature = (texts, encoder, masker, *, add_special_tokens = true, max_length = None))]
pub(crate) fn tokenize_and_mask(
    py: Python<'_>,
    texts: Vec<String>,
    encoder: &PyEncoder,
    masker: &PyMasker,
    add_special_tokens: bool,
    max_length: Option<Count>,
) -> PyResult<Preprocessed> {
    let options = EncodeOptions {
        add_special_tokens,
        max_length: max_length.map(|c| c.0),
    };
    let threads = masker.threads();
    let (tokenizer, m) = (&*encoder.inner, masker.masker());
    let out = core(detach_guarded(py, || {
        crate::encode::tokenize_and_mask(tokenizer, m, &texts, options, threads)
    })?)?;
    Ok((out.input_ids, out.labels, out.stats.into()))
}
