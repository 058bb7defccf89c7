"""The drop-in replacement for TRL's ``DataCollatorForCompletionOnlyLM``."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Union

import numpy as np

from sftmask import _tokenizer
from sftmask._core import Masker, MissingTemplateWarning, OptionError, OptionTypeError, Stats

Template = Union[str, Sequence[int]]

# transformers' DataCollatorForLanguageModeling fields that TRL's class accepted through
# **kwargs and that have no meaning for completion-only masking: accepted and ignored.
_IGNORED_PARENT_FIELDS = (
    "mlm_probability",
    "mask_replace_prob",
    "random_replace_prob",
    "tf_experimental_compile",
    "seed",
    "whole_word_mask",
)

#: The old name of :class:`sftmask.Stats` (``collator.stats``); kept for one release.
CollatorStats = Stats


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if value is None:
        return
    if low == 1:
        wanted = "a positive int" + (f" (at most {high})" if high < 2**63 - 1 else "")
    else:
        wanted = "an int that fits in int64"
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise OptionTypeError(f"{name} must be {wanted}, got {value!r}")
    if not low <= value <= high:
        raise OptionError(
            f"{name} must be {wanted}, got {value!r}" if low == 1 else f"{name} must fit in int64, got {value!r}"
        )


def _is_id_sequence(obj: Any) -> bool:
    if isinstance(obj, np.ndarray):
        return obj.ndim == 1
    return isinstance(obj, (list, tuple)) and all(
        isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in obj
    )


def _instruction_list(instruction_template: Any) -> list[Template]:
    """``None``, one template (str or ids), or a list of templates -> a list of templates."""
    if instruction_template is None:
        return []
    if isinstance(instruction_template, str) or _is_id_sequence(instruction_template):
        return [instruction_template]
    if isinstance(instruction_template, (list, tuple)):
        out = list(instruction_template)
        for t in out:
            if not (isinstance(t, str) or _is_id_sequence(t)):
                raise OptionTypeError(
                    "instruction_template must be a str, a list of token ids, or a list of those; "
                    f"got an item of type {type(t).__name__}"
                )
        return out
    raise OptionTypeError(f"instruction_template must be a str or a list, got {type(instruction_template).__name__}")


def _markers_for(tokenizer: Any) -> Any:
    """The chat template's markers, or an error naming the ways out when there is none."""
    from sftmask.chat import chat_markers

    if not getattr(tokenizer, "chat_template", None) or not hasattr(tokenizer, "apply_chat_template"):
        raise OptionError(
            "response_template is required: this tokenizer has no chat template to derive it from. "
            "Pass response_template=… (and instruction_template=…), or give the tokenizer a chat template "
            "(tokenizer.chat_template = …, then sftmask.chat_markers derives them), or preprocess the "
            "messages with sftmask.tokenize_and_mask and collate with labels='keep'"
        )
    return chat_markers(tokenizer)


_torch = None


def _to_torch(arrays: dict[str, Any]) -> dict[str, Any]:
    global _torch
    if _torch is None:
        try:
            import torch
        except ImportError as e:  # pragma: no cover - exercised only without torch
            raise ImportError("return_tensors='pt' needs PyTorch; install it or pass return_tensors='np'") from e
        _torch = torch
    return {k: _torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in arrays.items()}


