//! Which engine turns text into token ids: the `tokenizers` crate, or for the tokenizers it
//! reproduces exactly, the fast byte-level BPE path ([`crate::fastbpe`]). Chosen once, when the
//! tokenizer is loaded; preprocessing ([`crate::encode`], [`crate::messages`], [`crate::arrow`])
//! takes either through [`Tokenize`].

use tokenizers::Tokenizer;

use crate::error::{Error, Result};
use crate::fastbpe::FastBpe;
use crate::vocab::VocabFileCheck;

/// Text -> token ids (and where each token ends), as `tokenizers::Tokenizer::encode` gives them.
pub trait Tokenize: Sync {
    /// The `tokenizers` tokenizer behind it (added tokens, fallback).
    fn tokenizer(&self) -> &Tokenizer;

    /// Token ids of `text`; `add_special_tokens` lets the post-processor add BOS etc.
    ///
    /// # Errors
    /// The tokenizer's own error, in words.
    fn encode_ids(&self, text: &str, add_special_tokens: bool) -> std::result::Result<Vec<u32>, String>;

    /// Token ids of `text` and where each token ends in it (bytes): the running maximum of the
    /// offsets' ends, so that token `i` spans from where token `i - 1` ends to where it ends and
    /// the tokens partition the text, as the overlap rule of [`crate::labels`] expects (a trimmed
    /// offset or a split character cannot leave a gap).
    ///
    /// # Errors
    /// The tokenizer's own error, in words.
    fn encode_with_ends(
        &self,
        text: &str,
        add_special_tokens: bool,
    ) -> std::result::Result<(Vec<u32>, Vec<u32>), String>;
}

impl Tokenize for Tokenizer {
    fn tokenizer(&self) -> &Tokenizer {
        self
    }

    fn encode_ids(&self, text: &str, add_special_tokens: bool) -> std::result::Result<Vec<u32>, String> {
        self.encode(text, add_special_tokens)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| e.to_string())
    }

    fn encode_with_ends(
        &self,
        text: &str,
        add_special_tokens: bool,
    ) -> std::result::Result<(Vec<u32>, Vec<u32>), String> {
        let encoding = self.encode(text, add_special_tokens).map_err(|e| e.to_string())?;
        let mut end = 0u32;
        let ends = encoding
            .get_offsets()
            .iter()
            .map(|&(_, e)| {
                end = end.max(u32::try_from(e).unwrap_or(u32::MAX));
                end
            })
            .collect();
        Ok((encoding.get_ids().to_vec(), ends))
    }
}

/// Which engine to use (`engine=` in Python).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineChoice {
    /// The fast path where it is exact for this tokenizer, `tokenizers` otherwise.
    #[default]
    Auto,
    /// Always the `tokenizers` crate.
    Tokenizers,
    /// The fast path, or an error naming what it does not cover.
    Fast,
}

impl EngineChoice {
    /// Parses `"auto"`, `"tokenizers"` or `"fast"`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for any other name.
    pub fn parse(name: &str) -> Result<EngineChoice> {
        match name {
            "auto" => Ok(EngineChoice::Auto),
            "tokenizers" => Ok(EngineChoice::Tokenizers),
            "fast" => Ok(EngineChoice::Fast),
            other => Err(Error::InvalidArgument(format!(
                "engine must be 'auto', 'tokenizers' or 'fast', got {other:?}"
            ))),
        }
    }
}

/// A loaded tokenizer with the engine chosen for it.
#[derive(Debug)]
pub struct TokenEngine {
    tokenizer: Tokenizer,
    fast: Option<FastBpe>,
    /// Why the fast path is not used (`None` when it is).
    refusal: Option<String>,
}

impl TokenEngine {
    /// Loads the text of a tokenizer.json with the engine `choice` asks for.
    ///
    /// ```
    /// use sftmask::engine::{EngineChoice, TokenEngine, Tokenize};
    /// // GPT-2's layout: byte-level BPE with ByteLevel's own regex, and no merges, so every byte is
    /// // a token; the vocabulary writes each byte as GPT-2's printable character for it.
    /// let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xff).contains(&b) && b != 0xad;
    /// let mut shifted = 0;
    /// let bytes = (0..256u32)
    ///     .map(|b| {
    ///         let c = if printable(b) { b } else { shifted += 1; 255 + shifted };
    ///         format!("{}: {b}", serde_json::to_string(&char::from_u32(c).unwrap().to_string()).unwrap())
    ///     })
    ///     .collect::<Vec<_>>()
    ///     .join(", ");
    /// let json = format!(r#"{{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
    ///   "normalizer": null, "pre_tokenizer": {{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
    ///   "use_regex": true}}, "post_processor": null, "decoder": null, "model": {{"type": "BPE", "dropout": null,
    ///   "unk_token": null, "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
    ///   "byte_fallback": false, "ignore_merges": false, "vocab": {{{bytes}}}, "merges": []}}}}"#);
    /// let fast = TokenEngine::from_json(&json, EngineChoice::Auto).unwrap();
    /// assert!(fast.is_fast());
    /// assert_eq!(fast.encode_ids("Hi é", false).unwrap(), fast.tokenizer().encode_ids("Hi é", false).unwrap());
    /// // A normalizer the fast path does not cover: "auto" falls back, "fast" says why.
    /// let lower = json.replace(r#""normalizer": null"#, r#""normalizer": {"type": "Lowercase"}"#);
    /// assert!(!TokenEngine::from_json(&lower, EngineChoice::Auto).unwrap().is_fast());
    /// let err = TokenEngine::from_json(&lower, EngineChoice::Fast).unwrap_err();
    /// assert!(err.to_string().contains("the Lowercase normalizer"), "{err}");
    /// ```
    ///
    /// # Errors
    /// [`Error::TokenizerJson`] for a text `tokenizers` cannot load; [`Error::InvalidArgument`]
    /// for [`EngineChoice::Fast`] on a tokenizer the fast path does not cover, naming why.
    pub fn from_json(json: &str, choice: EngineChoice) -> Result<TokenEngine> {
        // Without the truncation and padding a transformers tokenizer's last call left in it.
        let parse = || crate::load::from_json(json);
        if choice == EngineChoice::Tokenizers {
            return Ok(TokenEngine {
                tokenizer: parse()?,
                fast: None,
                refusal: Some("engine='tokenizers' was asked for".into()),
            });
        }
        // Both read the whole file: build the fast path on a second thread meanwhile (a scoped
        // thread, not the pool: it ends before this returns).
        let build = || {
            serde_json::from_str::<serde_json::Value>(json)
                .map_err(|e| e.to_string())
                .and_then(|v| FastBpe::from_json(&v))
        };
        let (tokenizer, built) = std::thread::scope(|s| {
            let fast = s.spawn(build);
            let tokenizer = parse();
            (
                tokenizer,
                fast.join()
                    .unwrap_or_else(|_| Err("the fast path's builder panicked".into())),
            )
        });
        Self::with(tokenizer?, built, choice)
    }

