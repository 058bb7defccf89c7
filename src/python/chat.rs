//! Temporary test hooks for the chat renderer (`tests/test_chat_render.py`,
//! `tests/test_chat_regions.py`): `render_chat` and `chat_regions`, until the chat API gets its
//! own Python types.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::chat::{ChatError, ChatTemplate, SpecialTokens, Value};

/// Renders each conversation of `conversations_json` (a JSON list of
/// `{"messages": [...], "tools": [...] | null}`) with `template`, in Rust, without the GIL.
/// Returns one `(kind, text)` per conversation: `("ok", rendered)`, `("raised", message)`,
/// `("unsupported", reason)` or `("limit", reason)`.
///
/// >>> render_chat("{{ messages[0].content }}", '[{"messages": [{"content": "hi"}]}]')
/// [('ok', 'hi')]
#[pyfunction]
#[pyo3(signature = (template, conversations_json, bos = None, eos = None, add_generation_prompt = false, kwargs_json = "{}"))]
pub(crate) fn render_chat(
    py: Python<'_>,
    template: &str,
    conversations_json: &str,
    bos: Option<String>,
    eos: Option<String>,
    add_generation_prompt: bool,
    kwargs_json: &str,
) -> PyResult<Vec<(String, String)>> {
    // Parsed into minijinja values directly: they keep the keys' order, as Python dicts do.
    let conversations: Vec<Value> = serde_json::from_str(conversations_json)
        .map_err(|e| PyValueError::new_err(format!("conversations_json: {e}")))?;
    let kwargs: json_object::Pairs =
        serde_json::from_str(kwargs_json).map_err(|e| PyValueError::new_err(format!("kwargs_json: {e}")))?;
    let special = SpecialTokens {
        bos,
        eos,
        ..SpecialTokens::default()
    };
    let out = py.detach(|| {
        let compiled = ChatTemplate::new(template, special);
        conversations
            .iter()
            .map(|conv| {
                let result = compiled.as_ref().map_err(Clone::clone).and_then(|t| {
                    let messages = conv.get_attr("messages").unwrap_or_default();
                    let tools = conv
                        .get_attr("tools")
                        .ok()
                        .filter(|v| !v.is_undefined() && !v.is_none());
                    t.render(&messages, tools.as_ref(), &kwargs.0, add_generation_prompt)
                });
                match result {
                    Ok(text) => ("ok".to_owned(), text),
                    Err(ChatError::Raised(m)) => ("raised".to_owned(), m),
                    Err(e) => (kind(&e).to_owned(), e.to_string()),
                }
            })
            .collect()
    });
    Ok(out)
}

/// One conversation's result in `chat_regions`: `(kind, text, regions)`, regions as
/// `(message, start, end, marker)` byte offsets into the UTF-8 text.
type Located = (String, String, Vec<(usize, usize, usize, Option<String>)>);

/// Renders each conversation like `render_chat` (without a generation prompt) and locates its
/// assistant messages (`ChatTemplate::render_with_regions`). `kind` is `ok` or an error kind
/// (`raised`, `unsupported`, `limit`, `not_located`), then `text` is the message.
///
/// >>> chat_regions("{% for m in messages %}{{ m.content }}|{% endfor %}", '[{"messages": []}]', [])
/// [('ok', '', [])]
#[pyfunction]
#[pyo3(signature = (template, conversations_json, special_tokens, bos = None, eos = None, kwargs_json = "{}"))]
pub(crate) fn chat_regions(
    py: Python<'_>,
    template: &str,
    conversations_json: &str,
    special_tokens: Vec<String>,
    bos: Option<String>,
    eos: Option<String>,
    kwargs_json: &str,
) -> PyResult<Vec<Located>> {
    let conversations: Vec<Value> = serde_json::from_str(conversations_json)
        .map_err(|e| PyValueError::new_err(format!("conversations_json: {e}")))?;
    let kwargs: json_object::Pairs =
        serde_json::from_str(kwargs_json).map_err(|e| PyValueError::new_err(format!("kwargs_json: {e}")))?;
    let special = SpecialTokens {
        bos,
        eos,
        ..SpecialTokens::default()
    };
    let tokens: Vec<&str> = special_tokens.iter().map(String::as_str).collect();
    let out = py.detach(|| {
        let compiled = ChatTemplate::new(template, special);
        conversations
            .iter()
            .map(|conv| {
                let result = compiled.as_ref().map_err(Clone::clone).and_then(|t| {
                    let messages = conv.get_attr("messages").unwrap_or_default();
                    let tools = conv
                        .get_attr("tools")
                        .ok()
                        .filter(|v| !v.is_undefined() && !v.is_none());
                    t.render_with_regions(&messages, tools.as_ref(), &kwargs.0, &tokens)
                });
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
    });
    Ok(out)
}

fn kind(e: &ChatError) -> &'static str {
    match e {
        ChatError::Raised(_) => "raised",
        ChatError::Limit(_) => "limit",
        ChatError::NotLocated { .. } => "not_located",
        _ => "unsupported",
    }
}

mod json_object {
    //! A JSON object read as its (key, value) pairs, in order.
    use crate::chat::Value;

    pub(crate) struct Pairs(pub Vec<(String, Value)>);

    impl<'de> serde::Deserialize<'de> for Pairs {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let v = Value::deserialize(d)?;
            let mut pairs = Vec::new();
            if let Ok(keys) = v.try_iter() {
                for k in keys {
                    let value = v.get_item(&k).unwrap_or_default();
                    pairs.push((k.as_str().unwrap_or_default().to_owned(), value));
                }
            }
            Ok(Pairs(pairs))
        }
    }
}