class DataCollatorForCompletionOnlyLM:
    """Pads a batch and masks every label that is not the assistant's response.

    A drop-in for ``trl.DataCollatorForCompletionOnlyLM`` (TRL ≤ 0.19.1): same constructor,
    same output keys, but templates are found in the text itself (exact byte spans of the
    tokens), so context-dependent tokenization never drops an example.

    >>> from sftmask import DataCollatorForCompletionOnlyLM
    >>> collator = DataCollatorForCompletionOnlyLM(
    ...     "<|im_start|>assistant\\n", tokenizer=tokenizer)
    >>> batch = collator([{"input_ids": ids} for ids in rows])
    >>> batch["labels"].shape
    torch.Size([2, 16])

    Args:
        response_template: the text (or token ids) that starts every assistant turn. When
            neither template is given (and ``labels="mask"``), both are derived from the
            tokenizer's chat template by :func:`sftmask.chat_markers` (kept in
            ``collator.chat_markers``); a tokenizer without one is an ``OptionError``.
        instruction_template: the text (or ids) that starts a user turn, or a list of such
            templates (user, system, tool headers). With it, every assistant turn is trained;
            without it, only the text after the last response template.
        tokenizer: a transformers fast tokenizer, a ``tokenizers.Tokenizer``, or a path to
            ``tokenizer.json`` (positionally after the templates, as in TRL).
        mlm: must be False (kept for TRL's signature).
        ignore_index: label of masked tokens.
        padding_free: flatten the batch into one row with ``position_ids`` and
            ``cu_seq_lens_q/k`` (1-D int32) instead of padding.
        pad_to_multiple_of: round the padded length up to a multiple of this.
        return_tensors: ``"pt"`` (torch tensors sharing the arrays' memory) or ``"np"``.
        compat: ``"exact"`` (default), or ``"trl"`` to reproduce TRL 0.19.1 bit for bit (its
            token-level search, pairing, pad-id masking, per-row warnings and padding-free
            shapes), e.g. to prove that switching changes nothing on a dataset.
        on_missing: what to do with a row without a response template: ``"warn"`` (one
            warning per batch), ``"error"`` or ``"ignore"``. Its labels are ignored in any case.
        train_on: ``"all"`` assistant turns or only the ``"last"`` (with instruction templates).
        num_threads: threads for large batches (default: ``RAYON_NUM_THREADS`` or all CPUs).
        pad_token_id: overrides the tokenizer's pad token.
        padding_side: ``"right"`` or ``"left"``; defaults to the tokenizer's.
        labels: ``"mask"`` (default) computes labels from the templates; ``"keep"`` takes each
            example's own ``labels`` (e.g. from ``sftmask.tokenize_and_mask``) and only pads or
            flattens them (padding and, flattened, each sequence's first label get
            ``ignore_index``); the templates are then not needed, and ``stats`` counts rows
            whose given labels train nothing as ``rows_without_template``.

    With labels computed beforehand:

    >>> collator = DataCollatorForCompletionOnlyLM(tokenizer=tokenizer, labels="keep")
    >>> batch = collator([{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}, {"input_ids": [4], "labels": [4]}])
    >>> batch["labels"].tolist()
    [[-100, 2, 3], [4, -100, -100]]
    """

    def __init__(
        self,
        response_template: Template | None = None,
        instruction_template: Template | Sequence[Template] | None = None,
        *args: Any,
        mlm: bool = False,
        ignore_index: int = -100,
        padding_free: bool = False,
        compat: str = "exact",
        on_missing: str = "warn",
        train_on: str = "all",
        num_threads: int | None = None,
        pad_token_id: int | None = None,
        padding_side: str | None = None,
        labels: str = "mask",
        **kwargs: Any,
    ) -> None:
        # TRL passed *args/**kwargs to transformers' dataclass, whose first field is the tokenizer.
        if args:
            if "tokenizer" in kwargs:
                raise OptionTypeError("tokenizer given both positionally and as a keyword")
            kwargs["tokenizer"] = args[0]
            if len(args) > 1:
                raise OptionTypeError(
                    "only the tokenizer may follow the templates positionally; pass other options by keyword"
                )
        tokenizer = kwargs.pop("tokenizer", None)
        if tokenizer is None and hasattr(instruction_template, "backend_tokenizer"):
            raise OptionTypeError(
                "the tokenizer was passed as instruction_template (second positional argument); "
                "pass tokenizer=… or use TRL's order: (response_template, instruction_template, tokenizer)"
            )
        pad_to_multiple_of = kwargs.pop("pad_to_multiple_of", None)
        return_tensors = kwargs.pop("return_tensors", "pt")
        for name in _IGNORED_PARENT_FIELDS:
            kwargs.pop(name, None)
        if kwargs:
            raise OptionTypeError(f"unexpected keyword argument(s): {', '.join(sorted(kwargs))}")
        if mlm:
            raise OptionError("mlm=True is not supported: completion-only masking is for causal LM training")
        if return_tensors not in ("pt", "np"):
            raise OptionError(f"return_tensors must be 'pt' or 'np', got {return_tensors!r}")
        # Python ints of the wrong type or range are refused here, with sftmask's words; string
        # options (compat, labels, on_missing, train_on, padding_side) are parsed by the core.
        _check_int("pad_to_multiple_of", pad_to_multiple_of, 1, 2**63 - 1)
        _check_int("num_threads", num_threads, 1, 4096)
        _check_int("ignore_index", ignore_index, -(2**63), 2**63 - 1)
        _check_int("pad_token_id", pad_token_id, -(2**63), 2**63 - 1)
        if isinstance(response_template, str) and not response_template:
            raise OptionError("response_template is empty")

        info = _tokenizer.resolve(tokenizer)
        side = padding_side if padding_side is not None else info.padding_side
        pad = pad_token_id if pad_token_id is not None else info.pad_token_id

        self.tokenizer = tokenizer
        self.response_template = response_template
        self.instruction_template = instruction_template
        self.mlm = mlm
        self.ignore_index = ignore_index
        self.padding_free = padding_free
        self.pad_to_multiple_of = pad_to_multiple_of
        self.return_tensors = return_tensors
        self.compat = compat
        self.on_missing = on_missing
        self.train_on = train_on
        self.num_threads = num_threads
        self.pad_token_id = pad
        self.padding_side = side
        self.eos_token_id = info.eos_token_id
        self.labels = labels
        self._vocab = info.vocab
        #: The :class:`sftmask.ChatMarkers` the templates were derived from, when none were given.
        self.chat_markers = None
        if response_template is None and instruction_template is None and labels == "mask" and compat == "exact":
            self.chat_markers = _markers_for(tokenizer)
            response_template = self.response_template = self.chat_markers.response_template
            instruction_template = self.instruction_template = list(self.chat_markers.instruction_templates)
        if compat == "trl" and labels == "mask" and response_template is None:
            raise OptionError(
                "compat='trl' reproduces TRL 0.19.1, which needs the templates it was given: pass "
                "response_template=… (and instruction_template=…); to derive them from the chat template "
                "(sftmask.chat_markers), use the default compat='exact'"
            )
        if compat == "trl" and labels == "mask":
            response, instructions = self._trl_templates(tokenizer, info, response_template, instruction_template, pad)
        else:
            response, instructions = response_template, _instruction_list(instruction_template)
        self._masker = Masker(
            info.vocab,
            response,
            instructions,
            labels=labels,
            compat=compat,
            ignore_index=ignore_index,
            train_on=train_on,
            on_missing=on_missing,
            pad_token_id=pad,
            padding_side=side,
            padding_free=padding_free,
            pad_to_multiple_of=pad_to_multiple_of,
            num_threads=num_threads,
            pad_token_type_id=getattr(tokenizer, "pad_token_type_id", 0) or 0,
        )
        self._masker.check_padding()

    def _trl_templates(self, tokenizer: Any, info: Any, response: Any, instruction: Any, pad: Any) -> tuple[Any, Any]:
        """TRL tokenizes string templates alone (no special tokens) and searches those ids."""
        if response is None:
            return None, None  # the core names the missing template
        if instruction is not None and not (isinstance(instruction, str) or _is_id_sequence(instruction)):
            raise OptionTypeError(
                "compat='trl' takes one instruction template (a str or token ids), as TRL 0.19.1 does"
            )
        if instruction is not None and pad is not None and pad == info.eos_token_id:
            warnings.warn(
                "The pad_token_id and eos_token_id values of this tokenizer are identical. If you are planning for "
                "multi-turn training, it can result in the model continuously generating questions and answers "
                "without eos token. To avoid this, set the pad_token_id to a different value.",
                UserWarning,
                stacklevel=4,
            )
        encode = _tokenizer.template_encoder(tokenizer, info)
        response_ids = encode(response) if isinstance(response, str) else list(response)
        instruction_ids = None
        if instruction is not None:
            instruction_ids = [encode(instruction) if isinstance(instruction, str) else list(instruction)]
        return response_ids, instruction_ids

    # -- calling -----------------------------------------------------------------------------

    def __call__(self, examples: Sequence[Any], return_tensors: str | None = None) -> dict[str, Any]:
        """Collates ``examples`` (dicts with ``input_ids``, or id sequences) into a batch."""
        rt = return_tensors or self.return_tensors
        if rt not in ("pt", "np"):
            raise OptionError(f"return_tensors must be 'pt' or 'np', got {rt!r}")
        if self.compat == "trl" and not isinstance(examples, list):
            examples = list(examples)
        arrays, stats = self._masker.collate(examples)
        if self.compat == "trl":
            arrays = self._trl_shapes(arrays, examples)
            if (stats.missing_rows or stats.missing_instruction_rows) and self.on_missing == "warn":
                self._report_missing_trl(stats.missing_rows, stats.missing_instruction_rows, examples)
        elif self.labels == "mask" and stats.missing_rows and self.on_missing == "warn":
            self._report_missing(stats.missing_rows, stats.rows)
        return _to_torch(arrays) if rt == "pt" else arrays

    def _trl_shapes(self, arrays: dict[str, Any], examples: list[Any]) -> dict[str, Any]:
        """TRL 0.19.1's output conventions, where they differ from ours."""
        if self.padding_free:
            # [1, n+1] (trl#3243), with no entry for an empty row (TRL finds starts by position 0).
            cu = np.unique(arrays["cu_seq_lens_q"]).reshape(1, -1)
            longest = np.array([arrays["max_length_q"]], dtype=np.int64)  # a 1-element tensor
            arrays.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=longest, max_length_k=longest)
        elif examples and not isinstance(examples[0], Mapping):
            # transformers' list path (_torch_collate_batch) returns no attention mask.
            del arrays["attention_mask"]
        return arrays

    def _report_missing_trl(self, missing: list[int], missing_instruction: list[int], examples: list[Any]) -> None:
        """TRL's per-row warnings, in its order and words (the text is the padded row, decoded)."""
        rows = sorted(set(missing) | set(missing_instruction))
        texts = _tokenizer.decode_padded_rows(self, examples, rows)
        for i in rows:
            if i in missing:
                warnings.warn(
                    f"Could not find response key `{self.response_template}` in the following instance: "
                    f"{texts[i]}. This instance will be ignored in loss calculation. Note, if this happens often, "
                    "consider increasing the `max_length`.",
                    UserWarning,
                    stacklevel=4,
                )
            if i in missing_instruction:
                warnings.warn(
                    f"Could not find instruction key `{self.instruction_template}` in the following instance: "
                    f"{texts[i]}. This instance will be ignored in loss calculation. Note, if this happens often, "
                    "consider increasing the `max_length`.",
                    UserWarning,
                    stacklevel=4,
                )

    def torch_call(self, examples: Sequence[Any]) -> dict[str, Any]:
        """TRL/transformers name for ``collator(examples, return_tensors="pt")``."""
        return self(examples, return_tensors="pt")

    def numpy_call(self, examples: Sequence[Any]) -> dict[str, Any]:
        """``collator(examples, return_tensors="np")`` (masked, unlike TRL's)."""
        return self(examples, return_tensors="np")

    def _report_missing(self, missing: list[int], rows: int) -> None:
        shown = ", ".join(map(str, missing[:8])) + (", …" if len(missing) > 8 else "")
        warnings.warn(
            f"{len(missing)} of {rows} examples in this batch have no response template {self.response_template!r} "
            f"(rows {shown}); all their labels are {self.ignore_index}, so they do not train. "
            "If this happens often, check the template or increase max_length.",
            MissingTemplateWarning,
            stacklevel=3,
        )

    # -- inspection --------------------------------------------------------------------------

    @property
    def stats(self) -> Stats:
        """Totals over every batch this collator has made (under ``labels="keep"``,
        ``rows_without_template`` counts rows whose given labels train nothing)."""
        return self._masker.totals

    def trained_text(self, example: Any) -> list[str]:
        """The trained parts of one example, as strings (for assertions in tests).

        >>> collator.trained_text(tokenizer.apply_chat_template(chat))
        ['Paris.<|im_end|>\\n']
        """
        from sftmask.render import trained_text

        return trained_text(self, example)

    def render(self, example: Any) -> Any:
        """Shows one example with trained tokens highlighted (HTML in Jupyter, ANSI in a terminal).

        >>> collator.render(tokenizer.apply_chat_template(chat))
        MaskView(16 tokens, 25% trained)
        """
        from sftmask.render import render_collated

        return render_collated(self, example)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(response_template={self.response_template!r}, "
            f"instruction_template={self.instruction_template!r}, padding_free={self.padding_free}, "
            f"compat={self.compat!r}, train_on={self.train_on!r}, pad_token_id={self.pad_token_id}"
            + (", labels='keep')" if self.labels == "keep" else ")")
        )

    # -- pickling (DataLoader workers with spawn, datasets.map) ------------------------------

    _STATE = (
        "tokenizer",
        "response_template",
        "instruction_template",
        "mlm",
        "ignore_index",
        "padding_free",
        "pad_to_multiple_of",
        "return_tensors",
        "compat",
        "on_missing",
        "train_on",
        "num_threads",
        "pad_token_id",
        "padding_side",
        "labels",
    )

    def __getstate__(self) -> dict[str, Any]:
        # Derived markers travel as the templates they gave, so a worker renders no probes.
        return {**{name: getattr(self, name) for name in self._STATE}, "chat_markers": self.chat_markers}

    def __setstate__(self, state: dict[str, Any]) -> None:
        tokenizer = state.pop("tokenizer")
        response = state.pop("response_template")
        instruction = state.pop("instruction_template")
        markers = state.pop("chat_markers", None)
        self.__init__(response, instruction, tokenizer=tokenizer, **state)  # type: ignore[misc]
        self.chat_markers = markers
