"""The benchmark's report, built from its records alone (no model): ``report.md``,
``table.csv``, ``comparisons.csv``, ``summary.json`` and ``plots/*.png``.

``selfedit benchmark --report-only <dir>`` calls :func:`write_report`; so does the runner
when its runs are done. The papers' figures appear in their own section, marked as quoted.

Size (~510 lines): the report's sections in document order (results, comparisons,
noise, power, quoted figures, provenance), each a short function.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from selfedit.agents.registry import check_agents
from selfedit.training import plots
from selfedit.training.benchmark_config import BenchmarkConfig
from selfedit.training.benchmark_stats import (
    AgentRow,
    Budget,
    Comparison,
    NoiseSummary,
    PowerAnalysis,
    TemplateMeasures,
    agent_rows,
    check_budgets,
    comparisons,
    noise_summary,
    power_analysis,
    step_evaluations,
    template_measures,
    unit_scores,
)
from selfedit.training.experiment import load_experiment
from selfedit.training.jsonio import read_jsonl, write_json_atomic
from selfedit.training.provenance import package_versions
from selfedit.training.rundir import RunDir

__all__ = ["MEASURES_SOURCE", "PAPER_ANCHORS", "measures_markdown", "plan_passages",
           "power_markdown", "render_report", "write_report"]


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


def write_report(bench_dir: Path) -> Path:
    """Build report.md, table.csv, comparisons.csv, summary.json and plots/ from the records
    of a benchmark directory (no model needed); raise :class:`BudgetError` on unequal budgets.
    """
    bench_dir = Path(bench_dir)
    cfg = load_experiment(BenchmarkConfig, RunDir.config_file(
        bench_dir, config_name="benchmark.yaml", flag="report of", kind="benchmark directory"))
    names = check_agents(cfg.agents)
    records = read_jsonl(bench_dir / "run" / "steps.jsonl")
    noise_records = read_jsonl(bench_dir / "noise" / "steps.jsonl")
    # Iteration lines rebuilt on resume are appended late: order them for the plots.
    iterations = sorted(read_jsonl(bench_dir / "run" / "iterations.jsonl"),
                        key=lambda r: (str(r.get("agent")), r.get("iteration", 0)))

    budgets = check_budgets(records, names,
                            completions_per_passage=cfg.env.completions_per_passage)
    units = unit_scores(records, noise_records)
    rows = agent_rows(units, records, budgets, names, cfg.confidence)
    comps = comparisons(units, rows, cfg)
    noise = noise_summary(noise_records, records)
    power = power_analysis(units, rows, confidence=cfg.confidence, power=cfg.power)
    measures = template_measures(records, names, reference=cfg.measure_reference,
                                 base_records=noise_records)

    grader = cfg.env.reward_grader
    figures = _plots(bench_dir, cfg, names, records, iterations, rows)
    _write_csv(bench_dir / "table.csv", _table_dicts(rows))
    _write_csv(bench_dir / "comparisons.csv",
               [{**asdict(c), "verdict": c.verdict} for c in comps])
    _write_csv(bench_dir / "measures.csv", [asdict(m) for m in measures])
    sessions = _read_json(bench_dir / "environment.json", [])
    split = _read_json(bench_dir / "passages.json", None)
    summary = {
        "name": cfg.name,
        "reward_grader": grader,
        "confidence": cfg.confidence,
        "agents": _table_dicts(rows),
        "comparisons": [{**asdict(c), "verdict": c.verdict} for c in comps],
        "noise": None if noise is None else {**asdict(noise), "spread": noise.spread._asdict()},
        "power": asdict(power),
        "measures": {"source": MEASURES_SOURCE, "reference": cfg.measure_reference,
                     "agents": [asdict(m) for m in measures]},
        "budgets": {a: b._asdict() for a, b in budgets.items()},
        "passages": split,
        "sessions": sessions,
    }
    write_json_atomic(bench_dir / "summary.json", summary, indent=2)
    text = render_report(cfg, rows, comps, noise, budgets, figures, sessions, split, power,
                         measures)
    path = bench_dir / "report.md"
    path.write_text(text)
    return path


def power_markdown(power: PowerAnalysis, *, seeds: int = 1) -> list[str]:
    """The report's section on what the benchmark can and cannot rank."""
    unit = "passages" if seeds == 1 else "units"
    conf, pw = f"{power.confidence:.0%}", f"{power.power:.0%}"
    lines = ["", "## What this benchmark can rank (power)", "",
             f"From the paired differences it measured: the smallest true difference a paired"
             f" test over these {unit} finds with {pw} power at {conf} confidence (minimal"
             f" detectable difference, MDD = (t + t_power) x sd / sqrt(n)), and how many"
             f" {unit} would make the observed difference detectable.", ""]
    top = power.top
    if top is not None:
        need = (f"about **{top.units_needed} {unit}**" if top.units_needed
                else "more than 100,000 (the observed difference is ~0)")
        lines += [f"Top agent **{top.agent}** against the runner-up **{top.reference}**:"
                  f" observed difference {_num(top.observed_difference, True)} over"
                  f" {top.units} {unit}, sd of the paired differences {_num(top.sd)}; **MDD"
                  f" {_num(top.detectable)}**. Separating them at this observed difference"
                  f" takes {need}.", ""]
    lines += [f"| agent vs best | {unit} | observed difference | sd (paired) | MDD |"
              f" {unit} to detect the observed difference |",
              "|---|---:|---:|---:|---:|---:|"]
    for p in power.pairs:
        lines.append(f"| {p.agent} vs {p.reference} | {p.units} |"
                     f" {_num(p.observed_difference, True)} | {_num(p.sd)} |"
                     f" {_num(p.detectable)} | {p.units_needed or '> 100,000'} |")
    lines += ["", "A difference below the MDD can be real but this benchmark cannot show it;"
              " `selfedit benchmark --plan DIR --target-difference D` says how many"
              f" {unit} a target difference D needs, from this directory's paired noise."]
    return lines


