"""``selfedit bench inner-loop`` on a tiny model: every row does the same work, and says so."""

from __future__ import annotations

import json

import pytest
import torch

from selfedit.envs.config import ConfigError
from selfedit.training.cli import main
from selfedit.training.innerloop import (
    InnerLoopConfig,
    base_parameters,
    matmul_gflops,
    paired_difference,
    run_inner_loop_bench,
)


def test_bench_measures_batched_sequential_and_reference(tiny_model_dir, tmp_path) -> None:
    cfg = InnerLoopConfig(model=str(tiny_model_dir), dtype="float32", passages="0:2",
                          templates=["implications", "passage"], ks=[1, 4],
                          reference_requests=1, num_epochs=2, completion_max_tokens=16,
                          pad_to=128, matmul_size=64, matmul_seconds=0.1,
                          output=str(tmp_path / "out"), threads=1)
    report = run_inner_loop_bench(cfg, command="test", log=lambda *_: None)
    rows = {r["k"]: r for r in report["evaluations"]}
    assert set(rows) == {1, 4} and rows[1]["evaluations"] == rows[4]["evaluations"] == 4
    # Equal rewards pair by pair: the batched pass evaluates what the sequential one does.
    assert rows[4]["vs_sequential"]["pairs"] == 4
    assert rows[4]["rewards"] == pytest.approx(rows[1]["rewards"])
    assert rows[1]["speedup"] == pytest.approx(1.0)
    for row in rows.values():  # the phases account for the row's time, no more
        phases = row["phases"]
        assert phases["train_s"] > 0 and phases["answer_s"] > 0 and phases["complete_s"] > 0
        assert sum(phases.values()) <= row["seconds"]
    inner = report["inner_loop"]
    lean, batched, ref = inner["lean"], inner["batched"], inner["seal_style"]
    assert lean["requests"] == batched["requests"] == 4 and ref["requests"] == 1
    # Same real tokens: the lean loops agree, and the reference counts the same ones.
    assert lean["train_tokens"] == batched["train_tokens"] > 0
    assert ref["train_tokens"] > 0
    assert report["generation"]["batched_tokens_per_s"] > 0
    assert report["dtype"]["dtype"] == "float32"
    assert len(report["profile"]) == 2
    assert sum(report["profile"][1]["share"].values()) == pytest.approx(1.0)
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["evaluations"][1]["k"] == 4
    assert "partial" not in saved  # the checkpoints of a run are replaced by the whole report
    text = (tmp_path / "out" / "report.md").read_text()
    for part in ("evaluations / hour", "training tokens / s", "SEAL-style", "FLOP fraction",
                 "## Targets", "float32"):
        assert part in text
    assert "**met**" in text or "**missed**" in text
    (tmp_path / "out" / "report.md").unlink()
    assert main(["bench", "inner-loop", "--report-only", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "report.md").read_text() == text  # rebuilt from the JSON


def test_flop_bound_pieces() -> None:
    assert matmul_gflops(torch.float32, 64, seconds=0.05) > 0
    tied = torch.nn.Linear(4, 4, bias=False)
    model = torch.nn.Sequential(tied, tied)  # a tied weight counts once
    assert base_parameters(model) == 16
    d = paired_difference([0.5, 0.6, 0.2], [0.5, 0.5, 0.2])
    assert d["identical"] == 2 and d["low"] < d["mean"] < d["high"]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"templates": ["no_training"]}, "--templates must be training baselines"),
    ({"ks": [4, 8]}, "--ks must include 1"),
    ({"ks": [0, 1]}, "--ks must be whole numbers"),
    ({"reference_requests": -1}, "--reference-requests"),
    ({"num_epochs": 99}, "--num-epochs"),
])
def test_bad_settings_are_named(kwargs, message) -> None:
    with pytest.raises(ConfigError, match=message):
        InnerLoopConfig(**kwargs)


def test_cli_reports_a_missing_report_in_one_line(capsys, tmp_path) -> None:
    assert main(["bench", "inner-loop", "--report-only", str(tmp_path)]) == 2
    assert "report.json does not exist" in capsys.readouterr().err


def test_a_run_killed_late_keeps_what_it_measured(tiny_model_dir, tmp_path, monkeypatch) -> None:
    """Measurements are checkpointed section by section: a failure in the generation section
    (standing in for the out-of-memory kill of 2026-12-01) leaves sections (a) and (b)."""
    import selfedit.training.innerloop as il

    def boom(*_args, **_kwargs):
        raise MemoryError("simulated")

    monkeypatch.setattr(il, "generation_rates", boom)
    cfg = InnerLoopConfig(model=str(tiny_model_dir), dtype="float32", passages="0:1",
                          templates=["passage"], ks=[1, 2], reference_requests=0, num_epochs=1,
                          completion_max_tokens=8, matmul_size=64, matmul_seconds=0.1,
                          output=str(tmp_path / "out"), threads=1, profile=False)
    with pytest.raises(MemoryError):
        run_inner_loop_bench(cfg, command="test", log=lambda *_: None)
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["partial"] == "b"
    assert [r["k"] for r in saved["evaluations"]] == [1, 2]
    assert saved["inner_loop"]["lean"]["requests"] == 1
