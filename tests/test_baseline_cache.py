"""Issue 13, item 3: the baseline cache validates what it reads and writes atomically."""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import pytest

from selfedit.envs.baseline_cache import MAX_ENTRY_BYTES, BaselineCache, BaselineEntry
from selfedit.envs.config import ConfigError

GRADERS = {"contains", "exact_match", "f1"}
ENTRY = BaselineEntry(("Paris.", "In 1901."),
                      {"contains": 0.5, "exact_match": 0.0, "f1": 0.25})
KEY = "tiny-0123456789ab-fedcba9876543210-contains-24-1a2b3c4d"
EXPECT: dict[str, Any] = {"n_answers": 2, "graders": GRADERS}


def _valid(**change: Any) -> dict[str, Any]:
    return {**ENTRY.to_dict(), **change}


def test_memory_only_when_no_directory() -> None:
    cache = BaselineCache(None)
    assert cache.directory is None and cache.path_for(KEY) is None
    assert cache.get(KEY, **EXPECT) is None and cache.misses == 1
    assert cache.put(KEY, ENTRY.to_dict()) == ENTRY
    assert cache.get(KEY, **EXPECT) == ENTRY and cache.hits == 1 and cache.disk_hits == 0
    cache.clear()
    assert cache.get(KEY, **EXPECT) is None


def test_entries_survive_in_the_directory(tmp_path: Path) -> None:
    BaselineCache(tmp_path).put(KEY, ENTRY)
    assert [p.name for p in tmp_path.iterdir()] == [f"{KEY}.json"]  # no temporary left
    fresh = BaselineCache(tmp_path)
    assert fresh.get(KEY, **EXPECT) == ENTRY
    assert (fresh.hits, fresh.disk_hits, fresh.misses, fresh.invalid) == (1, 1, 0, 0)
    assert fresh.get(KEY, **EXPECT) == ENTRY and fresh.disk_hits == 1  # now from memory


# Every way a file can fail to be an entry; each must be a miss, then be replaced by put().
BAD_CONTENT: dict[str, bytes] = {
    "empty object": b"{}",
    "null": b"null",
    "a number": b"7.0",
    "a list": b"[]",
    "empty file": b"",
    "not UTF-8": b"\xff\xfe{\x00",
    "truncated JSON": json.dumps(ENTRY.to_dict()).encode()[:-5],
    "metric 7.0": json.dumps(_valid(metrics={**ENTRY.metrics, "f1": 7.0})).encode(),
    "metric NaN": json.dumps(_valid(metrics={**ENTRY.metrics, "f1": float("nan")})).encode(),
    "metric Infinity": json.dumps(_valid(metrics={**ENTRY.metrics, "f1": float("inf")})).encode(),
    "metric negative": json.dumps(_valid(metrics={**ENTRY.metrics, "f1": -0.1})).encode(),
    "metric true": json.dumps(_valid(metrics={**ENTRY.metrics, "f1": True})).encode(),
    "metric text": json.dumps(_valid(metrics={**ENTRY.metrics, "f1": "0.5"})).encode(),
    "metric null": json.dumps(_valid(metrics={**ENTRY.metrics, "f1": None})).encode(),
    "a grader missing": json.dumps(_valid(metrics={"contains": 0.5, "f1": 0.2})).encode(),
    "a grader extra": json.dumps(_valid(metrics={**ENTRY.metrics, "judge": 1.0})).encode(),
    "metrics a list": json.dumps(_valid(metrics=[0.5])).encode(),
    "too few answers": json.dumps(_valid(answers=["Paris."])).encode(),
    "too many answers": json.dumps(_valid(answers=["a", "b", "c"])).encode(),
    "answers not strings": json.dumps(_valid(answers=["Paris.", 1901])).encode(),
    "answers a string": json.dumps(_valid(answers="Paris.")).encode(),
    "an extra key": json.dumps(_valid(error="x")).encode(),
    "answers missing": json.dumps({"metrics": ENTRY.metrics}).encode(),
    "deeply nested": b"[" * 100_000 + b"]" * 100_000,
    "a metric nested deep": json.dumps(_valid()).encode().replace(
        b"0.25", b"[" * 10**5 + b"]" * 10**5),
    "larger than the cap": b'{"answers": ["' + b"a" * MAX_ENTRY_BYTES + b'"], "metrics": {}}',
}


@pytest.mark.parametrize("name", list(BAD_CONTENT))
def test_a_bad_file_is_a_miss_and_put_replaces_it(tmp_path: Path, name: str) -> None:
    cache = BaselineCache(tmp_path)
    path = cache.path_for(KEY)
    assert path is not None
    path.write_bytes(BAD_CONTENT[name])
    assert cache.get(KEY, **EXPECT) is None
    assert (cache.misses, cache.invalid, cache.hits) == (1, 1, 0)
    cache.put(KEY, ENTRY)
    assert json.loads(path.read_text()) == ENTRY.to_dict()
    assert BaselineCache(tmp_path).get(KEY, **EXPECT) == ENTRY


