//! `sftmask._core.ChatTemplate` (a chat template compiled for the Rust renderer) and
//! `tokenize_conversations`, the Rust half of `sftmask.tokenize_and_mask` on conversations.

use std::collections::HashMap;

use pyo3::prelude::*;
use pyo3::types::PyList;

use super::convert::{id_and_label_lists, plain_value, threads, Count};
use super::encoder::PyEncoder;
use super::errors::{core, detach_guarded, guarded, option_err, row_type_err};
use super::stats::PyStats;
use crate::chat::{ChatError, ChatTemplate, SpecialTokens, Value};
use crate::messages::{Conversation, ConversationOptions, Located};

/// A Hugging Face chat template compiled for the Rust renderer (minijinja), with the special
/// tokens it is rendered with. A template the renderer cannot compile is still an object:
/// ``unsupported`` says why, and every render reports ``"unsupported"`` (the caller falls back
/// to transformers).
///
/// >>> t = ChatTemplate("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}")
/// >>> t.render('[{"messages": [{"role": "user", "content": "hi"}]}]')
/// [('ok', '<user>hi')]
/// >>> ChatTemplate("{% for %}").unsupported is not None
/// True
#[pyclass(name = "ChatTemplate", module = "sftmask._core", frozen)]
pub struct PyChatTemplate {
    inner: Result<ChatTemplate, String>,
}

/// One conversation's result in `ChatTemplate.regions`: `(kind, text, regions)`, regions as
/// `(message, start, end, marker)` byte offsets into the UTF-8 text.
type LocatedRow = (String, String, Vec<(usize, usize, usize, Option<String>)>);

/// A `rendered` entry from Python: the text and, per assistant message, `(message, (start, end)
/// | None, marker, reason)` (bytes; `None` with the reason when it cannot be located).
type RenderedRow = (
    String,
    Vec<(usize, Option<(usize, usize)>, Option<String>, Option<String>)>,
);

/// What `tokenize_conversations` returns: `(input_ids, labels, stats, fallback, not_located)`.
type Tokenized<'py> = (
    Bound<'py, PyList>,
    Bound<'py, PyList>,
    PyStats,
    Vec<(usize, String)>,
    Vec<(usize, String)>,
);

fn kind(e: &ChatError) -> &'static str {
    match e {
        ChatError::Raised(_) => "raised",
        ChatError::Limit(_) => "limit",
        ChatError::NotLocated { .. } => "not_located",
        _ => "unsupported",
    }
}

/// `{"messages": [...], "tools": [...] | null}` -> (messages, tools); parsed into minijinja
/// values directly, which keep the keys' order as Python dicts do.
fn conversation(v: &Value) -> (Value, Option<Value>) {
    let messages = v.get_attr("messages").unwrap_or_default();
    let tools = v.get_attr("tools").ok().filter(|t| !t.is_undefined() && !t.is_none());
    (messages, tools)
}

fn parse_list(json: &str, what: &str) -> PyResult<Vec<Value>> {
    serde_json::from_str(json).map_err(|e| option_err(format!("{what}: {e}")))
}

/// A JSON value (the tools given for every row).
pub(crate) fn parse_value(json: &str) -> PyResult<Value> {
    serde_json::from_str(json).map_err(|e| option_err(format!("tools_json: {e}")))
}

/// A JSON object as its (key, value) pairs, in order (the template kwargs).
pub(crate) fn parse_kwargs(json: &str) -> PyResult<Vec<(String, Value)>> {
    let v: Value = serde_json::from_str(json).map_err(|e| option_err(format!("kwargs_json: {e}")))?;
    let keys = v
        .try_iter()
        .map_err(|_| option_err("kwargs_json must be a JSON object"))?;
    Ok(keys
        .map(|k| {
            let value = v.get_item(&k).unwrap_or_default();
            (k.as_str().unwrap_or_default().to_owned(), value)
        })
        .collect())
}

/// The options of a conversations call, parsed once.
pub(crate) fn conversation_options(
    train_on: &str,
    ignore_index: i64,
    max_length: Option<Count>,
    on_missing: &str,
    reasoning: &str,
) -> PyResult<ConversationOptions> {
    let train_reasoning = match reasoning {
        "train" => true,
        "mask" => false,
        other => {
            return Err(option_err(format!(
                "reasoning must be 'train' or 'mask', got {other:?}"
            )))
        }
    };
    Ok(ConversationOptions {
        train_on: core(train_on.parse())?,
        ignore_index,
        max_length: max_length.map(|c| c.0),
        on_missing: core(on_missing.parse())?,
        train_reasoning,
    })
}

impl PyChatTemplate {
    /// The compiled template, or why the Rust renderer cannot render it.
    pub(crate) fn template(&self) -> Result<&ChatTemplate, &String> {
        self.inner.as_ref()
    }

