//! Building the `tokenizers` tokenizer that preprocessing encodes with, from a tokenizer.json
//! text or, cheaper, from the file a loaded tokenizer came from plus what that loaded tokenizer
//! reports about itself.
//!
//! Serializing a loaded transformers tokenizer back to JSON (`to_str()`) costs ~0.1-0.7 s on
//! 128k-262k vocabularies before the text is parsed again; when the file is at hand, only the
//! parse is paid. The loaded tokenizer's own components (normalizer, pre-tokenizer,
//! post-processor, decoder, added tokens, model options) win over the file's, and its model
//! vocabulary is checked against the file's by the caller ([`VocabFileCheck`]), so a tokenizer
//! changed after loading is either reproduced or refused, never silently replaced.

use serde::Deserialize;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::ModelWrapper;
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{AddedToken, Model, Tokenizer};

use crate::error::{Error, Result};
use crate::vocab::VocabFileCheck;

/// A tokenizer from the text of a tokenizer.json, without its truncation and padding: those
/// are the state a transformers tokenizer's last call left behind (a `tok(...,
/// truncation=True, max_length=5)` stays in `to_str()`), not part of the tokenizer;
/// preprocessing truncates by its own `max_length` only.
///
/// ```
/// let json = r#"{"version": "1.0", "padding": null, "added_tokens": [], "normalizer": null,
///   "truncation": {"direction": "Right", "max_length": 1, "strategy": "LongestFirst", "stride": 0},
///   "pre_tokenizer": null, "post_processor": null, "decoder": null,
///   "model": {"type": "WordLevel", "vocab": {"a": 0, "b": 1}, "unk_token": "a"}}"#;
/// let t = sftmask::load::from_json(json).unwrap();
/// assert!(t.get_truncation().is_none());
/// ```
///
/// # Errors
/// [`Error::TokenizerJson`] when `tokenizers` cannot load the text.
pub fn from_json(json: &str) -> Result<Tokenizer> {
    let tokenizer: Tokenizer = json
        .parse()
        .map_err(|e| Error::TokenizerJson(format!("could not load tokenizer.json: {e}")))?;
    without_call_state(tokenizer)
}

fn without_call_state(mut tokenizer: Tokenizer) -> Result<Tokenizer> {
    tokenizer
        .with_truncation(None)
        .map_err(|e| Error::TokenizerJson(format!("could not load tokenizer.json: {e}")))?;
    tokenizer.with_padding(None);
    Ok(tokenizer)
}

/// An added token as a loaded tokenizer reports it.
#[derive(Deserialize)]
struct LiveAddedToken {
    id: u32,
    content: String,
    #[serde(default)]
    special: bool,
    #[serde(default)]
    normalized: Option<bool>,
    #[serde(default)]
    single_word: bool,
    #[serde(default)]
    lstrip: bool,
    #[serde(default)]
    rstrip: bool,
}

/// A BPE model's options as a loaded tokenizer reports them.
#[derive(Deserialize)]
struct LiveModel {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    dropout: Option<f32>,
    #[serde(default)]
    unk_token: Option<String>,
    #[serde(default)]
    continuing_subword_prefix: Option<String>,
    #[serde(default)]
    end_of_word_suffix: Option<String>,
    #[serde(default)]
    fuse_unk: Option<bool>,
    #[serde(default)]
    byte_fallback: Option<bool>,
    #[serde(default)]
    ignore_merges: Option<bool>,
}

/// What a loaded tokenizer reports about itself: everything but the model vocabulary.
#[derive(Deserialize)]
struct Live {
    model: LiveModel,
    #[serde(default)]
    added_tokens: Vec<LiveAddedToken>,
    #[serde(default)]
    normalizer: Option<NormalizerWrapper>,
    #[serde(default)]
    pre_tokenizer: Option<PreTokenizerWrapper>,
    #[serde(default)]
    post_processor: Option<PostProcessorWrapper>,
    #[serde(default)]
    decoder: Option<DecoderWrapper>,
}

