"""Self-edit templates: the env's action.

A template is what a template-writing policy emits: a passage-agnostic *data-creation
instruction* (the env's model completes it on each passage to produce training sequences)
plus the LoRA hyperparameters used to train on those sequences. On the wire it is JSON::

    {"data_creation_instruction": "List the implications of the passage ...",
     "hyperparameters": {"lora_rank": 32, "lora_alpha": 64, "lora_dropout": 0.0,
                         "learning_rate": 0.001, "num_epochs": 10,
                         "gradient_accumulation_steps": 1},
     "include_passage": true}

A template may name its update operator (issue 16): ``"update_operator": "lora"`` (the
default), ``"full"`` (full fine-tuning) or ``"svd"`` (singular-value scales, Transformer²),
each with its own hyperparameters (:class:`Hyperparameters`, :class:`FullHyperparameters`,
:class:`SVDHyperparameters`) validated against its own ranges.

LLMs wrap JSON in code fences, ``<think>`` blocks and prose; :func:`parse_template` digs the
object out. Every problem raises :class:`TemplateError` with a message that says what to fix;
the env turns it into ``info["error"]`` and a penalty reward.

Every action form -- JSON text, a dict, a :class:`Template` (even one altered after it was
built) -- goes through the same validation (:meth:`Template.from_dict`), so no form can
bypass the ranges or the ``hyperparameter_policy`` (issue 13, item 2).

Parsing is bounded (issue 13, item 1): text longer than :data:`MAX_ACTION_CHARS` is
rejected before any work, the JSON search is one linear scan over bracket runs and strings
that stops after :data:`MAX_SCAN_TOKENS` runs, only balanced spans nested at most
:data:`MAX_JSON_DEPTH` deep reach the decoder, and the decoder gets at most
:data:`MAX_DECODE_ATTEMPTS` tries and :data:`MAX_DECODE_CHARS` characters.
"""

from __future__ import annotations

import json
import math
import numbers
import re
from bisect import bisect_left
from collections.abc import Mapping
from dataclasses import dataclass, fields
from itertools import islice, repeat
from typing import Any, ClassVar, Literal, Self

import numpy as np

__all__ = [
    "FULL_HP_RANGES",
    "HP_RANGES",
    "MAX_ACTION_CHARS",
    "MAX_IGNORED_KEYS",
    "MAX_INSTRUCTION_CHARS",
    "MAX_JSON_DEPTH",
    "MAX_KEY_CHARS",
    "MAX_NAME_CHARS",
    "MAX_SCAN_TOKENS",
    "OPERATOR_HYPERPARAMETERS",
    "OPERATOR_NAMES",
    "SVD_HP_RANGES",
    "FullHyperparameters",
    "Hyperparameters",
    "OperatorHyperparameters",
    "SVDHyperparameters",
    "Template",
    "TemplateError",
    "extract_json",
    "hyperparameters_class",
    "operator_name",
    "parse_template",
    "strip_think",
]


class TemplateError(ValueError):
    """A template (or self-edit) that cannot be evaluated; the message says what to fix."""


# -- caps -------------------------------------------------------------------------------------
# Longest text an action (or a completion) may be. A self-edit holds up to max_sequences=64
# sequences that the env cuts to 16 x max_seq_tokens = 8192 characters each: 64 x 8192 =
# 524,288 characters of data, plus JSON quoting and escapes. 1,000,000 leaves that room and
# keeps the worst case of the linear scan below a second on a slow shared CPU (measured in
# tests/test_hostile_actions.py). Longer text is rejected before it is looked at.
MAX_ACTION_CHARS = 1_000_000
# Deepest JSON nesting handed to the decoder. Templates nest 2 levels, self-edits 3 (a list
# of {"question", "answer"} objects); Python's decoder recurses once per level and overflows
# near 1000 (or crashes the process if an agent raised the recursion limit).
MAX_JSON_DEPTH = 32
# Decoder work per extraction: tries, and characters handed to it in all. A hostile text can
# hold many balanced but invalid spans; these keep the failures cheap and finite.
MAX_DECODE_ATTEMPTS = 4096
MAX_DECODE_CHARS = 4 * MAX_ACTION_CHARS
# Tokens (a run of brackets with the text and strings before it) one extraction may scan. A
# template is ~6 tokens, a 64-sequence self-edit ~4, a list of 64 question/answer objects
# ~130. The cap bounds the Python loop for hostile text such as "[1," * 300_000 (measured
# 2-10 us a token on the shared 2-core CPU, so at most ~0.5 s under a load of 7), and still
# lets a prefix nested ~45,000 deep precede a template (bare runs like "[" * 10**6: any depth).
MAX_SCAN_TOKENS = 50_000
MAX_FENCES = 16  # fenced code blocks tried before the whole text
MAX_RESCANS = 4  # rescans after a stray quote in prose (see _Search)
MAX_INSTRUCTION_CHARS = 4000
# Log caps (issue 13, item 8): whatever an action carries into info and steps.jsonl.
MAX_NAME_CHARS = 200
MAX_IGNORED_KEYS = 32
MAX_KEY_CHARS = 64
_MAX_QUOTE_CHARS = 60  # a value quoted in an error message


