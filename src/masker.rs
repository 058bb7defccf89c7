//! The masking engine: one entry point ([`Masker::collate`]) for every label source — templates
//! found in the text (exact), TRL 0.19.1's token matching (`compat="trl"`), or labels the
//! caller gives (`labels="keep"`). Per row: ids -> searchable text -> template occurrences ->
//! regions -> labels; rows in parallel when the batch is big enough to pay for it.
//!
//! The rule: docs/masking.md (every section; #kept-labels for `Given`).

use std::sync::Arc;

use crate::batch::{Batch, Layout, RowIds, RowMut};
use crate::error::{py_repr, Error, Result};
use crate::labels::{fill_labels, RowStats};
use crate::options::OnMissing;
use crate::pool;
use crate::regions::{regions, Region, TrainOn};
use crate::search::{Occurrence, Templates};
use crate::stats::Stats;
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

/// Where the labels come from.
#[derive(Debug, Clone)]
pub enum LabelSource {
    /// Templates found by byte search in the example's text (the default, exact rule).
    Exact {
        /// The response and instruction templates, as bytes of the searchable text.
        templates: Box<Templates>,
        /// Which response regions are trained.
        train_on: TrainOn,
    },
    /// TRL 0.19.1's token-level rule (`compat="trl"`).
    Trl {
        /// The response template's ids (TRL tokenizes a string template alone).
        response: Vec<i64>,
        /// The instruction template's ids, if any.
        instruction: Option<Vec<i64>>,
        /// TRL masks every label equal to the pad id.
        pad_token_id: Option<i64>,
    },
    /// Labels given with each example (`labels="keep"`): checked, padded or flattened, nothing
    /// searched.
    Given,
}

/// The masking engine for one tokenizer: byte table, label source and options.
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
/// let stats = masker.collate(&mut batch, &rows, &[], 1).unwrap();
/// assert_eq!(batch.labels, vec![-100, -100, 2, -100, -100, -100]);
/// assert_eq!(stats.missing_rows, vec![1]);
/// ```
#[derive(Debug, Clone)]
pub struct Masker {
    vocab: Arc<Vocab>,
    source: LabelSource,
    ignore_index: i64,
    on_missing: OnMissing,
    /// The response template as the user wrote it, for messages.
    shown: String,
}

