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

import csv
import datetime as dt
import difflib
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import yaml

from selfedit.agents.registry import check_agent_spec
from selfedit.envs.config import ConfigError, check_types
from selfedit.envs.corpus import Corpus
from selfedit.training import plots, stats
from selfedit.training.config import RunConfig, apply_overrides
from selfedit.training.runlog import read_steps, to_jsonable

__all__ = [
    "PAPER_ANCHORS",
    "AgentRow",
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


class BudgetError(RuntimeError):
    """Agents used different numbers of env evaluations (or were not evaluated on the same
    units); their numbers would not be comparable, so no report is written."""


class BenchmarkExists(ConfigError):
    """The benchmark directory already holds results; ``--resume`` or ``--force`` says which
    of the two the user wants."""


def _f(default: Any, help: str) -> Any:  # noqa: A002
    return field(default=default, metadata={"help": help})


@dataclass
class BenchmarkConfig:
    """A benchmark: every run key (agents, seeds, episodes, env, ...) plus the keys below.

    In YAML all keys sit at the top level (``noise_repeats: 4`` beside ``agents:``), and
    ``key=value`` overrides reach both kinds. Results go to ``<output_dir>/<name>/``.
    """

    run: RunConfig = field(default_factory=RunConfig, metadata={"help": "the run keys"})
    tuning_passages: str | list[int] | None = _f(
        None, "passages of env.corpus used while developing agents and templates (stated in "
        "the report; must not overlap env.passages, which are the report passages)")
    noise_repeats: int = _f(3, "evaluate noise_template this many times with other seeds on "
                            "the report passages, to show evaluation noise (0 = skip)")
    noise_template: str | dict[str, Any] = _f(
        "passage", "template of the noise section: a baseline name or a fixed-agent mapping "
        "({type: fixed, template: {...}})")
    resamples: int = _f(10_000, "paired-bootstrap resamples per comparison")
    bootstrap_seed: int = _f(0, "seed of the paired bootstrap")
    confidence: float = _f(0.95, "coverage of every interval in the report")
    paper_anchors: bool = _f(True, "add the papers' figures, quoted and marked as not measured")

    def __post_init__(self) -> None:
        if isinstance(self.run, dict):
            self.run = RunConfig.from_dict(self.run)
        check_types(self, where="benchmark")
        name = self.run.name
        if not name or name in (".", "..") or "/" in name or os.sep in name:
            raise ConfigError(f"name must be a plain directory name, got {name!r}")
        if self.noise_repeats < 0:
            raise ConfigError(f"noise_repeats must be >= 0, got {self.noise_repeats}")
        if self.resamples < 1:
            raise ConfigError(f"resamples must be >= 1, got {self.resamples}")
        if not 0.5 <= self.confidence < 1.0:
            raise ConfigError(f"confidence must be in [0.5, 1), got {self.confidence}")
        spec = self.noise_template
        if isinstance(spec, dict) and spec.get("type", "fixed") != "fixed":
            raise ConfigError("noise_template must be a fixed template (a baseline name or "
                              f"{{type: fixed, ...}}), got type {spec.get('type')!r}")
        check_agent_spec(spec)

    @property
    def directory(self) -> Path:
        return Path(self.run.output_dir) / self.run.name

    def to_dict(self) -> dict[str, Any]:
        """Flat, as in the YAML file: run keys, the benchmark keys, then ``env``."""
        run = self.run.to_dict()
        env = run.pop("env")
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "run"}
        return {**run, **own, "env": env}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> BenchmarkConfig:
        if not isinstance(raw, dict):
            raise ConfigError(f"a benchmark config must be a mapping, got {type(raw).__name__}")
        own = [f.name for f in fields(cls) if f.name != "run"]
        known = own + [f.name for f in fields(RunConfig)]
        for key in raw:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {known}"
                raise ConfigError(f"unknown key '{key}'{hint}")
        run = RunConfig.from_dict({k: v for k, v in raw.items() if k not in own})
        return cls(run=run, **{k: v for k, v in raw.items() if k in own})

    def noise_run_config(self) -> RunConfig:
        """The noise runs: the noise template alone, ``noise_repeats`` seeds, every report
        passage in each. Seed indices continue after the main run's (base seed shifted by
        1000 per main seed), so no noise evaluation repeats one of the table's."""
        spec = self.noise_template
        label = spec if isinstance(spec, str) else spec.get("name", "template")
        agent = {"type": "fixed", "name": f"noise-{label}"}
        agent.update({"baseline": spec} if isinstance(spec, str) else
                     {k: v for k, v in spec.items() if k not in ("type", "name")})
        raw = self.run.to_dict()
        raw.update(name=f"{self.run.name}-noise", agents=[agent], seeds=self.noise_repeats,
                   seed=self.run.seed + 1000 * self.run.seeds, episodes=None)
        return RunConfig.from_dict(raw)


