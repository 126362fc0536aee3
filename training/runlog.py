"""What a run's step and iteration records put into TensorBoard; reading ``steps.jsonl``.

The records themselves are written by :class:`~selfedit.training.rundir.RunDir`'s JSON Lines
logs (one complete line per record, flushed and fsynced, repaired once on open); these
functions turn one record into namespaced scalars (``reward/value``, ``accuracy/adapted``,
``time/train_s``, ``iteration/collapse/...``), one TensorBoard run per agent.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from selfedit.training.jsonio import read_jsonl, to_jsonable

__all__ = ["log_iteration", "log_step", "read_steps", "to_jsonable"]


def read_steps(path: Path) -> list[dict[str, Any]]:
    """Every complete record of a ``steps.jsonl`` (or any JSON Lines file of a run)."""
    return read_jsonl(path)


def log_step(writer: Any, step: int, record: dict[str, Any]) -> None:
    """One step record as scalars (and the template as text) at ``step`` of its agent."""
    if writer is None:
        return
    writer.add_scalar("reward/value", record["reward"], step)
    writer.add_scalar("reward/invalid", float(record.get("error") is not None), step)
    if record.get("error") is None:
        writer.add_scalar("accuracy/adapted", record["accuracy"], step)
        writer.add_scalar("accuracy/base", record["base_accuracy"], step)
        writer.add_scalar("accuracy/gain", record["gain"], step)
        writer.add_scalar("accuracy/normalized_gain", record["normalized_gain"], step)
        for name, value in record["metrics"].items():
            writer.add_scalar(f"metrics/{name}", value, step)
            writer.add_scalar(f"base_metrics/{name}", record["base_metrics"][name], step)
        for name, value in (record.get("tokens") or {}).items():
            writer.add_scalar(f"tokens/{name}", value, step)
    for name, value in (record.get("timings") or {}).items():
        if isinstance(value, (int, float)):
            writer.add_scalar(f"time/{name}", value, step)
    template = record.get("template")
    if template:
        for name, value in template["hyperparameters"].items():
            writer.add_scalar(f"hyperparameters/{name}", value, step)
        writer.add_text("template", "```\n" + json.dumps(template, indent=1) + "\n```", step)
    writer.flush()


def log_iteration(writer: Any, record: dict[str, Any]) -> None:
    """An iteration record's namespaced values as ``iteration/<key>`` scalars."""
    if writer is None:
        return
    for key, value in record.items():
        if "/" in key and isinstance(value, (int, float)):
            writer.add_scalar(f"iteration/{key}", value, record["iteration"])
    writer.flush()
