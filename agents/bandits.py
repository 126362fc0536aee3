"""Bandit and evolutionary searchers over a discrete library of templates.

The template space of the papers (free-text instruction + continuous hyperparameters) is
discretised into a :class:`TemplateLibrary`: a few instructions times a few choices per
hyperparameter. Each combination is an *arm*, a tuple of indices, one per axis. The agents
here treat the env as a (noisy) black-box function of the arm:

* :class:`UCB1Agent` - optimism under uncertainty (Auer et al., 2002);
* :class:`ThompsonAgent` - posterior sampling with a Gaussian model per arm;
* :class:`EvolutionAgent` - a steady-state (mu + 1) evolution strategy that mutates one
  coordinate of an elite arm, the cheapest analogue of the template-mutation searchers of
  arXiv 2601.14532 when the template space is discrete.

Every agent draws its randomness from one ``numpy.random.Generator`` seeded in the
constructor; ``state_dict`` holds the generator's state and the per-arm statistics as plain
JSON, so a resumed run proposes exactly what the uninterrupted run would have.

A quick look (a synthetic reward that only likes the ``passage`` instruction at rank 16):

>>> lib = TemplateLibrary.from_baselines(["rewrite", "passage"], ranks=[8, 16],
...                                      learning_rates=[1e-3], epochs=[3])
>>> lib.dims, lib.n_arms
((2, 2, 1, 1), 4)
>>> agent = UCB1Agent(lib, seed=0)
>>> for _ in range(60):
...     template = agent.act({}, {})
...     good = template.name == "passage|r16|lr0.001|ep3"
...     agent.observe(template, 1.0 if good else 0.2, {})
>>> lib.template(agent.best_arm()).name
'passage|r16|lr0.001|ep3'
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from selfedit.agents.base import Action, BaseAgent
from selfedit.envs.config import ConfigError
from selfedit.envs.library import (  # re-exported: the library lives beside the env
    DEFAULT_INSTRUCTIONS,
    Arm,
    Instruction,
    TemplateLibrary,
)
from selfedit.envs.templates import Template

__all__ = [
    "Arm",
    "EvolutionAgent",
    "Instruction",
    "LibraryAgent",
    "TemplateLibrary",
    "ThompsonAgent",
    "UCB1Agent",
    "evolution_from_spec",
    "thompson_from_spec",
    "ucb1_from_spec",
]

# -- agents ----------------------------------------------------------------------------
class LibraryAgent(BaseAgent):
    """Shared machinery: per-arm reward statistics, a seeded generator, JSON state.

    Subclasses implement :meth:`propose` (a flat arm index). ``observe`` matches the action
    to its arm, so actions proposed in a batch can be observed in any order. A failed step
    counts with the reward the env gave it (``invalid_reward``, negative by default), which
    is exactly what a searcher should learn about such an arm.
    """

    kind = "library"

    def __init__(self, library: TemplateLibrary | None = None, *, seed: int | None = 0,
                 name: str | None = None) -> None:
        self.library = library if library is not None else TemplateLibrary()
        self.name = name or self.kind
        self.rng = np.random.default_rng(seed)
        n = self.library.n_arms
        self.pulls: list[int] = [0] * n  # evaluations per arm (flat index)
        self.reward_sums: list[float] = [0.0] * n  # summed rewards per arm
        self.t = 0  # observations so far

    # -- protocol ---------------------------------------------------------------------
    def act(self, observation: dict[str, Any], info: dict[str, Any]) -> Template:
        return self.library.template(self.library.arm(self.propose()))

    def propose(self) -> int:
        """The flat index of the next arm to evaluate."""
        raise NotImplementedError

    def observe(self, action: Action, reward: float, info: dict[str, Any]) -> None:
        arm = self.library.arm_of(action)
        if arm is None:
            raise ValueError(
                f"agent {self.name!r} observed an action that is not an arm of its library:"
                f" {action!r:.200}"
            )
        i = self.library.index(arm)
        self.pulls[i] += 1
        self.reward_sums[i] += float(reward)
        self.t += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "library": self.library.to_dict(),
            "rng": self.rng.bit_generator.state,
            "pulls": list(self.pulls),
            "reward_sums": list(self.reward_sums),
            "t": self.t,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != self.kind:
            raise ValueError(f"state of a {state.get('kind')!r} agent given to a {self.kind!r}")
        if state.get("library") != self.library.to_dict():
            raise ValueError(
                f"the saved state is for another library: {state.get('library')} !="
                f" {self.library.to_dict()}"
            )
        self.rng.bit_generator.state = state["rng"]
        self.pulls = [int(c) for c in state["pulls"]]
        self.reward_sums = [float(s) for s in state["reward_sums"]]
        self.t = int(state["t"])

    # -- statistics -------------------------------------------------------------------
    def mean(self, i: int) -> float:
        return self.reward_sums[i] / self.pulls[i] if self.pulls[i] else float("nan")

    def best_arm(self) -> Arm | None:
        """The evaluated arm with the highest mean reward (lowest index on ties)."""
        played = [i for i, c in enumerate(self.pulls) if c]
        if not played:
            return None
        return self.library.arm(max(played, key=lambda i: (self.mean(i), -i)))


class UCB1Agent(LibraryAgent):
    """UCB1 (Auer, Cesa-Bianchi & Fischer, 2002): plays every arm once, in a seeded random
    order, then the arm maximising ``mean + c * sqrt(ln t / n)``.

    Ties go to the arm earliest in that random order, so no generator draw is spent on them.
    Rewards are accuracies in [0, 1] (or a small negative penalty), the range UCB1's
    ``c = sqrt(2)`` is made for.
    """

    kind = "ucb1"

    def __init__(self, library: TemplateLibrary | None = None, c: float = math.sqrt(2), *,
                 seed: int | None = 0, name: str | None = None) -> None:
        super().__init__(library, seed=seed, name=name)
        if not (isinstance(c, (int, float)) and c >= 0 and math.isfinite(c)):
            raise ConfigError(f"c (the exploration weight) must be a number >= 0, got {c!r}")
        self.c = float(c)
        self.order: list[int] = [int(i) for i in self.rng.permutation(self.library.n_arms)]

    def propose(self, pending: Sequence[int] | None = None) -> int:
        """The next arm; ``pending`` counts arms proposed in this batch but not yet observed.

        A pending proposal counts as a pull whose reward is the arm's mean so far (the
        mean over all arms for an arm never observed): its bonus shrinks and the next
        proposal of a batch moves on, instead of every proposal of a batch repeating the
        same arm until results return (batched UCB with "believed" outcomes).
        """
        pending = pending or [0] * self.library.n_arms
        counts = [p + q for p, q in zip(self.pulls, pending, strict=True)]
        for i in self.order:
            if counts[i] == 0:
                return i
        log_t = math.log(self.t + sum(pending))
        overall = sum(self.reward_sums) / self.t if self.t else 0.0

        def score(i: int) -> float:
            mean = self.mean(i) if self.pulls[i] else overall
            return mean + self.c * math.sqrt(log_t / counts[i])

        return max(self.order, key=score)  # max keeps the first of equal scores

    def act_batch(self, observations: Sequence[dict[str, Any]],
                  infos: Sequence[dict[str, Any]]) -> list[Action]:
        pending = [0] * self.library.n_arms
        actions: list[Action] = []
        for _ in observations:
            i = self.propose(pending)
            pending[i] += 1
            actions.append(self.library.template(self.library.arm(i)))
        return actions

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "c": self.c, "order": list(self.order)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.c = float(state["c"])
        self.order = [int(i) for i in state["order"]]


class ThompsonAgent(LibraryAgent):
    """Thompson sampling with an independent Gaussian model per arm.

    Why Gaussian and not Beta-Bernoulli: a reward is a *mean* accuracy over several
    questions (or a token F1), not one coin flip, and an invalid action earns a negative
    penalty. A Beta posterior would need rewards clipped to [0, 1], which makes a template
    the env cannot even evaluate look as good as one that taught nothing. The Gaussian model
    keeps the penalty below zero and needs no clipping.

    Model: reward ~ N(theta, noise_std^2) with theta ~ N(prior_mean, prior_std^2); the
    posterior of theta is Gaussian in closed form (known-variance conjugate update). Each
    proposal samples every arm's theta and plays the argmax. The default noise (0.25) is
    about the spread of an accuracy over 6 questions (at most 0.5 / sqrt(6) = 0.2) plus the
    sampling noise of the completion.
    """

    kind = "thompson"

    def __init__(self, library: TemplateLibrary | None = None, *, prior_mean: float = 0.5,
                 prior_std: float = 0.5, noise_std: float = 0.25, seed: int | None = 0,
                 name: str | None = None) -> None:
        super().__init__(library, seed=seed, name=name)
        for key, value in (("prior_std", prior_std), ("noise_std", noise_std)):
            if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
                raise ConfigError(f"{key} must be a number > 0, got {value!r}")
        if not (isinstance(prior_mean, (int, float)) and math.isfinite(prior_mean)):
            raise ConfigError(f"prior_mean must be a finite number, got {prior_mean!r}")
        self.prior_mean = float(prior_mean)
        self.prior_std = float(prior_std)
        self.noise_std = float(noise_std)

    def posterior(self) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation of every arm's expected reward."""
        counts = np.asarray(self.pulls, dtype=np.float64)  # (A,)
        sums = np.asarray(self.reward_sums, dtype=np.float64)  # (A,)
        prior_prec = 1.0 / self.prior_std**2
        noise_prec = 1.0 / self.noise_std**2
        precision = prior_prec + counts * noise_prec  # (A,)
        mean = (prior_prec * self.prior_mean + noise_prec * sums) / precision  # (A,)
        return mean, 1.0 / np.sqrt(precision)

    def propose(self) -> int:
        mean, std = self.posterior()
        return int(np.argmax(self.rng.normal(mean, std)))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "prior_mean": self.prior_mean,
                "prior_std": self.prior_std, "noise_std": self.noise_std}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.prior_mean = float(state["prior_mean"])
        self.prior_std = float(state["prior_std"])
        self.noise_std = float(state["noise_std"])


