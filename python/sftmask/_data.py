"""The data shipped inside the package: a real tokenizer and a sample chat set, for the demo."""

from __future__ import annotations

import json
import lzma
import os
import tempfile
from importlib import resources
from pathlib import Path

DEMO_TOKENIZER = "qwen2.5-tokenizer.json.xz"
DEMO_TOKENIZER_CONFIG = "qwen2.5-tokenizer_config.json"
SAMPLE_CHATS = "sample_chats.jsonl"

# ChatML, as Qwen2.5 writes it.
CHATML_RESPONSE = "<|im_start|>assistant\n"
CHATML_INSTRUCTIONS = ["<|im_start|>user\n", "<|im_start|>system\n", "<|im_start|>tool\n"]


def _data_file(name: str) -> bytes:
    return resources.files("sftmask").joinpath("data", name).read_bytes()


def demo_tokenizer_dir() -> Path:
    """A folder with the embedded Qwen2.5 ``tokenizer.json`` (unpacked once into a cache).

    >>> from sftmask._data import demo_tokenizer_dir
    >>> (demo_tokenizer_dir() / "tokenizer.json").is_file()
    True
    """
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    folder = Path(base) / "sftmask" / "qwen2.5-tokenizer"
    target = folder / "tokenizer.json"
    if not target.is_file():
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            folder = Path(tempfile.mkdtemp(prefix="sftmask-"))
            target = folder / "tokenizer.json"
        # Write beside, then rename: a concurrent reader never sees half a file.
        tmp = folder / f".tokenizer.json.{os.getpid()}"
        tmp.write_bytes(lzma.decompress(_data_file(DEMO_TOKENIZER)))
        (folder / "tokenizer_config.json").write_bytes(_data_file(DEMO_TOKENIZER_CONFIG))
        os.replace(tmp, target)
    return folder


def sample_chats() -> list[dict]:
    """The demo's conversations: a list of ``{"messages": [{"role", "content"}, …]}``."""
    lines = _data_file(SAMPLE_CHATS).decode("utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def render_chatml(messages: list[dict]) -> str:
    """Renders messages in ChatML (Qwen2.5's chat format)."""
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
