//! What the core's unit tests share.

/// A byte-level BPE tokenizer without merges: every byte is a token (`U`, `A`, `:`, space,
/// `x`, `y`, newline are ids 0-6).
pub(crate) const BYTE_TOKENIZER: &str = r#"{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
    "normalizer": null, "post_processor": null,
    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
    "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
    "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
      "vocab": {"U": 0, "A": 1, ":": 2, "\u0120": 3, "x": 4, "y": 5, "\u010a": 6}, "merges": []}}"#;
