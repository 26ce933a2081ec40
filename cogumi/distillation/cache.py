"""The teacher's answers on disk, keyed by what was asked: the model and the exact request.

A key is the sha256 of the backend's ``model_digest`` (for a GGUF cogumi serves, the file's
sha256, not the port of the moment; for a hosted model, its name and endpoint) and the
request as :meth:`GenerationRequest.key` states it (messages, token budget, temperature,
top-p, seed, stop strings). The API key is never part of it. An entry is written through a
temporary file and a rename (cogumi.artifacts.atomic_write_text), so a process killed while
writing leaves no entry, only a ``.*.tmp`` file that is never read; only complete answers
(no error, text present) are ever stored.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from cogumi.artifacts import atomic_write_text
from cogumi.evaluation.settings import GenerationRequest

CACHE_VERSION = 1


def request_key(model_digest: str, request: GenerationRequest) -> str:
    blob = json.dumps({"v": CACHE_VERSION, "model": model_digest, "request": request.key()},
                      sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class ExampleCache:
    """``get(key) -> dict | None`` and ``put(key, answer)`` over a folder (None: no cache)."""

    def __init__(self, folder: str | Path | None) -> None:
        self.folder = Path(folder) if folder is not None else None

    def path(self, key: str) -> Path | None:
        return self.folder / key[:2] / f"{key}.json" if self.folder is not None else None

    def get(self, key: str) -> dict[str, Any] | None:
        p = self.path(key)
        if p is None or not p.is_file():
            return None
        try:
            entry = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # unreadable: a miss, rewritten by the next answer
        if not isinstance(entry, dict) or not isinstance(entry.get("text"), str):
            return None
        return entry

    def put(self, key: str, answer: dict[str, Any]) -> None:
        p = self.path(key)
        if p is None:
            return
        if not isinstance(answer.get("text"), str):
            raise ValueError("only complete answers (with text) are cached")
        atomic_write_text(p, json.dumps(answer, ensure_ascii=False, sort_keys=True))

    def entries(self) -> list[Path]:
        """The complete entries (temporary files of an interrupted write excluded)."""
        if self.folder is None or not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.glob("*/*.json") if not p.name.startswith("."))
