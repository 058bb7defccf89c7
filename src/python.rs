//! The PyO3 binding: the only module that knows about Python.
//!
//! It converts arguments, releases the GIL around the core's work (`py.detach`), hands the
//! output buffers to numpy without copying (`into_pyarray`), and maps core errors to Python
//! exceptions. Panics in the core become `sftmask.InternalError`, never an abort.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use numpy::ndarray::Array2;
use numpy::{
    IntoPyArray, PyArray1, PyArrayDescrMethods, PyArrayMethods, PyReadonlyArray1, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::create_exception;
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyList, PyString, PyTuple};

use crate::{Batch, Error, Layout, Masker, RowIds, Template, TrainOn, Vocab};

create_exception!(
    sftmask,
    TokenizerError,
    PyValueError,
    "The tokenizer cannot be read, or has no exact byte rule (e.g. an unknown decoder type)."
);
create_exception!(
    sftmask,
    InternalError,
    PyRuntimeError,
    "A bug in sftmask (a Rust panic was caught). Please report it with the input that caused it."
);

/// Per-call counts returned to Python:
/// (rows, tokens, trained, straddling, missing_rows, missing_instruction_rows).
type CallStats = (u64, u64, u64, u64, Vec<usize>, Vec<usize>);

/// Core error -> Python exception.
struct CoreErr(Error);

impl From<CoreErr> for PyErr {
    fn from(CoreErr(e): CoreErr) -> PyErr {
        match e {
            Error::TokenizerJson(_) | Error::UnsupportedTokenizer(_) => TokenizerError::new_err(e.to_string()),
            _ => PyValueError::new_err(e.to_string()),
        }
    }
}

fn core<T>(r: crate::Result<T>) -> PyResult<T> {
    r.map_err(|e| CoreErr(e).into())
}

/// Runs `f` without the GIL, turning a panic into `InternalError`.
fn detach_guarded<T: Send>(py: Python<'_>, f: impl FnOnce() -> T + Send) -> PyResult<T> {
    py.detach(|| catch_unwind(AssertUnwindSafe(f))).map_err(|payload| {
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        InternalError::new_err(msg)
    })
}

// ---------------------------------------------------------------------------------------------

/// The byte table of one tokenizer: for every token id, the exact bytes it stands for.
///
/// Built once per tokenizer.json text and cached, so building it twice costs nothing.
///
/// >>> vocab = Vocab.from_file("tokenizer.json")  # doctest: +SKIP
/// >>> vocab.token_bytes(128006)  # doctest: +SKIP
/// b'<|start_header_id|>'
#[pyclass(name = "Vocab", module = "sftmask._core", frozen)]
pub struct PyVocab {
    inner: Arc<Vocab>,
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
            .map_err(|e| TokenizerError::new_err(format!("cannot read {}: {e}", path.display())))?;
        Self::from_json(py, &json)
    }

    /// Builds the table from a loaded tokenizer's own parts (`parts`: a tokenizer.json text
    /// without the model vocabulary) and the model vocabulary of the file `vocab_file`; also
    /// returns the file's model type, its number of vocabulary entries (None when an id repeats)
    /// and sampled (id, token) pairs, to be confirmed against the loaded tokenizer.
    ///
    /// >>> vocab, kind, n, sample = Vocab.from_parts(parts, "tokenizer.json")  # doctest: +SKIP
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
            crate::Decoding::ByteLevel => "byte_level",
            crate::Decoding::SentencePiece { .. } => "sentencepiece",
            crate::Decoding::WordPiece { .. } => "wordpiece",
        }
    }

    /// Where a phantom space is left out: "never", "first" or "always".
    #[getter]
    fn phantom(&self) -> &'static str {
        match self.inner.phantom() {
            crate::PhantomScheme::Never => "never",
            crate::PhantomScheme::First => "first",
            crate::PhantomScheme::Always => "always",
        }
    }

    /// A stable hash of the table: equal tables, equal fingerprints.
    #[getter]
    fn fingerprint(&self) -> u64 {
        self.inner.fingerprint()
    }

    /// The bytes `id` stands for (no phantom rule), or None for an unknown id.
    fn token_bytes<'py>(&self, py: Python<'py>, id: i64) -> Option<Bound<'py, PyBytes>> {
        let id = u32::try_from(id).ok()?;
        self.inner.token_bytes(id).map(|b| PyBytes::new(py, b))
    }

    /// `True` when `id` is an added or special token (`<|eot_id|>`, `<s>`, …).
    ///
    /// >>> vocab.is_added(128009)  # doctest: +SKIP
    /// True
    fn is_added(&self, id: i64) -> bool {
        u32::try_from(id).is_ok_and(|id| self.inner.is_added(id))
    }

    /// The searchable text of `ids` and the end offset of every token in it.
    fn text<'py>(&self, py: Python<'py>, ids: &Bound<'py, PyAny>) -> PyResult<(Bound<'py, PyBytes>, Vec<u32>)> {
        let ids = ids_vec(ids, 0)?;
        let mut text = crate::SearchText::default();
        core(text.build(&self.inner, &ids, 0))?;
        Ok((PyBytes::new(py, text.bytes()), text.ends().to_vec()))
    }

    /// The id of the token whose text is `content` (added/special tokens first), or None.
    fn token_id(&self, content: &str) -> Option<u32> {
        let want = content.as_bytes();
        // WordPiece tables store added tokens as words, with their leading space.
        let wordpiece = matches!(self.inner.decoding(), crate::Decoding::WordPiece { .. });
        let is = |b: &[u8]| b == want || (wordpiece && b.len() == want.len() + 1 && b[0] == b' ' && &b[1..] == want);
        let ids = || crate::vocab::known_ids(&self.inner);
        ids()
            .find(|&id| self.inner.is_added(id) && self.inner.token_bytes(id).is_some_and(is))
            .or_else(|| ids().find(|&id| self.inner.token_bytes(id).is_some_and(is)))
    }

    /// The tokenizer's content normalization (e.g. NFC) applied to `text`.
    fn normalize(&self, text: &str) -> PyResult<String> {
        core(self.inner.normalize_template(text))
    }
}