def test_answers_may_hold_brackets_quotes_and_any_text(tmp_path: Path) -> None:
    odd = BaselineEntry(('{"a": [1, 2]} \\" [[[', "caf\u00e9 \U0001f600 \x00 ]]}}"),
                        {"contains": 0.0, "exact_match": 1.0, "f1": 0.5})
    BaselineCache(tmp_path).put(KEY, odd)
    assert BaselineCache(tmp_path).get(KEY, **EXPECT) == odd


@pytest.mark.parametrize("content", ["empty", "non-empty"])
def test_a_directory_where_the_file_belongs(tmp_path: Path, content: str) -> None:
    cache = BaselineCache(tmp_path)
    path = cache.path_for(KEY)
    assert path is not None
    path.mkdir()
    if content == "non-empty":
        (path / "something").write_text("kept")
    assert cache.get(KEY, **EXPECT) is None and cache.invalid == 1
    cache.put(KEY, ENTRY)
    assert path.is_file() and BaselineCache(tmp_path).get(KEY, **EXPECT) == ENTRY
    if content == "non-empty":  # moved aside, not deleted
        (aside,) = tmp_path.glob(f"{path.name}.invalid-*")
        assert (aside / "something").read_text() == "kept"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_where_the_file_belongs_does_not_hang(tmp_path: Path) -> None:
    cache = BaselineCache(tmp_path)
    path = cache.path_for(KEY)
    assert path is not None
    os.mkfifo(path)  # opening it for reading would block until a writer came
    assert cache.get(KEY, **EXPECT) is None and cache.invalid == 1
    cache.put(KEY, ENTRY)
    assert stat.S_ISREG(path.stat().st_mode)


def test_symlinks_are_followed_for_reading_and_replaced_for_writing(tmp_path: Path) -> None:
    cache = BaselineCache(tmp_path / "cache")
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps(ENTRY.to_dict()))
    path = cache.path_for(KEY)
    assert path is not None
    path.symlink_to(elsewhere)
    assert cache.get(KEY, **EXPECT) == ENTRY
    loop = cache.path_for("loop")
    assert loop is not None
    loop.symlink_to(loop)  # ELOOP on open
    assert cache.get("loop") is None and cache.invalid == 1
    cache.put("loop", ENTRY)
    assert not loop.is_symlink() and json.loads(loop.read_text()) == ENTRY.to_dict()
    cache.put(KEY, BaselineEntry(("x", "y"), ENTRY.metrics))
    assert json.loads(elsewhere.read_text()) == ENTRY.to_dict()  # the target is untouched


def test_concurrent_writers_never_share_a_temporary_file(tmp_path: Path) -> None:
    # The old writer used <key>.tmp: two writers renamed each other's file (FileNotFoundError)
    # or a reader saw a mixed file. Threads here, processes alike: mkstemp names are unique.
    caches = [BaselineCache(tmp_path) for _ in range(4)]
    entries = [BaselineEntry((f"answer {i}", "b"), {"contains": i / 4}) for i in range(4)]
    errors: list[BaseException] = []
    seen: set[str] = set()
    start = threading.Barrier(5)

    def write(i: int) -> None:
        start.wait()
        try:
            for _ in range(100):
                caches[i].put(KEY, entries[i])
        except BaseException as err:  # noqa: BLE001 - collected and asserted below
            errors.append(err)

    def read() -> None:
        reader = BaselineCache(tmp_path)
        start.wait()
        for _ in range(300):
            reader.clear()
            entry = reader.get(KEY, n_answers=2, graders={"contains"})
            if entry is not None:
                seen.add(entry.answers[0])
        if reader.invalid:
            errors.append(AssertionError(f"a reader saw {reader.invalid} partial files"))

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    threads.append(threading.Thread(target=read))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sum(c.writes for c in caches) == 400 and not any(c.write_errors for c in caches)
    assert [p.name for p in tmp_path.iterdir()] == [f"{KEY}.json"]  # no temporary left over
    final = BaselineCache(tmp_path).get(KEY, n_answers=2, graders={"contains"})
    assert final in entries and seen <= {e.answers[0] for e in entries}


