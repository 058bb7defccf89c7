//! Where each assistant message sits in the full rendering, by the SPEC's rule.
//!
//! For assistant message `i` of a conversation rendered in full as `F`:
//! * it starts where the generation prompt ends: `G = render(messages[..i],
//!   add_generation_prompt=true)` must be a prefix of `F`, and the region starts at `len(G)`
//!   (for a template without a generation prompt, `G` is the previous messages' text);
//! * the turn ends where `H = render(messages[..=i])` ends (a prefix of `F` too), and the region
//!   ends at the turn's last non-whitespace byte: its end-of-turn marker when the turn ends with
//!   a special token, else its last character; the whitespace after it (Qwen's `\n`) is not in
//!   the region.
//!
//! Both prefixes are checked byte for byte, so a region is exact or not given at all: a template
//! that renders a message differently once later messages follow (one that rewrites history in a
//! way the prefix renderings do not share) gives [`ChatError::NotLocated`] for that message,
//! never a guessed range. This costs two renders per assistant message.

use super::{ChatError, ChatTemplate, Value};

/// One assistant message's bytes in the full rendering.
///
/// ```
/// let r = sftmask::chat::Region { message: 1, start: 10, end: 20, marker: None };
/// assert_eq!(r.end - r.start, 10);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    /// Index of the message in `messages`.
    pub message: usize,
    /// Byte offset in the rendered text where the region starts (after the generation prompt).
    pub start: usize,
    /// Byte offset where it ends (after the end-of-turn marker, before trailing whitespace).
    pub end: usize,
    /// The special token the turn ends with (the end-of-turn marker), if it ends with one.
    pub marker: Option<String>,
}

impl ChatTemplate {
    /// Render a conversation (without a generation prompt) and locate every assistant message in
    /// the text. `special_tokens` are the tokenizer's special/added token strings; they tell
    /// which end of turn is a marker.
    ///
    /// ```
    /// use sftmask::chat::{ChatTemplate, SpecialTokens, Value};
    /// let source = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
    ///               {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
    /// let t = ChatTemplate::new(source, SpecialTokens::default()).unwrap();
    /// let m: Value = serde_json::from_str(
    ///     r#"[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]"#).unwrap();
    /// let (text, regions) = t.render_with_regions(&m, None, &[], &["<|im_start|>", "<|im_end|>"]).unwrap();
    /// let r = &regions[0];
    /// assert_eq!(&text[r.start..r.end], "Hello<|im_end|>");
    /// assert_eq!(r.marker.as_deref(), Some("<|im_end|>"));
    /// ```
    pub fn render_with_regions(
        &self,
        messages: &Value,
        tools: Option<&Value>,
        extra: &[(String, Value)],
        special_tokens: &[&str],
    ) -> Result<(String, Vec<Region>), ChatError> {
        self.render_with_regions_where(messages, tools, extra, special_tokens, |_, _| true)
    }

    /// [`ChatTemplate::render_with_regions`] that locates only the assistant messages `select`
    /// keeps (given the message's index and value): a message that is not trained costs no
    /// prefix renders and cannot make the row fail.
    ///
    /// ```
    /// use sftmask::chat::{ChatTemplate, SpecialTokens, Value};
    /// let t = ChatTemplate::new("{% for m in messages %}[{{ m.content }}]{% endfor %}", SpecialTokens::default()).unwrap();
    /// let m: Value = serde_json::from_str(
    ///     r#"[{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]"#).unwrap();
    /// let (_, regions) = t.render_with_regions_where(&m, None, &[], &[], |i, _| i == 1).unwrap();
    /// assert_eq!((regions.len(), regions[0].start, regions[0].end), (1, 3, 6));
    /// ```
    pub fn render_with_regions_where(
        &self,
        messages: &Value,
        tools: Option<&Value>,
        extra: &[(String, Value)],
        special_tokens: &[&str],
        select: impl Fn(usize, &Value) -> bool,
    ) -> Result<(String, Vec<Region>), ChatError> {
        let full = self.render(messages, tools, extra, false)?;
        let items: Vec<Value> = messages
            .try_iter()
            .map_err(|e| ChatError::Unsupported(format!("messages is not a list: {e}")))?
            .collect();
        let mut regions = Vec::new();
        for (i, message) in items.iter().enumerate() {
            let role = message.get_attr("role").ok();
            if role.as_ref().and_then(|r| r.as_str()) != Some("assistant") || !select(i, message) {
                continue;
            }
            let not_located = |reason: String| ChatError::NotLocated { message: i, reason };
            let prefix = |n: usize, agp: bool| {
                self.render(&Value::from(items[..n].to_vec()), tools, extra, agp)
                    .map_err(|e| not_located(format!("rendering messages[..{n}] failed: {e}")))
            };
            let prompt = prefix(i, true)?;
            if !full.starts_with(&prompt) {
                return Err(not_located(format!(
                    "the generation prompt after messages[..{i}] is not a prefix of the full rendering"
                )));
            }
            let turn = prefix(i + 1, false)?;
            if !full.starts_with(&turn) {
                return Err(not_located(format!(
                    "messages[..={i}] rendered alone is not a prefix of the full rendering"
                )));
            }
            if turn.len() < prompt.len() {
                return Err(not_located("the turn ends before its generation prompt".into()));
            }
            let start = prompt.len();
            let segment = full[start..turn.len()].trim_end();
            let marker = special_tokens
                .iter()
                .filter(|t| !t.is_empty() && segment.ends_with(**t))
                .max_by_key(|t| t.len())
                .map(|t| (*t).to_owned());
            regions.push(Region {
                message: i,
                start,
                end: start + segment.len(),
                marker,
            });
        }
        Ok((full, regions))
    }
}