// ---------------------------------------------------------------------------------------------

/// Masks and collates batches for one tokenizer and one set of templates.
///
/// >>> masker = Masker(vocab, "<|im_start|>assistant\n", ["<|im_start|>user\n"])  # doctest: +SKIP
/// >>> arrays, stats = masker.collate([{"input_ids": ids}], pad_token_id=0)  # doctest: +SKIP
#[pyclass(name = "Masker", module = "sftmask._core", frozen)]
pub struct PyMasker {
    // Boxed: memchr's SIMD finders need 32-byte alignment, more than Python's allocator gives
    // an object's inline storage.
    inner: Box<Masker>,
    rows: AtomicU64,
    missing: AtomicU64,
    tokens: AtomicU64,
    trained: AtomicU64,
    straddling: AtomicU64,
}

#[pymethods]
impl PyMasker {
    #[new]
    #[pyo3(
        signature = (vocab, response_template, instruction_templates = None, *, ignore_index = -100, train_on = "all", compat = "exact", pad_token_id = None),
        text_signature = "(vocab, response_template, instruction_templates=None, *, ignore_index=-100, train_on='all', compat='exact', pad_token_id=None)"
    )]
    fn new(
        vocab: &PyVocab,
        response_template: &Bound<'_, PyAny>,
        instruction_templates: Option<&Bound<'_, PyAny>>,
        ignore_index: i64,
        train_on: &str,
        compat: &str,
        pad_token_id: Option<i64>,
    ) -> PyResult<Self> {
        let train_on = match train_on {
            "all" => TrainOn::All,
            "last" => TrainOn::Last,
            other => {
                return Err(PyValueError::new_err(format!(
                    "train_on must be 'all' or 'last', got {other:?}"
                )));
            }
        };
        let response = template_arg(response_template, "response_template")?;
        let mut instructions = Vec::new();
        if let Some(list) = instruction_templates {
            for item in list.try_iter()? {
                instructions.push(template_arg(&item?, "instruction_template")?);
            }
        }
        let vocab = Arc::clone(&vocab.inner);
        let masker = match compat {
            "exact" => Masker::new(vocab, &response, &instructions, ignore_index, train_on),
            "trl" => {
                let ids = |t: Template, name: &str| match t {
                    Template::Ids(ids) => Ok(ids),
                    Template::Text(_) => Err(PyTypeError::new_err(format!(
                        "compat='trl' takes {name} as token ids (TRL tokenizes a string template alone)"
                    ))),
                };
                if instructions.len() > 1 {
                    return Err(PyValueError::new_err(
                        "compat='trl' takes at most one instruction template, as TRL 0.19.1 does",
                    ));
                }
                let response = ids(response, "response_template")?;
                let instruction = instructions.pop().map(|t| ids(t, "instruction_template")).transpose()?;
                Masker::trl(vocab, response, instruction, pad_token_id, ignore_index)
            }
            other => {
                return Err(PyValueError::new_err(format!(
                    "compat must be 'exact' or 'trl', got {other:?}"
                )))
            }
        };
        let inner = Box::new(core(masker)?);
        Ok(PyMasker {
            inner,
            rows: AtomicU64::new(0),
            missing: AtomicU64::new(0),
            tokens: AtomicU64::new(0),
            trained: AtomicU64::new(0),
            straddling: AtomicU64::new(0),
        })
    }

    /// The response template as bytes of the searchable text.
    #[getter]
    fn response_template<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.template_texts().0)
    }

    /// The instruction templates as bytes of the searchable text.
    #[getter]
    fn instruction_templates<'py>(&self, py: Python<'py>) -> Vec<Bound<'py, PyBytes>> {
        self.inner
            .template_texts()
            .1
            .iter()
            .map(|t| PyBytes::new(py, t))
            .collect()
    }

    /// Totals since this masker was made: (rows, rows_without_template, tokens, trained, straddling).
    #[getter]
    fn totals(&self) -> (u64, u64, u64, u64, u64) {
        (
            self.rows.load(Ordering::Relaxed),
            self.missing.load(Ordering::Relaxed),
            self.tokens.load(Ordering::Relaxed),
            self.trained.load(Ordering::Relaxed),
            self.straddling.load(Ordering::Relaxed),
        )
    }

    /// Pads (or flattens) a batch and masks its labels.
    ///
    /// Returns `(arrays, (rows, tokens, trained, straddling, missing_rows))`. `arrays` maps
    /// names to numpy arrays (and `max_length_q`/`max_length_k` to ints when `padding_free`).
    #[pyo3(signature = (examples, *, pad_token_id = None, padding_side = "right", pad_to_multiple_of = None, padding_free = false, num_threads = None))]
    #[allow(clippy::too_many_arguments)]
    fn collate<'py>(
        &self,
        py: Python<'py>,
        examples: &Bound<'py, PyAny>,
        pad_token_id: Option<i64>,
        padding_side: &str,
        pad_to_multiple_of: Option<usize>,
        padding_free: bool,
        num_threads: Option<usize>,
    ) -> PyResult<(Bound<'py, PyDict>, CallStats)> {
        let left = match padding_side {
            "right" => false,
            "left" => true,
            other => {
                return Err(PyValueError::new_err(format!(
                    "padding_side must be 'right' or 'left', got {other:?}"
                )));
            }
        };
        let examples = examples_list(examples)?;
        let n = examples.len();
        if n == 0 {
            return Err(CoreErr(Error::EmptyBatch).into());
        }
        let mut sources = Vec::with_capacity(n);
        for (r, ex) in examples.iter().enumerate() {
            sources.push(row_source(&ex, r)?);
        }
        let lengths: Vec<usize> = sources.iter().map(Source::len).collect();
        let layout = if padding_free {
            Layout::Flat
        } else {
            Layout::Padded {
                left,
                multiple_of: pad_to_multiple_of,
            }
        };
        let pad = match (pad_token_id, layout) {
            (Some(p), _) => p,
            (None, Layout::Flat) => 0,
            (None, Layout::Padded { .. }) => {
                return Err(PyValueError::new_err(
                    "padding needs a pad token id: pass pad_token_id=, or give the tokenizer a pad token \
                     (sftmask.ensure_pad_token(tokenizer))",
                ));
            }
        };
        let mut batch = core(Batch::new(lengths, layout, pad, self.inner.padding_label()))?;
        // Python lists are read now, with the GIL, straight into the output; arrays are borrowed
        // and copied in the parallel phase below.
        for (r, src) in sources.iter().enumerate() {
            match src {
                Source::List(l) => copy_list(l, batch.row_ids_mut(r), r)?,
                Source::Tuple(t) => copy_tuple(t, batch.row_ids_mut(r), r)?,
                Source::A64(_) | Source::A32(_) => {}
            }
        }
        let row_ids: Vec<RowIds<'_>> = sources
            .iter()
            .map(|s| match s {
                Source::A64(a) => RowIds::I64(a.as_slice().unwrap_or_default()),
                Source::A32(a) => RowIds::I32(a.as_slice().unwrap_or_default()),
                _ => RowIds::InPlace,
            })
            .collect();
        let threads = num_threads.unwrap_or_else(crate::pool::default_threads);
        let masker = &self.inner;
        let stats = core(detach_guarded(py, || masker.collate(&mut batch, &row_ids, threads))?)?;
        drop(row_ids);
        drop(sources);

        self.rows.fetch_add(stats.rows, Ordering::Relaxed);
        self.missing
            .fetch_add(stats.missing_rows.len() as u64, Ordering::Relaxed);
        self.tokens.fetch_add(stats.tokens, Ordering::Relaxed);
        self.trained.fetch_add(stats.trained, Ordering::Relaxed);
        self.straddling.fetch_add(stats.straddling, Ordering::Relaxed);

        let out = PyDict::new(py);
        let (rows, cols) = batch.shape();
        let max_length = batch.max_length();
        let to_2d = |v: Vec<i64>| -> PyResult<_> {
            let arr = Array2::from_shape_vec((rows, cols), v)
                .map_err(|e| InternalError::new_err(format!("output shape: {e}")))?;
            Ok(arr.into_pyarray(py))
        };
        out.set_item("input_ids", to_2d(std::mem::take(&mut batch.input_ids))?)?;
        if padding_free {
            out.set_item("labels", to_2d(std::mem::take(&mut batch.labels))?)?;
            out.set_item("position_ids", to_2d(std::mem::take(&mut batch.position_ids))?)?;
            let cu = std::mem::take(&mut batch.cu_seq_lens).into_pyarray(py);
            out.set_item("cu_seq_lens_q", &cu)?;
            out.set_item("cu_seq_lens_k", &cu)?;
            out.set_item("max_length_q", max_length)?;
            out.set_item("max_length_k", max_length)?;
        } else {
            out.set_item("attention_mask", to_2d(std::mem::take(&mut batch.attention_mask))?)?;
            out.set_item("labels", to_2d(std::mem::take(&mut batch.labels))?)?;
        }
        Ok((
            out,
            (
                stats.rows,
                stats.tokens,
                stats.trained,
                stats.straddling,
                stats.missing_rows,
                stats.missing_instruction_rows,
            ),
        ))
    }

    /// Masks one example and returns what went into it: a dict with `text` (bytes), `ends`
    /// (token end offsets), `regions` (byte ranges), `occurrences` ((start, end, is_response)),
    /// `labels` (numpy int64), `found`, `trained`, `straddling`.
    fn inspect<'py>(&self, py: Python<'py>, ids: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyDict>> {
        let ids = ids_vec(ids, 0)?;
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
    }
}

