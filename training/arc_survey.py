"""Which ARC tasks can a model solve with a recipe? Baselines, oracle, writer, one ReST-EM round.

``selfedit arc-survey --config configs/arc_cpu.yaml`` runs, top to bottom (the old
``python -m selfedit.envs.arc_survey`` still works and says so):

1. **Baselines** on every task of ``env.tasks``: in-context only, the plain leave-one-out set,
   every augmentation family (:data:`~selfedit.agents.arc.ARC_BASELINES`).
2. **Writer**: the self model writes ``writer_samples`` recipes per task from the env's
   observation (SEAL's self-edit; :class:`~selfedit.agents.arc.RecipeWriterAgent`).
3. **Oracle**: per task, the baselines' recipes and then ``oracle_recipes`` in order until one
   solves it (:class:`~selfedit.agents.arc.OracleSearchAgent`); a recipe already evaluated on a
   task is not run again (steps are deterministic for a seed, so the result would be equal).
   It costs the most, so it comes after the cheaper phases; when ``max_minutes`` runs out,
   each task shows how many recipes were tried.
4. **ReST-EM, one iteration** (SEAL sec. 3.1), last: its M-step changes the env's weights
   in place. The writer's recipes that solved their task are the winners; the writer is
   fine-tuned on (observation -> recipe) with the SFT step the SQuAD ReST-EM uses, then writes
   recipes for every task again. Without winners there is nothing to learn from, and the
   summary says so. (``selfedit train`` with ``env_id: selfedit/ARC-v0`` runs full ReST-EM
   with held-out tasks, checkpoints and resume: configs/restem_arc_cpu.yaml.)

Everything lands in ``<output_dir>/<name>__<seed>__<time>/``: the resolved config, one JSON
line per evaluation (``evaluations.jsonl``), ``summary.json`` and ``summary.md``. Phases
start only while ``max_minutes`` lasts; what was skipped is listed, never silently dropped.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from selfedit.envs.arc import ArcConfig, ArcEnv
from selfedit.envs.arc_data import ArcTask
from selfedit.envs.arc_recipe import ArcRecipe, parse_recipe
from selfedit.envs.config import ConfigError, check_keys, check_types
from selfedit.training import sft
from selfedit.training.experiment import apply_overrides, read_yaml

__all__ = ["SurveyConfig", "main", "run_survey"]


def _f(default: Any, help: str) -> Any:  # noqa: A002 - "help" reads best at call sites
    return field(default=default, metadata={"help": help})


@dataclass
class SurveyConfig:
    """One survey: the env, which baselines, the oracle's recipes, the writer, ReST-EM."""

    name: str = _f("arc_cpu", "run name (the run directory starts with it)")
    seed: int = _f(0, "reset seed of every evaluation (a recipe's result depends on it)")
    output_dir: str = _f("results", "where the run directory is created")
    max_minutes: float = _f(30.0, "no new evaluation starts after this many minutes")
    env: ArcConfig = _f(None, "selfedit/ARC-v0 settings (env.tasks chooses the tasks)")
    baselines: list[str] = _f(None, "baselines run on every task; null = in_context, "
                              "no_augmentation, all_augmentations")
    baseline_hyperparameters: dict[str, Any] = _f(None, "hyperparameters of the training "
                                                  "baselines, e.g. {learning_rate: 0.001, "
                                                  "num_epochs: 2}")
    oracle_recipes: list[dict[str, Any]] = _f(None, "recipes the oracle tries after the "
                                              "baselines' (JSON objects, as an agent writes)")
    writer_samples: int = _f(1, "recipes the self model writes per task (0 = no writer)")
    writer: dict[str, Any] = _f(None, "RecipeWriterAgent settings: exploit_temperature, "
                                "max_new_tokens, max_retries, prefix_json")
    restem: bool = _f(True, "one ReST-EM iteration on the writer's winning recipes")
    sft: dict[str, Any] = _f(None, "SFT settings of the ReST-EM step (SFTSettings keys)")

    def __post_init__(self) -> None:
        if isinstance(self.env, dict) or self.env is None:
            self.env = ArcConfig.from_dict(self.env or {})
        self.baselines = (["in_context", "no_augmentation", "all_augmentations"]
                          if self.baselines is None else self.baselines)
        self.baseline_hyperparameters = self.baseline_hyperparameters or {}
        self.oracle_recipes = self.oracle_recipes or []
        self.writer = self.writer or {}
        self.sft = self.sft or {}
        check_types(self, where="survey")
        from selfedit.agents.arc import ARC_BASELINES

        unknown = [b for b in self.baselines if b not in ARC_BASELINES]
        if unknown:
            raise ConfigError(f"unknown baselines {unknown}; use {list(ARC_BASELINES)}")
        for k, raw in enumerate(self.oracle_recipes):
            try:
                parse_recipe(raw)
            except ValueError as err:
                raise ConfigError(f"oracle_recipes[{k}]: {err}") from None
        if self.writer_samples < 0 or not self.max_minutes > 0:
            raise ConfigError("writer_samples must be >= 0 and max_minutes > 0")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SurveyConfig:
        check_keys(cls, raw, where="survey")
        return cls(**raw)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["env"] = asdict(self.env)
        return out


