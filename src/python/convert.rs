//! Argument conversion: Python examples, id sequences and templates -> core inputs.
//!
//! Python lists are read with the GIL straight into the output buffers; C-contiguous, aligned
//! int64/int32 numpy arrays are borrowed (zero copy) and copied in the core's parallel phase.

use numpy::{PyArray1, PyArrayDescrMethods, PyArrayMethods, PyReadonlyArray1, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyList, PyString, PyTuple};

use super::errors::{option_type_err, row_err, row_type_err};
use crate::{RowIds, Template};

/// Keys of an example that are never passed through: what the collator computes itself, and
/// the columns current SFT trainers send for their own collators (see
/// `docs/masking.md#extra-keys`).
const NOT_PASSED: &[&str] = &[
    "input_ids",
    "labels",
    "attention_mask",
    "position_ids",
    "special_tokens_mask",
    "completion_mask",
    "assistant_masks",
    "seq_lengths",
];

/// One row's integers: a Python list or tuple (read with the GIL), or a borrowed array.
pub(crate) enum Source<'py> {
    List(Bound<'py, PyList>),
    Tuple(Bound<'py, PyTuple>),
    A64(PyReadonlyArray1<'py, i64>),
    A32(PyReadonlyArray1<'py, i32>),
}

impl Source<'_> {
    pub(crate) fn len(&self) -> usize {
        match self {
            Source::List(l) => l.len(),
            Source::Tuple(t) => t.len(),
            Source::A64(a) => a.len(),
            Source::A32(a) => a.len(),
        }
    }

    /// Writes Python sequences into `out` now (with the GIL); arrays are left for
    /// [`Source::row_ids`].
    pub(crate) fn copy_python(&self, out: &mut [i64], row: usize, key: &str) -> PyResult<()> {
        match self {
            Source::List(l) => copy_list(l, out, row, key),
            Source::Tuple(t) => copy_tuple(t, out, row, key),
            Source::A64(_) | Source::A32(_) => Ok(()),
        }
    }

    /// What the core copies in its parallel phase (Python sequences are already in place).
    pub(crate) fn row_ids(&self, row: usize) -> PyResult<RowIds<'_>> {
        // Borrowed arrays were checked C-contiguous when the source was made; a failure here
        // is an error, never an empty row.
        let slice_err = |e: numpy::AsSliceError| row_err(row, format!("cannot borrow the array: {e}"));
        Ok(match self {
            Source::A64(a) => RowIds::I64(a.as_slice().map_err(slice_err)?),
            Source::A32(a) => RowIds::I32(a.as_slice().map_err(slice_err)?),
            _ => RowIds::InPlace,
        })
    }

    /// All values into `out` (for sources read outside the core: templates, extra columns).
    pub(crate) fn copy_all(&self, out: &mut [i64], row: usize, key: &str) -> PyResult<()> {
        self.copy_python(out, row, key)?;
        self.row_ids(row)?.copy_into(out);
        Ok(())
    }
}

/// One example: its ids, its given labels (when asked for) and the per-token columns passed
/// through (`token_type_ids`, …).
pub(crate) struct Example<'py> {
    pub ids: Source<'py>,
    pub labels: Option<Source<'py>>,
    pub extras: Vec<Source<'py>>,
    /// A packed row's sequence lengths (`labels="keep"` only): its `seq_lengths`, or the runs
    /// of its `position_ids` that start at 0 (`docs/packing.md#collating-packed-rows`).
    pub sequences: Option<Vec<usize>>,
}

/// The examples as a list (a list is used as is; other iterables are materialized once).
pub(crate) fn examples_list<'py>(examples: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
    if let Ok(l) = examples.cast::<PyList>() {
        return Ok(l.clone());
    }
    if examples.is_instance_of::<PyDict>() || examples.is_instance_of::<PyString>() {
        return Err(option_type_err(
            "examples must be a list of examples (dicts with 'input_ids', or id sequences), not a single dict or str",
        ));
    }
    let items: Vec<Bound<'py, PyAny>> = examples
        .try_iter()
        .map_err(|_| option_type_err("examples must be a list of examples"))?
        .collect::<PyResult<_>>()?;
    PyList::new(examples.py(), items)
}

