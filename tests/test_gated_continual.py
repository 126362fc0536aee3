"""Gated continual self-edits on a tiny model: a merge that makes the model forget earlier
passages is undone bit-identically; both policies are written side by side."""

from __future__ import annotations

import csv
import json
from typing import Any

import pytest
import torch

from selfedit.envs.backend import weights_checksum
from selfedit.envs.config import ConfigError
from selfedit.envs.selfedit_env import SelfEditEnv
from selfedit.training.continual import ContinualConfig, MergingUpdate, run_continual

FAST_ENV = {"completion_max_tokens": 8, "answer_max_tokens": 6, "baseline_cache": None,
            "reward_grader": "judge"}
# A learning rate that changes some of a 2-layer random model's answers at each merge.
TEMPLATE = {"data_creation_instruction": "", "include_passage": True,
            "hyperparameters": {"lora_rank": 8, "learning_rate": 0.004, "num_epochs": 1}}


class Remembers:
    """A reward grader that pays an answer only if it is the one the model gave the first time
    it saw the question: accuracy 1.0 before any update, and every changed answer is a
    forgotten one (what the gate is there to catch; a random tiny model knows no gold)."""

    def __init__(self) -> None:
        self.first: dict[str, str] = {}

    def __call__(self, answers: list[str], golds: list[list[str]], *,
                 questions: list[str], **kwargs: Any) -> list[float]:
        out = []
        for question, answer in zip(questions, answers, strict=True):
            out.append(float(self.first.setdefault(question, answer) == answer))
        return out


def _run(tiny_backend, tmp_path, **keys: Any):
    cfg = ContinualConfig.from_dict({"name": "g", "output_dir": str(tmp_path),
                                     "progress": False, "passages": [3, 0, 5, 1],
                                     "template": TEMPLATE, "env": FAST_ENV, **keys})
    env = SelfEditEnv(cfg.env, backend=tiny_backend, grader=Remembers())
    initial = env.base_checksum()
    run_dir = run_continual(cfg, env=env)
    assert env.base_checksum() == initial  # both policies leave the original weights
    return run_dir, json.loads((run_dir / "forgetting.json").read_text())


def test_gated_merges_are_undone_bit_identically(tiny_backend, tmp_path) -> None:
    run_dir, out = _run(tiny_backend, tmp_path, policies=["ungated", "gated"],
                        max_forgetting=0.0)
    ungated = out["policies"]["ungated"]["sequences"][0]
    gated = out["policies"]["gated"]["sequences"][0]
    assert out["policy"] == "ungated" and out["sequences"][0] == ungated  # top level: first
    assert gated["order"] == ungated["order"] and gated["policy"] == "gated"
    decisions = gated["decisions"]
    assert len(decisions) == 4 and decisions[0]["kept"]  # nothing earlier to forget
    undone = [i for i, d in enumerate(decisions) if not d["kept"]]
    assert undone, "this seeded run forgets at some merge; the gate must catch it"
    for i, d in enumerate(decisions):
        assert (d["drop"] > 0.0) == (not d["kept"])  # bound 0: any drop undoes the merge
        if d["kept"]:
            assert d["checksum_after"] != d["checksum_before"]
        else:
            # Undone: the weights are exactly those before the tentative merge, so the model
            # answers the earlier passages exactly as in the previous row.
            assert d["checksum_after"] == d["checksum_before"]
            assert gated["fingerprints"][i] == gated["fingerprints"][i - 1]
            assert gated["matrix"][i][:i] == gated["matrix"][i - 1][:i]
            assert d["after"] < d["before"]
    # The gate bounds what the kept merges cost on the earlier passages.
    assert gated["summary"]["merges_kept"] == 4 - len(undone)
    assert ungated["summary"]["merges_kept"] == 4
    for i in range(1, 4):
        assert (sum(gated["matrix"][i][:i]) / i
                >= sum(gated["matrix"][i - 1][:i]) / i - 1e-9)
    # Side by side: the Markdown table, the per-cell CSV, both summaries.
    text = (run_dir / "forgetting.md").read_text()
    assert "Side by side (ungated / gated)" in text and "| undone |" in text
    with (run_dir / "forgetting_policies.csv").open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["after", "on", "ungated", "gated"] and len(rows) == 1 + 10
    assert float(rows[-1][3]) == pytest.approx(gated["matrix"][3][3], abs=1e-4)


def test_a_loose_bound_keeps_every_merge_like_ungated(tiny_backend, tmp_path) -> None:
    _, out = _run(tiny_backend, tmp_path, policies=["gated"], max_forgetting=1.0)
    (seq,) = out["sequences"]
    assert all(d["kept"] for d in seq["decisions"]) and out["policy"] == "gated"
    assert "policies" in out and list(out["policies"]) == ["gated"]


def test_undo_restores_the_exact_weights(tiny_backend) -> None:
    model = tiny_backend.model
    before = weights_checksum(model)
    merging = MergingUpdate(None)
    name = "model.layers.0.mlp.up_proj"
    weight = model.get_submodule(name).weight
    merging.pending = {name: weight.detach() + 1e-3 * torch.randn_like(weight)}
    saved = merging.merge_tentatively(model)
    assert weights_checksum(model) != before and merging.pending is None
    merging.undo(model, saved)
    assert weights_checksum(model) == before


def test_policy_config_errors() -> None:
    with pytest.raises(ConfigError, match="policies"):
        ContinualConfig(policies=["gated", "gated"])
    with pytest.raises(ConfigError, match="policies"):
        ContinualConfig(policies=["sometimes"])
    with pytest.raises(ConfigError, match="max_forgetting"):
        ContinualConfig(max_forgetting=1.5)