@dataclass
class Evaluation:
    """One recipe on one task: the env step, kept small enough to log every one."""

    task_id: str
    phase: str  # baseline | oracle | writer | restem
    agent: str
    recipe: dict[str, Any] | None
    reward: float
    solved: bool
    error: str | None
    seconds: float
    action: str = ""  # a writer's raw reply (its recipe may be invalid)
    sequences: int = 0
    train_tokens: int = 0
    loss_first: float | None = None
    loss_last: float | None = None
    predictions: list[str] = field(default_factory=list)  # first reply per test output
    budget: list[str] = field(default_factory=list)


class Survey:
    """Evaluations with a cache and a clock, logged as they finish."""

    def __init__(self, cfg: SurveyConfig, env: ArcEnv, run_dir: Path) -> None:
        self.cfg, self.env, self.run_dir = cfg, env, run_dir
        self.start = time.perf_counter()
        self.cache: dict[tuple[str, str], Evaluation] = {}
        self.records: list[Evaluation] = []
        self.skipped: list[str] = []
        self.log = (run_dir / "evaluations.jsonl").open("a", encoding="utf-8")

    @property
    def minutes(self) -> float:
        return (time.perf_counter() - self.start) / 60

    def out_of_time(self, what: str) -> bool:
        if self.minutes < self.cfg.max_minutes:
            return False
        self.skipped.append(what)
        return True

    def evaluate(self, task: ArcTask, action: ArcRecipe | str, *, phase: str, agent: str,
                 cache: bool = True, reply: str = "") -> Evaluation:
        """One env step (reset to the survey's seed), logged; cached by (task, recipe)."""
        key = (task.id, action.to_json() if isinstance(action, ArcRecipe) else action)
        if cache and key in self.cache:
            return self.cache[key]
        t0 = time.perf_counter()
        self.env.reset(seed=self.cfg.seed, options={"task_id": task.id})
        _, reward, _, _, info = self.env.step(action)
        update = info.get("update", {})
        record = Evaluation(
            task_id=task.id, phase=phase, agent=agent, recipe=info.get("recipe"),
            reward=float(reward), solved=bool(info.get("solved")), error=info.get("error"),
            seconds=time.perf_counter() - t0,
            action=reply or ("" if isinstance(action, ArcRecipe) else action),
            sequences=info.get("training", {}).get("sequences", 0),
            train_tokens=update.get("train_tokens", 0),
            loss_first=update.get("loss_first"), loss_last=update.get("loss_last"),
            predictions=[t["predictions"][0]["reply"][:200] if t["predictions"] else ""
                         for t in info.get("tests", [])],
            budget=list(info.get("budget", [])),
        )
        if cache:
            self.cache[key] = record
        self.records.append(record)
        self.log.write(json.dumps(asdict(record)) + "\n")
        self.log.flush()
        print(f"[{self.minutes:5.1f} min] {phase:8s} {task.id} {agent:22s} reward={reward:+.1f}"
              f" {record.seconds:6.1f}s {record.error or ''}", flush=True)
        return record