def load_benchmark_config(
    path: str | Path | None, overrides: list[str] | None = None
) -> BenchmarkConfig:
    """Read a benchmark YAML file (flat keys), apply ``key=value`` overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist (see configs/benchmark_*.yaml)")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    return BenchmarkConfig.from_dict(apply_overrides(raw, overrides or []))


# --- passages: tuning and report sets are disjoint ---------------------------------------
def passage_split(cfg: BenchmarkConfig, corpus: Corpus | None = None) -> dict[str, list[str]]:
    """Ids of the report passages (``env.passages``) and the tuning passages; raise if they
    overlap. Loads the corpus (unless given), not the model."""
    from selfedit.envs.selfedit_env import load_env_corpus

    corpus = corpus if corpus is not None else load_env_corpus(cfg.run.env.corpus)
    try:
        report = [p.id for p in corpus.select(cfg.run.env.passages)]
        tuning = ([] if cfg.tuning_passages is None else
                  [p.id for p in corpus.select(cfg.tuning_passages)])
    except (IndexError, ValueError, TypeError) as err:
        raise ConfigError(f"passage selection: {err}") from None
    overlap = sorted(set(report) & set(tuning), key=report.index)
    if overlap:
        shown = ", ".join(overlap[:5]) + (" ..." if len(overlap) > 5 else "")
        raise ConfigError(
            f"tuning_passages ({cfg.tuning_passages}) and env.passages ({cfg.run.env.passages})"
            f" share {len(overlap)} passage(s): {shown}. Report only on passages never used in"
            " tuning: pick disjoint selections"
        )
    return {"report": report, "tuning": tuning}


# --- budgets ------------------------------------------------------------------------------
class Budget(NamedTuple):
    """What an agent spent: env steps and env evaluations (passage x completion)."""

    agent: str
    steps: int
    evaluations: int
    invalid: int


def step_evaluations(record: dict[str, Any], completions_per_passage: int) -> int:
    """Env evaluations one step record accounts for.

    A valid step counts its ``results`` (one per passage and completion). An invalid action
    still spent its step: it is charged what a valid one would have used, so an agent gains
    nothing by failing fast.
    """
    if record.get("error"):
        return len(record.get("passage_ids") or []) * completions_per_passage
    return len(record.get("results") or [])


def check_budgets(
    records: Sequence[dict[str, Any]], agents: Sequence[str], *, completions_per_passage: int = 1
) -> dict[str, Budget]:
    """Per-agent budgets from step records; raise :class:`BudgetError` unless all are equal.

    Checks that every agent has the same number of steps, the same number of env evaluations
    (counted from each record's ``results``), no step key twice, and the same units
    (seed, episode, passages), so that every comparison in the report is paired.
    """
    budgets: dict[str, Budget] = {}
    plans: dict[str, Counter[tuple[Any, ...]]] = {}
    for agent in agents:
        mine = [r for r in records if r.get("agent") == agent]
        keys = Counter(r.get("key") for r in mine)
        twice = sorted(str(k) for k, n in keys.items() if n > 1)
        if twice:
            raise BudgetError(f"agent {agent} has step(s) recorded more than once: {twice[:3]};"
                              " each planned step may be evaluated once")
        budgets[agent] = Budget(
            agent,
            steps=len(mine),
            evaluations=sum(step_evaluations(r, completions_per_passage) for r in mine),
            invalid=sum(1 for r in mine if r.get("error")),
        )
        plans[agent] = Counter(
            (r.get("seed_index"), r.get("episode"), tuple(r.get("passage_ids") or ()))
            for r in mine
        )
    missing = [a for a, b in budgets.items() if b.steps == 0]
    if missing:
        raise BudgetError(f"no step recorded for {missing}; finish the run with --resume")
    spent = {(b.steps, b.evaluations) for b in budgets.values()}
    if len(spent) > 1:
        listing = "; ".join(f"{b.agent}: {b.evaluations} evaluations in {b.steps} steps"
                            for b in budgets.values())
        raise BudgetError(
            f"unequal budgets ({listing}). Agents are compared only on equal budgets of env "
            "evaluations: finish an interrupted run with --resume, or remove the extra records"
        )
    first = agents[0]
    for agent in agents[1:]:
        if plans[agent] != plans[first]:
            raise BudgetError(f"agents {first} and {agent} were not evaluated on the same "
                              "(seed, episode, passages) units; comparisons would not be paired")
    return budgets


# --- units: one accuracy per (seed, episode, passage) ---------------------------------------
UnitKey = tuple[int, int, str]


@dataclass
class Unit:
    """An agent's scores on one (seed, episode, passage), averaged over completions."""

    key: UnitKey
    accuracy: float
    base_accuracy: float
    metrics: dict[str, float]
    base_metrics: dict[str, float]
    invalid: bool = False

    @property
    def gain(self) -> float:
        return self.accuracy - self.base_accuracy


def _base_lookup(records: Iterable[dict[str, Any]]) -> dict[str, tuple[float, dict[str, float]]]:
    base: dict[str, tuple[float, dict[str, float]]] = {}
    for record in records:
        for r in record.get("results") or []:
            base.setdefault(r["passage_id"], (r["base_accuracy"], dict(r["base_metrics"])))
    return base


def unit_scores(
    records: Sequence[dict[str, Any]],
    base_records: Sequence[dict[str, Any]] = (),
) -> dict[str, dict[UnitKey, Unit]]:
    """Scores per agent and unit, from step records.

    An invalid action leaves the model as it was: its units count at the passage's base
    accuracy (gain 0), taken from any record of that passage in ``records`` or
    ``base_records``; a passage no agent evaluated validly has no known base and its
    invalid units are left out (the table's unit count shows it).
    """
    lookup = _base_lookup([*records, *base_records])
    out: dict[str, dict[UnitKey, Unit]] = defaultdict(dict)
    for record in records:
        prefix = (int(record["seed_index"]), int(record["episode"]))
        if record.get("error"):
            for pid in record.get("passage_ids") or []:
                if pid in lookup:
                    acc, metrics = lookup[pid]
                    out[record["agent"]][(*prefix, pid)] = Unit(
                        (*prefix, pid), acc, acc, dict(metrics), dict(metrics), invalid=True)
            continue
        by_passage: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in record.get("results") or []:
            by_passage[r["passage_id"]].append(r)
        for pid, rs in by_passage.items():
            graders = rs[0]["metrics"].keys()
            out[record["agent"]][(*prefix, pid)] = Unit(
                key=(*prefix, pid),
                accuracy=float(np.mean([r["accuracy"] for r in rs])),
                base_accuracy=float(rs[0]["base_accuracy"]),
                metrics={g: float(np.mean([r["metrics"][g] for r in rs])) for g in graders},
                base_metrics=dict(rs[0]["base_metrics"]),
            )
    return dict(out)


# --- the table, the comparisons, the noise ---------------------------------------------------
@dataclass
class AgentRow:
    """One row of the final table."""

    agent: str
    accuracy: float
    ci_low: float
    ci_high: float
    base_accuracy: float
    gain: float
    normalized_gain: float  # (mean acc - mean base) / (1 - mean base), from the means
    metrics: dict[str, float]  # mean adapted score per grader
    units: int
    steps: int
    evaluations: int
    invalid: int
    wall_s: float  # env step time + the agent's own time (act), summed over its steps


@dataclass
class Comparison:
    """A paired comparison ``agent - reference`` over their common units."""

    agent: str
    reference: str
    units: int
    mean_diff: float
    ci_low: float
    ci_high: float
    p_bootstrap: float
    wins: int
    losses: int
    ties: int
    p_sign: float

    @property
    def verdict(self) -> str:
        if self.ci_low <= 0.0 <= self.ci_high:
            return "within noise"
        return "higher" if self.mean_diff > 0 else "lower"


@dataclass
class NoiseSummary:
    """The noise template evaluated repeatedly on the same passages with other seeds."""

    agent: str
    passages: int
    repeat_means: list[float]  # mean accuracy over the passages, one per repeat
    repeat_seeds: list[int]  # the base reset seed of each repeat
    spread: stats.Spread  # of the repeat means
    unit_std: float  # mean over passages of the std across repeats (one passage's noise)


def agent_rows(
    units: dict[str, dict[UnitKey, Unit]],
    records: Sequence[dict[str, Any]],
    budgets: dict[str, Budget],
    agents: Sequence[str],
    confidence: float,
) -> list[AgentRow]:
    rows = []
    for agent in agents:
        mine = list(units.get(agent, {}).values())
        if not mine:
            raise BudgetError(f"agent {agent} has no scored unit; nothing to report")
        acc = stats.mean_ci([u.accuracy for u in mine], confidence)
        base = float(np.mean([u.base_accuracy for u in mine]))
        graders = sorted({g for u in mine for g in u.metrics}, key=_grader_order)
        steps = [r for r in records if r["agent"] == agent]
        rows.append(AgentRow(
            agent=agent,
            accuracy=acc.mean,
            ci_low=acc.low,
            ci_high=acc.high,
            base_accuracy=base,
            gain=acc.mean - base,
            normalized_gain=0.0 if base >= 1.0 else (acc.mean - base) / (1.0 - base),
            metrics={g: float(np.mean([u.metrics.get(g, np.nan) for u in mine])) for g in graders},
            units=len(mine),
            steps=budgets[agent].steps,
            evaluations=budgets[agent].evaluations,
            invalid=budgets[agent].invalid,
            wall_s=float(sum((r.get("timings") or {}).get("step_s", 0.0)
                             + (r.get("timings") or {}).get("act_s", 0.0) for r in steps)),
        ))
    return rows


def _grader_order(name: str) -> tuple[int, str]:
    order = ["exact_match", "f1", "contains", "judge"]
    return (order.index(name) if name in order else len(order), name)


def compare(
    units: dict[str, dict[UnitKey, Unit]],
    agent: str,
    reference: str,
    *,
    resamples: int,
    seed: int,
    confidence: float,
) -> Comparison:
    common = sorted(set(units[agent]) & set(units[reference]))
    if not common:
        raise BudgetError(f"{agent} and {reference} share no unit; they cannot be compared")
    a = np.array([units[agent][k].accuracy for k in common])  # (n,)
    b = np.array([units[reference][k].accuracy for k in common])  # (n,)
    boot = stats.paired_bootstrap(a, b, resamples=resamples, seed=seed, confidence=confidence)
    sign = stats.sign_test(a, b)
    return Comparison(agent, reference, len(common), boot.mean_diff, boot.low, boot.high,
                      boot.p_value, sign.wins, sign.losses, sign.ties, sign.p_value)


def comparisons(
    units: dict[str, dict[UnitKey, Unit]],
    rows: Sequence[AgentRow],
    cfg: BenchmarkConfig,
) -> list[Comparison]:
    """Every agent against the best agent, then against ``no_training`` and ``passage``."""
    best = max(rows, key=lambda r: r.accuracy).agent  # first in config order on a tie
    references = [best] + [a for a in ("no_training", "passage") if a in units and a != best]
    out = []
    for ref in references:
        for row in rows:
            if row.agent != ref:
                out.append(compare(units, row.agent, ref, resamples=cfg.resamples,
                                   seed=cfg.bootstrap_seed, confidence=cfg.confidence))
    return out


def noise_summary(
    records: Sequence[dict[str, Any]], base_records: Sequence[dict[str, Any]]
) -> NoiseSummary | None:
    if not records:
        return None
    agent = records[0]["agent"]
    units = unit_scores(records, base_records).get(agent, {})
    by_seed: dict[int, list[Unit]] = defaultdict(list)
    by_passage: dict[str, list[float]] = defaultdict(list)
    for (seed_index, _, pid), unit in sorted(units.items()):
        by_seed[seed_index].append(unit)
        by_passage[pid].append(unit.accuracy)
    if not by_seed:
        return None
    means = [float(np.mean([u.accuracy for u in us])) for _, us in sorted(by_seed.items())]
    reset_seeds = {int(r["seed_index"]): int(r["reset_seed"]) - int(r["episode"])
                   for r in records}
    per_passage = [float(np.std(v, ddof=1)) for v in by_passage.values() if len(v) > 1]
    return NoiseSummary(
        agent=agent,
        passages=len(by_passage),
        repeat_means=means,
        repeat_seeds=[reset_seeds[s] for s in sorted(by_seed)],
        spread=stats.spread(means),
        unit_std=float(np.mean(per_passage)) if per_passage else float("nan"),
    )


# --- the papers' figures, quoted -----------------------------------------------------------
class Anchor(NamedTuple):
    setting: str
    accuracy: str  # as printed, in percent
    source: str


# SEAL (arXiv 2506.10943), knowledge incorporation, single passage, no context: Qwen2.5-7B,
# 200 SQuAD v1.1 dev passages (974 questions), GPT-4.1 judge.
PAPER_ANCHORS: tuple[Anchor, ...] = (
    Anchor("base model, no adaptation", "32.7", "SEAL"),
    Anchor("train on passage only", "33.5", "SEAL"),
    Anchor("passage + own implications", "39.7", "SEAL"),
    Anchor("passage + GPT-4.1 implications", "46.3", "SEAL"),
    Anchor("SEAL, after 2 ReST-EM rounds", "47.0", "SEAL"),
    Anchor("rewrite prompt, before -> after ReST-EM", "49.4 -> 55.6", "SEAL"),
)


# --- the record of where and how it ran ----------------------------------------------------
def package_versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for label, dist in [("selfedit", "selfedit-gym"), ("torch", "torch"),
                        ("transformers", "transformers"), ("peft", "peft"), ("trl", "trl"),
                        ("gymnasium", "gymnasium"), ("numpy", "numpy"),
                        ("matplotlib", "matplotlib")]:
        try:
            out[label] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[label] = "not installed"
    out["python"] = platform.python_version()
    repo = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10, check=True)
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain",
                                "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True)
        out["commit"] = commit.stdout.strip() + (" (with local changes)" if dirty.stdout.strip()
                                                 else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def machine() -> dict[str, Any]:
    import torch

    from selfedit.training.run import machine_description

    out = machine_description()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                out["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        out["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)
    except (ValueError, OSError, AttributeError):
        pass
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


# --- the benchmark --------------------------------------------------------------------------
def _check_judge_key(cfg: BenchmarkConfig) -> None:
    """An endpoint judge without its key would turn every step into an invalid one: fail
    before hours of GPU time are spent on a report of errors."""
    import urllib.parse

    env = cfg.run.env
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


def _prepare(bench_dir: Path, cfg: BenchmarkConfig, *, resume: bool, force: bool) -> None:
    if resume:
        if not (bench_dir / "benchmark.yaml").is_file():
            raise ConfigError(f"--resume {bench_dir}: no benchmark.yaml there; is it a "
                              "benchmark directory?")
        return
    if bench_dir.exists() and any(bench_dir.iterdir()):
        if not force:
            raise BenchmarkExists(
                f"{bench_dir} already holds results: continue it with `selfedit benchmark "
                f"--resume {bench_dir}`, or start over with --force (deletes it)"
            )
        if not (bench_dir / "benchmark.yaml").is_file():
            raise BenchmarkExists(f"--force: {bench_dir} is not a benchmark directory (no "
                                  "benchmark.yaml); remove it yourself or pick another name")
        shutil.rmtree(bench_dir)
    bench_dir.mkdir(parents=True, exist_ok=True)
    (bench_dir / "benchmark.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def _prepare_run_dir(run_dir: Path, run_cfg: RunConfig, command: str) -> None:
    """A run directory the runner can 'resume' from its first step (a fixed path)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / "config.yaml").is_file():
        (run_dir / "config.yaml").write_text(yaml.safe_dump(run_cfg.to_dict(), sort_keys=False))
        (run_dir / "command.txt").write_text(command + "\n")


def _log_session(bench_dir: Path, command: str) -> None:
    path = bench_dir / "environment.json"
    sessions = json.loads(path.read_text()) if path.is_file() else []
    sessions.append({
        "command": command,
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "versions": package_versions(),
        "machine": machine(),
    })
    path.write_text(json.dumps(to_jsonable(sessions), indent=2))


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
        env: an env to use instead of building one from ``cfg.run.env`` (tests).
    """
    from selfedit.envs.backend import check_engine, check_model_source
    from selfedit.envs.selfedit_env import SelfEditEnv, load_env_corpus
    from selfedit.training.executor import check_executor, make_executor
    from selfedit.training.run import run

    # 1. Checks that load no weights: agents, the passage split, the model files, the
    #    judge's key. A mistake here leaves no directory behind.
    names = [check_agent_spec(spec) for spec in cfg.run.agents]
    corpus = load_env_corpus(cfg.run.env.corpus)
    split = passage_split(cfg, corpus)
    if env is None:
        check_engine(cfg.run.env.engine, cfg.run.env.device)
        check_model_source(cfg.run.env.model)
    _check_judge_key(cfg)
    check_executor(cfg.run.executor)
    command = command or shlex.join(["selfedit", *sys.argv[1:]])

    # 2. The directory: new (refusing to overwrite) or resumed.
    bench_dir = Path(resume) if resume is not None else cfg.directory
    _prepare(bench_dir, cfg, resume=resume is not None, force=force)
    (bench_dir / "passages.json").write_text(json.dumps(split, indent=1))
    _log_session(bench_dir, command)
    print(f"benchmark {cfg.run.name}: agents {names}; {len(split['report'])} report passages;"
          f" directory {bench_dir}", flush=True)

    # 3. The runs: the table's, then the noise repeats; one env and one executor (its Ray
    #    actors, if any), so each model loads once. The runner times each agent's own work.
    env = env if env is not None else SelfEditEnv(cfg.run.env, corpus=corpus)
    with make_executor(cfg.run.executor, cfg.run.env) as executor:
        _prepare_run_dir(bench_dir / "run", cfg.run, command)
        run(cfg.run, resume=bench_dir / "run", env=env, executor=executor)
        if cfg.noise_repeats:
            noise_cfg = cfg.noise_run_config()
            _prepare_run_dir(bench_dir / "noise", noise_cfg, command)
            run(noise_cfg, resume=bench_dir / "noise", env=env, executor=executor)

    # 4. Budgets, statistics, plots, report.
    report = write_report(bench_dir)
    print(f"\nreport: {report}")
    return bench_dir


def write_report(bench_dir: Path) -> Path:
    """Build report.md, table.csv, comparisons.csv, summary.json and plots/ from the records
    of a benchmark directory (no model needed); raise :class:`BudgetError` on unequal budgets.
    """
    bench_dir = Path(bench_dir)
    cfg_path = bench_dir / "benchmark.yaml"
    if not cfg_path.is_file():
        raise ConfigError(f"{bench_dir}: no benchmark.yaml; is it a benchmark directory?")
    cfg = BenchmarkConfig.from_dict(yaml.safe_load(cfg_path.read_text()))
    names = [check_agent_spec(spec) for spec in cfg.run.agents]
    records = read_steps(bench_dir / "run" / "steps.jsonl")
    noise_records = read_steps(bench_dir / "noise" / "steps.jsonl")
    iterations = read_steps(bench_dir / "run" / "iterations.jsonl")

    budgets = check_budgets(records, names,
                            completions_per_passage=cfg.run.env.completions_per_passage)
    units = unit_scores(records, noise_records)
    rows = agent_rows(units, records, budgets, names, cfg.confidence)
    comps = comparisons(units, rows, cfg)
    noise = noise_summary(noise_records, records)

    grader = cfg.run.env.reward_grader
    figures = _plots(bench_dir, cfg, names, records, iterations, rows)
    _write_csv(bench_dir / "table.csv", _table_dicts(rows))
    _write_csv(bench_dir / "comparisons.csv",
               [{**asdict(c), "verdict": c.verdict} for c in comps])
    env_path = bench_dir / "environment.json"
    sessions = json.loads(env_path.read_text()) if env_path.is_file() else []
    split_path = bench_dir / "passages.json"
    split = json.loads(split_path.read_text()) if split_path.is_file() else None
    summary = {
        "name": cfg.run.name,
        "reward_grader": grader,
        "confidence": cfg.confidence,
        "agents": _table_dicts(rows),
        "comparisons": [{**asdict(c), "verdict": c.verdict} for c in comps],
        "noise": None if noise is None else {**asdict(noise), "spread": noise.spread._asdict()},
        "budgets": {a: b._asdict() for a, b in budgets.items()},
        "passages": split,
        "sessions": sessions,
    }
    (bench_dir / "summary.json").write_text(json.dumps(to_jsonable(summary), indent=2))
    text = render_report(cfg, rows, comps, noise, budgets, figures, sessions, split)
    path = bench_dir / "report.md"
    path.write_text(text)
    return path


def _table_dicts(rows: Sequence[AgentRow]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        d = asdict(r)
        metrics = d.pop("metrics")
        out.append({**d, **metrics})
    return out


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(row.get(k)) for k in columns})


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.6g}"
    return value


