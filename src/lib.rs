//! # sftmask
//!
//! Exact completion-only label masking for supervised fine-tuning.
//!
//! The data flow, one module per step:
//! [`vocab`] (token id -> bytes, built once per tokenizer) -> [`text`] (an example's searchable
//! bytes and per-token spans) -> [`search`] (template occurrences) -> [`regions`] (which bytes
//! are the response) -> [`labels`] (the overlap rule) -> [`batch`] (pad or flatten into the
//! output buffers), driven row by row by [`masker`] on a fork-safe pool ([`pool`]). [`trl`] holds
//! TRL 0.19.1's token-level rule for `compat="trl"`. [`encode`] tokenizes and masks in one pass
//! (the preprocessing API) with a tokenizer built by [`load`]; `arrow` (cargo feature `arrow`) does the same over Arrow record
//! batches; [`pack`] packs masked rows into bins (best-fit decreasing); [`messages`] renders
//! conversations with their chat template ([`chat`]) and labels the assistant turns.
//! The optional `python` feature adds the PyO3 binding (`src/python/`, one file per Python
//! type), the only code that knows about Python.
//!
//! ```
//! use std::sync::Arc;
//! use sftmask::{Masker, Template, TrainOn, Vocab};
//! let json = r#"{"model": {"type": "BPE", "vocab": {"User:": 0, "Ġhi": 1, "ĊBot:": 2, "Ġhello": 3}, "merges": []},
//!                "decoder": {"type": "ByteLevel"}}"#;
//! let vocab = Arc::new(Vocab::from_json(json).unwrap());
//! let masker = Masker::new(vocab, &Template::Text("Bot:".into()), &[], -100, TrainOn::All).unwrap();
//! let seen = masker.inspect(&[0, 1, 2, 3]).unwrap();
//! assert_eq!(seen.text, b"User: hi\nBot: hello");
//! assert_eq!(seen.labels, vec![-100, -100, -100, 3]);
//! ```

#[cfg(feature = "arrow")]
pub mod arrow;
pub mod batch;
pub mod chat;
pub mod encode;
pub mod engine;
pub mod error;
pub mod fastbpe;
pub mod labels;
pub mod load;
pub mod masker;
pub mod messages;
pub mod options;
pub mod pack;
pub mod pool;
pub mod regions;
pub mod search;
pub mod stats;
pub mod text;
pub mod trl;
pub mod vocab;

#[cfg(test)]
mod test_support;

#[cfg(feature = "python")]
mod python;

pub use batch::{Batch, Layout, RowIds};
pub use error::{Error, Result};
pub use labels::{fill_labels, RowStats};
pub use masker::{Inspection, LabelSource, Masker, Template};
pub use options::{OnMissing, Padding, PaddingSide};
pub use regions::{regions, Region, TrainOn};
pub use search::{Occurrence, Templates};
pub use stats::Stats;
pub use text::SearchText;
pub use vocab::{Decoding, PhantomScheme, Vocab, VocabFileCheck};
