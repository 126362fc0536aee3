"""``selfedit bench inner-loop`` on a tiny model: both loops do the same work, and report it."""

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
    run_inner_loop_bench,
)


def test_bench_runs_both_loops_on_the_same_work(tiny_model_dir, tmp_path) -> None:
    cfg = InnerLoopConfig(model=str(tiny_model_dir), dtypes=["float32"], attentions=["sdpa"],
                          passages="0:1", repeats=2, reference_requests=1, num_epochs=2,
                          micro_batch_sizes=[1, 2], completion_max_tokens=16, pad_to=128,
                          matmul_size=64, matmul_seconds=0.1, output=str(tmp_path / "out"),
                          threads=1)
    report = run_inner_loop_bench(cfg, command="test", log=lambda *_: None)
    e = report["dtypes"]["float32"]
    lean, ref = e["lean"]["sdpa"], e["seal_style"]
    assert lean["requests"] == 2 and ref["requests"] == 1
    # Same work: the reference trains on exactly the lean loop's real tokens (its padding
    # comes on top), for the same epochs.
    assert ref["train_tokens"][0] == lean["train_tokens"][0] > 0
    assert e["ratio"] == pytest.approx(ref["seconds"][0] / lean["seconds"][0])
    # the passage's second request: same sequences, baseline cached
    assert e["ratio_cached"] == pytest.approx(ref["seconds"][0] / lean["seconds"][1])
    assert 0 < lean["flop_fraction"] and 0 < ref["flop_fraction"]
    peak = report["matmul_gflops"]["float32"]  # the higher of the start and end readings
    assert peak == max(report["matmul_gflops_start"]["float32"],
                       report["matmul_gflops_end"]["float32"])
    assert lean["flop_fraction"] == pytest.approx(lean["train_gflops"] / peak)
    assert set(e["micro_batch_tokens_per_s"]) == {1, 2}
    assert e["answering"]["questions"] == 11
    (prof,) = e["profile"]
    assert sum(prof["share"].values()) == pytest.approx(1.0)
    assert prof["share"]["matmul"] > 0 and prof["matmul_gflops"] > 0
    assert report["work"]["completion_tokens"] > 0
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["dtypes"]["float32"]["ratio"] == pytest.approx(e["ratio"])
    text = (tmp_path / "out" / "report.md").read_text()
    assert "SEAL-style" in text and "FLOP fraction" in text and "tokens/s" in text
    assert "## Targets" in text and ("**met**" in text or "**missed**" in text)
    (tmp_path / "out" / "report.md").unlink()
    assert main(["bench", "inner-loop", "--report-only", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "report.md").read_text() == text  # rebuilt from the JSON


def test_flop_bound_pieces() -> None:
    assert matmul_gflops(torch.float32, 64, seconds=0.05) > 0
    tied = torch.nn.Linear(4, 4, bias=False)
    model = torch.nn.Sequential(tied, tied)  # a tied weight counts once
    assert base_parameters(model) == 16


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"dtypes": ["float64"]}, "--dtypes"),
    ({"template": "no_training"}, "--template must be a training baseline"),
    ({"reference_requests": -1}, "--reference-requests"),
    ({"num_epochs": 99}, "--num-epochs"),
    ({"attentions": ["flash"]}, "--attentions"),
])
def test_bad_settings_are_named(kwargs, message) -> None:
    with pytest.raises(ConfigError, match=message):
        InnerLoopConfig(**kwargs)


def test_cli_reports_bad_flags_in_one_line(capsys, tmp_path) -> None:
    assert main(["bench", "inner-loop", "--micro-batch-sizes", "a,b"]) == 2
    assert "--micro-batch-sizes must be integers" in capsys.readouterr().err
    assert main(["bench", "inner-loop", "--report-only", str(tmp_path)]) == 2
    assert "report.json does not exist" in capsys.readouterr().err
