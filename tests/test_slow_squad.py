"""The embedded model on real SQuAD passages: training on the passage teaches it something.

Slow (about two minutes on 2 CPUs): run with ``python -m pytest -m slow``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from selfedit.agents import HUMAN_BASELINES
from selfedit.envs.corpus import load_corpus
from selfedit.envs.selfedit_env import SelfEditEnv

SQUAD = Path(__file__).resolve().parents[2] / "shared" / "squad" / "squad_v1.1_dev_seal.json"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SQUAD.is_file(), reason=f"{SQUAD} not present"),
]


@pytest.fixture(autouse=True)
def _all_threads():
    import os

    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    yield
    torch.set_num_threads(before)


def test_passage_alone_beats_the_base_on_squad(tmp_path) -> None:
    corpus = load_corpus(SQUAD).select("0:4")  # the first dev passages, fixed in advance
    env = SelfEditEnv(corpus=corpus, dtype="bfloat16", baseline_cache=str(tmp_path))
    before = env.base_checksum()
    adapted, base, f1, base_f1 = [], [], [], []
    for i in range(len(corpus)):
        env.reset(seed=i, options={"passage_ids": [i]})
        _, reward, _, _, info = env.step(HUMAN_BASELINES["passage"])
        assert info["error"] is None
        adapted.append(reward)
        base.append(info["base_accuracy"])
        f1.append(info["metrics"]["f1"])
        base_f1.append(info["base_metrics"]["f1"])
        loss = info["results"][0]["update"]
        assert loss["loss_last"] < loss["loss_first"]
    assert env.base_checksum() == before
    assert np.mean(adapted) > np.mean(base)
    assert np.mean(f1) > np.mean(base_f1)


def test_make_with_no_arguments_works_offline() -> None:
    import gymnasium

    import selfedit  # noqa: F401

    env = gymnasium.make("selfedit/SQuAD-v0", baseline_cache=None)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    _, reward, terminated, _, info = env.step(HUMAN_BASELINES["no_training"].to_json())
    assert terminated and info["error"] is None
    assert reward == info["base_accuracy"]
