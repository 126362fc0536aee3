"""``gymnasium.make_vec("selfedit/SQuAD-v0", num_envs=K)`` (issue 11): one model, K templates
per step, the same results as K single-env steps."""

from __future__ import annotations

import json

import gymnasium
import numpy as np
import pytest

import selfedit  # noqa: F401 - registers the env and its vector entry point
from selfedit.envs.selfedit_env import SelfEditEnv
from selfedit.envs.vector import SelfEditVectorEnv

FAST = {"completion_max_tokens": 16, "answer_max_tokens": 6, "baseline_cache": None}


def template(instruction: str = "List the facts.", **hp) -> str:
    return json.dumps({"data_creation_instruction": instruction, "include_passage": True,
                       "hyperparameters": {"lora_rank": 4, "num_epochs": 2, **hp}})


ACTIONS = [
    template(),
    template("Rewrite the passage.", lora_rank=8, learning_rate=3e-3, num_epochs=3),
    json.dumps({"data_creation_instruction": "", "include_passage": False,
                "hyperparameters": {"num_epochs": 0}}),  # no training: the base answers
    template("Questions and answers.", gradient_accumulation_steps=2, lora_dropout=0.1),
]


def test_make_vec_holds_one_model_and_evaluates_k_templates(tiny_backend) -> None:
    venv = gymnasium.make_vec("selfedit/SQuAD-v0", num_envs=4, backend=tiny_backend, **FAST)
    assert isinstance(venv, SelfEditVectorEnv)
    assert venv.env.backend is tiny_backend  # one model for the K sub-envs
    obs, info = venv.reset(seed=3)
    assert venv.observation_space.contains(obs)
    assert obs["passage_ids"].shape == (4, 1) and len(info["passage_ids"]) == 4
    before = venv.env.base_checksum()
    for _ in range(2):  # no step is an autoreset step that drops the actions
        obs, rewards, terminated, truncated, info = venv.step(ACTIONS)
        assert terminated.all() and not truncated.any()
        assert rewards.shape == (4,) and np.all(rewards >= 0)
        assert list(info["final_info"]["error"]) == [None] * 4
        assert venv.observation_space.contains(obs)
    assert venv.env.base_checksum() == before


def test_vector_step_equals_k_single_steps(tiny_backend) -> None:
    """Same seeds, same passages: rewards, answers and loss curves of a batched step match
    those of K single-env steps (tight in fp32)."""
    seed = 11
    venv = SelfEditVectorEnv(4, backend=tiny_backend, **FAST)
    venv.reset(seed=seed)
    _, rewards, _, _, info = venv.step(ACTIONS)
    batched = list(info["final_info"]["results"])
    single = SelfEditEnv(backend=tiny_backend, **FAST)
    for i, action in enumerate(ACTIONS):
        single.reset(seed=seed + i)  # sub-env i's generator is seeded seed + i
        _, reward, _, _, one = single.step(action)
        assert reward == pytest.approx(rewards[i])
        (mine,) = one["results"]
        (theirs,) = batched[i]
        assert mine["passage_id"] == theirs["passage_id"]
        assert mine["completion"] == theirs["completion"]
        assert mine["answers"] == theirs["answers"]
        assert mine["update"]["optimizer_steps"] == theirs["update"]["optimizer_steps"]
        for key in ("loss_first", "loss_last"):
            if mine["update"][key] is not None:
                assert mine["update"][key] == pytest.approx(theirs["update"][key], rel=1e-4)


def test_a_bad_action_only_invalidates_its_own_slot(tiny_backend) -> None:
    venv = SelfEditVectorEnv(3, backend=tiny_backend, **FAST)
    venv.reset(seed=5)
    _, clean, _, _, clean_info = venv.step([ACTIONS[0], ACTIONS[1], ACTIONS[0]])
    venv.reset(seed=5)
    bad = "{" * 10_000 + "not json"
    _, rewards, _, _, info = venv.step([ACTIONS[0], bad, ACTIONS[0]])
    errors = list(info["final_info"]["error"])
    assert errors[0] is None and errors[2] is None and errors[1]
    assert rewards[1] == venv.config.invalid_reward
    assert rewards[[0, 2]] == pytest.approx(clean[[0, 2]])
    assert (list(info["final_info"]["results"][0][0]["answers"])
            == list(clean_info["final_info"]["results"][0][0]["answers"]))


def test_budget_applies_per_template(tiny_backend) -> None:
    venv = SelfEditVectorEnv(2, backend=tiny_backend, max_step_seconds=1e-6, **FAST)
    venv.reset(seed=0)
    _, rewards, _, _, info = venv.step([ACTIONS[0], ACTIONS[2]])
    errors = list(info["final_info"]["error"])
    assert "max_step_seconds" in errors[0]  # a training template cannot start
    assert errors[1] is None  # no training: nothing to cut, the base answers stand
    assert rewards[0] == venv.config.invalid_reward


def test_wrong_number_of_actions_is_refused(tiny_backend) -> None:
    venv = SelfEditVectorEnv(2, backend=tiny_backend, **FAST)
    with pytest.raises(gymnasium.error.ResetNeeded):
        venv.step(ACTIONS[:2])
    venv.reset(seed=0)
    with pytest.raises(ValueError, match="2 actions"):
        venv.step(ACTIONS[:3])
    with pytest.raises(ValueError, match="num_envs"):
        SelfEditVectorEnv(0, backend=tiny_backend, **FAST)
