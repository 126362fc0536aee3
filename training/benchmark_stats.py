"""The benchmark's numbers from step records: equal budgets, units, the table, comparisons.

The unit of the statistics is one *(seed, episode, passage)*: the accuracy one template
reached on one passage (averaged over its completions). Every agent must have spent the same
budget of env evaluations on the same units (:func:`check_budgets`), so every comparison is
paired (:func:`compare`: a paired bootstrap and an exact sign test from
:mod:`~selfedit.training.stats`).

Size (~530 lines): every statistic of the benchmark report (budget checks, paired
comparisons, noise, power) in one place, so the report and `--plan` compute alike.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from selfedit.training import stats
from selfedit.training.benchmark_config import BenchmarkConfig

__all__ = ["AgentRow", "Budget", "BudgetError", "Comparison", "NoiseSummary", "PairPower",
           "PowerAnalysis", "TemplateMeasures", "Unit", "pair_power", "power_analysis",
           "agent_rows", "check_budgets", "compare", "comparisons", "noise_summary",
           "step_evaluations", "template_measures", "unit_scores"]


class BudgetError(RuntimeError):
    """Agents used different numbers of env evaluations (or were not evaluated on the same
    units); their numbers would not be comparable, so no report is written."""



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


@dataclass
class PairPower:
    """What a paired comparison of two agents can resolve with the units it has."""

    agent: str
    reference: str
    units: int
    observed_difference: float  # mean of agent - reference over the common units
    sd: float  # standard deviation of the paired differences
    detectable: float  # smallest true difference found with the benchmark's power here
    units_needed: int | None  # units that would make the observed difference detectable


@dataclass
class PowerAnalysis:
    """The benchmark's power: what it can rank, and what it would take to rank the top two."""

    confidence: float
    power: float
    top: PairPower | None  # the best agent against the runner-up
    pairs: list[PairPower]  # every agent against the best


def pair_power(units: dict[str, dict[UnitKey, Unit]], agent: str, reference: str, *,
               confidence: float, power: float) -> PairPower:
    common = sorted(set(units[agent]) & set(units[reference]))
    diff = np.array([units[agent][k].accuracy - units[reference][k].accuracy
                     for k in common])  # (n,)
    sd = float(diff.std(ddof=1)) if len(diff) > 1 else float("nan")
    observed = float(diff.mean()) if len(diff) else float("nan")
    ok = len(diff) > 1 and np.isfinite(sd)
    return PairPower(
        agent, reference, len(common), observed, sd,
        stats.detectable_difference(sd, len(common), confidence=confidence, power=power)
        if ok else float("inf"),
        stats.units_needed(sd, observed, confidence=confidence, power=power) if ok else None,
    )


def power_analysis(units: dict[str, dict[UnitKey, Unit]], rows: Sequence[AgentRow], *,
                   confidence: float, power: float) -> PowerAnalysis:
    """Minimal detectable differences from the paired noise the benchmark measured.

    For every agent against the best, and for the best against the runner-up: the standard
    deviation of the paired per-unit differences gives the smallest true difference a
    paired test over these units detects with ``power`` (:func:`stats.detectable_difference`)
    and how many units would make the observed difference detectable.
    """
    ranked = sorted(rows, key=lambda r: r.accuracy, reverse=True)
    best = ranked[0].agent
    pairs = [pair_power(units, r.agent, best, confidence=confidence, power=power)
             for r in ranked[1:]]
    top = None
    if len(ranked) > 1:
        top = pair_power(units, best, ranked[1].agent, confidence=confidence, power=power)
    return PowerAnalysis(confidence, power, top, pairs)


# --- the template-search paper's measurements --------------------------------------------------
@dataclass
class TemplateMeasures:
    """One agent's measurements as the template-search paper defines them per template.

    arXiv 2601.14532 (Cheong et al., "Search over Self-Edit Strategies for LLM Adaptation")
    scores a template over a tensor of results (A articles, C completions of the template per
    article, E evaluation repeats per adapter); its code documents each statistic
    (``apply_self_edits_output_explanation``, ``self_edit_template_statistics``). Here an
    article is a benchmark unit (seed, episode, passage), a completion one result of a step
    (``env.completions_per_passage`` of them per passage), a repeat one entry of a result's
    ``repeat_accuracy`` (answer sampling). Every spread is a population standard deviation
    (ddof 0, numpy's default, as the paper's code computes them). An invalid action counts at
    the passage's base accuracy (gain 0, no win), as in the table, and is left out of the
    three spreads (it has no completion to vary).

    * ``accuracy``: mean over (A, C) of the evaluation's accuracy.
    * ``gain``: mean over (A, C) of accuracy - the article's base accuracy (no adapter).
    * ``normalized_gain``: mean over (A, C) of (accuracy - base) / (1 - base) (Hake 1998; 0
      where base = 1): unlike the table's, a mean of per-evaluation ratios.
    * ``win_rate``: share of (A, C) evaluations whose accuracy beats the article's base
      accuracy (the paper's win rate: against the unadapted model).
    * ``win_rate_reference``: share of common units where the agent's unit accuracy beats the
      reference agent's (``measure_reference``, e.g. ``passage``); ties counted apart.
    * ``robustness``: standard deviation across passages of the agent's per-passage mean
      accuracy ("how robust is the template across different articles": low =
      general-purpose).
    * ``instantiation_noise``: per unit, the standard deviation across completions of their
      accuracy (mean over repeats), averaged over units: how much the particular completion of
      the template matters. None with one completion per passage.
    * ``evaluation_noise``: per evaluation, the standard deviation across its answer repeats,
      averaged over evaluations: how much grading one fixed adapter fluctuates. None when no
      result carries ``repeat_accuracy`` (answers were not sampled: "not measured").
    * ``sequences`` / ``train_tokens``: training sequences and tokens per evaluation (what
      the update trained on, from ``results[i].update``).
    """

    agent: str
    units: int
    evaluations: int
    completions: int  # the most completions any unit had
    invalid_units: int
    accuracy: float
    gain: float
    normalized_gain: float
    win_rate: float
    reference: str | None
    win_rate_reference: float | None
    tie_rate_reference: float | None
    robustness: float
    instantiation_noise: float | None
    evaluation_noise: float | None
    repeats: int  # the most answer repeats any evaluation had (0: not measured)
    sequences: float
    train_tokens: float