def run_survey(cfg: SurveyConfig, *, env: ArcEnv | None = None,
               command: str | None = None) -> Path:
    """Run the four phases; return the run directory."""
    from selfedit.agents.arc import OracleSearchAgent, RecipeWriterAgent, arc_baseline

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(cfg.output_dir) / f"{cfg.name}__{cfg.seed}__{stamp}"
    run_dir.mkdir(parents=True, exist_ok=False)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    env = env or ArcEnv(cfg.env)
    survey = Survey(cfg, env, run_dir)
    tasks = env.tasks
    print(f"{len(tasks)} tasks: {', '.join(t.id for t in tasks)}", flush=True)

    # 1. Baselines.
    baselines = {b: arc_baseline(b, **cfg.baseline_hyperparameters) for b in cfg.baselines}
    for name, recipe in baselines.items():
        for task in tasks:
            if not survey.out_of_time(f"baseline {name} on {task.id}"):
                survey.evaluate(task, recipe, phase="baseline", agent=name)

    # 2. The writer (self mode: the env's model writes recipes from the observation).
    writer_records: list[tuple[str, str, Evaluation]] = []
    writer = None
    if cfg.writer_samples:
        writer = RecipeWriterAgent(env.backend, seed=cfg.seed, **cfg.writer)
        writer_records = _write_and_evaluate(survey, writer, tasks, cfg.writer_samples, "writer")

    # 3. Oracle: the baselines' recipes first (cached), then the configured ones.
    extra = [parse_recipe(r)[0] for r in cfg.oracle_recipes]
    oracle = OracleSearchAgent([*baselines.values(), *extra])
    for task in tasks:
        for recipe in oracle.recipes:
            if oracle.result_for(task.id).solved:
                break
            cached = (task.id, recipe.to_json()) in survey.cache  # free: not held to the clock
            if not cached and survey.out_of_time(f"oracle {recipe.label} on {task.id}"):
                break
            record = survey.evaluate(task, recipe, phase="oracle", agent="oracle")
            oracle.observe(recipe, record.reward, {"task_id": task.id, "recipe": record.recipe,
                                                   "error": record.error})

    # 4. One ReST-EM iteration, last: its M-step changes the env's weights in place.
    restem: dict[str, Any] = {"ran": False, "why_not": "writer_samples: 0"}
    if writer is not None:
        restem = _restem_iteration(cfg, survey, writer, tasks, writer_records)

    summary = _summary(cfg, env, survey, oracle, restem, command)
    if writer is not None:  # valid recipes written, retries, replies handed over invalid
        summary["writer_counts"] = dict(writer.counts)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (run_dir / "summary.md").write_text(_markdown(summary))
    survey.log.close()
    return run_dir


def _write_and_evaluate(survey: Survey, writer: Any, tasks: list[ArcTask], samples: int,
                        phase: str) -> list[tuple[str, str, Evaluation]]:
    """Each task: the writer's recipes (one batched generate), then each evaluated."""
    out = []
    for task in tasks:
        if survey.out_of_time(f"{phase} on {task.id}"):
            continue
        obs, info = survey.env.reset(seed=survey.cfg.seed, options={"task_id": task.id})
        actions = writer.act_batch([obs] * samples, [info] * samples)
        for action, reply in zip(actions, writer.replies, strict=True):
            record = survey.evaluate(task, action, phase=phase, agent=writer.name, cache=False,
                                     reply=reply)
            out.append((obs["prompt"], reply, record))
    return out


def _restem_iteration(cfg: SurveyConfig, survey: Survey, writer: Any, tasks: list[ArcTask],
                      before: list[tuple[str, str, Evaluation]]) -> dict[str, Any]:
    winners = [(prompt, reply) for prompt, reply, rec in before if rec.solved]
    out: dict[str, Any] = {"ran": False, "winners": len(winners),
                           "before_solved": sum(r.solved for *_, r in before),
                           "before_evaluations": len(before)}
    if not cfg.restem:
        out["why_not"] = "restem: false in the config"
        return out
    if not winners:
        out["why_not"] = ("no recipe the model wrote solved its task: ReST-EM's M-step has no"
                          " example to learn from")
        return out
    if survey.out_of_time("ReST-EM iteration"):
        out["why_not"] = "out of time (max_minutes)"
        return out
    examples = [sft.SFTExample("recipes", prompt, reply) for prompt, reply in winners]
    with tempfile.TemporaryDirectory() as work:  # the merged adapter is not kept
        result = sft.sft_update(survey.env.backend, examples,
                                sft.SFTSettings.from_dict(cfg.sft), seed=cfg.seed,
                                work_dir=Path(work))
    survey.env.rebase("restem-iteration-1")  # the policy is the env's model: new base
    after = _write_and_evaluate(survey, writer, tasks, cfg.writer_samples, "restem")
    out.update(ran=True, sft_examples=len(examples), sft_loss_first=result.loss_first,
               sft_loss_last=result.loss_last, sft_seconds=result.seconds,
               after_solved=sum(r.solved for *_, r in after), after_evaluations=len(after))
    return out


def _rate(values: list[bool]) -> str:
    return f"{sum(values)}/{len(values)}" if values else "-"


