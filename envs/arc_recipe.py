"""Training recipes: the action of ``selfedit/ARC-v0``.

In SEAL's few-shot domain (arXiv 2506.10943, sec. 4.1) the self-edit is not training text but
a *recipe*: which augmentations of the demonstrations to train on, which tokens the loss
covers, the learning rate and the number of epochs. On the wire it is JSON::

    {"augmentations": ["basic", "size"],   # groups or single names (arc_data.AUGMENTATIONS)
     "color_permutations": 0,              # extra copies with colours 1-9 permuted
     "loss": "outputs",                    # "outputs" (the output grid only) or "all"
     "learning_rate": 0.0001, "num_epochs": 3,
     "lora_rank": 128, "lora_alpha": 16}   # optional; any Hyperparameters key

SEAL's own format is accepted as well (``data_generation.use_basic_augmentations`` ...,
``training.strategy`` / ``learning_rate`` / ``num_train_epochs``), so recipes written for
SEAL's prompt run unchanged. Every problem raises :class:`RecipeError` (a
:class:`~selfedit.envs.templates.TemplateError`) whose message says what to fix; the env turns
it into ``info["error"]`` and the penalty reward.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from selfedit.envs.arc_data import (
    AUGMENTATION_GROUPS,
    ArcPair,
    grid_text,
    resolve_augmentations,
)
from selfedit.envs.templates import (
    HP_RANGES,
    Hyperparameters,
    TemplateError,
    extract_json,
)

__all__ = ["LOSSES", "ArcRecipe", "RecipeError", "parse_recipe", "recipe_prompt"]

LOSSES = ("outputs", "all")
MAX_COLOR_PERMUTATIONS = 8
# SEAL's LoRA for Llama-3.2-1B (rank 128, alpha 16); learning rate and epochs are the recipe's.
DEFAULT_HYPERPARAMETERS = Hyperparameters(lora_rank=128, lora_alpha=16.0, learning_rate=1e-4,
                                          num_epochs=3)
_SEAL_GROUPS = {f"use_{g}_augmentations": g for g in AUGMENTATION_GROUPS}
_SEAL_LOSS = {"train_using_all_tokens": "all", "train_using_output_tokens": "outputs"}
_HP_KEYS = set(HP_RANGES)
_RECIPE_KEYS = {"augmentations", "color_permutations", "loss", "hyperparameters",
                "data_generation", "training", *_HP_KEYS}


class RecipeError(TemplateError):
    """A recipe that cannot be evaluated; the message says what to fix."""


@dataclass(frozen=True)
class ArcRecipe:
    """A training recipe for one ARC task.

    Args:
        augmentations: augmentation names (groups are expanded on parsing); empty = the
            plain leave-one-out set.
        color_permutations: extra copies of the training set, each with colours 1-9
            permuted (0 stays the background).
        loss: ``"outputs"``: loss on the output grid's tokens only (the prompt is context);
            ``"all"``: on every token.
        hyperparameters: LoRA settings; ``num_epochs`` 0 means no training (in-context).
        name: optional label for tables and logs.
    """

    augmentations: tuple[str, ...] = ()
    color_permutations: int = 0
    loss: str = "outputs"
    hyperparameters: Hyperparameters = field(default_factory=lambda: DEFAULT_HYPERPARAMETERS)
    name: str | None = None

    def __post_init__(self) -> None:
        try:
            names = tuple(a.name for a in resolve_augmentations(self.augmentations))
        except ValueError as err:
            raise RecipeError(str(err)) from None
        object.__setattr__(self, "augmentations", names)
        if self.loss not in LOSSES:
            raise RecipeError(f"loss must be 'outputs' or 'all', got {self.loss!r}")
        cp = self.color_permutations
        if isinstance(cp, bool) or not isinstance(cp, int) or not 0 <= cp <= MAX_COLOR_PERMUTATIONS:
            raise RecipeError(f"color_permutations must be a whole number between 0 and"
                              f" {MAX_COLOR_PERMUTATIONS}, got {cp!r}")

    @property
    def trains(self) -> bool:
        return self.hyperparameters.num_epochs > 0

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if not self.trains:
            return "in-context"
        hp = self.hyperparameters
        groups = [g for g, names in AUGMENTATION_GROUPS.items()
                  if set(names) <= set(self.augmentations)] or list(self.augmentations)
        return (f"{'+'.join(groups) or 'plain'}|{self.loss}|lr{hp.learning_rate:g}"
                f"|ep{hp.num_epochs}")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "augmentations": list(self.augmentations),
            "color_permutations": self.color_permutations,
            "loss": self.loss,
            **self.hyperparameters.to_dict(),
        }
        if self.name:
            out["name"] = self.name
        return out

    def to_json(self) -> str:
        """The recipe as the JSON an agent would emit (round-trips through :func:`parse_recipe`)."""
        return json.dumps(self.to_dict())

    def with_hyperparameters(self, **changes: Any) -> ArcRecipe:
        merged = {**self.hyperparameters.to_dict(), **changes}
        return replace(self, hyperparameters=Hyperparameters(**merged))


def _from_seal(raw: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    """SEAL's two-section format -> this module's flat one."""
    data = raw.get("data_generation", {})
    training = raw.get("training", {})
    if not isinstance(data, dict) or not isinstance(training, dict):
        raise RecipeError("'data_generation' and 'training' must be JSON objects")
    flat: dict[str, Any] = {"augmentations": []}
    for key, value in data.items():
        if key not in _SEAL_GROUPS:
            report["ignored_keys"].append(f"data_generation.{key}")
            continue
        if not isinstance(value, bool):
            raise RecipeError(f"data_generation.{key} must be true or false, got {value!r}")
        if value:
            flat["augmentations"].append(_SEAL_GROUPS[key])
    for key, value in training.items():
        if key == "strategy":
            if value not in _SEAL_LOSS:
                raise RecipeError(f"training.strategy must be one of {list(_SEAL_LOSS)},"
                                  f" got {value!r}")
            flat["loss"] = _SEAL_LOSS[value]
        elif key == "num_train_epochs":
            flat["num_epochs"] = value
        elif key in _HP_KEYS:
            flat[key] = value
        else:
            report["ignored_keys"].append(f"training.{key}")
    for key in raw:
        if key not in ("data_generation", "training"):
            report["ignored_keys"].append(str(key))
    return flat


def parse_recipe(
    action: str | dict[str, Any] | ArcRecipe,
    *,
    policy: Literal["reject", "clamp"] = "reject",
    defaults: Hyperparameters = DEFAULT_HYPERPARAMETERS,
) -> tuple[ArcRecipe, dict[str, Any]]:
    """Turn an action (JSON text, a dict, or an ArcRecipe) into a validated recipe.

    Returns the recipe and a report: ``defaults_used`` (hyperparameters not given),
    ``ignored_keys`` and ``clamped`` (key -> (given, used), with ``policy="clamp"``).
    Hyperparameters follow the SQuAD env's ranges (``templates.HP_RANGES``).

    >>> r, _ = parse_recipe('{"augmentations": ["basic"], "loss": "all", "num_epochs": 2}')
    >>> r.augmentations[:2], r.loss, r.hyperparameters.num_epochs
    (('rot90', 'rot180'), 'all', 2)
    >>> r, _ = parse_recipe({"data_generation": {"use_size_augmentations": True},
    ...     "training": {"strategy": "train_using_output_tokens", "learning_rate": 1e-4,
    ...                  "num_train_epochs": 1}})
    >>> r.augmentations, r.loss
    (('upscale2', 'stretch_rows2', 'stretch_cols2'), 'outputs')
    >>> try:
    ...     parse_recipe('{"augmentations": ["rot_90"]}')
    ... except RecipeError as err:
    ...     print(str(err)[:52])
    unknown augmentation 'rot_90'; did you mean 'rot90'?
    """
    empty: dict[str, Any] = {"defaults_used": [], "ignored_keys": [], "clamped": {}}
    if isinstance(action, ArcRecipe):
        return action, empty
    if isinstance(action, str):
        try:
            action = extract_json(action, want=dict)
        except TemplateError as err:
            raise RecipeError(f"a recipe must be one JSON object: {err}") from None
    if not isinstance(action, dict):
        raise RecipeError(f"a recipe must be a JSON object, got {type(action).__name__}")
    report = dict(empty, ignored_keys=[])
    if not set(action) & _RECIPE_KEYS:
        # A small model's reply often holds some other JSON object; with no recipe key in it,
        # it is not a recipe of defaults but no recipe at all.
        raise RecipeError(
            "the JSON object has none of the recipe's keys (augmentations, loss,"
            f" learning_rate, num_epochs, ...): got {sorted(str(k) for k in action)[:6]}"
        )
    raw = _from_seal(action, report) if ("data_generation" in action or
                                          "training" in action) else dict(action)
    nested = raw.pop("hyperparameters", None)
    if nested is not None:
        if not isinstance(nested, dict):
            raise RecipeError("hyperparameters must be a JSON object")
        raw = {**nested, **raw}
    augmentations = raw.pop("augmentations", [])
    if isinstance(augmentations, str):
        augmentations = [augmentations]
    if not isinstance(augmentations, list) or not all(isinstance(a, str) for a in augmentations):
        raise RecipeError("augmentations must be a list of names, e.g. [\"basic\", \"size\"]")
    loss = raw.pop("loss", "outputs")
    colors = raw.pop("color_permutations", 0)
    name = raw.pop("name", None)
    hp_raw = {k: raw.pop(k) for k in list(raw) if k in _HP_KEYS}
    report["ignored_keys"] += sorted(str(k) for k in raw)
    try:
        hp, hp_report = Hyperparameters.from_dict({**defaults.to_dict(), **hp_raw},
                                                  policy=policy)
    except TemplateError as err:
        raise RecipeError(str(err)) from None
    report["defaults_used"] = sorted(_HP_KEYS - set(hp_raw))
    report["clamped"] = hp_report["clamped"]
    if isinstance(colors, float) and colors.is_integer():
        colors = int(colors)
    recipe = ArcRecipe(tuple(augmentations), colors, loss, hp,
                       name=name if isinstance(name, str) else None)
    return recipe, report


def _demonstrations(demos: Sequence[ArcPair], sep: str) -> str:
    return "\n\n".join(
        f"Example {k}\nInput:\n{grid_text(p.input, sep)}\nOutput:\n{grid_text(p.output, sep)}"
        for k, p in enumerate(demos, start=1)
    )


def recipe_prompt(demos: Sequence[ArcPair], sep: str = "") -> str:
    """What a recipe writer is shown: the demonstrations, then what a recipe is (SEAL's
    self-edit prompt, sec. 4.1, in this project's words, with the same four families)."""
    low, high = HP_RANGES["learning_rate"]
    return (
        f"{_demonstrations(demos, sep)}\n\n------\n\n"
        "You decide how a model is fine-tuned on the examples above before it solves this"
        " puzzle's test input. Its training data holds every example in turn as the question,"
        " the other examples as context. You may add transformed copies of all grids:\n"
        '- "basic": rotations by 90, 180 and 270 degrees, flips, transpositions\n'
        '- "size": each cell scaled up 2x (both ways, rows only, columns only)\n'
        '- "chain": a rotation, flip or transposition followed by the 2x scale-up\n'
        '- "repeat": the grid tiled twice (down, across, both)\n'
        f'Training: "loss" is "outputs" (learn the output grids only) or "all" (every'
        f' token); "learning_rate" between {low:g} and {high:g}; "num_epochs" between 0 and'
        f' {int(HP_RANGES["num_epochs"][1])} (0 = no training).\n\n'
        "Reply with one JSON object and nothing else, for example:\n"
        '{"augmentations": ["basic", "size"], "loss": "outputs", "learning_rate": 0.0001,'
        ' "num_epochs": 3}'
    )