def _pstd(values: Sequence[float]) -> float:
    return float(np.std(values)) if len(values) else float("nan")


def _evaluations(record: dict[str, Any], base: dict[str, tuple[float, dict[str, float]]]
                 ) -> dict[str, list[dict[str, Any]]]:
    """A step's evaluations per passage: its results, or an invalid step's passages at base."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    if record.get("error"):
        for pid in record.get("passage_ids") or []:
            if pid in base:
                acc = base[pid][0]
                out[pid].append({"accuracy": acc, "base_accuracy": acc, "invalid": True})
        return out
    for r in record.get("results") or []:
        out[r["passage_id"]].append(r)
    return out


def template_measures(records: Sequence[dict[str, Any]], agents: Sequence[str], *,
                      reference: str | None = "passage",
                      base_records: Sequence[dict[str, Any]] = ()) -> list[TemplateMeasures]:
    """:class:`TemplateMeasures` of every agent, from step records alone (no model)."""
    lookup = _base_lookup([*records, *base_records])
    units = unit_scores(records, base_records)
    ref = reference if reference in units else None
    out = []
    for agent in agents:
        per_unit: dict[UnitKey, list[dict[str, Any]]] = {}
        for record in (r for r in records if r.get("agent") == agent):
            prefix = (int(record["seed_index"]), int(record["episode"]))
            for pid, evals in _evaluations(record, lookup).items():
                per_unit[(*prefix, pid)] = evals
        flat = [e for evals in per_unit.values() for e in evals]
        if not flat:
            raise BudgetError(f"agent {agent} has no scored unit; nothing to measure")
        acc = np.array([float(e["accuracy"]) for e in flat])  # (A*C,)
        base = np.array([float(e["base_accuracy"]) for e in flat])  # (A*C,)
        norm = np.where(base >= 1.0, 0.0, (acc - base) / np.where(base >= 1.0, 1.0, 1.0 - base))
        by_passage: dict[str, list[float]] = defaultdict(list)
        for (_, _, pid), evals in per_unit.items():
            by_passage[pid] += [float(e["accuracy"]) for e in evals]
        valid = {k: v for k, v in per_unit.items() if not v[0].get("invalid")}
        inst = [_pstd([_repeat_mean(e) for e in evals]) for evals in valid.values()
                if len(evals) > 1]
        repeats = [e["repeat_accuracy"] for evals in valid.values() for e in evals
                   if isinstance(e.get("repeat_accuracy"), list) and e["repeat_accuracy"]]
        win_ref = tie_ref = None
        if ref is not None and agent != ref:
            common = sorted(set(units.get(agent, {})) & set(units[ref]))
            if common:
                mine = np.array([units[agent][k].accuracy for k in common])
                theirs = np.array([units[ref][k].accuracy for k in common])
                win_ref = float(np.mean(mine > theirs))
                tie_ref = float(np.mean(mine == theirs))
        updates = [e.get("update") or {} for evals in valid.values() for e in evals]
        out.append(TemplateMeasures(
            agent=agent,
            units=len(per_unit),
            evaluations=len(flat),
            completions=max(len(v) for v in per_unit.values()),
            invalid_units=len(per_unit) - len(valid),
            accuracy=float(acc.mean()),
            gain=float((acc - base).mean()),
            normalized_gain=float(norm.mean()),
            win_rate=float(np.mean(acc > base)),
            reference=ref,
            win_rate_reference=win_ref,
            tie_rate_reference=tie_ref,
            robustness=_pstd([float(np.mean(v)) for v in by_passage.values()]),
            instantiation_noise=float(np.mean(inst)) if inst else None,
            evaluation_noise=(float(np.mean([_pstd(r) for r in repeats if len(r) > 1]))
                              if any(len(r) > 1 for r in repeats) else None),
            repeats=max((len(r) for r in repeats), default=0),
            sequences=float(np.mean([u.get("sequences", 0) for u in updates]))
            if updates else float("nan"),
            train_tokens=float(np.mean([u.get("train_tokens", 0) for u in updates]))
            if updates else float("nan"),
        ))
    return out


def _repeat_mean(evaluation: dict[str, Any]) -> float:
    """An evaluation's accuracy averaged over its answer repeats (the paper's reduction over
    E before the spread across completions); its accuracy when answers were not repeated."""
    repeats = evaluation.get("repeat_accuracy")
    if isinstance(repeats, list) and repeats:
        return float(np.mean(repeats))
    return float(evaluation["accuracy"])
