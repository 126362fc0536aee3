"""The discrete wrapper: both env checkers pass, and stable-baselines3 learns on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3 import DQN, PPO
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from selfedit.agents.bandits import TemplateLibrary
from selfedit.envs.selfedit_env import SelfEditEnv
from selfedit.envs.wrappers import DiscreteTemplateWrapper

# 2 instructions x 2 ranks x 1 learning rate x 1 epoch: every step trains a real LoRA, fast.
LIBRARY = TemplateLibrary.from_baselines(["implications", "passage"], ranks=[4, 8],
                                         learning_rates=[1e-2], epochs=[1])
# Two passages: few no-adapter baselines to compute, and passage ids that vary.
FAST = {"passages": "0:2", "baseline_cache": None, "completion_max_tokens": 12,
        "answer_max_tokens": 6}

pytestmark = pytest.mark.filterwarnings(
    # gymnasium's checker recommends checking the unwrapped env; the wrapper is the point here
    "ignore:.*different from the unwrapped version.*",
    "ignore:.*Not able to test alternative render modes.*",
)


def make_env(backend, *, flatten: bool = False) -> DiscreteTemplateWrapper:
    return DiscreteTemplateWrapper(SelfEditEnv(backend=backend, **FAST), LIBRARY, flatten=flatten)


def test_spaces_and_the_arm_an_action_selects(tiny_backend) -> None:
    env = make_env(tiny_backend)
    assert env.action_space == spaces.MultiDiscrete([2, 2, 1, 1])
    assert env.observation_space == spaces.Box(0.0, 1.0, shape=(2,), dtype=np.float32)
    obs, _ = env.reset(seed=0, options={"passage_ids": [1]})
    assert obs.tolist() == [1.0, 0.0]  # passage 1 of 0..1, no reward yet this episode
    obs, reward, terminated, truncated, info = env.step(np.array([1, 1, 0, 0]))
    assert info["error"] is None and terminated and not truncated
    assert info["arm"] == (1, 1, 0, 0)
    assert info["template"] == LIBRARY.template((1, 1, 0, 0)).to_dict()
    assert "results" in info and "base_accuracy" in info  # the inner env's info, passed on
    assert env.observation_space.contains(obs)
    assert obs[1] == pytest.approx(min(max(reward, 0.0), 1.0))
    with pytest.raises(ValueError, match="one index per axis"):
        env.step(np.array([2, 0, 0, 0]))


def test_flattened_actions_are_arm_indices(tiny_backend) -> None:
    env = make_env(tiny_backend, flatten=True)
    assert env.action_space == spaces.Discrete(LIBRARY.n_arms)
    assert [env.action_to_arm(i) for i in range(4)] == list(LIBRARY.arms())
    assert env.arm_to_action((1, 0, 0, 0)) == 2
    with pytest.raises(ValueError, match=r"arm index must be in \[0, 4\)"):
        env.action_to_arm(4)
    gym_check_env(env, skip_render_check=True)


def test_both_env_checkers_pass(tiny_backend) -> None:
    env = make_env(tiny_backend)
    gym_check_env(env, skip_render_check=True)
    sb3_check_env(env, warn=True)


def _params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _changed(before: list[torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))


def test_ppo_learns_on_the_wrapped_env(tiny_backend) -> None:
    env = make_env(tiny_backend)
    model = PPO("MlpPolicy", env, n_steps=4, batch_size=4, n_epochs=1, seed=0, device="cpu")
    action_head = _params(model.policy.action_net)
    value_head = _params(model.policy.value_net)
    model.learn(total_timesteps=4)
    assert model.num_timesteps == 4
    assert env.unwrapped._steps == 4  # four real env steps (four LoRA updates)
    assert _changed(action_head, model.policy.action_net)
    assert _changed(value_head, model.policy.value_net)
    action, _ = model.predict(env.reset(seed=0)[0], deterministic=True)
    assert env.action_space.contains(action)


def test_dqn_learns_on_the_flattened_env(tiny_backend) -> None:
    env = make_env(tiny_backend, flatten=True)
    model = DQN("MlpPolicy", env, learning_starts=0, train_freq=1, gradient_steps=1,
                batch_size=2, buffer_size=16, seed=0, device="cpu")
    q_net = _params(model.q_net)
    model.learn(total_timesteps=3)
    assert model.num_timesteps == 3 and model.replay_buffer.size() == 3
    assert _changed(q_net, model.q_net)
