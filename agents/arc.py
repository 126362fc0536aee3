"""Agents for ``selfedit/ARC-v0``: fixed-recipe baselines, an oracle search, an LLM writer.

* :data:`ARC_BASELINES` and :class:`FixedRecipeAgent`: in-context only (no training), the
  plain leave-one-out set (no augmentation), every augmentation family.
* :class:`OracleSearchAgent`: per task, tries recipes from a list (cheapest first) until one
  solves it -- the upper bound a recipe writer could reach in that space; it reports how many
  it tried (SEAL's "oracle" row, sec. 4.1, searched a fixed recipe set the same way).
* :class:`RecipeWriterAgent`: a language model (the env's own in self mode) writes the recipe
  from the env's observation, which holds the demonstrations and the recipe format (SEAL's
  self-edit prompt in this project's words); invalid replies are retried, then handed to the
  env as they are so its penalty counts them.

All follow the :class:`~selfedit.agents.base.Agent` protocol; their actions are
:class:`~selfedit.envs.arc_recipe.ArcRecipe` objects or raw text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from selfedit.agents.base import BaseAgent
from selfedit.agents.llm import MetaPromptAgent
from selfedit.envs.arc_recipe import DEFAULT_HYPERPARAMETERS, ArcRecipe, RecipeError, parse_recipe
from selfedit.envs.templates import Hyperparameters

__all__ = [
    "ARC_BASELINES",
    "FixedRecipeAgent",
    "OracleResult",
    "OracleSearchAgent",
    "RECIPE_PREFIX",
    "RecipeWriterAgent",
    "arc_baseline",
    "oracle_recipes",
    "parse_recipe_reply",
    "register_arc_agents",
]

ArcAction = str | ArcRecipe
ALL_FAMILIES = ("basic", "size", "chain", "repeat")

ARC_BASELINES: dict[str, ArcRecipe] = {
    "in_context": ArcRecipe(hyperparameters=replace(DEFAULT_HYPERPARAMETERS, num_epochs=0),
                            name="in_context"),
    "no_augmentation": ArcRecipe((), name="no_augmentation"),
    "all_augmentations": ArcRecipe(ALL_FAMILIES, name="all_augmentations"),
}


def arc_baseline(name: str, **changes: Any) -> ArcRecipe:
    """A baseline recipe by name; ``changes`` replace hyperparameters (``learning_rate=``) or
    recipe fields (``loss=``, ``color_permutations=``).

    >>> arc_baseline("no_augmentation", learning_rate=1e-3, loss="all").label
    'no_augmentation'
    >>> arc_baseline("in_context").trains
    False
    """
    if name not in ARC_BASELINES:
        raise KeyError(f"unknown ARC baseline {name!r}; choose from {', '.join(ARC_BASELINES)}")
    base = ARC_BASELINES[name]
    fields_ = {k: changes.pop(k) for k in ("loss", "color_permutations", "augmentations")
               if k in changes}
    if changes and base.trains:  # in-context stays untrained whatever the learning rate
        base = base.with_hyperparameters(**changes)
    return replace(base, **fields_)


class FixedRecipeAgent(BaseAgent):
    """Always emits the same recipe (a baseline by name, or any recipe)."""

    def __init__(self, recipe: ArcRecipe | str, name: str | None = None) -> None:
        self.recipe = arc_baseline(recipe) if isinstance(recipe, str) else recipe
        self.name = name or self.recipe.name or self.recipe.label

    def act(self, observation: dict[str, Any], info: dict[str, Any]) -> ArcAction:
        return self.recipe


def oracle_recipes(
    augmentations: Sequence[Sequence[str]] = ((), ("basic",), ("basic", "size"), ALL_FAMILIES),
    losses: Sequence[str] = ("outputs", "all"),
    learning_rates: Sequence[float] = (1e-4, 1e-3),
    epochs: Sequence[int] = (1, 3, 5),
    *,
    in_context: bool = True,
    **hyperparameters: Any,
) -> list[ArcRecipe]:
    """A grid over the recipe space, cheapest first (in-context, then by augmentation
    families x epochs): the order the oracle tries them in.

    >>> recipes = oracle_recipes()
    >>> len(recipes), recipes[0].label, recipes[1].label
    (49, 'in_context', 'plain|outputs|lr0.0001|ep1')
    """
    base = DEFAULT_HYPERPARAMETERS.to_dict() | hyperparameters
    grid = [
        ArcRecipe(tuple(aug), 0, loss,
                  Hyperparameters(**(base | {"learning_rate": lr, "num_epochs": ep})))
        for aug in augmentations for ep in epochs for loss in losses for lr in learning_rates
    ]
    grid.sort(key=lambda r: (len(r.augmentations) + 1) * r.hyperparameters.num_epochs)
    first = [arc_baseline("in_context")] if in_context else []
    return first + grid


@dataclass
class OracleResult:
    """What the oracle search did on one task."""

    task_id: str
    solved: bool
    tried: int  # recipes evaluated, the solving one included
    recipe: dict[str, Any] | None  # the first recipe that solved it
    errors: int = 0  # recipes the env rejected (budget): they count as tried
    rewards: list[float] = field(default_factory=list)


class OracleSearchAgent(BaseAgent):
    """Tries recipes on each task, in order, until one solves it: the upper bound.

    As an agent: ``act`` proposes the next untried recipe for the observation's task (the
    solving one again once it is found), ``observe`` records the outcome, so a runner that
    repeats each task ``len(recipes)`` times performs the search. :meth:`search` runs it
    directly on an env.
    """

    def __init__(self, recipes: Sequence[ArcRecipe] | None = None, *,
                 name: str = "oracle") -> None:
        self.recipes = list(recipes) if recipes is not None else oracle_recipes()
        if not self.recipes:
            raise ValueError("the oracle needs at least one recipe to try")
        self.name = name
        self.results: dict[str, OracleResult] = {}

    def result_for(self, task_id: str) -> OracleResult:
        """The search record of ``task_id`` (created empty on first use)."""
        return self.results.setdefault(task_id, OracleResult(task_id, False, 0, None))

    def act(self, observation: dict[str, Any], info: dict[str, Any]) -> ArcAction:
        result = self.result_for(str(info.get("task_id", observation["task_index"])))
        if result.solved and result.recipe is not None:
            return parse_recipe(result.recipe)[0]
        return self.recipes[min(result.tried, len(self.recipes) - 1)]

    def observe(self, action: ArcAction, reward: float, info: dict[str, Any]) -> None:
        result = self.result_for(str(info["task_id"]))
        if result.solved or result.tried >= len(self.recipes):
            return
        result.tried += 1
        result.rewards.append(float(reward))
        result.errors += info.get("error") is not None
        if reward >= 1.0:
            result.solved = True
            result.recipe = info.get("recipe")

    def search(self, env: Any, task_id: str, *, seed: int = 0,
               on_step: Any = None) -> OracleResult:
        """Evaluate recipes on ``task_id`` until one solves it; ``on_step(recipe, reward,
        info)`` sees every evaluation (for logs). Every step resets to ``seed``, so each
        recipe is scored exactly as it would be on its own."""
        while True:
            result = self.result_for(task_id)
            if result.solved or result.tried >= len(self.recipes):
                return result
            obs, info = env.reset(seed=seed, options={"task_id": task_id})
            action = self.act(obs, info)
            _, reward, _, _, step_info = env.step(action)
            if on_step is not None:
                on_step(action, reward, step_info)
            self.observe(action, reward, step_info)

    def state_dict(self) -> dict[str, Any]:
        return {"results": {k: asdict(v) for k, v in self.results.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.results = {k: OracleResult(**v) for k, v in state["results"].items()}


# Starting the reply inside the object steers a small model into the format (as the SQuAD
# template writers do); the parser accepts whatever a larger model writes instead.
RECIPE_PREFIX = '{"augmentations": ['


def parse_recipe_reply(reply: str) -> ArcRecipe | None:
    """A model's reply as a recipe, closing a truncated JSON object; None if invalid.

    >>> parse_recipe_reply('{"augmentations": ["basic"], "loss": "all", "num_epochs": 2').loss
    'all'
    >>> parse_recipe_reply('{"augmentations": ["spin"]}') is None
    True
    """
    for candidate in (reply, reply + "}", reply + "]}", reply + '"]}', reply + '"}'):
        try:
            return parse_recipe(candidate)[0]
        except RecipeError:
            continue
    return None


class RecipeWriterAgent(MetaPromptAgent):
    """A language model writes the recipe from the env's observation (SEAL's self-edit).

    Sampling settings, retries, seeding and state are :class:`MetaPromptAgent`'s; only the
    reply format differs (a recipe, not a template).

    Args:
        backend: anything with ``generate(prompts, max_new_tokens=, temperature=, seed=,
            response_prefix=)``; in self mode the env's backend.
        prefix_json: start the reply with ``{"augmentations": [``.
    """

    def __init__(self, backend: Any, *, name: str = "recipe_writer", explore_ratio: float = 0.0,
                 exploit_temperature: float = 0.8, max_retries: int = 2,
                 max_new_tokens: int = 96, prefix_json: bool = True, **kwargs: Any) -> None:
        super().__init__(backend, name=name, explore_ratio=explore_ratio,
                         exploit_temperature=exploit_temperature, max_retries=max_retries,
                         max_new_tokens=max_new_tokens, prefix_json=False, **kwargs)
        self.prefix = RECIPE_PREFIX if prefix_json else ""
        self.replies: list[str] = []  # the last batch's raw replies (ReST-EM's SFT targets)

    def parse(self, reply: str) -> ArcRecipe | None:
        """A recipe, not a template: the one thing this writer does differently."""
        return parse_recipe_reply(reply)


# -- config entries -------------------------------------------------------------------------
def _fixed_from_spec(spec: dict[str, Any], env: Any = None) -> FixedRecipeAgent:
    if "recipe" in spec:
        recipe = parse_recipe(spec["recipe"])[0]
    else:
        recipe = arc_baseline(spec.get("baseline", ""), **spec.get("hyperparameters", {}))
    return FixedRecipeAgent(recipe, name=spec.get("name"))


def _oracle_from_spec(spec: dict[str, Any], env: Any = None) -> OracleSearchAgent:
    recipes = [parse_recipe(r)[0] for r in spec["recipes"]] if "recipes" in spec else None
    return OracleSearchAgent(recipes, name=spec.get("name", "oracle"))


def _writer_from_spec(spec: dict[str, Any], env: Any) -> RecipeWriterAgent:
    kwargs = {k: v for k, v in spec.items() if k not in ("type", "model")}
    if spec.get("model"):
        from selfedit.envs.backend import HFBackend

        backend = HFBackend(spec["model"])
    elif env is not None:
        backend = env.backend
    else:
        raise ValueError("a recipe writer needs an env (self mode) or a 'model' key")
    return RecipeWriterAgent(backend, **kwargs)


def register_arc_agents() -> None:
    """Make the ARC agents available to run configs: ``{type: arc_fixed, baseline: ...}``,
    ``{type: arc_oracle, recipes: [...]}``, ``{type: arc_writer, ...}``."""
    from selfedit.agents.registry import register_agent

    register_agent("arc_fixed", _fixed_from_spec, {"baseline", "recipe", "hyperparameters"})
    register_agent("arc_oracle", _oracle_from_spec, {"recipes"})
    register_agent("arc_writer", _writer_from_spec,
                   {"model", "exploit_temperature", "max_retries", "max_new_tokens",
                    "prefix_json", "seed"})
