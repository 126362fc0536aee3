"""The template-search paper's measures (arXiv 2601.14532) from known step records, and in the
report, summary.json and measures.csv that --report-only rebuilds."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from selfedit.training.benchmark import BenchmarkConfig, write_report
from selfedit.training.benchmark_stats import template_measures
from selfedit.training.cli import main


def _result(pid: str, acc: float, base: float, *, repeats: list[float] | None = None,
            sequences: int = 3) -> dict[str, Any]:
    metrics = {"exact_match": 0.0, "f1": acc, "contains": acc}
    out = {"passage_id": pid, "accuracy": acc, "base_accuracy": base, "metrics": metrics,
           "base_metrics": {"exact_match": 0.0, "f1": base, "contains": base},
           "update": {"sequences": sequences, "train_tokens": 100 * sequences}}
    if repeats is not None:
        out["repeat_accuracy"] = repeats
    return out


def _step(agent: str, episode: int, pid: str, results: list[dict[str, Any]] | None
          ) -> dict[str, Any]:
    record: dict[str, Any] = {
        "key": f"{agent}|s0|e{episode}", "agent": agent, "seed_index": 0, "episode": episode,
        "reset_seed": episode, "passage_ids": [pid], "timings": {"step_s": 1.0, "act_s": 0.0},
        "template": {"data_creation_instruction": agent}}
    if results is None:  # an invalid action
        return {**record, "reward": -0.1, "error": "no training sequence"}
    acc = sum(r["accuracy"] for r in results) / len(results)
    base = results[0]["base_accuracy"]
    return {**record, "reward": acc, "error": None, "accuracy": acc, "base_accuracy": base,
            "gain": acc - base, "metrics": results[0]["metrics"],
            "base_metrics": results[0]["base_metrics"], "results": results}


# Two passages (base 0.2 and 0.0), two completions each.
# passage: 0.4, 0.6 on p0; 0.2, 0.2 on p1.   rewrite: 0.6, 0.2 on p0; 0.5, 0.1 on p1.
# self_qa: invalid on p0, 0.3 and 0.3 on p1 (with answer repeats on one completion).
RECORDS = [
    _step("passage", 0, "p0", [_result("p0", 0.4, 0.2), _result("p0", 0.6, 0.2)]),
    _step("passage", 1, "p1", [_result("p1", 0.2, 0.0), _result("p1", 0.2, 0.0)]),
    _step("rewrite", 0, "p0", [_result("p0", 0.6, 0.2, sequences=5),
                               _result("p0", 0.2, 0.2, sequences=7)]),
    _step("rewrite", 1, "p1", [_result("p1", 0.5, 0.0, repeats=[0.4, 0.6]),
                               _result("p1", 0.1, 0.0, repeats=[0.1, 0.1, 0.1])]),
    _step("self_qa", 0, "p0", None),
    _step("self_qa", 1, "p1", [_result("p1", 0.3, 0.0), _result("p1", 0.3, 0.0)]),
]


def test_measures_follow_the_papers_definitions() -> None:
    passage, rewrite, self_qa = template_measures(RECORDS, ["passage", "rewrite", "self_qa"])
    # passage: gains 0.2, 0.4, 0.2, 0.2 -> 0.25; normalized 0.25, 0.5, 0.2, 0.2 -> 0.2875;
    # all four beat their passage's base.
    assert passage.gain == pytest.approx(0.25)
    assert passage.normalized_gain == pytest.approx(0.2875)
    assert passage.win_rate == 1.0 and passage.evaluations == 4 and passage.completions == 2
    # Robustness: per-passage means 0.5 and 0.2 -> population sd 0.15.
    assert passage.robustness == pytest.approx(0.15)
    # Instantiation noise: sd of (0.4, 0.6) = 0.1, of (0.2, 0.2) = 0 -> mean 0.05.
    assert passage.instantiation_noise == pytest.approx(0.05)
    assert passage.evaluation_noise is None and passage.repeats == 0  # no answer repeats
    assert passage.reference is None or passage.win_rate_reference is None  # itself
    # rewrite: gains 0.4, 0, 0.5, 0.1 -> 0.25; wins 3 of 4 (0.2 = base is not a win).
    assert rewrite.gain == pytest.approx(0.25) and rewrite.win_rate == pytest.approx(0.75)
    # Instantiation noise over repeat means: p0 sd(0.6, 0.2) = 0.2; p1 sd(0.5, 0.1) = 0.2.
    assert rewrite.instantiation_noise == pytest.approx(0.2)
    # Evaluation noise: sd(0.4, 0.6) = 0.1, sd(0.1, 0.1, 0.1) = 0 -> 0.05; 3 repeats at most.
    assert rewrite.evaluation_noise == pytest.approx(0.05) and rewrite.repeats == 3
    # Against passage per unit: p0 0.4 vs 0.5 (loss), p1 0.3 vs 0.2 (win).
    assert rewrite.reference == "passage"
    assert rewrite.win_rate_reference == 0.5 and rewrite.tie_rate_reference == 0.0
    # Sequences 5, 7, 3, 3 -> 4.5 per evaluation (100 tokens each).
    assert rewrite.sequences == pytest.approx(4.5) and rewrite.train_tokens == 450.0
    # self_qa: the invalid unit counts at base (gain 0, no win) but not in the spreads.
    assert self_qa.invalid_units == 1 and self_qa.evaluations == 3
    assert self_qa.gain == pytest.approx((0 + 0.3 + 0.3) / 3)
    assert self_qa.win_rate == pytest.approx(2 / 3)
    assert self_qa.instantiation_noise == pytest.approx(0.0)
    assert self_qa.sequences == 3.0  # the valid evaluations' updates only
    # One completion per passage: no instantiation noise to measure.
    single = [{**r, "results": r["results"][:1]} for r in RECORDS if not r.get("error")]
    assert template_measures(single, ["passage"])[0].instantiation_noise is None


def test_report_summary_and_csv_carry_the_measures(tmp_path: Path) -> None:
    cfg = BenchmarkConfig.from_dict({
        "name": "m", "output_dir": str(tmp_path), "agents": ["passage", "rewrite", "self_qa"],
        "resamples": 200, "noise_repeats": 0, "env": {"passages": "2:4",
                                                      "completions_per_passage": 2}})
    bench = cfg.directory
    (bench / "run").mkdir(parents=True)
    (bench / "benchmark.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    (bench / "run" / "steps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    write_report(bench)
    report = (bench / "report.md").read_text()
    assert "## Template-search measures (arXiv 2601.14532)" in report
    assert "| rewrite | 4 | +0.250 |" in report and "win vs passage (ties)" in report
    summary = json.loads((bench / "summary.json").read_text())["measures"]
    assert summary["reference"] == "passage"
    rows = {m["agent"]: m for m in summary["agents"]}
    assert rows["rewrite"]["evaluation_noise"] == pytest.approx(0.05)
    assert rows["passage"]["evaluation_noise"] is None
    with (bench / "measures.csv").open() as handle:
        table = {r["agent"]: r for r in csv.DictReader(handle)}
    assert float(table["passage"]["robustness"]) == pytest.approx(0.15)
    # --report-only rebuilds the same report from the records alone.
    (bench / "report.md").unlink()
    assert main(["benchmark", "--report-only", str(bench)]) == 0
    assert (bench / "report.md").read_text() == report
    # No reference agent among them: the measures say so instead of a column.
    cfg2 = BenchmarkConfig.from_dict({**cfg.to_dict(), "name": "m2", "measure_reference": None})
    assert cfg2.measure_reference is None
    assert template_measures(RECORDS, ["rewrite"], reference=None)[0].win_rate_reference is None


def test_tiny_benchmark_with_answer_repeats_measures_both_noises(tiny_model_dir: Path,
                                                                 tmp_path: Path) -> None:
    """End to end: two completions per passage and sampled answer repeats give the paper's
    instantiation and evaluation noise, from the env's own results."""
    repo = Path(__file__).resolve().parents[1]
    assert main(["benchmark", "--config", str(repo / "configs" / "benchmark_measures_cpu.yaml"),
                 f"env.model={tiny_model_dir}", "env.dtype=float32", "env.passages=[6, 7]",
                 "tuning_passages=0:2", "env.completion_max_tokens=8", "env.answer_max_tokens=4",
                 "env.answer_samples=2", "env.answer_temperature=0.7",
                 "env.baseline_cache=null", "agents=[passage, implications]",
                 "resamples=200", f"output_dir={tmp_path}", "progress=false",
                 "tensorboard=false"]) == 0
    bench = tmp_path / "measures_cpu"
    records = [json.loads(x) for x in (bench / "run" / "steps.jsonl").read_text().splitlines()]
    results = [r for rec in records for r in rec["results"]]
    assert len(results) == 8 and all(len(r["repeat_accuracy"]) == 2 for r in results)
    rows = {m["agent"]: m for m in json.loads((bench / "summary.json").read_text())
            ["measures"]["agents"]}
    for agent in ("passage", "implications"):
        mine = [r for rec in records if rec["agent"] == agent for r in rec["results"]]
        spread = sum(abs(r["repeat_accuracy"][0] - r["repeat_accuracy"][1]) / 2
                     for r in mine) / len(mine)  # population sd of two values
        assert rows[agent]["repeats"] == 2 and rows[agent]["completions"] == 2
        assert rows[agent]["evaluation_noise"] == pytest.approx(spread)
        assert rows[agent]["instantiation_noise"] is not None
    assert "not measured" not in (bench / "report.md").read_text().split(
        "## Template-search measures")[1].split("## Plots")[0]
