"""``selfedit regrade DIR --output NEW``: score the answers a run kept with today's graders.

A grader that changes (``selfedit.envs.grading.GRADING_VERSION``) leaves every committed run
scored by the old one. The answers themselves are in the records: each result of
``steps.jsonl`` keeps the adapted model's answers and the base model's. Regrading scores
them again with every cheap grader, recomputes what depends on the scores (per-question
verdicts, per-grader means, accuracies, gains, the reward of every valid step) and rebuilds
the summary: ``table.md`` and ``summary.json`` for a run directory, the whole report for a
benchmark directory (:func:`~selfedit.training.benchmark_report.write_report`). No model is
loaded; a benchmark of hours regrades in seconds.

The result goes to a new directory (a copy; the original is never written), with
``regraded.json`` saying from where, when and under which grading version. What cannot be
recomputed is refused with a message, never guessed: a run whose reward grader is the LLM
judge (its verdicts need the endpoint; judge columns of other runs are kept as they were),
records without answers (``log_answers: false``), answers sampled several times
(``answer_samples`` > 1: the base model's repeats are not kept), and passages that are no
longer in the run's corpus as they were.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from selfedit.envs import grading
from selfedit.envs.config import ConfigError
from selfedit.envs.corpus import Passage
from selfedit.envs.selfedit_env import normalized_gain, step_figures
from selfedit.training.env_kinds import SQUAD_ENV_ID
from selfedit.training.jsonio import read_jsonl, write_json_atomic

__all__ = ["add_subcommand", "main", "regrade_dir", "regrade_record"]

_STEPS = ("steps.jsonl", "run/steps.jsonl", "noise/steps.jsonl")


def _regrade_result(result: dict[str, Any], passage: Passage, grader: str) -> None:
    if [q.question for q in passage.questions] != result.get("questions"):
        raise ConfigError(
            f"passage {result.get('passage_id')!r} of the run's corpus no longer has the "
            "questions the run answered (the corpus changed since): it cannot be regraded")
    if result.get("answer_samples"):
        raise ConfigError(
            "answers were sampled several times (answer_samples > 1) and the base model's "
            "repeats are not kept: regrading would change the base accuracy")
    for key, answers in (("", result["answers"]), ("base_", result["base_answers"])):
        verdicts = passage.grade_all(answers)
        metrics = {g: float(np.mean(v)) for g, v in verdicts.items()}
        if key == "":
            result["verdicts"] = {**result.get("verdicts", {}), **verdicts}
        result[f"{key}metrics"] = {**result.get(f"{key}metrics", {}), **metrics}
        result[f"{key}accuracy"] = result[f"{key}metrics"][grader]
    result["gain"] = result["accuracy"] - result["base_accuracy"]
    result["normalized_gain"] = normalized_gain(result["accuracy"], result["base_accuracy"])


def regrade_record(record: dict[str, Any], passages: dict[str, Passage],
                   grader: str) -> dict[str, Any]:
    """One step record scored again with today's cheap graders (a new dict).

    An invalid step (``error``) is returned as it was: it was never graded. A valid step's
    reward is its new accuracy under ``grader``, the mean over its results (over their
    questions when the step pooled passages, as the env computes it).

    Raises:
        ConfigError: For what cannot be recomputed (see the module's docstring).
    """
    record = json.loads(json.dumps(record))  # a deep copy of plain JSON
    if record.get("error") or not record.get("results"):
        return record
    for result in record["results"]:
        if "answers" not in result or "base_answers" not in result:
            raise ConfigError("the records keep no answers (the run had log_answers: false): "
                              "there is nothing to regrade")
        pid = result["passage_id"]
        if pid not in passages:
            raise ConfigError(f"passage {pid!r} is not in the run's corpus: it cannot be "
                              "regraded")
        _regrade_result(result, passages[pid], grader)
    record.update(step_figures(record["results"], pooled=bool(record.get("pool"))))
    record["reward"] = record["accuracy"]
    return record


def _config(source: Path) -> tuple[Any, bool]:
    """The directory's config and whether it is a benchmark directory."""
    from selfedit.training.benchmark_config import BenchmarkConfig
    from selfedit.training.experiment import load_experiment
    from selfedit.training.run import load_run_config

    if (source / "benchmark.yaml").is_file():
        return load_experiment(BenchmarkConfig, source / "benchmark.yaml"), True
    if (source / "config.yaml").is_file():
        return load_run_config(source), False
    raise ConfigError(f"{source} is neither a run directory (config.yaml) nor a benchmark "
                      "directory (benchmark.yaml)")


def regrade_dir(source: str | Path, output: str | Path) -> Path:
    """Copy a run or benchmark directory to ``output`` with every step regraded; rebuild
    its summary or report there. Returns ``output``.

    Raises:
        ConfigError: For a missing directory, an ``output`` that exists, or records that
            cannot be regraded (nothing is left at ``output`` then).
    """
    from selfedit.envs.selfedit_env import load_env_corpus

    source, output = Path(source), Path(output)
    if not source.is_dir():
        raise ConfigError(f"{source}: no such run or benchmark directory")
    if output.exists():
        raise ConfigError(f"--output {output} exists: regrade writes a new directory and "
                          "never overwrites one")
    cfg, is_benchmark = _config(source)
    env_cfg = cfg.env
    if getattr(cfg, "env_id", SQUAD_ENV_ID) != SQUAD_ENV_ID:
        raise ConfigError(f"only runs of {SQUAD_ENV_ID} are graded by these graders, this "
                          f"one ran {cfg.env_id}")
    grader = env_cfg.reward_grader
    if grader not in grading.GRADERS:
        raise ConfigError(f"the run's reward grader is {grader!r}, whose verdicts cannot be "
                          "recomputed here (the judge needs its endpoint)")
    passages = {p.id: p for p in load_env_corpus(env_cfg.corpus)}
    regraded = {}
    for name in _STEPS:
        if (source / name).is_file():
            regraded[name] = [regrade_record(r, passages, grader)
                              for r in read_jsonl(source / name)]
    if not regraded:
        raise ConfigError(f"{source} holds no steps.jsonl")
    shutil.copytree(source, output)
    try:
        for name, records in regraded.items():
            (output / name).write_text("".join(json.dumps(r) + "\n" for r in records),
                                       encoding="utf-8")
        if is_benchmark:
            from selfedit.training.benchmark_report import write_report

            report = write_report(output)
            report.write_text(report.read_text(encoding="utf-8") + (
                f"\n\n*Regraded* from `{source}` by `selfedit regrade` (grading version "
                f"{grading.GRADING_VERSION}): the answers the run kept, scored by today's "
                "graders; timings and budgets are the run's own.\n"), encoding="utf-8")
        else:
            _rewrite_summary(output, cfg, regraded["steps.jsonl"])
        write_json_atomic(output / "regraded.json", {
            "from": str(source), "grading_version": grading.GRADING_VERSION,
            "reward_grader": grader, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        }, indent=1)
    except BaseException:
        shutil.rmtree(output, ignore_errors=True)
        raise
    return output


def _rewrite_summary(output: Path, cfg: Any, records: list[dict[str, Any]]) -> None:
    from selfedit.agents.registry import check_agents
    from selfedit.training.env_kinds import env_kind
    from selfedit.training.run import summarize, summary_table

    kind = env_kind(cfg.env_id)
    names = check_agents(cfg.agents)
    summaries = summarize(records, names, metrics=[m for m, _ in kind.metric_columns])
    table = summary_table(summaries, grader=kind.reward_name(cfg.env),
                          columns=kind.metric_columns)
    path = output / "summary.json"
    summary = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    summary["agents"] = [s.to_dict() for s in summaries]
    write_json_atomic(path, summary, indent=1)
    (output / "table.md").write_text(table + "\n", encoding="utf-8")


def add_subcommand(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``regrade`` to the CLI's subparsers; :func:`main` runs it."""
    parser = subparsers.add_parser(
        "regrade", help="score the answers a run or benchmark kept with today's graders "
        "(into a new directory)",
        description="Score every answer a run or benchmark directory kept again with the "
        "current cheap graders and rebuild its summary or report, in a copy.")
    parser.add_argument("directory", type=Path, help="a run or benchmark directory")
    parser.add_argument("--output", type=Path, required=True,
                        help="the new directory (must not exist)")
    return parser


def main(args: argparse.Namespace) -> int:
    """Run ``selfedit regrade`` on parsed arguments; return an exit code."""
    out = regrade_dir(args.directory, args.output)
    print(f"regraded (grading version {grading.GRADING_VERSION}): {out}")
    for name in ("table.md", "report.md"):
        if (out / name).is_file():
            print((out / name).read_text(encoding="utf-8"))
            break
    return 0
