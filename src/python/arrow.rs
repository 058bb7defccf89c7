//! `sftmask._core.tokenize_and_mask_arrow`: preprocessing with Arrow data in and out, through the
//! Arrow PyCapsule interface (`__arrow_c_stream__`, `__arrow_c_array__`), so any Arrow library's
//! tables work (pyarrow, polars, DuckDB, …) and no Python object is made per row or token.
//!
//! This file only moves data across the C data interface; the work is `crate::arrow`'s.

use std::ffi::CStr;

use arrow_array::ffi::{from_ffi, FFI_ArrowArray, FFI_ArrowSchema};
use arrow_array::ffi_stream::{ArrowArrayStreamReader, FFI_ArrowArrayStream};
use arrow_array::{Array, RecordBatch, RecordBatchIterator, RecordBatchReader, StructArray};
use arrow_schema::{DataType, Schema};
use pyo3::prelude::*;
use pyo3::types::{PyCapsule, PyCapsuleMethods};

use super::chat::{conversation_options, parse_kwargs, parse_value, PyChatTemplate};
use super::convert::{threads, Count};
use super::encoder::PyEncoder;
use super::errors::{core, detach_guarded, guarded, option_type_err};
use super::masker::PyMasker;
use super::stats::PyStats;
use crate::encode::EncodeOptions;
use crate::Error;

// The capsule names the PyCapsule interface fixes.
const STREAM: &CStr = c"arrow_array_stream";
const SCHEMA: &CStr = c"arrow_schema";
const ARRAY: &CStr = c"arrow_array";

fn not_arrow(data: &Bound<'_, PyAny>, why: impl std::fmt::Display) -> PyErr {
    let name = data
        .get_type()
        .name()
        .map_or_else(|_| "an object".into(), |n| n.to_string());
    option_type_err(format!(
        "expected an Arrow table (a pyarrow Table or RecordBatch, or an object with __arrow_c_stream__ \
         or __arrow_c_array__), got {name}: {why}"
    ))
}

/// The input as it arrives: a stream, read later without the GIL, or one batch.
enum Input {
    Stream(ArrowArrayStreamReader),
    Batch(RecordBatch),
}

fn import(data: &Bound<'_, PyAny>) -> PyResult<Input> {
    if data.hasattr("__arrow_c_stream__")? {
        let capsule = data.call_method0("__arrow_c_stream__")?;
        let capsule = capsule
            .cast::<PyCapsule>()
            .map_err(|_| not_arrow(data, "__arrow_c_stream__() did not return a PyCapsule"))?;
        let ptr = capsule.pointer_checked(Some(STREAM)).map_err(|_| {
            not_arrow(
                data,
                "__arrow_c_stream__() returned a capsule not named 'arrow_array_stream'",
            )
        })?;
        // SAFETY: a capsule of this name holds an `ArrowArrayStream` (the PyCapsule interface);
        // `from_raw` moves it out and leaves a released one for the capsule's destructor.
        let reader = unsafe { ArrowArrayStreamReader::from_raw(ptr.as_ptr().cast::<FFI_ArrowArrayStream>()) }
            .map_err(|e| not_arrow(data, format!("its stream has no table schema ({e})")))?;
        return Ok(Input::Stream(reader));
    }
    if data.hasattr("__arrow_c_array__")? {
        let pair = data.call_method0("__arrow_c_array__")?;
        let (schema, array): (Bound<'_, PyCapsule>, Bound<'_, PyCapsule>) = pair
            .extract()
            .map_err(|_| not_arrow(data, "__arrow_c_array__() did not return two PyCapsules"))?;
        let (schema, array) = match (schema.pointer_checked(Some(SCHEMA)), array.pointer_checked(Some(ARRAY))) {
            (Ok(s), Ok(a)) => (s, a),
            _ => {
                return Err(not_arrow(
                    data,
                    "__arrow_c_array__() returned capsules not named 'arrow_schema', 'arrow_array'",
                ))
            }
        };
        // SAFETY: capsules of these names hold an `ArrowSchema` and an `ArrowArray`. The schema
        // is only read (its capsule still owns and releases it); the array is moved out.
        let schema = unsafe { &*schema.as_ptr().cast::<FFI_ArrowSchema>() };
        let data_type = DataType::try_from(schema).map_err(|e| not_arrow(data, e))?;
        if !matches!(data_type, DataType::Struct(_)) {
            return Err(not_arrow(
                data,
                format!("it is an Arrow array of {data_type}, not a table"),
            ));
        }
        let array = unsafe { FFI_ArrowArray::from_raw(array.as_ptr().cast::<FFI_ArrowArray>()) };
        // SAFETY: `schema` describes `array` (they come from one call).
        let array = unsafe { from_ffi(array, schema) }.map_err(|e| not_arrow(data, e))?;
        let array = StructArray::from(array);
        if array.null_count() > 0 {
            return Err(not_arrow(data, "it is a struct array with null rows, not a table"));
        }
        return Ok(Input::Batch(RecordBatch::from(array)));
    }
    Err(not_arrow(data, "it has neither method"))
}

