"""SEAL's multi-passage (continued-pretraining) setting (issue 16): the self-edits of n passages
train one update, which answers the questions of all n; reward = accuracy over them all."""

from __future__ import annotations

import json

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import selfedit  # noqa: F401 - registers the env ids
from selfedit.agents.bandits import UCB1Agent
from selfedit.envs import CPT_ENV_ID
from selfedit.envs.library import TemplateLibrary
from selfedit.envs.selfedit_env import SelfEditEnv
from selfedit.envs.vector import SelfEditVectorEnv
from selfedit.envs.wrappers import DiscreteTemplateWrapper

FAST = {"completion_max_tokens": 16, "answer_max_tokens": 6, "baseline_cache": None}
PASSAGE_ONLY = json.dumps({"data_creation_instruction": "", "include_passage": True,
                           "hyperparameters": {"lora_rank": 4, "learning_rate": 3e-3,
                                               "num_epochs": 3}})


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SELFEDIT_CACHE", str(tmp_path / "cache"))


def test_pooled_step_trains_one_update_for_all_passages(tiny_backend) -> None:
    env = SelfEditEnv(backend=tiny_backend, passages_per_step=3, pool_passages=True,
                      verify_base_every=1, **FAST)
    env.reset(seed=0, options={"passage_ids": [0, 1, 2]})
    before = env.base_checksum()
    _, reward, _, _, info = env.step(PASSAGE_ONLY)
    assert info["error"] is None
    results = info["results"]
    assert [r["passage_id"] for r in results] == [env.corpus[i].id for i in (0, 1, 2)]
    # One update: every passage's text trained it, and every passage answers with it.
    update = results[0]["update"]
    assert update["sequences"] == 3 and update["optimizer_steps"] == 3
    assert update["pool"] == [r["passage_id"] for r in results]
    assert all(r["update"] == update for r in results)
    assert update["loss_last"] < update["loss_first"]
    n = [len(r["questions"]) for r in results]
    assert info["pool"] == {"passages": 3, "updates": 1, "questions": sum(n)}
    # The reward is the accuracy over all the questions (passages weighted by questions).
    expected = sum(r["accuracy"] * k for r, k in zip(results, n, strict=True)) / sum(n)
    assert reward == pytest.approx(expected) and info["accuracy"] == pytest.approx(expected)
    verdicts = [v for r in results for v in r["verdicts"][env.grader_name]]
    assert reward == pytest.approx(np.mean(verdicts))
    assert info["tokens"]["train"] == update["train_tokens"]  # counted once, not per passage
    assert env.base_checksum() == before


def test_pooling_groups_by_completion_and_differs_from_single_passages(tiny_backend) -> None:
    action = json.dumps({"data_creation_instruction": "List the facts.", "include_passage": True,
                         "hyperparameters": {"lora_rank": 4, "num_epochs": 2}})
    env = SelfEditEnv(backend=tiny_backend, passages_per_step=2, completions_per_passage=2,
                      pool_passages=True, **FAST)
    env.reset(seed=1, options={"passage_ids": [3, 4]})
    _, _, _, _, info = env.step(action)
    assert info["error"] is None and info["pool"]["updates"] == 2
    # Results are passage-major: (p3, c0), (p3, c1), (p4, c0), (p4, c1); c0 pairs share one.
    updates = [r["update"] for r in info["results"]]
    assert updates[0] == updates[2] and updates[1] == updates[3]
    own = [len(r["sequences"]) for r in info["results"]]
    assert updates[0]["sequences"] == own[0] + own[2]
    single = SelfEditEnv(backend=tiny_backend, passages_per_step=2, **FAST)
    single.reset(seed=1, options={"passage_ids": [3, 4]})
    _, _, _, _, alone = single.step(PASSAGE_ONLY)
    assert "pool" not in alone and "pool" not in alone["results"][0]["update"]
    assert [r["update"]["sequences"] for r in alone["results"]] == [1, 1]