# Valid ranges, inclusive. Outside them a template is rejected (or clamped with
# ``policy="clamp"``). Wide enough for every setting in the papers, narrow enough that one
# action cannot stall a run (rank 4096, 10^6 epochs) or be meaningless (lr 1e9).
HP_RANGES: dict[str, tuple[float, float]] = {
    "lora_rank": (1, 256),
    "lora_alpha": (0.5, 1024),
    "lora_dropout": (0.0, 0.9),
    "learning_rate": (1e-6, 1e-2),
    "num_epochs": (0, 50),  # 0 = no training: the adapted model is the base model
    "gradient_accumulation_steps": (1, 64),
}
# Full fine-tuning moves every trained weight, so its learning rates sit 10-100x below
# LoRA's (the 135M model recites at 3e-4 already; issue 16).
FULL_HP_RANGES: dict[str, tuple[float, float]] = {
    "learning_rate": (1e-7, 1e-3),
    "num_epochs": (0, 50),
    "gradient_accumulation_steps": (1, 64),
    "last_layers": (0, 1024),  # train the last N decoder blocks only; 0 = every parameter
}
# Singular-value fine-tuning (Transformer²) trains one scale per singular value, initialised
# to 1: a step of 1e-2 rescales a singular value by ~1%, so its rates sit above LoRA's.
SVD_HP_RANGES: dict[str, tuple[float, float]] = {
    "learning_rate": (1e-5, 0.5),
    "num_epochs": (0, 50),
    "gradient_accumulation_steps": (1, 64),
    "svd_components": (0, 65536),  # leading singular values adapted per matrix; 0 = all
}
_INT_KEYS = {"lora_rank", "num_epochs", "gradient_accumulation_steps", "last_layers",
             "svd_components"}
_POLICIES = ("reject", "clamp")


class OperatorHyperparameters:
    """What every update operator's hyperparameters share (issue 16).

    Each subclass is a frozen dataclass naming its operator (``OPERATOR``) and the valid range
    of every field (``RANGES``). All of them carry the three settings the training loop reads:
    ``learning_rate``, ``num_epochs`` (0 = no training) and ``gradient_accumulation_steps``.
    Built in Python, every field is checked against ``RANGES`` and stored as a plain ``int``
    or ``float`` (numpy scalars are accepted as the number they hold; booleans, text, NaN and
    infinity are not numbers here).
    """

    OPERATOR: ClassVar[str] = ""
    RANGES: ClassVar[dict[str, tuple[float, float]]] = {}

    learning_rate: float
    num_epochs: int
    gradient_accumulation_steps: int

    def __post_init__(self) -> None:
        # Objects built in Python get the same checks as JSON from an agent, and store the
        # checked value: np.int64(8) becomes 8, so equality, hashing and JSON logs agree.
        for key in self.RANGES:
            value = _check_number(key, getattr(self, key), "reject", {}, allow_text=False,
                                  ranges=self.RANGES)
            object.__setattr__(self, key, value)

    @classmethod
    def from_dict(
        cls, raw: Any, *, policy: Literal["reject", "clamp"] = "reject"
    ) -> tuple[Self, dict[str, Any]]:
        """Validate raw hyperparameters (a mapping, a hyperparameters object, or None).

        Returns the hyperparameters and a report with ``defaults_used`` (missing keys),
        ``ignored_keys`` (unknown keys: at most :data:`MAX_IGNORED_KEYS`, each cut to
        :data:`MAX_KEY_CHARS` characters), ``clamped`` (key -> (given, used)) and
        ``truncated`` (what the caps cut from the report, in words). Numbers written as text
        (``"1e-3"``, as LLMs often quote them) are read as numbers. Another operator's
        hyperparameters object is read as the mapping of its fields (keys this operator does
        not know are reported as ignored).

        >>> hp, report = Hyperparameters.from_dict({"lora_rank": 8, "epochs": 3})
        >>> hp.lora_rank, report["ignored_keys"]
        (8, ['epochs'])
        >>> try:
        ...     Hyperparameters.from_dict({"lora_rank": 4096})
        ... except TemplateError as err:
        ...     print(err)
        lora_rank must be between 1 and 256, got 4096
        >>> SVDHyperparameters.from_dict({"learning_rate": 0.05})[0].learning_rate
        0.05
        """
        hp, report, ignored = _hyperparameters(raw, policy, cls)
        _finish_report(report, ignored)
        return hp, report

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]


@dataclass(frozen=True)
class Hyperparameters(OperatorHyperparameters):
    """LoRA hyperparameters of a self-edit. Defaults are SEAL's (arXiv 2506.10943, sec. 4).

    Ranges: :data:`HP_RANGES`. The hyperparameters of the ``lora`` operator (the default).
    """

    OPERATOR = "lora"
    RANGES = HP_RANGES

    lora_rank: int = 32
    lora_alpha: float = 64.0
    lora_dropout: float = 0.0
    learning_rate: float = 1e-3
    num_epochs: int = 10
    gradient_accumulation_steps: int = 1


@dataclass(frozen=True)
class FullHyperparameters(OperatorHyperparameters):
    """Full fine-tuning hyperparameters (the ``full`` operator). Ranges: :data:`FULL_HP_RANGES`.

    ``last_layers``: train only the last N decoder blocks (with the final norm); 0 trains every
    parameter the operator may train (``EnvConfig.full_parameters``), embeddings included.
    Defaults measured on the embedded 135M model, passage alone (three passages; then
    results/operators_cpu_comparison): lr 1e-5 or 3e-5 barely moved the loss in 5 epochs,
    3e-4 for 10 epochs memorised the passage and recited it, 1e-4 for 10 epochs learned it.
    Larger models usually take smaller rates.

    >>> FullHyperparameters(learning_rate=3e-5, last_layers=4).to_dict()["last_layers"]
    4
    """

    OPERATOR = "full"
    RANGES = FULL_HP_RANGES

    learning_rate: float = 1e-4
    num_epochs: int = 10
    gradient_accumulation_steps: int = 1
    last_layers: int = 0