MEASURES_SOURCE = ("arXiv 2601.14532 (Search over Self-Edit Strategies for LLM Adaptation): "
                   "per-template statistics of its code's self_edit_template_statistics")


def _count(value: float, digits: int) -> str:
    return f"{value:,.{digits}f}" if math.isfinite(value) else "n/a"


def _opt(value: float | None, signed: bool = False) -> str:
    return "not measured" if value is None else _num(value, signed)


def measures_markdown(measures: Sequence[TemplateMeasures], reference: str | None) -> list[str]:
    """The report's section with the template-search paper's per-template measurements."""
    ref = next((m.reference for m in measures if m.reference), None)
    lines = ["", "## Template-search measures (arXiv 2601.14532)", "",
             "The template-search paper's statistics per template (definitions in"
             " `selfedit.training.benchmark_stats.TemplateMeasures`, after the paper's code):"
             " **gain**, **normalized gain** (a mean of per-evaluation ratios) and **win rate**"
             " (share of evaluations above the passage's unadapted accuracy) over every"
             " (unit, completion) evaluation; **robustness**: standard deviation across"
             " passages of the per-passage mean (lower = more general-purpose);"
             " **instantiation noise**: standard deviation across completions of one"
             " template on one unit, averaged; **evaluation noise**: standard deviation across"
             " answer repeats of one adapter, averaged (measured only when results carry"
             " `repeat_accuracy`, i.e. answers were sampled); population standard deviations."
             + (f" **Win vs {ref}**: share of units where the agent beats `{ref}`"
                " (ties in brackets)." if ref else
                f" No win rate against a reference: `{reference}` is not an agent here."
                if reference else ""),
             "",
             "| agent | evaluations | gain | norm. gain | win rate (vs base) |"
             + (f" win vs {ref} (ties) |" if ref else "")
             + " robustness (sd over passages) | instantiation noise | evaluation noise |"
             " training sequences / evaluation | training tokens / evaluation |",
             "|---|---:|---:|---:|---:|" + ("---:|" if ref else "") + "---:|---:|---:|---:|---:|"]
    for m in measures:
        versus = ""
        if ref:
            versus = (" — |" if m.win_rate_reference is None else
                      f" {_num(m.win_rate_reference)} ({_num(m.tie_rate_reference or 0.0)}) |")
        inst = ("n/a (1 completion)" if m.completions < 2 else _opt(m.instantiation_noise))
        lines.append(
            f"| {m.agent} | {m.evaluations} | {_num(m.gain, True)} |"
            f" {_num(m.normalized_gain, True)} | {_num(m.win_rate)} |{versus}"
            f" {_num(m.robustness)} | {inst} | {_opt(m.evaluation_noise)} |"
            f" {_count(m.sequences, 1)} | {_count(m.train_tokens, 0)} |")
    if all(m.evaluation_noise is None for m in measures):
        lines += ["", "Evaluation noise: not measured (answers are greedy: no answer repeats"
                  " in the records)."]
    return lines