def _summary(cfg: SurveyConfig, env: ArcEnv, survey: Survey, oracle: Any,
             restem: dict[str, Any], command: str | None) -> dict[str, Any]:
    by_task: dict[str, dict[str, Any]] = {}
    for task in env.tasks:
        recs = [r for r in survey.records if r.task_id == task.id]
        result = oracle.results.get(task.id)
        by_task[task.id] = {
            "split": task.split, "max_side": task.max_side, "demonstrations": len(task.train),
            "baselines": {r.agent: r.reward for r in recs if r.phase == "baseline"},
            "oracle": None if result is None else {
                "solved": result.solved, "tried": result.tried, "of": len(oracle.recipes),
                "recipe": result.recipe},
            "writer": [r.reward for r in recs if r.phase == "writer"],
            "restem": [r.reward for r in recs if r.phase == "restem"],
        }
    rates = {b: _rate([t["baselines"][b] >= 1 for t in by_task.values()
                       if b in t["baselines"]]) for b in cfg.baselines}
    oracle_done = [t["oracle"] for t in by_task.values() if t["oracle"]]
    backend = env.backend
    return {
        "command": command,
        "model": env.config.model,
        "precision": str(getattr(backend, "precision", "")),
        "grid_separator": env.grid_separator,
        "tasks": [t.id for t in env.tasks],
        "excluded": env.excluded,
        "minutes": round(survey.minutes, 2),
        "skipped": survey.skipped,
        "solve_rates": {
            **{f"baseline/{k}": v for k, v in rates.items()},
            "oracle": _rate([o["solved"] for o in oracle_done]),
            "writer": _rate([r.solved for r in survey.records if r.phase == "writer"]),
            "restem_after": _rate([r.solved for r in survey.records if r.phase == "restem"]),
        },
        "solved_by_any_recipe": sorted(k for k, t in by_task.items()
                                       if t["oracle"] and t["oracle"]["solved"]),
        "restem": restem,
        "per_task": by_task,
    }


def _markdown(s: dict[str, Any]) -> str:
    lines = [f"# ARC survey: {s['model']}", "", f"Command: `{s['command']}`", "",
             f"Precision: {s['precision']}. Grid separator: {s['grid_separator']!r}."
             f" Wall clock: {s['minutes']} min.", "", "## Solve rates", "",
             "| agent | solved |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in s["solve_rates"].items()]
    lines += ["", f"Solved by any recipe tried: {', '.join(s['solved_by_any_recipe']) or 'none'}",
              "", "## Per task", "",
              "| task | split | side | demos | baselines | oracle (tried/of) | writer |",
              "|---|---|---|---|---|---|---|"]
    for task_id, t in s["per_task"].items():
        base = ", ".join(f"{k}={v:g}" for k, v in t["baselines"].items())
        o = t["oracle"]
        orc = "-" if o is None else f"{'solved' if o['solved'] else 'no'} ({o['tried']}/{o['of']})"
        lines.append(f"| {task_id} | {t['split']} | {t['max_side']} | {t['demonstrations']} |"
                     f" {base} | {orc} | {', '.join(f'{w:g}' for w in t['writer']) or '-'} |")
    if "writer_counts" in s:
        lines += ["", f"Writer: {json.dumps(s['writer_counts'])} (attempts include retries;"
                  " gave_up = replies handed to the env invalid, penalised)"]
    lines += ["", "## ReST-EM", "", "```json", json.dumps(s["restem"], indent=2), "```"]
    if s["skipped"]:
        lines += ["", "## Skipped (max_minutes)", ""] + [f"- {x}" for x in s["skipped"]]
    if s["excluded"]:
        lines += ["", "## Excluded tasks", ""] + [f"- {k}: {v}" for k, v in s["excluded"].items()]
    return "\n".join(lines) + "\n"


def load_survey_config(path: str | Path | None,
                       overrides: Sequence[str] = ()) -> SurveyConfig:
    """The YAML at ``path`` with ``key=value`` overrides (dotted keys reach into ``env``),
    read as every command reads its config (size and alias limits, one-line errors)."""
    return SurveyConfig.from_dict(apply_overrides(read_yaml(path), list(overrides)))


def main(argv: list[str] | None = None, *, prog: str = "selfedit arc-survey") -> int:
    """``selfedit arc-survey [--config FILE] [key=value ...]``; returns the exit status."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML survey config (configs/arc_cpu.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. env.tasks=seal_eval")
    args = parser.parse_args(argv)
    try:
        cfg = load_survey_config(args.config, args.overrides)
    except (ConfigError, FileNotFoundError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    words = list(argv) if argv is not None else sys.argv[1:]
    run_dir = run_survey(cfg, command=shlex.join([*prog.split(), *words]))
    print(f"results in {run_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(prog="python -m selfedit.training.arc_survey"))