/// Tokenizes column `column` of Arrow data and masks each row with `masker` (an exact one), in
/// parallel and without the GIL; returns ``(stream, stats)``, where ``stream`` is an
/// ``arrow_array_stream`` PyCapsule of the table: the other columns, then ``input_ids``,
/// ``labels`` (``list<int32>``) and ``length`` (``int32``). ``sftmask.tokenize_and_mask`` is
/// the front that takes a tokenizer and returns a ``pyarrow.Table``.
///
/// >>> import pyarrow as pa
/// >>> masker = Masker(vocab, "<|im_start|>assistant\n")
/// >>> capsule, stats = tokenize_and_mask_arrow(pa.table({"text": ["<|im_start|>assistant\nHi<|im_end|>"]}), enc,
/// ...                                          masker, add_special_tokens=False)
/// >>> stats.rows, type(capsule).__name__
/// (1, 'PyCapsule')
#[pyfunction]
#[pyo3(signature = (data, encoder, masker, *, column = "text", add_special_tokens = true, max_length = None))]
pub(crate) fn tokenize_and_mask_arrow<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyAny>,
    encoder: &PyEncoder,
    masker: &PyMasker,
    column: &str,
    add_special_tokens: bool,
    max_length: Option<Count>,
) -> PyResult<(Bound<'py, PyCapsule>, PyStats)> {
    let options = EncodeOptions {
        add_special_tokens,
        max_length: max_length.map(|c| c.0),
    };
    let threads = masker.threads();
    let (tokenizer, m) = (&*encoder.inner, masker.masker());
    let input = guarded(|| import(data))?;
    let out = core(detach_guarded(py, move || {
        let (schema, batches) = read(input)?;
        crate::arrow::tokenize_and_mask_batches(tokenizer, m, &schema, &batches, column, options, threads)
    })?)?;
    let stats = out.stats.clone();
    let capsule = export(py, out)?;
    Ok((capsule, stats.into()))
}

/// Reads an input stream or batch into its schema and batches (called without the GIL).
fn read(input: Input) -> crate::Result<(std::sync::Arc<Schema>, Vec<RecordBatch>)> {
    // A stream is read here, without the GIL: its producer takes the GIL itself if it needs it
    // (a Python-backed reader), as the C stream interface requires.
    Ok(match input {
        Input::Stream(reader) => {
            let schema = reader.schema();
            let batches = reader
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Error::Arrow(format!("reading the input stream failed: {e}")))?;
            (schema, batches)
        }
        Input::Batch(batch) => (batch.schema(), vec![batch]),
    })
}

