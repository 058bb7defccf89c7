//! The one error type of the core. The Python binding maps each variant to an exception of
//! `sftmask`'s tree (`src/python/errors.rs`); nothing here knows about Python.
//!
//! Errors about one example carry its row (and position, where there is one) as fields, so a
//! caller that feeds a dataset in chunks can re-base the row ([`Error::offset_row`]) instead of
//! rewriting a message.
//!
//! The rule: docs/masking.md#errors.

/// Everything that can go wrong in the core.
///
/// ```
/// let e = sftmask::Error::EmptyBatch;
/// assert_eq!(e.to_string(), "the batch is empty: pass at least one example");
/// let e = sftmask::Error::NegativeId { row: 2, position: 5, id: -1 };
/// assert_eq!((e.row(), e.position()), (Some(2), Some(5)));
/// assert_eq!(e.offset_row(10).to_string(), "row 12: token id -1 at position 5 is negative");
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
    /// A given label (`labels="keep"`) is neither `ignore_index` nor a token id: it would fail
    /// much later, inside the loss.
    #[error(
        "row {row}: label {label} at position {position} is neither ignore_index ({ignore_index}) \
         nor a token id (vocabulary size {vocab_size})"
    )]
    LabelOutOfRange {
        row: usize,
        position: usize,
        label: i64,
        ignore_index: i64,
        vocab_size: usize,
    },
    /// A row with no response template while `on_missing="error"`.
    #[error(
        "row {row}: response template {template} not found ({missing} of {rows} rows in this batch lack it); \
         check the template, or whether truncation (max_length) cut it off"
    )]
    MissingTemplate {
        row: usize,
        template: String,
        missing: usize,
        rows: usize,
    },
    /// Any other problem with one example (lengths that disagree, a text the tokenizer rejects).
    #[error("row {row}: {reason}")]
    Row { row: usize, reason: String },
    /// The system refused an allocation (a huge `pad_to_multiple_of`): an error, never an abort.
    #[error("cannot allocate {0}")]
    Allocation(String),
    /// `collate` was called with no examples.
    #[error("the batch is empty: pass at least one example")]
    EmptyBatch,
    /// Arrow input without the column to read.
    #[error("the table has no {} column (its columns: {columns})", py_repr(.column))]
    MissingColumn { column: String, columns: String },
    /// An Arrow column of a type that cannot be read as asked.
    #[error("column {} is of type {found}, expected {expected}", py_repr(.column))]
    ColumnType {
        column: String,
        found: String,
        expected: &'static str,
    },
    /// Arrow input that cannot be read, or output that Arrow cannot hold.
    #[error("Arrow: {0}")]
    Arrow(String),
    /// An argument has a value the core cannot work with.
    #[error("{0}")]
    InvalidArgument(String),
}

impl Error {
    /// The row (index within the call) the error is about, if it is about one.
    pub fn row(&self) -> Option<usize> {
        match self {
            Error::NegativeId { row, .. }
            | Error::IdOutOfVocab { row, .. }
            | Error::LabelOutOfRange { row, .. }
            | Error::MissingTemplate { row, .. }
            | Error::Row { row, .. } => Some(*row),
            _ => None,
        }
    }

    /// The token position within the row, where the error names one.
    pub fn position(&self) -> Option<usize> {
        match self {
            Error::NegativeId { position, .. }
            | Error::IdOutOfVocab { position, .. }
            | Error::LabelOutOfRange { position, .. } => Some(*position),
            _ => None,
        }
    }

    /// The message without its `row N: ` prefix (the whole message for errors without a row).
    pub fn reason(&self) -> String {
        let text = self.to_string();
        match self.row() {
            Some(row) => text
                .strip_prefix(&format!("row {row}: "))
                .map_or_else(|| text.clone(), str::to_owned),
            None => text,
        }
    }

    /// The same error with its row moved by `offset` (rows counted from a chunk's start become
    /// rows of the whole input).
    #[must_use]
    pub fn offset_row(mut self, offset: usize) -> Self {
        match &mut self {
            Error::NegativeId { row, .. }
            | Error::IdOutOfVocab { row, .. }
            | Error::LabelOutOfRange { row, .. }
            | Error::MissingTemplate { row, .. }
            | Error::Row { row, .. } => *row += offset,
            _ => {}
        }
        self
    }

    /// The same error naming row `row` (for a sequence checked on its own as row 0).
    #[must_use]
    pub fn at_row(self, row: usize) -> Self {
        match self.row() {
            Some(r) => self.offset_row(row.wrapping_sub(r)),
            None => self,
        }
    }
}

/// `Result` with the core's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// A text as Python's `repr` shows it, for messages that quote a template the user wrote in
/// Python (`'<|im_start|>assistant\n'`).
///
/// ```
/// assert_eq!(sftmask::error::py_repr("A:\n"), r"'A:\n'");
/// assert_eq!(sftmask::error::py_repr("it's"), r#""it's""#);
/// ```
pub fn py_repr(text: &str) -> String {
    // One implementation of Python's string repr: the chat renderer's, which templates print.
    let mut out = String::with_capacity(text.len() + 2);
    crate::chat::pystr::repr_string(text, &mut out);
    out
}
