//! Where each assistant message sits in the full rendering, by the SPEC's rule
//! (docs/masking.md rule 45, docs/chat-templates.md rules 3-8).
//!
//! For assistant message `i` of a conversation rendered in full as `F`, with
//! `R(n) = render(messages[..n])` and `G = render(messages[..i], add_generation_prompt=true)`:
//!
//! **Start** (where the generation prompt ends, in `F`):
//! * S1: `G` is a prefix of `F`: the region starts at `len(G)`.
//! * S2 (the prompt opens a block the history writes otherwise: DeepSeek-R1's `<think>\n`,
//!   Gemma 4's empty thought channel, Nemotron's `<think>\n` before `<think></think>`):
//!   `R(i)` is a prefix of both `G` and `F`; the generation prompt `g = G[len(R(i))..]` is cut
//!   into pieces (the special tokens in it; between them, runs of whitespace, runs of word
//!   characters, and every other character alone); the region starts after the longest run of whole pieces of `g` that `F` continues
//!   with after `R(i)` — and that the sentinel render (message `i` rendered last with its
//!   content and reasoning replaced by a sentinel) continues with too, so that an answer that
//!   happens to begin like the prompt's tail is never counted as prompt.
//!
//! * S3 (an earlier turn is written in full until a later message follows, as GPT-OSS keeps a
//!   tool-calling turn's analysis channel until a final answer exists): every render above is
//!   compared without the parts that earlier turns, located by E3, leave out of `F` — each
//!   removed only where it sits, byte for byte, at the place `F` leaves it out.
//!
//! **End** (the turn's last non-whitespace byte, its end-of-turn marker if it has one):
//! * E1: `H = R(i+1)` is a prefix of `F` (and no shorter than the start): the turn ends where
//!   `H` ends.
//! * E2 (the turn ends otherwise when it is the last one: Phi-3 appends `<|endoftext|>`, GPT-OSS
//!   ends the last answer with `<|return|>` and the others with `<|end|>`): `X`, the rendering
//!   of `messages[..=i]` with a generation prompt less that same generation prompt `g`, is a
//!   prefix of `F`: the turn ends where `X` ends. Or (where no such prompt is found, as with
//!   Phi-3, whose every rendering ends with the eos) the *body* of `H`, what `H` and
//!   `render(messages[..=i], add_generation_prompt=true)` share cut back to a piece end, is a
//!   prefix of `F` no shorter than the start, and the turn in it ends with a special token (so
//!   the part cut away is the end of the conversation, not the turn's own marker).
//! * E3 (history drops part of an earlier turn: Qwen3 and DeepSeek-R1 drop its reasoning,
//!   GPT-OSS its analysis channel, GLM-4.6 the reasoning inside `<think></think>`): the turn as
//!   rendered in `X` (else in `H`), `T = X[s..]` with `s` its start there by S1/S2, reappears in
//!   `F` from the region start with one contiguous part `D` left out: `F` continues with `T[..a]`
//!   (`a` the longest common prefix) and then with the longest suffix `T[b..]` (`b > a`) that `F`
//!   continues with there, which must still hold `T`'s last non-whitespace byte. Neither
//!   `D = T[a..b]` nor any of the message's texts (content, reasoning) that `D` holds may occur
//!   between the region's end and the start of the next assistant message (or the end of `F`):
//!   a part that moved (Gemma 4 writes a tool-calling answer after the tool results) is not a
//!   dropped part. When `F` continues with all of `T` up to its last
//!   non-whitespace byte (only the header differed), that byte must end a special token.
//!
//! Every region is checked byte for byte against renders of the same conversation, so a region
//! is exact or not given at all: a turn no rule locates gives [`ChatError::NotLocated`] for that
//! message, never a guessed range. Cost: two renders of a prefix per assistant message when `G`
//! and `H` are prefixes, a few more for a rewritten turn; with the Rust renderer each is taken
//! from one traced run of the whole conversation where that is exact ([`super::prefix`]).

use std::collections::HashMap;
use std::rc::Rc;

use super::prefix::Trace;
use super::{ChatError, ChatTemplate, Value};