/// An output table as an ``arrow_array_stream`` capsule.
fn export<'py>(py: Python<'py>, out: crate::arrow::ArrowEncoded) -> PyResult<Bound<'py, PyCapsule>> {
    let reader = RecordBatchIterator::new(out.batches.into_iter().map(Ok), out.schema);
    let stream = FFI_ArrowArrayStream::new(Box::new(reader));
    // The capsule owns the stream until a consumer moves it out; dropping an unread one
    // releases the batches.
    PyCapsule::new_with_value(py, stream, STREAM)
}

/// What `tokenize_conversations_arrow` returns: `(stream | None, stats | None, fallback,
/// not_located)`.
type ConversationsOut<'py> = (
    Option<Bound<'py, PyCapsule>>,
    Option<PyStats>,
    Vec<(usize, String)>,
    Vec<(usize, String)>,
);

/// Renders the conversations in column ``column`` of Arrow data (``list<struct<role, content,
/// …>>``) with ``template``, tokenizes and labels them in parallel without the GIL, as
/// ``tokenize_conversations`` does for JSON rows. Returns ``(stream, stats, fallback,
/// not_located)``: ``stream`` an ``arrow_array_stream`` PyCapsule of the table (the other
/// columns, then ``input_ids``, ``labels``, ``length``), or ``None`` (with ``stats``) when
/// ``fallback`` lists rows the Rust renderer cannot render (the caller renders the table
/// elsewhere).
///
/// >>> import pyarrow as pa
/// >>> t = ChatTemplate("{% for m in messages %}{{ m.content }}<|im_end|>{% endfor %}")
/// >>> table = pa.table({"id": [3], "messages": [[{"role": "assistant", "content": "Hi"}]]})
/// >>> capsule, stats, fallback, bad = tokenize_conversations_arrow(table, t, enc)
/// >>> pa.table(type("S", (), {"__arrow_c_stream__": lambda self, schema=None: capsule})()).column_names
/// ['id', 'input_ids', 'labels', 'length']
/// >>> stats.rows, fallback, bad
/// (1, [], [])
#[pyfunction]
#[pyo3(signature = (data, template, encoder, *, column = "messages", tools_column = None, tools_json = None, kwargs_json = "{}",
                    train_on = "all", ignore_index = -100, max_length = None, on_missing = "warn",
                    reasoning = "train", num_threads = None),
       text_signature = "(data, template, encoder, *, column='messages', tools_column=None, tools_json=None, kwargs_json='{}', train_on='all', ignore_index=-100, max_length=None, on_missing='warn', reasoning='train', num_threads=None)")]
#[allow(clippy::too_many_arguments)]
pub(crate) fn tokenize_conversations_arrow<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyAny>,
    template: &PyChatTemplate,
    encoder: &PyEncoder,
    column: &str,
    tools_column: Option<&str>,
    tools_json: Option<&str>,
    kwargs_json: &str,
    train_on: &str,
    ignore_index: i64,
    max_length: Option<Count>,
    on_missing: &str,
    reasoning: &str,
    num_threads: Option<Count>,
) -> PyResult<ConversationsOut<'py>> {
    let options = conversation_options(train_on, ignore_index, max_length, on_missing, reasoning)?;
    let kwargs = parse_kwargs(kwargs_json)?;
    let tools = tools_json.map(parse_value).transpose()?;
    let threads = threads(num_threads);
    let tokenizer = &*encoder.inner;
    let input = guarded(|| import(data))?;
    let out = core(detach_guarded(py, move || {
        let (schema, batches) = read(input)?;
        crate::arrow::tokenize_conversations_batches(
            template.template(),
            tokenizer,
            &schema,
            &batches,
            column,
            tools_column,
            tools.as_ref(),
            &kwargs,
            options,
            threads,
        )
    })?)?;
    let (capsule, stats) = match out.encoded {
        Some(encoded) => {
            let stats = encoded.stats.clone().into();
            (Some(export(py, encoded)?), Some(stats))
        }
        None => (None, None),
    };
    Ok((capsule, stats, out.fallback, out.not_located))
}