// ---------------------------------------------------------------------------------------------

/// A tokenizer run in Rust (the `tokenizers` crate over the same tokenizer.json), so that the
/// demo and the preprocessing API need no Python tokenizer.
///
/// >>> enc = Encoder.from_json(open("tokenizer.json").read())  # doctest: +SKIP
/// >>> enc.encode_batch(["Hello"], add_special_tokens=False)  # doctest: +SKIP
/// [[9707]]
#[pyclass(name = "Encoder", module = "sftmask._core", frozen)]
pub struct PyEncoder {
    inner: Box<tokenizers::Tokenizer>,
}

#[pymethods]
impl PyEncoder {
    /// Loads a tokenizer from the text of a tokenizer.json.
    #[staticmethod]
    fn from_json(py: Python<'_>, json: &str) -> PyResult<Self> {
        let inner = detach_guarded(py, || json.parse::<tokenizers::Tokenizer>())?
            .map_err(|e| TokenizerError::new_err(format!("could not load tokenizer.json: {e}")))?;
        Ok(PyEncoder { inner: Box::new(inner) })
    }

    /// Token ids of each text, in parallel and without the GIL.
    #[pyo3(signature = (texts, *, add_special_tokens = true, num_threads = None))]
    fn encode_batch(
        &self,
        py: Python<'_>,
        texts: Vec<String>,
        add_special_tokens: bool,
        num_threads: Option<usize>,
    ) -> PyResult<Vec<Vec<u32>>> {
        use rayon::prelude::*;
        let threads = num_threads.unwrap_or_else(crate::pool::default_threads);
        let tok = &self.inner;
        let encode = |t: &String| -> Result<Vec<u32>, String> {
            tok.encode(t.as_str(), add_special_tokens)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| e.to_string())
        };
        let out: Result<Vec<Vec<u32>>, String> = detach_guarded(py, || match crate::pool::try_get(threads) {
            Some(pool) if threads > 1 && texts.len() > 1 => pool.install(|| texts.par_iter().map(encode).collect()),
            _ => texts.iter().map(encode).collect(),
        })?;
        out.map_err(|e| PyValueError::new_err(format!("encoding failed: {e}")))
    }
}