impl Masker {
    /// Builds an exact masker; string templates are normalized like the tokenizer's text, id
    /// templates are read through the byte table.
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
        let response_bytes = template_bytes(&vocab, response, "response")?;
        let instructions = instructions
            .iter()
            .map(|t| template_bytes(&vocab, t, "instruction"))
            .collect::<Result<Vec<_>>>()?;
        let templates = Templates::new(response_bytes, instructions)?;
        Ok(Masker {
            vocab,
            source: LabelSource::Exact {
                templates: Box::new(templates),
                train_on,
            },
            ignore_index,
            on_missing: OnMissing::Warn,
            shown: shown(response),
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
            shown: format!("{response:?}"),
            vocab,
            source: LabelSource::Trl {
                response,
                instruction,
                pad_token_id,
            },
            ignore_index,
            on_missing: OnMissing::Warn,
        })
    }

    /// Builds a masker that keeps the labels given with each example (`labels="keep"`).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use sftmask::{Batch, Layout, Masker, RowIds, Vocab};
    /// let json = r#"{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "c": 2}, "merges": []},
    ///                "decoder": {"type": "ByteLevel"}}"#;
    /// let masker = Masker::given(Arc::new(Vocab::from_json(json).unwrap()), -100);
    /// let mut batch = Batch::new(vec![3, 2], Layout::Flat, 0, -100).unwrap();
    /// let ids = [RowIds::I64(&[0, 1, 2]), RowIds::I64(&[2, 1])];
    /// let labels = [RowIds::I64(&[-100, 1, 2]), RowIds::I64(&[2, 1])];
    /// masker.collate(&mut batch, &ids, &labels, 1).unwrap();
    /// // The first label of every flattened sequence is masked.
    /// assert_eq!(batch.labels, vec![-100, 1, 2, -100, 1]);
    /// ```
    ///
    /// Rows that are packed bins ([`Batch::set_sequences`]) restart positions and mask the first
    /// label of every sequence:
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use sftmask::{Batch, Layout, Masker, RowIds, Vocab};
    /// # let json = r#"{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "c": 2}, "merges": []},
    /// #                "decoder": {"type": "ByteLevel"}}"#;
    /// let masker = Masker::given(Arc::new(Vocab::from_json(json).unwrap()), -100);
    /// let mut batch = Batch::new(vec![5], Layout::Flat, 0, -100).unwrap();
    /// batch.set_sequences(vec![vec![2, 3]]).unwrap();
    /// let stats = masker.collate(&mut batch, &[RowIds::I64(&[0, 1, 2, 1, 0])], &[RowIds::I64(&[0, 1, 2, 1, 0])], 1).unwrap();
    /// assert_eq!(batch.labels, vec![-100, 1, -100, 1, 0]);
    /// assert_eq!(batch.position_ids, vec![0, 1, 0, 1, 2]);
    /// assert_eq!(batch.cu_seq_lens, vec![0, 2, 5]);
    /// assert_eq!(stats.trained_tokens, 3);
    /// ```
    pub fn given(vocab: Arc<Vocab>, ignore_index: i64) -> Self {
        Masker {
            vocab,
            source: LabelSource::Given,
            ignore_index,
            on_missing: OnMissing::Warn,
            shown: String::new(),
        }
    }

    /// The same masker with another [`OnMissing`] policy.
    #[must_use]
    pub fn with_on_missing(mut self, on_missing: OnMissing) -> Self {
        self.on_missing = on_missing;
        self
    }

    /// Where the labels come from.
    pub fn source(&self) -> &LabelSource {
        &self.source
    }

    /// `true` for a `compat="trl"` masker.
    pub fn is_trl(&self) -> bool {
        matches!(self.source, LabelSource::Trl { .. })
    }

    /// The label of padding positions: `ignore_index`, or -100 under TRL (its parent collator
    /// hard-codes it).
    pub fn padding_label(&self) -> i64 {
        match self.source {
            LabelSource::Trl { .. } => -100,
            _ => self.ignore_index,
        }
    }

    /// The response template and the instruction templates, as bytes of the searchable text
    /// (none for [`LabelSource::Given`]).
    ///
    /// # Errors
    /// Only if a TRL template's ids are not in the table (they were checked when the masker was
    /// built).
    pub fn template_texts(&self) -> Result<(Vec<u8>, Vec<Vec<u8>>)> {
        match &self.source {
            LabelSource::Exact { templates, .. } => {
                Ok((templates.response().to_vec(), templates.instructions().to_vec()))
            }
            LabelSource::Trl {
                response, instruction, ..
            } => {
                let bytes = |ids: &[i64]| -> Result<Vec<u8>> {
                    let mut t = SearchText::default();
                    t.build(&self.vocab, ids, 0)?;
                    Ok(t.bytes().to_vec())
                };
                let instructions = instruction.iter().map(|i| bytes(i)).collect::<Result<Vec<_>>>()?;
                Ok((bytes(response)?, instructions))
            }
            LabelSource::Given => Ok((Vec::new(), Vec::new())),
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

    /// The policy for rows without a response template.
    pub fn on_missing(&self) -> OnMissing {
        self.on_missing
    }

    /// Labels of one row whose ids are in `ids`; `labels` holds the given labels for
    /// [`LabelSource::Given`] and is overwritten otherwise.
    fn mask_row(&self, ids: &[i64], labels: &mut [i64], scratch: &mut Scratch, row: usize) -> Result<RowStats> {
        match &self.source {
            LabelSource::Exact { templates, train_on } => {
                scratch.text.build(&self.vocab, ids, row)?;
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
            LabelSource::Trl {
                response,
                instruction,
                pad_token_id,
            } => {
                // The text is not searched, but building it validates the ids (and feeds `inspect`).
                scratch.text.build(&self.vocab, ids, row)?;
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
                let trained = |l: i64| l != self.ignore_index && l != -100;
                Ok(RowStats {
                    tokens: ids.len() as u64,
                    trained: labels.iter().filter(|&&l| trained(l)).count() as u64,
                    found: out.response_found,
                    instruction_found: out.instruction_found,
                    first_trained: labels.first().is_some_and(|&l| trained(l)),
                    masks_padding: (out.masks_left_padding, out.masks_right_padding),
                    ..RowStats::default()
                })
            }
            LabelSource::Given => {
                let size = self.vocab.len();
                for (position, &id) in ids.iter().enumerate() {
                    if id < 0 {
                        return Err(Error::NegativeId { row, position, id });
                    }
                    if id as u64 >= size as u64 {
                        return Err(Error::IdOutOfVocab {
                            row,
                            position,
                            id,
                            vocab_size: size,
                        });
                    }
                }
                let mut trained = 0u64;
                for (position, &label) in labels.iter().enumerate() {
                    if label == self.ignore_index {
                        continue;
                    }
                    if label < 0 || label as u64 >= size as u64 {
                        return Err(Error::LabelOutOfRange {
                            row,
                            position,
                            label,
                            ignore_index: self.ignore_index,
                            vocab_size: size,
                        });
                    }
                    trained += 1;
                }
                Ok(RowStats {
                    tokens: ids.len() as u64,
                    trained,
                    found: true, // set from the trained count by `collate`
                    instruction_found: true,
                    first_trained: labels.first().is_some_and(|&l| l != self.ignore_index),
                    ..RowStats::default()
                })
            }
        }
    }

    /// Masks one example and returns everything that went into it.
    ///
    /// # Errors
    /// As [`SearchText::build`]; [`Error::InvalidArgument`] for [`LabelSource::Given`], which
    /// computes no labels.
    pub fn inspect(&self, ids: &[i64]) -> Result<Inspection> {
        if matches!(self.source, LabelSource::Given) {
            return Err(Error::InvalidArgument(
                "labels='keep' computes no labels: there is nothing to inspect".into(),
            ));
        }
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

    /// Fills `batch` (allocated for these rows' lengths) in place: copies ids from `ids` (and,
    /// for [`LabelSource::Given`], labels from `labels`) that are not already in place, writes
    /// labels, attention mask / positions, and applies the [`OnMissing`] policy. Uses up to
    /// `threads` threads when the batch holds at least [`PARALLEL_MIN_TOKENS`] tokens.
    ///
    /// # Errors
    /// The first bad row's error (rows in order); [`Error::MissingTemplate`] under
    /// [`OnMissing::Error`]; [`Error::InvalidArgument`] when the sources do not match the batch.
    pub fn collate(
        &self,
        batch: &mut Batch,
        ids: &[RowIds<'_>],
        labels: &[RowIds<'_>],
        threads: usize,
    ) -> Result<Stats> {
        let given = matches!(self.source, LabelSource::Given);
        if ids.len() != batch.rows() || labels.len() != if given { batch.rows() } else { 0 } {
            return Err(Error::InvalidArgument(format!(
                "{} id sources and {} label sources for a batch of {} rows",
                ids.len(),
                labels.len(),
                batch.rows()
            )));
        }
        for (r, &len) in batch.lengths().iter().enumerate() {
            let mismatch = |src: Option<&RowIds<'_>>| src.and_then(RowIds::len).is_some_and(|n| n != len);
            if mismatch(ids.get(r)) {
                return Err(Error::InvalidArgument(format!(
                    "row {r}: source length does not match the batch"
                )));
            }
            if let Some(n) = labels.get(r).and_then(RowIds::len).filter(|&n| n != len) {
                return Err(Error::Row {
                    row: r,
                    reason: format!("{n} labels for {len} input_ids"),
                });
            }
        }
        let flat = matches!(batch.layout(), Layout::Flat);
        let parallel = batch.rows() > 1 && batch.tokens() >= PARALLEL_MIN_TOKENS;
        let no_labels = RowIds::InPlace;
        let items: Vec<_> = batch
            .rows_mut()
            .into_iter()
            .zip(ids)
            .enumerate()
            .map(|(r, (row, src))| (row, src, labels.get(r).unwrap_or(&no_labels)))
            .collect();
        let results = pool::map_rows(items, threads, parallel, Scratch::default, |scratch, (r, item)| {
            self.fill_row(item, scratch, r, flat)
        });
        let mut stats = Stats::default();
        let left = matches!(batch.layout(), Layout::Padded { left: true, .. });
        for (r, res) in results.into_iter().enumerate() {
            let mut s = res?;
            if given {
                s.found = s.trained > u64::from(flat && s.first_trained);
            }
            if !flat && (if left { s.masks_padding.0 } else { s.masks_padding.1 }) {
                // TRL masks the padded row: where its range covers the padding, the padding's
                // label is ignore_index rather than the parent's -100.
                batch.fill_padding_labels(r, self.ignore_index);
            }
            stats.add_row(r, &s, flat);
        }
        self.check_missing(&stats)?;
        Ok(stats)
    }

    /// One row of [`Masker::collate`].
    fn fill_row(
        &self,
        (row, ids, labels): (RowMut<'_>, &RowIds<'_>, &RowIds<'_>),
        scratch: &mut Scratch,
        r: usize,
        flat: bool,
    ) -> Result<RowStats> {
        ids.copy_into(row.ids);
        labels.copy_into(row.labels);
        let mut stats = self.mask_row(row.ids, row.labels, scratch, r)?;
        if let Some(att) = row.attention {
            att.fill(1);
        }
        if let Some(pos) = row.positions {
            // Positions restart at each packed sequence (a row without declared sequences is one).
            let whole = [pos.len()];
            let sequences = if row.sequences.is_empty() {
                &whole[..]
            } else {
                row.sequences
            };
            let mut start = 0usize;
            for &len in sequences {
                for (i, p) in pos[start..start + len].iter_mut().enumerate() {
                    *p = i as i64;
                }
                start += len;
            }
        }
        // Packed rows: the first token of every sequence after the first would be predicted from
        // the previous sequence's last token (docs/packing.md#collating-packed-rows).
        let mut start = 0usize;
        for &len in row.sequences.iter().take(row.sequences.len().saturating_sub(1)) {
            start += len;
            if let Some(label) = row.labels.get_mut(start) {
                if *label != self.ignore_index {
                    stats.trained = stats.trained.saturating_sub(1);
                }
                *label = self.ignore_index;
            }
        }
        if flat {
            if let Some(first) = row.labels.first_mut() {
                // The first token of a packed sequence has no previous token in its own
                // sequence to be predicted from.
                *first = self.ignore_index;
            }
        }
        Ok(stats)
    }

    /// [`OnMissing::Error`]: fails on the first row without a template (never for given labels).
    pub(crate) fn check_missing(&self, stats: &Stats) -> Result<()> {
        if self.on_missing != OnMissing::Error {
            return Ok(());
        }
        match &self.source {
            LabelSource::Exact { .. } => match stats.missing_rows.first() {
                Some(&row) => Err(Error::MissingTemplate {
                    row,
                    template: self.shown.clone(),
                    missing: stats.missing_rows.len(),
                    rows: stats.rows as usize,
                }),
                None => Ok(()),
            },
            LabelSource::Trl { .. } => {
                let first = stats.missing_rows.iter().chain(&stats.missing_instruction_rows).min();
                match first {
                    Some(&row) => Err(Error::Row {
                        row,
                        reason: "template not found (compat='trl')".into(),
                    }),
                    None => Ok(()),
                }
            }
            LabelSource::Given => Ok(()),
        }
    }
}

/// A template as messages show it: Python's repr of a string, a list of ids as is.
fn shown(template: &Template) -> String {
    match template {
        Template::Text(s) => py_repr(s),
        Template::Ids(ids) => format!("{ids:?}"),
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
