//! The PyO3 binding: the only code that knows about Python. One file per Python type; this
//! file only wires them into the `sftmask._core` module.
//!
//! The binding converts arguments (`convert`), releases the GIL around the core's work
//! (`py.detach`), hands output buffers to numpy without copying (`into_pyarray`), and maps core
//! errors to sftmask's exception tree (`errors`). Panics become `sftmask.InternalError`.

mod alloc;
mod arrow;
mod chat;
mod convert;
mod encoder;
mod errors;
mod masker;
mod pack;
mod stats;
mod vocab;

use pyo3::prelude::*;

/// The compiled core of sftmask.
#[pymodule]
mod _core {
    #[pymodule_export]
    use super::arrow::{tokenize_and_mask_arrow, tokenize_conversations_arrow};
    #[pymodule_export]
    use super::chat::{locate_regions, tokenize_conversations, PyChatTemplate};
    #[pymodule_export]
    use super::encoder::{tokenize_and_mask, PyEncoder};
    #[pymodule_export]
    use super::masker::PyMasker;
    #[pymodule_export]
    use super::pack::pack;
    #[pymodule_export]
    use super::stats::{_stats_from_dict, PyPackStats, PyStats};
    #[pymodule_export]
    use super::vocab::PyVocab;
    use super::*;

    #[allow(non_upper_case_globals)]
    #[pymodule_export]
    const __version__: &str = env!("CARGO_PKG_VERSION");

    #[allow(non_upper_case_globals)]
    #[pymodule_export]
    const PARALLEL_MIN_TOKENS: usize = crate::masker::PARALLEL_MIN_TOKENS;

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        let c = errors::classes(m.py())?;
        m.add("SftmaskError", &c.base)?;
        m.add("RowError", &c.row)?;
        m.add("RowTypeError", &c.row_type)?;
        m.add("OptionError", &c.option)?;
        m.add("OptionTypeError", &c.option_type)?;
        m.add("TokenizerError", &c.tokenizer)?;
        m.add("InternalError", &c.internal)?;
        m.add("MissingTemplateWarning", &c.missing_template)?;
        Ok(())
    }
}