fn is_mapping(example: &Bound<'_, PyAny>) -> PyResult<bool> {
    Ok(example.is_instance_of::<PyDict>()
        || !(example.is_instance_of::<PyList>()
            || example.is_instance_of::<PyTuple>()
            || example.is_instance_of::<PyUntypedArray>())
            && example.hasattr("keys")?)
}

fn get_key<'py>(example: &Bound<'py, PyAny>, key: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
    if let Ok(d) = example.cast::<PyDict>() {
        return d.get_item(key);
    }
    // Other mappings (transformers' BatchEncoding, datasets' formatted rows).
    match example.get_item(key) {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_instance_of::<pyo3::exceptions::PyKeyError>(example.py()) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The per-token keys of the first example that are passed through: integer sequences as long
/// as its `input_ids`, other than the keys in [`NOT_PASSED`].
pub(crate) fn extra_keys(first: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    if !is_mapping(first)? {
        return Ok(Vec::new());
    }
    let Some(ids) = get_key(first, "input_ids")? else {
        return Ok(Vec::new());
    };
    let n = ids.len().ok();
    let mut keys = Vec::new();
    for key in first.call_method0("keys")?.try_iter()? {
        let key = key?;
        let Ok(name) = key.extract::<String>() else { continue };
        if NOT_PASSED.contains(&name.as_str()) {
            continue;
        }
        let Some(value) = get_key(first, &name)? else { continue };
        if value.is_instance_of::<PyString>() || value.is_instance_of::<PyBytes>() || value.is_none() {
            continue;
        }
        let per_token = value.len().ok() == n
            && (value.is_instance_of::<PyList>() || value.is_instance_of::<PyTuple>() || value.hasattr("dtype")?)
            && match value.get_item(0) {
                Ok(item) => item.extract::<i64>().is_ok() && !item.is_instance_of::<PyBool>(),
                Err(_) => true, // empty
            };
        if per_token {
            keys.push(name);
        }
    }
    Ok(keys)
}

/// Reads one example: the `input_ids` of a mapping, or the example itself; its `labels` when
/// `want_labels`; and the `extras` keys.
pub(crate) fn example<'py>(
    example: &Bound<'py, PyAny>,
    row: usize,
    want_labels: bool,
    extras: &[String],
) -> PyResult<Example<'py>> {
    if !is_mapping(example)? {
        if want_labels {
            return Err(row_err(
                row,
                "with labels='keep' every example must be a dict with 'input_ids' and 'labels'",
            ));
        }
        return Ok(Example {
            ids: ids_source(example.clone(), row, "input_ids", true)?,
            labels: None,
            extras: Vec::new(),
            sequences: None,
        });
    }
    let ids = get_key(example, "input_ids")?.ok_or_else(|| {
        if want_labels {
            row_err(
                row,
                "with labels='keep' every example must be a dict with 'input_ids' and 'labels'",
            )
        } else {
            row_err(row, "the example has no 'input_ids' key")
        }
    })?;
    let (ids, labels) = if want_labels {
        let labels = get_key(example, "labels")?.ok_or_else(|| {
            row_err(
                row,
                "with labels='keep' every example must be a dict with 'input_ids' and 'labels'",
            )
        })?;
        (
            kept_source(ids, row, "input_ids")?,
            Some(kept_source(labels, row, "labels")?),
        )
    } else {
        (ids_source(ids, row, "input_ids", true)?, None)
    };
    let mut columns = Vec::with_capacity(extras.len());
    for key in extras {
        let value = get_key(example, key)?
            .ok_or_else(|| row_err(row, format!("the example has no {key:?} key, which row 0 has")))?;
        let source = ids_source(value, row, key, true)?;
        if source.len() != ids.len() {
            return Err(row_err(
                row,
                format!("{key} has {} values for {} input_ids", source.len(), ids.len()),
            ));
        }
        columns.push(source);
    }
    let sequences = if want_labels { sequences(example, row)? } else { None };
    Ok(Example {
        ids,
        labels,
        extras: columns,
        sequences,
    })
}