@dataclass(frozen=True)
class SVDHyperparameters(OperatorHyperparameters):
    """Singular-value hyperparameters (the ``svd`` operator, Transformer²). Ranges:
    :data:`SVD_HP_RANGES`.

    ``svd_components``: how many leading singular values of each target matrix get a
    trainable scale (0 = all of them); fewer is cheaper and changes the model less.
    Defaults measured on the embedded 135M model, passage alone: lr 1e-2 leaves the loss at
    ~0.2 after 10 epochs, 2e-2 to 3e-2 fit the passage, 0.1 breaks the model.
    """

    OPERATOR = "svd"
    RANGES = SVD_HP_RANGES

    learning_rate: float = 2e-2
    num_epochs: int = 10
    gradient_accumulation_steps: int = 1
    svd_components: int = 0


# Operator name -> its hyperparameters class; the names a template's "update_operator" takes.
OPERATOR_HYPERPARAMETERS: dict[str, type[OperatorHyperparameters]] = {
    "lora": Hyperparameters,
    "full": FullHyperparameters,
    "svd": SVDHyperparameters,
}
OPERATOR_NAMES: tuple[str, ...] = tuple(OPERATOR_HYPERPARAMETERS)


def hyperparameters_class(operator: str | None) -> type[OperatorHyperparameters]:
    """The hyperparameters class of an operator name (None: LoRA's, the default).

    >>> hyperparameters_class("svd").__name__
    'SVDHyperparameters'
    """
    if operator is None:
        return Hyperparameters
    try:
        return OPERATOR_HYPERPARAMETERS[operator]
    except KeyError:
        raise TemplateError(
            f"update_operator must be one of {', '.join(OPERATOR_NAMES)}, got {_quote(operator)}"
        ) from None


def _hyperparameters(
    raw: Any, policy: str, cls: type[OperatorHyperparameters] = Hyperparameters
) -> tuple[Any, dict[str, Any], _KeyList]:
    if policy not in _POLICIES:
        raise ValueError(f"policy must be 'reject' or 'clamp', got {_quote(policy)}")
    if raw is None:
        raw = {}
    elif isinstance(raw, OperatorHyperparameters):
        # Re-validated from its fields: an object altered after construction (for example
        # with object.__setattr__) meets the same checks and policy as JSON.
        raw = {f.name: getattr(raw, f.name) for f in fields(raw)}  # type: ignore[arg-type]
    if not isinstance(raw, Mapping):
        raise TemplateError(f"hyperparameters must be a JSON object, got {type(raw).__name__}")
    known = set(cls.RANGES)
    clamped: dict[str, Any] = {}
    report: dict[str, Any] = {
        "defaults_used": sorted(k for k in known if k not in raw),
        "ignored_keys": [],
        "clamped": clamped,
        "truncated": [],
    }
    values = {key: _check_number(key, raw[key], policy, clamped, ranges=cls.RANGES)
              for key in sorted(known) if key in raw}
    ignored = _KeyList()
    ignored.add_unknown(raw, known)
    return cls(**values), report, ignored


def _check_number(
    key: str, value: Any, policy: str, clamped: dict[str, Any], *, allow_text: bool = True,
    ranges: Mapping[str, tuple[float, float]] = HP_RANGES,
) -> int | float:
    """The value of hyperparameter ``key`` as an int or float in range, or a TemplateError.

    ``allow_text``: read a number written as text (``"1e-3"``); the JSON wire form allows it
    because LLMs quote numbers, the Python constructor does not (a string there is a bug).
    ``ranges``: the operator's valid ranges (LoRA's by default).
    """
    if isinstance(value, str):
        if not allow_text:
            raise TemplateError(f"{key} must be a number, got the text {_quote(value)}")
        try:
            value = float(value.strip())
        except ValueError:
            raise TemplateError(f"{key} must be a number, got {_quote(value)}") from None
    if isinstance(value, (bool, np.bool_)):
        raise TemplateError(f"{key} must be a number, got the boolean {bool(value)}")
    if isinstance(value, numbers.Integral):  # int, np.int64, np.uint8, ...
        value = int(value)
    elif isinstance(value, numbers.Real):  # float, np.float32, Fraction, ...
        try:
            value = float(value)
        except OverflowError:  # a Fraction beyond 1e308
            value = math.inf if value > 0 else -math.inf
    else:
        raise TemplateError(f"{key} must be a number, got {type(value).__name__}")
    if isinstance(value, int) and abs(value) > 2**63:
        # Beyond any range: handle it as a float (inf past 1e308), since math.isfinite
        # overflows on a 400-digit int and a 5000-digit one cannot even be printed.
        value = float(value) if abs(value) < 10**308 else math.inf if value > 0 else -math.inf
    if isinstance(value, float) and not math.isfinite(value):
        raise TemplateError(f"{key} must be a finite number, got {value}")
    low, high = ranges[key]
    if key in _INT_KEYS:
        if value != int(value):
            raise TemplateError(f"{key} must be a whole number, got {value}")
        value = int(value)
    if not low <= value <= high:
        if policy != "clamp":
            low_s = int(low) if key in _INT_KEYS else low
            high_s = int(high) if key in _INT_KEYS else high
            raise TemplateError(f"{key} must be between {low_s} and {high_s}, got {value}")
        used = min(max(value, low), high)
        used = int(used) if key in _INT_KEYS else float(used)
        clamped[key] = (value, used)
        value = used
    return value if key in _INT_KEYS else float(value)


