//! `sftmask._core.Encoder` (the `tokenizers` crate over the same tokenizer.json, or the fast
//! byte-level BPE path where it is exact) and the preprocessing entry point `tokenize_and_mask`
//! that uses it.

use pyo3::prelude::*;
use pyo3::types::PyList;

use super::convert::{id_and_label_lists, threads, Count};
use super::errors::{core, detach_guarded, row_err};
use super::masker::PyMasker;
use super::stats::PyStats;
use crate::encode::EncodeOptions;
use crate::engine::{EngineChoice, TokenEngine, Tokenize};

/// What `Encoder.from_parts` returns: the encoder and the file's model type, size and sample.
type FromParts = (PyEncoder, Option<String>, Option<usize>, Vec<(u32, String)>);

/// A tokenizer run in Rust, so that the demo and the preprocessing API need no Python tokenizer.
///
/// ``engine``: ``"auto"`` uses the fast byte-level BPE path where it reproduces the `tokenizers`
/// library exactly for this tokenizer.json (docs/fast-tokenization.md) and the `tokenizers`
/// crate otherwise; ``"tokenizers"`` always the crate; ``"fast"`` the fast path or an
/// ``OptionError`` naming what it does not cover.
///
/// >>> enc = Encoder.from_json(open(tokenizer_json, encoding="utf-8").read())
/// >>> enc.encode_batch(["<|im_start|>"], add_special_tokens=False) == [[vocab.token_id("<|im_start|>")]]
/// True
/// >>> enc.engine, enc.fast_refusal
/// ('fast', None)
#[pyclass(name = "Encoder", module = "sftmask._core", frozen)]
pub struct PyEncoder {
    pub(crate) inner: Box<TokenEngine>,
}

#[pymethods]
impl PyEncoder {
    /// Loads a tokenizer from the text of a tokenizer.json, without the truncation and padding
    /// state a transformers tokenizer's last call leaves in it (``sftmask::load::from_json``).
    ///
    /// >>> import json
    /// >>> spec = json.loads(open(tokenizer_json, encoding="utf-8").read())
    /// >>> spec["truncation"] = {"direction": "Right", "max_length": 1, "strategy": "LongestFirst", "stride": 0}
    /// >>> len(Encoder.from_json(json.dumps(spec)).encode_batch(["a b c"], add_special_tokens=False)[0]) > 1
    /// True
    #[staticmethod]
    #[pyo3(signature = (json, *, engine = "auto"))]
    fn from_json(py: Python<'_>, json: &str, engine: &str) -> PyResult<Self> {
        let choice = core(EngineChoice::parse(engine))?;
        let inner = core(detach_guarded(py, || TokenEngine::from_json(json, choice))?)?;
        Ok(PyEncoder { inner: Box::new(inner) })
    }

    /// Loads the BPE tokenizer of the file ``tokenizer_file`` with the components ``parts``
    /// reports for a loaded tokenizer (``sftmask::load::from_parts``), sparing its
    /// ``to_str()``; ``engine`` as for ``from_json``. Returns ``(encoder, kind, len, sample)``:
    /// the caller checks the loaded model's type, size and the token at each sampled id before
    /// using the encoder.
    ///
    /// >>> enc, kind, n, sample = Encoder.from_parts(live_parts, tokenizer_json)
    /// >>> kind, n == backend.get_vocab_size(with_added_tokens=False), enc.engine
    /// ('BPE', True, 'fast')
    #[staticmethod]
    #[pyo3(signature = (parts, tokenizer_file, *, engine = "auto"))]
    fn from_parts(
        py: Python<'_>,
        parts: &str,
        tokenizer_file: std::path::PathBuf,
        engine: &str,
    ) -> PyResult<FromParts> {
        let choice = core(EngineChoice::parse(engine))?;
        let built = detach_guarded(py, || {
            let text = std::fs::read_to_string(&tokenizer_file)
                .map_err(|e| crate::Error::TokenizerJson(format!("cannot read {}: {e}", tokenizer_file.display())))?;
            TokenEngine::from_parts(parts, &text, choice)
        })?;
        let (inner, check) = core(built)?;
        Ok((
            PyEncoder { inner: Box::new(inner) },
            check.kind,
            check.len,
            check.sample,
        ))
    }

    /// ``"fast"`` or ``"tokenizers"``: which engine tokenizes.
    #[getter]
    fn engine(&self) -> &'static str {
        if self.inner.is_fast() {
            "fast"
        } else {
            "tokenizers"
        }
    }

    /// Why the fast path is not used (``None`` when it is).
    #[getter]
    fn fast_refusal(&self) -> Option<&str> {
        self.inner.refusal()
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
        let threads = threads(num_threads);
        let tok = &self.inner;
        let results = detach_guarded(py, || {
            crate::pool::map_rows(
                texts.iter().collect(),
                threads,
                true,
                || (),
                |(), (_, t): (usize, &String)| tok.encode_ids(t.as_str(), add_special_tokens),
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
type Preprocessed<'py> = (Bound<'py, PyList>, Bound<'py, PyList>, PyStats);

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
pub(crate) fn tokenize_and_mask<'py>(
    py: Python<'py>,
    texts: Vec<String>,
    encoder: &PyEncoder,
    masker: &PyMasker,
    add_special_tokens: bool,
    max_length: Option<Count>,
) -> PyResult<Preprocessed<'py>> {
    let options = EncodeOptions {
        add_special_tokens,
        max_length: max_length.map(|c| c.0),
    };
    let threads = masker.threads();
    let (tokenizer, m) = (&*encoder.inner, masker.masker());
    let out = core(detach_guarded(py, || {
        crate::encode::tokenize_and_mask(tokenizer, m, &texts, options, threads)
    })?)?;
    let (input_ids, labels) = id_and_label_lists(py, &out.input_ids, &out.labels)?;
    Ok((input_ids, labels, out.stats.into()))
}
