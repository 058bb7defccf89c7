//! Conversations in, exact labels out: render each conversation with its chat template
//! ([`crate::chat`]), tokenize the text ([`crate::engine`]: `add_special_tokens=false`:
//! the template writes BOS itself), and train the tokens whose byte spans overlap the trained
//! assistant messages' regions (the overlap rule of [`crate::labels`]), rows in parallel.
//!
//! The rule: SPEC "Chat-template masking" and docs/masking.md#conversations.

use crate::chat::regions::{is_assistant, replace_fields, SENTINEL};
use crate::chat::{ChatError, ChatTemplate, Value};
use crate::engine::Tokenize;
use crate::error::{Error, Result};
use crate::labels::{fill_labels_by_ends, RowStats};
use crate::options::OnMissing;
use crate::pool;
use crate::regions::TrainOn;
use crate::stats::Stats;

/// Options of [`tokenize_conversations`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConversationOptions {
    /// Every assistant message, or only the final one (a message's own `train` overrides both).
    pub train_on: TrainOn,
    /// The label of tokens that are not trained.
    pub ignore_index: i64,
    /// Keep only the first `max_length` tokens of each row.
    pub max_length: Option<usize>,
    /// A row whose trained turns cannot be located exactly: counted, and an error under
    /// [`OnMissing::Error`]; its labels are all `ignore_index` otherwise (never a guessed mask).
    pub on_missing: OnMissing,
    /// Train the reasoning of an assistant message with its answer (`true`), or mask it: then a
    /// message with `reasoning_content`/`thinking` is trained from where its content starts
    /// (located exactly, see `content_start`, or the row is an error).
    pub train_reasoning: bool,
}

impl Default for ConversationOptions {
    fn default() -> Self {
        ConversationOptions {
            train_on: TrainOn::All,
            ignore_index: -100,
            max_length: None,
            on_missing: OnMissing::Warn,
            train_reasoning: true,
        }
    }
}

/// Where one assistant message sits in a text rendered elsewhere (transformers, for a template
/// the Rust renderer cannot run): its byte range and end-of-turn marker, or why it cannot be
/// located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// Index of the message.
    pub message: usize,
    /// `Ok((start, end, marker))` in bytes of the text, or `Err(reason)`.
    pub span: std::result::Result<(usize, usize, Option<String>), String>,
}

/// One conversation: its messages (a list of message objects) and tools, and optionally its
/// text and regions already rendered by someone else.
#[derive(Debug, Clone, Default)]
pub struct Conversation {
    /// The `messages` list.
    pub messages: Value,
    /// The `tools` list, if any.
    pub tools: Option<Value>,
    /// Text and regions rendered elsewhere; `None`: render with the template.
    pub rendered: Option<(String, Vec<Located>)>,
}

/// What [`tokenize_conversations`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Preprocessed {
    /// Token ids of each row (empty for a row in `fallback`).
    pub input_ids: Vec<Vec<u32>>,
    /// Labels of each row.
    pub labels: Vec<Vec<i64>>,
    /// The call's counts (`rows_not_located`, `turns_without_end_marker`, ...). Rows in
    /// `fallback` are not counted.
    pub stats: Stats,
    /// Rows the Rust renderer cannot render, with why: the caller renders them elsewhere and
    /// passes them back as [`Conversation::rendered`].
    pub fallback: Vec<(usize, String)>,
    /// Rows whose trained turns cannot be located exactly, with why.
    pub not_located: Vec<(usize, String)>,
}

enum RowOut {
    Done {
        ids: Vec<u32>,
        labels: Vec<i64>,
        stats: RowStats,
        unmarked: u64,
        not_located: Option<String>,
    },
    Fallback(String),
}

/// Which messages are trained: assistant messages (all, or the last under [`TrainOn::Last`]),
/// unless a message's `"train"` says otherwise (a user, system or tool message with `"train":
/// true` trains its content).
fn trained_messages(messages: &[Value], train_on: TrainOn) -> std::result::Result<Vec<bool>, String> {
    let role = |m: &Value| m.get_attr("role").ok().and_then(|r| r.as_str().map(str::to_owned));
    let last = messages.iter().rposition(|m| role(m).as_deref() == Some("assistant"));
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let is_assistant = role(m).as_deref() == Some("assistant");
            let default = is_assistant && (train_on == TrainOn::All || Some(i) == last);
            let flag = m.get_attr("train").unwrap_or_default();
            let train = if flag.is_undefined() || flag.is_none() {
                default
            } else if let Some(b) = bool_of(&flag) {
                b
            } else {
                return Err(format!("message {i}: \"train\" must be true or false, got {flag}"));
            };
            Ok(train)
        })
        .collect()
}

