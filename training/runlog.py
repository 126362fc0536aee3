"""Run outputs: a JSONL record per step, TensorBoard events, the resolved config.

``steps.jsonl`` is appended one complete line at a time and flushed, so a run killed at any
instant leaves a readable file; a torn last line is ignored on resume.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["RunLogger", "read_steps", "to_jsonable"]


def to_jsonable(value: Any) -> Any:
    """Plain JSON types for numpy scalars, mappings (timings), tuples and NaN."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_steps(path: Path) -> list[dict[str, Any]]:
    """Every complete record of a steps.jsonl (a torn last line from a kill is skipped)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line that a kill left unfinished, so the next append starts clean."""
    if not path.is_file():
        return
    with path.open("rb+") as handle:
        data = handle.read()
        if data and not data.endswith(b"\n"):
            handle.truncate(data.rfind(b"\n") + 1)


class RunLogger:
    """Writes one run directory: steps.jsonl and TensorBoard events per agent."""

    def __init__(self, run_dir: Path, *, tensorboard: bool = True) -> None:
        self.run_dir = run_dir
        self.steps_path = run_dir / "steps.jsonl"
        _drop_torn_tail(self.steps_path)
        # backslashreplace: a lone surrogate in an agent's text is written as the JSON escape
        # \udXXX (still valid UTF-8 and valid JSON) instead of failing the run.
        self._file = self.steps_path.open("a", encoding="utf-8", errors="backslashreplace")
        self._tensorboard = tensorboard
        self._writers: dict[str, Any] = {}
        self._counts: dict[str, int] = {}
        for record in read_steps(self.steps_path):  # resume: continue the step counters
            self._counts[record["agent"]] = self._counts.get(record["agent"], 0) + 1

    def _writer(self, agent: str) -> Any:
        if agent not in self._writers:
            from torch.utils.tensorboard import SummaryWriter

            self._writers[agent] = SummaryWriter(log_dir=str(self.run_dir / "tb" / agent))
        return self._writers[agent]

    def log_step(self, record: dict[str, Any]) -> None:
        line = json.dumps(to_jsonable(record), ensure_ascii=False)
        self._file.write(line + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        agent = record["agent"]
        step = self._counts.get(agent, 0)
        self._counts[agent] = step + 1
        if self._tensorboard:
            self._log_tensorboard(agent, step, record)

    def _log_tensorboard(self, agent: str, step: int, record: dict[str, Any]) -> None:
        w = self._writer(agent)
        w.add_scalar("reward/value", record["reward"], step)
        w.add_scalar("reward/invalid", float(record.get("error") is not None), step)
        if record.get("error") is None:
            w.add_scalar("accuracy/adapted", record["accuracy"], step)
            w.add_scalar("accuracy/base", record["base_accuracy"], step)
            w.add_scalar("accuracy/gain", record["gain"], step)
            w.add_scalar("accuracy/normalized_gain", record["normalized_gain"], step)
            for name, value in record["metrics"].items():
                w.add_scalar(f"metrics/{name}", value, step)
                w.add_scalar(f"base_metrics/{name}", record["base_metrics"][name], step)
            for name, value in record.get("tokens", {}).items():
                w.add_scalar(f"tokens/{name}", value, step)
        for name, value in record.get("timings", {}).items():
            w.add_scalar(f"time/{name}", value, step)
        template = record.get("template")
        if template:
            for name, value in template["hyperparameters"].items():
                w.add_scalar(f"hyperparameters/{name}", value, step)
            w.add_text("template", "```\n" + json.dumps(template, indent=1) + "\n```", step)
        w.flush()

    def log_iteration(self, record: dict[str, Any]) -> None:
        """One line per (agent, iteration) in iterations.jsonl, and scalars in TensorBoard."""
        with (self.run_dir / "iterations.jsonl").open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(to_jsonable(record)) + "\n")
        if self._tensorboard:
            w = self._writer(record["agent"])
            for key, value in record.items():
                if "/" in key:
                    w.add_scalar(f"iteration/{key}", value, record["iteration"])
            w.flush()

    def write_json(self, name: str, payload: Any) -> Path:
        path = self.run_dir / name
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(to_jsonable(payload), indent=2, ensure_ascii=False))
        tmp.replace(path)
        return path

    def write_text(self, name: str, text: str) -> Path:
        path = self.run_dir / name
        path.write_text(text)
        return path

    def close(self) -> None:
        self._file.close()
        for writer in self._writers.values():
            writer.close()

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def completed_keys(records: Iterable[dict[str, Any]]) -> set[str]:
    return {r["key"] for r in records if "key" in r}
