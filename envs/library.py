"""The template spaces agents and wrappers choose from: human baselines and a discrete library.

Kept in ``envs/`` so that the env's wrappers (the stable-baselines3 adapter) and the agents
share them without ``envs`` importing ``agents`` (issue 14).

* :data:`HUMAN_BASELINES`: the strategies the papers compare (and EntiGraph), in the
  project's words.
  Each uses SEAL's hyperparameters (rank 32, alpha 64, lr 1e-3, 10 epochs; arXiv
  2506.10943 sec. 4) unless overridden; the synthetic-data templates also train on the
  passage itself, as SEAL's "passage + synthetic data" rows do.
* :class:`TemplateLibrary`: the template space of the papers (free-text instruction +
  continuous hyperparameters) discretised into a few instructions times a few choices per
  hyperparameter; each combination is an *arm*, a tuple of indices, one per axis. With
  ``operators`` naming more than LoRA, the update operator is an axis too (issue 16).

>>> lib = TemplateLibrary.from_baselines(["rewrite", "passage"], ranks=[8, 16],
...                                      learning_rates=[1e-3], epochs=[3])
>>> lib.dims, lib.n_arms
((2, 2, 1, 1), 4)
>>> lib.template((1, 1, 0, 0)).name
'passage|r16|lr0.001|ep3'
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from selfedit.envs.config import ConfigError
from selfedit.envs.templates import (
    HP_RANGES,
    OPERATOR_NAMES,
    FullHyperparameters,
    Hyperparameters,
    OperatorHyperparameters,
    SVDHyperparameters,
    Template,
    TemplateError,
    parse_template,
)

__all__ = ["DEFAULT_INSTRUCTIONS", "HUMAN_BASELINES", "Arm", "ArmGrid", "Instruction",
           "TemplateLibrary", "human_baseline"]

_SEAL = Hyperparameters()

HUMAN_BASELINES: dict[str, Template] = {
    "implications": Template(
        "Read the passage and write down what follows from it: each fact it states and the"
        " consequences those facts imply. Make every implication one complete sentence that"
        " names its subject, so it makes sense on its own.",
        _SEAL,
        include_passage=True,
        name="implications",
    ),
    "rewrite": Template(
        "Rewrite the passage in your own words, then again in a different order, keeping every"
        " name, number and date exactly as written. Separate the rewrites with a blank line.",
        _SEAL,
        include_passage=True,
        name="rewrite",
    ),
    "self_qa": Template(
        "Write question and answer pairs that together cover every fact in the passage. Put"
        " each pair on one line as 'Question: ... Answer: ...' and name the passage's subject"
        " in every question.",
        _SEAL,
        include_passage=True,
        name="self_qa",
    ),
    # EntiGraph (synthetic continued pretraining, Yang et al. 2024, arXiv 2409.07431; SEAL's
    # continued-pretraining baseline): name the passage's entities, then write about how
    # pairs of them relate. One instruction asks for both steps; the entity lines are short
    # and the parser drops them, so the relation paragraphs are what trains (issue 17).
    "entigraph": Template(
        "First list the important entities of the passage (people, places, objects, dates,"
        " numbers), one per line. Then, for pairs of those entities, write a short paragraph"
        " on how the two are related according to the passage, naming both entities and"
        " keeping every name, number and date exactly as written. Separate the paragraphs"
        " with a blank line.",
        _SEAL,
        include_passage=True,
        name="entigraph",
    ),
    "passage": Template("", _SEAL, include_passage=True, name="passage"),
    "no_training": Template(
        "", Hyperparameters(num_epochs=0), include_passage=False, name="no_training"
    ),
}


def human_baseline(name: str, **hyperparameters: Any) -> Template:
    """A human baseline by name, optionally with some hyperparameters replaced."""
    if name not in HUMAN_BASELINES:
        raise KeyError(f"unknown baseline {name!r}; choose from {', '.join(HUMAN_BASELINES)}")
    base = HUMAN_BASELINES[name]
    if not hyperparameters:
        return base
    merged = {**base.hyperparameters.to_dict(), **hyperparameters}
    hp, report = Hyperparameters.from_dict(merged)
    if report["ignored_keys"]:
        raise TemplateError(f"unknown hyperparameters {report['ignored_keys']}")
    return Template(base.data_creation_instruction, hp, base.include_passage, base.name)


Arm = tuple[int, ...]  # one index per axis of a TemplateLibrary

# The instructions a default library searches over: the four *training* human baselines
# (no_training cannot take the library's epoch choices: it has nothing to train on).
DEFAULT_INSTRUCTIONS = ("implications", "rewrite", "self_qa", "passage")


@dataclass(frozen=True)
class Instruction:
    """One instruction choice of a library: what the self model is asked to write."""

    name: str
    data_creation_instruction: str
    include_passage: bool = True

    @classmethod
    def from_baseline(cls, name: str) -> Instruction:
        """The instruction of a human baseline (``selfedit.agents.HUMAN_BASELINES``)."""
        if name not in HUMAN_BASELINES:
            raise ConfigError(
                f"unknown instruction {name!r}; choose baseline names from"
                f" {', '.join(DEFAULT_INSTRUCTIONS)}"
            )
        base = HUMAN_BASELINES[name]
        return cls(name, base.data_creation_instruction, base.include_passage)


def _default_instructions() -> list[Instruction]:
    return [Instruction.from_baseline(n) for n in DEFAULT_INSTRUCTIONS]


class ArmGrid:
    """Arms of a grid library: one index per axis, flattened in mixed radix.

    What :class:`TemplateLibrary` and the ARC recipe library share; a subclass gives
    ``axes`` (names) and ``dims`` (choices per axis).
    """

    axes: tuple[str, ...]

    @property
    def dims(self) -> tuple[int, ...]:
        raise NotImplementedError

    @property
    def n_arms(self) -> int:
        return math.prod(self.dims)

    def arms(self) -> Iterator[Arm]:
        """Every arm, in the order of :meth:`index` (last axis fastest)."""
        return itertools.product(*(range(d) for d in self.dims))

    def check_arm(self, arm: Sequence[int]) -> Arm:
        """``arm`` as a tuple of ints, or a ValueError that says what an arm is."""
        values = tuple(int(i) for i in arm)
        if len(values) != len(self.dims) or any(
            not 0 <= i < d for i, d in zip(values, self.dims, strict=True)
        ):
            raise ValueError(f"an arm is one index per axis {self.axes} below {self.dims},"
                             f" got {tuple(arm)}")
        return values

    def index(self, arm: Sequence[int]) -> int:
        """Flat index of an arm (mixed radix, last axis fastest; ``numpy``'s C order)."""
        flat = 0
        for i, d in zip(self.check_arm(arm), self.dims, strict=True):
            flat = flat * d + i
        return flat

    def arm(self, index: int) -> Arm:
        """The arm at a flat index (inverse of :meth:`index`)."""
        index = int(index)
        if not 0 <= index < self.n_arms:
            raise ValueError(f"arm index must be in [0, {self.n_arms}), got {index}")
        out = []
        for d in reversed(self.dims):
            index, i = divmod(index, d)
            out.append(i)
        return tuple(reversed(out))


@dataclass
class TemplateLibrary(ArmGrid):
    """A discrete template space: instructions times hyperparameter choices.

    An arm is a tuple of indices, one per axis of :attr:`axes`: instruction, ``lora_rank``,
    ``learning_rate``, ``num_epochs`` and, only when more than one value is given,
    ``gradient_accumulation_steps`` (so the default arm, and the wrapper's
    ``MultiDiscrete``, has the four axes an agent actually chooses). ``lora_alpha`` follows
    the rank (``lora_alpha_ratio * rank``, SEAL's alpha = 2 r) and the dropout is fixed.

    The operator axis (issue 16, off by default): with ``operators`` naming more than
    ``["lora"]``, the last axis is ``update_operator`` and the rank axis is called
    ``capacity``. Index i of ``capacity`` and ``learning_rate`` means the i-th value of the
    chosen operator's own table: ``lora_ranks`` / ``learning_rates`` for LoRA,
    ``full_last_layers`` / ``full_learning_rates`` for full fine-tuning,
    ``svd_components`` / ``svd_learning_rates`` for singular values (each table as long as
    its LoRA counterpart; defaults spread over each operator's sensible range). Arms name
    their operator explicitly, so the env's ``operators`` must allow every one of them.

    Args:
        instructions: the instruction choices (default: the four training human baselines).
        lora_ranks: LoRA rank choices.
        learning_rates: learning-rate choices.
        num_epochs: epoch choices.
        gradient_accumulation_steps: accumulation choices (an axis only with 2+ values).
        lora_alpha_ratio: ``lora_alpha = lora_alpha_ratio * lora_rank``.
        lora_dropout: dropout of every arm.
        operators: update operator choices (``lora``, ``full``, ``svd``).
        full_learning_rates, full_last_layers: full fine-tuning's tables (None: defaults).
        svd_learning_rates, svd_components: the singular-value operator's (None: defaults).

    >>> lib = TemplateLibrary()
    >>> lib.axes
    ('instruction', 'lora_rank', 'learning_rate', 'num_epochs')
    >>> lib.dims, lib.n_arms
    ((4, 4, 4, 3), 192)
    >>> t = lib.template((3, 1, 2, 0))
    >>> t.name, t.hyperparameters.lora_rank, t.hyperparameters.lora_alpha, t.include_passage
    ('passage|r16|lr0.001|ep3', 16, 32.0, True)
    >>> lib.arm_of(t.to_json())
    (3, 1, 2, 0)
    >>> TemplateLibrary(lora_ranks=[8, 512])
    Traceback (most recent call last):
    ...
    selfedit.envs.config.ConfigError: lora_ranks: lora_rank must be between 1 and 256, got 512
    >>> ops = TemplateLibrary(operators=["lora", "svd"])
    >>> ops.axes, ops.dims
    (('instruction', 'capacity', 'learning_rate', 'num_epochs', 'update_operator'), (4, 4, 4, 3, 2))
    >>> t = ops.template((3, 1, 2, 0, 1))
    >>> t.name, t.update_operator, t.hyperparameters.learning_rate
    ('passage|svd|k64|lr0.01|ep3', 'svd', 0.01)
    >>> ops.arm_of(t.to_json())
    (3, 1, 2, 0, 1)
    """

    instructions: list[Instruction] = field(default_factory=_default_instructions)
    lora_ranks: list[int] = field(default_factory=lambda: [8, 16, 32, 64])
    learning_rates: list[float] = field(default_factory=lambda: [1e-4, 3e-4, 1e-3, 3e-3])
    num_epochs: list[int] = field(default_factory=lambda: [3, 5, 10])
    gradient_accumulation_steps: list[int] = field(default_factory=lambda: [1])
    lora_alpha_ratio: float = 2.0
    lora_dropout: float = 0.0
    operators: list[str] = field(default_factory=lambda: ["lora"])
    full_learning_rates: list[float] | None = None
    full_last_layers: list[int] | None = None
    svd_learning_rates: list[float] | None = None
    svd_components: list[int] | None = None

    def __post_init__(self) -> None:
        self.instructions = [self._check_instruction(x) for x in self.instructions]
        if not self.instructions:
            raise ConfigError("instructions: give at least one instruction")
        names = [x.name for x in self.instructions]
        if len(set(names)) != len(names):
            raise ConfigError(f"instructions: names must be unique, got {names}")
        self.lora_ranks = _check_choices("lora_ranks", "lora_rank", self.lora_ranks)
        self.learning_rates = _check_choices(
            "learning_rates", "learning_rate", self.learning_rates
        )
        self.num_epochs = _check_choices("num_epochs", "num_epochs", self.num_epochs)
        self.gradient_accumulation_steps = _check_choices(
            "gradient_accumulation_steps",
            "gradient_accumulation_steps",
            self.gradient_accumulation_steps,
        )
        for rank in self.lora_ranks:
            alpha = self.lora_alpha_ratio * rank
            low, high = HP_RANGES["lora_alpha"]
            if not low <= alpha <= high:
                raise ConfigError(
                    f"lora_alpha_ratio: lora_alpha = {self.lora_alpha_ratio} x rank {rank} ="
                    f" {alpha} is outside [{low}, {high}]; lower the ratio or the rank"
                )
        _check_choices("lora_dropout", "lora_dropout", [self.lora_dropout])
        self._check_operators()
        if any(e > 0 for e in self.num_epochs):
            for x in self.instructions:
                if not x.data_creation_instruction.strip() and not x.include_passage:
                    raise ConfigError(
                        f"instruction {x.name!r} is empty and does not include the passage:"
                        " nothing to train on; drop it or set include_passage"
                    )

    def _check_operators(self) -> None:
        ops = self.operators
        if isinstance(ops, str) or not isinstance(ops, Sequence) or not ops:
            raise ConfigError(f"operators must be a list of operator names, got {ops!r}")
        for name in ops:
            if name not in OPERATOR_NAMES:
                raise ConfigError(f"operators: unknown operator {name!r}; choose from"
                                  f" {', '.join(OPERATOR_NAMES)}")
        if len(set(ops)) != len(ops):
            raise ConfigError(f"operators: names must be distinct, got {list(ops)}")
        self.operators = list(ops)
        n_rates, n_caps = len(self.learning_rates), len(self.lora_ranks)
        # Default tables: as many values as LoRA's, spread geometrically over each operator's
        # sensible range on the 135M model (full: lr 1e-5..3e-4, the last 1, 2, 4, ... blocks
        # then all of them; svd: lr 3e-3..3e-2, the leading 16, 64, 256, ... singular values
        # then all; FullHyperparameters and SVDHyperparameters say what was measured).
        tables = {
            "full_learning_rates": ("learning_rate", FullHyperparameters,
                                    _spread(1e-5, 3e-4, n_rates, 1e-4)),
            "full_last_layers": ("last_layers", FullHyperparameters,
                                 [2**i for i in range(n_caps - 1)] + [0]),
            "svd_learning_rates": ("learning_rate", SVDHyperparameters,
                                   _spread(3e-3, 3e-2, n_rates, 2e-2)),
            "svd_components": ("svd_components", SVDHyperparameters,
                               [16 * 4**i for i in range(n_caps - 1)] + [0]),
        }
        for label, (key, cls, default) in tables.items():
            values = getattr(self, label)
            if values is None:
                values = default
            values = _check_choices(label, key, values, cls)
            want = n_rates if key == "learning_rate" else n_caps
            if len(values) != want:
                other = "learning_rates" if key == "learning_rate" else "lora_ranks"
                raise ConfigError(f"{label} must have {want} values, one per choice of"
                                  f" {other}; got {len(values)}")
            setattr(self, label, values)

    @property
    def operator_axis(self) -> bool:
        """Whether the update operator is an axis (``operators`` names more than LoRA)."""
        return self.operators != ["lora"]

    @staticmethod
    def _check_instruction(x: Any) -> Instruction:
        if isinstance(x, str):
            return Instruction.from_baseline(x)
        if isinstance(x, dict):
            try:
                return Instruction(**x)
            except TypeError as err:
                raise ConfigError(
                    f"instructions: an entry takes name, data_creation_instruction and"
                    f" include_passage ({err})"
                ) from None
        if not isinstance(x, Instruction):
            raise ConfigError(
                f"instructions: expected a baseline name or an Instruction, got {x!r}"
            )
        return x

    @classmethod
    def from_baselines(
        cls,
        instructions: Sequence[str] = DEFAULT_INSTRUCTIONS,
        *,
        ranks: Sequence[int] | None = None,
        learning_rates: Sequence[float] | None = None,
        epochs: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> TemplateLibrary:
        """A library over human-baseline instructions (by name); ``None`` = the default."""
        if isinstance(instructions, str):
            raise ConfigError(f"instructions must be a list of names, got {instructions!r}")
        extra: dict[str, Any] = dict(kwargs)
        for key, value in (("lora_ranks", ranks), ("learning_rates", learning_rates),
                           ("num_epochs", epochs)):
            if value is not None:
                extra[key] = list(value) if isinstance(value, (list, tuple)) else value
        return cls([Instruction.from_baseline(n) for n in instructions], **extra)

    # -- the arm space ----------------------------------------------------------------
    @property
    def axes(self) -> tuple[str, ...]:
        capacity = "capacity" if self.operator_axis else "lora_rank"
        axes: tuple[str, ...] = ("instruction", capacity, "learning_rate", "num_epochs")
        if len(self.gradient_accumulation_steps) > 1:
            axes = (*axes, "gradient_accumulation_steps")
        if self.operator_axis:
            axes = (*axes, "update_operator")
        return axes

    def choices(self, axis: str, operator: str = "lora") -> list[Any]:
        """The values along one axis (``capacity`` and ``learning_rate``: of ``operator``)."""
        capacity = {"lora": self.lora_ranks, "full": self.full_last_layers,
                    "svd": self.svd_components}
        rates = {"lora": self.learning_rates, "full": self.full_learning_rates,
                 "svd": self.svd_learning_rates}
        table: dict[str, list[Any]] = {
            "instruction": self.instructions,
            "lora_rank": self.lora_ranks,
            "capacity": capacity[operator],  # type: ignore[dict-item]
            "learning_rate": rates[operator],  # type: ignore[dict-item]
            "num_epochs": self.num_epochs,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "update_operator": self.operators,
        }
        return table[axis]

    @property
    def dims(self) -> tuple[int, ...]:
        return tuple(len(self.choices(a)) for a in self.axes)

    def template(self, arm: Sequence[int]) -> Template:
        """The template an arm stands for."""
        arm = self.check_arm(arm)
        index = dict(zip(self.axes, arm, strict=True))
        operator = self.operators[index["update_operator"]] if self.operator_axis else "lora"
        picked = {a: self.choices(a, operator)[i] for a, i in index.items()}
        instruction: Instruction = picked["instruction"]
        capacity = picked["capacity" if self.operator_axis else "lora_rank"]
        accumulation = picked.get("gradient_accumulation_steps",
                                   self.gradient_accumulation_steps[0])
        common = {"learning_rate": picked["learning_rate"], "num_epochs": picked["num_epochs"],
                  "gradient_accumulation_steps": accumulation}
        hp: OperatorHyperparameters
        if operator == "full":
            hp = FullHyperparameters(last_layers=capacity, **common)
            label = f"full|last{capacity or 'all'}"
        elif operator == "svd":
            hp = SVDHyperparameters(svd_components=capacity, **common)
            label = f"svd|k{capacity or 'all'}"
        else:
            hp = Hyperparameters(lora_rank=capacity,
                                 lora_alpha=float(self.lora_alpha_ratio * capacity),
                                 lora_dropout=float(self.lora_dropout), **common)
            label = f"lora|r{capacity}" if self.operator_axis else f"r{capacity}"
        name = f"{instruction.name}|{label}|lr{hp.learning_rate:g}|ep{hp.num_epochs}"
        if "gradient_accumulation_steps" in picked:
            name += f"|ga{accumulation}"
        # Arms name their operator even without the axis: LoRA settings are LoRA's, whatever
        # the env's default_operator (and info["template"] equals the arm's template).
        return Template(instruction.data_creation_instruction, hp, instruction.include_passage,
                        name=name, update_operator=operator)

    def arm_of(self, action: Template | str | dict[str, Any]) -> Arm | None:
        """The arm an action (Template, dict or JSON) stands for, or None if none does."""
        try:
            template, _ = parse_template(action)  # type: ignore[arg-type]
        except TemplateError:
            return None
        operator = template.update_operator or "lora"
        if operator not in self.operators:
            return None
        hp = template.hyperparameters
        found: dict[str, int] = {}
        if self.operator_axis:
            found["update_operator"] = self.operators.index(operator)
        for i, x in enumerate(self.instructions):
            if (x.data_creation_instruction == template.data_creation_instruction
                    and x.include_passage == template.include_passage):
                found["instruction"] = i
                break
        capacity_key = {"lora": "lora_rank", "full": "last_layers",
                        "svd": "svd_components"}[operator]
        for axis in self.axes[1:]:
            if axis == "update_operator":
                continue
            value = getattr(hp, capacity_key if axis in ("capacity", "lora_rank") else axis)
            for i, choice in enumerate(self.choices(axis, operator)):
                if math.isclose(value, choice, rel_tol=1e-9):
                    found[axis] = i
                    break
        if len(found) != len(self.axes):
            return None
        arm = tuple(found[a] for a in self.axes)
        # The fixed settings must match too: same rank, other alpha is another template.
        expected = self.template(arm).hyperparameters
        if hp.gradient_accumulation_steps != expected.gradient_accumulation_steps:
            return None
        if isinstance(hp, Hyperparameters) and not (
                math.isclose(hp.lora_alpha, expected.lora_alpha, rel_tol=1e-9)  # type: ignore[attr-defined]
                and math.isclose(hp.lora_dropout, expected.lora_dropout, abs_tol=1e-12)):  # type: ignore[attr-defined]
            return None
        return arm

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON description (stored in agent states to catch a changed library)."""
        return {
            "instructions": [x.name for x in self.instructions],
            "lora_ranks": list(self.lora_ranks),
            "learning_rates": list(self.learning_rates),
            "num_epochs": list(self.num_epochs),
            "gradient_accumulation_steps": list(self.gradient_accumulation_steps),
            "lora_alpha_ratio": self.lora_alpha_ratio,
            "lora_dropout": self.lora_dropout,
            # Only with the operator axis: states saved before it existed still match.
            **({"operators": list(self.operators),
                "full_learning_rates": list(self.full_learning_rates or []),
                "full_last_layers": list(self.full_last_layers or []),
                "svd_learning_rates": list(self.svd_learning_rates or []),
                "svd_components": list(self.svd_components or [])}
               if self.operator_axis else {}),
        }


def _spread(low: float, high: float, n: int, single: float) -> list[float]:
    """``n`` values from ``low`` to ``high`` on a log scale, rounded to few digits.

    >>> _spread(1e-6, 3e-5, 4, 1e-5), _spread(1e-3, 3e-2, 1, 1e-2)
    ([1e-06, 3e-06, 1e-05, 3e-05], [0.01])
    """
    if n <= 1:
        return [single]
    raw = [low * (high / low) ** (i / (n - 1)) for i in range(n)]
    for digits in (1, 2, 6):  # the fewest digits that keep the values distinct
        values = [float(f"{v:.{digits - 1}e}") for v in raw]
        if len(set(values)) == n:
            return values
    return raw


def _check_choices(label: str, key: str, values: Any,
                   cls: type[OperatorHyperparameters] = Hyperparameters) -> list[Any]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ConfigError(f"{label} must be a list of numbers, got {values!r}")
    if not values:
        raise ConfigError(f"{label}: give at least one value")
    checked = []
    for value in values:
        try:
            # The operator's own validation: the same ranges and messages as the env's.
            hp, _ = cls.from_dict({key: value})
        except TemplateError as err:
            raise ConfigError(f"{label}: {err}") from None
        checked.append(getattr(hp, key))
    if len(set(checked)) != len(checked):
        raise ConfigError(f"{label}: values must be distinct, got {list(values)}")
    return checked