/// The sequence lengths of a packed example: `seq_lengths` as given, else derived from
/// `position_ids` (a sequence starts at each 0 and at the first token), else `None`.
fn sequences(example: &Bound<'_, PyAny>, row: usize) -> PyResult<Option<Vec<usize>>> {
    if let Some(v) = get_key(example, "seq_lengths")?.filter(|v| !v.is_none()) {
        let lengths = ints_vec(&v, row, "seq_lengths")?;
        return lengths
            .into_iter()
            .map(|l| usize::try_from(l).map_err(|_| row_err(row, format!("seq_lengths holds a negative length {l}"))))
            .collect::<PyResult<Vec<usize>>>()
            .map(Some);
    }
    let Some(v) = get_key(example, "position_ids")?.filter(|v| !v.is_none()) else {
        return Ok(None);
    };
    let positions = ints_vec(&v, row, "position_ids")?;
    let mut out = Vec::new();
    let mut start = 0usize;
    for (i, &p) in positions.iter().enumerate().skip(1) {
        if p == 0 {
            out.push(i - start);
            start = i;
        }
    }
    if !positions.is_empty() {
        out.push(positions.len() - start);
    }
    Ok(Some(out))
}

/// A row of given labels (or its ids) under `labels="keep"`, read as numpy reads it: such rows
/// come from `datasets`/numpy pipelines, so numpy's view of them (shape, dtype) is what the
/// messages name (`docs/masking.md#kept-labels`).
fn kept_source<'py>(value: Bound<'py, PyAny>, row: usize, key: &str) -> PyResult<Source<'py>> {
    let py = value.py();
    let np = py.import("numpy")?;
    let unreadable = |e: PyErr| row_err(row, format!("cannot read {key}: {}", e.value(py)));
    // A torch tensor: its CPU copy (a meta tensor fails here, naming the row).
    let value = if value.hasattr("detach")? && value.hasattr("numpy")? {
        value
            .call_method0("detach")
            .and_then(|v| v.call_method0("cpu"))
            .and_then(|v| v.call_method0("numpy"))
            .map_err(unreadable)?
    } else {
        value
    };
    let arr = np.call_method1("asarray", (&value,)).map_err(unreadable)?;
    let arr = arr.cast_into::<PyUntypedArray>().map_err(|e| row_err(row, e))?;
    if arr.len() == 0 && arr.ndim() <= 1 || arr.shape().contains(&0) {
        let empty = np.call_method1("zeros", (0, np.getattr("int64")?))?;
        return ids_source(empty, row, key, false);
    }
    if arr.ndim() != 1 {
        let shape = arr.getattr("shape")?.repr()?;
        return Err(row_err(row, format!("{key} must be 1-D, got shape {shape}")));
    }
    let kind = arr.dtype().kind();
    if kind != b'i' && kind != b'u' {
        let dtype = arr.dtype().str().map(|s| s.to_string()).unwrap_or_default();
        return Err(row_type_err(row, format!("{key} must hold ints, got {dtype}")));
    }
    ids_source(arr.into_any(), row, key, false)
}