@dataclass(frozen=True)
class Template:
    """A self-edit template: an instruction the model completes per passage, plus how to train.

    Args:
        data_creation_instruction: passage-agnostic instruction; the env shows the model the
            passage and this instruction, and parses its reply into training sequences.
            May be empty only when ``include_passage`` is true (train on the passage alone)
            or when ``num_epochs`` is 0 (no training). At most
            :data:`MAX_INSTRUCTION_CHARS` characters.
        hyperparameters: settings of the update: :class:`Hyperparameters` (LoRA, the default),
            :class:`FullHyperparameters` or :class:`SVDHyperparameters`; None = the
            defaults of the template's operator.
        include_passage: also train on the passage itself (SEAL's "passage + synthetic").
        name: optional label for tables and logs, at most :data:`MAX_NAME_CHARS` characters
            (:meth:`from_dict` cuts a longer one and reports it).
        update_operator: which update operator trains on the sequences (issue 16): ``"lora"``,
            ``"full"`` or ``"svd"`` (:data:`OPERATOR_NAMES`); None = the env's
            ``default_operator``. Hyperparameters of another operator than LoRA name their
            operator themselves: ``Template("...", SVDHyperparameters())`` is an ``svd``
            template.

    Every field is checked here; the env re-validates a Template it receives through
    :meth:`from_dict` anyway, so one altered after construction gains nothing.

    >>> Template("List facts.", SVDHyperparameters()).update_operator
    'svd'
    >>> Template("List facts.", update_operator="full").hyperparameters.learning_rate
    0.0001
    """

    data_creation_instruction: str
    hyperparameters: OperatorHyperparameters = None  # type: ignore[assignment]
    include_passage: bool = False
    name: str | None = None
    update_operator: str | None = None

    def __post_init__(self) -> None:
        instruction = self.data_creation_instruction
        if not isinstance(instruction, str):
            raise TemplateError(
                f"data_creation_instruction must be a string, got {type(instruction).__name__}"
            )
        if len(instruction) > MAX_INSTRUCTION_CHARS:
            raise TemplateError(
                f"data_creation_instruction is {len(instruction)} characters;"
                f" keep it under {MAX_INSTRUCTION_CHARS}"
            )
        try:  # a lone surrogate cannot reach the tokenizer or a UTF-8 log file
            instruction.encode("utf-8")
        except UnicodeEncodeError as err:
            raise TemplateError(
                f"data_creation_instruction is not valid unicode text ({err.reason} at"
                f" position {err.start})"
            ) from None
        # A str subclass (numpy's str_, or one overriding methods) becomes a plain str.
        object.__setattr__(self, "data_creation_instruction", str.__str__(instruction))
        operator = operator_name(self.update_operator)
        hp = self.hyperparameters
        if hp is None:
            hp = hyperparameters_class(operator)()
        if not isinstance(hp, OperatorHyperparameters):
            raise TemplateError(
                "hyperparameters must be a Hyperparameters object, got"
                f" {type(hp).__name__} (Template.from_dict reads a dict)"
            )
        if operator is None and not isinstance(hp, Hyperparameters):
            operator = hp.OPERATOR  # full or svd settings name their operator
        if operator is not None and type(hp) is not OPERATOR_HYPERPARAMETERS[operator]:
            raise TemplateError(
                f"a template with update_operator {operator!r} takes"
                f" {OPERATOR_HYPERPARAMETERS[operator].__name__}, got {type(hp).__name__}"
                " (Template.from_dict converts a dict)"
            )
        object.__setattr__(self, "hyperparameters", hp)
        object.__setattr__(self, "update_operator", operator)
        if not isinstance(self.include_passage, (bool, np.bool_)):
            raise TemplateError(
                f"include_passage must be true or false, got {_quote(self.include_passage)}"
            )
        object.__setattr__(self, "include_passage", bool(self.include_passage))
        if self.name is not None:
            if not isinstance(self.name, str):
                raise TemplateError(f"name must be a string, got {type(self.name).__name__}")
            if len(self.name) > MAX_NAME_CHARS:
                raise TemplateError(
                    f"name is {len(self.name)} characters; keep it under {MAX_NAME_CHARS}"
                )
            try:
                self.name.encode("utf-8")
            except UnicodeEncodeError:
                raise TemplateError("name is not valid unicode text (a lone surrogate)") from None
            object.__setattr__(self, "name", str.__str__(self.name))
        trains = self.hyperparameters.num_epochs > 0
        if trains and not instruction.strip() and not self.include_passage:
            raise TemplateError(
                "data_creation_instruction is empty and include_passage is false: nothing to"
                " train on (set num_epochs to 0 for no training)"
            )

    @property
    def trains(self) -> bool:
        return self.hyperparameters.num_epochs > 0

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        text = " ".join(self.data_creation_instruction.split())
        return (text[:40] + "...") if len(text) > 40 else (text or "(passage only)")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "data_creation_instruction": self.data_creation_instruction,
            "hyperparameters": self.hyperparameters.to_dict(),
            "include_passage": self.include_passage,
        }
        if self.update_operator is not None:
            out["update_operator"] = self.update_operator
        if self.name:
            # The cap holds even for a name set behind the constructor's back.
            out["name"] = _clip_text(self.name, MAX_NAME_CHARS)[0]
        return out

    def to_json(self) -> str:
        """The template as the JSON string an agent would emit (round-trips through parse)."""
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_dict(
        cls, raw: Any, *, policy: Literal["reject", "clamp"] = "reject",
        default_operator: str | None = None,
    ) -> tuple[Template, dict[str, Any]]:
        """Build a template from a parsed JSON object (or a Template); returns it with the report.

        The report is :meth:`Hyperparameters.from_dict`'s, with the template's unknown keys
        added to ``ignored_keys`` (a ``name`` that is not a string is one of them) and a note
        in ``truncated`` when the name was cut to :data:`MAX_NAME_CHARS` characters.

        The operator is the template's ``update_operator``, else the one its hyperparameters
        object names (a Template built with :class:`SVDHyperparameters`), else
        ``default_operator`` (the env passes its ``default_operator``; None leaves the
        template's operator unset, validated as LoRA). Its hyperparameters class validates
        ``hyperparameters``.

        >>> t, report = Template.from_dict({"instruction": "List facts.", "name": "n" * 500})
        >>> len(t.name), report["truncated"]
        (200, ['name: cut from 500 to 200 characters'])
        >>> t, _ = Template.from_dict({"instruction": "List facts.", "update_operator": "svd",
        ...                            "hyperparameters": {"learning_rate": 0.02}})
        >>> t.update_operator, t.hyperparameters.learning_rate
        ('svd', 0.02)
        """
        if isinstance(raw, Template):
            raw = _template_fields(raw)
        if not isinstance(raw, Mapping):
            raise TemplateError(
                "a template must be a JSON object with keys 'data_creation_instruction' and"
                f" 'hyperparameters', got {type(raw).__name__}"
            )
        instruction = raw.get("data_creation_instruction", raw.get("instruction"))
        if instruction is None:
            raise TemplateError(
                "template is missing 'data_creation_instruction' (the instruction the model"
                " completes on each passage)"
            )
        if not isinstance(instruction, str):
            raise TemplateError(
                f"data_creation_instruction must be a string, got {type(instruction).__name__}"
            )
        operator = operator_name(raw.get("update_operator"))
        raw_hp = raw.get("hyperparameters")
        if (operator is None and isinstance(raw_hp, OperatorHyperparameters)
                and not isinstance(raw_hp, Hyperparameters)):
            operator = raw_hp.OPERATOR
        if operator is None:
            operator = operator_name(default_operator)
        hp, report, ignored = _hyperparameters(raw_hp, policy, hyperparameters_class(operator))
        include = raw.get("include_passage", False)
        if not isinstance(include, (bool, np.bool_)):
            raise TemplateError(f"include_passage must be true or false, got {_quote(include)}")
        known = {"data_creation_instruction", "instruction", "hyperparameters",
                 "include_passage", "name", "update_operator"}
        ignored.add_unknown(raw, known)
        name = raw.get("name")
        if name is not None and not isinstance(name, str):
            ignored.add("name")
            name = None
        if name is not None:
            name, cut = _clip_text(name, MAX_NAME_CHARS)
            if cut:
                report["truncated"].append(
                    f"name: cut from {len(raw['name'])} to {MAX_NAME_CHARS} characters"
                )
        _finish_report(report, ignored)
        template = cls(instruction, hp, include_passage=bool(include), name=name,
                       update_operator=operator)
        return template, report