def test_cpt_env_id_passes_check_env_and_vectorises(tiny_backend) -> None:
    env = gymnasium.make(CPT_ENV_ID, backend=tiny_backend, **FAST)
    assert env.unwrapped.config.pool_passages and env.unwrapped.config.passages_per_step == 4
    obs, _ = env.reset(seed=2)
    assert obs["passage_ids"].shape == (4,)
    small = gymnasium.make(CPT_ENV_ID, backend=tiny_backend, passages_per_step=2, **FAST)
    check_env(small.unwrapped, skip_render_check=True)
    small.reset(seed=2)
    _, _, _, _, info = small.step(PASSAGE_ONLY)
    assert info["error"] is None and info["pool"]["passages"] == 2
    venv = gymnasium.make_vec(CPT_ENV_ID, num_envs=2, backend=tiny_backend,
                              passages_per_step=2, **FAST)
    assert isinstance(venv, SelfEditVectorEnv) and venv.config.pool_passages
    venv.reset(seed=0)
    _, rewards, _, _, info = venv.step([PASSAGE_ONLY, PASSAGE_ONLY])
    assert list(info["final_info"]["error"]) == [None, None]
    assert list(info["final_info"]["pool"]["updates"]) == [1, 1]


def test_pooled_self_edit_mode_shows_every_passage(tiny_backend) -> None:
    env = SelfEditEnv(backend=tiny_backend, action_mode="self_edit", passages_per_step=2,
                      pool_passages=True, **FAST)
    obs, _ = env.reset(seed=0, options={"passage_ids": [5, 6]})
    for i in (5, 6):
        assert env.corpus[i].title in obs["prompt"] and env.corpus[i].context in obs["prompt"]
    facts = [f"{env.corpus[i].title}: {env.corpus[i].context}" for i in (5, 6)]
    _, _, _, _, info = env.step({"sequences": facts, "hyperparameters": {"num_epochs": 2}})
    assert info["error"] is None and info["pool"] == {
        "passages": 2, "updates": 1, "questions": sum(len(r["questions"])
                                                      for r in info["results"])}
    first, second = info["results"]
    assert first["sequences"] == facts and second["sequences"] == []  # the data, given once
    assert first["update"]["sequences"] == 2 and second["update"] == first["update"]


def test_pooled_update_with_an_operator_trained_in_turn(tiny_backend) -> None:
    """Full fine-tuning has no adapted_many: the in-turn path answers the whole pool."""
    env = SelfEditEnv(backend=tiny_backend, passages_per_step=3, pool_passages=True,
                      operators=["lora", "full"], default_operator="full",
                      verify_base_every=1, **FAST)
    env.reset(seed=0, options={"passage_ids": [0, 1, 2]})
    action = json.dumps({"data_creation_instruction": "", "include_passage": True,
                         "hyperparameters": {"learning_rate": 1e-4, "num_epochs": 2}})
    _, reward, _, _, info = env.step(action)
    assert info["error"] is None and info["template"]["update_operator"] == "full"
    assert all(r["update"]["operator"] == "full" for r in info["results"])
    assert all(len(r["answers"]) == len(r["questions"]) for r in info["results"])
    assert info["results"][0]["update"]["sequences"] == 3
    assert info["pool"]["updates"] == 1 and reward == info["accuracy"]


def test_a_bandit_through_the_wrapper_on_the_pooled_env(tiny_backend) -> None:
    env = SelfEditEnv(backend=tiny_backend, passages_per_step=2, pool_passages=True,
                      operators=["lora", "svd"], **FAST)
    library = TemplateLibrary.from_baselines(["passage"], ranks=[4], learning_rates=[3e-3],
                                             epochs=[2], operators=["lora", "svd"])
    wrapped = DiscreteTemplateWrapper(env, library)
    agent = UCB1Agent(library, seed=0)
    obs, _ = wrapped.reset(seed=0)
    assert obs.shape == (3,)
    for _ in range(2):
        template = agent.act({}, {})
        arm = library.arm_of(template)
        _, reward, _, _, info = wrapped.step(wrapped.arm_to_action(arm))
        agent.observe(template, reward, info)
        assert info["error"] is None and info["pool"]["passages"] == 2
    assert sorted(agent.pulls) == [1, 1]  # both operators tried once
