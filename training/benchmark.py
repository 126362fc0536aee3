"""Benchmark exploration strategies side by side: equal budgets, intervals, plots, a report.

``selfedit benchmark --config configs/benchmark_cpu.yaml`` lands here. It reads top to bottom:

1. config: a :class:`BenchmarkConfig` = the run keys of :class:`~selfedit.training.config
   .RunConfig` plus the benchmark's own keys, in one flat YAML file; the tuning and report
   passages are checked to be disjoint before any model loads;
2. runs: the ordinary runner (:func:`selfedit.training.run.run`) steps every agent through
   the env on the same passages with the same reset seeds into ``<dir>/run/``, then the
   noise template is evaluated ``noise_repeats`` times with other seeds into ``<dir>/noise/``;
   one env (one model) serves both;
3. budgets: every agent must have used the same number of steps and env evaluations, on the
   same units, or no report is written;
4. report: ``report.md``, ``table.csv``, ``comparisons.csv``, ``summary.json`` and PNG plots.

The directory is ``<output_dir>/<name>/`` with no time stamp, so a committed report keeps its
path when it is regenerated. The unit of the statistics is one *(seed, episode, passage)*:
the accuracy one template reached on one passage; with ``episodes: null`` (one sweep over the
report passages per seed) that is a (passage, seed) pair.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from selfedit.agents.registry import check_agents
from selfedit.envs.config import ConfigError
from selfedit.training.benchmark_config import (
    BenchmarkConfig,
    BenchmarkExists,
    load_benchmark_config,
    passage_split,
)
from selfedit.training.benchmark_report import PAPER_ANCHORS, write_report
from selfedit.training.benchmark_stats import (
    Budget,
    BudgetError,
    Comparison,
    NoiseSummary,
    Unit,
    check_budgets,
    unit_scores,
)
from selfedit.training.rundir import RunDir

__all__ = [
    "PAPER_ANCHORS",
    "BenchmarkConfig",
    "BenchmarkExists",
    "Budget",
    "BudgetError",
    "Comparison",
    "NoiseSummary",
    "Unit",
    "benchmark",
    "check_budgets",
    "load_benchmark_config",
    "passage_split",
    "unit_scores",
    "write_report",
]


def _check_judge_key(cfg: BenchmarkConfig) -> None:
    """An endpoint judge without its key would turn every step into an invalid one: fail
    before hours of GPU time are spent on a report of errors."""
    import urllib.parse

    env = cfg.env
    if env.reward_grader == "judge" and env.judge != "local":
        host = urllib.parse.urlsplit(env.judge).hostname
        if host not in ("localhost", "127.0.0.1", "::1") and not os.environ.get(
            env.judge_api_key_env
        ):
            raise ConfigError(
                f"env.reward_grader=judge with the endpoint {env.judge} reads its key from "
                f"${env.judge_api_key_env}, which is not set: export it, or use "
                "env.judge=local, or env.reward_grader=f1"
            )


def _open(cfg: BenchmarkConfig, resume: Path | None, force: bool, command: str | None) -> RunDir:
    """The benchmark directory: resumed, or new (an existing one only with ``force``)."""
    if resume is not None:
        return RunDir.resume(resume, cfg, command=command, config_name="benchmark.yaml")
    bench_dir = cfg.directory
    if bench_dir.is_dir() and any(bench_dir.iterdir()):
        if not force:
            raise BenchmarkExists(
                f"{bench_dir} already holds results: continue it with `selfedit benchmark "
                f"--resume {bench_dir}`, or start over with --force (deletes it)"
            )
        if not (bench_dir / "benchmark.yaml").is_file():
            raise BenchmarkExists(f"--force: {bench_dir} is not a benchmark directory (no "
                                  "benchmark.yaml); remove it yourself or pick another name")
        shutil.rmtree(bench_dir)
    return RunDir.at(bench_dir, cfg, command=command, config_name="benchmark.yaml")


def benchmark(
    cfg: BenchmarkConfig,
    *,
    resume: Path | None = None,
    force: bool = False,
    command: str | None = None,
    env: Any = None,
) -> Path:
    """Run the benchmark and write its report; return ``<output_dir>/<name>/``.

    Args:
        cfg: the benchmark configuration (with ``resume``, the directory's own).
        resume: an existing benchmark directory to finish (finished steps are kept).
        force: delete an existing benchmark directory of the same name first.
        command: the command line to record (default: ``selfedit`` + ``sys.argv[1:]``).
        env: an env to use instead of building one from ``cfg.env`` (tests).
    """
    from selfedit.envs.backend import check_engine, check_model_source
    from selfedit.envs.selfedit_env import SelfEditEnv, load_env_corpus
    from selfedit.training.executor import check_executor, make_executor
    from selfedit.training.run import run

    # 1. Checks that load no weights: agents, the passage split, the model files, the
    #    judge's key. A mistake here leaves no directory behind.
    names = check_agents(cfg.agents)
    corpus = load_env_corpus(cfg.env.corpus)
    split = passage_split(cfg, corpus)
    if env is None:
        check_engine(cfg.env.engine, cfg.env.device)
        check_model_source(cfg.env.model)
    _check_judge_key(cfg)
    check_executor(cfg.executor)

    # 2. The directory: new (refusing to overwrite) or resumed; each session is recorded.
    with _open(cfg, resume, force, command) as bench:
        bench.write_json("passages.json", split, indent=1)
        print(f"benchmark {cfg.name}: agents {names}; {len(split['report'])} report "
              f"passages; directory {bench.path}", flush=True)

        # 3. The runs: the table's, then the noise repeats; one env and one executor (its
        #    Ray actors, if any), so each model loads once. The runner times each agent's
        #    own work.
        env = env if env is not None else SelfEditEnv(cfg.env, corpus=corpus)
        with make_executor(cfg.executor, cfg.env) as executor:
            run(cfg.run, at=bench.path / "run", env=env, executor=executor, command=command)
            if cfg.noise_repeats:
                run(cfg.noise_run_config(), at=bench.path / "noise", env=env,
                    executor=executor, command=command)

    # 4. Budgets, statistics, plots, report.
    report = write_report(bench.path)
    print(f"\nreport: {report}")
    return bench.path