/// One assistant message's bytes in the full rendering.
///
/// ```
/// let r = sftmask::chat::Region { message: 1, start: 10, end: 20, marker: None, last_start: 10, kept: 10, dropped: 0, last_agrees: 30 };
/// assert_eq!(r.end - r.start, 10);
/// assert_eq!(r.from_last(15), Some(15));
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
    /// Where the region's bytes come from in `render(messages[..=i])` (the message rendered
    /// last): the first `kept` bytes of the region are that text's bytes from `last_start`, the
    /// rest follows `dropped` bytes later (a part history drops, rule E3; 0 otherwise).
    pub last_start: usize,
    /// Bytes of the region before the dropped part.
    pub kept: usize,
    /// Bytes of the turn rendered last that the full rendering leaves out.
    pub dropped: usize,
    /// The mapping holds for bytes of `render(messages[..=i])` before this offset (where the
    /// turn is taken from its rendering followed by a generation prompt, the two agree so far).
    pub last_agrees: usize,
}

impl Region {
    /// The offset in the full rendering of byte `at` of `render(messages[..=i])`, or `None` when
    /// that byte is not in the region (outside the turn, or in the part history drops).
    ///
    /// ```
    /// // "<think>r</think>" (16 bytes) dropped: last "A:<think>r</think>ok", full "A:ok".
    /// let r = sftmask::chat::Region { message: 0, start: 2, end: 4, marker: None, last_start: 2, kept: 0, dropped: 16, last_agrees: 24 };
    /// assert_eq!(r.from_last(18), Some(2)); // "ok" starts at 18 in the last rendering
    /// assert_eq!(r.from_last(5), None);     // inside the dropped reasoning
    /// ```
    pub fn from_last(&self, at: usize) -> Option<usize> {
        if at >= self.last_agrees {
            return None;
        }
        let len = self.end - self.start;
        let off = at.checked_sub(self.last_start)?;
        if off <= self.kept {
            (off <= len).then_some(self.start + off)
        } else if off >= self.kept + self.dropped {
            let off = off - self.dropped;
            (off <= len).then_some(self.start + off)
        } else {
            None
        }
    }
}

/// A text no real content holds (private-use characters around a name).
pub(crate) const SENTINEL: &str = "\u{E000}sftmask-content\u{E001}";

/// `message` with the string values of `keys` replaced by `with`, its keys in their order:
/// rebuilt through JSON, as the rows were parsed (minijinja builds ordered maps only when
/// deserializing). `None` when the message is not a map of plain data.
pub(crate) fn replace_fields(message: &Value, keys: &[&str], with: &str) -> Option<Value> {
    let mut json = String::from("{");
    for (n, k) in message.try_iter().ok()?.enumerate() {
        let v = message.get_item(&k).ok()?;
        let v = if k.as_str().is_some_and(|k| keys.contains(&k)) && v.as_str().is_some() {
            Value::from(with)
        } else {
            v
        };
        if n > 0 {
            json.push(',');
        }
        json.push_str(&serde_json::to_string(&k).ok()?);
        json.push(':');
        json.push_str(&serde_json::to_string(&v).ok()?);
    }
    json.push('}');
    serde_json::from_str(&json).ok()
}

/// The kind of a character for cutting text into pieces: whitespace, word characters (letters,
/// digits, `_`), or anything else (each such character a piece of its own).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Space,
    Word,
    Other,
}

fn class(c: char) -> Class {
    if c.is_whitespace() {
        Class::Space
    } else if c.is_alphanumeric() || c == '_' {
        Class::Word
    } else {
        Class::Other
    }
}

/// Byte offsets where `text` may be cut without splitting a piece: the ends of the special
/// tokens in it (longest match first, scanning left to right), of runs of whitespace, of runs
/// of word characters, and of every other character. Ascending, `text.len()` last, 0 not
/// included.
fn piece_ends(text: &str, tokens: &[&str]) -> Vec<usize> {
    // A tokenizer can have thousands of added tokens: look up only those starting with the byte.
    let mut by_first: HashMap<u8, Vec<&str>> = HashMap::new();
    for t in tokens.iter().filter(|t| !t.is_empty()) {
        by_first.entry(t.as_bytes()[0]).or_default().push(t);
    }
    let mut out = Vec::new();
    let mut run: Option<Class> = None; // the class of the run being read
    let mut at = 0;
    while at < text.len() {
        let rest = &text[at..];
        let token = by_first
            .get(&rest.as_bytes()[0])
            .and_then(|ts| ts.iter().filter(|t| rest.starts_with(**t)).map(|t| t.len()).max());
        if let Some(len) = token {
            if run.take().is_some() {
                out.push(at);
            }
            at += len;
            out.push(at);
            continue;
        }
        let c = rest.chars().next().unwrap_or(' ');
        let k = class(c);
        if run.is_some() && (run != Some(k) || k == Class::Other) {
            out.push(at);
        }
        run = Some(k);
        at += c.len_utf8();
    }
    if run.is_some() {
        out.push(at);
    }
    out
}