/// A sequence of ints as a [`Source`]. `may_convert`: other array-likes (torch tensors) are read
/// through `numpy.asarray` (zero copy for CPU tensors).
pub(crate) fn ids_source<'py>(
    ids: Bound<'py, PyAny>,
    row: usize,
    key: &str,
    may_convert: bool,
) -> PyResult<Source<'py>> {
    if let Ok(l) = ids.cast::<PyList>() {
        return Ok(Source::List(l.clone()));
    }
    if let Ok(t) = ids.cast::<PyTuple>() {
        return Ok(Source::Tuple(t.clone()));
    }
    if let Ok(arr) = ids.cast::<PyUntypedArray>() {
        if arr.ndim() != 1 {
            return Err(row_err(
                row,
                format!("{key} must be 1-D, got an array of shape {:?}", arr.shape()),
            ));
        }
        let dtype = arr.dtype();
        let kind = dtype.kind();
        if kind == b'i' || kind == b'u' || arr.len() == 0 {
            // Zero copy only for C-contiguous, aligned buffers (a slice needs both).
            let aligned = |p: usize, align: usize| p % align == 0;
            if let Ok(a) = ids.cast::<PyArray1<i64>>() {
                if a.is_c_contiguous() && aligned(a.data() as usize, std::mem::align_of::<i64>()) {
                    return Ok(Source::A64(a.try_readonly().map_err(|e| row_err(row, e))?));
                }
            } else if let Ok(a) = ids.cast::<PyArray1<i32>>() {
                if a.is_c_contiguous() && aligned(a.data() as usize, std::mem::align_of::<i32>()) {
                    return Ok(Source::A32(a.try_readonly().map_err(|e| row_err(row, e))?));
                }
            }
            if kind == b'u' && dtype.itemsize() == 8 {
                // uint64 may hold values int64 cannot; check before converting.
                let too_big: bool = ids.call_method0("max").and_then(|m| m.gt(i64::MAX)).unwrap_or(false);
                if too_big {
                    return Err(row_err(
                        row,
                        format!("{key} holds a uint64 value beyond int64; such an id is in no vocabulary"),
                    ));
                }
            }
            // Other integer widths, strided, Fortran-ordered or unaligned arrays (and empty
            // arrays of any dtype): one converting copy (np.array always copies, so the result
            // is aligned).
            let np = ids.py().import("numpy")?;
            let converted = np.call_method1("array", (&ids, np.getattr("int64")?))?;
            let a = converted.cast::<PyArray1<i64>>()?.clone();
            return Ok(Source::A64(a.try_readonly().map_err(|e| row_err(row, e))?));
        }
        return Err(row_type_err(
            row,
            format!(
                "{key} must hold integers, got an array of dtype {}",
                dtype.str().map(|s| s.to_string()).unwrap_or_default()
            ),
        ));
    }
    if ids.is_instance_of::<PyString>() || ids.is_instance_of::<PyBytes>() || ids.is_none() {
        return Err(row_type_err(
            row,
            format!("{key} must be a sequence of ints, got {}", type_name(&ids)),
        ));
    }
    if may_convert {
        let np = ids.py().import("numpy")?;
        let arr = np.call_method1("asarray", (&ids,)).map_err(|e| {
            row_type_err(
                row,
                format!("cannot read {key} of type {}: {}", type_name(&ids), e.value(ids.py())),
            )
        })?;
        return ids_source(arr, row, key, false);
    }
    Err(row_type_err(
        row,
        format!(
            "{key} must be a list of ints or an integer array, got {}",
            type_name(&ids)
        ),
    ))
}

pub(crate) fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// One int from a Python object; exact ints take the fast path, bools are refused.
#[inline]
fn id_from(item: &Bound<'_, PyAny>, row: usize, position: usize, key: &str) -> PyResult<i64> {
    let what = if key == "input_ids" { "token id" } else { key };
    // SAFETY: `item` is a valid object; PyLong_CheckExact only reads its type.
    if unsafe { ffi::PyLong_CheckExact(item.as_ptr()) } != 0 {
        // SAFETY: an exact int; runs no Python code.
        let v = unsafe { ffi::PyLong_AsLongLong(item.as_ptr()) };
        if v == -1 && PyErr::occurred(item.py()) {
            let _ = PyErr::fetch(item.py());
            return Err(position_err(
                row,
                position,
                format!("{what} at position {position} does not fit in int64"),
            ));
        }
        return Ok(v);
    }
    if item.is_instance_of::<PyBool>() {
        return Err(row_type_err(
            row,
            format!("{what} at position {position} is a bool, not an int"),
        ));
    }
    item.extract::<i64>().map_err(|e| {
        if e.is_instance_of::<pyo3::exceptions::PyOverflowError>(item.py()) {
            return position_err(
                row,
                position,
                format!("{what} at position {position} does not fit in int64"),
            );
        }
        row_type_err(
            row,
            format!("{what} at position {position} must be an int, got {}", type_name(item)),
        )
    })
}