class EvolutionAgent(LibraryAgent):
    """A steady-state (mu + 1) evolution strategy over arms.

    Until ``population`` arms have been evaluated, it proposes unevaluated arms at random.
    Then the elite is the ``population`` evaluated arms with the highest mean reward
    (parents and children compete alike, the "plus" selection). Each proposal is, with
    probability ``mutation_rate``, a child: a uniformly chosen elite arm with one coordinate
    changed to another value; otherwise the best elite arm is evaluated again. Re-evaluation
    matters because rewards are noisy (the same frozen model varies by ~1 point across runs,
    SEAL sec. 4): without it, one lucky draw holds an elite slot forever.
    """

    kind = "evolution"

    def __init__(self, library: TemplateLibrary | None = None, population: int = 4,
                 mutation_rate: float = 0.5, *, seed: int | None = 0,
                 name: str | None = None) -> None:
        super().__init__(library, seed=seed, name=name)
        if isinstance(population, bool) or not isinstance(population, int) or population < 1:
            raise ConfigError(f"population must be a whole number >= 1, got {population!r}")
        if not (isinstance(mutation_rate, (int, float)) and 0.0 <= mutation_rate <= 1.0):
            raise ConfigError(f"mutation_rate must be between 0 and 1, got {mutation_rate!r}")
        self.population = population
        self.mutation_rate = float(mutation_rate)

    def elite(self) -> list[int]:
        """Flat indices of the elite, best first (ties: lowest index)."""
        played = [i for i, c in enumerate(self.pulls) if c]
        return sorted(played, key=lambda i: (-self.mean(i), i))[: self.population]

    def propose(self) -> int:
        played = sum(1 for c in self.pulls if c)
        unplayed = [i for i, c in enumerate(self.pulls) if c == 0]
        if played < self.population and unplayed:
            return unplayed[int(self.rng.integers(len(unplayed)))]
        elite = self.elite()
        if self.rng.random() >= self.mutation_rate:
            return elite[0]
        parent = elite[int(self.rng.integers(len(elite)))]
        return self.library.index(self.mutate(self.library.arm(parent)))

    def mutate(self, arm: Arm) -> Arm:
        """Change one coordinate (among axes with 2+ choices) to a different value."""
        free = [k for k, d in enumerate(self.library.dims) if d > 1]
        if not free:
            return arm  # a one-arm library: nothing to mutate
        k = free[int(self.rng.integers(len(free)))]
        new = int(self.rng.integers(self.library.dims[k] - 1))
        if new >= arm[k]:
            new += 1  # skip the current value: a child differs from its parent
        return (*arm[:k], new, *arm[k + 1:])

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "population": self.population,
                "mutation_rate": self.mutation_rate}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.population = int(state["population"])
        self.mutation_rate = float(state["mutation_rate"])