/// What `tokenize_and_mask` returns to Python:
/// (input_ids, labels, (tokens, trained, straddling, missing_rows)).
type Encoded = (Vec<Vec<u32>>, Vec<Vec<i64>>, (u64, u64, u64, Vec<usize>));

/// Tokenizes `texts` with `encoder` and masks each row with `masker`, in parallel and without
/// the GIL. Returns `(input_ids, labels, (tokens, trained, straddling, missing_rows))`.
///
/// >>> ids, labels, stats = tokenize_and_mask(["<|im_start|>user\nHi<|im_end|>\n"], enc, masker)  # doctest: +SKIP
#[pyfunction]
#[pyo3(signature = (texts, encoder, masker, *, add_special_tokens = true, max_length = None, num_threads = None))]
fn tokenize_and_mask(
    py: Python<'_>,
    texts: Vec<String>,
    encoder: &PyEncoder,
    masker: &PyMasker,
    add_special_tokens: bool,
    max_length: Option<usize>,
    num_threads: Option<usize>,
) -> PyResult<Encoded> {
    if masker.inner.is_trl() {
        return Err(PyValueError::new_err(
            "tokenize_and_mask takes an exact masker (compat='exact')",
        ));
    }
    let options = crate::encode::EncodeOptions {
        add_special_tokens,
        max_length,
    };
    let threads = num_threads.unwrap_or_else(crate::pool::default_threads);
    let (tokenizer, m) = (&*encoder.inner, &*masker.inner);
    let out = core(detach_guarded(py, || {
        crate::encode::tokenize_and_mask(tokenizer, m, &texts, options, threads)
    })?)?;
    Ok((
        out.input_ids,
        out.labels,
        (out.tokens, out.trained, out.straddling, out.missing_rows),
    ))
}