/// The tokenizer of `file` (a tokenizer.json text; a BPE model) with the components `parts`
/// reports for the loaded tokenizer (a tokenizer.json text of everything but the model
/// vocabulary and merges: the model's type and options, `added_tokens` with their flags,
/// `normalizer`, `pre_tokenizer`, `post_processor`, `decoder`). Added tokens the loaded
/// tokenizer has beyond the file's are added in id order and must land on their ids.
///
/// The caller must confirm the [`VocabFileCheck`] against the loaded tokenizer (its model's
/// size and the token at each sampled id) before using the result.
///
/// ```
/// let file = r#"{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
///   "normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": null,
///   "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]}}"#;
/// let parts = r#"{"model": {"type": "BPE", "dropout": null, "fuse_unk": false, "byte_fallback": false,
///   "ignore_merges": false}, "added_tokens": [{"id": 3, "content": "<eos>", "special": true}],
///   "normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": null}"#;
/// let (t, check) = sftmask::load::from_parts(parts, file).unwrap();
/// assert_eq!(t.encode("ab<eos>", false).unwrap().get_ids(), &[2, 3]);
/// assert_eq!((check.kind.as_deref(), check.len), (Some("BPE"), Some(3)));
/// ```
///
/// # Errors
/// [`Error::TokenizerJson`] when either text cannot be read; [`Error::UnsupportedTokenizer`]
/// when the file's model is not BPE, its options differ from the loaded tokenizer's, or its
/// added tokens cannot be made the loaded tokenizer's (the caller then serializes the loaded
/// tokenizer instead).
pub fn from_parts(parts: &str, file: &str) -> Result<(Tokenizer, VocabFileCheck)> {
    let live: Live = serde_json::from_str(parts).map_err(|e| Error::TokenizerJson(format!("parts: {e}")))?;
    let mut tokenizer = from_json(file)?;
    let differs = |what: &str| Error::UnsupportedTokenizer(format!("the loaded tokenizer's {what} is not the file's"));
    let ModelWrapper::BPE(bpe) = tokenizer.get_model() else {
        return Err(Error::UnsupportedTokenizer("the file's model is not BPE".into()));
    };
    let m = &live.model;
    if m.kind != "BPE"
        || m.dropout != bpe.dropout
        || m.unk_token != bpe.unk_token
        || m.continuing_subword_prefix != bpe.continuing_subword_prefix
        || m.end_of_word_suffix != bpe.end_of_word_suffix
        || m.fuse_unk.is_some_and(|f| f != bpe.fuse_unk)
        || m.byte_fallback.is_some_and(|f| f != bpe.byte_fallback)
        || m.ignore_merges.is_some_and(|f| f != bpe.ignore_merges)
    {
        return Err(differs("model options"));
    }
    let model = tokenizer.get_model();
    let len = model.get_vocab_size();
    let step = (len / 1000).max(1);
    let sample = (0..len as u32)
        .step_by(step)
        .chain(len.checked_sub(1).map(|l| l as u32))
        .filter_map(|id| model.id_to_token(id).map(|t| (id, t)))
        .collect();
    tokenizer
        .with_normalizer(live.normalizer)
        .with_pre_tokenizer(live.pre_tokenizer)
        .with_post_processor(live.post_processor)
        .with_decoder(live.decoder);

    let file_added = tokenizer.get_added_tokens_decoder();
    let mut extra = Vec::new();
    for t in &live.added_tokens {
        match file_added.get(&t.id) {
            Some(have)
                if have.content == t.content
                    && have.special == t.special
                    && have.single_word == t.single_word
                    && have.lstrip == t.lstrip
                    && have.rstrip == t.rstrip
                    && t.normalized.is_none_or(|n| n == have.normalized) => {}
            Some(_) => return Err(differs("added tokens")),
            None => extra.push(t),
        }
    }
    if file_added.len() + extra.len() != live.added_tokens.len() {
        return Err(differs("added tokens"));
    }
    extra.sort_by_key(|t| t.id);
    for t in extra {
        let token = AddedToken::from(t.content.clone(), t.special)
            .single_word(t.single_word)
            .lstrip(t.lstrip)
            .rstrip(t.rstrip)
            .normalized(t.normalized.unwrap_or(!t.special));
        if t.special {
            tokenizer.add_special_tokens(&[token]);
        } else {
            tokenizer.add_tokens(&[token]);
        }
        if tokenizer.token_to_id(&t.content) != Some(t.id) {
            return Err(differs("added tokens"));
        }
    }
    let check = VocabFileCheck {
        kind: Some("BPE".into()),
        len: Some(len),
        sample,
    };
    Ok((tokenizer, check))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"{"version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [{"id": 3, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false,
                          "normalized": false, "special": true}],
        "normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": null,
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
          "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
          "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]}}"#;

    fn parts(model: &str, added: &str) -> String {
        format!(
            r#"{{"model": {model}, "added_tokens": [{added}], "normalizer": null, "pre_tokenizer": null,
                "post_processor": null, "decoder": null}}"#
        )
    }

    const BPE: &str =
        r#"{"type": "BPE", "dropout": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false}"#;
    const S: &str = r#"{"id": 3, "content": "<s>", "special": true, "normalized": false}"#;

    #[test]
    fn a_token_added_after_loading_is_added_on_its_id() {
        let pad = r#"{"id": 4, "content": "<pad>", "special": true, "normalized": false}"#;
        let (t, _) = from_parts(&parts(BPE, &format!("{S}, {pad}")), FILE).unwrap();
        assert_eq!(t.encode("<s>ab<pad>", false).unwrap().get_ids(), &[3, 2, 4]);
    }

    #[test]
    fn the_live_components_win_over_the_file() {
        let p = parts(BPE, S).replace(r#""normalizer": null"#, r#""normalizer": {"type": "Lowercase"}"#);
        let (t, _) = from_parts(&p, FILE).unwrap();
        assert_eq!(t.encode("AB", false).unwrap().get_ids(), &[2]);
    }

    #[test]
    fn what_cannot_be_reproduced_is_refused() {
        let dropout = BPE.replace(r#""dropout": null"#, r#""dropout": 0.5"#);
        let renamed = r#"{"id": 3, "content": "<bos>", "special": true}"#;
        let missing = parts(BPE, "");
        let clash = format!("{S}, {}", r#"{"id": 9, "content": "<pad>", "special": true}"#);
        for p in [parts(&dropout, S), parts(BPE, renamed), missing, parts(BPE, &clash)] {
            assert!(
                matches!(from_parts(&p, FILE), Err(Error::UnsupportedTokenizer(_))),
                "{p}"
            );
        }
        let word_level = r#"{"version": "1.0", "added_tokens": [], "model": {"type": "WordLevel",
            "vocab": {"a": 0}, "unk_token": "a"}}"#;
        assert!(from_parts(&parts(BPE, ""), word_level).is_err());
    }
}