/// The longest prefix of `prompt`, ending at one of `ends`, that `text` starts with.
fn whole_pieces(prompt: &str, ends: &[usize], text: &str) -> usize {
    ends.iter()
        .copied()
        .take_while(|&e| text.starts_with(&prompt[..e]))
        .last()
        .unwrap_or(0)
}

/// Length of the longest common prefix of `a` and `b`, on a character boundary.
fn common_prefix(a: &str, b: &str) -> usize {
    let n = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
    (0..=n).rev().find(|&k| a.is_char_boundary(k)).unwrap_or(0)
}

/// The special token `segment` ends with (the longest), if any.
fn marker_of(segment: &str, tokens: &[&str]) -> Option<String> {
    tokens
        .iter()
        .filter(|t| !t.is_empty() && segment.ends_with(**t))
        .max_by_key(|t| t.len())
        .map(|t| (*t).to_owned())
}

/// A region's end and where its bytes come from in the turn rendered last.
struct End {
    end: usize,
    last_start: usize,
    kept: usize,
    dropped: usize,
    agrees: usize,
    /// The text left out (rule E3), empty otherwise.
    part: String,
}

/// What renders the prefixes: `render(messages, add_generation_prompt, last_replaced)`, told
/// whether `messages` is a prefix of the conversation (`false`) or a prefix whose last message
/// is replaced (the sentinel probe).
pub(crate) trait Prefixes {
    fn render(
        &mut self,
        messages: &[Value],
        add_generation_prompt: bool,
        last_replaced: bool,
    ) -> Result<Rc<str>, ChatError>;
}

impl<F: FnMut(&[Value], bool) -> Result<String, ChatError>> Prefixes for F {
    fn render(&mut self, messages: &[Value], add_generation_prompt: bool, _: bool) -> Result<Rc<str>, ChatError> {
        self(messages, add_generation_prompt).map(Rc::from)
    }
}

/// `a` followed by `b`, copied once.
fn joined(a: &str, b: &str) -> Rc<str> {
    let mut out = String::with_capacity(a.len() + b.len());
    out.push_str(a);
    out.push_str(b);
    Rc::from(out)
}

/// Prefix renders from one traced full run ([`super::prefix`]): everything before the loop
/// turn where a prefix parts from the whole conversation is taken from the full rendering, the
/// rest rendered; a prefix that parts before the loop is rendered in full.
struct Planned<'a> {
    template: &'a ChatTemplate,
    full: &'a str,
    trace: Trace,
    tools: Option<&'a Value>,
    extra: &'a [(String, Value)],
    /// What follows the loop, without and with the generation prompt, once known to be the same
    /// after every prefix.
    after: [Option<String>; 2],
    /// The last prefix came from the trace (not a render of the whole prefix).
    planned: bool,
}

impl<'a> Planned<'a> {
    fn new(
        template: &'a ChatTemplate,
        full: &'a str,
        trace: Trace,
        tools: Option<&'a Value>,
        extra: &'a [(String, Value)],
    ) -> Self {
        Planned {
            template,
            full,
            trace,
            tools,
            extra,
            after: [None, None],
            planned: false,
        }
    }
}

/// The messages of a conversation.
fn items_of(messages: &Value) -> Result<Vec<Value>, ChatError> {
    Ok(messages
        .try_iter()
        .map_err(|e| ChatError::Unsupported(format!("messages is not a list: {e}")))?
        .collect())
}