// ---------------------------------------------------------------------------------------------
// Argument conversion.

fn template_arg(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<Template> {
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(Template::Text(s.extract::<String>()?));
    }
    let ids = ids_vec(obj, 0).map_err(|_| {
        PyTypeError::new_err(format!(
            "{name} must be a str or a sequence of token ids, got {}",
            obj.get_type().name().map(|n| n.to_string()).unwrap_or_default()
        ))
    })?;
    Ok(Template::Ids(ids))
}

/// The examples as a list (a list is used as is; other iterables are materialized once).
fn examples_list<'py>(examples: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
    if let Ok(l) = examples.cast::<PyList>() {
        return Ok(l.clone());
    }
    if examples.is_instance_of::<PyDict>() || examples.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(
            "examples must be a list of examples (dicts with 'input_ids', or id sequences), not a single dict or str",
        ));
    }
    let items: Vec<Bound<'py, PyAny>> = examples
        .try_iter()
        .map_err(|_| PyTypeError::new_err("examples must be a list of examples"))?
        .collect::<PyResult<_>>()?;
    PyList::new(examples.py(), items)
}

enum Source<'py> {
    List(Bound<'py, PyList>),
    Tuple(Bound<'py, PyTuple>),
    A64(PyReadonlyArray1<'py, i64>),
    A32(PyReadonlyArray1<'py, i32>),
}

impl Source<'_> {
    fn len(&self) -> usize {
        match self {
            Source::List(l) => l.len(),
            Source::Tuple(t) => t.len(),
            Source::A64(a) => a.len(),
            Source::A32(a) => a.len(),
        }
    }
}

/// Finds an example's ids: the `input_ids` of a mapping, or the example itself.
fn row_source<'py>(example: &Bound<'py, PyAny>, row: usize) -> PyResult<Source<'py>> {
    let ids = if let Ok(d) = example.cast::<PyDict>() {
        d.get_item("input_ids")?
            .ok_or_else(|| PyValueError::new_err(format!("row {row}: the example has no 'input_ids' key")))?
    } else if example.is_instance_of::<PyList>()
        || example.is_instance_of::<PyTuple>()
        || example.is_instance_of::<PyUntypedArray>()
    {
        example.clone()
    } else if example.hasattr("keys")? {
        // Other mappings (transformers' BatchEncoding, datasets' formatted rows).
        example
            .get_item("input_ids")
            .map_err(|_| PyValueError::new_err(format!("row {row}: the example has no 'input_ids' key")))?
    } else {
        example.clone()
    };
    ids_source(ids, row, true)
}

