//! Arrow in, Arrow out: preprocessing (`tokenize_and_mask`) over Arrow record batches, for the
//! engines that hand out Arrow data (HF `datasets`, Ray Data, Spark's `mapInArrow`).
//!
//! Only the containers differ from the list API: the texts are borrowed from the batches' string
//! buffers, every row goes through [`crate::encode`]'s one row path (tokenize, truncate, mask), and
//! the results are written into three new columns, `input_ids` and `labels` (`list<int32>`) and
//! `length` (`int32`). The batches' other columns pass through untouched (shared, not copied), so
//! an id or a source column survives a distributed pipeline.
//!
//! Behind the `arrow` cargo feature (the Python extension turns it on) so that a plain
//! `cargo test` of the core does not build arrow-rs.

use std::sync::Arc;

use crate::encode::{collect_rows, encode_rows, EncodeOptions};
use crate::engine::Tokenize;
use crate::error::{py_repr, Error, Result};
use crate::masker::Masker;
use crate::stats::Stats;
use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, GenericStringArray, Int32Array, ListArray, OffsetSizeTrait, RecordBatch};
use arrow_buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field, FieldRef, Schema, SchemaRef};

mod messages;
pub use messages::{tokenize_conversations_batches, value_at, ArrowConversations};

/// The columns preprocessing adds, in output order.
pub const OUTPUT_COLUMNS: [&str; 3] = ["input_ids", "labels", "length"];

/// Preprocessed Arrow data: one output batch per input batch, rows in input order.
#[derive(Debug, Clone)]
pub struct ArrowEncoded {
    /// The input's columns other than the text column, then `input_ids`, `labels`, `length`.
    pub schema: SchemaRef,
    /// The output batches.
    pub batches: Vec<RecordBatch>,
    /// What the call did, rows counted across all batches.
    pub stats: Stats,
}

fn list_of_int32() -> DataType {
    // `pa.list_(pa.int32())`: an item field named "item", nullable, as pyarrow writes it, so the
    // output concatenates with tables that pyarrow built.
    DataType::List(Arc::new(Field::new_list_field(DataType::Int32, true)))
}

/// Whether `data_type` can hold texts. `Null` too: pyarrow types a column of only nulls so, and
/// each of its rows is a null text (a row error), not a column of the wrong type.
fn is_text(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null
    )
}

/// The output schema for an input of schema `input` whose texts are in `column`.
///
/// ```
/// use arrow_schema::{DataType, Field, Schema};
/// let input = Schema::new(vec![Field::new("id", DataType::Int64, false), Field::new("text", DataType::Utf8, true)]);
/// let out = sftmask::arrow::output_schema(&input, "text").unwrap();
/// let names: Vec<&str> = out.fields().iter().map(|f| f.name().as_str()).collect();
/// assert_eq!(names, ["id", "input_ids", "labels", "length"]);
/// assert!(sftmask::arrow::output_schema(&input, "messages").is_err());
/// ```
///
/// # Errors
/// [`Error::MissingColumn`] when there is no `column`; [`Error::ColumnType`] when it is not a
/// string column; [`Error::InvalidArgument`] when another column already has an output name.
pub fn output_schema(input: &Schema, column: &str) -> Result<SchemaRef> {
    output_schema_without(input, text_index(input, column)?)
}

/// The output schema: the input's fields but the one at `consumed`, then the output columns.
fn output_schema_without(input: &Schema, consumed: usize) -> Result<SchemaRef> {
    let mut fields: Vec<FieldRef> = Vec::with_capacity(input.fields().len() + 2);
    for (i, field) in input.fields().iter().enumerate() {
        if i == consumed {
            continue;
        }
        if OUTPUT_COLUMNS.contains(&field.name().as_str()) {
            return Err(Error::InvalidArgument(format!(
                "the table already has a column {}: drop or rename it first (the output adds {})",
                py_repr(field.name()),
                OUTPUT_COLUMNS.join(", ")
            )));
        }
        fields.push(Arc::clone(field));
    }
    fields.push(Arc::new(Field::new("input_ids", list_of_int32(), true)));
    fields.push(Arc::new(Field::new("labels", list_of_int32(), true)));
    fields.push(Arc::new(Field::new("length", DataType::Int32, true)));
    // The input's schema metadata (pandas', datasets' features) describes columns this output
    // no longer has, so it is not carried over; the passed-through fields keep their own.
    Ok(Arc::new(Schema::new(fields)))
}

