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
* :class:`RecipeLibrary`: a discrete recipe space (augmentation families x loss x learning
  rate x epochs) with the interface of :class:`~selfedit.envs.library.TemplateLibrary`, so the
  bandits of :mod:`selfedit.agents.bandits` (UCB1, Thompson sampling, evolution) search
  recipes unchanged (``arc_ucb1``, ``arc_thompson``, ``arc_evolution`` in run configs). Their
  arms are global: a bandit learns which recipe works across the tasks, not per task.

All follow the :class:`~selfedit.agents.base.Agent` protocol; their actions are
:class:`~selfedit.envs.arc_recipe.ArcRecipe` objects or raw text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from selfedit.agents.base import BaseAgent
from selfedit.agents.llm import MetaPromptAgent
from selfedit.envs.arc_recipe import DEFAULT_HYPERPARAMETERS, ArcRecipe, RecipeError, parse_recipe
from selfedit.envs.config import ConfigError
from selfedit.envs.library import ArmGrid
from selfedit.envs.templates import Hyperparameters

__all__ = [
    "ARC_BASELINES",
    "FixedRecipeAgent",
    "OracleResult",
    "OracleSearchAgent",
    "RECIPE_PREFIX",
    "RecipeLibrary",
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


# -- a recipe space for the bandits ---------------------------------------------------------
@dataclass
class RecipeLibrary(ArmGrid):
    """A discrete recipe space; each arm (one index per axis) is one recipe.

    It answers what :class:`~selfedit.agents.bandits.LibraryAgent` asks of a
    :class:`~selfedit.envs.library.TemplateLibrary` (``dims``, ``n_arms``, ``index``,
    ``arm``, ``template`` -- here the arm's recipe --, ``arm_of``, ``to_dict``), so UCB1,
    Thompson sampling and the evolution strategy search recipes as they search templates.

    >>> lib = RecipeLibrary(augmentations=[[], ["basic"]], losses=["outputs"],
    ...                     learning_rates=[1e-3], num_epochs=[1, 3])
    >>> lib.dims, lib.n_arms, lib.template((1, 0, 0, 1)).label
    ((2, 1, 1, 2), 4, 'basic|outputs|lr0.001|ep3')
    >>> lib.arm_of(lib.template((1, 0, 0, 1)).to_dict())
    (1, 0, 0, 1)
    """

    augmentations: list[list[str]] = field(
        default_factory=lambda: [[], ["basic"], ["basic", "size"], list(ALL_FAMILIES)])
    losses: list[str] = field(default_factory=lambda: ["outputs", "all"])
    learning_rates: list[float] = field(default_factory=lambda: [1e-4, 1e-3])
    num_epochs: list[int] = field(default_factory=lambda: [1, 3, 5])
    lora_rank: int = DEFAULT_HYPERPARAMETERS.lora_rank
    lora_alpha: float = DEFAULT_HYPERPARAMETERS.lora_alpha

    axes = ("augmentations", "loss", "learning_rate", "num_epochs")

    def __post_init__(self) -> None:
        for key in ("augmentations", "losses", "learning_rates", "num_epochs"):
            values = getattr(self, key)
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{key} must be a non-empty list, got {values!r}")
        try:  # every arm must be a valid recipe: build the corners of each axis
            self._expanded = [ArcRecipe(tuple(a)).augmentations for a in self.augmentations]
            for loss in self.losses:
                ArcRecipe((), loss=loss)
            for lr in self.learning_rates:
                for ep in self.num_epochs:
                    self._hyperparameters(lr, ep)
        except (RecipeError, ValueError, TypeError) as err:
            raise ConfigError(f"recipe library: {err}") from None
        if len(set(self._expanded)) != len(self._expanded):
            raise ConfigError("augmentations: two choices name the same augmentations")

    def _hyperparameters(self, learning_rate: float, num_epochs: int) -> Hyperparameters:
        return Hyperparameters(lora_rank=self.lora_rank, lora_alpha=float(self.lora_alpha),
                               learning_rate=float(learning_rate), num_epochs=int(num_epochs))

    @property
    def dims(self) -> tuple[int, ...]:
        return (len(self.augmentations), len(self.losses), len(self.learning_rates),
                len(self.num_epochs))

    def template(self, arm: Sequence[int]) -> ArcRecipe:
        """The recipe an arm stands for (the library protocol's name for an arm's action)."""
        a, loss, lr, ep = self.check_arm(arm)
        return ArcRecipe(tuple(self.augmentations[a]), 0, self.losses[loss],
                         self._hyperparameters(self.learning_rates[lr], self.num_epochs[ep]))

    def arm_of(self, action: Any) -> tuple[int, ...] | None:
        """The arm an action (ArcRecipe, dict or JSON) stands for, or None if none does."""
        try:
            recipe, _ = parse_recipe(action)
        except (RecipeError, TypeError):
            return None
        hp = recipe.hyperparameters
        if (recipe.color_permutations or hp.lora_rank != self.lora_rank
                or not math.isclose(hp.lora_alpha, self.lora_alpha, rel_tol=1e-9)):
            return None
        try:
            found = (self._expanded.index(recipe.augmentations), self.losses.index(recipe.loss))
        except ValueError:
            return None
        lr = [i for i, x in enumerate(self.learning_rates)
              if math.isclose(x, hp.learning_rate, rel_tol=1e-9)]
        ep = [i for i, x in enumerate(self.num_epochs) if x == hp.num_epochs]
        if not lr or not ep:
            return None
        return (*found, lr[0], ep[0])

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON description (stored in agent states to catch a changed library)."""
        return {"augmentations": [list(a) for a in self.augmentations],
                "losses": list(self.losses), "learning_rates": list(self.learning_rates),
                "num_epochs": list(self.num_epochs), "lora_rank": self.lora_rank,
                "lora_alpha": self.lora_alpha}


_RECIPE_LIBRARY_KEYS = ("augmentations", "losses", "learning_rates", "num_epochs", "lora_rank",
                        "lora_alpha")


def _bandit_from_spec(kind: str, params: Sequence[str]) -> Any:
    """A config factory for a bandit of :mod:`selfedit.agents.bandits` over recipes."""
    def factory(spec: dict[str, Any], env: Any = None) -> Any:
        from selfedit.agents import bandits

        cls = {"ucb1": bandits.UCB1Agent, "thompson": bandits.ThompsonAgent,
               "evolution": bandits.EvolutionAgent}[kind]
        name = spec.get("name", f"arc_{kind}")
        try:
            library = RecipeLibrary(**{k: spec[k] for k in _RECIPE_LIBRARY_KEYS if k in spec})
            seed = spec.get("seed", 0)
            if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
                raise ConfigError(f"seed must be a whole number, got {seed!r}")
            return cls(library, seed=seed, name=name,  # type: ignore[arg-type]
                       **{k: spec[k] for k in params if k in spec})
        except ConfigError as err:
            raise ConfigError(f"agent {name}: {err}") from None

    return factory


_BANDIT_PARAMS = {"ucb1": ("c",), "thompson": ("prior_mean", "prior_std", "noise_std"),
                  "evolution": ("population", "mutation_rate")}


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
    ``{type: arc_oracle, recipes: [...]}``, ``{type: arc_writer, ...}``, and the bandits over
    a :class:`RecipeLibrary`: ``{type: arc_ucb1 | arc_thompson | arc_evolution,
    augmentations: [[], [basic]], losses: [outputs], learning_rates: [...], num_epochs: [...],
    seed: 0, ...}`` (plus each bandit's own keys: c; prior_mean, prior_std, noise_std;
    population, mutation_rate)."""
    from selfedit.agents.registry import register_agent

    register_agent("arc_fixed", _fixed_from_spec, {"baseline", "recipe", "hyperparameters"})
    register_agent("arc_oracle", _oracle_from_spec, {"recipes"})
    register_agent("arc_writer", _writer_from_spec,
                   {"model", "exploit_temperature", "max_retries", "max_new_tokens",
                    "prefix_json", "seed"})
    for kind, params in _BANDIT_PARAMS.items():  # the bandits, over recipes
        register_agent(f"arc_{kind}", _bandit_from_spec(kind, params),
                       {*_RECIPE_LIBRARY_KEYS, "seed", *params})
