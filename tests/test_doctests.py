"""The docstring examples of the package and of the compiled core run, against one small fixture:
the Qwen2.5 tokenizer shipped inside the package, with a ChatML chat template.

The core's docstrings live in the Rust source (`src/python/*.rs`), the only copy; `_core.pyi`
holds signatures. Examples that need what a test cannot have (a hub download, a model, a file
written to the working folder) carry ``+SKIP``.
"""

from __future__ import annotations

import doctest
import functools
import importlib
import inspect
import pkgutil

import pytest

import sftmask
from sftmask import _core

CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@functools.cache
def namespace() -> dict:
    from transformers import AutoTokenizer

    from sftmask._data import demo_tokenizer_dir
    from sftmask._tokenizer import _live_parts

    folder = demo_tokenizer_dir()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    tokenizer.chat_template = CHATML_TEMPLATE
    path = str(folder / "tokenizer.json")
    vocab = sftmask.Vocab.from_file(path)
    enc = sftmask.Encoder.from_json(open(path, encoding="utf-8").read())
    chat = [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}]
    ids = tokenizer.apply_chat_template(chat)
    collator = sftmask.DataCollatorForCompletionOnlyLM("<|im_start|>assistant\n", tokenizer=tokenizer)
    examples = [{"input_ids": ids}, {"input_ids": ids[:-3]}]
    return {
        "sftmask": sftmask,
        "tokenizer": tokenizer,
        "tokenizer_json": path,
        "vocab": vocab,
        "enc": enc,
        "backend": tokenizer.backend_tokenizer,
        "live_parts": _live_parts(tokenizer.backend_tokenizer),
        "vocab_ids": lambda text: enc.encode_batch([text], add_special_tokens=False)[0],
        "chat": chat,
        "ids": ids,
        "rows": [ids, ids],
        "examples": examples,
        "collator": collator,
        "batch": collator(examples),
        "labels": collator([ids])["labels"][0],
    }


def _modules():
    yield _core
    for info in pkgutil.walk_packages(sftmask.__path__, "sftmask."):
        if not info.name.endswith("__main__"):
            yield importlib.import_module(info.name)


def _tests():
    finder = doctest.DocTestFinder(exclude_empty=True)
    seen = set()
    for module in _modules():
        globs = {**vars(module), **namespace()} if module is _core else None
        for test in finder.find(module, module.__name__, globs=globs):
            # A re-exported object is found again under its importer's name: run it once.
            key = (test.filename, test.lineno, test.docstring)
            if test.examples and key not in seen:
                seen.add(key)
                yield test


def _ids():
    return [t.name for t in _tests()]


@pytest.mark.parametrize("name", _ids())
def test_docstring_examples_run(name):
    test = next(t for t in _tests() if t.name == name)
    # Module globals first, so a module's own names win; then the shared fixture.
    test.globs = {**namespace(), **test.globs}
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed (output above)"


def test_the_core_documents_every_public_item():
    """One source for each docstring: the compiled objects carry their own."""
    for name in _core.__all__:
        obj = getattr(_core, name)
        if inspect.isclass(obj) or callable(obj):
            assert obj.__doc__, f"_core.{name} has no docstring"