def _plots(
    bench_dir: Path,
    cfg: BenchmarkConfig,
    names: Sequence[str],
    records: Sequence[dict[str, Any]],
    iterations: Sequence[dict[str, Any]],
    rows: Sequence[AgentRow],
) -> dict[str, str]:
    out = bench_dir / "plots"
    grader = cfg.run.env.reward_grader
    cpp = cfg.run.env.completions_per_passage
    series = {}
    for agent in names:
        mine = [r for r in records if r["agent"] == agent]
        series[agent] = plots.RewardSeries([step_evaluations(r, cpp) for r in mine],
                                           [float(r["reward"]) for r in mine])
    fixed = {name for name, spec in zip(names, cfg.run.agents, strict=True)
             if isinstance(spec, str) or spec.get("type", "fixed") == "fixed"}
    paths = {
        "rewards": plots.plot_rewards(series, out / "reward_vs_evaluations.png",
                                      iteration_size=cfg.run.iteration_size,
                                      ylabel=f"reward ({grader})", fixed=fixed),
        "collapse": plots.plot_collapse(iterations, out / "collapse.png", agents=names,
                                        fixed=fixed),
        "bars": plots.plot_accuracy_bars(
            [plots.AgentBar(r.agent, r.accuracy, r.ci_low, r.ci_high, r.base_accuracy)
             for r in rows],
            out / "accuracy.png", ylabel=f"adapted accuracy ({grader})",
            confidence=cfg.confidence),
    }
    return {k: str(p.relative_to(bench_dir)) for k, p in paths.items()}