    fn compiled(&self) -> Result<&ChatTemplate, ChatError> {
        self.inner.as_ref().map_err(|e| ChatError::Unsupported(e.clone()))
    }
}

#[pymethods]
impl PyChatTemplate {
    #[new]
    #[pyo3(signature = (source, *, bos_token = None, eos_token = None, unk_token = None, pad_token = None, prefix_plan = true))]
    fn new(
        py: Python<'_>,
        source: &str,
        bos_token: Option<String>,
        eos_token: Option<String>,
        unk_token: Option<String>,
        pad_token: Option<String>,
        prefix_plan: bool,
    ) -> PyResult<Self> {
        let special = SpecialTokens {
            bos: bos_token,
            eos: eos_token,
            unk: unk_token,
            pad: pad_token,
        };
        let compile = || {
            let t = ChatTemplate::new(source, special)?;
            Ok(if prefix_plan { t } else { t.rendering_prefixes_in_full() })
        };
        let inner = detach_guarded(py, compile)?.map_err(|e| match e {
            ChatError::Unsupported(reason) => reason,
            other => other.to_string(),
        });
        Ok(PyChatTemplate { inner })
    }

    /// Why the Rust renderer cannot compile this template (``None`` when it can).
    #[getter]
    fn unsupported(&self) -> Option<String> {
        self.inner.as_ref().err().cloned()
    }

    /// Renders each conversation of ``conversations_json`` (a JSON list of ``{"messages": [...],
    /// "tools": [...] | null}``) without the GIL. One ``(kind, text)`` per conversation:
    /// ``("ok", rendered)``, ``("raised", message)``, ``("unsupported", reason)`` or
    /// ``("limit", reason)``.
    #[pyo3(signature = (conversations_json, *, add_generation_prompt = false, kwargs_json = "{}"))]
    fn render(
        &self,
        py: Python<'_>,
        conversations_json: &str,
        add_generation_prompt: bool,
        kwargs_json: &str,
    ) -> PyResult<Vec<(String, String)>> {
        let conversations = parse_list(conversations_json, "conversations_json")?;
        let kwargs = parse_kwargs(kwargs_json)?;
        detach_guarded(py, || {
            conversations
                .iter()
                .map(|conv| {
                    let (messages, tools) = conversation(conv);
                    let result = self
                        .compiled()
                        .and_then(|t| t.render(&messages, tools.as_ref(), &kwargs, add_generation_prompt));
                    match result {
                        Ok(text) => ("ok".to_owned(), text),
                        Err(ChatError::Raised(m)) => ("raised".to_owned(), m),
                        Err(e) => (kind(&e).to_owned(), e.to_string()),
                    }
                })
                .collect()
        })
    }

    /// Every prefix render of one conversation (``{"messages": [...], "tools": ...}`` as JSON) as
    /// locating its turns makes them: ``(k, add_generation_prompt, text, planned)`` for ``k``
    /// from 1 to all messages, ``planned`` when the text came from one traced run of the whole
    /// conversation rather than a render of the prefix. Each text must equal the render of the
    /// first ``k`` messages; ``prefix_renders_in_full`` says why a template has no plan.
    ///
    /// >>> t = ChatTemplate("{% for m in messages %}[{{ m.content }}]{% endfor %}")
    /// >>> t.prefix_renders('{"messages": [{"role": "user", "content": "a"}]}')
    /// [(1, False, '[a]', True), (1, True, '[a]', True)]
    #[pyo3(signature = (conversation_json, *, kwargs_json = "{}"))]
    fn prefix_renders(
        &self,
        py: Python<'_>,
        conversation_json: &str,
        kwargs_json: &str,
    ) -> PyResult<Vec<(usize, bool, String, bool)>> {
        let conv: Value =
            serde_json::from_str(conversation_json).map_err(|e| option_err(format!("conversation_json: {e}")))?;
        let kwargs = parse_kwargs(kwargs_json)?;
        let (messages, tools) = conversation(&conv);
        let renders = detach_guarded(py, || {
            self.compiled()
                .and_then(|t| t.prefix_renders(&messages, tools.as_ref(), &kwargs))
                .map_err(|e| e.to_string())
        })?;
        Ok(renders
            .map_err(option_err)?
            .into_iter()
            .map(|r| (r.messages, r.add_generation_prompt, r.text, r.planned))
            .collect())
    }

    /// Why this template's prefix renders are made in full, not from one traced run (``None``
    /// when they are not, or when the Rust renderer cannot compile the template).
    #[getter]
    fn prefix_renders_in_full(&self) -> Option<String> {
        self.inner.as_ref().ok()?.prefix_renders_in_full().map(str::to_owned)
    }