fn position_err(row: usize, position: usize, reason: String) -> PyErr {
    super::errors::new_err(
        super::errors::Kind::Row,
        format!("row {row}: {reason}"),
        Some(row),
        Some(position),
    )
}

fn copy_list(list: &Bound<'_, PyList>, out: &mut [i64], row: usize, key: &str) -> PyResult<()> {
    if list.len() != out.len() {
        return Err(row_err(row, "the list changed size while being read"));
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
            id_from(&item, row, position, key)?
        } else {
            id_from(&item.to_owned(), row, position, key)?
        };
    }
    Ok(())
}

fn copy_tuple(t: &Bound<'_, PyTuple>, out: &mut [i64], row: usize, key: &str) -> PyResult<()> {
    for (position, (slot, item)) in out.iter_mut().zip(t.iter()).enumerate() {
        *slot = id_from(&item, row, position, key)?;
    }
    Ok(())
}

/// Ids of one sequence (a template, an example to inspect) as a Vec.
pub(crate) fn ids_vec(obj: &Bound<'_, PyAny>, row: usize) -> PyResult<Vec<i64>> {
    ints_vec(obj, row, "input_ids")
}

/// A sequence of ints named `key` in messages, copied out.
pub(crate) fn ints_vec(obj: &Bound<'_, PyAny>, row: usize, key: &str) -> PyResult<Vec<i64>> {
    let src = ids_source(obj.clone(), row, key, true)?;
    let mut out = vec![0i64; src.len()];
    src.copy_all(&mut out, row, key)?;
    Ok(out)
}

/// A template: a str, or a sequence of token ids.
pub(crate) fn template_arg(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<Template> {
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(Template::Text(s.extract::<String>()?));
    }
    let ids = ids_vec(obj, 0).map_err(|_| {
        option_type_err(format!(
            "{name} must be a str or a sequence of token ids, got {}",
            type_name(obj)
        ))
    })?;
    Ok(Template::Ids(ids))
}

/// An int option (`ignore_index`, `pad_token_id`, …): extracted with sftmask's errors, so a
/// value beyond int64 is an `OptionError` (a `ValueError`), not an `OverflowError`.
#[derive(Clone, Copy)]
pub(crate) struct Int(pub i64);

impl<'a, 'py> FromPyObject<'a, 'py> for Int {
    type Error = PyErr;
    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        if obj.is_instance_of::<PyBool>() {
            return Err(option_type_err("expected an int, got a bool"));
        }
        obj.extract::<i64>().map(Int).map_err(|e| {
            if e.is_instance_of::<pyo3::exceptions::PyOverflowError>(obj.py()) {
                super::errors::option_err(format!(
                    "{} does not fit in int64",
                    obj.repr().map(|r| r.to_string()).unwrap_or_default()
                ))
            } else {
                option_type_err(format!("expected an int, got {}", type_name(&obj.to_owned())))
            }
        })
    }
}

/// A positive count (`pad_to_multiple_of`, `num_threads`, `max_length`).
#[derive(Clone, Copy)]
pub(crate) struct Count(pub usize);

/// The threads a call uses: `num_threads` (capped, as the `Masker` caps it) or the default.
pub(crate) fn threads(num_threads: Option<Count>) -> usize {
    num_threads.map_or_else(crate::pool::default_threads, |c| c.0.min(4096))
}

