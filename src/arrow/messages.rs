//! Conversations in Arrow: a `messages` column (`list<struct<role, content, …>>`, as HF
//! `datasets`, Ray Data and Spark store chat data) rendered, tokenized and labelled by
//! [`crate::messages`]'s one row path, results written into the same `input_ids`, `labels` and
//! `length` columns as the text path.
//!
//! Each row's messages become template values directly from the Arrow arrays (no JSON, no
//! Python object): a struct is a map with its fields in schema order, a list a sequence, a null
//! `none`. That is what the same row gives transformers through `datasets` (whose rows carry a
//! `None` for a key another row has), so the rendering is the one a Python user of that dataset
//! sees.

use super::{check_batch, column_index, output_batches, output_schema_without, ArrowEncoded};
use crate::chat::{ChatTemplate, Value};
use crate::engine::Tokenize;
use crate::error::{py_repr, Error, Result};
use crate::messages::{tokenize_conversations, Conversation, ConversationOptions};
use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Schema};

/// What [`tokenize_conversations_batches`] returns: the output (when no row needs another
/// renderer), and the rows that do or whose turns cannot be located.
#[derive(Debug, Clone)]
pub struct ArrowConversations {
    /// The output table; `None` when some rows are in `fallback` (the caller renders the
    /// batch elsewhere: one table is made by one renderer).
    pub encoded: Option<ArrowEncoded>,
    /// Rows the Rust renderer cannot render, with why.
    pub fallback: Vec<(usize, String)>,
    /// Rows whose trained turns cannot be located exactly, with why.
    pub not_located: Vec<(usize, String)>,
}

/// Nesting deeper than this is not chat data; the limit keeps a hostile schema from
/// exhausting the stack.
const MAX_DEPTH: usize = 64;

/// The value at `row` of `array`, as a template sees it.
///
/// ```
/// use std::sync::Arc;
/// use arrow_array::{ArrayRef, Int64Array, StringArray, StructArray};
/// use arrow_schema::{DataType, Field};
/// let message: ArrayRef = Arc::new(StructArray::from(vec![
///     (Arc::new(Field::new("role", DataType::Utf8, true)), Arc::new(StringArray::from(vec!["user"])) as ArrayRef),
///     (Arc::new(Field::new("n", DataType::Int64, true)), Arc::new(Int64Array::from(vec![None])) as ArrayRef),
/// ]));
/// let v = sftmask::arrow::value_at(&message, 0).unwrap();
/// assert_eq!(v.to_string(), "{'role': 'user', 'n': None}"); // keys in schema order, a null is none
/// ```
///
/// # Errors
/// A message naming the Arrow type when a value is of one templates have no value for
/// (binary, dates, decimals, …) or nests deeper than 64 levels.
pub fn value_at(array: &ArrayRef, row: usize) -> std::result::Result<Value, String> {
    value(array.as_ref(), row, 0)
}

