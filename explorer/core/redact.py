"""What a visitor may read of a message: no server path.

Why its own module: messages are written everywhere (loaders, prompt files, the engine, transformers), and many
name files by their absolute path, which an operator needs and a visitor must not see (where the server keeps its
models, caches and benchmarks). Every text the app sends a visitor passes through `public_text` once, at the
boundary, instead of each message being written twice.

>>> public_text("cannot load '/srv/models/x': see /root/.cache/hub/config.json or https://huggingface.co/docs")
"cannot load '…/x': see …/config.json or https://huggingface.co/docs"
>>> public_text("Could not load '/etc'", keep=("/etc",))
"Could not load '/etc'"
"""

from __future__ import annotations

import re

__all__ = ["public_text"]

#: An absolute path inside a message: "/" at the start of a word (not inside a URL or a relative path), then
#: anything up to a space, a quote, a bracket, a comma or a semicolon.
_ABSOLUTE_PATH = re.compile(r"(?<![\w/:.~-])/[^\s'\"()\[\],;]+")


def public_text(message: str, keep: tuple[str, ...] = ()) -> str:
    """`message` with every absolute path cut to its last part ("…/name"); the texts in `keep` (what the visitor
    typed) are left as they are."""

    def cut(match: re.Match[str]) -> str:
        path = match.group(0)
        if path in keep:
            return path
        name = path.rstrip("/").rsplit("/", 1)[-1]
        return f"…/{name}" if name else "…"

    return _ABSOLUTE_PATH.sub(cut, message)
