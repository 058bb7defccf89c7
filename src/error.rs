//! The one error type of the core. The Python binding maps each variant to an exception
//! (`src/python.rs`); nothing here knows about Python.

/// Everything that can go wrong in the core.
///
/// ```
/// let e = sftmask::Error::EmptyBatch;
/// assert_eq!(e.to_string(), "the batch is empty: pass at least one example");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The `tokenizer.json` text could not be parsed.
    #[error("could not read tokenizer.json: {0}")]
    TokenizerJson(String),
    /// The tokenizer uses a model/decoder we cannot build an exact byte table for.
    #[error("unsupported tokenizer: {0}")]
    UnsupportedTokenizer(String),
    /// A template is empty, or stands for no text at all.
    #[error("{what} template {template} is empty: it stands for no text")]
    EmptyTemplate { what: &'static str, template: String },
    /// A template given as token ids holds an id the vocabulary does not have.
    #[error("{what} template holds token id {id}, which is not in the vocabulary (size {vocab_size})")]
    TemplateIdOutOfVocab {
        what: &'static str,
        id: i64,
        vocab_size: usize,
    },
    /// A token id in an example is negative.
    #[error("row {row}: token id {id} at position {position} is negative")]
    NegativeId { row: usize, position: usize, id: i64 },
    /// A token id in an example is not in the vocabulary.
    #[error(
        "row {row}: token id {id} at position {position} is not in the vocabulary (size {vocab_size}); \
         were these ids made by a different tokenizer?"
    )]
    IdOutOfVocab {
        row: usize,
        position: usize,
        id: i64,
        vocab_size: usize,
    },
    /// `collate` was called with no examples.
    #[error("the batch is empty: pass at least one example")]
    EmptyBatch,
    /// An argument has a value the core cannot work with.
    #[error("{0}")]
    InvalidArgument(String),
}

/// `Result` with the core's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
