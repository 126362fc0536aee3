"""Wrappers around ``selfedit/SQuAD-v0``: an archive in the observation, and the adapter that
makes it usable by off-the-shelf RL libraries.

:class:`ArchiveObservation` shows a template-writing policy the best and worst templates
*its own* steps evaluated (the archive lives in the wrapper, one per agent, not in the env
that several agents may share: issue 14).

stable-baselines3 accepts neither ``Text`` actions nor ``Dict`` observations holding text, so
:class:`DiscreteTemplateWrapper` turns the env into a contextual bandit over a discrete
:class:`~selfedit.envs.library.TemplateLibrary`: an index per axis (instruction, LoRA rank,
learning rate, epochs, and optionally the update operator) in, a ``Box`` of numbers out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from selfedit.envs import prompts
from selfedit.envs.library import Arm, TemplateLibrary

__all__ = ["ArchiveObservation", "DiscreteTemplateWrapper"]


class DiscreteTemplateWrapper(gym.Wrapper):
    """Discrete actions over a template library, a normalised ``Box`` observation.

    ## Action Space
    ``MultiDiscrete(library.dims)``, by default ``[n_instructions, n_ranks, n_lrs,
    n_epochs]``: one index per axis of the library; the wrapper steps the inner env with the
    :class:`~selfedit.envs.templates.Template` of that arm. With ``flatten=True`` it is
    ``Discrete(library.n_arms)`` instead (for DQN), the arm's flat index in
    :meth:`TemplateLibrary.index` order. A library with an operator axis (``operators=``, or
    ``TemplateLibrary(operators=[...])``; issue 16) adds an ``update_operator`` dimension last
    and turns the rank axis into each operator's capacity (LoRA rank, trained blocks,
    singular values); the inner env must allow every operator of the library.

    ## Observation Space
    ``Box(0, 1, shape=(passages_per_step + 1,), float32)``:

    * the step's passage indices divided by the largest index of the corpus selection, so a
      policy can condition its template on which passages it is scored on;
    * the reward received *in the current episode*, clipped to [0, 1]: 0 after ``reset``,
      the step's reward in the terminal observation. Carrying the previous episode's reward
      into ``reset`` would make reset observations depend on history rather than the seed
      (both env checkers reset twice with a seed and compare), and a memoryless policy could
      not tell which template earned it anyway. The penalty of an invalid action clips to 0.

    ## Rewards, Episode End, Info
    As the inner env: single-step episodes, reward = accuracy. ``info`` is the inner env's,
    with ``arm`` (the arm's index tuple) added.

    Args:
        env: a ``selfedit/SQuAD-v0`` env (or any env with a ``Dict`` observation holding a
            ``passage_ids`` ``Box`` and template actions).
        library: the template space; default :class:`TemplateLibrary` (4 baselines x 4 ranks
            x 4 learning rates x 3 epoch counts = 192 arms).
        flatten: use one ``Discrete`` action instead of ``MultiDiscrete``.
        operators: with no ``library``: the default library with these update operators as
            an axis (e.g. ``["lora", "full", "svd"]``: 576 arms); None = LoRA only.

    Steps of the inner env are deterministic for a seed, so the wrapped env passes
    ``gymnasium``'s and ``stable_baselines3``'s ``check_env``.
    """

    def __init__(
        self, env: gym.Env, library: TemplateLibrary | None = None, *, flatten: bool = False,
        operators: Sequence[str] | None = None,
    ) -> None:
        super().__init__(env)
        inner = env.observation_space
        if not (isinstance(inner, spaces.Dict) and isinstance(inner.spaces.get("passage_ids"),
                                                              spaces.Box)):
            raise TypeError(
                "DiscreteTemplateWrapper needs an env whose observation is a Dict with a"
                f" 'passage_ids' Box (selfedit/SQuAD-v0), got {inner}"
            )
        ids = inner["passage_ids"]
        self._n_ids = int(np.prod(ids.shape))
        # Largest passage index: normalises ids into [0, 1] (1 for a one-passage corpus).
        self._id_scale = max(1.0, float(np.max(ids.high)))
        if library is not None and operators is not None:
            raise ValueError("give operators to the library (TemplateLibrary(operators=...)),"
                             " not beside it")
        self.library = library if library is not None else (
            TemplateLibrary(operators=list(operators)) if operators else TemplateLibrary())
        self._check_operators(env)
        self.flatten = bool(flatten)
        self.action_space = (
            spaces.Discrete(self.library.n_arms)
            if self.flatten
            else spaces.MultiDiscrete(np.asarray(self.library.dims, dtype=np.int64))
        )
        self.observation_space = spaces.Box(
            low=0.0, high=1.0, shape=(self._n_ids + 1,), dtype=np.float32
        )

    def _check_operators(self, env: gym.Env) -> None:
        """Every arm must be an action the inner env accepts (its ``operators``)."""
        config = getattr(env.unwrapped, "config", None)
        allowed = getattr(config, "operators", None)
        if allowed is None:
            return
        missing = [op for op in self.library.operators if op not in allowed]
        if missing:
            raise ValueError(f"the library's operators {missing} are not allowed by the env"
                             f" (env.operators = {allowed}); allow them in the env, or give"
                             " the library operators=[...] it allows")

    def action_to_arm(self, action: Any) -> Arm:
        """The library arm of a ``Discrete`` / ``MultiDiscrete`` action."""
        if self.flatten:
            value = np.asarray(action).reshape(-1)
            if value.size != 1:
                raise ValueError(f"flattened action must be one integer, got {action!r}")
            return self.library.arm(int(value[0]))
        return self.library.check_arm(np.asarray(action).reshape(-1).tolist())

    def arm_to_action(self, arm: Sequence[int]) -> int | np.ndarray:
        """The action of this wrapper's space that selects ``arm``."""
        if self.flatten:
            return self.library.index(arm)
        return np.asarray(self.library.check_arm(arm), dtype=np.int64)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        return self._observation(obs, 0.0), info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        arm = self.action_to_arm(action)
        obs, reward, terminated, truncated, info = self.env.step(self.library.template(arm))
        info = {**info, "arm": arm}
        return self._observation(obs, float(reward)), float(reward), terminated, truncated, info

    def _observation(self, obs: dict[str, Any], reward: float) -> np.ndarray:
        ids = np.asarray(obs["passage_ids"], dtype=np.float64).reshape(-1) / self._id_scale
        out = np.empty(self._n_ids + 1, dtype=np.float32)  # (k + 1,)
        out[: self._n_ids] = np.clip(ids, 0.0, 1.0)
        out[self._n_ids] = min(max(reward, 0.0), 1.0)
        return out


class ArchiveObservation(gym.Wrapper):
    """Adds the best and worst templates evaluated *through this wrapper* to the prompt.

    The template-search paper's archive-conditioned writer (arXiv 2601.14532) sees past
    templates with their scores. The archive is the wrapper's own: two agents sharing one
    env, each through its own wrapper, never see each other's templates.

    Args:
        env: a ``selfedit/SQuAD-v0`` env in template mode.
        show: how many best (and worst) templates the prompt lists.
    """

    def __init__(self, env: gym.Env, show: int = 3) -> None:
        super().__init__(env)
        if isinstance(show, bool) or not isinstance(show, int) or show < 1:
            raise ValueError(f"show must be a whole number >= 1, got {show!r}")
        self.show = show
        self.archive: list[tuple[dict[str, Any], float]] = []

    def _with_archive(self, observation: dict[str, Any]) -> dict[str, Any]:
        ranked = sorted(self.archive, key=lambda item: item[1], reverse=True)
        best = ranked[: self.show]
        worst = [x for x in ranked[::-1][: self.show] if x not in best]
        section = prompts.archive_section(
            [(t, {"accuracy": a}) for t, a in best], [(t, {"accuracy": a}) for t, a in worst]
        ) if ranked else ""
        # The env's own meta-prompt (its operators, pooling) with the archive appended, as
        # prompts.meta_prompt(archive) places it.
        return {**observation, "prompt": observation["prompt"] + ("\n\n" + section
                                                                   if section else "")}

    def reset(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        observation, info = self.env.reset(**kwargs)
        return self._with_archive(observation), info

    def step(self, action: Any) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        observation, reward, terminated, truncated, info = self.env.step(action)
        if info.get("template") is not None and not info.get("error"):
            self.archive.append((info["template"], float(info["accuracy"])))
        return self._with_archive(observation), reward, terminated, truncated, info