# -- config factories (registered in selfedit.agents.registry) --------------------------
# The operator choice (issue 16): ``operators: [lora, full, svd]`` adds an update-operator
# axis; the other four keys replace that axis's per-operator tables (TemplateLibrary).
_OPERATOR_KEYS = ("operators", "full_learning_rates", "full_last_layers",
                  "svd_learning_rates", "svd_components")
_LIBRARY_KEYS = ("instructions", "ranks", "learning_rates", "epochs", *_OPERATOR_KEYS)


def _library_from_spec(spec: dict[str, Any]) -> TemplateLibrary:
    kwargs = {k: spec[k] for k in _LIBRARY_KEYS if k in spec}
    instructions = kwargs.pop("instructions", DEFAULT_INSTRUCTIONS)
    if not isinstance(instructions, (list, tuple)):
        raise ConfigError(f"instructions must be a list of baseline names, got {instructions!r}")
    try:
        return TemplateLibrary.from_baselines(instructions, **kwargs)
    except ConfigError as err:
        # Name the config key the user wrote, not the library's field.
        message = str(err)
        for field_name, key in (("lora_ranks:", "ranks:"), ("num_epochs:", "epochs:")):
            if message.startswith(field_name):
                message = key + message[len(field_name):]
        raise ConfigError(message) from None