impl Prefixes for Planned<'_> {
    fn render(&mut self, m: &[Value], agp: bool, replaced: bool) -> Result<Rc<str>, ChatError> {
        let plan = self.template.plan.as_ref().ok();
        if let Some((start, at_end)) = plan.and_then(|p| self.trace.parts_at(p, m.len(), replaced, agp)) {
            let kept = &self.full[..self.trace.bounds[start]];
            // What follows the loop, when it read nothing of the messages, is the same after
            // every prefix: rendered once per value of the generation-prompt flag.
            let cached = if at_end {
                self.after[usize::from(agp)].as_deref()
            } else {
                None
            };
            if let Some(after) = cached {
                self.planned = true;
                return Ok(joined(kept, after));
            }
            if let Some((text, at, after_reads_none)) =
                self.template.tail(m, self.tools, self.extra, agp, start, &self.trace)
            {
                // The part before the loop is written alike (it read the same values).
                if text.get(..at) == self.full.get(..self.trace.bounds[0]) {
                    if at_end && after_reads_none {
                        self.after[usize::from(agp)] = Some(text[at..].to_owned());
                    }
                    self.planned = true;
                    return Ok(joined(kept, &text[at..]));
                }
            }
        }
        self.planned = false;
        self.template
            .render(&Value::from(m.to_vec()), self.tools, self.extra, agp)
            .map(Rc::from)
    }
}

/// The prefix renders of one conversation, each made once.
struct Locator<'a, R> {
    full: &'a str,
    items: &'a [Value],
    tokens: &'a [&'a str],
    render: R,
    prefixes: HashMap<(usize, bool), Rc<str>>,
    probes: HashMap<usize, Rc<str>>,
    starts: HashMap<usize, Result<usize, String>>,
    /// The parts located turns leave out (rule S3): where in the full rendering, and the text.
    drops: Vec<(usize, String)>,
}

