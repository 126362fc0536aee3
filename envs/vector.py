"""``gymnasium.make_vec("selfedit/SQuAD-v0", num_envs=K)``: K templates per step, one model.

Gymnasium's generic vector envs copy the env K times (K models in memory) and step them one
after another; a ``SyncVectorEnv`` of this single-step env even spends every second call on
an autoreset step that drops the action. This native vector env (registered as the id's
``vector_entry_point``) holds **one** :class:`~selfedit.envs.selfedit_env.SelfEditEnv` and
evaluates the K sub-envs' actions in one pass (:meth:`SelfEditEnv.evaluate`): every
completion in one batched generate, every adapter trained in one joint forward/backward per
round of micro-batches, every adapted model answering in one batched generate (issue 11).

Episodes are single-step, with same-step autoreset: ``step`` returns each sub-env's *next*
episode's observation (new passages drawn from that sub-env's generator), the finished one
in ``info["final_obs"]`` and its info in ``info["final_info"]`` (Gymnasium's SAME_STEP
convention). Every guarantee of the single env holds per sub-env: an invalid action only
invalidates its own slot, budgets apply per template, and the base weights are untouched.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space, concatenate, create_empty_array

from selfedit.envs.config import EnvConfig
from selfedit.envs.selfedit_env import SelfEditEnv, SlotRequest

__all__ = ["SelfEditVectorEnv"]


class SelfEditVectorEnv(VectorEnv):
    """K sub-envs of ``selfedit/SQuAD-v0`` sharing one model; one batched pass per step.

    ## Action Space
    ``Tuple`` of K ``Text`` actions (:func:`gymnasium.vector.utils.batch_space` of the
    single env's), or any sequence of K actions of the forms the single env accepts.

    ## Observation Space
    The single env's ``Dict``, batched: ``prompt`` a tuple of K texts, ``passage_ids`` a
    ``(K, passages_per_step)`` array.

    ## Rewards, Episode End
    As the single env, per sub-env; every step terminates every sub-env (same-step
    autoreset: the returned observations start the next episodes).

    ## Arguments
    ``num_envs`` (K), then everything :class:`SelfEditEnv` takes (a config, keyword
    overrides, ``backend=``, ``update=``, ``grader=``, ``corpus=``), or ``env=`` to share an
    existing env's model.
    """

    metadata: dict[str, Any] = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(
        self,
        num_envs: int = 1,
        config: EnvConfig | None = None,
        *,
        env: SelfEditEnv | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs must be a whole number >= 1, got {num_envs!r}")
        self.env = env if env is not None else SelfEditEnv(config, **kwargs)
        self.num_envs = num_envs
        self.single_action_space = self.env.action_space
        self.single_observation_space = self.env.observation_space
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.render_mode = None
        self._rngs: list[np.random.Generator] = [
            seeding.np_random()[0] for _ in range(num_envs)]
        self._idx: list[list[int]] | None = None

    @property
    def config(self) -> EnvConfig:
        return self.env.config

    def reset(
        self, *, seed: int | Sequence[int | None] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Start K episodes. ``seed``: an int seeds sub-env i with ``seed + i`` (Gymnasium's
        convention), a list seeds each; ``options["passage_ids"]``: K lists of indices."""
        if seed is None:
            seeds: list[int | None] = [None] * self.num_envs
        elif isinstance(seed, (int, np.integer)):
            seeds = [int(seed) + i for i in range(self.num_envs)]
        else:
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(f"{len(seeds)} seeds for {self.num_envs} sub-envs")
        for i, s in enumerate(seeds):
            if s is not None or self._idx is None:
                self._rngs[i], _ = seeding.np_random(s)
        options = options or {}
        ids = options.get("passage_ids")
        if ids is not None and len(ids) != self.num_envs:
            raise ValueError(f"options['passage_ids'] must hold {self.num_envs} lists of"
                             f" indices (one per sub-env), got {len(ids)}")
        self._idx = [
            self.env.draw_passages(self._rngs[i],
                                   {"passage_ids": ids[i]} if ids is not None else None)
            for i in range(self.num_envs)
        ]
        infos: dict[str, Any] = {}
        for i, idx in enumerate(self._idx):
            infos = self._add_info(infos, self.env.passage_info(idx), i)
        return self._observations(), infos

    def step(
        self, actions: Any
    ) -> tuple[dict[str, Any], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        start = time.perf_counter()  # every slot's budget counts from here
        if self._idx is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        actions = list(actions)
        if len(actions) != self.num_envs:
            raise ValueError(f"step takes {self.num_envs} actions (one per sub-env), got"
                             f" {len(actions)}")
        requests = [
            SlotRequest(action, tuple(idx), int(rng.integers(2**31 - 1)), start)
            for action, idx, rng in zip(actions, self._idx, self._rngs, strict=True)
        ]
        try:
            outcomes = self.env.evaluate(requests)
        finally:
            self.env._after_step()  # the base-weights check, as after a single-env step
        rewards = np.array([reward for reward, _ in outcomes], dtype=np.float64)
        terminated = np.ones(self.num_envs, dtype=bool)
        truncated = np.zeros(self.num_envs, dtype=bool)
        infos: dict[str, Any] = {}
        for i, (_, info) in enumerate(outcomes):
            final = self.env.observation(self._idx[i])
            infos = self._add_info(infos, {"final_obs": final, "final_info": info}, i)
            # Same-step autoreset: the next episode's passages, from this sub-env's generator.
            self._idx[i] = self.env.draw_passages(self._rngs[i])
            infos = self._add_info(infos, self.env.passage_info(self._idx[i]), i)
        return self._observations(), rewards, terminated, truncated, infos

    def _observations(self) -> dict[str, Any]:
        assert self._idx is not None
        singles = [self.env.observation(idx) for idx in self._idx]
        out = create_empty_array(self.single_observation_space, self.num_envs)
        return concatenate(self.single_observation_space, singles, out)

    def close_extras(self, **kwargs: Any) -> None:
        self.env.close()