/// The index of `column` in `input`, or the error naming the columns there are.
fn column_index(input: &Schema, column: &str) -> Result<usize> {
    input.fields().iter().position(|f| f.name() == column).ok_or_else(|| {
        let columns: Vec<String> = input.fields().iter().map(|f| py_repr(f.name())).collect();
        Error::MissingColumn {
            column: column.to_owned(),
            columns: if columns.is_empty() {
                "none".into()
            } else {
                columns.join(", ")
            },
        }
    })
}

fn text_index(input: &Schema, column: &str) -> Result<usize> {
    let i = column_index(input, column)?;
    let found = input.field(i).data_type();
    if !is_text(found) {
        return Err(Error::ColumnType {
            column: column.to_owned(),
            found: found.to_string(),
            expected: "a string column (string, large_string or string_view)",
        });
    }
    Ok(i)
}

/// A batch must have its stream's columns (a C-interface producer may send anything).
fn check_batch(batch: &RecordBatch, schema: &Schema) -> Result<()> {
    if batch.num_columns() != schema.fields().len() {
        return Err(Error::Arrow(format!(
            "a batch has {} columns, its schema {}",
            batch.num_columns(),
            schema.fields().len()
        )));
    }
    Ok(())
}

/// Appends the texts of `array` (rows `first_row..` of the input) to `out`.
fn push_texts<'a>(array: &'a ArrayRef, column: &str, first_row: usize, out: &mut Vec<&'a str>) -> Result<()> {
    if let Some(nulls) = array.logical_nulls().filter(|n| n.null_count() > 0) {
        if let Some(i) = nulls.iter().position(|valid| !valid) {
            return Err(Error::Row {
                row: first_row + i,
                reason: format!("the text (column {}) is null", py_repr(column)),
            });
        }
    }
    match array.data_type() {
        DataType::Utf8 => push_offset_texts(array.as_string::<i32>(), column, first_row, out),
        DataType::LargeUtf8 => push_offset_texts(array.as_string::<i64>(), column, first_row, out),
        DataType::Utf8View => {
            // Views point into several buffers; arrow-rs checks them all (bounds, UTF-8).
            array
                .to_data()
                .validate_full()
                .map_err(|e| Error::Arrow(format!("column {} is not valid Arrow data: {e}", py_repr(column))))?;
            let a = array.as_string_view();
            out.extend((0..a.len()).map(|i| a.value(i)));
            Ok(())
        }
        DataType::Null => Ok(()), // no rows: a row would have been a null text above
        other => Err(Error::ColumnType {
            column: column.to_owned(),
            found: other.to_string(),
            expected: "a string column (string, large_string or string_view)",
        }),
    }
}

/// The texts of a `string`/`large_string` array, each checked (offsets within the data, valid
/// UTF-8) instead of trusted: the array may come from any producer over the C data interface,
/// and a bad one gets an error naming the row, not a crash. Costs a fraction of tokenizing.
fn push_offset_texts<'a, O: OffsetSizeTrait>(
    a: &'a GenericStringArray<O>,
    column: &str,
    first_row: usize,
    out: &mut Vec<&'a str>,
) -> Result<()> {
    let (offsets, data) = (a.value_offsets(), a.value_data());
    for (i, w) in offsets.windows(2).enumerate() {
        let bytes = w[0]
            .to_usize()
            .zip(w[1].to_usize())
            .and_then(|(start, end)| data.get(start..end))
            .ok_or_else(|| {
                Error::Arrow(format!(
                    "column {} is not valid Arrow data: the offsets of row {} are out of bounds",
                    py_repr(column),
                    first_row + i
                ))
            })?;
        let text = std::str::from_utf8(bytes).map_err(|e| Error::Row {
            row: first_row + i,
            reason: format!("the text (column {}) is not valid UTF-8: {e}", py_repr(column)),
        })?;
        out.push(text);
    }
    Ok(())
}

