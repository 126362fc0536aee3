"""Run configuration: a typed dataclass loaded from YAML, with ``key=value`` overrides.

``configs/*.yaml`` and the command line share one source of truth: the fields below (and
:class:`~selfedit.envs.config.EnvConfig` under ``env``). Unknown keys and wrong types fail
before any model is loaded, with the key named and the fix suggested.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from selfedit.envs.config import (
    ConfigError,
    EnvConfig,
    check_types,
    config_from_dict,
)

__all__ = ["EXECUTOR_TYPES", "ExecutorConfig", "RunConfig", "apply_overrides", "load_config"]


def _f(default: Any, help: str) -> Any:  # noqa: A002
    return field(default=default, metadata={"help": help})


EXECUTOR_TYPES = ("serial", "ray")


@dataclass
class ExecutorConfig:
    """Where env steps run, and how many steps an agent proposes at once (issue 6).

    Rewards depend on ``batch``, never on ``type``: the same config gives the same rewards
    for the same seeds whether the steps run here or on Ray actors.
    """

    type: str = _f("serial", "where env steps run: 'serial' (this process, one step after "
                   "the other) or 'ray' (Ray actors, each loading its own model; needs "
                   "`pip install \"selfedit-gym[ray]\"`)")
    batch: int = _f(1, "steps of one agent proposed before any of their rewards is observed "
                    "(1 = propose, evaluate, observe); only these steps can run in parallel, "
                    "so set it >= workers with ray. An adaptive agent learns in blocks of "
                    "this size: it changes what the agent proposes, whatever the type")
    workers: int = _f(1, "Ray actors, each holding its own copy of the model")
    address: str | None = _f(None, "Ray cluster to join ('auto', or 'ray://<head>:10001'); "
                             "null = start a local Ray runtime for the run")
    threads_per_worker: int = _f(1, "torch threads (and Ray CPUs) of each actor")
    gpus_per_worker: float = _f(0.0, "GPUs of each actor (0.5 puts two actors on one GPU; "
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
class RunConfig:
    """One run: a set of agents stepped through the same env on the same passages."""

    name: str = _f("run", "experiment name; the run writes to "
                   "`<output_dir>/<name>__<seed>__<time>`")
    seed: int = _f(0, "base seed; episode e of seed s resets the env with seed + 1000 * s + e")
    seeds: int = _f(1, "how many seeds each (agent, passage group) is evaluated with")
    episodes: int | None = _f(None, "episodes per agent and seed; null = one sweep over the "
                              "passage selection in groups of env.passages_per_step")
    agents: list[Any] = field(
        default_factory=lambda: ["implications", "rewrite", "self_qa", "passage", "no_training"],
        metadata={"help": "agents to run: baseline names (implications, rewrite, self_qa, "
                  "passage, no_training) or mappings with 'type'"},
    )
    iteration_size: int = _f(5, "an agent's steps per search iteration: exploration-collapse "
                             "metrics and reward statistics are logged per iteration")
    output_dir: str = _f("results", "parent directory of run directories")
    tensorboard: bool = _f(True, "write TensorBoard events under <run>/tb/<agent>")
    log_answers: bool = _f(True, "keep answers, sequences and completions in steps.jsonl")
    progress: bool = _f(True, "show a progress bar")
    env: EnvConfig = field(default_factory=EnvConfig, metadata={"help": "env settings"})
    executor: ExecutorConfig = field(
        default_factory=ExecutorConfig,
        metadata={"help": "where env steps run and how many are proposed at once"},
    )

    def __post_init__(self) -> None:
        if isinstance(self.env, dict):
            self.env = EnvConfig.from_dict(self.env)
        if isinstance(self.executor, dict):
            self.executor = ExecutorConfig.from_dict(self.executor)
        check_types(self, where="run")
        if not self.agents:
            raise ConfigError("agents is empty: list at least one agent")
        if self.iteration_size < 1:
            raise ConfigError(f"iteration_size must be >= 1, got {self.iteration_size}")
        if self.seeds < 1:
            raise ConfigError(f"seeds must be >= 1, got {self.seeds}")
        if self.episodes is not None and self.episodes < 1:
            raise ConfigError(f"episodes must be >= 1 or null, got {self.episodes}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunConfig:
        return config_from_dict(cls, raw, where="run",
                                sections={"executor": ExecutorConfig.from_dict})


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {dotted}: {key} is not a section")
        node = child
    node[keys[-1]] = value


_SLICE = re.compile(r"""\s*['"]?-?\d*\s*:\s*-?\d*(:-?\d*)?['"]?\s*""")


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key=value`` overrides (dotted keys; values parsed as YAML).

    >>> apply_overrides({"env": {"passages": "0:8"}}, ["env.passages=20:30", "seeds=3"])
    {'env': {'passages': '20:30'}, 'seeds': 3}
    """
    out = yaml.safe_load(yaml.safe_dump(raw)) or {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. env.passages=0:4)")
        key, text = item.split("=", 1)
        if _SLICE.fullmatch(text):
            value: Any = text.strip().strip("'\"")  # YAML 1.1 reads 20:30 as the int 1230
        else:
            value = yaml.safe_load(text) if text.strip() else None
        _set_dotted(out, key.strip(), value)
    return out


def read_yaml(path: str | Path | None) -> dict[str, Any]:
    """A config file's mapping ({} for no file); every problem is a one-line ConfigError."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist (see configs/ for examples)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        # One line: where, and what the parser expected (its own message spans lines).
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).strip().splitlines()[0]
        raise ConfigError(f"config file {path} is not valid YAML{where}: {problem}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return raw


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (or start from defaults), apply overrides, validate."""
    return RunConfig.from_dict(apply_overrides(read_yaml(path), overrides or []))