impl<R: Prefixes> Locator<'_, R> {
    fn prefix(&mut self, n: usize, agp: bool) -> Result<Rc<str>, String> {
        if let Some(text) = self.prefixes.get(&(n, agp)) {
            return Ok(self.adjust(text));
        }
        let text: Rc<str> = self
            .render
            .render(&self.items[..n], agp, false)
            .map_err(|e| format!("rendering messages[..{n}] failed: {e}"))?;
        self.prefixes.insert((n, agp), text.clone());
        Ok(self.adjust(&text))
    }

    /// `text` less the parts earlier located turns leave out (rule S3), each removed only where
    /// it sits byte for byte at the place the full rendering leaves it out.
    fn adjust(&self, text: &Rc<str>) -> Rc<str> {
        if self.drops.is_empty() {
            return text.clone();
        }
        let mut cuts = Vec::new();
        let (mut at, mut shift) = (0, 0);
        for (p, part) in &self.drops {
            let pos = p + shift;
            if pos >= at && text.get(pos..).is_some_and(|rest| rest.starts_with(part.as_str())) {
                cuts.push((pos, part.len()));
                at = pos + part.len();
                shift += part.len();
            }
        }
        if cuts.is_empty() {
            return text.clone(); // the common case (Qwen3's later renders drop the part too)
        }
        let mut out = String::with_capacity(text.len() - shift);
        let mut from = 0;
        for (pos, len) in cuts {
            out.push_str(&text[from..pos]);
            from = pos + len;
        }
        out.push_str(&text[from..]);
        out.into()
    }

    /// `messages[..=i]` with message `i`'s content and reasoning replaced by the sentinel.
    fn probe(&mut self, i: usize) -> Result<Rc<str>, String> {
        if let Some(text) = self.probes.get(&i) {
            return Ok(self.adjust(text));
        }
        let message = replace_fields(&self.items[i], &["content", "reasoning_content", "thinking"], SENTINEL)
            .ok_or_else(|| format!("message {i} is not plain data"))?;
        let mut items = self.items[..=i].to_vec();
        items[i] = message;
        let text: Rc<str> = self
            .render
            .render(&items, false, true)
            .map_err(|e| format!("rendering messages[..={i}] with a sentinel content failed: {e}"))?;
        self.probes.insert(i, text.clone());
        Ok(self.adjust(&text))
    }

    /// Where the generation prompt before message `i` ends in `text` (rules S1, S2).
    fn header_end(&mut self, i: usize, text: &str) -> Result<usize, String> {
        let prompt = self.prefix(i, true)?;
        if text.starts_with(&*prompt) {
            return Ok(prompt.len());
        }
        let before = self.prefix(i, false)?;
        if !(text.starts_with(&*before) && prompt.starts_with(&*before)) {
            return Err(format!(
                "neither the generation prompt after messages[..{i}] nor messages[..{i}] alone is a prefix \
                 of the rendering (the template rewrites the earlier messages)"
            ));
        }
        let probe = self.probe(i)?;
        if !probe.starts_with(&*before) {
            return Err(format!(
                "messages[..{i}] is not a prefix of the sentinel render of message {i}"
            ));
        }
        let opened = &prompt[before.len()..];
        let ends = piece_ends(opened, self.tokens);
        let k =
            whole_pieces(opened, &ends, &text[before.len()..]).min(whole_pieces(opened, &ends, &probe[before.len()..]));
        Ok(before.len() + k)
    }

    /// The region start of message `i` in the full rendering, computed once.
    fn start(&mut self, i: usize) -> Result<usize, String> {
        if let Some(s) = self.starts.get(&i) {
            return s.clone();
        }
        let full = self.full;
        let s = self.header_end(i, full);
        self.starts.insert(i, s.clone());
        s
    }

    /// The conversation through message `i` as it is written when something follows it:
    /// `render(messages[..=i], add_generation_prompt=true)` less the generation prompt found
    /// before message `i` (`None` when that rendering does not end with it).
    fn followed(&mut self, i: usize) -> Result<Option<Rc<str>>, String> {
        let prompt = self.prefix(i, true)?;
        let before = self.prefix(i, false)?;
        let Some(opened) = prompt.strip_prefix(&*before) else {
            return Ok(None);
        };
        let next = self.prefix(i + 1, true)?;
        Ok(next.strip_suffix(opened).map(Rc::from))
    }

    /// Where the turn of message `i`, starting at `start` in the full rendering, ends (rules
    /// E1-E3).
    fn end(&mut self, i: usize, start: usize) -> Result<End, String> {
        let full = self.full;
        let last = self.prefix(i + 1, false)?;
        if full.starts_with(&*last) && last.len() >= start {
            return Ok(End {
                end: last.len(),
                last_start: start,
                kept: last.len() - start,
                dropped: 0,
                part: String::new(),
                agrees: last.len(),
            });
        }
        let followed = self.followed(i)?;
        if let Some(x) = followed.as_deref() {
            if full.starts_with(x) && x.len() >= start {
                return Ok(End {
                    end: x.len(),
                    last_start: start,
                    kept: x.len() - start,
                    dropped: 0,
                    part: String::new(),
                    agrees: common_prefix(&last, x),
                });
            }
        }
        // E2, second form: what the turn rendered last shares with the same messages followed by
        // a generation prompt, cut back to a piece end (Phi-3's eos is written after every last
        // message, so no prompt found before message `i` is a prefix of anything here). The cut
        // must leave the turn ending in a special token: the part cut away is then the end of
        // the conversation, not the turn's own marker.
        let next_prompt = self.prefix(i + 1, true)?;
        let shared = common_prefix(&last, &next_prompt);
        if shared < last.len() && shared >= start {
            let body = piece_ends(&last[start..], self.tokens)
                .into_iter()
                .map(|e| start + e)
                .take_while(|&e| e <= shared)
                .last()
                .unwrap_or(start);
            if full.starts_with(&last[..body]) && marker_of(full[start..body].trim_end(), self.tokens).is_some() {
                return Ok(End {
                    end: body,
                    last_start: start,
                    kept: body - start,
                    dropped: 0,
                    part: String::new(),
                    agrees: body,
                });
            }
        }
        // E3: the turn as written when followed (else as written last), with one part left out.
        let reference = followed.unwrap_or_else(|| last.clone());
        let agrees = common_prefix(&last, &reference);
        let s_ref = self.header_end(i, &reference)?;
        let turn = &reference[s_ref..];
        let rest = &full[start..];
        let a = common_prefix(turn, rest);
        let trimmed = turn.trim_end().len();
        if a >= trimmed {
            // The whole turn reappears (only its header differs): exact when it ends with an
            // end-of-turn token, after which nothing of the turn can follow.
            if marker_of(turn.trim_end(), self.tokens).is_none() {
                return Err(format!(
                    "the turn of message {i} reappears in the full rendering without an end-of-turn token to \
                     show where it ends"
                ));
            }
            return Ok(End {
                end: start + trimmed,
                last_start: s_ref,
                kept: trimmed,
                dropped: 0,
                part: String::new(),
                agrees,
            });
        }
        let b = (a + 1..trimmed)
            .filter(|&b| turn.is_char_boundary(b))
            .find(|&b| rest[a..].starts_with(&turn[b..]))
            .ok_or_else(|| {
                format!(
                    "messages[..={i}] rendered alone is not a prefix of the full rendering, and the turn there is \
                     not its own rendering with one part left out"
                )
            })?;
        let end = start + a + (turn.len() - b);
        let dropped = &turn[a..b];
        let next = (i + 1..self.items.len()).find(|&j| is_assistant(&self.items[j]));
        let bound = match next {
            Some(j) => self.start(j).unwrap_or(full.len()).max(end),
            None => full.len(),
        };
        // A message text inside the left-out part that reappears later moved with it.
        let fields: Vec<String> = ["content", "reasoning_content", "thinking"]
            .iter()
            .filter_map(|k| self.items[i].get_attr(k).ok()?.as_str().map(str::to_owned))
            .filter(|f| !f.is_empty() && dropped.contains(f.as_str()))
            .collect();
        let after = &full[end..bound];
        if after.contains(dropped) || fields.iter().any(|f| after.contains(f.as_str())) {
            return Err(format!(
                "the part of message {i} that the full rendering leaves out appears after it (moved, not dropped)"
            ));
        }
        Ok(End {
            end,
            last_start: s_ref,
            kept: a,
            dropped: b - a,
            agrees,
            part: dropped.to_owned(),
        })
    }
}