impl<'a, 'py> FromPyObject<'a, 'py> for Count {
    type Error = PyErr;
    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        let Int(v) = obj.extract::<Int>()?;
        usize::try_from(v)
            .ok()
            .filter(|&n| n > 0)
            .map(Count)
            .ok_or_else(|| super::errors::option_err(format!("expected a positive int, got {v}")))
    }
}

/// Rows of ids and labels as Python lists of lists, built together: a label equal to the id at
/// its position is that id's int object, and every other label (`ignore_index`, mostly) one
/// shared int, so that the labels cost no new objects beyond their lists. This conversion holds
/// the GIL, so it is the serial part of a preprocessing call.
pub(crate) fn id_and_label_lists<'py>(
    py: Python<'py>,
    ids: &[Vec<u32>],
    labels: &[Vec<i64>],
) -> PyResult<(Bound<'py, PyList>, Bound<'py, PyList>)> {
    let mut shared: Vec<(i64, Bound<'py, PyAny>)> = Vec::new();
    let mut id_rows = Vec::with_capacity(ids.len());
    let mut label_rows = Vec::with_capacity(labels.len());
    for (row_ids, row_labels) in ids.iter().zip(labels) {
        let objects: Vec<Bound<'py, PyAny>> = row_ids
            .iter()
            .map(|&id| {
                let Ok(o) = id.into_pyobject(py);
                o.into_any()
            })
            .collect();
        let mut label_objects = Vec::with_capacity(row_labels.len());
        for (i, &label) in row_labels.iter().enumerate() {
            let object = match objects.get(i) {
                Some(o) if i64::from(row_ids[i]) == label => o.clone(),
                _ => match shared.iter().find(|(v, _)| *v == label) {
                    Some((_, o)) => o.clone(),
                    None => {
                        let Ok(o) = label.into_pyobject(py);
                        let o = o.into_any();
                        if shared.len() < 4 {
                            shared.push((label, o.clone()));
                        }
                        o
                    }
                },
            };
            label_objects.push(object);
        }
        id_rows.push(PyList::new(py, objects)?);
        label_rows.push(PyList::new(py, label_objects)?);
    }
    Ok((PyList::new(py, id_rows)?, PyList::new(py, label_rows)?))
}

/// A Python value as the template value its JSON text would parse to (`json.dumps` then
/// `serde_json`), read straight from the objects: `None` for anything that is not plain data
/// (a key that is not a string, an int past 64 bits, a float that is not finite, another type),
/// which the caller then sends through `json.dumps` itself, errors and all.
pub(crate) fn plain_value(obj: &Bound<'_, PyAny>, depth: usize) -> Option<minijinja::Value> {
    use minijinja::Value;
    if depth > 64 {
        return None;
    }
    if obj.is_none() {
        return Some(Value::from(()));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return s.to_cow().ok().map(|c| Value::from(c.into_owned()));
    }
    if let Ok(b) = obj.cast::<PyBool>() {
        return Some(Value::from(b.is_true()));
    }
    if let Ok(d) = obj.cast::<PyDict>() {
        let mut pairs = Vec::with_capacity(d.len());
        for (k, v) in d.iter() {
            let k = k.cast::<PyString>().ok()?.to_cow().ok()?.into_owned();
            pairs.push((Value::from(k), plain_value(&v, depth + 1)?));
        }
        return Some(Value::from_pairs(pairs));
    }
    // A list or a tuple: a JSON array.
    if obj.cast::<PyList>().is_ok() || obj.cast::<PyTuple>().is_ok() {
        return obj
            .try_iter()
            .ok()?
            .map(|v| plain_value(&v.ok()?, depth + 1))
            .collect::<Option<Vec<_>>>()
            .map(Value::from);
    }
    if obj.is_instance_of::<pyo3::types::PyInt>() {
        return obj.extract::<i64>().ok().map(Value::from);
    }
    if let Ok(f) = obj.cast::<pyo3::types::PyFloat>() {
        let f = f.value();
        return f.is_finite().then(|| Value::from(f));
    }
    None
}