fn value(array: &dyn Array, row: usize, depth: usize) -> std::result::Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err(format!("values nest deeper than {MAX_DEPTH} levels"));
    }
    if array.is_null(row) {
        return Ok(Value::from(()));
    }
    let items = |values: &ArrayRef, start: usize, end: usize| {
        (start..end)
            .map(|i| value(values.as_ref(), i, depth + 1))
            .collect::<std::result::Result<Vec<Value>, String>>()
            .map(Value::from)
    };
    Ok(match array.data_type() {
        DataType::Null => Value::from(()),
        DataType::Boolean => Value::from(array.as_boolean().value(row)),
        DataType::Int8 => Value::from(array.as_primitive::<Int8Type>().value(row)),
        DataType::Int16 => Value::from(array.as_primitive::<Int16Type>().value(row)),
        DataType::Int32 => Value::from(array.as_primitive::<Int32Type>().value(row)),
        DataType::Int64 => Value::from(array.as_primitive::<Int64Type>().value(row)),
        DataType::UInt8 => Value::from(array.as_primitive::<UInt8Type>().value(row)),
        DataType::UInt16 => Value::from(array.as_primitive::<UInt16Type>().value(row)),
        DataType::UInt32 => Value::from(array.as_primitive::<UInt32Type>().value(row)),
        DataType::UInt64 => Value::from(array.as_primitive::<UInt64Type>().value(row)),
        DataType::Float32 => Value::from(f64::from(array.as_primitive::<Float32Type>().value(row))),
        DataType::Float64 => Value::from(array.as_primitive::<Float64Type>().value(row)),
        DataType::Utf8 => Value::from(array.as_string::<i32>().value(row)),
        DataType::LargeUtf8 => Value::from(array.as_string::<i64>().value(row)),
        DataType::Utf8View => Value::from(array.as_string_view().value(row)),
        DataType::List(_) => {
            let a = array.as_list::<i32>();
            let o = a.value_offsets();
            items(a.values(), o[row] as usize, o[row + 1] as usize)?
        }
        DataType::LargeList(_) => {
            let a = array.as_list::<i64>();
            let o = a.value_offsets();
            items(a.values(), o[row] as usize, o[row + 1] as usize)?
        }
        DataType::FixedSizeList(_, n) => {
            let a = array.as_fixed_size_list();
            let n = *n as usize;
            items(a.values(), row * n, row * n + n)?
        }
        DataType::Struct(fields) => {
            let a = array.as_struct();
            let mut pairs = Vec::with_capacity(fields.len());
            for (field, column) in fields.iter().zip(a.columns()) {
                pairs.push((field.name().as_str(), value(column.as_ref(), row, depth + 1)?));
            }
            Value::from_pairs(pairs)
        }
        DataType::Map(_, _) => {
            let a = array.as_map();
            let o = a.value_offsets();
            let (keys, values) = (a.keys(), a.values());
            let mut pairs = Vec::new();
            for i in o[row] as usize..o[row + 1] as usize {
                pairs.push((
                    value(keys.as_ref(), i, depth + 1)?,
                    value(values.as_ref(), i, depth + 1)?,
                ));
            }
            Value::from_pairs(pairs)
        }
        DataType::Dictionary(_, _) => {
            let a = array.as_any_dictionary();
            let key = a.normalized_keys()[row];
            value(a.values().as_ref(), key, depth + 1)?
        }
        other => return Err(format!("a value of Arrow type {other} has no template value")),
    })
}

fn is_list(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(_, _) | DataType::Null
    )
}

/// Every row's conversation from the `column` (and `tools_column`) of `batches`, rows numbered
/// across batches.
fn conversations(
    schema: &Schema,
    batches: &[RecordBatch],
    column: usize,
    tools_column: Option<usize>,
    tools: Option<&Value>,
) -> Result<Vec<Conversation>> {
    let name = schema.field(column).name();
    let mut out = Vec::with_capacity(batches.iter().map(RecordBatch::num_rows).sum());
    for batch in batches {
        check_batch(batch, schema)?;
        // Offsets, UTF-8 and child lengths are checked once, so reading a value cannot go out
        // of bounds whatever the producer on the other side of the C interface wrote.
        for i in std::iter::once(column).chain(tools_column) {
            batch.column(i).to_data().validate_full().map_err(|e| {
                Error::Arrow(format!(
                    "column {} is not valid Arrow data: {e}",
                    py_repr(schema.field(i).name())
                ))
            })?;
        }
        let messages = batch.column(column);
        for i in 0..batch.num_rows() {
            let row = out.len();
            let row_err = |reason: String| Error::Row { row, reason };
            if messages.is_null(i) {
                return Err(row_err(format!("the conversation (column {}) is null", py_repr(name))));
            }
            let list = value_at(messages, i).map_err(|e| row_err(format!("column {}: {e}", py_repr(name))))?;
            if let Ok(items) = list.try_iter() {
                for (m, message) in items.enumerate() {
                    if message.is_none() {
                        return Err(row_err(format!("message {m} is null")));
                    }
                }
            }
            let tools = match tools_column {
                Some(t) if !batch.column(t).is_null(i) => Some(
                    value_at(batch.column(t), i)
                        .map_err(|e| row_err(format!("column {}: {e}", py_repr(schema.field(t).name()))))?,
                ),
                _ => tools.cloned(),
            };
            out.push(Conversation {
                messages: list,
                tools,
                rendered: None,
            });
        }
    }
    Ok(out)
}

