"""The env as a reward function for TRL: completions in, env rewards out.

``selfedit train`` with ``algorithm: grpo`` uses it, and so can any TRL trainer of your own::

    import gymnasium as gym
    from trl import GRPOConfig, GRPOTrainer
    from selfedit.training import reward_function

    env = gym.make("selfedit/SQuAD-v0").unwrapped
    trainer = GRPOTrainer(model=..., reward_funcs=reward_function(env, passages=[0, 1]),
                          args=GRPOConfig(...), train_dataset=...)

Each completion is parsed as a template (the prompt may already hold the start of the reply:
``prefix``), and the env trains and grades one adapter per (template, passage); the reward is
the template's mean ``metric`` over its passages, ``env.invalid_reward`` for a completion that
is no template. A dataset column ``passage_ids`` (a list per row) chooses the passages per
prompt; without it every completion is scored on ``passages``.

Why a reward function and not TRL's ``environment_factory``: the env is single-step. Its
action is the whole completion (a template) and its reward comes only after the whole
completion exists; there is no observation in between for the policy to react to, which is
what ``environment_factory``'s tool calls and multi-turn rollouts are for. A factory would
also build one env, and so one model, per rollout; a reward function shares one env (one
model, one baseline cache, one evaluation cache) across the whole run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from selfedit.envs.selfedit_env import SelfEditEnv, normalized_gain
from selfedit.envs.templates import Template
from selfedit.training.evaluation import EvalCache, Evaluator
from selfedit.training.policy import Sample, canonical_json, parse_policy_reply

__all__ = ["METRICS", "EnvReward", "reward_function", "template_rewards"]

METRICS = ("accuracy", "gain", "normalized_gain")


def template_rewards(
    completions: Sequence[str],
    passage_ids: Sequence[Sequence[int]],
    *,
    score: Callable[[Template, int], float],
    prefix: str = "",
    invalid_reward: float = -0.1,
    **kwargs: Any,
) -> list[float]:
    """Reward of each completion: its template's mean score over its passages.

    ``prefix`` is the start of the reply the prompt already contained (the JSON opener);
    a completion that is no valid template, even with its truncated JSON closed, gets
    ``invalid_reward``.

    >>> opener = '{"data_creation_instruction": "'
    >>> template_rewards(['List facts."}', '", "hyperparameters": {"lora_rank": 4096}}'],
    ...                  [[0, 1], [0, 1]], score=lambda t, p: 0.25 * p, prefix=opener)
    [0.125, -0.1]
    """
    out = []
    for completion, passages in zip(completions, passage_ids, strict=True):
        template = parse_policy_reply(prefix + completion)
        if template is None:
            out.append(float(invalid_reward))
        else:
            out.append(float(np.mean([score(template, int(p)) for p in passages])))
    return out


class EnvReward:
    """A TRL reward function (``reward_funcs=``) that steps the env with each completion.

    Called by TRL trainers as ``reward(prompts=, completions=, completion_ids=,
    trainer_state=, <dataset columns>...)``; returns one float per completion. Make one with
    :func:`reward_function`.

    Args:
        evaluator: steps the env and caches each (weights, template, passage, seed).
        metric: ``accuracy`` (the env's reward), ``gain`` over the no-adapter baseline, or
            ``normalized_gain``.
        prefix: the start of the reply that the prompt already holds.
        passages: passage indices used when the dataset has no ``passage_ids`` column.
        before_call: run with the trainer's global step before scoring (self mode: give the
            env the policy's current weights).
        writer: a TensorBoard writer for the reward distribution and the templates.
    """

    __name__ = "env_reward"  # TRL names a reward function's logged metrics after it

    def __init__(self, evaluator: Evaluator, *, metric: str = "accuracy", prefix: str = "",
                 passages: Sequence[int] | None = None,
                 before_call: Callable[[int], None] | None = None, writer: Any = None) -> None:
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
        self.evaluator = evaluator
        self.metric = metric
        self.prefix = prefix
        self.passages = list(passages) if passages is not None else None
        self.before_call = before_call
        self.writer = writer
        self.calls = 0

    def score(self, template: Template, passage: int) -> float:
        ev = self.evaluator.evaluate(Sample(canonical_json(template), template), passage)
        if ev.error is not None or self.metric == "accuracy":
            return ev.reward
        if self.metric == "gain":
            return float(ev.gain)
        return normalized_gain(float(ev.accuracy), float(ev.base_accuracy))

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any],
                 passage_ids: Sequence[Sequence[int]] | None = None, trainer_state: Any = None,
                 **kwargs: Any) -> list[float]:
        step = int(getattr(trainer_state, "global_step", 0) or 0)
        if self.before_call is not None:
            self.before_call(step)
        # Conversational completions are lists of messages: the reply is the last one.
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        if passage_ids is None:
            if self.passages is None:
                raise ValueError("no passage_ids column in the dataset and no passages given: "
                                 "reward_function(env, passages=[...])")
            passage_ids = [self.passages] * len(texts)
        # The group's evaluations in batched passes first; scoring then reads the cache.
        pairs = []
        for text, passages in zip(texts, passage_ids, strict=True):
            template = parse_policy_reply(self.prefix + text)
            if template is not None:
                sample = Sample(canonical_json(template), template)
                pairs += [(sample, int(p)) for p in passages]
        self.evaluator.evaluate_many(pairs)
        rewards = template_rewards(texts, passage_ids, score=self.score, prefix=self.prefix,
                                   invalid_reward=self.evaluator.env.config.invalid_reward)
        self.calls += 1
        if self.writer is not None:
            self._log(step, texts, rewards)
        return rewards

    def _log(self, step: int, texts: list[str], rewards: list[float]) -> None:
        w = self.writer
        w.add_histogram("env/reward_distribution", np.asarray(rewards), step)
        w.add_scalar("env/reward_mean", float(np.mean(rewards)), step)
        w.add_scalar("env/reward_max", float(np.max(rewards)), step)
        templates = [parse_policy_reply(self.prefix + t) for t in texts]
        w.add_scalar("env/invalid_templates", sum(t is None for t in templates), step)
        valid = [t for t in templates if t is not None]
        for name in (valid[0].hyperparameters.to_dict() if valid else {}):
            values = [float(getattr(t.hyperparameters, name)) for t in valid]
            w.add_histogram(f"hyperparameters/{name}", np.asarray(values), step)
        rows = ["| reward | template |", "|---:|---|"]
        for t, r in zip(templates, rewards, strict=True):
            text = canonical_json(t) if t is not None else "(invalid)"
            rows.append(f"| {r:.3f} | `{text[:400].replace('|', '/')}` |")
        w.add_text("templates", "\n".join(rows), step)
        w.flush()


def reward_function(env: SelfEditEnv, *, passages: Sequence[int] | None = None,
                    metric: str = "accuracy", prefix: str = "", seed: int = 0,
                    cache: str | Path | None = None, progress: bool = False) -> EnvReward:
    """A reward function for TRL trainers that scores each completion with ``env``.

    Args:
        env: the env (``gym.make("selfedit/SQuAD-v0").unwrapped`` or a
            :class:`~selfedit.envs.selfedit_env.SelfEditEnv`), in ``template`` action mode
            with one passage per step.
        passages: indices into ``env.corpus`` each completion is scored on, when the dataset
            has no ``passage_ids`` column.
        metric: ``accuracy`` (the env's reward), ``gain`` or ``normalized_gain``.
        prefix: the start of the reply the prompt already holds (e.g. the JSON opener
            ``{"data_creation_instruction": "``), put before each completion when parsing.
        seed: the env reset seed of passage p is ``seed * 100003 + p``: every template meets
            the same seeds on a passage, so rewards within a group compare templates only.
        cache: a JSON Lines file that keeps every evaluation (a repeated template on the same
            weights and passage is not evaluated twice, across runs too); None = memory.
        progress: print one line per env evaluation.

    Returns:
        An :class:`EnvReward`: ``reward(prompts=..., completions=..., **columns)`` returns
        one float per completion, as TRL's ``reward_funcs`` expect.
    """
    if env.config.action_mode != "template" or env.config.passages_per_step != 1:
        raise ValueError("reward_function scores templates one passage at a time: make the env "
                         "with action_mode='template' and passages_per_step=1")
    evaluator = Evaluator(env, EvalCache(Path(cache) if cache is not None else None), seed=seed,
                          progress=progress)
    return EnvReward(evaluator, metric=metric, prefix=prefix, passages=passages)