    /// Renders each conversation like ``render`` (without a generation prompt) and locates its
    /// assistant messages. ``kind`` is ``ok`` or an error kind (``raised``, ``unsupported``,
    /// ``limit``, ``not_located``), then ``text`` is the message. ``special_tokens`` tell which
    /// end of turn is a marker.
    #[pyo3(signature = (conversations_json, special_tokens, *, kwargs_json = "{}"))]
    fn regions(
        &self,
        py: Python<'_>,
        conversations_json: &str,
        special_tokens: Vec<String>,
        kwargs_json: &str,
    ) -> PyResult<Vec<LocatedRow>> {
        let conversations = parse_list(conversations_json, "conversations_json")?;
        let kwargs = parse_kwargs(kwargs_json)?;
        let tokens: Vec<&str> = special_tokens.iter().map(String::as_str).collect();
        detach_guarded(py, || {
            conversations
                .iter()
                .map(|conv| {
                    let (messages, tools) = conversation(conv);
                    let result = self
                        .compiled()
                        .and_then(|t| t.render_with_regions(&messages, tools.as_ref(), &kwargs, &tokens));
                    match result {
                        Ok((text, regions)) => (
                            "ok".to_owned(),
                            text,
                            regions
                                .into_iter()
                                .map(|r| (r.message, r.start, r.end, r.marker))
                                .collect(),
                        ),
                        Err(e) => (kind(&e).to_owned(), e.to_string(), Vec::new()),
                    }
                })
                .collect()
        })
    }
}

/// Renders (with ``template``), tokenizes (with ``encoder``, no special tokens added) and labels
/// each conversation of ``rows`` (JSON texts of ``{"messages": [...], "tools": ...}``, or
/// ``(messages, tools)`` tuples of plain Python data), in parallel and without the GIL. ``rendered`` maps a row to a text and regions rendered elsewhere
/// (the fallback). Returns ``(input_ids, labels, stats, fallback, not_located)``: ``fallback``
/// lists ``(row, reason)`` for rows the Rust renderer cannot render (their ids are empty).
///
/// >>> t = ChatTemplate("{% for m in messages %}{{ m.content }}<|im_end|>{% endfor %}")
/// >>> ids, labels, stats, fallback, bad = tokenize_conversations(
/// ...     t, enc, ['{"messages": [{"role": "assistant", "content": "Hi"}]}'])
/// >>> stats.trained_tokens == len(ids[0]), fallback, bad
/// (True, [], [])
#[pyfunction]
#[pyo3(signature = (template, encoder, rows, *, rendered = None, kwargs_json = "{}", train_on = "all",
                    ignore_index = -100, max_length = None, on_missing = "warn", reasoning = "train", num_threads = None),
       text_signature = "(template, encoder, rows, *, rendered=None, kwargs_json='{}', train_on='all', ignore_index=-100, max_length=None, on_missing='warn', reasoning='train', num_threads=None)")]
