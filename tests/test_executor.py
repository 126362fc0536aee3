"""Executors (issue 6): steps on Ray actors give the serial runner's rewards for the same seeds.

Every test builds real envs on the tiny model saved to disk (actors load it by path) and
runs a real local Ray runtime: two CPUs, one actor per CPU, one torch thread each.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml

from selfedit.agents.registry import check_agent_spec, make_agent
from selfedit.envs import prompts
from selfedit.envs.config import ConfigError, EnvConfig
from selfedit.envs.selfedit_env import SelfEditEnv
from selfedit.training.cli import main
from selfedit.training.config import ExecutorConfig, RunConfig
from selfedit.training.executor import RayExecutor
from selfedit.training.run import plan_episodes, run
from selfedit.training.runlog import read_steps, to_jsonable

REPO = Path(__file__).resolve().parents[1]
TINY_ENV = {"dtype": "float32", "passages": "0:3", "completion_max_tokens": 12,
            "answer_max_tokens": 6, "baseline_cache": None}
# A searcher that adapts: what it proposes depends on the rewards it has observed.
THOMPSON = {"type": "thompson", "name": "ts", "instructions": ["implications", "passage"],
            "ranks": [4, 8], "learning_rates": [1e-2], "epochs": [1], "seed": 0}


@pytest.fixture(scope="module")
def ray_runtime() -> Any:
    """One local Ray runtime for the module; executors use it and leave it running."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _outcomes(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """What must not depend on the executor: per step its action, reward and every answer."""
    return [
        (r["key"], r["template"], r["reward"],
         [(x["passage_id"], x["completion"], x["sequences"], x["answers"], x["base_answers"],
           x["verdicts"]) for x in r["results"]])
        for r in records
    ]


def _config(model: Path, out: Path, **keys: Any) -> RunConfig:
    raw = {"name": "exec", "output_dir": str(out), "progress": False, "tensorboard": False,
           "iteration_size": 2, "env": {"model": str(model), **TINY_ENV}, **keys}
    return RunConfig.from_dict(raw)


def _run(cfg: RunConfig) -> tuple[list[dict[str, Any]], SelfEditEnv, Path]:
    env = SelfEditEnv(cfg.env)
    run_dir = run(cfg, env=env)
    return read_steps(run_dir / "steps.jsonl"), env, run_dir


# -- errors before any Ray runtime starts --------------------------------------------------
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("executor.type=rey", "executor.type must be one of serial, ray, got 'rey'"),
        ("executor.workers=0", "executor.workers must be >= 1, got 0"),
        ("executor.batch=0", "executor.batch must be >= 1, got 0"),
        ("executor.gpus_per_worker=-1", "executor.gpus_per_worker must be >= 0, got -1"),
        ("executor.wokers=2", "unknown key 'executor.wokers'; did you mean 'workers'?"),
        ("executor.workers=two", "executor.workers must be int"),
    ],
)
def test_bad_executor_config_names_the_key(tmp_path: Path, capsys: Any, override: str,
                                           message: str) -> None:
    args = ["run", "--config", str(REPO / "configs" / "baselines_cpu.yaml"),
            f"output_dir={tmp_path}", override]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing started


def test_without_ray_the_error_says_what_to_install(
    tiny_model_dir: Path, tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if not installed
    args = ["run", "--config", str(REPO / "configs" / "baselines_cpu.yaml"),
            "--executor", "ray", f"env.model={tiny_model_dir}", f"output_dir={tmp_path}"]
    assert main(args) == 2
    assert capsys.readouterr().err == (
        'selfedit: error: executor.type=ray needs Ray: pip install "selfedit-gym[ray]"\n')
    assert not list(tmp_path.iterdir())


# -- the benchmark: serial and Ray, same config, same rewards ---------------------------------
def _bench_args(model: Path, out: Path, executor: str) -> list[str]:
    return [
        "benchmark", "--config", str(REPO / "configs" / "benchmark_cpu.yaml"),
        "--executor", executor,
        f"env.model={model}", "env.dtype=float32", "env.passages=[6, 7]",
        "env.completion_max_tokens=12", "env.answer_max_tokens=6", "env.baseline_cache=null",
        "agents=[passage, implications]", "noise_repeats=1", "iteration_size=1",
        "resamples=200", "paper_anchors=false", f"output_dir={out}", "progress=false",
        "executor.workers=2", "executor.batch=2",
    ]


def test_benchmark_gives_identical_results_serial_and_on_ray(
    ray_runtime: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    assert main(_bench_args(tiny_model_dir, tmp_path / "serial", "serial")) == 0
    assert main(_bench_args(tiny_model_dir, tmp_path / "ray", "ray")) == 0
    serial, remote = tmp_path / "serial" / "benchmark_cpu", tmp_path / "ray" / "benchmark_cpu"
    for part, steps in (("run", 4), ("noise", 2)):
        a = read_steps(serial / part / "steps.jsonl")
        b = read_steps(remote / part / "steps.jsonl")
        assert len(a) == len(b) == steps
        assert _outcomes(b) == _outcomes(a)
        assert all(r["error"] is None and r["timings"]["act_s"] >= 0 for r in b)
    assert {r["agent"] for r in read_steps(remote / "run" / "steps.jsonl")} == {
        "passage", "implications"}
    saved = yaml.safe_load((remote / "benchmark.yaml").read_text())
    assert saved["executor"] == {"type": "ray", "batch": 2, "workers": 2, "address": None,
                                 "threads_per_worker": 1, "gpus_per_worker": 0.0}
    tables = [json.loads((d / "summary.json").read_text())["agents"] for d in (serial, remote)]
    assert [(r["agent"], r["accuracy"], r["ci_low"], r["base_accuracy"]) for r in tables[0]] == [
        (r["agent"], r["accuracy"], r["ci_low"], r["base_accuracy"]) for r in tables[1]]


# -- an adaptive agent: the batch, not the executor, decides what it proposes ---------------
def test_an_adaptive_agent_proposes_the_same_serial_and_on_ray(
    ray_runtime: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    keys = {"agents": [THOMPSON, "passage"], "episodes": 4}
    serial, serial_env, _ = _run(_config(tiny_model_dir, tmp_path / "serial", **keys,
                                         executor={"type": "serial", "batch": 2}))
    remote, ray_env, run_dir = _run(_config(
        tiny_model_dir, tmp_path / "ray", **keys,
        executor={"type": "ray", "batch": 2, "workers": 2}))

    assert len(serial) == 8 and _outcomes(remote) == _outcomes(serial)
    searched = [json.dumps(r["template"], sort_keys=True) for r in serial if r["agent"] == "ts"]
    assert len(set(searched)) > 1  # it explored: the comparison covers adaptive proposals
    # The driver's env stepped nothing under Ray; neither env keeps an archive that would
    # show one agent's templates to another (issue 14).
    assert serial_env._steps > 0 and ray_env._steps == 0
    shown = ray_env.reset(seed=5)[0]["prompt"]
    assert shown == serial_env.reset(seed=5)[0]["prompt"] == prompts.meta_prompt()

    # A kill after the 7th record; the Ray run resumes serially and ends where it would have.
    steps = run_dir / "steps.jsonl"
    lines = steps.read_text().splitlines(keepends=True)
    steps.write_text("".join(lines[:7]))
    cfg = _config(tiny_model_dir, tmp_path / "ray", **keys,
                  executor={"type": "serial", "batch": 2})
    run(cfg, resume=run_dir, env=SelfEditEnv(cfg.env))
    resumed = read_steps(steps)
    assert [r["key"] for r in resumed] == [r["key"] for r in remote]
    assert _outcomes(resumed) == _outcomes(remote)  # the lost step was the fixed agent's


# -- batch 1 (the default) is the sequential loop the runner always ran ----------------------
def test_default_executor_runs_the_sequential_loop(tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = _config(tiny_model_dir, tmp_path, agents=[THOMPSON, "passage"], episodes=2)
    assert cfg.executor == ExecutorConfig(type="serial", batch=1)
    records, _, _ = _run(cfg)

    # Reset, act, step, observe: one step at a time, written out by hand.
    env = SelfEditEnv(cfg.env)
    names = [check_agent_spec(spec) for spec in cfg.agents]
    agents = {name: make_agent(spec, env) for name, spec in zip(names, cfg.agents, strict=True)}
    expected = []
    for ep in plan_episodes(cfg, names, len(env.corpus)):
        obs, info = env.reset(seed=ep.reset_seed)
        action = agents[ep.agent].act(obs, info)
        _, reward, _, _, info = env.step(action)
        agents[ep.agent].observe(action, reward, info)
        expected.append(json.loads(json.dumps(to_jsonable(
            {"key": ep.key, "reward": reward, **info}))))
    assert _outcomes(records) == _outcomes(expected)


# -- errors on Ray ---------------------------------------------------------------------------
def test_a_worker_that_cannot_build_its_env_gives_the_envs_message(
    ray_runtime: Any, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError) as caught:
        RayExecutor(EnvConfig(model=str(missing), baseline_cache=None), workers=1)
    assert str(caught.value) == f"model path {missing} does not exist"


def test_too_many_workers_for_the_runtime_fail_instead_of_waiting(ray_runtime: Any) -> None:
    with pytest.raises(ConfigError, match=r"executor.workers=3 actors need 3 CPUs"):
        RayExecutor(EnvConfig(baseline_cache=None), workers=3)