def operator_name(value: Any) -> str | None:
    """An ``update_operator`` value as a known operator name (case and spaces forgiven).

    >>> operator_name(" LoRA "), operator_name(None)
    ('lora', None)
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise TemplateError(f"update_operator must be one of {', '.join(OPERATOR_NAMES)}, got"
                            f" {type(value).__name__}")
    name = value.strip().lower()
    if name not in OPERATOR_HYPERPARAMETERS:
        raise TemplateError(f"update_operator must be one of {', '.join(OPERATOR_NAMES)}, got"
                            f" {_quote(value)}")
    return name


def _template_fields(template: Template) -> dict[str, Any]:
    """A Template's stored fields as a raw mapping, for validation as if it were JSON."""
    return {f.name: getattr(template, f.name) for f in fields(Template)}


# -- report caps ------------------------------------------------------------------------------
class _KeyList:
    """Unknown keys of an action, kept for the report within the log caps."""

    def __init__(self) -> None:
        self.kept: list[str] = []
        self.total = 0
        self.cut = 0

    def add(self, key: Any) -> None:
        self.total += 1
        if len(self.kept) < MAX_IGNORED_KEYS:
            text, cut = _clip_text(_key_text(key), MAX_KEY_CHARS)
            self.cut += cut
            self.kept.append(text)

    def add_unknown(self, raw: Mapping[Any, Any], known: set[str]) -> None:
        start = len(self.kept)
        for key in raw:
            if not (isinstance(key, str) and key in known):
                self.add(key)
        # Sorted within each mapping (hyperparameters first, then the template's own keys).
        self.kept[start:] = sorted(self.kept[start:])


def _finish_report(report: dict[str, Any], ignored: _KeyList) -> None:
    report["ignored_keys"] = ignored.kept
    if ignored.total > len(ignored.kept) or ignored.cut:
        note = f"ignored_keys: {len(ignored.kept)} of {ignored.total} kept"
        if ignored.cut:
            note += f", {ignored.cut} cut to {MAX_KEY_CHARS} characters"
        report["truncated"].append(note)


def _key_text(key: Any) -> str:
    """A mapping key as short text, without ever printing a huge object."""
    if isinstance(key, str):
        return key[: MAX_KEY_CHARS + 1]
    if isinstance(key, int) and abs(key) < 10**18:
        return str(int(key))
    if isinstance(key, float):
        return repr(float(key))
    return f"<{type(key).__name__}>"


def _clip_text(text: str, limit: int) -> tuple[str, bool]:
    """``text`` cut to ``limit`` characters and made writable to a UTF-8 log."""
    clipped = text[:limit]
    if clipped.isascii():
        return clipped, len(text) > limit
    safe = clipped.encode("utf-8", "backslashreplace").decode("utf-8")[:limit]
    return safe, len(text) > limit