/// Whether `message` is the assistant's (`role` "assistant").
pub(crate) fn is_assistant(message: &Value) -> bool {
    let role = message.get_attr("role").ok();
    role.as_ref().and_then(|r| r.as_str()) == Some("assistant")
}

/// Locates every assistant message `select` keeps in `full`, the rendering of `items`, by the
/// rules of this module, with `render(messages, add_generation_prompt)` rendering the prefixes
/// (the Rust renderer, or any other that renders the same template). `special_tokens` tell
/// which end of turn is a marker, and cut generation prompts into pieces.
///
/// ```
/// use sftmask::chat::{locate_regions, ChatError, Value};
/// // Answers as "A:" content "<e>"; the last answer shows its reasoning, earlier ones do not.
/// fn render(m: &[Value], agp: bool) -> Result<String, ChatError> {
///     let mut out = String::new();
///     for (i, msg) in m.iter().enumerate() {
///         let content = msg.get_attr("content").unwrap().to_string();
///         if msg.get_attr("role").unwrap().as_str() == Some("user") {
///             out += &format!("U:{content}<e>");
///         } else if i + 1 == m.len() {
///             out += &format!("A:<t>{}</t>{content}<e>", msg.get_attr("reasoning").unwrap());
///         } else {
///             out += &format!("A:{content}<e>");
///         }
///     }
///     if agp { out += "A:" }
///     Ok(out)
/// }
/// let m: Vec<Value> = serde_json::from_str(r#"[{"role": "user", "content": "q"},
///     {"role": "assistant", "content": "a", "reasoning": "r"}, {"role": "user", "content": "q2"}]"#).unwrap();
/// let full = render(&m, false).unwrap();
/// assert_eq!(full, "U:q<e>A:a<e>U:q2<e>");
/// let regions = locate_regions(&full, &m, &["<e>", "<t>", "</t>"], |_, _| true, render).unwrap();
/// // Found in the text trained on, although rendered last the turn is "<t>r</t>a<e>".
/// assert_eq!(&full[regions[0].start..regions[0].end], "a<e>");
/// assert_eq!(regions[0].dropped, "<t>r</t>".len());
/// ```
///
/// # Errors
/// [`ChatError::NotLocated`] for the first selected message no rule locates exactly.
pub fn locate_regions<R>(
    full: &str,
    items: &[Value],
    special_tokens: &[&str],
    select: impl Fn(usize, &Value) -> bool,
    render: R,
) -> Result<Vec<Region>, ChatError>
where
    R: FnMut(&[Value], bool) -> Result<String, ChatError>,
{
    locate_with(full, items, special_tokens, select, render)
}

