"""The run directory: JSON Lines repaired once on open, atomic and plain JSON, bounded records,
sessions and HParams; a run killed at each point between its writes resumes to the same files
as an uninterrupted one (issue 13, items 7 and 8; issue 14)."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from selfedit.envs.selfedit_env import SelfEditEnv
from selfedit.training.config import RunConfig
from selfedit.training.jsonio import (
    MAX_LOG_CHARS,
    JsonlLog,
    bound_record,
    read_jsonl,
    to_jsonable,
    write_json_atomic,
)
from selfedit.training.rundir import RunDir

FAST_ENV = {"completion_max_tokens": 8, "answer_max_tokens": 4, "baseline_cache": None,
            "max_seq_tokens": 128}


# -- JSON Lines ------------------------------------------------------------------------------
def _lines(path: Path) -> list[str]:
    return path.read_text().split("\n")


def test_complete_last_record_without_newline_is_kept(tmp_path) -> None:
    path = tmp_path / "steps.jsonl"
    path.write_text('{"key": "a"}\n{"key": "b"}')  # killed before the newline
    assert [r["key"] for r in read_jsonl(path)] == ["a", "b"]  # readers count it ...
    log = JsonlLog(path, key="key")
    assert log.repaired == "newline added" and "b" in log  # ... and so does the writer
    log.append({"key": "c"})
    log.close()
    assert _lines(path) == ['{"key": "a"}', '{"key": "b"}', '{"key": "c"}', ""]


def test_torn_last_record_is_cut_once(tmp_path) -> None:
    path = tmp_path / "steps.jsonl"
    path.write_text('{"key": "a"}\n{"key": "b", "rew')
    assert [r["key"] for r in read_jsonl(path)] == ["a"]
    log = JsonlLog(path, key="key")
    assert log.repaired == "torn line cut" and "b" not in log and len(log) == 1
    log.append({"key": "b"})
    log.close()
    assert [r["key"] for r in read_jsonl(path)] == ["a", "b"]
    assert JsonlLog(path).repaired is None  # a clean file is left alone


def test_records_are_plain_strict_json(tmp_path) -> None:
    @dataclasses.dataclass
    class Timing:
        seconds: float

    record = {"reward": np.float32(0.25), "nan": float("nan"), "ids": (1, 2), "set": {"b", "a"},
              "path": Path("x"), "timing": Timing(1.5), "arr": np.arange(2), 3: "int key"}
    log = JsonlLog(tmp_path / "r.jsonl")
    written = log.append(record)
    log.close()
    text = (tmp_path / "r.jsonl").read_text()
    assert json.loads(text) == written == {
        "reward": 0.25, "nan": None, "ids": [1, 2], "set": ["a", "b"], "path": "x",
        "timing": {"seconds": 1.5}, "arr": [0, 1], "3": "int key"}
    assert "NaN" not in text
    write_json_atomic(tmp_path / "s.json", record)
    assert json.loads((tmp_path / "s.json").read_text())["nan"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl", "s.json"]  # no temp left


def test_bound_record_caps_what_an_action_can_log() -> None:
    huge = "k" * 10_000_000
    record = {"agent": "a", "validation": {"ignored_keys": [huge, "style"]},
              "error": "bad " * 10, "many": list(range(50_000)), huge: 1,
              "deep": json.loads("[" * 60 + "]" * 60)}
    out = bound_record(record)
    text = json.dumps(out)
    assert len(text) < 4 * MAX_LOG_CHARS + 100_000
    assert out["validation"]["ignored_keys"][0] == "k" * MAX_LOG_CHARS
    assert out["validation"]["ignored_keys"][1] == "style" and out["error"] == "bad " * 10
    cut = out["log_truncated"]
    assert cut["fields"] >= 4
    assert cut["cut"]["validation.ignored_keys[0]"] == "10000000 characters"
    assert cut["cut"]["many"] == "50000 items"
    assert bound_record({"a": [1, "x"], "b": None}) == {"a": [1, "x"], "b": None}  # untouched


# -- the directory ---------------------------------------------------------------------------
def test_create_resume_sessions_and_hparams(tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    cfg = RunConfig(name="exp", output_dir=str(tmp_path), agents=["passage"])
    first = RunDir.create(cfg, command="selfedit run exp")
    second = RunDir.create(cfg, command="selfedit run exp")  # same second: its own directory
    assert first.path != second.path and first.path.name.startswith("exp__0__")
    for run in (first, second):
        run.close()
    assert (first.path / "command.txt").read_text() == "selfedit run exp\n"
    assert "name: exp" in (first.path / "config.yaml").read_text()
    resumed = RunDir.resume(first.path, cfg, command="selfedit run --resume x")
    resumed.add_hparams(cfg.hparams(), {"hparams/reward": 0.5, "hparams/skip": math.nan},
                        sub="passage")
    resumed.close()
    sessions = json.loads((first.path / "environment.json").read_text())
    assert [s["command"] for s in sessions] == ["selfedit run exp", "selfedit run --resume x"]
    machine = sessions[0]["machine"]
    assert {"python", "cpus", "torch", "precision"} <= set(machine)
    assert {"torch", "transformers", "trl"} <= set(sessions[0]["versions"])
    events = EventAccumulator(str(first.path / "tb" / "passage"))
    events.Reload()
    assert events.Tags()["scalars"] == ["hparams/reward"]
    start = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(start).session_start_info.hparams
    assert hparams["env.model"].string_value == "embedded" and "agents" in hparams


# -- a run killed at each point between its writes -------------------------------------------
class CountingExecutor:
    """The serial executor, counting the env steps it runs."""

    def __init__(self) -> None:
        from selfedit.training.executor import SerialExecutor

        self.inner, self.jobs = SerialExecutor(), 0

    def evaluate(self, env: Any, jobs: list) -> list:
        self.jobs += len(jobs)
        return self.inner.evaluate(env, jobs)

    def close(self) -> None:
        self.inner.close()


def _cfg(out: Path) -> RunConfig:
    return RunConfig.from_dict({
        "name": "kill", "output_dir": str(out), "progress": False, "tensorboard": False,
        "iteration_size": 1, "env": {**FAST_ENV, "passages": "0:2"},
        "agents": ["passage", {"type": "ucb1", "name": "u", "instructions": ["passage"],
                               "ranks": [4, 8], "epochs": [1], "seed": 3}]})


@pytest.fixture(scope="module")
def finished(tiny_model_dir, tmp_path_factory) -> tuple[Path, dict[tuple[str, int], str]]:
    """An uninterrupted run, and every agent state file as it was written after each step."""
    from selfedit.training import run as runner

    states: dict[tuple[str, int], str] = {}
    save = runner.save_agent

    def keep(agent: Any, run_dir: Path, name: str, *, steps: int) -> None:
        save(agent, run_dir, name, steps=steps)
        states[(name, steps)] = (run_dir / "state" / f"{name}.json").read_text()

    out = tmp_path_factory.mktemp("finished")
    runner.save_agent = keep
    try:
        run_dir = runner.run(_cfg(out), env=_env(tiny_model_dir, _cfg(out)), command="selfedit run")
    finally:
        runner.save_agent = save
    return run_dir, states


def _env(model_dir: Path, cfg: RunConfig) -> SelfEditEnv:
    return SelfEditEnv(dataclasses.replace(cfg.env, model=str(model_dir), device="cpu"))


def _strip(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(r["key"], r["reward"], r.get("template", {}).get("hyperparameters", {}).get(
        "lora_rank")) for r in records]


@pytest.mark.parametrize("kill", ["before the newline", "before the iteration line",
                                  "before the state", "mid step line"])
def test_resume_after_a_kill_at_each_point(finished, tiny_model_dir, tmp_path, kill: str) -> None:
    from selfedit.training.run import run

    full, states = finished
    run_dir = tmp_path / full.name
    shutil.copytree(full, run_dir)
    steps, iterations = run_dir / "steps.jsonl", run_dir / "iterations.jsonl"
    step_lines = steps.read_text().splitlines(keepends=True)
    last = json.loads(step_lines[-1])
    agent, done_before = last["agent"], len([r for r in map(json.loads, step_lines)
                                              if r["agent"] == last["agent"]]) - 1
    iteration_lines = iterations.read_text().splitlines(keepends=True)
    iterations.write_text("".join(iteration_lines[:-1]))  # every kill lost the last one
    if kill == "before the newline":
        steps.write_text("".join(step_lines)[:-1])
    elif kill == "mid step line":
        steps.write_text("".join(step_lines[:-1]) + step_lines[-1][: len(step_lines[-1]) // 2])
    if kill in ("before the newline", "before the state", "mid step line"):
        (run_dir / "state" / f"{agent}.json").write_text(states[(agent, done_before)])

    executor = CountingExecutor()
    run(_cfg(tmp_path), resume=run_dir, env=_env(tiny_model_dir, _cfg(tmp_path)),
        executor=executor)
    assert executor.jobs == (1 if kill == "mid step line" else 0)
    assert _strip(read_jsonl(steps)) == _strip(read_jsonl(full / "steps.jsonl"))
    assert steps.read_text().endswith("\n") and len(steps.read_text().splitlines()) == 4

    def its(path: Path) -> list[dict[str, Any]]:
        return sorted(read_jsonl(path), key=lambda r: (r["agent"], r["iteration"]))

    assert its(iterations) == its(full / "iterations.jsonl")  # rebuilt, identical
    for name in ("passage", "u"):
        assert json.loads((run_dir / "state" / f"{name}.json").read_text()) == \
            json.loads((full / "state" / f"{name}.json").read_text())


def test_one_step_record_cannot_flood_the_log(tiny_model_dir, tmp_path, monkeypatch) -> None:
    """An agent (a user's, registered as a type) that reports a 5 MB counter name."""
    from selfedit.agents import registry
    from selfedit.agents.fixed import FixedTemplateAgent
    from selfedit.training.run import run

    class Chatty(FixedTemplateAgent):
        counts = {"arm-" + "x" * 5_000_000: 1}

    monkeypatch.setitem(registry.AGENT_TYPES, "chatty", lambda spec, env: Chatty("passage"))
    monkeypatch.setitem(registry.AGENT_KEYS, "chatty", set())
    cfg = RunConfig.from_dict({"output_dir": str(tmp_path), "progress": False,
                               "tensorboard": False, "agents": [{"type": "chatty"}],
                               "env": {**FAST_ENV, "passages": "0:1"}})
    run_dir = run(cfg, env=_env(tiny_model_dir, cfg))
    (line,) = (run_dir / "steps.jsonl").read_text().splitlines()
    assert len(line) < 200_000
    record = json.loads(line)
    assert record["log_truncated"]["fields"] == 1
    (where,) = record["log_truncated"]["cut"]
    assert where.startswith("agent_counts") and record["error"] is None


def test_to_jsonable_never_fails() -> None:
    class Odd:
        def __str__(self) -> str:
            return "odd"

    assert to_jsonable({"x": Odd(), "b": b"\xff"}) == {"x": "odd", "b": "\\xff"}
