"""JSON on disk for runs: plain values, atomic files, append-only JSON Lines, bounded records.

Every record a runner writes goes through :func:`to_jsonable` (numpy scalars, mappings such as
the env's timings, tuples, paths, NaN become plain JSON), so ``json.loads`` reads back what was
written. Files are written so that a kill at any instant leaves something readable:

- :func:`write_json_atomic`: through a temporary file of this process and a rename;
- :class:`JsonlLog`: one complete line per record, flushed and fsynced. A kill can leave the
  last line without its newline; the file is repaired **once, when opened**, before anything
  reads it: a complete record is kept (its newline is added), a torn one is cut (issue 13,
  item 7). So "is this step done?" and "where does the next line go?" see the same file;
- :func:`bound_record`: strings and lists in a record are capped, so one hostile action cannot
  put a 10 MB line into ``steps.jsonl``; the record says what was cut (issue 13, item 8).
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "MAX_LOG_CHARS",
    "MAX_LOG_ITEMS",
    "JsonlLog",
    "bound_record",
    "read_jsonl",
    "stable_hash",
    "to_jsonable",
    "write_json_atomic",
]

MAX_LOG_CHARS = 20_000
"""Longest string a run record keeps (a SQuAD passage is ~1-4 k characters, a 512-token
training sequence ~3 k; longer text can only come from a hostile action)."""
MAX_LOG_ITEMS = 2_000
"""Most items a list or mapping of a run record keeps."""
_MAX_DEPTH = 32  # deeper nesting in a record is cut: no RecursionError from any action


def to_jsonable(value: Any) -> Any:
    """Plain JSON types for numpy values, mappings, dataclasses, tuples, sets, paths and NaN.

    Non-finite floats become ``None``; an object JSON cannot hold becomes its ``str``, so
    a log line can always be written.

    >>> to_jsonable({"a": np.float32(0.5), "b": (1, float("nan")), 3: Path("x")})
    {'a': 0.5, 'b': [1, None], '3': 'x'}
    """
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((to_jsonable(v) for v in value), key=str)
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def dumps(value: Any, *, indent: int | None = None) -> str:
    """Strict JSON text of ``value`` (after :func:`to_jsonable`); lone surrogates kept."""
    return json.dumps(to_jsonable(value), ensure_ascii=False, allow_nan=False, indent=indent)


def stable_hash(payload: Any, n: int = 16) -> str:
    """A short sha256 of a JSON-able payload (dict keys sorted).

    >>> stable_hash({"b": 1, "a": [1, 2]}) == stable_hash({"a": [1, 2], "b": 1})
    True
    """
    text = json.dumps(to_jsonable(payload), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "backslashreplace")).hexdigest()[:n]


def write_json_atomic(path: Path, payload: Any, *, indent: int = 2) -> Path:
    """Write JSON through a temporary file and a rename: readers never see half a file.

    The temporary name carries the process id, so two writers never share one.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = dumps(payload, indent=indent).encode("utf-8", "backslashreplace")
    with tmp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)
    return path


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line.decode("utf-8", errors="replace"))
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every complete record of a JSON Lines file, read-only ([] if there is no file).

    A line that is not a JSON object (torn by a kill) is skipped; a complete last record
    without its newline counts, exactly as :class:`JsonlLog` keeps it on repair.
    """
    path = Path(path)
    if not path.is_file():
        return []
    records = (_parse(line) for line in path.read_bytes().split(b"\n") if line.strip())
    return [r for r in records if r is not None]


class JsonlLog:
    """An append-only JSON Lines file, repaired once when opened; records kept in memory.

    Args:
        path: the file (created on the first append).
        key: a field whose values :meth:`__contains__` and :meth:`get` look up.
    """

    def __init__(self, path: Path, *, key: str | None = None) -> None:
        self.path = Path(path)
        self.key = key
        self.records: list[dict[str, Any]] = []
        self._index: dict[Any, dict[str, Any]] = {}
        self._file: Any = None
        self.repaired = self._repair()
        for record in read_jsonl(self.path):
            self._remember(record)

    def _repair(self) -> str | None:
        """Finish or cut an unterminated last line; return what was done (None: nothing)."""
        if not self.path.is_file():
            return None
        with self.path.open("rb+") as handle:
            data = handle.read()
            if not data or data.endswith(b"\n"):
                return None
            start = data.rfind(b"\n") + 1
            if _parse(data[start:]) is not None:  # written whole, only the newline is missing
                handle.write(b"\n")
                return "newline added"
            handle.truncate(start)  # torn mid-record: never completed, so never counted
            return "torn line cut"

    def _remember(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if self.key is not None and self.key in record:
            self._index[record[self.key]] = record

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        """Write ``record`` as one line, flushed and fsynced; return it as written."""
        plain = to_jsonable(record)
        line = json.dumps(plain, ensure_ascii=False, allow_nan=False) + "\n"
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # backslashreplace: a lone surrogate in an agent's text is written as the JSON
            # escape \udXXX (valid UTF-8 and valid JSON) instead of failing the run.
            self._file = self.path.open("a", encoding="utf-8", errors="backslashreplace")
        self._file.write(line)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._remember(plain)
        return plain

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records)

    def __contains__(self, value: Any) -> bool:
        return value in self._index

    def get(self, value: Any) -> dict[str, Any] | None:
        """The last record whose ``key`` field equals ``value``."""
        return self._index.get(value)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def bound_record(record: dict[str, Any], *, max_chars: int = MAX_LOG_CHARS,
                 max_items: int = MAX_LOG_ITEMS) -> dict[str, Any]:
    """``record`` as plain JSON with every string, list and mapping capped.

    A string longer than ``max_chars`` (a key too) keeps its first ``max_chars`` characters;
    a list or mapping keeps its first ``max_items`` items; nesting deeper than 32 levels is
    replaced by a note. What was cut is listed under ``log_truncated``: the field paths (the
    first 20) and their original sizes.

    >>> out = bound_record({"error": "x" * 50, "ok": [1, 2]}, max_chars=10)
    >>> out["error"], out["ok"], out["log_truncated"]
    ('xxxxxxxxxx', [1, 2], {'fields': 1, 'cut': {'error': '50 characters'}})
    """
    cut: dict[str, str] = {}
    count = [0]

    def note(path: str, what: str) -> None:
        count[0] += 1
        if len(cut) < 20:
            cut[path or "."] = what

    def walk(value: Any, path: str, depth: int) -> Any:
        if isinstance(value, str):
            if len(value) > max_chars:
                note(path, f"{len(value)} characters")
                return value[:max_chars]
            return value
        if depth >= _MAX_DEPTH and isinstance(value, (dict, list)):
            note(path, f"nested deeper than {_MAX_DEPTH}")
            return None
        if isinstance(value, dict):
            if len(value) > max_items:
                note(path, f"{len(value)} keys")
            out = {}
            for i, (k, v) in enumerate(value.items()):
                if i >= max_items:
                    break
                name = k if len(k) <= max_chars else k[:max_chars]
                if name is not k:
                    note(f"{path}.<key {i}>", f"key of {len(k)} characters")
                out[name] = walk(v, f"{path}.{name[:40]}" if path else name[:40], depth + 1)
            return out
        if isinstance(value, list):
            if len(value) > max_items:
                note(path, f"{len(value)} items")
            return [walk(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value[:max_items])]
        return value

    plain = walk(_plain_shallow(record), "", 0)
    if count[0]:
        plain["log_truncated"] = {"fields": count[0], "cut": cut}
    return plain


def _plain_shallow(record: dict[str, Any]) -> Any:
    """:func:`to_jsonable` that stops at the depth :func:`bound_record` keeps."""

    def walk(value: Any, depth: int) -> Any:
        if depth > _MAX_DEPTH + 1:
            return None
        if isinstance(value, Mapping):
            return {str(k): walk(v, depth + 1) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [walk(v, depth + 1) for v in value]
        return to_jsonable(value)

    return walk(record, 0)
