"""The ``--tokenizer`` of ``sftmask check``: a folder, a ``tokenizer.json``, or a Hugging Face hub name.

A hub name is looked up in the local Hugging Face cache first (and then read like a local folder);
only when it is not there is the hub asked, and only after a quick check that the hub can be
reached at all, so that an offline machine gets one line at once instead of a minute of retries.

>>> from sftmask.check.tokenizer import Tokenizer
>>> tok = Tokenizer("./tokenizer")  # a folder with tokenizer.json  # doctest: +SKIP
>>> tok.info.pad_token_id  # doctest: +SKIP
151643
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from sftmask.check.errors import CheckError, first_line

#: Seconds the connectivity check waits for the hub (DNS and TCP connect) before calling it offline.
PROBE_TIMEOUT = 3.0


class Tokenizer:
    """The ``--tokenizer`` argument: a folder, a tokenizer.json, or a transformers name."""

    def __init__(self, spec: str):
        self.spec = spec
        path = Path(spec)
        self.path: Path | None = path if path.exists() else None
        self._hf: Any = None
        if self.path is None and _looks_like_hub_name(spec):
            self.path = _cached_snapshot(spec)  # read like a local folder: no network at all
        if self.path is not None:
            file = self.path / "tokenizer.json" if self.path.is_dir() else self.path
            if not file.is_file():
                raise CheckError(f"no tokenizer.json in {spec}")
            self.target: Any = self.path
        elif not _looks_like_hub_name(spec):
            raise CheckError(f"no such tokenizer file or folder: {spec}")
        else:
            self.target = self.transformers()  # a hub name (from the local cache, or downloaded)
        from sftmask import _tokenizer

        try:
            self.info = _tokenizer.resolve(self.target)
        except (ValueError, TypeError, OSError) as e:
            raise CheckError(f"cannot read the tokenizer {spec}: {first_line(e)}") from None

    def transformers(self) -> Any:
        """The transformers tokenizer (for the chat template), loaded on first use."""
        if self._hf is None:
            try:
                from transformers import AutoTokenizer, PreTrainedTokenizerFast
            except ImportError:
                raise CheckError("rendering messages needs transformers: pip install transformers") from None
            with _quiet():
                if self.path is None:
                    self._hf = _from_hub(AutoTokenizer, self.spec)
                else:
                    where = str(self.path if self.path.is_dir() else self.path.parent)
                    try:
                        try:
                            self._hf = AutoTokenizer.from_pretrained(where)
                        except Exception:
                            # A folder without a model config: tokenizer.json, plus tokenizer_config.json
                            # or chat_template.jinja for the chat template when there is one.
                            self._hf = PreTrainedTokenizerFast.from_pretrained(where)
                    except Exception as e:
                        raise CheckError(
                            f"cannot load the tokenizer {self.spec} with transformers: {first_line(e)}"
                        ) from None
        return self._hf

    def chat_template_renderer(self) -> Callable[[list[Any]], list[str]]:
        """A function rendering a list of conversations to strings with the chat template."""
        tok = self.transformers()
        if not getattr(tok, "chat_template", None):
            raise CheckError(
                f"the tokenizer {self.spec} has no chat template (tokenizer_config.json 'chat_template' or "
                "chat_template.jinja), so the 'messages' column cannot be rendered: render it into a 'text' "
                "column, or use a tokenizer that has one"
            )

        def render(conversations: list[Any]) -> list[str]:
            return list(tok.apply_chat_template(conversations, tokenize=False))

        return render


def _looks_like_hub_name(spec: str) -> bool:
    return not (spec.startswith(("/", ".", "~")) or spec.endswith(".json") or spec.count("/") > 1)


def _cached_snapshot(name: str) -> Path | None:
    """The folder of ``name``'s tokenizer in the local Hugging Face cache, if it is there.

    ``huggingface_hub.try_to_load_from_cache`` only looks at the disk. (transformers'
    ``from_pretrained(name, local_files_only=True)`` is no substitute: 4.57 still asks the hub
    about the model for its Mistral regex check.)
    """
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(name, "tokenizer.json")
    except Exception:  # a malformed name (huggingface_hub validates repo ids)
        return None
    return Path(found).parent if isinstance(found, str) else None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """transformers' and huggingface_hub's warnings (retries, deprecations) silenced: our own one line
    says what went wrong."""
    from huggingface_hub.utils import logging as hub_logging  # a dependency of transformers
    from transformers.utils import logging as hf_logging

    verbosity, hub_verbosity = hf_logging.get_verbosity(), hub_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hub_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        hub_logging.set_verbosity(hub_verbosity)


def _from_hub(auto: Any, name: str) -> Any:
    """``auto.from_pretrained(name)`` for a name not in the local cache (:func:`_cached_snapshot`):
    from the hub if it answers within :data:`PROBE_TIMEOUT` seconds; one :class:`CheckError` line
    otherwise."""
    if _offline_mode():
        raise CheckError(
            f"the tokenizer {name} is not in the local Hugging Face cache and offline mode is on "
            "(HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE): download it first, or pass a local folder"
        )
    unreachable = _hub_unreachable()
    if unreachable is not None:
        raise CheckError(
            f"the tokenizer {name} is not in the local Hugging Face cache and {unreachable}: "
            "connect to the network, or pass a local folder with tokenizer.json"
        )
    try:
        return auto.from_pretrained(name)
    except Exception as e:
        raise CheckError(f"cannot load the tokenizer {name} with transformers: {first_line(e)}") from None


def _offline_mode() -> bool:
    try:
        from transformers.utils import is_offline_mode

        return bool(is_offline_mode())
    except ImportError:  # pragma: no cover - older transformers
        return any(os.environ.get(k, "").upper() in ("1", "ON", "YES", "TRUE") for k in ("HF_HUB_OFFLINE",))


def _hub_unreachable(timeout: float = PROBE_TIMEOUT) -> str | None:
    """``None`` when a TCP connection to the hub (or the HTTPS proxy in front of it) opens within
    ``timeout`` seconds, else why not, in words."""
    try:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    except ImportError:  # pragma: no cover
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    target, through = (host, port), ""
    proxy = urllib.request.getproxies().get(url.scheme or "https")
    if proxy and not urllib.request.proxy_bypass(host):
        p = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        if p.hostname:
            target, through = (p.hostname, p.port or 80), f" through the proxy {p.hostname}"
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            socket.create_connection(target, timeout=timeout).close()
            outcome.append(None)
        except OSError as e:
            outcome.append(e.strerror or type(e).__name__)

    # getaddrinfo has no timeout of its own: a daemon thread bounds the whole probe.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    if outcome and outcome[0] is None:
        return None
    why = outcome[0] if outcome else f"no answer within {timeout:g} s"
    return f"{host} cannot be reached{through} ({why})"