    /// [`crate::load::from_parts`]'s tokenizer (a loaded tokenizer's components over the model
    /// of its file) with the engine `choice` asks for: the fast path sees the file's model and
    /// the components and added tokens of the tokenizer built, as `tokenizers` will run them.
    ///
    /// # Errors
    /// Those of [`crate::load::from_parts`], and as [`TokenEngine::from_json`] for `choice`.
    pub fn from_parts(parts: &str, file: &str, choice: EngineChoice) -> Result<(TokenEngine, VocabFileCheck)> {
        let (tokenizer, check) = crate::load::from_parts(parts, file)?;
        let built = if choice == EngineChoice::Tokenizers {
            Err("engine='tokenizers' was asked for".into())
        } else {
            serde_json::from_str::<serde_json::Value>(file)
                .map_err(|e| e.to_string())
                .and_then(|mut spec| {
                    live_components(&tokenizer, &mut spec)?;
                    FastBpe::from_json(&spec)
                })
        };
        Ok((Self::with(tokenizer, built, choice)?, check))
    }

    fn with(tokenizer: Tokenizer, built: std::result::Result<FastBpe, String>, choice: EngineChoice) -> Result<Self> {
        match built {
            Ok(fast) => Ok(TokenEngine {
                tokenizer,
                fast: Some(fast),
                refusal: None,
            }),
            Err(reason) if choice == EngineChoice::Fast => Err(Error::InvalidArgument(format!(
                "engine='fast' does not cover this tokenizer: {reason} (engine='auto' uses the tokenizers \
                 library for it)"
            ))),
            Err(reason) => Ok(TokenEngine {
                tokenizer,
                fast: None,
                refusal: Some(reason),
            }),
        }
    }

    /// Whether the fast path tokenizes (rows it does not cover still go to `tokenizers`).
    pub fn is_fast(&self) -> bool {
        self.fast.is_some()
    }

    /// Why the fast path is not used, or `None` when it is.
    pub fn refusal(&self) -> Option<&str> {
        self.refusal.as_deref()
    }
}

impl Tokenize for TokenEngine {
    fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    fn encode_ids(&self, text: &str, add_special_tokens: bool) -> std::result::Result<Vec<u32>, String> {
        if let Some(fast) = &self.fast {
            let mut ids = Vec::with_capacity(text.len() / 3);
            if fast.encode(text, add_special_tokens, &mut ids, None) {
                return Ok(ids);
            }
        }
        self.tokenizer.encode_ids(text, add_special_tokens)
    }

    fn encode_with_ends(
        &self,
        text: &str,
        add_special_tokens: bool,
    ) -> std::result::Result<(Vec<u32>, Vec<u32>), String> {
        if let Some(fast) = &self.fast {
            let (mut ids, mut ends) = (Vec::with_capacity(text.len() / 3), Vec::with_capacity(text.len() / 3));
            if fast.encode(text, add_special_tokens, &mut ids, Some(&mut ends)) {
                return Ok((ids, ends));
            }
        }
        self.tokenizer.encode_with_ends(text, add_special_tokens)
    }
}

/// Puts into `spec` (a tokenizer.json's JSON) the components and added tokens of `tokenizer`
/// built from it, which are what `tokenizers` runs: the fast path checks those, not the file's.
fn live_components(tokenizer: &Tokenizer, spec: &mut serde_json::Value) -> std::result::Result<(), String> {
    use serde_json::{json, to_value, Value};
    let obj = spec.as_object_mut().ok_or("tokenizer.json is not an object")?;
    let err = |e: serde_json::Error| e.to_string();
    obj.insert("normalizer".into(), to_value(tokenizer.get_normalizer()).map_err(err)?);
    obj.insert(
        "pre_tokenizer".into(),
        to_value(tokenizer.get_pre_tokenizer()).map_err(err)?,
    );
    obj.insert(
        "post_processor".into(),
        to_value(tokenizer.get_post_processor()).map_err(err)?,
    );
    let mut added: Vec<(u32, Value)> = tokenizer
        .get_added_tokens_decoder()
        .into_iter()
        .map(|(id, t)| {
            let token = json!({"id": id, "content": t.content, "single_word": t.single_word, "lstrip": t.lstrip,
                               "rstrip": t.rstrip, "normalized": t.normalized, "special": t.special});
            (id, token)
        })
        .collect();
    added.sort_by_key(|(id, _)| *id);
    obj.insert(
        "added_tokens".into(),
        Value::Array(added.into_iter().map(|(_, t)| t).collect()),
    );
    Ok(())
}
