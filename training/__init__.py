"""Runners: the agent <-> env loop, policy training (ReST-EM, GRPO), continual mode, benchmarks.

The pieces every runner shares, for scripts of your own:

- :class:`~selfedit.training.experiment.ExperimentConfig` (the config base) and
  :func:`~selfedit.training.experiment.load_experiment` (YAML + ``key=value`` overrides);
- :class:`~selfedit.training.rundir.RunDir` (create or resume a run directory, atomic JSON,
  JSON Lines repaired on open, TensorBoard with HParams, provenance);
- :func:`~selfedit.training.rewards.reward_function`: the env as a reward function for any
  TRL trainer (``GRPOTrainer(reward_funcs=reward_function(env, passages=[0, 1]))``).

Submodules load lazily: ``import selfedit.training`` imports no model code.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["ExperimentConfig", "RunDir", "load_experiment", "reward_function"]

_WHERE = {
    "ExperimentConfig": "selfedit.training.experiment",
    "load_experiment": "selfedit.training.experiment",
    "RunDir": "selfedit.training.rundir",
    "reward_function": "selfedit.training.rewards",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'selfedit.training' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
