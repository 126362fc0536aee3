"""What every policy-training run shares: its config fields and its passage checks.

``selfedit train`` trains the template-writing policy with ReST-EM
(:mod:`~selfedit.training.restem`) or GRPO (:mod:`~selfedit.training.grpo`); the config's
``algorithm`` key picks which. Both extend :class:`PolicyRunConfig` here, which extends the
fields every run shares (:class:`~selfedit.training.experiment.ExperimentConfig`). The
algorithms are found by name (``ALGORITHMS``), so this module imports neither and neither
imports the other.

ReST-EM also trains the recipe writer of ``selfedit/ARC-v0`` (``env_id``): there the
"passages" are indices into the env's task selection, the baselines are the ARC baseline
recipes, and the policy writes from each task's observation (:mod:`~selfedit.training
.env_kinds`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from selfedit.envs.backend import check_engine, check_model_source, refuse_weight_updates
from selfedit.envs.config import ConfigError, EnvConfig
from selfedit.envs.corpus import Corpus
from selfedit.envs.selfedit_env import SelfEditEnv, load_env_corpus
from selfedit.training.env_kinds import SquadKind
from selfedit.training.experiment import ExperimentConfig, load_experiment, param

__all__ = ["ALGORITHMS", "PolicyItems", "PolicyRunConfig", "check_disjoint", "check_mode",
           "checked_corpus", "env_for_policy_training", "load_train_config", "passages",
           "policy_items", "resolve_passages", "train"]

# algorithm -> "module:ConfigClass:train function"
ALGORITHMS = {
    "restem": "selfedit.training.restem:RestemConfig:train_restem",
    "grpo": "selfedit.training.grpo:GRPORunConfig:train_grpo",
}


def _entry(algorithm: Any, part: int) -> Any:
    """Part 1 (the config class) or 2 (the trainer) of an algorithm's entry, imported."""
    if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
        raise ConfigError(f"algorithm must be one of {', '.join(ALGORITHMS)}, got "
                          f"{algorithm!r}")
    names = ALGORITHMS[algorithm].split(":")
    return getattr(importlib.import_module(names[0]), names[part])