def _quote(value: Any) -> str:
    """A value for an error message: short, whatever the action put there."""
    if value is None:
        return "null"
    if isinstance(value, str):
        if len(value) > _MAX_QUOTE_CHARS:
            return repr(value[:_MAX_QUOTE_CHARS]) + f"... ({len(value)} characters)"
        return repr(value)
    if isinstance(value, (bool, np.bool_, float, np.floating)):
        return repr(value)
    if isinstance(value, numbers.Integral) and abs(int(value)) < 10**18:
        return repr(int(value))
    return f"a {type(value).__name__}"


# -- finding JSON in LLM output ---------------------------------------------------------------
_THINK = re.compile(r"<think>.*?(?:</think>|$)", re.DOTALL | re.IGNORECASE)
# Possessive language tag: a greedy tag or whitespace run before a lazy body backtracks
# quadratically when the closing fence is missing ("```" + a million spaces took minutes).
_FENCE = re.compile(r"```[A-Za-z0-9_-]*+(.*?)```", re.DOTALL)
# Outside any bracket only openers matter: quotes there are prose ("5 feet" or it's).
_OPENERS = re.compile(r"([\[{]+)")
# Inside brackets, one token: text and complete JSON strings up to the next bracket run, then
# a run of openers (1), a run of closers (2), or a quote that opens a string running to the
# end of the text (3); no group at the end of the text. Used with match(): anchored, every
# loop possessive, so a token costs time linear in its length and nothing is retried.
_STRING = r'"[^"\\]*+(?:\\[\s\S]?[^"\\]*+)*+"'
_TOKENS = re.compile(r'(?:[^\[\]{}"]++|' + _STRING + r')*+(?:([\[{]+)|([\]}]+)|("))?')
# After a string ran to the end of the text from quote q, every quote after q is escaped in
# the same way, so a string opened at any of them runs to the end too: past q the scan
# matches a quote alone, and before q strings are matched only up to q (a string that would
# pass q never closes) instead of to the end again and again, which was quadratic.
_TOKENS_AFTER_OPEN_STRING = re.compile(r'[^\[\]{}"]*+(?:([\[{]+)|([\]}]+)|("))?')
_OPENER_OF = {"}": "{", "]": "["}
_OPENER_FOR = {dict: "{", list: "["}
_DECODER = json.JSONDecoder(strict=False)  # LLMs put raw newlines inside strings


def strip_think(text: str) -> str:
    """Drop ``<think>...</think>`` reasoning; an unclosed block hides the rest of the text."""
    return _THINK.sub("", text)


class _Budget:
    """What one extraction may still spend: scan tokens, decoder tries, decoder characters."""

    def __init__(self) -> None:
        self.tokens = MAX_SCAN_TOKENS
        self.attempts = MAX_DECODE_ATTEMPTS
        self.chars = MAX_DECODE_CHARS
        self.scan_spent = ""  # which budget ran out, in words
        self.decode_spent = ""

    @property
    def spent(self) -> str:
        return self.scan_spent or self.decode_spent

    def check(self, text: str, start: int, end: int) -> bool:
        """Whether ``text[start:end + 1]`` is JSON (True when the budget cannot tell).

        Not counted as a try: it only decides whether a group is read again.
        """
        if self.chars < end + 1 - start:
            return True
        self.chars -= end + 1 - start
        try:
            _DECODER.raw_decode(text[start : end + 1])
        except (ValueError, RecursionError):
            return False
        return True

    def decode(self, text: str, start: int, end: int) -> Any:
        """``text[start:end + 1]`` decoded, or ``_NOTHING``; counts against the budget."""
        size = end + 1 - start
        if self.attempts <= 0 or self.chars < size:
            self.decode_spent = self.decode_spent or (
                f"decoded {MAX_DECODE_ATTEMPTS - self.attempts} spans"
                f" ({MAX_DECODE_CHARS - self.chars:,} characters)"
            )
            return _NOTHING
        self.attempts -= 1
        self.chars -= size
        try:
            # A slice, so that a failure's line count covers the span, not the whole text.
            value, _ = _DECODER.raw_decode(text[start : end + 1])
        except (ValueError, RecursionError):  # ValueError also covers 5000-digit integers
            return _NOTHING
        return value


_NOTHING = object()


def _push_openers(
    live: list[tuple[int, str, int]], dead: list[list[int]], first: int, run: str, mark: int
) -> None:
    """Open the brackets of ``run`` (starting at ``first``); the innermost stay live."""
    k = len(run)
    if len(live) + k <= MAX_JSON_DEPTH:
        live.extend(zip(range(first, first + k), run, repeat(mark)))
        return
    keep = min(k, MAX_JSON_DEPTH)
    drop = len(live) + keep - MAX_JSON_DEPTH
    for p, _, mk in live[:drop]:
        _bury(dead, 1, mk, p)
    del live[:drop]
    if k > keep:
        _bury(dead, k - keep, mark, first)
    live.extend(zip(range(first + k - keep, first + k), run[k - keep :], repeat(mark)))


def _bury(dead: list[list[int]], count: int, mark: int, position: int) -> None:
    # Neighbours with one mark close alike (each drops what was found after the mark): one run.
    if dead and dead[-1][1] == mark:
        dead[-1][0] += count
    else:
        dead.append([count, mark, position])


