//! The pipeline for a batch: ids -> searchable text -> template occurrences -> regions -> labels,
//! one row at a time, rows in parallel when the batch is big enough to pay for it.

use std::sync::Arc;

use rayon::prelude::*;

use crate::batch::{Batch, Layout, RowIds};
use crate::error::{Error, Result};
use crate::labels::{fill_labels, RowStats};
use crate::pool;
use crate::regions::{regions, Region, TrainOn};
use crate::search::{Occurrence, Templates};
use crate::text::SearchText;
use crate::trl;
use crate::vocab::Vocab;

/// Below this many tokens a batch is masked on the calling thread: waking the pool costs more
/// than it saves (measured in `benches/`).
pub const PARALLEL_MIN_TOKENS: usize = 32 * 1024;

/// A template as the user gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Template {
    /// Text, written as it appears in the data.
    Text(String),
    /// Token ids, read through the byte table as if they began a sequence.
    Ids(Vec<i64>),
}

/// Totals over one batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Examples in the batch.
    pub rows: u64,
    /// Tokens (padding excluded).
    pub tokens: u64,
    /// Trained tokens.
    pub trained: u64,
    /// Trained tokens that straddle a template boundary.
    pub straddling: u64,
    /// Rows in which no response template was found (all their labels are `ignore_index`).
    pub missing_rows: Vec<usize>,
    /// `compat="trl"` only: rows in which the instruction template was not found.
    pub missing_instruction_rows: Vec<usize>,
}

/// Everything about one example, for rendering and tests.
#[derive(Debug, Clone)]
pub struct Inspection {
    /// The searchable text.
    pub text: Vec<u8>,
    /// End offset of each token in `text`.
    pub ends: Vec<u32>,
    /// Template occurrences.
    pub occurrences: Vec<Occurrence>,
    /// Response regions.
    pub regions: Vec<Region>,
    /// Labels.
    pub labels: Vec<i64>,
    /// Counts.
    pub stats: RowStats,
}

/// Per-worker scratch buffers, reused across rows.
#[derive(Default)]
struct Scratch {
    text: SearchText,
    occurrences: Vec<Occurrence>,
    regions: Vec<Region>,
}

/// The masking configuration for one tokenizer: byte table, templates and options.
///
/// ```
/// use std::sync::Arc;
/// use sftmask::{Batch, Layout, Masker, RowIds, Template, TrainOn, Vocab};
/// let json = r#"{"model": {"type": "BPE", "vocab": {"Q:": 0, "ĠA:": 1, "Ġyes": 2, "<pad>": 3}, "merges": []},
///                "decoder": {"type": "ByteLevel"}}"#;
/// let vocab = Arc::new(Vocab::from_json(json).unwrap());
/// let masker = Masker::new(vocab, &Template::Text(" A:".into()), &[], -100, TrainOn::All).unwrap();
/// let rows = [RowIds::I64(&[0, 1, 2]), RowIds::I64(&[0, 2])];
/// let mut batch = Batch::new(vec![3, 2], Layout::Padded { left: false, multiple_of: None }, 3, -100).unwrap();
/// let stats = masker.collate(&mut batch, &rows, 1).unwrap();
/// assert_eq!(batch.labels, vec![-100, -100, 2, -100, -100, -100]);
/// assert_eq!(stats.missing_rows, vec![1]);
/// ```
#[derive(Debug, Clone)]
pub struct Masker {
    vocab: Arc<Vocab>,
    mode: Mode,
    ignore_index: i64,
}

/// How templates are found: in the text (exact) or as token ids (TRL 0.19.1).
#[derive(Debug, Clone)]
enum Mode {
    Exact {
        templates: Box<Templates>,
        train_on: TrainOn,
    },
    Trl {
        response: Vec<i64>,
        instruction: Option<Vec<i64>>,
        pad_token_id: Option<i64>,
    },
}

impl Masker {
    /// Builds a masker; string templates are normalized like the tokenizer's text, id templates
    /// are read through the byte table.
    ///
    /// # Errors
    /// [`Error::EmptyTemplate`] for a template that stands for no text,
    /// [`Error::TemplateIdOutOfVocab`] for an unknown id in a template.
    pub fn new(
        vocab: Arc<Vocab>,
        response: &Template,
        instructions: &[Template],
        ignore_index: i64,
        train_on: TrainOn,
    ) -> Result<Self> {
        let response = template_bytes(&vocab, response, "response")?;
        let instructions = instructions
            .iter()
            .map(|t| template_bytes(&vocab, t, "instruction"))
            .collect::<Result<Vec<_>>>()?;
        let templates = Templates::new(response, instructions)?;
        Ok(Masker {
            vocab,
            mode: Mode::Exact {
                templates: Box::new(templates),
                train_on,
            },
            ignore_index,
        })
    }