@dataclass
class PolicyRunConfig(ExperimentConfig):
    """Fields of every policy-training run (``algorithm`` picks the subclass)."""

    where: ClassVar[str] = "train"

    algorithm: str = param("restem", "which trainer runs: 'restem' or 'grpo'")
    mode: str = param("self", "'self': the policy is the env's model (template writer, "
                      "completer and adapted model are one; an update changes all three); "
                      "'separate': the policy is policy_model")
    policy_model: str | None = param(None, "separate mode: the policy model ('embedded', a hub "
                                     "id, a local directory or a .gguf file)")
    policy_dtype: str = param("float32", "separate mode: the policy's weights dtype")
    completions_per_passage: int = param(1, "M: completions of each template per training "
                                         "passage (sets env.completions_per_passage)")
    train_passages: str | list[int] = param("0:4", "training passages: a slice like '0:50' or "
                                            "indices into the env's corpus selection (ARC: "
                                            "into its task selection, env.tasks)")
    heldout_passages: str | list[int] | None = param(
        "4:8", "held-out passages, disjoint from train_passages, evaluated before training "
        "and after every iteration")
    heldout_samples: int = param(2, "sampled templates evaluated on the held-out passages, "
                                 "besides the greedy one")
    baselines: list[str] | None = param(
        None, "baselines evaluated on the held-out passages: human templates (null = "
        "implications, passage, no_training); ARC: baseline recipes (null = in_context, "
        "no_augmentation, all_augmentations)")
    temperature: float = param(1.0, "sampling temperature of the template writer")
    max_new_tokens: int = param(256, "max new tokens per template")
    prefix_json: bool = param(True, "start the reply with {\"data_creation_instruction\": \"")

    def __post_init__(self) -> None:
        super().__post_init__()
        own = type(self).__dataclass_fields__["algorithm"].default
        if self.algorithm != own:
            raise ConfigError(f"algorithm must be {own!r} here, got {self.algorithm!r}")
        check_mode(self.mode, self.policy_model, self.env.engine)
        for name in ("completions_per_passage", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.heldout_samples < 0:
            raise ConfigError(f"heldout_samples must be >= 0, got {self.heldout_samples}")
        if not 0 < self.temperature <= 5:
            raise ConfigError(f"temperature must be in (0, 5], got {self.temperature}")
        kind = self.env_kind
        if self.baselines is None:
            self.baselines = list(kind.default_baselines)
        unknown = [b for b in self.baselines if b not in kind.baseline_names()]
        if unknown:
            raise ConfigError(f"unknown baselines {unknown} for {kind.env_id}; choose from "
                              f"{', '.join(kind.baseline_names())}")
        self.env = kind.policy_env_config(self.env, self.completions_per_passage,
                                          key="completions_per_passage")

    @classmethod
    def config_class(cls, raw: dict[str, Any]) -> type[PolicyRunConfig]:
        """The subclass a mapping's ``algorithm`` names (for :func:`load_experiment`)."""
        if cls is not PolicyRunConfig:
            return cls
        return _entry(raw.get("algorithm", "restem") if isinstance(raw, dict) else None, 1)


def load_train_config(path: str | Path | None,
                      overrides: list[str] | None = None) -> PolicyRunConfig:
    """Read a training config; its ``algorithm`` key (restem or grpo) picks the dataclass."""
    return load_experiment(PolicyRunConfig, path, overrides)


def train(cfg: PolicyRunConfig, **kwargs: Any) -> Path:
    """Run the trainer of ``cfg.algorithm`` (``resume=``, ``command=``, ``env=`` ...)."""
    return _entry(cfg.algorithm, 2)(cfg, **kwargs)


def check_mode(mode: str, policy_model: str | None, engine: str = "hf") -> None:
    if mode not in ("self", "separate"):
        raise ConfigError(f"mode must be 'self' or 'separate', got {mode!r}")
    if mode == "separate" and not policy_model:
        raise ConfigError("mode: separate needs policy_model (a hub id, directory or .gguf)")
    if mode == "self" and policy_model:
        raise ConfigError("mode: self uses the env's model as the policy; drop policy_model "
                          "or set mode: separate")
    if mode == "self":  # the env's base model is the policy, updated after every iteration
        refuse_weight_updates(engine, run="mode: self",
                              fix="set env.engine: hf, or mode: separate with a policy_model")


def env_for_policy_training(env: EnvConfig, completions: int, *, key: str) -> EnvConfig:
    """The SQuAD env settings policy training needs: one passage per step, M completions
    (:meth:`SquadKind.policy_env_config`; each env kind has its own)."""
    return SquadKind().policy_env_config(env, completions, key=key)


def resolve_passages(corpus: Corpus, spec: str | list[int], *, key: str) -> list[int]:
    """Indices into ``corpus`` picked by a selection (``'0:50'`` or a list of indices)."""
    try:
        picked = corpus.select(spec)
    except (IndexError, ValueError, TypeError) as err:
        raise ConfigError(f"{key}={spec!r}: {err}") from None
    position = {p.id: i for i, p in enumerate(corpus)}
    return [position[p.id] for p in picked]


def check_disjoint(corpus: Corpus, train: list[int], heldout: list[int]) -> None:
    """Held-out passages must not be training passages, by index or by text."""
    same = sorted(set(train) & set(heldout))
    text = {corpus[i].fingerprint: i for i in train}
    same += sorted(i for i in heldout if corpus[i].fingerprint in text and i not in same)
    if same:
        ids = ", ".join(corpus[i].id for i in same[:5])
        raise ConfigError(
            f"train_passages and heldout_passages share {len(same)} passage(s) ({ids}): "
            "held-out passages must be disjoint from the training passages, e.g. "
            "train_passages: '0:50' and heldout_passages: '50:250'"
        )


def checked_corpus(cfg: ExperimentConfig, env: SelfEditEnv | None) -> Corpus:
    """The env's passage selection; without an env, model file and corpus are checked first,
    so a bad path fails before any weights load or a run directory is made."""
    if env is not None:
        return env.corpus
    check_engine(cfg.env.engine, cfg.env.device)
    check_model_source(cfg.env.model)
    return load_env_corpus(cfg.env.corpus).select(cfg.env.passages)


def passages(cfg: PolicyRunConfig, corpus: Corpus) -> tuple[list[int], list[int]]:
    """The training and held-out passage indices of ``cfg``, checked disjoint."""
    train_ids = resolve_passages(corpus, cfg.train_passages, key="train_passages")
    heldout: list[int] = []
    if cfg.heldout_passages is not None:
        heldout = resolve_passages(corpus, cfg.heldout_passages, key="heldout_passages")
        check_disjoint(corpus, train_ids, heldout)
    return train_ids, heldout


@dataclass(frozen=True)
class PolicyItems:
    """The items a policy run trains and is held out on (indices into the env's selection),
    and what was loaded to check them (keyword arguments of the kind's ``build``)."""

    train: list[int]
    heldout: list[int]
    prepared: dict[str, Any]


def policy_items(cfg: PolicyRunConfig, env: Any = None) -> PolicyItems:
    """``train_passages`` and ``heldout_passages`` of the run's env, checked disjoint; without
    ``env``, before any weights load (SQuAD: passages of the corpus selection; ARC: indices
    into the task selection). Call it again with the built env: ARC drops tasks that do not
    fit the model's context, which can move the selection's end."""
    train, heldout, prepared = cfg.env_kind.split_items(cfg.env, env, cfg.train_passages,
                                                        cfg.heldout_passages)
    return PolicyItems(train, heldout, prepared)
