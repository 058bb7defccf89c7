//! sftmask's exception tree, and core errors -> exceptions.
//!
//! ```text
//! SftmaskError(Exception)                 .row / .position / .reason (None where not about a row)
//! ├── RowError(SftmaskError, ValueError)  a call-time problem with one example; .row is set
//! │   └── RowTypeError(RowError, TypeError)
//! ├── OptionError(SftmaskError, ValueError)
//! │   └── OptionTypeError(OptionError, TypeError)
//! ├── TokenizerError(SftmaskError, ValueError)
//! └── InternalError(SftmaskError, RuntimeError)   a caught Rust panic: a bug
//! MissingTemplateWarning(UserWarning)
//! ```
//!
//! The classes need two bases each (so `except ValueError` keeps working), which PyO3's
//! `create_exception!` cannot express; they are made once per interpreter with `type(...)`.

use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

use crate::Error;

/// The exception classes, made on first use.
pub(crate) struct Classes {
    pub base: Py<PyType>,
    pub row: Py<PyType>,
    pub row_type: Py<PyType>,
    pub option: Py<PyType>,
    pub option_type: Py<PyType>,
    pub tokenizer: Py<PyType>,
    pub internal: Py<PyType>,
    pub missing_template: Py<PyType>,
}

static CLASSES: PyOnceLock<Classes> = PyOnceLock::new();

fn make<'py>(
    py: Python<'py>,
    name: &str,
    bases: &[&Bound<'py, PyAny>],
    doc: &str,
    attributes: bool,
) -> PyResult<Py<PyType>> {
    let namespace = PyDict::new(py);
    namespace.set_item("__module__", "sftmask")?;
    namespace.set_item("__doc__", doc)?;
    if attributes {
        for attr in ["row", "position", "reason"] {
            namespace.set_item(attr, py.None())?;
        }
    }
    let bases = PyTuple::new(py, bases)?;
    let cls = py.get_type::<PyType>().call1((name, bases, namespace))?;
    Ok(cls.cast_into::<PyType>()?.unbind())
}

pub(crate) fn classes(py: Python<'_>) -> PyResult<&Classes> {
    CLASSES.get_or_try_init(py, || {
        let builtin = |name: &str| py.import("builtins").and_then(|b| b.getattr(name));
        let base = make(
            py,
            "SftmaskError",
            &[&builtin("Exception")?],
            "Base of every error sftmask raises. `row` (and `position`) name the example (and \
             token) the error is about, where there is one; `reason` is the message without its \
             `row N:` prefix.",
            true,
        )?;
        let b = base.bind(py).clone().into_any();
        let value_error = builtin("ValueError")?;
        let type_error = builtin("TypeError")?;
        let row = make(
            py,
            "RowError",
            &[&b, &value_error],
            "A problem with one example of a call (its ids, labels or text); `row` is its index in \
             the call, `position` the token where there is one.",
            false,
        )?;
        let row_type = make(
            py,
            "RowTypeError",
            &[&row.bind(py).clone().into_any(), &type_error],
            "An example of the wrong type (e.g. input_ids that are not ints); a RowError and a TypeError.",
            false,
        )?;
        let option = make(
            py,
            "OptionError",
            &[&b, &value_error],
            "An option or template with a value sftmask cannot use.",
            false,
        )?;
        let option_type = make(
            py,
            "OptionTypeError",
            &[&option.bind(py).clone().into_any(), &type_error],
            "An argument of the wrong type; an OptionError and a TypeError.",
            false,
        )?;
        let tokenizer = make(
            py,
            "TokenizerError",
            &[&b, &value_error],
            "The tokenizer cannot be read, or has no exact byte rule (e.g. an unknown decoder type).",
            false,
        )?;
        let internal = make(
            py,
            "InternalError",
            &[&b, &builtin("RuntimeError")?],
            "A bug in sftmask (a Rust panic was caught). Please report it with the input that caused it.",
            false,
        )?;
        let missing_template = make(
            py,
            "MissingTemplateWarning",
            &[&builtin("UserWarning")?],
            "Rows of a batch have no response template: their labels are all ignore_index.",
            false,
        )?;
        Ok(Classes {
            base,
            row,
            row_type,
            option,
            option_type,
            tokenizer,
            internal,
            missing_template,
        })
    })
}