/// [`locate_regions`] with any [`Prefixes`].
fn locate_with<R: Prefixes>(
    full: &str,
    items: &[Value],
    special_tokens: &[&str],
    select: impl Fn(usize, &Value) -> bool,
    render: R,
) -> Result<Vec<Region>, ChatError> {
    let mut loc = Locator {
        full,
        items,
        tokens: special_tokens,
        render,
        prefixes: HashMap::new(),
        probes: HashMap::new(),
        starts: HashMap::new(),
        drops: Vec::new(),
    };
    let mut regions = Vec::new();
    for (i, message) in items.iter().enumerate() {
        if !is_assistant(message) || !select(i, message) {
            continue;
        }
        let not_located = |reason: String| ChatError::NotLocated { message: i, reason };
        let start = loc.start(i).map_err(not_located)?;
        let e = loc.end(i, start).map_err(not_located)?;
        // `last_start` and `last_agrees` count in render(messages[..=i]) as rendered, which
        // still holds the parts earlier turns leave out (all before this turn).
        let adjusted = loc.prefix(i + 1, false).map_err(not_located)?.len();
        let removed = loc.prefixes.get(&(i + 1, false)).map_or(0, |raw| raw.len() - adjusted);
        if !e.part.is_empty() {
            // Later prefix renders still hold this part where the full rendering leaves it out:
            // they are compared without it (rule S3), and starts found before are found again.
            loc.drops.push((start + e.kept, e.part.clone()));
            loc.starts.clear();
        }
        let segment = full[start..e.end].trim_end();
        regions.push(Region {
            message: i,
            start,
            end: start + segment.len(),
            marker: marker_of(segment, special_tokens),
            last_start: e.last_start + removed,
            kept: e.kept.min(segment.len()),
            dropped: e.dropped,
            last_agrees: e.agrees + removed,
        });
    }
    Ok(regions)
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
        let items = items_of(messages)?;
        // A planned template: the full rendering from the traced run (the same program on the
        // same values, so the same text), and the prefixes from it.
        if let Some((full, trace)) = self.traced(&items, tools, extra) {
            let planned = Planned::new(self, &full, trace, tools, extra);
            let regions = locate_with(&full, &items, special_tokens, select, planned)?;
            return Ok((full, regions));
        }
        let full = self.render(messages, tools, extra, false)?;
        let render = |m: &[Value], agp: bool| self.render(&Value::from(m.to_vec()), tools, extra, agp);
        let regions = locate_regions(&full, &items, special_tokens, select, render)?;
        Ok((full, regions))
    }
}

/// One prefix render as the locator gets it ([`ChatTemplate::prefix_renders`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixRender {
    /// How many messages of the conversation it renders.
    pub messages: usize,
    pub add_generation_prompt: bool,
    pub text: String,
    /// Taken from the traced full run (`false`: the whole prefix was rendered).
    pub planned: bool,
}