fn bool_of(v: &Value) -> Option<bool> {
    (v.kind() == minijinja::value::ValueKind::Bool).then(|| v.is_true())
}

/// Where the content of assistant message `i` starts in the rendering of `items[..=i]`, found
/// exactly: the message is rendered once more with its content replaced by a sentinel, which must
/// occur once, and putting the content back in place of the sentinel must give the real rendering
/// byte for byte. `None` when the template treats the content in a way this cannot see through
/// (it parses or transforms it), or the content is not a string.
fn content_start(
    template: &ChatTemplate,
    items: &[Value],
    i: usize,
    tools: Option<&Value>,
    extra: &[(String, Value)],
) -> Option<usize> {
    let message = items.get(i)?;
    let content = message.get_attr("content").ok()?;
    let content = content.as_str()?.to_owned();
    let mut probe = items[..=i].to_vec();
    probe[i] = replace_fields(message, &["content"], SENTINEL)?;
    let with_sentinel = template.render(&Value::from(probe), tools, extra, false).ok()?;
    let real = template
        .render(&Value::from(items[..=i].to_vec()), tools, extra, false)
        .ok()?;
    let at = with_sentinel.find(SENTINEL)?;
    let once = !with_sentinel[at + SENTINEL.len()..].contains(SENTINEL);
    let same = with_sentinel.len() - SENTINEL.len() + content.len() == real.len()
        && real.starts_with(&with_sentinel[..at])
        && real[at..].starts_with(content.as_str())
        && real[at + content.len()..] == with_sentinel[at + SENTINEL.len()..];
    (once && same).then_some(at)
}

/// The bytes of the content of message `i` (not an assistant message) in the full rendering
/// `full`: located by [`content_start`] in the rendering of `items[..=i]`, which must be a prefix
/// of `full`; `None` when either check fails (never a guessed range).
fn content_span(
    template: &ChatTemplate,
    items: &[Value],
    i: usize,
    tools: Option<&Value>,
    extra: &[(String, Value)],
    full: &str,
) -> Option<(usize, usize)> {
    let content = items.get(i)?.get_attr("content").ok()?;
    let len = content.as_str()?.len();
    let prefix = template
        .render(&Value::from(items[..=i].to_vec()), tools, extra, false)
        .ok()?;
    if !full.starts_with(&prefix) {
        return None;
    }
    let start = content_start(template, items, i, tools, extra)?;
    Some((start, start + len))
}

fn has_reasoning(message: &Value) -> bool {
    ["reasoning_content", "thinking"].iter().any(|k| {
        message
            .get_attr(k)
            .ok()
            .and_then(|v| v.as_str().map(|s| !s.is_empty()))
            .unwrap_or(false)
    })
}