def test_an_invalid_entry_is_never_cached() -> None:
    cache = BaselineCache(None)
    for bad, message in [
        (_valid(metrics={"contains": float("nan")}), "metric 'contains' is nan"),
        (_valid(metrics={"contains": 1.5}), "outside \\[0, 1\\]"),
        (_valid(answers=[1]), "answers must be a list of strings"),
        ({"answers": []}, "expected the keys answers and metrics"),
    ]:
        with pytest.raises(ValueError, match=message):
            cache.put(KEY, bad)
    with pytest.raises(ValueError, match="invalid baseline entry"):
        BaselineEntry(("a",), {"f1": float("inf")})
    assert len(cache) == 0


def test_memory_entries_are_checked_against_what_the_caller_expects() -> None:
    cache = BaselineCache(None)
    cache.put(KEY, ENTRY)
    assert cache.get(KEY, n_answers=3, graders=GRADERS) is None  # another question count
    assert cache.get(KEY, n_answers=2, graders={"contains"}) is None  # another grader set
    assert cache.get(KEY) == ENTRY  # no expectation: any valid entry


@pytest.mark.parametrize("key", ["../../escape", "/abs/path", "a/b", "nul\x00byte", ".hidden",
                                 "x" * 1000, "sp ace", "\ud800", "é"])
def test_any_key_maps_to_a_file_inside_the_directory(tmp_path: Path, key: str) -> None:
    cache = BaselineCache(tmp_path)
    path = cache.path_for(key)
    assert path is not None and path.parent == tmp_path and len(path.name) < 200
    assert not path.name.startswith(".")
    cache.put(key, ENTRY)
    assert BaselineCache(tmp_path).get(key, **EXPECT) == ENTRY
    assert cache.path_for(key + "!") != path  # distinct keys, distinct files


# -- an unusable directory: a ConfigError for an explicit one, memory for the default -----------
def _unusable_paths(tmp_path: Path) -> dict[str, Path]:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    return {"a file in place of the directory": a_file,
            "a path under a regular file": a_file / "baselines"}


@pytest.mark.parametrize("case", ["a file in place of the directory",
                                  "a path under a regular file"])
def test_an_unusable_directory_is_a_clear_config_error(tmp_path: Path, case: str) -> None:
    path = _unusable_paths(tmp_path)[case]
    with pytest.raises(ConfigError, match="env.baseline_cache=.*cannot be used") as err:
        BaselineCache(path)
    assert "set it to null" in str(err.value) and str(path) in str(err.value)
    with pytest.raises(ConfigError):
        BaselineCache.from_setting(str(path))


@pytest.mark.parametrize("case", ["a file in place of the directory",
                                  "a path under a regular file"])
def test_the_default_falls_back_to_memory_with_a_warning(tmp_path: Path, case: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    root = _unusable_paths(tmp_path)[case]
    monkeypatch.setenv("SELFEDIT_CACHE", str(root))
    with pytest.warns(RuntimeWarning, match="baselines are kept in memory"):
        cache = BaselineCache.from_setting("auto")
    assert cache.directory is None and cache.fallback_reason
    cache.put(KEY, ENTRY)
    assert cache.get(KEY, **EXPECT) == ENTRY


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0,
                    reason="permission bits do not bind root (the tests run as root here)")
def test_a_read_only_directory_is_refused(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="not writable"):
            BaselineCache(ro)
    finally:
        ro.chmod(0o700)


@pytest.mark.skipif(not Path("/sys/fs").is_dir(), reason="needs Linux sysfs")
def test_a_directory_even_root_cannot_write_is_refused() -> None:
    # sysfs refuses new files to every user, root included: a truly unwritable directory
    # that the probe write (not os.access, which says yes to root) detects.
    with pytest.raises(ConfigError, match="not writable|cannot be created"):
        BaselineCache("/sys/fs")
    with pytest.warns(RuntimeWarning):
        assert BaselineCache("/sys/fs", fallback_to_memory=True).directory is None


def test_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert BaselineCache.from_setting(None).directory is None
    monkeypatch.setenv("SELFEDIT_CACHE", str(tmp_path / "root"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a usable default warns about nothing
        assert BaselineCache.from_setting("auto").directory == tmp_path / "root" / "baselines"
    assert BaselineCache.from_setting(str(tmp_path / "x")).directory == tmp_path / "x"
    for bad in ("", "  ", 5, ["a"]):
        with pytest.raises(ConfigError, match="must be a directory, 'auto' or null"):
            BaselineCache.from_setting(bad)  # type: ignore[arg-type]


def test_a_write_that_fails_later_warns_once_and_keeps_the_entry(tmp_path: Path) -> None:
    cache = BaselineCache(tmp_path / "cache")
    shutil.rmtree(tmp_path / "cache")  # removed while the run goes on
    with pytest.warns(RuntimeWarning, match="could not write"):
        cache.put(KEY, ENTRY)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cache.put("another", ENTRY)  # counted, not shown again
    assert cache.write_errors == 2 and cache.get(KEY, **EXPECT) == ENTRY