/// Tokenizes the texts in column `column` of `batches` and masks each row with `masker` (an
/// exact one), using up to `threads` threads across all rows; rows are numbered across batches
/// (row 5 of the second of two 4-row batches is row 9).
///
/// ```
/// use std::sync::Arc;
/// use arrow_array::{cast::AsArray, Array, Int64Array, RecordBatch, StringArray};
/// use sftmask::encode::EncodeOptions;
/// use sftmask::{Masker, Template, TrainOn, Vocab};
/// // Byte-level BPE without merges: every byte is a token.
/// let json = r#"{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
///   "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
///   "post_processor": null, "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
///   "use_regex": false}, "model": {"type": "BPE", "dropout": null, "unk_token": null,
///   "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
///   "ignore_merges": false, "vocab": {"Q": 0, "A": 1, ":": 2, "x": 3}, "merges": []}}"#;
/// let tokenizer: tokenizers::Tokenizer = json.parse().unwrap();
/// let vocab = Arc::new(Vocab::from_json(json).unwrap());
/// let masker = Masker::new(vocab, &Template::Text("A:".into()), &[], -100, TrainOn::All).unwrap();
/// let batch = RecordBatch::try_from_iter([
///     ("id", Arc::new(Int64Array::from(vec![7])) as _),
///     ("text", Arc::new(StringArray::from(vec!["Q:xA:x"])) as _),
/// ]).unwrap();
/// let out = sftmask::arrow::tokenize_and_mask_batches(&tokenizer, &masker, &batch.schema(), &[batch],
///                                                     "text", EncodeOptions::default(), 1).unwrap();
/// let labels = out.batches[0].column_by_name("labels").unwrap().as_list::<i32>().value(0);
/// assert_eq!(labels.as_primitive::<arrow_array::types::Int32Type>().values(), &[-100, -100, -100, -100, -100, 3]);
/// assert_eq!(out.stats.trained_tokens, 1);
/// ```
///
/// # Errors
/// The column errors of [`output_schema`]; [`Error::Row`] for a null text or one that is not
/// UTF-8 (naming its row); [`Error::Arrow`] for batches that are not valid Arrow data or whose tokens overflow an
/// `int32` list offset (more than 2^31 - 1 tokens in one batch); `ignore_index` or token ids
/// that do not fit `int32` ([`Error::InvalidArgument`]); and every error of
/// [`crate::encode::tokenize_and_mask`], with the same rows.
pub fn tokenize_and_mask_batches(
    tokenizer: &impl Tokenize,
    masker: &Masker,
    schema: &Schema,
    batches: &[RecordBatch],
    column: &str,
    options: EncodeOptions,
    threads: usize,
) -> Result<ArrowEncoded> {
    let out_schema = output_schema(schema, column)?;
    let text = text_index(schema, column)?;
    i32::try_from(masker.ignore_index()).map_err(|_| {
        Error::InvalidArgument(format!(
            "ignore_index {} does not fit the int32 labels column",
            masker.ignore_index()
        ))
    })?;
    // Every id the masker accepts is below the vocabulary size, so this one check makes every
    // id (and so every label) fit int32.
    if masker.vocab().len() > i32::MAX as usize {
        return Err(Error::InvalidArgument(format!(
            "the vocabulary ({} tokens) has ids that do not fit the int32 input_ids column",
            masker.vocab().len()
        )));
    }
    let mut texts = Vec::with_capacity(batches.iter().map(RecordBatch::num_rows).sum());
    for batch in batches {
        check_batch(batch, schema)?;
        push_texts(batch.column(text), column, texts.len(), &mut texts)?;
    }

    // All rows at once, so that many small batches still fill the pool.
    let rows = encode_rows(tokenizer, masker, &texts, options, threads)?;
    let tokens: usize = rows.iter().map(|r| r.as_ref().map_or(0, |(ids, _, _)| ids.len())).sum();
    let mut ids = Vec::with_capacity(tokens);
    let mut labels = Vec::with_capacity(tokens);
    let mut lengths = Vec::with_capacity(texts.len());
    let stats = collect_rows(masker, rows, |row_ids, row_labels| {
        lengths.push(row_ids.len());
        // Exact casts: ids are below the vocabulary size and labels are ids or ignore_index,
        // both checked above to fit int32.
        ids.extend(row_ids.iter().map(|&id| id as i32));
        labels.extend(row_labels.iter().map(|&l| l as i32));
    })?;

    let batches = output_batches(&out_schema, batches, text, &lengths, ids, labels)?;
    Ok(ArrowEncoded {
        schema: out_schema,
        batches,
        stats,
    })
}