impl ChatTemplate {
    /// Every prefix render `render(messages[..k], add_generation_prompt)` (`k` from 1 to the
    /// whole conversation, without and with the prompt) as the locator makes it: from one
    /// traced run where the template has a plan ([`super::prefix`]), else rendered in full. Each
    /// must equal the render of the prefix itself; this is how that is checked.
    ///
    /// ```
    /// use sftmask::chat::{ChatTemplate, SpecialTokens, Value};
    /// let t = ChatTemplate::new("{% for m in messages %}[{{ m.content }}]{% endfor %}{% if add_generation_prompt %}>{% endif %}",
    ///     SpecialTokens::default()).unwrap();
    /// let m: Value = serde_json::from_str(r#"[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]"#).unwrap();
    /// let renders = t.prefix_renders(&m, None, &[]).unwrap();
    /// assert_eq!(renders.len(), 4);
    /// assert!(renders.iter().all(|r| r.planned));
    /// assert_eq!(renders[1].text, "[a]>");
    /// ```
    ///
    /// # Errors
    /// The full rendering's error, or a prefix's.
    pub fn prefix_renders(
        &self,
        messages: &Value,
        tools: Option<&Value>,
        extra: &[(String, Value)],
    ) -> Result<Vec<PrefixRender>, ChatError> {
        let items = items_of(messages)?;
        let traced = self.traced(&items, tools, extra);
        let full = match &traced {
            Some((text, _)) => text.clone(),
            None => self.render(messages, tools, extra, false)?,
        };
        let mut planned = traced.map(|(_, trace)| Planned::new(self, &full, trace, tools, extra));
        let mut out = Vec::with_capacity(2 * items.len());
        for k in 1..=items.len() {
            for agp in [false, true] {
                let (text, from_trace) = match planned.as_mut() {
                    Some(p) => {
                        let text = p.render(&items[..k], agp, false)?;
                        (text.to_string(), p.planned)
                    }
                    None => (
                        self.render(&Value::from(items[..k].to_vec()), tools, extra, agp)?,
                        false,
                    ),
                };
                out.push(PrefixRender {
                    messages: k,
                    add_generation_prompt: agp,
                    text,
                    planned: from_trace,
                });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Prefix renders from the trace equal the renders of the prefixes, on templates that read
    /// ahead, behind, the last message, the length, and carry state across turns.
    #[test]
    fn prefix_renders_equal_the_prefixes_rendered() {
        let templates = [
            // Qwen2.5's tool turns: look ahead and `loop.last` close a run of tool messages.
            "{% for m in messages %}{% if m.role == 'tool' %}{% if loop.first or messages[loop.index0 - 1].role != 'tool' %}<T>{% endif %}\
             {{ m.content }}{% if loop.last or messages[loop.index0 + 1].role != 'tool' %}</T>{% endif %}\
             {% else %}<{{ m.role }}>{{ m.content }}{% endif %}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}",
            // Llama-3.1's system slice and the previous item.
            "{% if messages[0].role == 'system' %}S:{{ messages[0].content }}|{% set messages = messages[1:] %}{% endif %}\
             {% for m in messages %}{{ loop.index }}{{ m.role }}{% if loop.previtem %}(after {{ loop.previtem.role }}){% endif %}\
             {{ m.content }}{% endfor %}{% if add_generation_prompt %}A:{% endif %}",
            // The last message read before the loop, and the length in the loop.
            "{% if messages[-1].role == 'user' %}open {% endif %}{% for m in messages %}{{ m.content }}{% endfor %}",
            "{% for m in messages %}{{ messages | length }}{{ m.content }}{% endfor %}",
            // State across turns, read after the loop; the prompt read inside the loop.
            "{% set ns = namespace(users=0, last='') %}{% for m in messages %}{% if m.role == 'user' %}\
             {% set ns.users = ns.users + 1 %}{% endif %}{% set ns.last = m.role %}{{ ns.users }}{{ m.content }}\
             {% if loop.last and add_generation_prompt %}<gen>{% endif %}{% endfor %}[{{ ns.last }}]",
        ];
        let messages: Value = serde_json::from_str(
            r#"[{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a"}, {"role": "tool", "content": "t1"},
                {"role": "tool", "content": "t2"}, {"role": "user", "content": "q2"},
                {"role": "assistant", "content": "a2"}]"#,
        )
        .unwrap();
        let items: Vec<Value> = messages.try_iter().unwrap().collect();
        for source in templates {
            let t = ChatTemplate::new(source, super::super::SpecialTokens::default()).unwrap();
            assert_eq!(t.prefix_renders_in_full(), None, "{source}");
            let renders = t.prefix_renders(&messages, None, &[]).unwrap();
            assert_eq!(renders.len(), 2 * items.len());
            for r in &renders {
                let want = t
                    .render(
                        &Value::from(items[..r.messages].to_vec()),
                        None,
                        &[],
                        r.add_generation_prompt,
                    )
                    .unwrap();
                assert_eq!(r.text, want, "{source} {r:?}");
            }
            assert!(renders.iter().any(|r| r.planned) || source.contains("[-1]"), "{source}");
        }
    }

    #[test]
    fn pieces_cut_at_tokens_and_whitespace() {
        let ends = piece_ends("<|a|>model\n<t>\n", &["<|a|>", "<t>"]);
        assert_eq!(ends, vec![5, 10, 11, 14, 15]);
        // Without the tokens: words, whitespace runs, one piece per other character.
        assert_eq!(piece_ends("<t:x>  y", &[]), vec![1, 2, 3, 4, 5, 7, 8]);
        assert_eq!(whole_pieces("<|a|>model\n<t>\n", &ends, "<|a|>model\nhello"), 11);
        // A text that starts like a piece, but not with all of it, stops before that piece.
        assert_eq!(
            whole_pieces(
                "<|a|>Here are\n",
                &piece_ends("<|a|>Here are\n", &["<|a|>"]),
                "<|a|>Hello"
            ),
            5
        );
    }

    #[test]
    fn from_last_maps_around_the_dropped_part() {
        let r = Region {
            message: 0,
            start: 100,
            end: 110,
            marker: None,
            last_start: 50,
            kept: 2,
            dropped: 5,
            last_agrees: 100,
        };
        assert_eq!(r.from_last(50), Some(100));
        assert_eq!(r.from_last(52), Some(102));
        assert_eq!(r.from_last(54), None);
        assert_eq!(r.from_last(57), Some(102));
        assert_eq!(r.from_last(58), Some(103));
        assert_eq!(r.from_last(65), Some(110));
        assert_eq!(r.from_last(66), None);
        assert_eq!(r.from_last(49), None);
    }
}
