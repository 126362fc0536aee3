"""The benchmark: end to end on a tiny model, the report's numbers from known records, and the
equal-budget rule."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from selfedit.envs.config import ConfigError
from selfedit.training.benchmark import (
    BenchmarkConfig,
    BudgetError,
    benchmark,
    check_budgets,
    load_benchmark_config,
    passage_split,
    write_report,
)
from selfedit.training.cli import main
from selfedit.training.runlog import read_steps

REPO = Path(__file__).resolve().parents[1]
CPU_CONFIG = str(REPO / "configs" / "benchmark_cpu.yaml")
TABLE_COLUMNS = ["agent", "accuracy", "ci_low", "ci_high", "base_accuracy", "gain",
                 "normalized_gain", "units", "steps", "evaluations", "invalid", "wall_s",
                 "exact_match", "f1", "contains"]


def _tiny_args(tiny_model_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "benchmark", "--config", CPU_CONFIG,
        f"env.model={tiny_model_dir}", "env.dtype=float32", "env.passages=[6, 7]",
        "env.completion_max_tokens=12", "env.answer_max_tokens=6", "env.baseline_cache=null",
        "agents=[passage, implications]", "noise_repeats=2", "iteration_size=1",
        "resamples=500", f"output_dir={out}", "progress=false", *extra,
    ]


def _assert_png(path: Path) -> None:
    from PIL import Image

    assert path.is_file() and path.stat().st_size > 5_000, path
    with Image.open(path) as image:
        image.verify()  # a valid PNG, not only a non-empty file
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 400 and image.height > 300


def test_benchmark_end_to_end_on_a_tiny_model(tiny_model_dir, tmp_path, capsys) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert main(_tiny_args(tiny_model_dir, tmp_path)) == 0
    bench = tmp_path / "benchmark_cpu"  # a fixed name: no time stamp

    # The table: one row per agent, the expected columns, equal budgets.
    with (bench / "table.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["agent"] for r in rows] == ["passage", "implications"]
    # The fixed columns, then one per grader (a new grader adds its column).
    assert list(rows[0])[:len(TABLE_COLUMNS)] == TABLE_COLUMNS
    for row in rows:
        assert (row["units"], row["steps"], row["evaluations"]) == ("2", "2", "2")
        assert float(row["ci_low"]) <= float(row["accuracy"]) <= float(row["ci_high"])
        assert float(row["wall_s"]) > 0
    with (bench / "comparisons.csv").open() as handle:
        comps = list(csv.DictReader(handle))
    # Each agent against the best one (and against passage, which is one of the two here).
    assert {frozenset((c["agent"], c["reference"])) for c in comps} == {
        frozenset(("implications", "passage"))}
    assert all(c["verdict"] in ("within noise", "higher", "lower") for c in comps)

    # The report: measured sections, then the quoted anchors apart, then how to reproduce.
    report = (bench / "report.md").read_text()
    for heading in ("## Results (measured)", "## Is the difference real? Paired comparisons",
                    "## Evaluation noise", "## What this benchmark can rank (power)",
                    "## Plots",
                    "## The papers' figures (quoted, not measured)", "## Reproduce"):
        assert heading in report
    measured, quoted = report.split("## The papers' figures (quoted, not measured)")
    assert "32.7" in quoted and "49.4 -> 55.6" in quoted and "32.7" not in measured
    assert "every agent used exactly **2 env evaluations in 2 steps**" in report
    assert "tuning passages `0:6` (6 passages)" in report
    assert "selfedit benchmark --config" in report and "transformers" in report
    summary = json.loads((bench / "summary.json").read_text())
    assert len(summary["noise"]["repeat_means"]) == 2
    top = summary["power"]["top"]  # the best against the runner-up: what it can resolve
    assert top["units"] == 2 and 0 <= top["detectable"] < float("inf")
    assert summary["power"]["power"] == 0.8
    assert summary["passages"]["report"] == ["embedded:6", "embedded:7"]
    versions = summary["sessions"][0]["versions"]
    assert {"torch", "transformers", "peft", "trl", "gymnasium", "selfedit"} <= set(versions)

    for name in ("reward_vs_evaluations.png", "collapse.png", "accuracy.png"):
        _assert_png(bench / "plots" / name)

    # TensorBoard: one run per agent under one log directory, the agent's own time included.
    for agent in ("passage", "implications"):
        events = EventAccumulator(str(bench / "run" / "tb" / agent))
        events.Reload()
        scalars = set(events.Tags()["scalars"])
        assert {"reward/value", "accuracy/adapted", "time/act_s",
                "iteration/collapse/hyperparameter_similarity"} <= scalars
    assert list((bench / "noise" / "tb" / "noise-passage").iterdir())
    noise = read_steps(bench / "noise" / "steps.jsonl")
    assert sorted({r["reset_seed"] for r in noise}) == [1000, 1001, 2000, 2001]  # not 0, 1

    # The same command again refuses to overwrite; --report-only rebuilds without a model.
    capsys.readouterr()
    assert main(_tiny_args(tiny_model_dir, tmp_path)) == 2
    assert "already holds results" in capsys.readouterr().err
    (bench / "report.md").unlink()
    assert main(["benchmark", "--report-only", str(bench)]) == 0
    assert (bench / "report.md").read_text() == report
    # The planning mode: passages a target difference needs, from this directory's noise.
    capsys.readouterr()
    assert main(["benchmark", "--plan", str(bench), "--target-difference", "0.1"]) == 0
    assert "passages needed" in capsys.readouterr().out
    assert main(["benchmark", "--plan", str(bench), "--target-difference", "2"]) == 2

    # selfedit regrade: the kept answers scored again, the report rebuilt in a copy; under
    # the grading version that ran it, every figure comes back the same.
    assert main(["regrade", str(bench), "--output", str(tmp_path / "regraded")]) == 0
    again = tmp_path / "regraded"
    assert (again / "table.csv").read_text() == (bench / "table.csv").read_text()
    assert "*Regraded* from" in (again / "report.md").read_text()
    assert json.loads((again / "regraded.json").read_text())["reward_grader"] == "committed"

    # A kill mid-run: the last step and the noise run are lost; --resume finishes them only.
    steps = bench / "run" / "steps.jsonl"
    lines = steps.read_text().splitlines(keepends=True)
    steps.write_text("".join(lines[:-1]))
    shutil.rmtree(bench / "noise")
    assert main(["benchmark", "--resume", str(bench)]) == 0
    records = read_steps(steps)
    assert [json.loads(x)["key"] for x in lines[:-1]] == [r["key"] for r in records[:-1]]
    assert len({r["key"] for r in records}) == len(records) == 4
    assert len(read_steps(bench / "noise" / "steps.jsonl")) == 4
    assert len(json.loads((bench / "environment.json").read_text())) == 2  # both sessions
    assert "Continued with:" in (bench / "report.md").read_text()


# --- the report from known records ------------------------------------------------------
def _record(agent: str, seed: int, episode: int, pid: str, acc: float | None, *,
            base: float = 0.0, template: dict[str, Any] | None = None) -> dict[str, Any]:
    """A step record as the runner writes it (acc=None: an invalid action)."""
    record: dict[str, Any] = {
        "key": f"{agent}|s{seed}|e{episode}", "agent": agent, "seed_index": seed,
        "episode": episode, "reset_seed": 1000 * seed + episode, "passage_ids": [pid],
        "template": template or {"data_creation_instruction": f"{agent} instruction",
                                 "hyperparameters": {"lora_rank": 32}},
        "timings": {"step_s": 2.0, "act_s": 0.5},
    }
    if acc is None:
        record.update(reward=-0.1, error="the completion gave no training sequence")
        return record
    metrics = {"exact_match": acc / 2, "f1": acc / 2 + 0.1, "contains": acc}
    base_metrics = {"exact_match": 0.0, "f1": 0.05, "contains": base}
    record.update(reward=acc, error=None, accuracy=acc, base_accuracy=base, gain=acc - base,
                  metrics=metrics, base_metrics=base_metrics, results=[{
                      "passage_id": pid, "accuracy": acc, "base_accuracy": base,
                      "metrics": metrics, "base_metrics": base_metrics}])
    return record


def _fake_benchmark(tmp_path: Path, scores: dict[str, list[float | None]],
                    noise: list[list[float]] | None = None, **keys: Any) -> Path:
    """A benchmark directory holding the given per-passage scores (no model involved)."""
    cfg = BenchmarkConfig.from_dict({
        "name": "fake", "output_dir": str(tmp_path), "agents": list(scores),
        "iteration_size": 2, "tuning_passages": "0:2", "resamples": 2000,
        "env": {"passages": "2:8"}, **keys,
    })
    bench = cfg.directory
    (bench / "run").mkdir(parents=True)
    (bench / "benchmark.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    records = [_record(agent, 0, e, f"embedded:{2 + e}", acc, base=0.1 if e == 0 else 0.0)
               for agent, accs in scores.items() for e, acc in enumerate(accs)]
    (bench / "run" / "steps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if noise:
        (bench / "noise").mkdir()
        lines = [json.dumps(_record("noise-passage", s, e, f"embedded:{2 + e}", acc,
                                    base=0.1 if e == 0 else 0.0)) + "\n"
                 for s, accs in enumerate(noise, start=1) for e, acc in enumerate(accs)]
        (bench / "noise" / "steps.jsonl").write_text("".join(lines))
    return bench


# Six passages each; per-passage differences rewrite - passage are +1/6 on 5 passages and 0
# on one, implications - passage are 0, +1/6, -1/6, 0, +1/6, -1/6.
SCORES: dict[str, list[float | None]] = {
    "passage": [2 / 6, 1 / 6, 3 / 6, 2 / 6, 1 / 6, 3 / 6],
    "implications": [2 / 6, 2 / 6, 2 / 6, 2 / 6, 2 / 6, 2 / 6],
    "rewrite": [3 / 6, 2 / 6, 4 / 6, 3 / 6, 2 / 6, 3 / 6],
    "no_training": [0.1, 0.0, 0.0, 0.0, 0.0, 0.0],
}


def test_report_numbers_from_known_records(tmp_path) -> None:
    bench = _fake_benchmark(tmp_path, SCORES, noise=[[2 / 6] * 6, [1 / 6] * 6, [3 / 6] * 6])
    write_report(bench)
    with (bench / "table.csv").open() as handle:
        table = {r["agent"]: r for r in csv.DictReader(handle)}
    # passage: units 2,1,3,2,1,3 (sixths): mean 2/6 = 0.333333; sd = sqrt(4/36 / 5) = 0.149071,
    # se = 0.149071 / sqrt(6) = 0.060858, t_{0.975,5} = 2.570582 -> +-0.156440.
    row = table["passage"]
    assert float(row["accuracy"]) == pytest.approx(1 / 3, abs=1e-5)
    assert float(row["ci_low"]) == pytest.approx(1 / 3 - 0.156440, abs=1e-5)
    assert float(row["ci_high"]) == pytest.approx(1 / 3 + 0.156440, abs=1e-5)
    # base: (0.1 + 5 * 0) / 6 = 0.016667; gain 0.316667; norm. gain 0.316667 / 0.983333.
    assert float(row["base_accuracy"]) == pytest.approx(0.1 / 6, abs=1e-5)
    assert float(row["gain"]) == pytest.approx(1 / 3 - 0.1 / 6, abs=1e-5)
    assert float(row["normalized_gain"]) == pytest.approx((1 / 3 - 0.1 / 6) / (1 - 0.1 / 6),
                                                          abs=1e-5)
    assert float(row["exact_match"]) == pytest.approx(1 / 6, abs=1e-5)  # acc / 2 in _record
    assert float(row["wall_s"]) == pytest.approx(6 * 2.5)  # env step + the agent's own time
    assert float(table["implications"]["ci_low"]) == float(table["implications"]["ci_high"])

    with (bench / "comparisons.csv").open() as handle:
        comps = {(c["agent"], c["reference"]): c for c in csv.DictReader(handle)}
    # The best agent is rewrite (mean 17/36); references: rewrite, no_training, passage.
    assert {ref for _, ref in comps} == {"rewrite", "no_training", "passage"}
    c = comps[("rewrite", "passage")]
    # Differences +1/6 x 5 and 0 x 1: mean 5/36 = 0.138889; sign test 5 wins, 0 losses, 1 tie:
    # p = 2 * (1/2)^5 = 0.0625; every resample mean lies in [0, 1/6], so the CI excludes 0 only
    # if no resample draws the 0 six times: P = (5/6)^0... the CI lower end is >= 1/36 > 0
    # unless 6 zeros are drawn (probability (1/6)^6 = 2e-5, below the 2.5% point).
    assert float(c["mean_diff"]) == pytest.approx(5 / 36, abs=1e-5)
    assert (c["wins"], c["losses"], c["ties"]) == ("5", "0", "1")
    assert float(c["p_sign"]) == pytest.approx(0.0625)
    assert float(c["ci_low"]) > 0 and c["verdict"] == "higher"
    c = comps[("implications", "passage")]
    # Differences 0, +1, -1, 0, +1, -1 (sixths): mean 0, 2 wins, 2 losses: p = 1, within noise.
    assert float(c["mean_diff"]) == pytest.approx(0.0, abs=1e-9)
    assert (c["wins"], c["losses"], c["ties"], float(c["p_sign"])) == ("2", "2", "2", 1.0)
    assert c["verdict"] == "within noise"
    assert comps[("no_training", "rewrite")]["verdict"] == "lower"

    report = (bench / "report.md").read_text()
    assert "| implications | +0.000 | [" in report and "| within noise |" in report
    # Noise: repeat means 2/6, 1/6, 3/6: std 1/6 = 0.167, range 0.167 to 0.500.
    assert "std 0.167, range 0.167 to 0.500 (width 0.333)" in report
    summary = json.loads((bench / "summary.json").read_text())
    assert summary["noise"]["repeat_seeds"] == [1000, 2000, 3000]


def test_invalid_action_counts_at_base_accuracy(tmp_path) -> None:
    scores = {"passage": [0.5, 0.5, 0.5], "self_qa": [None, 0.5, 0.5]}
    bench = _fake_benchmark(tmp_path, scores)
    write_report(bench)
    with (bench / "table.csv").open() as handle:
        table = {r["agent"]: r for r in csv.DictReader(handle)}
    # The invalid step on embedded:2 (base 0.1) scores 0.1: (0.1 + 0.5 + 0.5) / 3.
    assert float(table["self_qa"]["accuracy"]) == pytest.approx(1.1 / 3, abs=1e-5)
    assert table["self_qa"]["invalid"] == "1"
    assert table["self_qa"]["evaluations"] == "3"  # an invalid step is charged its passage


# --- equal budgets ---------------------------------------------------------------------------
def _steps(bench: Path) -> list[dict[str, Any]]:
    return read_steps(bench / "run" / "steps.jsonl")


def _write_steps(bench: Path, records: list[dict[str, Any]]) -> None:
    (bench / "run" / "steps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_an_extra_step_refuses_the_report(tmp_path, capsys) -> None:
    bench = _fake_benchmark(tmp_path, {"passage": [0.5, 0.5], "rewrite": [0.5, 0.5]})
    extra = _record("rewrite", 0, 2, "embedded:4", 1.0)  # one evaluation more than passage
    _write_steps(bench, [*_steps(bench), extra])
    assert main(["benchmark", "--report-only", str(bench)]) == 2
    err = capsys.readouterr().err
    assert "unequal budgets" in err
    assert "passage: 2 evaluations in 2 steps; rewrite: 3 evaluations in 3 steps" in err
    assert not (bench / "report.md").exists()


def test_an_extra_evaluation_inside_a_step_refuses_the_report(tmp_path) -> None:
    bench = _fake_benchmark(tmp_path, {"passage": [0.5, 0.5], "rewrite": [0.5, 0.5]})
    records = _steps(bench)
    # Same number of steps, but one of rewrite's steps scored a second completion.
    records[-1]["results"].append(dict(records[-1]["results"][0]))
    _write_steps(bench, records)
    with pytest.raises(BudgetError, match="rewrite: 3 evaluations in 2 steps"):
        write_report(bench)


def test_budget_checks_pairs_and_duplicates() -> None:
    a = [_record("a", 0, e, f"embedded:{e}", 0.5) for e in range(2)]
    b = [_record("b", 0, e, f"embedded:{e}", 0.5) for e in range(2)]
    budgets = check_budgets(a + b, ["a", "b"])
    assert budgets["a"].evaluations == budgets["b"].evaluations == 2
    # An invalid step is charged as evaluated: failing fast buys no extra budget.
    b_invalid = [_record("b", 0, 0, "embedded:0", None), b[1]]
    assert check_budgets(a + b_invalid, ["a", "b"])["b"].evaluations == 2
    with pytest.raises(BudgetError, match="more than once"):
        check_budgets(a + b + [b[1]], ["a", "b"])
    moved = [b[0], _record("b", 0, 1, "embedded:5", 0.5)]  # same count, another passage
    with pytest.raises(BudgetError, match="not evaluated on the same"):
        check_budgets(a + moved, ["a", "b"])
    with pytest.raises(BudgetError, match="no step recorded"):
        check_budgets(a, ["a", "b"])


# --- configuration ----------------------------------------------------------------------------
def test_tuning_and_report_passages_must_not_overlap(tmp_path, capsys) -> None:
    args = ["benchmark", "--config", CPU_CONFIG, f"output_dir={tmp_path}",
            "tuning_passages=0:8"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "share 2 passage(s): embedded:6, embedded:7" in err
    assert not list(tmp_path.iterdir())  # nothing started, no model loaded


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("noise_repeat=2", "unknown key 'benchmark.noise_repeat'; did you mean 'noise_repeats'?"),
        ("confidence=1.5", "confidence must be in [0.5, 1)"),
        ("noise_template=implicatons", "unknown agent 'implicatons'"),
        ("noise_template={type: metaprompt}", "noise_template must be a fixed template"),
        ("name=../elsewhere", "name must be a plain name for file paths"),
        ("env.model=/nonexistent/model", "model path /nonexistent/model does not exist"),
    ],
)
def test_config_errors(tmp_path, capsys, override: str, message: str) -> None:
    assert main(["benchmark", "--config", CPU_CONFIG, f"output_dir={tmp_path}", override]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # failed before making a directory


def test_committed_configs_load_with_disjoint_passages() -> None:
    cpu = load_benchmark_config(CPU_CONFIG)
    split = passage_split(cpu)
    assert len(split["report"]) == 6 and len(split["tuning"]) == 6
    assert not set(split["report"]) & set(split["tuning"])
    names = [a if isinstance(a, str) else a["name"] for a in cpu.run.agents]
    assert names == ["no_training", "passage", "implications", "rewrite", "self_qa",
                     "metaprompt", "archive", "novelty"]
    gpu = load_benchmark_config(REPO / "configs" / "benchmark_gpu.yaml")
    assert gpu.run.env.passages == "0:200" and gpu.tuning_passages == "200:250"
    assert gpu.run.env.reward_grader == "judge"


def test_endpoint_judge_without_key_fails_before_the_model_loads(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("SELFEDIT_TEST_KEY", raising=False)
    cfg = load_benchmark_config(CPU_CONFIG, [
        f"output_dir={tmp_path}", "env.reward_grader=judge",
        "env.judge=https://api.example.com/v1", "env.judge_api_key_env=SELFEDIT_TEST_KEY"])
    with pytest.raises(ConfigError, match=r"\$SELFEDIT_TEST_KEY, which is not set"):
        benchmark(cfg)
    assert not list(tmp_path.iterdir())


def test_force_only_deletes_benchmark_directories(tmp_path, capsys) -> None:
    target = tmp_path / "benchmark_cpu"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    args = ["benchmark", "--config", CPU_CONFIG, f"output_dir={tmp_path}", "--force"]
    assert main(args) == 2
    assert "not a benchmark directory" in capsys.readouterr().err
    assert (target / "notes.txt").read_text() == "mine"