class _Search:
    """The first decodable JSON value in one text whose opener is ``openers[0]``.

    One left-to-right scan over brackets, with strings tracked inside brackets only (quotes
    in prose are no strings), finds balanced spans; a top-level group is settled when its
    outermost bracket closes: if it decodes, it is the answer (or its inner spans are, in
    order); if not, its inner spans are tried in order of start, as a decoder tried at
    every bracket would. Spans of the other kinds in ``openers`` go to ``deferred``.

    * Spans nested deeper than :data:`MAX_JSON_DEPTH` are never decoded, nor anything inside
      them: a too-deep value is skipped whole, so a template after it is still found.
    * A stray quote in prose inside brackets ('{see "x} {"a": 1}') puts the scan out of
      step; it shows as a group that does not decode, a wrong closer, a string that never
      closes, or a bracket still open at the end. The scan then goes back to just after the
      group's first bracket, at most :data:`MAX_RESCANS` times.
    * Work is linear in ``len(text)`` apart from those rescans, and capped by
      ``budget.tokens``: a token is a run of openers or of closers with the text and strings
      before it, so ``"[" * 10**6`` is one token and ``'{"a":' * 1000`` a thousand. Every
      regex is anchored or possessive; a string that never closes is matched to the end once:
      every later quote is escaped alike, so a string opened at any of them, or one that
      reaches it, runs to the end too, and later matches stop there; at most
      ``MAX_JSON_DEPTH`` brackets are held one by one, deeper ones as counted runs.
    """

    def __init__(
        self, text: str, openers: str, budget: _Budget, deferred: list[tuple[str, int, int]]
    ) -> None:
        self.text = text
        self.openers = openers
        self.budget = budget
        self.deferred = deferred
        # Spans found by a pass that was abandoned for a rescan: tried in order of start once
        # the rescan has passed them (it may find earlier spans, or the same ones again).
        self.pending: list[tuple[int, int, str]] = []
        self.tried: set[tuple[int, int, str]] = set()
        self.rescans = 0

    def attempt(self, found: list[tuple[int, int, str]], before: int) -> Any:
        """Try ``found`` and the pending spans that start before ``before``, by start."""
        k = bisect_left(self.pending, (before,))
        spans = sorted(found + self.pending[:k])
        del self.pending[:k]
        for span in spans:
            if span in self.tried:
                continue
            self.tried.add(span)
            start, end, opener = span
            if opener != self.openers[0]:
                if len(self.deferred) < MAX_DECODE_ATTEMPTS:
                    self.deferred.append((self.text, start, end))
                continue
            value = self.budget.decode(self.text, start, end)
            if value is not _NOTHING or self.budget.decode_spent:
                return value
        return _NOTHING

    def rescan(self, found: list[tuple[int, int, str]]) -> bool:
        if self.rescans >= MAX_RESCANS:
            return False
        self.rescans += 1
        self.pending = sorted(self.pending + found)
        return True

    def settle(self, start: int, end: int, found: list[tuple[int, int, str]]) -> Any:
        """A top-level group closed: its value, or ``_RESCAN``, or ``_NOTHING``."""
        text = self.text
        if not (found or self.pending or text[start] == self.openers[0]):
            if text.find('"', start, end) == -1:
                return _NOTHING  # nothing to try, nothing a rescan could read otherwise
        value = self.attempt([], start)  # spans of abandoned passes that come before it
        if value is not _NOTHING or self.budget.decode_spent:
            return value
        opener = text[start]
        # Without a quote inside, a rescan would read the group exactly as this pass did.
        quoted = text.find('"', start, end) != -1 and self.rescans < MAX_RESCANS
        if opener == self.openers[0]:
            self.tried.add((start, end, opener))
            value = self.budget.decode(text, start, end)
            if value is not _NOTHING or self.budget.decode_spent:
                return value
            in_step = False
        else:  # a group of another kind: is it JSON, i.e. were its inner spans read in step?
            in_step = not quoted or self.budget.check(text, start, end)
        if not in_step and quoted and self.rescan(found):
            return _RESCAN
        return self.attempt(found, end + 1)

    def run(self) -> Any:
        text, budget, wanted = self.text, self.budget, self.openers
        pos = 0
        # Once a string ran to the end from quote q, every quote after q opens a string that
        # runs to the end too (each is escaped alike): past q, quotes are matched alone.
        endless_from = len(text)
        left = budget.tokens  # a local: this loop is the hot path on hostile text
        while True:  # one pass per restart after a wrong closer or an endless string
            live: list[tuple[int, str, int]] = []  # open brackets: (position, opener, mark)
            # Open brackets nested too deep, as runs: [count, mark, position of the first].
            # A mark is len(found) when a bracket opened: what is found after it lies inside.
            dead: list[list[int]] = []
            found: list[tuple[int, int, str]] = []
            restart = -1
            while True:
                if live or dead:
                    if pos < endless_from:
                        # Up to and including q: a string closing at q closes; one that
                        # would pass q matches as a lone quote (group 3), which it is.
                        m = _TOKENS.match(text, pos, endless_from + 1)
                        kind = m.lastindex
                        if kind is None:
                            if m.end() >= len(text):
                                break  # the end of the text
                            pos = m.end()
                            continue
                    else:
                        m = _TOKENS_AFTER_OPEN_STRING.match(text, pos)
                        kind = m.lastindex
                        if kind is None:
                            break
                else:
                    m = _OPENERS.search(text, pos)
                    if m is None:
                        break
                    kind = 1
                left -= 1
                if left < 0:
                    budget.scan_spent = f"scanned {MAX_SCAN_TOKENS:,} brackets"
                    break
                first, pos = m.start(kind), m.end()
                if kind == 1:  # a run of openers
                    if pos - first == 1:  # the common case, kept out of _push_openers
                        if len(live) == MAX_JSON_DEPTH:
                            p, _, mark = live.pop(0)
                            _bury(dead, 1, mark, p)
                        live.append((first, text[first], len(found)))
                    else:
                        _push_openers(live, dead, first, m.group(1), len(found))
                    continue
                if kind == 3:  # a string that never closes: no open span is JSON
                    restart = first + 1
                    endless_from = min(endless_from, first)
                    break
                i = first  # a run of closers
                while i < pos and (live or dead):
                    if live:
                        p, opener, _ = live.pop()
                        if _OPENER_OF[text[i]] != opener:  # "[}": no open span is JSON
                            live.append((p, opener, 0))  # kept: a rescan starts after it
                            restart = i + 1
                            break
                        if opener in wanted:
                            found.append((p, i, opener))
                        i += 1
                        if not live and not dead:  # a top-level group closed
                            value = self.settle(p, i - 1, found)
                            if value is _RESCAN:
                                pos = p + 1
                            elif value is not _NOTHING or budget.decode_spent:
                                return value
                            found = []
                    else:  # closes a too-deep value: drop everything found inside it
                        entry = dead[-1]
                        take = min(pos - i, entry[0])
                        entry[0] -= take
                        i += take
                        del found[entry[1] :]
                        if not entry[0]:
                            dead.pop()
                if restart >= 0:
                    break
            budget.tokens = left
            if budget.scan_spent:
                return self.attempt(found, len(text))
            if (live or dead) and self.rescans < MAX_RESCANS and self.rescan(found):
                pos = 1 + (dead[0][2] if dead else live[0][0])
                continue
            if restart < 0:
                return self.attempt(found, len(text))
            if found or self.pending:
                value = self.attempt(found, restart)
                if value is not _NOTHING or budget.decode_spent:
                    return value
            pos = restart