def _build(cls: type[LibraryAgent], spec: dict[str, Any], params: Sequence[str]) -> LibraryAgent:
    name = spec.get("name", cls.kind)
    try:
        kwargs = {k: spec[k] for k in params if k in spec}
        seed = spec.get("seed", 0)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ConfigError(f"seed must be a whole number, got {seed!r}")
        return cls(_library_from_spec(spec), seed=seed, name=name, **kwargs)
    except ConfigError as err:
        raise ConfigError(f"agent {name}: {err}") from None


def ucb1_from_spec(spec: dict[str, Any], env: Any = None) -> UCB1Agent:
    """``{type: ucb1, instructions: [...], ranks: [...], learning_rates: [...], epochs: [...],
    c: 1.41, seed: 0}``; ``operators: [lora, svd]`` (and the per-operator tables
    ``full_learning_rates``, ``full_last_layers``, ``svd_learning_rates``,
    ``svd_components``) makes the update operator an axis of the library."""
    return _build(UCB1Agent, spec, ["c"])  # type: ignore[return-value]


def thompson_from_spec(spec: dict[str, Any], env: Any = None) -> ThompsonAgent:
    """``{type: thompson, ..., prior_mean: 0.5, prior_std: 0.5, noise_std: 0.25, seed: 0}``."""
    return _build(ThompsonAgent, spec,  # type: ignore[return-value]
                  ["prior_mean", "prior_std", "noise_std"])


def evolution_from_spec(spec: dict[str, Any], env: Any = None) -> EvolutionAgent:
    """``{type: evolution, ..., population: 4, mutation_rate: 0.5, seed: 0}``."""
    return _build(EvolutionAgent, spec,  # type: ignore[return-value]
                  ["population", "mutation_rate"])


UCB1_KEYS = {*_LIBRARY_KEYS, "seed", "c"}
THOMPSON_KEYS = {*_LIBRARY_KEYS, "seed", "prior_mean", "prior_std", "noise_std"}
EVOLUTION_KEYS = {*_LIBRARY_KEYS, "seed", "population", "mutation_rate"}
