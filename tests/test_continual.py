"""Continual mode on a tiny model: adapters accumulate, the forgetting matrix is real."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from selfedit.envs.config import ConfigError
from selfedit.envs.selfedit_env import SelfEditEnv
from selfedit.training.continual import ContinualConfig, load_continual_config, run_continual

FAST_ENV = {"completion_max_tokens": 12, "answer_max_tokens": 6, "baseline_cache": None}
# A learning rate a 2-layer random model notices: its answers change after each merge.
TEMPLATE = {"data_creation_instruction": "", "include_passage": True,
            "hyperparameters": {"lora_rank": 8, "learning_rate": 0.01, "num_epochs": 3}}


def test_forgetting_matrix_from_real_evaluations(tiny_backend, tmp_path):
    cfg = ContinualConfig.from_dict({"name": "c", "output_dir": str(tmp_path), "progress": False,
                                     "passages": [3, 0, 5], "template": TEMPLATE,
                                     "env": FAST_ENV})
    env = SelfEditEnv(cfg.env, backend=tiny_backend)
    initial = env.base_checksum()
    initial_fp = tiny_backend.fingerprint
    steps, step = [], env.step

    def counting(action):
        out = step(action)
        steps.append((env._passage_idx[0], out[4]["template"]["hyperparameters"]["num_epochs"],
                      out[1]))
        return out

    env.step = counting
    run_dir = run_continual(cfg, env=env)
    n = 3
    # Every cell is an env step: 3 base measurements, 3 self-edits, 1 + 2 + 3 measurements.
    assert len(steps) == n + n + n * (n + 1) // 2
    assert sum(1 for _, epochs, _ in steps if epochs > 0) == n
    out = json.loads((run_dir / "forgetting.json").read_text())
    (seq,) = out["sequences"]
    matrix = seq["matrix"]
    assert seq["passage_ids"] == [env.corpus[i].id for i in (3, 0, 5)]
    assert len(matrix) == n and all(len(row) == n for row in matrix)
    measured = [r for _, e, r in steps if e == 0][n:]  # after the base measurements
    for i in range(n):
        for j in range(n):
            value = matrix[i][j]
            if j > i:
                assert value is None
            else:
                assert 0.0 <= value <= 1.0
        # Row i is exactly the i + 1 measurements made after merging passage i.
        assert matrix[i][: i + 1] == measured[i * (i + 1) // 2: i * (i + 1) // 2 + i + 1]
    # Adapters accumulated: the weights after each merge are new, none is the original.
    assert len(set(seq["fingerprints"])) == n and initial_fp not in seq["fingerprints"]
    assert set(seq["metrics"]) >= {"contains", "f1", "exact_match"}
    # The original weights are back, bit-identical, and the env's cache key with them.
    assert env.base_checksum() == initial == out["restored_checksum"]
    assert tiny_backend.fingerprint == initial_fp
    assert env.update.name == "lora"
    with (run_dir / "forgetting.csv").open() as handle:
        rows = list(csv.reader(handle))
    assert len(rows) == n + 1 and rows[0][1:] == seq["passage_ids"]
    assert rows[1][2] == "" and rows[3][3] != ""  # upper triangle empty, diagonal filled
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    assert "continual/seq0/just_learned" in events.Tags()["scalars"]
    assert events.Tags()["images"]


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="must train"):
        ContinualConfig(template="no_training")
    with pytest.raises(ConfigError, match="passages_per_step"):
        ContinualConfig(env={"passages_per_step": 2})
    with pytest.raises(ConfigError, match="did you mean 'sequences'"):
        ContinualConfig.from_dict({"sequence": 2})


def test_shipped_config_loads():
    repo = Path(__file__).resolve().parents[1]
    cfg = load_continual_config(repo / "configs" / "continual_cpu.yaml")
    assert cfg.build_template().name == "implications"


def test_cli_continual(tiny_model_dir, tmp_path):
    from selfedit.training.cli import main

    repo = Path(__file__).resolve().parents[1]
    assert main(["continual", "--config", str(repo / "configs" / "continual_cpu.yaml"),
                 f"env.model={tiny_model_dir}", "env.dtype=float32", "passages=0:2",
                 "env.completion_max_tokens=12", "env.answer_max_tokens=6",
                 "env.baseline_cache=null", f"output_dir={tmp_path}", "progress=false"]) == 0
    (run_dir,) = list(tmp_path.iterdir())
    matrix = json.loads((run_dir / "forgetting.json").read_text())["sequences"][0]["matrix"]
    assert len(matrix) == 2 and matrix[0][1] is None and matrix[1][1] is not None