/// Renders, tokenizes and labels each conversation, using up to `threads` threads. `template`
/// is `Err(reason)` for a template the Rust renderer cannot compile (every row not already
/// rendered is then a fallback row). `extra` are the template kwargs (`enable_thinking`, ...).
///
/// ```
/// use sftmask::chat::{ChatTemplate, SpecialTokens, Value};
/// use sftmask::messages::{tokenize_conversations, Conversation, ConversationOptions};
/// // Byte-level BPE without merges: every byte is a token, plus the added token "<e>".
/// let json = r#"{"version": "1.0", "truncation": null, "padding": null,
///   "added_tokens": [{"id": 4, "content": "<e>", "single_word": false, "lstrip": false, "rstrip": false,
///                     "normalized": false, "special": true}], "normalizer": null,
///   "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
///   "post_processor": null, "decoder": null, "model": {"type": "BPE", "dropout": null, "unk_token": null,
///   "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
///   "ignore_merges": false, "vocab": {"U": 0, "A": 1, ":": 2, "x": 3, "<e>": 4}, "merges": []}}"#;
/// let tokenizer: tokenizers::Tokenizer = json.parse().unwrap();
/// let source = "{% for m in messages %}{{ 'U:' if m.role == 'user' else 'A:' }}{{ m.content }}<e>{% endfor %}\
///               {% if add_generation_prompt %}A:{% endif %}";
/// let template = ChatTemplate::new(source, SpecialTokens::default()).map_err(|e| e.to_string());
/// let messages: Value = serde_json::from_str(
///     r#"[{"role": "user", "content": "x"}, {"role": "assistant", "content": "xx"}]"#).unwrap();
/// let rows = [Conversation { messages, ..Default::default() }];
/// let out = tokenize_conversations(template.as_ref(), &tokenizer, &rows, &[], ConversationOptions::default(), 1).unwrap();
/// // U : x <e> A : x x <e>: the answer and its end-of-turn token are trained.
/// assert_eq!(out.input_ids[0], vec![0, 2, 3, 4, 1, 2, 3, 3, 4]);
/// assert_eq!(out.labels[0], vec![-100, -100, -100, -100, -100, -100, 3, 3, 4]);
/// assert_eq!(out.stats.turns_without_end_marker, 0);
/// ```
///
/// # Errors
/// [`Error::Row`] naming the first row that fails: a template that raises (with its message),
/// a render past its limits, a malformed `train` flag, a text the tokenizer rejects, and, under
/// [`OnMissing::Error`], a row whose trained turns cannot be located.
pub fn tokenize_conversations(
    template: std::result::Result<&ChatTemplate, &String>,
    tokenizer: &impl Tokenize,
    rows: &[Conversation],
    extra: &[(String, Value)],
    options: ConversationOptions,
    threads: usize,
) -> Result<Preprocessed> {
    // Every added token can end a turn (`<|im_end|>`, `<|eot_id|>`, `</s>`).
    let added: Vec<String> = tokenizer
        .tokenizer()
        .get_added_tokens_decoder()
        .into_values()
        .map(|t| t.content)
        .filter(|t| !t.is_empty())
        .collect();
    let markers: Vec<&str> = added.iter().map(String::as_str).collect();
    let row_err = |row: usize, reason: String| Error::Row { row, reason };

    let work = |(): &mut (), (r, conv): (usize, &Conversation)| -> Result<RowOut> {
        let items: Vec<Value> = match conv.messages.try_iter() {
            Ok(it) => it.collect(),
            Err(_) => return Err(row_err(r, "messages must be a list of message objects".into())),
        };
        let trained = trained_messages(&items, options.train_on).map_err(|e| row_err(r, e))?;
        let mut not_located = None;
        let (text, mut spans) = match &conv.rendered {
            Some((text, located)) => {
                if !options.train_reasoning && items.iter().any(has_reasoning) {
                    return Err(row_err(
                        r,
                        "reasoning='mask' is not supported yet for conversations rendered by transformers \
                         (the Rust renderer cannot render this template)"
                            .into(),
                    ));
                }
                if let Some(i) = (0..items.len()).find(|&i| trained[i] && !is_assistant(&items[i])) {
                    return Err(row_err(
                        r,
                        format!(
                            "message {i}: \"train\": true on a message that is not the assistant's is not \
                             supported yet for conversations rendered by transformers (the Rust renderer cannot \
                             render this template)"
                        ),
                    ));
                }
                let mut spans = Vec::new();
                for (i, _) in trained.iter().enumerate().filter(|(_, t)| **t) {
                    match located.iter().find(|l| l.message == i).map(|l| &l.span) {
                        Some(Ok((s, e, m))) => spans.push((*s, *e, m.is_some())),
                        Some(Err(reason)) => {
                            not_located = Some(format!("message {i}: {reason}"));
                            break;
                        }
                        None => {
                            not_located = Some(format!("message {i}: no region was given for it"));
                            break;
                        }
                    }
                }
                (text.clone(), spans)
            }
            None => {
                let template = match template {
                    Ok(t) => t,
                    Err(reason) => return Ok(RowOut::Fallback(reason.clone())),
                };
                let select = |i: usize, _: &Value| trained.get(i).copied().unwrap_or(false);
                match template.render_with_regions_where(&conv.messages, conv.tools.as_ref(), extra, &markers, select) {
                    Ok((text, regions)) => {
                        let mut spans = Vec::with_capacity(regions.len());
                        for g in regions {
                            let mut start = g.start;
                            if !options.train_reasoning && has_reasoning(&items[g.message]) {
                                // The content's start in the turn rendered last, mapped into the
                                // full rendering (where history may have dropped a part before it).
                                let at = content_start(template, &items, g.message, conv.tools.as_ref(), extra)
                                    .and_then(|at| g.from_last(at));
                                match at {
                                    Some(at) => start = at,
                                    _ => {
                                        return Err(row_err(
                                            r,
                                            format!(
                                                "reasoning='mask': where the answer of message {} starts after its \
                                                 reasoning cannot be located exactly with this template (not \
                                                 supported yet); use reasoning='train'",
                                                g.message
                                            ),
                                        ))
                                    }
                                }
                            }
                            spans.push((start, g.end, g.marker.is_some()));
                        }
                        // Other messages flagged `"train": true`: their content, exactly.
                        for i in (0..items.len()).filter(|&i| trained[i] && !is_assistant(&items[i])) {
                            match content_span(template, &items, i, conv.tools.as_ref(), extra, &text) {
                                // Not a turn of the model's: no end-of-turn marker to count.
                                Some((s, e)) => spans.push((s, e, true)),
                                None => {
                                    not_located = Some(format!(
                                        "message {i} (\"train\": true): its content cannot be located exactly \
                                         in the rendering (the template transforms it, or renders it differently \
                                         once later messages follow)"
                                    ));
                                    break;
                                }
                            }
                        }
                        spans.sort_unstable();
                        (text, spans)
                    }
                    Err(e @ ChatError::NotLocated { .. }) => {
                        not_located = Some(e.to_string());
                        let text = template
                            .render(&conv.messages, conv.tools.as_ref(), extra, false)
                            .map_err(|e| row_err(r, e.to_string()))?;
                        (text, Vec::new())
                    }
                    Err(ChatError::Unsupported(reason)) => return Ok(RowOut::Fallback(reason)),
                    Err(e) => return Err(row_err(r, e.to_string())),
                }
            }
        };
        if not_located.is_some() {
            spans.clear();
        }
        // Token i spans from where token i-1 ends to where it ends (see `encode_with_ends`).
        let (mut ids, mut ends) = tokenizer
            .encode_with_ends(text.as_str(), false)
            .map_err(|e| row_err(r, format!("the tokenizer failed: {e}")))?;
        let truncated = options.max_length.is_some_and(|n| ids.len() > n);
        if let Some(n) = options.max_length {
            ids.truncate(n);
            ends.truncate(n);
        }
        spans.retain(|(s, e, _)| e > s);
        let regions: Vec<(u32, u32)> = spans
            .iter()
            .map(|&(s, e, _)| {
                (
                    u32::try_from(s).unwrap_or(u32::MAX),
                    u32::try_from(e).unwrap_or(u32::MAX),
                )
            })
            .collect();
        let wide: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
        let mut labels = vec![options.ignore_index; ids.len()];
        let seen = fill_labels_by_ends(&wide, &ends, &regions, options.ignore_index, &mut labels);
        let stats = RowStats {
            found: true,
            instruction_found: true,
            truncated,
            ..seen
        };
        let unmarked = spans.iter().filter(|(_, _, marked)| !marked).count() as u64;
        Ok(RowOut::Done {
            ids,
            labels,
            stats,
            unmarked,
            not_located,
        })
    };
    let results = pool::map_rows(rows.iter().collect(), threads, true, || (), work);

    let mut out = Preprocessed {
        input_ids: Vec::with_capacity(rows.len()),
        labels: Vec::with_capacity(rows.len()),
        ..Preprocessed::default()
    };
    for (r, result) in results.into_iter().enumerate() {
        match result? {
            RowOut::Done {
                ids,
                labels,
                stats,
                unmarked,
                not_located,
            } => {
                if let Some(reason) = not_located {
                    if options.on_missing == OnMissing::Error {
                        return Err(row_err(
                            r,
                            format!("{reason} (on_missing='error'; the row is never given a guessed mask)"),
                        ));
                    }
                    out.stats.rows_not_located += 1;
                    out.stats.not_located_rows.push(r);
                    out.not_located.push((r, reason));
                }
                out.stats.add_row(r, &stats, false);
                out.stats.turns_without_end_marker += unmarked;
                if unmarked > 0 {
                    out.stats.turns_without_end_marker_rows.push(r);
                }
                out.input_ids.push(ids);
                out.labels.push(labels);
            }
            RowOut::Fallback(reason) => {
                out.fallback.push((r, reason));
                out.input_ids.push(Vec::new());
                out.labels.push(Vec::new());
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use tokenizers::Tokenizer;

    use super::*;
    use crate::chat::SpecialTokens;

    const JSON: &str = r#"{"version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [{"id": 5, "content": "<e>", "single_word": false, "lstrip": false, "rstrip": false,
                          "normalized": false, "special": true}],
        "normalizer": null, "post_processor": null, "decoder": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
          "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
          "vocab": {"U": 0, "A": 1, ":": 2, "x": 3, "y": 4, "<e>": 5}, "merges": []}}"#;
    const SOURCE: &str = "{% for m in messages %}{% if m.role == 'boom' %}{{ raise_exception('no boom') }}{% endif %}\
        {{ 'U:' if m.role == 'user' else 'A:' }}{{ m.content }}{% if m.role == 'assistant' %}<e>{% endif %}{% endfor %}\
        {% if add_generation_prompt %}A:{% endif %}";

    fn conv(json: &str) -> Conversation {
        Conversation {
            messages: serde_json::from_str(json).unwrap(),
            ..Conversation::default()
        }
    }

    fn run(rows: &[Conversation], options: ConversationOptions) -> Result<Preprocessed> {
        let tok: Tokenizer = JSON.parse().unwrap();
        let t = ChatTemplate::new(SOURCE, SpecialTokens::default()).unwrap();
        tokenize_conversations(Ok(&t), &tok, rows, &[], options, 2)
    }

    const TWO_TURNS: &str = r#"[{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"},
                                {"role": "user", "content": "x"}, {"role": "assistant", "content": "yy"}]"#;

    #[test]
    fn train_on_last_and_flags() {
        // U : x A : y <e> U : x A : y y <e>
        let all = run(&[conv(TWO_TURNS)], ConversationOptions::default()).unwrap();
        assert_eq!(
            all.labels[0],
            [-100, -100, -100, -100, -100, 4, 5, -100, -100, -100, -100, -100, 4, 4, 5]
        );
        let last = ConversationOptions {
            train_on: TrainOn::Last,
            ..ConversationOptions::default()
        };
        let out = run(&[conv(TWO_TURNS)], last).unwrap();
        assert_eq!(out.stats.trained_tokens, 3);
        let flagged = TWO_TURNS.replacen(r#""content": "y"}"#, r#""content": "y", "train": false}"#, 1);
        assert_eq!(
            run(&[conv(&flagged)], ConversationOptions::default())
                .unwrap()
                .stats
                .trained_tokens,
            3
        );
        // A user message flagged trains its content (`x`, id 3), nothing of its turn around it.
        let user = TWO_TURNS.replacen(r#""content": "x"}"#, r#""content": "x", "train": true}"#, 1);
        let out = run(&[conv(&user)], ConversationOptions::default()).unwrap();
        assert_eq!(
            out.labels[0],
            [-100, -100, 3, -100, -100, 4, 5, -100, -100, -100, -100, -100, 4, 4, 5]
        );
    }

    #[test]
    fn raised_names_the_row_and_truncation_is_counted() {
        let rows = [conv(TWO_TURNS), conv(r#"[{"role": "boom", "content": "x"}]"#)];
        let err = run(&rows, ConversationOptions::default()).unwrap_err();
        assert_eq!(err.row(), Some(1));
        assert!(err.to_string().contains("no boom"), "{err}");
        let cut = ConversationOptions {
            max_length: Some(6),
            ..ConversationOptions::default()
        };
        let out = run(&[conv(TWO_TURNS), conv("[]")], cut).unwrap();
        assert_eq!(out.stats.rows_truncated, 1);
        assert_eq!(out.labels[0], [-100, -100, -100, -100, -100, 4]);
        assert_eq!(out.input_ids[1], Vec::<u32>::new());
    }

    #[test]
    fn rendered_rows_and_not_located() {
        let mut row = conv(TWO_TURNS);
        row.rendered = Some((
            "U:xA:y<e>U:xA:yy<e>".into(),
            vec![
                Located {
                    message: 1,
                    span: Ok((5, 9, Some("<e>".into()))),
                },
                Located {
                    message: 3,
                    span: Err("moved".into()),
                },
            ],
        ));
        let out = run(&[row.clone()], ConversationOptions::default()).unwrap();
        assert_eq!((out.stats.rows_not_located, out.stats.trained_tokens), (1, 0));
        assert_eq!(out.not_located[0].0, 0);
        let strict = ConversationOptions {
            on_missing: OnMissing::Error,
            ..ConversationOptions::default()
        };
        assert_eq!(run(&[conv(TWO_TURNS), row], strict).unwrap_err().row(), Some(1));
    }
}
