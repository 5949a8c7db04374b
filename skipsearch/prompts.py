"""Prompt sets for text-to-image searches: one prompt a line, a JSON list, or a COCO captions file.

Seed s samples prompt s mod P, so sample j of a search on seeds 0…N−1 gets prompt j mod P and every
trial sees the same (prompt, noise) pairs. Pure data (no torch): a study records the prompts' sha256,
and a worker reading the file on another node is refused if its prompts differ.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError

__all__ = ["Prompts", "read_prompts", "prompts_sha256", "MAX_PROMPTS"]

MAX_PROMPTS = 1_000_000  # COCO's captions are 600k; beyond that a file is a mistake
_MAX_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class Prompts:
    """The prompts a search samples (seed s: texts[s mod P]) and the negative prompt of CFG's other branch."""

    texts: tuple[str, ...]
    negative: str | None = None
    sha256: str = ""
    name: str = ""

    def __post_init__(self) -> None:
        if not self.texts:
            raise UsageError("a prompt set needs at least one prompt")

    @property
    def key(self) -> tuple[str, str | None]:
        """What makes two prompt sets give the same embeddings."""
        return (self.sha256 or "\n".join(self.texts), self.negative)

    def index(self, seed: int) -> int:
        return int(seed) % len(self.texts)


def _from_json(data: object, path: Path) -> list[str]:
    if isinstance(data, list) and all(isinstance(p, str) for p in data):
        return list(data)
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):  # COCO captions
        captions = [a.get("caption") for a in data["annotations"] if isinstance(a, dict)]
        if all(isinstance(c, str) for c in captions):
            return [c.strip() for c in captions]
    raise UsageError(f"{path}: a JSON prompts file is a list of strings or a COCO captions file "
                     "({\"annotations\": [{\"caption\": ...}]})")


def prompts_sha256(texts: Sequence[str]) -> str:
    """The fingerprint a study records: of the prompts in order, not of the file, so the same prompts
    as lines or as a JSON list are the same study."""
    return hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()


def read_prompts(path: str | os.PathLike[str], negative: str | None = None) -> Prompts:
    """The prompts in `path`: one a line (.txt and anything not JSON; blank lines skipped), a JSON
    list of strings, or a COCO captions JSON. An empty set is refused in one line."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UsageError(f"{p}: no such prompts file" if not p.exists() else f"{p} is a folder, not a prompts file")
    if p.stat().st_size > _MAX_BYTES:
        raise UsageError(f"{p}: {p.stat().st_size:,} bytes is too large for a prompts file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{p} is not UTF-8 text; give one prompt a line, a JSON list or COCO captions") from None
    if p.suffix.lower() == ".json":
        try:
            texts = _from_json(json.loads(text), p)
        except (json.JSONDecodeError, RecursionError) as e:
            raise UsageError(f"{p} is not valid JSON: {e}") from None
    else:
        texts = [line.strip() for line in text.splitlines()]
    texts = [t for t in texts if t]
    if not texts:
        raise UsageError(f"{p} holds no prompts; write one prompt a line (or a JSON list, or COCO captions)")
    if len(texts) > MAX_PROMPTS:
        raise UsageError(f"{p} holds {len(texts):,} prompts, more than {MAX_PROMPTS:,}")
    return Prompts(tuple(texts), negative or None, prompts_sha256(texts), p.name)
