//! Hugging Face chat templates, rendered in Rust byte for byte as transformers renders them.
//!
//! A chat template is the Jinja program a model ships in `tokenizer_config.json`; transformers
//! runs it with Jinja2 in a sandbox with `trim_blocks`, `lstrip_blocks`, the loop-controls
//! extension, its own `tojson` (Python's `json.dumps`, no HTML escaping), `raise_exception` and
//! `strftime_now`. [`ChatTemplate`] runs the same program with minijinja, its Python
//! compatibility layer (`str.strip`, `dict.items`, ...) and the pieces transformers adds, and
//! prints values as Python's `str()` does (`None`, `True`, `['a', 'b']`), so that the text is the
//! one `tokenizer.apply_chat_template(messages, tokenize=False)` returns.
//!
//! Nothing here knows about Python objects: conversations are [`Value`]s (build them with
//! `serde_json::from_str::<Value>` to keep the keys in their order, as a Python dict does).
//!
//! ```
//! use sftmask::chat::{ChatTemplate, SpecialTokens, Value};
//! let source = "{% for m in messages %}<|{{ m.role }}|>{{ m.content | trim }}{{ eos_token }}\n{% endfor %}\
//!               {% if add_generation_prompt %}<|assistant|>{% endif %}";
//! let special = SpecialTokens { eos: Some("</s>".into()), ..SpecialTokens::default() };
//! let template = ChatTemplate::new(source, special).unwrap();
//! let messages: Value = serde_json::from_str(r#"[{"role": "user", "content": " hi "}]"#).unwrap();
//! let text = template.render(&messages, None, &[], true).unwrap();
//! assert_eq!(text, "<|user|>hi</s>\n<|assistant|>");
//! ```

pub(crate) mod prefix;
pub(crate) mod pystr;
pub(crate) mod regions;
mod render;

pub use minijinja::Value;
pub use regions::{locate_regions, PrefixRender, Region};
pub use render::{ChatTemplate, Limits, SpecialTokens};

/// What can go wrong when rendering a chat template.
///
/// ```
/// use sftmask::chat::{ChatError, ChatTemplate, SpecialTokens, Value};
/// let t = ChatTemplate::new("{{ raise_exception('roles must alternate') }}", SpecialTokens::default()).unwrap();
/// let err = t.render(&Value::from(Vec::<Value>::new()), None, &[], false).unwrap_err();
/// assert_eq!(err, ChatError::Raised("roles must alternate".into()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChatError {
    /// The template itself refused the conversation with `raise_exception(message)`;
    /// transformers raises `TemplateError(message)` on the same input.
    #[error("the chat template raised: {0}")]
    Raised(String),
    /// The Rust renderer cannot compile or run this template on this input (a construct
    /// minijinja lacks, an unknown method, a Python-only behaviour, or an error transformers
    /// would raise as well). The caller falls back to transformers' renderer.
    #[error("the Rust renderer cannot render this chat template: {0}")]
    Unsupported(String),
    /// The template ran past the instruction budget or the output size limit ([`Limits`]):
    /// a template that loops or renders megabytes.
    #[error("the chat template ran past its limit: {0}")]
    Limit(String),
    /// An assistant message whose region cannot be located exactly (see
    /// [`ChatTemplate::render_with_regions`]); the row is an error, never a guessed mask.
    #[error("message {message}: its region cannot be located exactly: {reason}")]
    NotLocated { message: usize, reason: String },
}
