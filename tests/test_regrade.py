"""``selfedit regrade``: the answers a run kept, scored again by today's graders (issue 12)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from selfedit.envs import grading
from selfedit.envs.config import ConfigError
from selfedit.envs.corpus import load_corpus
from selfedit.training.cli import main
from selfedit.training.regrade import regrade_dir, regrade_record
from selfedit.training.runlog import read_steps

TINY = ["env.dtype=float32", "env.passages=0:2", "env.completion_max_tokens=8",
        "env.answer_max_tokens=6", "env.baseline_cache=null", "agents=[passage, no_training]",
        "progress=false", "tensorboard=false", "name=rg"]


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    assert main(["run", f"env.model={tiny_model_dir}", f"output_dir={out}", *TINY]) == 0
    (found,) = out.iterdir()
    return found


def _copy(run_dir: Path, dest: Path, records: list[dict[str, Any]],
          files: tuple[str, ...] = ("config.yaml",)) -> Path:
    """A run directory made of ``files`` of ``run_dir`` and ``records`` as its steps."""
    dest.mkdir()
    for name in files:
        (dest / name).write_bytes((run_dir / name).read_bytes())
    (dest / "steps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return dest


def _digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def test_regrading_under_the_same_graders_gives_back_every_figure(run_dir: Path,
                                                                  tmp_path: Path) -> None:
    before = _digest(run_dir)
    out = regrade_dir(run_dir, tmp_path / "again")
    assert _digest(run_dir) == before  # the original is never written
    old, new = read_steps(run_dir / "steps.jsonl"), read_steps(out / "steps.jsonl")
    keys = ("reward", "accuracy", "base_accuracy", "gain", "metrics", "base_metrics")
    assert [{k: r[k] for k in keys} for r in new] == [{k: r[k] for k in keys} for r in old]
    assert [r["results"][0]["verdicts"] for r in new] == [
        r["results"][0]["verdicts"] for r in old]
    assert (out / "table.md").read_text() == (run_dir / "table.md").read_text()
    assert json.loads((out / "regraded.json").read_text())["grading_version"] == (
        grading.GRADING_VERSION)


def test_regrading_follows_the_answers_not_the_stored_scores(run_dir: Path,
                                                             tmp_path: Path) -> None:
    """Answers replaced by the golds and scores made up: regrading pays the golds and
    recomputes every mean, the reward and the table from them."""
    records = read_steps(run_dir / "steps.jsonl")
    target = next(r for r in records if r["agent"] == "passage")
    result = target["results"][0]
    result["answers"] = [golds[0] for golds in result["golds"]]
    result["verdicts"] = {g: [0.0] * len(result["golds"]) for g in result["verdicts"]}
    target["reward"] = target["accuracy"] = -5.0
    source = _copy(run_dir, tmp_path / "edited", records,
                   ("config.yaml", "summary.json", "table.md"))

    out = regrade_dir(source, tmp_path / "regraded")
    fixed = next(r for r in read_steps(out / "steps.jsonl") if r["key"] == target["key"])
    assert fixed["results"][0]["verdicts"]["exact_match"] == [1.0] * len(result["golds"])
    assert fixed["reward"] == fixed["accuracy"] == fixed["results"][0]["accuracy"] > 0.9
    assert fixed["gain"] == fixed["accuracy"] - fixed["base_accuracy"]
    rewards = [r["reward"] for r in read_steps(out / "steps.jsonl") if r["agent"] == "passage"]
    assert f"| passage | 2 | {sum(rewards) / 2:.3f} ±" in (out / "table.md").read_text()


def test_a_record_of_a_pooled_step_weighs_its_passages_by_questions() -> None:
    corpus = load_corpus("embedded").select("0:2")
    results = []
    for p in corpus:
        results.append({"passage_id": p.id, "questions": [q.question for q in p.questions],
                        "golds": [list(q.answers) for q in p.questions],
                        "answers": [q.answers[0] for q in p.questions] if not results
                        else [""] * len(p.questions),
                        "base_answers": [""] * len(p.questions)})
    record = {"error": None, "pool": [p.id for p in corpus], "results": results}
    regraded = regrade_record(record, {p.id: p for p in corpus}, "committed")
    n0, n1 = (len(p.questions) for p in corpus)
    assert regraded["accuracy"] == pytest.approx(n0 / (n0 + n1))
    assert "accuracy" not in record  # the input is left as it was
    invalid = {"error": "bad template", "reward": -0.1, "results": []}
    assert regrade_record(invalid, {}, "committed") == invalid


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r["results"][0].pop("answers"), "log_answers"),
        (lambda r: r["results"][0].update(passage_id="embedded:999"), "not in the run's corpus"),
        (lambda r: r["results"][0].update(questions=["Another question?"]), "corpus changed"),
        (lambda r: r["results"][0].update(answer_samples=[["a"], ["b"]]), "answer_samples"),
    ],
)
def test_what_cannot_be_recomputed_is_refused_and_leaves_nothing(
        run_dir: Path, tmp_path: Path, edit: Any, message: str) -> None:
    records = read_steps(run_dir / "steps.jsonl")
    edit(records[0])
    source = _copy(run_dir, tmp_path / "edited", records)
    with pytest.raises(ConfigError, match=message):
        regrade_dir(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_regrade_command_errors(run_dir: Path, tmp_path: Path, capsys: Any) -> None:
    assert main(["regrade", str(tmp_path / "missing"), "--output", str(tmp_path / "o")]) == 2
    assert "no such run or benchmark directory" in capsys.readouterr().err
    assert main(["regrade", str(run_dir), "--output", str(run_dir)]) == 2
    assert "exists" in capsys.readouterr().err
    judged = tmp_path / "judged"
    judged.mkdir()
    config = (run_dir / "config.yaml").read_text().replace("reward_grader: committed",
                                                           "reward_grader: judge")
    assert "reward_grader: judge" in config
    (judged / "config.yaml").write_text(config)
    (judged / "steps.jsonl").write_bytes((run_dir / "steps.jsonl").read_bytes())
    assert main(["regrade", str(judged), "--output", str(tmp_path / "o")]) == 2
    assert "judge" in capsys.readouterr().err