fn ids_source<'py>(ids: Bound<'py, PyAny>, row: usize, may_convert: bool) -> PyResult<Source<'py>> {
    if let Ok(l) = ids.cast::<PyList>() {
        return Ok(Source::List(l.clone()));
    }
    if let Ok(t) = ids.cast::<PyTuple>() {
        return Ok(Source::Tuple(t.clone()));
    }
    if let Ok(arr) = ids.cast::<PyUntypedArray>() {
        if arr.ndim() != 1 {
            return Err(PyValueError::new_err(format!(
                "row {row}: input_ids must be 1-D, got an array of shape {:?}",
                arr.shape()
            )));
        }
        let dtype = arr.dtype();
        let kind = dtype.kind();
        if kind == b'i' || kind == b'u' {
            // Zero copy only for C-contiguous, aligned buffers (a slice needs both).
            let aligned = |p: usize, align: usize| p % align == 0;
            if let Ok(a) = ids.cast::<PyArray1<i64>>() {
                if a.is_c_contiguous() && aligned(a.data() as usize, std::mem::align_of::<i64>()) {
                    return Ok(Source::A64(
                        a.try_readonly().map_err(|e| PyValueError::new_err(e.to_string()))?,
                    ));
                }
            } else if let Ok(a) = ids.cast::<PyArray1<i32>>() {
                if a.is_c_contiguous() && aligned(a.data() as usize, std::mem::align_of::<i32>()) {
                    return Ok(Source::A32(
                        a.try_readonly().map_err(|e| PyValueError::new_err(e.to_string()))?,
                    ));
                }
            }
            if kind == b'u' && dtype.itemsize() == 8 {
                // uint64 may hold values int64 cannot; check before converting.
                let too_big: bool = ids.call_method0("max").and_then(|m| m.gt(i64::MAX)).unwrap_or(false);
                if too_big {
                    return Err(PyValueError::new_err(format!(
                        "row {row}: input_ids holds a uint64 value beyond int64; such an id is in no vocabulary"
                    )));
                }
            }
            // Other integer widths, strided, Fortran-ordered or unaligned arrays: one converting
            // copy (np.array always copies, so the result is aligned).
            let np = ids.py().import("numpy")?;
            let converted = np.call_method1("array", (&ids, np.getattr("int64")?))?;
            let a = converted.cast::<PyArray1<i64>>()?.clone();
            return Ok(Source::A64(
                a.try_readonly().map_err(|e| PyValueError::new_err(e.to_string()))?,
            ));
        }
        return Err(PyTypeError::new_err(format!(
            "row {row}: input_ids must hold integers, got an array of dtype {}",
            dtype.str().map(|s| s.to_string()).unwrap_or_default()
        )));
    }
    if ids.is_instance_of::<PyString>() || ids.is_instance_of::<PyBytes>() || ids.is_none() {
        return Err(PyTypeError::new_err(format!(
            "row {row}: input_ids must be a sequence of ints, got {}",
            type_name(&ids)
        )));
    }
    if may_convert {
        // torch tensors and other array-likes: numpy's view of them (zero-copy for CPU tensors).
        let np = ids.py().import("numpy")?;
        let arr = np.call_method1("asarray", (&ids,)).map_err(|e| {
            PyTypeError::new_err(format!(
                "row {row}: cannot read input_ids of type {}: {}",
                type_name(&ids),
                e.value(ids.py())
            ))
        })?;
        return ids_source(arr, row, false);
    }
    Err(PyTypeError::new_err(format!(
        "row {row}: input_ids must be a list of ints or an integer array, got {}",
        type_name(&ids)
    )))
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// One id from a Python object; exact ints take the fast path, bools are refused.
#[inline]
fn id_from(item: &Bound<'_, PyAny>, row: usize, position: usize) -> PyResult<i64> {
    // SAFETY: `item` is a valid object; PyLong_CheckExact only reads its type.
    if unsafe { ffi::PyLong_CheckExact(item.as_ptr()) } != 0 {
        // SAFETY: an exact int; runs no Python code.
        let v = unsafe { ffi::PyLong_AsLongLong(item.as_ptr()) };
        if v == -1 && PyErr::occurred(item.py()) {
            let _ = PyErr::fetch(item.py());
            return Err(PyValueError::new_err(format!(
                "row {row}: token id at position {position} does not fit in int64"
            )));
        }
        return Ok(v);
    }
    if item.is_instance_of::<PyBool>() {
        return Err(PyTypeError::new_err(format!(
            "row {row}: token id at position {position} is a bool, not an int"
        )));
    }
    item.extract::<i64>().map_err(|e| {
        if e.is_instance_of::<pyo3::exceptions::PyOverflowError>(item.py()) {
            return PyValueError::new_err(format!(
                "row {row}: token id at position {position} does not fit in int64"
            ));
        }
        PyTypeError::new_err(format!(
            "row {row}: token id at position {position} must be an int, got {}",
            type_name(item)
        ))
    })
}