#[allow(clippy::too_many_arguments)]
pub(crate) fn tokenize_conversations<'py>(
    py: Python<'py>,
    template: &PyChatTemplate,
    encoder: &PyEncoder,
    rows: Bound<'py, PyList>,
    rendered: Option<HashMap<usize, RenderedRow>>,
    kwargs_json: &str,
    train_on: &str,
    ignore_index: i64,
    max_length: Option<Count>,
    on_missing: &str,
    reasoning: &str,
    num_threads: Option<Count>,
) -> PyResult<Tokenized<'py>> {
    let options = conversation_options(train_on, ignore_index, max_length, on_missing, reasoning)?;
    let kwargs = parse_kwargs(kwargs_json)?;
    let threads = threads(num_threads);
    let mut rendered = rendered.unwrap_or_default();
    let tokenizer = &*encoder.inner;
    // A row is the JSON text of `{"messages", "tools"}`, or a `(messages, tools)` tuple read
    // straight into template values (no JSON text at all: encoding it is serial Python work);
    // a tuple that is not plain data goes through `json.dumps`, as a text would have.
    let mut items = Vec::with_capacity(rows.len());
    for (r, row) in rows.iter().enumerate() {
        if let Ok(text) = row.cast::<pyo3::types::PyString>() {
            items.push(Err(text.to_cow()?.into_owned()));
            continue;
        }
        let (messages, tools) = row
            .extract::<(Bound<'py, PyAny>, Bound<'py, PyAny>)>()
            .map_err(|_| row_type_err(r, "a row must be a JSON text or a (messages, tools) tuple"))?;
        match (plain_value(&messages, 0), plain_value(&tools, 0)) {
            (Some(messages), Some(tools)) => items.push(Ok(Conversation {
                messages,
                tools: (!tools.is_none()).then_some(tools),
                rendered: None,
            })),
            _ => {
                let pair = pyo3::types::PyDict::new(py);
                pair.set_item("messages", &messages)?;
                pair.set_item("tools", &tools)?;
                let kwargs = pyo3::types::PyDict::new(py);
                kwargs.set_item("ensure_ascii", false)?;
                kwargs.set_item("allow_nan", false)?;
                let text = py
                    .import("json")?
                    .call_method("dumps", (pair,), Some(&kwargs))
                    .map_err(|e| {
                        row_type_err(
                            r,
                            format!(
                                "the conversation is not plain data (JSON-serializable): {}",
                                e.value(py)
                            ),
                        )
                    })?;
                items.push(Err(text.extract::<String>()?));
            }
        }
    }
    let out = detach_guarded(py, move || {
        let parsed = crate::pool::map_rows(
            items,
            threads,
            true,
            || (),
            |(), (r, item): (usize, Result<Conversation, String>)| {
                let json = match item {
                    Ok(conv) => return Ok(conv),
                    Err(json) => json,
                };
                let v: Value = serde_json::from_str(&json).map_err(|e| crate::Error::Row {
                    row: r,
                    reason: format!("not a JSON conversation: {e}"),
                })?;
                let (messages, tools) = conversation(&v);
                Ok(Conversation {
                    messages,
                    tools,
                    rendered: None,
                })
            },
        );
        let mut convs = parsed.into_iter().collect::<crate::Result<Vec<Conversation>>>()?;
        for (r, conv) in convs.iter_mut().enumerate() {
            if let Some((text, located)) = rendered.remove(&r) {
                let located = located
                    .into_iter()
                    .map(|(message, span, marker, reason)| Located {
                        message,
                        span: span
                            .map(|(s, e)| (s, e, marker))
                            .ok_or_else(|| reason.unwrap_or_else(|| "not located".into())),
                    })
                    .collect();
                conv.rendered = Some((text, located));
            }
        }
        crate::messages::tokenize_conversations(template.template(), tokenizer, &convs, &kwargs, options, threads)
    })?;
    let out = core(out)?;
    let (input_ids, labels) = id_and_label_lists(py, &out.input_ids, &out.labels)?;
    Ok((input_ids, labels, out.stats.into(), out.fallback, out.not_located))
}

/// What `locate_regions` returns per assistant message: `(message, (start, end) | None, marker,
/// reason)`, bytes of the UTF-8 text.
type LocatedMessage = (usize, Option<(usize, usize)>, Option<String>, Option<String>);

/// Locates every assistant message of ``messages_json`` (a JSON list of messages) in ``full``,
/// its rendering by another renderer, by the same rule as the Rust renderer's rows
/// (``sftmask::chat::locate_regions``), with ``render(messages_json, add_generation_prompt) ->
/// str`` rendering the prefixes and probes the rule asks for. The transformers fallback uses it,
/// so a row one renderer cannot render is located as exactly as the others. A message no rule
/// locates, or a render that raises, gives ``(message, None, None, reason)`` for every assistant
/// message (the row is not located).
///
/// >>> def render(messages_json, agp):
/// ...     text = "".join(f"<{m['role']}>{m['content']}|" for m in json.loads(messages_json))
/// ...     return text + ("<assistant>" if agp else "")
/// >>> import json
/// >>> m = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
/// >>> locate_regions(render(json.dumps(m), False), json.dumps(m), ["|"], render)
/// [(1, (20, 26), '|', None)]
#[pyfunction]
pub(crate) fn locate_regions(
    full: &str,
    messages_json: &str,
    special_tokens: Vec<String>,
    render: Bound<'_, PyAny>,
) -> PyResult<Vec<LocatedMessage>> {
    let items = parse_list(messages_json, "messages_json")?;
    let tokens: Vec<&str> = special_tokens.iter().map(String::as_str).collect();
    // A prefix the callback cannot render leaves that message not located, as in Rust.
    let callback = |m: &[Value], agp: bool| -> Result<String, ChatError> {
        let json = serde_json::to_string(m).map_err(|e| ChatError::Unsupported(e.to_string()))?;
        render
            .call1((json, agp))
            .and_then(|t| t.extract::<String>())
            .map_err(|e| ChatError::Unsupported(e.to_string()))
    };
    let located = guarded(|| {
        Ok(crate::chat::locate_regions(
            full,
            &items,
            &tokens,
            |_, _| true,
            callback,
        ))
    })?;
    let assistants = items
        .iter()
        .enumerate()
        .filter(|(_, m)| crate::chat::regions::is_assistant(m))
        .map(|(i, _)| i);
    Ok(match located {
        Ok(regions) => regions
            .into_iter()
            .map(|g| (g.message, Some((g.start, g.end)), g.marker, None))
            .collect(),
        Err(e) => {
            let reason = e.to_string();
            assistants.map(|i| (i, None, None, Some(reason.clone()))).collect()
        }
    })
}