    /// Builds a masker that reproduces TRL 0.19.1 (`compat="trl"`): templates are token ids
    /// (TRL tokenizes string templates alone, which the caller does), searched in the ids with
    /// `pad_token_id` masked.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use sftmask::{Masker, Vocab};
    /// let json = r#"{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "c": 2}, "merges": []},
    ///                "decoder": {"type": "ByteLevel"}}"#;
    /// let masker = Masker::trl(Arc::new(Vocab::from_json(json).unwrap()), vec![1], None, Some(0), -100).unwrap();
    /// assert_eq!(masker.inspect(&[2, 1, 2]).unwrap().labels, vec![-100, -100, 2]);
    /// ```
    ///
    /// # Errors
    /// [`Error::EmptyTemplate`] / [`Error::TemplateIdOutOfVocab`].
    pub fn trl(
        vocab: Arc<Vocab>,
        response: Vec<i64>,
        instruction: Option<Vec<i64>>,
        pad_token_id: Option<i64>,
        ignore_index: i64,
    ) -> Result<Self> {
        let check = |ids: &[i64], what: &'static str| -> Result<()> {
            if ids.is_empty() {
                return Err(Error::EmptyTemplate {
                    what,
                    template: "[]".into(),
                });
            }
            let unknown = |id: i64| u32::try_from(id).ok().and_then(|i| vocab.token_bytes(i)).is_none();
            match ids.iter().find(|&&id| unknown(id)) {
                Some(&id) => Err(Error::TemplateIdOutOfVocab {
                    what,
                    id,
                    vocab_size: vocab.len(),
                }),
                None => Ok(()),
            }
        };
        check(&response, "response")?;
        if let Some(ins) = &instruction {
            check(ins, "instruction")?;
        }
        Ok(Masker {
            vocab,
            mode: Mode::Trl {
                response,
                instruction,
                pad_token_id,
            },
            ignore_index,
        })
    }

    /// `true` for a `compat="trl"` masker.
    pub fn is_trl(&self) -> bool {
        matches!(self.mode, Mode::Trl { .. })
    }

    /// The label of padding positions: `ignore_index`, or -100 under TRL (its parent collator
    /// hard-codes it).
    pub fn padding_label(&self) -> i64 {
        match self.mode {
            Mode::Exact { .. } => self.ignore_index,
            Mode::Trl { .. } => -100,
        }
    }

    /// The response template and the instruction templates, as bytes of the searchable text.
    pub fn template_texts(&self) -> (Vec<u8>, Vec<Vec<u8>>) {
        match &self.mode {
            Mode::Exact { templates, .. } => (templates.response().to_vec(), templates.instructions().to_vec()),
            Mode::Trl {
                response, instruction, ..
            } => {
                let bytes = |ids: &[i64]| {
                    let mut t = SearchText::default();
                    t.build(&self.vocab, ids, 0)
                        .map(|()| t.bytes().to_vec())
                        .unwrap_or_default()
                };
                (bytes(response), instruction.iter().map(|i| bytes(i)).collect())
            }
        }
    }

    /// The byte table.
    pub fn vocab(&self) -> &Arc<Vocab> {
        &self.vocab
    }

    /// The label of masked tokens.
    pub fn ignore_index(&self) -> i64 {
        self.ignore_index
    }

    fn mask_row(&self, ids: &[i64], labels: &mut [i64], scratch: &mut Scratch, row: usize) -> Result<RowStats> {
        // Both modes validate the ids through the table (the text also feeds `inspect`).
        scratch.text.build(&self.vocab, ids, row)?;
        match &self.mode {
            Mode::Exact { templates, train_on } => {
                let text = scratch.text.bytes();
                templates.find(text, &mut scratch.occurrences);
                regions(
                    &scratch.occurrences,
                    text.len() as u32,
                    templates.has_instructions(),
                    *train_on,
                    &mut scratch.regions,
                );
                let mut stats = fill_labels(ids, &scratch.text, &scratch.regions, self.ignore_index, labels);
                stats.found = scratch.occurrences.iter().any(|o| o.is_response);
                stats.instruction_found = true;
                Ok(stats)
            }
            Mode::Trl {
                response,
                instruction,
                pad_token_id,
            } => {
                scratch.occurrences.clear();
                scratch.regions.clear();
                let out = trl::mask_row(
                    ids,
                    labels,
                    response,
                    instruction.as_deref(),
                    *pad_token_id,
                    self.ignore_index,
                );
                Ok(RowStats {
                    tokens: ids.len() as u64,
                    trained: labels.iter().filter(|&&l| l != self.ignore_index && l != -100).count() as u64,
                    straddling: 0,
                    found: out.response_found,
                    instruction_found: out.instruction_found,
                    first_trained: labels.first().is_some_and(|&l| l != self.ignore_index && l != -100),
                })
            }
        }
    }

    /// Masks one example and returns everything that went into it.
    ///
    /// # Errors
    /// As [`SearchText::build`].
    pub fn inspect(&self, ids: &[i64]) -> Result<Inspection> {
        let mut scratch = Scratch::default();
        let mut labels = vec![self.ignore_index; ids.len()];
        let stats = self.mask_row(ids, &mut labels, &mut scratch, 0)?;
        Ok(Inspection {
            text: scratch.text.bytes().to_vec(),
            ends: scratch.text.ends().to_vec(),
            occurrences: scratch.occurrences,
            regions: scratch.regions,
            labels,
            stats,
        })
    }

    /// Fills `batch` (allocated for these rows' lengths) in place: copies ids from `sources`
    /// that are not already in place, writes labels, attention mask / positions. Uses up to
    /// `threads` threads when the batch holds at least [`PARALLEL_MIN_TOKENS`] tokens.
    ///
    /// # Errors
    /// The first bad row's error (rows in order), or [`Error::InvalidArgument`] when `sources`
    /// does not match the batch.
    pub fn collate(&self, batch: &mut Batch, sources: &[RowIds<'_>], threads: usize) -> Result<BatchStats> {
        if sources.len() != batch.rows() {
            return Err(Error::InvalidArgument(format!(
                "{} row sources for a batch of {} rows",
                sources.len(),
                batch.rows()
            )));
        }
        for (r, (src, &len)) in sources.iter().zip(batch.lengths()).enumerate() {
            if src.len().is_some_and(|n| n != len) {
                return Err(Error::InvalidArgument(format!(
                    "row {r}: source length does not match the batch"
                )));
            }
        }
        let flat = matches!(batch.layout(), Layout::Flat);
        let parallel = threads > 1 && batch.rows() > 1 && batch.tokens() >= PARALLEL_MIN_TOKENS;
        let rows = batch.rows_mut();
        let work = |scratch: &mut Scratch, (r, (row, src)): (usize, (crate::batch::RowMut<'_>, &RowIds<'_>))| {
            match src {
                RowIds::InPlace => {}
                RowIds::I64(s) => row.ids.copy_from_slice(s),
                RowIds::I32(s) => {
                    for (d, &v) in row.ids.iter_mut().zip(s.iter()) {
                        *d = i64::from(v);
                    }
                }
            }
            let stats = self.mask_row(row.ids, row.labels, scratch, r)?;
            if let Some(att) = row.attention {
                att.fill(1);
            }
            if let Some(pos) = row.positions {
                for (i, p) in pos.iter_mut().enumerate() {
                    *p = i as i64;
                }
            }
            if flat {
                if let Some(first) = row.labels.first_mut() {
                    // The first token of a packed sequence has no previous token in its own
                    // sequence to be predicted from.
                    *first = self.ignore_index;
                }
            }
            Ok::<RowStats, Error>(stats)
        };
        let results: Vec<Result<RowStats>> = match parallel.then(|| pool::try_get(threads)).flatten() {
            Some(pool) => pool.install(|| {
                rows.into_par_iter()
                    .zip(sources.par_iter())
                    .enumerate()
                    .map_init(Scratch::default, work)
                    .collect()
            }),
            None => {
                let mut scratch = Scratch::default();
                rows.into_iter()
                    .zip(sources.iter())
                    .enumerate()
                    .map(|item| work(&mut scratch, item))
                    .collect()
            }
        };
        let mut stats = BatchStats {
            rows: batch.rows() as u64,
            ..BatchStats::default()
        };
        for (r, res) in results.into_iter().enumerate() {
            let s = res?;
            stats.tokens += s.tokens;
            // A padding-free batch masks each row's first label after the row was counted.
            stats.trained += s.trained - u64::from(flat && s.first_trained);
            stats.straddling += s.straddling;
            if !s.found {
                stats.missing_rows.push(r);
            }
            if !s.instruction_found {
                stats.missing_instruction_rows.push(r);
            }
        }
        Ok(stats)
    }
}

/// A template's bytes in the searchable text.
fn template_bytes(vocab: &Vocab, template: &Template, what: &'static str) -> Result<Vec<u8>> {
    let bytes = match template {
        Template::Text(s) => vocab.normalize_template(s)?.into_bytes(),
        Template::Ids(ids) => {
            let mut text = SearchText::default();
            text.build(vocab, ids, 0).map_err(|e| match e {
                Error::NegativeId { id, .. } | Error::IdOutOfVocab { id, .. } => Error::TemplateIdOutOfVocab {
                    what,
                    id,
                    vocab_size: vocab.len(),
                },
                other => other,
            })?;
            text.bytes().to_vec()
        }
    };
    if bytes.is_empty() {
        let shown = match template {
            Template::Text(s) => format!("{s:?}"),
            Template::Ids(ids) => format!("{ids:?}"),
        };
        return Err(Error::EmptyTemplate { what, template: shown });
    }
    Ok(bytes)
}