/// Renders the conversations in column `column` of `batches` (a list of message structs per
/// row) with `template`, tokenizes and labels them as
/// [`crate::messages::tokenize_conversations`] does, and writes the output table: the other
/// columns (`tools_column` too, when given: it is read, not consumed), then `input_ids`,
/// `labels` and `length`. `tools` are the tools of a row without a `tools_column` value. Rows
/// are numbered across batches.
///
/// ```
/// use std::sync::Arc;
/// use arrow_array::{cast::AsArray, types::Int32Type, ArrayRef, ListArray, RecordBatch, StringArray, StructArray};
/// use arrow_buffer::OffsetBuffer;
/// use arrow_schema::{DataType, Field, Fields};
/// use sftmask::chat::{ChatTemplate, SpecialTokens};
/// use sftmask::messages::ConversationOptions;
/// // Byte-level BPE without merges: every byte is a token, plus the added token "<e>".
/// let json = r#"{"version": "1.0", "truncation": null, "padding": null,
///   "added_tokens": [{"id": 4, "content": "<e>", "single_word": false, "lstrip": false, "rstrip": false,
///                     "normalized": false, "special": true}], "normalizer": null,
///   "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
///   "post_processor": null, "decoder": null, "model": {"type": "BPE", "dropout": null, "unk_token": null,
///   "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
///   "ignore_merges": false, "vocab": {"U": 0, "A": 1, ":": 2, "x": 3, "<e>": 4}, "merges": []}}"#;
/// let tokenizer: tokenizers::Tokenizer = json.parse().unwrap();
/// let template = ChatTemplate::new("{% for m in messages %}{{ 'U:' if m.role == 'user' else 'A:' }}{{ m.content }}<e>{% endfor %}\
///                                   {% if add_generation_prompt %}A:{% endif %}", SpecialTokens::default()).unwrap();
/// // One row: [{"role": "user", "content": "x"}, {"role": "assistant", "content": "xx"}].
/// let fields = Fields::from(vec![Field::new("role", DataType::Utf8, true), Field::new("content", DataType::Utf8, true)]);
/// let structs = StructArray::new(fields.clone(), vec![
///     Arc::new(StringArray::from(vec!["user", "assistant"])) as ArrayRef,
///     Arc::new(StringArray::from(vec!["x", "xx"])) as ArrayRef], None);
/// let item = Arc::new(Field::new_list_field(DataType::Struct(fields), true));
/// let messages = ListArray::new(item, OffsetBuffer::from_lengths([2]), Arc::new(structs), None);
/// let batch = RecordBatch::try_from_iter([("messages", Arc::new(messages) as ArrayRef)]).unwrap();
/// let out = sftmask::arrow::tokenize_conversations_batches(Ok(&template), &tokenizer, &batch.schema(), &[batch],
///     "messages", None, None, &[], ConversationOptions::default(), 1).unwrap();
/// let table = out.encoded.unwrap();
/// let labels = table.batches[0].column_by_name("labels").unwrap().as_list::<i32>().value(0);
/// assert_eq!(labels.as_primitive::<Int32Type>().values(), &[-100, -100, -100, -100, -100, -100, 3, 3, 4]);
/// ```
///
/// # Errors
/// [`Error::MissingColumn`]/[`Error::ColumnType`] for a missing column or one that is not a
/// list; [`Error::Row`] for a null conversation or message, a value no template can hold, and
/// every row error of [`crate::messages::tokenize_conversations`]; [`Error::Arrow`] for
/// invalid Arrow data or more tokens in a batch than `int32` offsets hold.
#[allow(clippy::too_many_arguments)]
pub fn tokenize_conversations_batches(
    template: std::result::Result<&ChatTemplate, &String>,
    tokenizer: &impl Tokenize,
    schema: &Schema,
    batches: &[RecordBatch],
    column: &str,
    tools_column: Option<&str>,
    tools: Option<&Value>,
    extra: &[(String, Value)],
    options: ConversationOptions,
    threads: usize,
) -> Result<ArrowConversations> {
    let index = column_index(schema, column)?;
    let found = schema.field(index).data_type();
    if !is_list(found) {
        return Err(Error::ColumnType {
            column: column.to_owned(),
            found: found.to_string(),
            expected: "a list of message structs (list<struct<role: string, content: string, ...>>)",
        });
    }
    let tools_index = tools_column.map(|t| column_index(schema, t)).transpose()?;
    let out_schema = output_schema_without(schema, index)?;
    i32::try_from(options.ignore_index).map_err(|_| {
        Error::InvalidArgument(format!(
            "ignore_index {} does not fit the int32 labels column",
            options.ignore_index
        ))
    })?;
    let rows = conversations(schema, batches, index, tools_index, tools)?;
    let done = tokenize_conversations(template, tokenizer, &rows, extra, options, threads)?;
    if !done.fallback.is_empty() {
        return Ok(ArrowConversations {
            encoded: None,
            fallback: done.fallback,
            not_located: done.not_located,
        });
    }
    let tokens = done.input_ids.iter().map(Vec::len).sum();
    let (mut ids, mut labels) = (Vec::with_capacity(tokens), Vec::with_capacity(tokens));
    let mut lengths = Vec::with_capacity(rows.len());
    for (row_ids, row_labels) in done.input_ids.iter().zip(&done.labels) {
        lengths.push(row_ids.len());
        for &id in row_ids {
            ids.push(i32::try_from(id).map_err(|_| {
                Error::InvalidArgument(format!("token id {id} does not fit the int32 input_ids column"))
            })?);
        }
        // Labels are ids or ignore_index, both checked to fit.
        labels.extend(row_labels.iter().map(|&l| l as i32));
    }
    let batches = output_batches(&out_schema, batches, index, &lengths, ids, labels)?;
    Ok(ArrowConversations {
        encoded: Some(ArrowEncoded {
            schema: out_schema,
            batches,
            stats: done.stats,
        }),
        fallback: Vec::new(),
        not_located: done.not_located,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{Int64Array, ListArray, StringArray, StructArray};
    use arrow_buffer::{NullBuffer, OffsetBuffer};
    use arrow_schema::{Field, Fields};

    use super::*;
    use crate::chat::SpecialTokens;

    fn messages(rows: &[Option<&[(&str, &str)]>]) -> ArrayRef {
        let fields = Fields::from(vec![
            Field::new("role", DataType::Utf8, true),
            Field::new("content", DataType::Utf8, true),
        ]);
        let flat: Vec<(&str, &str)> = rows.iter().flatten().flat_map(|r| r.iter().copied()).collect();
        let structs = StructArray::new(
            fields.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(flat.iter().map(|m| m.0))) as ArrayRef,
                Arc::new(StringArray::from_iter_values(flat.iter().map(|m| m.1))) as ArrayRef,
            ],
            None,
        );
        let item = Arc::new(Field::new_list_field(DataType::Struct(fields), true));
        let lengths = rows.iter().map(|r| r.map_or(0, <[_]>::len));
        let nulls = NullBuffer::from(rows.iter().map(Option::is_some).collect::<Vec<_>>());
        Arc::new(ListArray::new(
            item,
            OffsetBuffer::from_lengths(lengths),
            Arc::new(structs),
            Some(nulls),
        ))
    }

    fn run(batches: &[RecordBatch]) -> Result<ArrowConversations> {
        let tokenizer: tokenizers::Tokenizer = crate::test_support::BYTE_TOKENIZER.parse().unwrap();
        let template = ChatTemplate::new(
            "{% for m in messages %}{{ m.role[0] | upper }}:{{ m.content }}{% endfor %}\
             {% if add_generation_prompt %}A:{% endif %}",
            SpecialTokens::default(),
        )
        .unwrap();
        let schema = batches[0].schema();
        tokenize_conversations_batches(
            Ok(&template),
            &tokenizer,
            &schema,
            batches,
            "messages",
            None,
            None,
            &[],
            ConversationOptions::default(),
            2,
        )
    }

    fn batch(ids: Vec<i64>, m: ArrayRef) -> RecordBatch {
        RecordBatch::try_from_iter([("id", Arc::new(Int64Array::from(ids)) as ArrayRef), ("messages", m)]).unwrap()
    }

    #[test]
    fn rows_pass_through_and_are_labelled() {
        let turn: &[(&str, &str)] = &[("user", "x"), ("assistant", "xx")];
        let out = run(&[batch(vec![1, 2], messages(&[Some(turn), Some(turn)]))]).unwrap();
        let table = out.encoded.unwrap();
        let b = &table.batches[0];
        assert_eq!(b.num_columns(), 4);
        assert_eq!(b.column(0).len(), 2);
        // U : x A : x x (one token per byte); the assistant's content is trained.
        let labels = b.column_by_name("labels").unwrap().as_list::<i32>().value(1);
        assert_eq!(
            labels.as_primitive::<Int32Type>().values(),
            &[-100, -100, -100, -100, -100, 4, 4]
        );
    }

    #[test]
    fn a_null_conversation_names_its_row_across_batches() {
        let turn: &[(&str, &str)] = &[("assistant", "x")];
        let first = batch(vec![1, 2], messages(&[Some(turn), Some(turn)]));
        let second = batch(vec![3, 4], messages(&[Some(turn), None]));
        match run(&[first, second]) {
            Err(Error::Row { row, reason }) => assert_eq!((row, reason.contains("null")), (3, true)),
            other => panic!("expected a row error, got {other:?}"),
        }
    }

    #[test]
    fn a_column_that_is_not_a_list_is_a_type_error() {
        let b = RecordBatch::try_from_iter([("messages", Arc::new(StringArray::from(vec!["x"])) as ArrayRef)]).unwrap();
        assert!(matches!(run(&[b]), Err(Error::ColumnType { .. })));
    }
}