_RESCAN = object()


def extract_json(
    text: str, *, want: type | tuple[type, ...] = dict, max_chars: int = MAX_ACTION_CHARS
) -> Any:
    """Find the first JSON value of type ``want`` in LLM output.

    Strips ``<think>`` blocks, prefers fenced code blocks, then scans for the first
    decodable object (or list) in the remaining text, so leading and trailing prose is fine.
    ``want`` may be a tuple in order of preference: ``(dict, list)`` returns the first object
    anywhere, else the first list.

    The work is bounded whatever the text: longer than ``max_chars`` is rejected at once;
    the scan is linear and stops after :data:`MAX_SCAN_TOKENS` bracket runs; values
    nested deeper than :data:`MAX_JSON_DEPTH` are skipped whole; the decoder gets at most
    :data:`MAX_DECODE_ATTEMPTS` tries on :data:`MAX_DECODE_CHARS` characters in all.

    >>> extract_json('<think>hmm {no}</think> Sure! ```json\\n{"a": 1}\\n``` done')
    {'a': 1}
    >>> extract_json('Here: [1, 2] and more', want=list)
    [1, 2]
    >>> extract_json('[' * 5000 + ']' * 5000 + ' then {"b": 2}')  # too deep: skipped whole
    {'b': 2}
    """
    if not isinstance(text, str):
        raise TemplateError(f"expected a JSON string, got {type(text).__name__}")
    if len(text) > max_chars:
        raise TemplateError(
            f"the text is {len(text):,} characters; the limit is {max_chars:,}"
            " (MAX_ACTION_CHARS): send the JSON without padding"
        )
    kinds = want if isinstance(want, tuple) else (want,)
    if not kinds or any(k not in _OPENER_FOR for k in kinds):
        raise ValueError(f"want must be dict, list or a tuple of them, got {want!r}")
    openers = "".join(_OPENER_FOR[k] for k in kinds)
    text = strip_think(text)
    chunks = [m.group(1) for m in islice(_FENCE.finditer(text), MAX_FENCES)]
    chunks.append(text)
    budget = _Budget()
    deferred: list[tuple[str, int, int]] = []  # spans of less preferred kinds, in order
    for chunk in chunks:
        value = _Search(chunk, openers, budget, deferred).run()
        if value is not _NOTHING:
            return value
        if budget.spent:
            break
    for opener in openers[1:]:
        for chunk, start, end in deferred:
            if chunk[start] == opener:
                value = budget.decode(chunk, start, end)
                if value is not _NOTHING:
                    return value
    names = " or ".join("object" if k is dict else "list" for k in kinds)
    why = f"; gave up after it {budget.spent}" if budget.spent else ""
    raise TemplateError(f"no JSON {names} found in the text ({_preview(text)}){why}")


def _preview(text: str, n: int = 60) -> str:
    text = " ".join(text[: 4 * n].split())
    if not text:
        return "empty text"
    return repr(text[:n] + ("..." if len(text) > n else ""))


def parse_template(
    action: str | Mapping[str, Any] | Template,
    *,
    policy: Literal["reject", "clamp"] = "reject",
    default_operator: str | None = None,
) -> tuple[Template, dict[str, Any]]:
    """Turn an action (JSON text, a dict, or a Template) into a validated Template.

    Every form is validated the same way (:meth:`Template.from_dict`): a Template is
    re-validated from its fields, so one altered after construction is caught or clamped.

    >>> t, _ = parse_template('```json\\n{"data_creation_instruction": "List facts.",'
    ...                       ' "hyperparameters": {"num_epochs": 3}}\\n```')
    >>> t.hyperparameters.num_epochs, t.hyperparameters.lora_rank
    (3, 32)
    """
    if isinstance(action, str):
        action = extract_json(action, want=dict)
    return Template.from_dict(action, policy=policy, default_operator=default_operator)