/// Which class an error gets.
#[derive(Clone, Copy)]
pub(crate) enum Kind {
    Row,
    RowType,
    Option,
    OptionType,
    Tokenizer,
    Internal,
}

/// An exception of sftmask's tree, with `row`/`position`/`reason` set.
pub(crate) fn new_err(kind: Kind, message: String, row: Option<usize>, position: Option<usize>) -> PyErr {
    Python::attach(|py| {
        let build = || -> PyResult<PyErr> {
            let c = classes(py)?;
            let cls = match kind {
                Kind::Row => &c.row,
                Kind::RowType => &c.row_type,
                Kind::Option => &c.option,
                Kind::OptionType => &c.option_type,
                Kind::Tokenizer => &c.tokenizer,
                Kind::Internal => &c.internal,
            };
            let reason = match row {
                Some(r) => message
                    .strip_prefix(&format!("row {r}: "))
                    .unwrap_or(&message)
                    .to_owned(),
                None => message.clone(),
            };
            let value = cls.bind(py).call1((message.as_str(),))?;
            value.setattr("row", row)?;
            value.setattr("position", position)?;
            value.setattr("reason", reason)?;
            Ok(PyErr::from_value(value))
        };
        // Making the exception can only fail if the interpreter is broken; say so plainly.
        build().unwrap_or_else(|e| e)
    })
}

/// A [`Kind::Row`] error for row `row`, its message prefixed with the row.
pub(crate) fn row_err(row: usize, reason: impl std::fmt::Display) -> PyErr {
    new_err(Kind::Row, format!("row {row}: {reason}"), Some(row), None)
}

/// A [`Kind::RowType`] error for row `row`.
pub(crate) fn row_type_err(row: usize, reason: impl std::fmt::Display) -> PyErr {
    new_err(Kind::RowType, format!("row {row}: {reason}"), Some(row), None)
}

/// A [`Kind::Option`] error.
pub(crate) fn option_err(message: impl Into<String>) -> PyErr {
    new_err(Kind::Option, message.into(), None, None)
}

/// A [`Kind::OptionType`] error.
pub(crate) fn option_type_err(message: impl Into<String>) -> PyErr {
    new_err(Kind::OptionType, message.into(), None, None)
}

/// A [`Kind::Tokenizer`] error.
pub(crate) fn tokenizer_err(message: impl Into<String>) -> PyErr {
    new_err(Kind::Tokenizer, message.into(), None, None)
}

/// Core error -> exception of the tree (an allocation the system refuses is Python's own
/// `MemoryError`, as numpy raises it).
pub(crate) fn core_err(e: Error) -> PyErr {
    if let Error::Allocation(_) = e {
        return pyo3::exceptions::PyMemoryError::new_err(e.to_string());
    }
    let kind = match &e {
        Error::TokenizerJson(_) | Error::UnsupportedTokenizer(_) => Kind::Tokenizer,
        Error::EmptyTemplate { .. } | Error::TemplateIdOutOfVocab { .. } | Error::InvalidArgument(_) => Kind::Option,
        Error::EmptyBatch => Kind::Row,
        Error::ColumnType { .. } => Kind::OptionType,
        _ if e.row().is_some() => Kind::Row,
        _ => Kind::Option,
    };
    new_err(kind, e.to_string(), e.row(), e.position())
}

/// A core result as a Python result.
pub(crate) fn core<T>(r: crate::Result<T>) -> PyResult<T> {
    r.map_err(core_err)
}

/// Runs `f`, turning a panic into `InternalError`: for entry points that hold the GIL.
pub(crate) fn guarded<T>(f: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| Err(internal(&*payload)))
}

/// Runs `f` without the GIL, turning a panic into `InternalError`.
pub(crate) fn detach_guarded<T: Send>(py: Python<'_>, f: impl FnOnce() -> T + Send) -> PyResult<T> {
    py.detach(|| catch_unwind(AssertUnwindSafe(f)))
        .map_err(|payload| internal(&*payload))
}

fn internal(payload: &(dyn std::any::Any + Send)) -> PyErr {
    let msg = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    new_err(Kind::Internal, msg, None, None)
}
