"""The baseline cache: each passage's no-adapter answers and metrics, computed once.

A step compares the adapted model with the base model on the same questions. The base
model's answers depend only on (model, passage, grader, answer length, answer prompt), so the
env keys them by those and keeps them here: in memory, and in a directory shared by runs and
processes when one is configured (``env.baseline_cache``).

A cache file is never trusted (issue 13, item 3): :meth:`BaselineCache.get` validates every
entry -- a JSON object with exactly ``answers`` (the expected number of strings) and
``metrics`` (the expected grader names, each a finite number in [0, 1]) -- and treats
anything else as a miss (``{}``, ``null``, bytes that are not UTF-8, a metric of 7.0 or
NaN, a wrong count, a directory or a FIFO where the file belongs). The env recomputes the
entry and :meth:`BaselineCache.put` replaces the bad file. Writes are atomic, through a
temporary file with a name unique to the writer in the same directory, so concurrent
writers never share a temporary file and readers never see half an entry.

Policy for a directory that cannot be used (checked once, when the cache is built, by
creating, reading back and deleting a probe file -- as root, permission bits alone do not
tell): a directory given explicitly raises :class:`~selfedit.envs.config.ConfigError` before
the run starts, naming ``env.baseline_cache`` and the fix; the default (``"auto"``, under
``$SELFEDIT_CACHE`` or ``~/.cache/selfedit``) falls back to memory with a warning, so that
``gymnasium.make("selfedit/SQuAD-v0")`` still works in a read-only home. A write that fails
later (disk full, directory removed) warns once and keeps the entry in memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import numbers
import os
import re
import stat
import tempfile
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfedit.envs.config import ConfigError

__all__ = ["MAX_ENTRY_BYTES", "BaselineCache", "BaselineEntry"]

# An entry holds one short answer per question of a passage (answers are cut to
# answer_max_tokens): a few kilobytes. A file far larger is not one of ours.
MAX_ENTRY_BYTES = 8 * 1024 * 1024
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]{0,150}")
_JSON_STRING = re.compile(rb'"[^"\\]*+(?:\\[\s\S][^"\\]*+)*+"')
_SETTING = "env.baseline_cache"


@dataclass(frozen=True)
class BaselineEntry:
    """The base model's answers to a passage's questions, and their mean score per grader.

    Example:
        >>> entry = BaselineEntry(["Paris."], {"contains": 1.0})
        >>> entry.answers, entry.to_dict()
        (('Paris.',), {'answers': ['Paris.'], 'metrics': {'contains': 1.0}})
    """

    answers: tuple[str, ...]
    metrics: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problem = _entry_problem({"answers": self.answers, "metrics": self.metrics}, None, None)
        if problem:
            raise ValueError(f"invalid baseline entry: {problem}")
        object.__setattr__(self, "answers", tuple(self.answers))
        object.__setattr__(self, "metrics", {k: float(v) for k, v in self.metrics.items()})

    def to_dict(self) -> dict[str, Any]:
        return {"answers": list(self.answers), "metrics": dict(self.metrics)}


def _entry_problem(raw: Any, n_answers: int | None, graders: frozenset[str] | None) -> str:
    """Why ``raw`` is not a valid entry (empty string if it is)."""
    if not isinstance(raw, Mapping):
        return f"expected a JSON object, got {type(raw).__name__}"
    if set(raw) != {"answers", "metrics"}:
        return f"expected the keys answers and metrics, got {sorted(map(str, raw))[:8]}"
    answers, metrics = raw["answers"], raw["metrics"]
    if not isinstance(answers, (list, tuple)) or not all(isinstance(a, str) for a in answers):
        return "answers must be a list of strings"
    if n_answers is not None and len(answers) != n_answers:
        return f"{len(answers)} answers for {n_answers} questions"
    if not isinstance(metrics, Mapping) or not all(isinstance(k, str) for k in metrics):
        return "metrics must map grader names to numbers"
    if graders is not None and set(metrics) != graders:
        return f"metrics for {sorted(metrics)[:8]}, expected {sorted(graders)}"
    for name, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return f"metric {name!r} is not a number"
        if not (math.isfinite(float(value)) and 0.0 <= float(value) <= 1.0):
            return f"metric {name!r} is {float(value)!r}, outside [0, 1]"
    return ""


class BaselineCache:
    """Baseline entries by key, in memory and optionally in a directory.

    Args:
        directory: where entries are stored as ``<key>.json``; ``None`` keeps them in memory
            only.
        fallback_to_memory: when ``directory`` cannot be created, written or read, warn and
            keep entries in memory instead of raising ``ConfigError``.

    Counters (for tests and benchmarks): ``hits`` (memory or disk), ``disk_hits``,
    ``misses``, ``invalid`` (files that did not validate), ``writes``, ``write_errors``.

    Example:
        >>> cache = BaselineCache(None)
        >>> cache.get("k", n_answers=1, graders={"contains"}) is None
        True
        >>> _ = cache.put("k", BaselineEntry(["Paris."], {"contains": 1.0}))
        >>> cache.get("k", n_answers=1, graders={"contains"}).answers, cache.hits
        (('Paris.',), 1)
    """

    def __init__(self, directory: str | Path | None, *, fallback_to_memory: bool = False) -> None:
        self.memory: dict[str, BaselineEntry] = {}
        self.hits = self.disk_hits = self.misses = self.invalid = 0
        self.writes = self.write_errors = 0
        self.directory: Path | None = None
        self.fallback_reason = ""  # why the configured directory is not used, if it is not
        if directory is None:
            return
        path = Path(directory).expanduser()
        problem = _unusable(path)
        if not problem:
            self.directory = path
        elif fallback_to_memory:
            self.fallback_reason = problem
            warnings.warn(
                f"{_SETTING}: {path} cannot be used ({problem}); baselines are kept in memory"
                f" for this run only. Set {_SETTING} to a writable directory, or to null to"
                " silence this warning.",
                RuntimeWarning,
                stacklevel=2,
            )
        else:
            raise ConfigError(
                f"{_SETTING}={str(path)!r} cannot be used: {problem}. Point {_SETTING} at a"
                " writable directory, or set it to null to keep baselines in memory only."
            )

    @classmethod
    def from_setting(cls, setting: str | Path | None) -> BaselineCache:
        """The cache ``env.baseline_cache`` asks for.

        ``None`` (YAML ``null``): memory only. ``"auto"``: ``<cache root>/baselines`` (the
        cache root is ``$SELFEDIT_CACHE`` or ``~/.cache/selfedit``), falling back to memory
        with a warning when unusable. Any other path: that directory, or a ``ConfigError``.
        """
        if setting is None:
            return cls(None)
        if setting == "auto":
            from selfedit.envs.backend import cache_root  # the heavy module, only when needed

            return cls(cache_root() / "baselines", fallback_to_memory=True)
        if not isinstance(setting, (str, Path)) or not str(setting).strip():
            raise ConfigError(
                f"{_SETTING} must be a directory, 'auto' or null, got {setting!r}"
            )
        return cls(setting)

    # -- reading ------------------------------------------------------------------------
    def get(
        self, key: str, *, n_answers: int | None = None, graders: Iterable[str] | None = None
    ) -> BaselineEntry | None:
        """The valid entry for ``key``, or None (a miss: compute it, then :meth:`put` it).

        Args:
            key: the env's cache key.
            n_answers: the number of questions; an entry with another count is a miss.
            graders: the grader names the metrics must have, exactly; None skips the check.
        """
        expected = frozenset(graders) if graders is not None else None
        entry = self.memory.get(key)
        if entry is not None and not _entry_problem(entry.to_dict(), n_answers, expected):
            self.hits += 1
            return entry
        entry = self._read(key, n_answers, expected)
        if entry is None:
            self.misses += 1
            return None
        self.memory[key] = entry
        self.hits += 1
        self.disk_hits += 1
        return entry

    def _read(
        self, key: str, n_answers: int | None, graders: frozenset[str] | None
    ) -> BaselineEntry | None:
        path = self.path_for(key)
        if path is None:
            return None
        try:
            # Non-blocking: a FIFO planted where the file belongs must not hang the step.
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        except FileNotFoundError:
            return None
        except OSError:
            self.invalid += 1
            return None
        try:
            with os.fdopen(fd, "rb") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    self.invalid += 1
                    return None
                data = f.read(MAX_ENTRY_BYTES + 1)
        except OSError:
            self.invalid += 1
            return None
        if len(data) > MAX_ENTRY_BYTES or not _shallow(data):
            self.invalid += 1
            return None
        try:
            raw = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            self.invalid += 1
            return None
        if _entry_problem(raw, n_answers, graders):
            self.invalid += 1
            return None
        return BaselineEntry(tuple(raw["answers"]), raw["metrics"])

    # -- writing ------------------------------------------------------------------------
    def put(self, key: str, entry: BaselineEntry | Mapping[str, Any]) -> BaselineEntry:
        """Store ``entry`` under ``key`` (replacing a bad file); returns it as a BaselineEntry.

        Raises:
            ValueError: the entry itself is invalid (for example a grader returned NaN):
                caching it would poison every later step on the passage.
        """
        if not isinstance(entry, BaselineEntry):
            problem = _entry_problem(entry, None, None)
            if problem:
                raise ValueError(f"invalid baseline entry for {key!r}: {problem}")
            entry = BaselineEntry(tuple(entry["answers"]), entry["metrics"])
        self.memory[key] = entry
        path = self.path_for(key)
        if path is not None:
            try:
                self._write(path, entry)
                self.writes += 1
            except OSError as err:
                self.write_errors += 1
                if self.write_errors == 1:
                    warnings.warn(
                        f"{_SETTING}: could not write {path} ({err}); the entry is kept in"
                        " memory (further write errors are counted, not shown)",
                        RuntimeWarning,
                        stacklevel=2,
                    )
        return entry

    def _write(self, path: Path, entry: BaselineEntry) -> None:
        data = json.dumps(entry.to_dict(), ensure_ascii=False).encode("utf-8", "backslashreplace")
        if path.is_dir() and not path.is_symlink():
            _move_aside(path)  # a directory where the file belongs: os.replace cannot
        # mkstemp: a name no other writer (thread or process) can be given, in the same
        # directory so that os.replace is an atomic rename.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    # -- housekeeping -------------------------------------------------------------------
    def path_for(self, key: str) -> Path | None:
        """The file of ``key`` (None when memory only): the key itself if it is a safe file
        name, else a safe prefix of it plus a hash of the whole key."""
        if self.directory is None:
            return None
        if _SAFE_NAME.fullmatch(key):
            return self.directory / f"{key}.json"
        safe = re.sub(r"[^A-Za-z0-9._+=-]", "_", key[:100]).lstrip(".-") or "key"
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        return self.directory / f"{safe}-{digest}.json"

    def clear(self) -> None:
        """Forget the entries held in memory (the directory is left as it is)."""
        self.memory.clear()

    def __len__(self) -> int:
        return len(self.memory)

    def __repr__(self) -> str:
        where = str(self.directory) if self.directory else "memory only"
        return (f"BaselineCache({where}, hits={self.hits}, misses={self.misses},"
                f" invalid={self.invalid})")


def _shallow(data: bytes) -> bool:
    """Whether ``data`` has at most the three brackets of an entry outside its strings.

    Checked before decoding: a file nested a million deep would make the decoder recurse
    until RecursionError, or crash the process if an agent raised the recursion limit.
    """
    skeleton = _JSON_STRING.sub(b'""', data)
    return skeleton.count(b"{") + skeleton.count(b"[") <= 3


def _unusable(path: Path) -> str:
    """Why ``path`` cannot hold the cache (empty string if it can), found by trying."""
    if path.exists() and not path.is_dir():
        return "it is a file, not a directory"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        return f"the directory cannot be created ({err.strerror or err})"
    try:
        fd, probe = tempfile.mkstemp(dir=path, prefix=".probe-", suffix=".tmp")
    except OSError as err:
        return f"the directory is not writable ({err.strerror or err})"
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(b"{}")
        with open(probe, "rb") as f:
            if f.read() != b"{}":
                return "a file written there reads back differently"
    except OSError as err:
        return f"files there cannot be written and read back ({err.strerror or err})"
    finally:
        with contextlib.suppress(OSError):
            os.unlink(probe)
    return ""


def _move_aside(path: Path) -> None:
    try:
        path.rmdir()  # empty: just remove it
    except OSError:
        suffix = hashlib.sha256(os.urandom(8)).hexdigest()[:8]
        path.rename(path.with_name(f"{path.name}.invalid-{suffix}"))