def plan_passages(bench_dir: Path, target: float) -> str:
    """How many passages (units) a target detectable difference needs, from a finished
    benchmark's paired noise: the planning mode of ``selfedit benchmark --plan``."""
    from selfedit.training import stats

    bench_dir = Path(bench_dir)
    cfg = load_experiment(BenchmarkConfig, RunDir.config_file(
        bench_dir, config_name="benchmark.yaml", flag="plan of", kind="benchmark directory"))
    if not 0 < target < 1:
        raise ValueError(f"--target-difference must be between 0 and 1 (an accuracy"
                         f" difference such as 0.05), got {target}")
    names = check_agents(cfg.agents)
    records = read_jsonl(bench_dir / "run" / "steps.jsonl")
    budgets = check_budgets(records, names,
                            completions_per_passage=cfg.env.completions_per_passage)
    units = unit_scores(records, read_jsonl(bench_dir / "noise" / "steps.jsonl"))
    rows = agent_rows(units, records, budgets, names, cfg.confidence)
    power = power_analysis(units, rows, confidence=cfg.confidence, power=cfg.power)
    unit = "passages" if cfg.seeds == 1 else "units"
    lines = [f"To detect a true difference of {target:g} with {cfg.power:.0%} power at"
             f" {cfg.confidence:.0%} confidence (paired sd measured in {bench_dir}):", "",
             f"| pair | sd (paired) | {unit} needed |", "|---|---:|---:|"]
    pairs = ([power.top] if power.top else []) + [
        p for p in power.pairs if not power.top or {p.agent, p.reference}
        != {power.top.agent, power.top.reference}]
    sds = []
    for p in pairs:
        need = stats.units_needed(p.sd, target, confidence=cfg.confidence, power=cfg.power)
        sds.append(p.sd)
        lines.append(f"| {p.agent} vs {p.reference} | {_num(p.sd)} | {need or '> 100,000'} |")
    if sds:
        typical = float(sorted(sds)[len(sds) // 2])
        need = stats.units_needed(typical, target, confidence=cfg.confidence, power=cfg.power)
        lines += ["", f"With the median paired sd ({_num(typical)}): **{need} {unit}**."]
    return "\n".join(lines)


def _read_json(path: Path, default: Any) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else default


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
    grader = cfg.env.reward_grader
    cpp = cfg.env.completions_per_passage
    series = {}
    for agent in names:
        mine = [r for r in records if r["agent"] == agent]
        series[agent] = plots.RewardSeries([step_evaluations(r, cpp) for r in mine],
                                           [float(r["reward"]) for r in mine])
    fixed = {name for name, spec in zip(names, cfg.agents, strict=True)
             if isinstance(spec, str) or spec.get("type", "fixed") == "fixed"}
    paths = {
        "rewards": plots.plot_rewards(series, out / "reward_vs_evaluations.png",
                                      iteration_size=cfg.iteration_size,
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
    power: PowerAnalysis | None = None,
    measures: Sequence[TemplateMeasures] = (),
) -> str:
    env = cfg.env
    grader = env.reward_grader
    conf = f"{cfg.confidence:.0%}"
    b0 = next(iter(budgets.values()))
    lines = [
        f"# Benchmark `{cfg.name}`",
        "",
        "Which strategy teaches the model the passage best, and is the difference real?",
        "",
        f"- model `{env.model}` ({env.dtype}); corpus `{env.corpus}`",
        f"- report passages {_describe_passages(env.passages, split and split['report'])}; "
        "tuning passages "
        + (_describe_passages(cfg.tuning_passages, split and split["tuning"])
           + ", used while developing agents and templates, never in this report"
           if cfg.tuning_passages is not None else "not stated"),
        f"- {cfg.seeds} seed(s), {env.passages_per_step} passage(s) per step, "
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
    if power is not None:
        lines += power_markdown(power, seeds=cfg.seeds)
    if measures:
        lines += measures_markdown(measures, cfg.measure_reference)
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