/// The output batches: each input batch's columns but the one at `consumed`, then its rows'
/// `input_ids`, `labels` and `length`; `lengths` are the rows' token counts (rows numbered
/// across batches), `ids` and `labels` all rows' values end to end.
fn output_batches(
    out_schema: &SchemaRef,
    batches: &[RecordBatch],
    consumed: usize,
    lengths: &[usize],
    ids: Vec<i32>,
    labels: Vec<i32>,
) -> Result<Vec<RecordBatch>> {
    // One buffer per output column, each batch's lists a zero-copy slice of it.
    let (ids, labels) = (Buffer::from_vec(ids), Buffer::from_vec(labels));
    let item = Arc::new(Field::new_list_field(DataType::Int32, true));
    let mut out = Vec::with_capacity(batches.len());
    let (mut row, mut token) = (0usize, 0usize);
    for batch in batches {
        let n = batch.num_rows();
        let lens = &lengths[row..row + n];
        let batch_tokens: usize = lens.iter().sum();
        let too_many = || {
            Error::Arrow(format!(
                "a record batch of {batch_tokens} tokens does not fit int32 list offsets: split the \
                 input into smaller batches"
            ))
        };
        i32::try_from(batch_tokens).map_err(|_| too_many())?;
        let mut offsets = Vec::with_capacity(n + 1);
        offsets.push(0i32);
        let mut end = 0i32;
        for &len in lens {
            end += len as i32; // in range: the batch total fits
            offsets.push(end);
        }
        let offsets = OffsetBuffer::new(ScalarBuffer::from(offsets));
        let list = |values: &Buffer| -> Result<ArrayRef> {
            let values = Int32Array::new(ScalarBuffer::new(values.clone(), token, batch_tokens), None);
            let list = ListArray::try_new(Arc::clone(&item), offsets.clone(), Arc::new(values), None)
                .map_err(|e| Error::Arrow(e.to_string()))?;
            Ok(Arc::new(list))
        };
        let mut columns: Vec<ArrayRef> = batch
            .columns()
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != consumed)
            .map(|(_, c)| Arc::clone(c))
            .collect();
        columns.push(list(&ids)?);
        columns.push(list(&labels)?);
        columns.push(Arc::new(Int32Array::from_iter_values(lens.iter().map(|&l| l as i32))));
        out.push(RecordBatch::try_new(Arc::clone(out_schema), columns).map_err(|e| Error::Arrow(e.to_string()))?);
        row += n;
        token += batch_tokens;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use arrow_array::types::Int32Type;
    use arrow_array::{Int64Array, LargeStringArray, StringArray, StringViewArray};
    use tokenizers::Tokenizer;

    use super::*;
    use crate::encode::tokenize_and_mask;
    use crate::{Template, TrainOn, Vocab};

    use crate::test_support::BYTE_TOKENIZER as JSON;

    fn setup() -> (Tokenizer, Masker) {
        let tokenizer: Tokenizer = JSON.parse().unwrap();
        let vocab = Arc::new(Vocab::from_json(JSON).unwrap());
        let masker = Masker::new(
            vocab,
            &Template::Text("A:".into()),
            &[Template::Text("U:".into())],
            -100,
            TrainOn::All,
        )
        .unwrap();
        (tokenizer, masker)
    }

    fn texts(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| match i % 4 {
                0 => "U: x".to_string(),
                1 => String::new(),
                _ => "U: xA: yU: xA: y".repeat(i % 3 + 1),
            })
            .collect()
    }

    fn batch(ids: std::ops::Range<i64>, text: ArrayRef) -> RecordBatch {
        RecordBatch::try_from_iter([
            ("id", Arc::new(Int64Array::from_iter_values(ids)) as ArrayRef),
            ("text", text),
        ])
        .unwrap()
    }

    fn lists(out: &ArrowEncoded, name: &str) -> Vec<Vec<i64>> {
        out.batches
            .iter()
            .flat_map(|b| {
                let list = b.column_by_name(name).unwrap().as_list::<i32>().clone();
                (0..list.len())
                    .map(move |i| {
                        let v = list.value(i);
                        v.as_primitive::<Int32Type>()
                            .values()
                            .iter()
                            .map(|&x| i64::from(x))
                            .collect()
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn same_rows_as_the_list_api_for_each_string_type_and_chunking() {
        let (tok, masker) = setup();
        let all = texts(23);
        let want = tokenize_and_mask(&tok, &masker, &all, EncodeOptions::default(), 2).unwrap();
        let want_ids: Vec<Vec<i64>> = want
            .input_ids
            .iter()
            .map(|r| r.iter().map(|&i| i64::from(i)).collect())
            .collect();
        let parts: [(usize, usize); 3] = [(0, 10), (10, 10), (10, 23)];
        for kind in 0..3 {
            let batches: Vec<RecordBatch> = parts
                .iter()
                .map(|&(a, b)| {
                    let slice = &all[a..b];
                    let text: ArrayRef = match kind {
                        0 => Arc::new(StringArray::from_iter_values(slice)),
                        1 => Arc::new(LargeStringArray::from_iter_values(slice)),
                        _ => Arc::new(StringViewArray::from_iter_values(slice)),
                    };
                    batch(a as i64..b as i64, text)
                })
                .collect();
            let schema = batches[0].schema();
            let out = tokenize_and_mask_batches(&tok, &masker, &schema, &batches, "text", EncodeOptions::default(), 2)
                .unwrap();
            assert_eq!(out.batches.len(), 3);
            assert_eq!(out.batches[1].num_rows(), 0);
            assert_eq!(lists(&out, "input_ids"), want_ids);
            assert_eq!(lists(&out, "labels"), want.labels);
            assert_eq!(out.stats, want.stats);
            let ids: Vec<i64> = out
                .batches
                .iter()
                .flat_map(|b| {
                    b.column(0)
                        .as_primitive::<arrow_array::types::Int64Type>()
                        .values()
                        .to_vec()
                })
                .collect();
            assert_eq!(ids, (0..23).collect::<Vec<_>>());
            let lengths: Vec<i32> = out
                .batches
                .iter()
                .flat_map(|b| b.column(3).as_primitive::<Int32Type>().values().to_vec())
                .collect();
            assert_eq!(
                lengths,
                want.input_ids.iter().map(|r| r.len() as i32).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn a_null_text_names_its_row_across_batches() {
        let (tok, masker) = setup();
        let b1 = batch(0..3, Arc::new(StringArray::from(vec!["U: x"; 3])));
        let b2 = batch(3..6, Arc::new(StringArray::from(vec![Some("U: x"), None, Some("x")])));
        let err = tokenize_and_mask_batches(
            &tok,
            &masker,
            &b1.schema(),
            &[b1, b2],
            "text",
            EncodeOptions::default(),
            1,
        )
        .unwrap_err();
        assert_eq!(err.row(), Some(4));
        assert!(err.to_string().contains("null"), "{err}");
    }

    #[test]
    fn broken_string_arrays_are_errors_not_crashes() {
        let (tok, masker) = setup();
        let run = |text: StringArray| {
            let b = batch(0..2, Arc::new(text));
            tokenize_and_mask_batches(
                &tok,
                &masker,
                &b.schema(),
                std::slice::from_ref(&b),
                "text",
                EncodeOptions::default(),
                1,
            )
        };
        // SAFETY (of the test): the arrays are broken on purpose; the code under test must
        // check them before reading a text.
        let bad_utf8 = unsafe {
            StringArray::new_unchecked(
                OffsetBuffer::new_unchecked(ScalarBuffer::from(vec![0, 1, 3])),
                Buffer::from_vec(b"x\xff\xfe".to_vec()),
                None,
            )
        };
        let err = run(bad_utf8).unwrap_err();
        assert_eq!(err.row(), Some(1), "{err}");
        assert!(err.to_string().contains("not valid UTF-8"), "{err}");
        let past_the_end = unsafe {
            StringArray::new_unchecked(
                OffsetBuffer::new_unchecked(ScalarBuffer::from(vec![0, 1, 1000])),
                Buffer::from_vec(b"xy".to_vec()),
                None,
            )
        };
        let err = run(past_the_end).unwrap_err();
        assert!(matches!(err, Error::Arrow(_)), "{err}");
        assert!(err.to_string().contains("row 1 are out of bounds"), "{err}");
    }

    #[test]
    fn column_errors() {
        let (tok, masker) = setup();
        let b = batch(0..1, Arc::new(StringArray::from(vec!["x"])));
        let run = |b: &RecordBatch, column: &str| {
            tokenize_and_mask_batches(
                &tok,
                &masker,
                &b.schema(),
                std::slice::from_ref(b),
                column,
                EncodeOptions::default(),
                1,
            )
        };
        assert!(matches!(run(&b, "messages"), Err(Error::MissingColumn { .. })));
        assert!(matches!(run(&b, "id"), Err(Error::ColumnType { .. })));
        let clash = RecordBatch::try_from_iter([
            ("length", Arc::new(Int64Array::from(vec![1])) as ArrayRef),
            ("text", Arc::new(StringArray::from(vec!["x"])) as ArrayRef),
        ])
        .unwrap();
        assert!(matches!(run(&clash, "text"), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn no_batches_is_an_empty_output_with_the_schema() {
        let (tok, masker) = setup();
        let schema = batch(0..0, Arc::new(StringArray::from(Vec::<&str>::new()))).schema();
        let out = tokenize_and_mask_batches(&tok, &masker, &schema, &[], "text", EncodeOptions::default(), 2).unwrap();
        assert!(out.batches.is_empty());
        assert_eq!(out.schema.fields().len(), 4);
        assert_eq!(out.stats, Stats::default());
    }
}