fn copy_list(list: &Bound<'_, PyList>, out: &mut [i64], row: usize) -> PyResult<()> {
    if list.len() != out.len() {
        return Err(PyValueError::new_err(format!(
            "row {row}: the list changed size while being read"
        )));
    }
    let py = list.py();
    for (position, slot) in out.iter_mut().enumerate() {
        // SAFETY: a borrowed reference (no refcount traffic) from a list we hold; the index is
        // in range (checked above), and a NULL (the list shrank under a `__index__` call) is
        // turned into the pending Python error.
        let item = unsafe { ffi::PyList_GetItem(list.as_ptr(), position as ffi::Py_ssize_t) };
        if item.is_null() {
            return Err(PyErr::fetch(py));
        }
        // SAFETY: `item` is a valid borrowed reference while the list is alive and unchanged.
        let item = unsafe { Borrowed::from_ptr(py, item) };
        // SAFETY: reads the type only. An exact int runs no Python code, so the borrowed reference
        // stays valid; anything else may run `__index__`, which can drop the list's reference to
        // the item: hold our own then.
        *slot = if unsafe { ffi::PyLong_CheckExact(item.as_ptr()) } != 0 {
            id_from(&item, row, position)?
        } else {
            id_from(&item.to_owned(), row, position)?
        };
    }
    Ok(())
}

fn copy_tuple(t: &Bound<'_, PyTuple>, out: &mut [i64], row: usize) -> PyResult<()> {
    for (position, (slot, item)) in out.iter_mut().zip(t.iter()).enumerate() {
        *slot = id_from(&item, row, position)?;
    }
    Ok(())
}

/// Ids of one sequence (a template, an example to inspect) as a Vec.
fn ids_vec(obj: &Bound<'_, PyAny>, row: usize) -> PyResult<Vec<i64>> {
    let src = ids_source(obj.clone(), row, true)?;
    let mut out = vec![0i64; src.len()];
    match &src {
        Source::List(l) => copy_list(l, &mut out, row)?,
        Source::Tuple(t) => copy_tuple(t, &mut out, row)?,
        Source::A64(a) => out.copy_from_slice(a.as_slice()?),
        Source::A32(a) => {
            for (d, s) in out.iter_mut().zip(a.as_slice()?) {
                *d = i64::from(*s);
            }
        }
    }
    Ok(out)
}

/// The compiled core of sftmask.
#[pymodule]
mod _core {
    #[pymodule_export]
    use super::{tokenize_and_mask, InternalError, PyEncoder, PyMasker, PyVocab, TokenizerError};

    #[allow(non_upper_case_globals)]
    #[pymodule_export]
    const __version__: &str = env!("CARGO_PKG_VERSION");

    #[allow(non_upper_case_globals)]
    #[pymodule_export]
    const PARALLEL_MIN_TOKENS: usize = crate::masker::PARALLEL_MIN_TOKENS;
}
