//! `sftmask.Vocab`: the byte table of one tokenizer.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::convert::{ids_vec, Int};
use super::errors::{core, detach_guarded, guarded, tokenizer_err};
use crate::{Decoding, PhantomScheme, SearchText, Vocab};

/// The byte table of one tokenizer: for every token id, the exact bytes it stands for.
///
/// Built once per tokenizer.json text and cached, so building it twice costs nothing.
///
/// >>> vocab = Vocab.from_file(tokenizer_json)
/// >>> vocab.token_bytes(vocab.token_id("<|im_start|>"))
/// b'<|im_start|>'
#[pyclass(name = "Vocab", module = "sftmask._core", frozen)]
pub struct PyVocab {
    pub(crate) inner: Arc<Vocab>,
}

#[pymethods]
impl PyVocab {
    /// Builds (or fetches from the cache) the table for the text of a tokenizer.json.
    #[staticmethod]
    fn from_json(py: Python<'_>, json: &str) -> PyResult<Self> {
        let inner = core(detach_guarded(py, || Vocab::cached_from_json(json))?)?;
        Ok(PyVocab { inner })
    }

    /// Builds (or fetches from the cache) the table for a tokenizer.json file.
    #[staticmethod]
    fn from_file(py: Python<'_>, path: std::path::PathBuf) -> PyResult<Self> {
        let json = std::fs::read_to_string(&path)
            .map_err(|e| tokenizer_err(format!("cannot read {}: {e}", path.display())))?;
        Self::from_json(py, &json)
    }

    /// Builds the table from a loaded tokenizer's own parts (`parts`: a tokenizer.json text
    /// without the model vocabulary) and the model vocabulary of the file `vocab_file`; also
    /// returns the file's model type, its number of vocabulary entries (None when an id repeats)
    /// and sampled (id, token) pairs, to be confirmed against the loaded tokenizer (the cold
    /// start path of `sftmask._tokenizer`, which never calls `to_str()` when the file matches).
    #[staticmethod]
    #[allow(clippy::type_complexity)]
    fn from_parts(
        py: Python<'_>,
        parts: &str,
        vocab_file: std::path::PathBuf,
    ) -> PyResult<(Self, Option<String>, Option<usize>, Vec<(u32, String)>)> {
        let built = detach_guarded(py, || {
            let bytes = std::fs::read(&vocab_file)
                .map_err(|e| crate::Error::TokenizerJson(format!("cannot read {}: {e}", vocab_file.display())))?;
            Vocab::from_parts(parts, &bytes)
        })?;
        let (vocab, check) = core(built)?;
        Ok((PyVocab { inner: Arc::new(vocab) }, check.kind, check.len, check.sample))
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    fn __repr__(&self) -> String {
        format!(
            "Vocab(size={}, decoding={:?}, phantom={:?})",
            self.inner.len(),
            self.decoding(),
            self.phantom()
        )
    }

    /// How token strings map to bytes: "byte_level", "sentencepiece" or "wordpiece".
    #[getter]
    fn decoding(&self) -> &'static str {
        match self.inner.decoding() {
            Decoding::ByteLevel => "byte_level",
            Decoding::SentencePiece { .. } => "sentencepiece",
            Decoding::WordPiece { .. } => "wordpiece",
        }
    }

    /// Where a phantom space is left out: "never", "first" or "always".
    #[getter]
    fn phantom(&self) -> &'static str {
        match self.inner.phantom() {
            PhantomScheme::Never => "never",
            PhantomScheme::First => "first",
            PhantomScheme::Always => "always",
        }
    }

    /// A stable hash of the table: equal tables, equal fingerprints.
    #[getter]
    fn fingerprint(&self) -> u64 {
        self.inner.fingerprint()
    }

    /// The bytes `id` stands for (no phantom rule), or None for an unknown id.
    fn token_bytes<'py>(&self, py: Python<'py>, id: &Bound<'py, PyAny>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        Ok(vocab_id(id)?.and_then(|id| self.inner.token_bytes(id).map(|b| PyBytes::new(py, b))))
    }

    /// `True` when `id` is an added or special token (`<|im_end|>`, `<s>`, …).
    ///
    /// >>> vocab.is_added(vocab.token_id("<|im_end|>"))
    /// True
    fn is_added(&self, id: &Bound<'_, PyAny>) -> PyResult<bool> {
        Ok(vocab_id(id)?.is_some_and(|id| self.inner.is_added(id)))
    }

    /// The searchable text of `ids` and the end offset of every token in it.
    ///
    /// >>> vocab.text([vocab.token_id("<|im_start|>")])
    /// (b'<|im_start|>', [12])
    fn text<'py>(&self, py: Python<'py>, ids: &Bound<'py, PyAny>) -> PyResult<(Bound<'py, PyBytes>, Vec<u32>)> {
        let ids = ids_vec(ids, 0)?;
        guarded(|| {
            let mut text = SearchText::default();
            core(text.build(&self.inner, &ids, 0))?;
            Ok((PyBytes::new(py, text.bytes()), text.ends().to_vec()))
        })
    }

    /// The id of the token whose text is `content` (added/special tokens first), or None.
    fn token_id(&self, content: &str) -> Option<u32> {
        crate::vocab::token_id(&self.inner, content)
    }

    /// The tokenizer's content normalization (e.g. NFC) applied to `text`.
    fn normalize(&self, text: &str) -> PyResult<String> {
        guarded(|| core(self.inner.normalize_template(text)))
    }
}

/// An id argument as a table index: `None` for ints no table has (negative, beyond u32).
fn vocab_id(id: &Bound<'_, PyAny>) -> PyResult<Option<u32>> {
    let Int(id) = id.extract::<Int>().or_else(|e| {
        // Beyond int64 is simply not an id of any table.
        if e.is_instance_of::<pyo3::exceptions::PyValueError>(id.py()) {
            Ok(Int(-1))
        } else {
            Err(e)
        }
    })?;
    Ok(u32::try_from(id).ok())
}
