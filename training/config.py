"""The run's configuration (``selfedit run``): :class:`RunConfig` and its ``executor`` section.

``configs/*.yaml`` and the command line share one source of truth: the fields below, those
every run shares (:class:`~selfedit.training.experiment.ExperimentConfig`: name, seed,
output_dir, tensorboard, report_to, progress, env_id, env) and the env's (the config class of
``env_id``: :class:`~selfedit.envs.config.EnvConfig` for SQuAD, :class:`~selfedit.envs.arc
.ArcConfig` for ARC). Unknown keys and wrong types fail before any model is loaded, with the
key named and the fix suggested.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from selfedit.agents.registry import check_agents
from selfedit.envs.config import ConfigError, check_types, config_from_dict
from selfedit.training.env_kinds import ARC_ENV_ID, SQUAD_ENV_ID
from selfedit.training.experiment import ExperimentConfig, load_experiment, param

__all__ = ["EXECUTOR_TYPES", "ExecutorConfig", "RunConfig", "load_config"]


EXECUTOR_TYPES = ("serial", "ray")


@dataclass
class ExecutorConfig:
    """Where env steps run, and how many steps an agent proposes at once (issue 6).

    Rewards depend on ``batch``, never on ``type``: the same config gives the same rewards
    for the same seeds whether the steps run here or on Ray actors.
    """

    type: str = param("serial", "where env steps run: 'serial' (this process, one step after "
                      "the other) or 'ray' (Ray actors, each loading its own model; needs "
                      "`pip install \"selfedit-gym[ray]\"`)")
    batch: int = param(1, "steps of one agent proposed before any of their rewards is observed "
                       "(1 = propose, evaluate, observe); only these steps can run in parallel, "
                       "so set it >= workers with ray. An adaptive agent learns in blocks of "
                       "this size: it changes what the agent proposes, whatever the type")
    workers: int = param(1, "Ray actors, each holding its own copy of the model")
    address: str | None = param(None, "Ray cluster to join ('auto', or 'ray://<head>:10001'); "
                                "null = start a local Ray runtime for the run")
    threads_per_worker: int = param(1, "torch threads (and Ray CPUs) of each actor")
    gpus_per_worker: float = param(0.0, "GPUs of each actor (0.5 puts two actors on one GPU; "
                                   "0 = CPU only)")

    def __post_init__(self) -> None:
        check_types(self, where="executor")
        if self.type not in EXECUTOR_TYPES:
            raise ConfigError(f"executor.type must be one of {', '.join(EXECUTOR_TYPES)}, "
                              f"got {self.type!r}")
        for name in ("batch", "workers", "threads_per_worker"):
            if getattr(self, name) < 1:
                raise ConfigError(f"executor.{name} must be >= 1, got {getattr(self, name)}")
        if not self.gpus_per_worker >= 0:  # also rejects NaN
            raise ConfigError(f"executor.gpus_per_worker must be >= 0, got "
                              f"{self.gpus_per_worker}")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ExecutorConfig:
        return config_from_dict(cls, raw, where="executor")


@dataclass
class RunConfig(ExperimentConfig):
    """One run: a set of agents stepped through the same env on the same passages (or ARC
    tasks: ``env_id: selfedit/ARC-v0``)."""

    env_ids: ClassVar[tuple[str, ...]] = (SQUAD_ENV_ID, ARC_ENV_ID)

    seed: int = param(0, "base seed (0 to 2**31-1); episode e of seed s resets the env with "
                      "seed + 1000 * s + e")
    seeds: int = param(1, "how many seeds each (agent, passage group) is evaluated with")
    episodes: int | None = param(None, "episodes per agent and seed; null = one sweep over the "
                                 "passage selection in groups of env.passages_per_step "
                                 "(ARC: over env.tasks, one task per step)")
    agents: list[Any] = param(
        factory=lambda: ["implications", "rewrite", "self_qa", "passage", "no_training"],
        help="agents to run: baseline names (implications, rewrite, self_qa, passage, "
        "no_training) or mappings with 'type'")
    iteration_size: int = param(5, "an agent's steps per search iteration: "
                                "exploration-collapse metrics and reward statistics are "
                                "logged per iteration")
    tensorboard: bool = param(True, "write TensorBoard events under <run>/tb/<agent> (with "
                              "HParams: the config and each agent's final means)")
    log_answers: bool = param(True, "keep answers, sequences and completions in steps.jsonl")
    progress: bool = param(True, "show a progress bar")
    executor: ExecutorConfig = param(
        factory=ExecutorConfig, help="where env steps run and how many are proposed at once")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_agents(self.agents)
        if self.iteration_size < 1:
            raise ConfigError(f"iteration_size must be >= 1, got {self.iteration_size}")
        if self.seeds < 1:
            raise ConfigError(f"seeds must be >= 1, got {self.seeds}")
        if self.episodes is not None and self.episodes < 1:
            raise ConfigError(f"episodes must be >= 1 or null, got {self.episodes}")


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a run's YAML config (or start from defaults), apply overrides, validate."""
    return load_experiment(RunConfig, path, overrides)