# --- the report ----------------------------------------------------------------------------
def _num(value: float, signed: bool = False) -> str:
    if not math.isfinite(value):
        return "n/a"
    if abs(value) < 5e-13:  # float noise of a zero difference: no "-0.000"
        value = 0.0
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _p(value: float) -> str:
    return f"{value:.4f}" if value >= 0.0001 else "< 0.0001"


def _describe_passages(spec: Any, ids: Sequence[str] | None) -> str:
    count = f" ({len(ids)} passages)" if ids is not None else ""
    return f"`{spec}`{count}"


def render_report(
    cfg: BenchmarkConfig,
    rows: Sequence[AgentRow],
    comps: Sequence[Comparison],
    noise: NoiseSummary | None,
    budgets: dict[str, Budget],
    figures: dict[str, str],
    sessions: Sequence[dict[str, Any]],
    split: dict[str, list[str]] | None,
) -> str:
    env = cfg.run.env
    grader = env.reward_grader
    conf = f"{cfg.confidence:.0%}"
    b0 = next(iter(budgets.values()))
    lines = [
        f"# Benchmark `{cfg.run.name}`",
        "",
        "Which strategy teaches the model the passage best, and is the difference real?",
        "",
        f"- model `{env.model}` ({env.dtype}); corpus `{env.corpus}`",
        f"- report passages {_describe_passages(env.passages, split and split['report'])}; "
        "tuning passages "
        + (_describe_passages(cfg.tuning_passages, split and split["tuning"])
           + ", used while developing agents and templates, never in this report"
           if cfg.tuning_passages is not None else "not stated"),
        f"- {cfg.run.seeds} seed(s), {env.passages_per_step} passage(s) per step, "
        f"{env.completions_per_passage} completion(s) per passage; reward grader `{grader}`",
        f"- budget: every agent used exactly **{b0.evaluations} env evaluations in "
        f"{b0.steps} steps** (checked from `run/steps.jsonl`; an evaluation is one passage x "
        "completion, an invalid action is charged as evaluated)",
        "",
        "## Results (measured)",
        "",
    ]
    extra = [g for g in rows[0].metrics if g != grader]
    labels = {"exact_match": "EM", "f1": "F1", "contains": "contains", "judge": "judge"}
    head = (f"| agent | adapted ({grader}) | {conf} CI | base | gain | norm. gain | "
            + " | ".join(labels.get(g, g) for g in extra)
            + " | units | evaluations | invalid | wall s |")
    lines += [head, "|---|" + "---:|" * (head.count("|") - 2)]
    for r in rows:
        lines.append(
            f"| {r.agent} | {_num(r.accuracy)} | [{_num(r.ci_low)}, {_num(r.ci_high)}] "
            f"| {_num(r.base_accuracy)} | {_num(r.gain, True)} | {_num(r.normalized_gain, True)} | "
            + " | ".join(_num(r.metrics.get(g, float("nan"))) for g in extra)
            + f" | {r.units} | {r.evaluations} | {r.invalid} | {r.wall_s:.0f} |"
        )
    best = max(rows, key=lambda r: r.accuracy)
    lines += [
        "",
        f"Adapted accuracy: mean over the units, one unit = one (seed, episode, passage), the "
        f"accuracy a template reached on a passage's questions without seeing it; {conf} CI: "
        "Student-t over the units (few units: the t-interval keeps its coverage where a "
        "bootstrap of a mean under-covers; an interval can leave [0, 1] when units are few). "
        "Norm. gain = (adapted - base) / (1 - base) from the means. A search agent's row is the "
        "mean over *every* template it proposed within the budget, not its best one (a maximum"
        " over noisy evaluations is biased upwards). An invalid action counts at base accuracy "
        "(the model was left as it was). Wall s: env time plus the agent's own time to write "
        "its templates; the first agent on a passage also pays that passage's one-off base "
        "evaluation when it is not cached.",
        "",
        f"Highest mean: **{best.agent}** ({_num(best.accuracy)}). Whether that is real is "
        "the next section's question.",
        "",
        "## Is the difference real? Paired comparisons",
        "",
        f"Each agent minus a reference on the same units: mean difference with a {conf} paired"
        f" bootstrap interval ({cfg.resamples:,} resamples, seed {cfg.bootstrap_seed}) and "
        "two-sided p-value, and an exact sign test (wins / losses / ties over units). "
        f"**within noise**: the interval contains 0. p-values are not corrected for the "
        f"{len(comps)} comparisons, and the best agent was picked after looking: hold a "
        "difference against it to a stricter bar than p < 0.05.",
    ]
    for ref in dict.fromkeys(c.reference for c in comps):
        tag = " (best mean)" if ref == best.agent else ""
        lines += ["", f"Against **{ref}**{tag}:", "",
                  "| agent | difference | " + conf + " CI | p (bootstrap) | wins/losses/ties "
                  "| p (sign test) | verdict |",
                  "|---|---:|---:|---:|---:|---:|---|"]
        for c in (c for c in comps if c.reference == ref):
            lines.append(
                f"| {c.agent} | {_num(c.mean_diff, True)} | [{_num(c.ci_low, True)}, "
                f"{_num(c.ci_high, True)}] | {_p(c.p_bootstrap)} | {c.wins}/{c.losses}/{c.ties}"
                f" | {_p(c.p_sign)} | {c.verdict} |"
            )
    lines += ["", "## Evaluation noise", ""]
    if noise is None:
        lines.append("Not measured (`noise_repeats: 0`).")
    else:
        sp = noise.spread
        lines += [
            f"The fixed template `{noise.agent.removeprefix('noise-')}` evaluated "
            f"{len(noise.repeat_means)} times on the same {noise.passages} report passages, "
            "each time with other seeds (the step seed drives the sampling of completions when"
            " the template has any, the LoRA initialisation and the batch order); these "
            "evaluations are not part of the table above.",
            "",
            "| repeat | base reset seed | mean adapted accuracy |",
            "|---:|---:|---:|",
            *[f"| {i} | {s} | {_num(m)} |"
              for i, (s, m) in enumerate(zip(noise.repeat_seeds, noise.repeat_means,
                                             strict=True))],
            "",
            f"Spread of the repeat means: std {_num(sp.std)}, range {_num(sp.low)} to "
            f"{_num(sp.high)} (width {_num(sp.range)}). One passage's accuracy moves by "
            f"{_num(noise.unit_std)} (std across repeats, averaged over passages). Two table "
            "rows that differ by less than the width of that range can differ by the seeds "
            "alone; the paired comparisons above are the test to trust.",
        ]
    lines += [
        "",
        "## Plots",
        "",
        f"![reward against env evaluations]({figures['rewards']})",
        "",
        "Best reward so far and mean reward per iteration against env evaluations. The "
        "best-so-far curve rises for a fixed template too (it is a maximum over noisy "
        "evaluations); compare agents on the table, not on its end point.",
        "",
        f"![exploration-collapse metrics per iteration]({figures['collapse']})",
        "",
        "Exploration collapse per iteration (`run/iterations.jsonl`): mean pairwise "
        "similarity of the instructions and of the hyperparameters, and the number of distinct"
        " hyperparameter settings, for the agents that choose templates (a fixed template "
        "reads 1.0, 1.0 and 1 by construction and is not drawn).",
        "",
        f"![final table]({figures['bars']})",
        "",
        f"TensorBoard, one run per agent: `tensorboard --logdir {cfg.directory / 'run' / 'tb'}`"
        " (the noise repeats are under `noise/tb`).",
    ]
    if cfg.paper_anchors:
        lines += [
            "",
            "## The papers' figures (quoted, not measured)",
            "",
            "> **Quoted, not measured.** These numbers are copied from SEAL (arXiv 2506.10943)"
            " for orientation only: Qwen2.5-7B, 200 SQuAD v1.1 dev passages (974 questions), "
            "single passage, no context, graded by a GPT-4.1 judge, in percent. The model, "
            "the passages and the grader differ from the measured rows above; do not compare "
            "them row by row.",
            "",
            "| setting (quoted) | accuracy % (quoted) | source |",
            "|---|---:|---|",
            *[f"| {a.setting} | {a.accuracy} | {a.source} |" for a in PAPER_ANCHORS],
        ]
    first = sessions[0] if sessions else {}
    lines += [
        "",
        "## Reproduce",
        "",
        "Command that made this directory:",
        "",
        "```bash",
        first.get("command", "(not recorded)"),
        "```",
    ]
    if len(sessions) > 1:
        lines += ["", "Continued with:", "", "```bash",
                  *[s.get("command", "") for s in sessions[1:]], "```"]
    lines += [
        "",
        "Resolved configuration (`benchmark.yaml`):",
        "",
        "```yaml",
        yaml.safe_dump(cfg.to_dict(), sort_keys=False).rstrip(),
        "```",
        "",
        "Package versions and machine"
        + (" (first session):" if len(sessions) > 1 else ":"),
        "",
    ]
    versions = first.get("versions") or package_versions()
    lines.append(", ".join(f"{k} {v}" for k, v in versions.items()))
    lines.append("")
    mach = first.get("machine") or {}
    lines.append(", ".join(f"{k}: {v}" for k, v in mach.items()) or "(not recorded)")
    lines.append("")
    return "\n".join(lines)
