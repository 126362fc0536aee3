"""Self-edit templates: the env's action.

A template is what a template-writing policy emits: a passage-agnostic *data-creation
instruction* (the env's model completes it on each passage to produce training sequences)
plus the LoRA hyperparameters used to train on those sequences. On the wire it is JSON::

    {"data_creation_instruction": "List the implications of the passage ...",
     "hyperparameters": {"lora_rank": 32, "lora_alpha": 64, "lora_dropout": 0.0,
                         "learning_rate": 0.001, "num_epochs": 10,
                         "gradient_accumulation_steps": 1},
     "include_passage": true}

LLMs wrap JSON in code fences, ``<think>`` blocks and prose; :func:`parse_template` digs the
object out. Every problem raises :class:`TemplateError` with a message that says what to fix;
the env turns it into ``info["error"]`` and a penalty reward.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

__all__ = [
    "HP_RANGES",
    "Hyperparameters",
    "Template",
    "TemplateError",
    "extract_json",
    "parse_template",
    "strip_think",
]


class TemplateError(ValueError):
    """A template (or self-edit) that cannot be evaluated; the message says what to fix."""


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
_INT_KEYS = {"lora_rank", "num_epochs", "gradient_accumulation_steps"}


@dataclass(frozen=True)
class Hyperparameters:
    """LoRA hyperparameters of a self-edit. Defaults are SEAL's (arXiv 2506.10943, sec. 4)."""

    lora_rank: int = 32
    lora_alpha: float = 64.0
    lora_dropout: float = 0.0
    learning_rate: float = 1e-3
    num_epochs: int = 10
    gradient_accumulation_steps: int = 1

    def __post_init__(self) -> None:
        # Objects built in Python get the same checks as JSON from an agent.
        for key in HP_RANGES:
            _check_number(key, getattr(self, key), "reject", {})

    @classmethod
    def from_dict(
        cls, raw: Any, *, policy: Literal["reject", "clamp"] = "reject"
    ) -> tuple[Hyperparameters, dict[str, Any]]:
        """Validate raw hyperparameters.

        Returns the hyperparameters and a report with ``defaults_used`` (missing keys),
        ``ignored_keys`` (unknown keys) and ``clamped`` (key -> (given, used)).

        >>> hp, report = Hyperparameters.from_dict({"lora_rank": 8, "epochs": 3})
        >>> hp.lora_rank, report["ignored_keys"]
        (8, ['epochs'])
        >>> try:
        ...     Hyperparameters.from_dict({"lora_rank": 4096})
        ... except TemplateError as err:
        ...     print(err)
        lora_rank must be between 1 and 256, got 4096
        """
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise TemplateError(
                f"hyperparameters must be a JSON object, got {type(raw).__name__}"
            )
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        report: dict[str, Any] = {
            "defaults_used": sorted(known - set(raw)),
            "ignored_keys": sorted(str(k) for k in raw if k not in known),
            "clamped": {},
        }
        for key in sorted(known & set(raw)):
            values[key] = _check_number(key, raw[key], policy, report["clamped"])
        return cls(**values), report

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_number(
    key: str, value: Any, policy: str, clamped: dict[str, Any]
) -> int | float:
    if isinstance(value, str):
        try:  # LLMs often quote numbers: "1e-3"
            value = float(value.strip())
        except ValueError:
            raise TemplateError(f"{key} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TemplateError(f"{key} must be a number, got {type(value).__name__}")
    if isinstance(value, int) and abs(value) > 2**63:
        # Beyond any range: handle it as a float (inf past 1e308), since math.isfinite
        # overflows on a 400-digit int and a 5000-digit one cannot even be printed.
        value = float(value) if abs(value) < 10**308 else math.inf if value > 0 else -math.inf
    if isinstance(value, float) and not math.isfinite(value):
        raise TemplateError(f"{key} must be a finite number, got {value}")
    low, high = HP_RANGES[key]
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


MAX_INSTRUCTION_CHARS = 4000


@dataclass(frozen=True)
class Template:
    """A self-edit template: an instruction the model completes per passage, plus LoRA settings.

    Args:
        data_creation_instruction: passage-agnostic instruction; the env shows the model the
            passage and this instruction, and parses its reply into training sequences.
            May be empty only when ``include_passage`` is true (train on the passage alone)
            or when ``num_epochs`` is 0 (no training).
        hyperparameters: LoRA settings for the update.
        include_passage: also train on the passage itself (SEAL's "passage + synthetic").
        name: optional label for tables and logs.
    """

    data_creation_instruction: str
    hyperparameters: Hyperparameters = field(default_factory=Hyperparameters)
    include_passage: bool = False
    name: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.data_creation_instruction, str):
            raise TemplateError("data_creation_instruction must be a string")
        if len(self.data_creation_instruction) > MAX_INSTRUCTION_CHARS:
            raise TemplateError(
                f"data_creation_instruction is {len(self.data_creation_instruction)} characters;"
                f" keep it under {MAX_INSTRUCTION_CHARS}"
            )
        try:  # a lone surrogate cannot reach the tokenizer or a UTF-8 log file
            self.data_creation_instruction.encode("utf-8")
        except UnicodeEncodeError as err:
            raise TemplateError(
                f"data_creation_instruction is not valid unicode text ({err.reason} at"
                f" position {err.start})"
            ) from None
        trains = self.hyperparameters.num_epochs > 0
        if trains and not self.data_creation_instruction.strip() and not self.include_passage:
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
        if self.name:
            out["name"] = self.name
        return out

    def to_json(self) -> str:
        """The template as the JSON string an agent would emit (round-trips through parse)."""
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_dict(
        cls, raw: Any, *, policy: Literal["reject", "clamp"] = "reject"
    ) -> tuple[Template, dict[str, Any]]:
        """Build a template from a parsed JSON object; returns it with the validation report."""
        if not isinstance(raw, dict):
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
        hp, report = Hyperparameters.from_dict(raw.get("hyperparameters"), policy=policy)
        include = raw.get("include_passage", False)
        if not isinstance(include, bool):
            raise TemplateError(f"include_passage must be true or false, got {include!r}")
        name = raw.get("name")
        known = {"data_creation_instruction", "instruction", "hyperparameters",
                 "include_passage", "name"}
        report["ignored_keys"] += sorted(str(k) for k in raw if k not in known)
        template = cls(
            instruction,
            hp,
            include_passage=include,
            name=name if isinstance(name, str) else None,
        )
        return template, report


_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"```[a-zA-Z0-9_-]*\s*\n?(.*?)```", re.DOTALL)


def strip_think(text: str) -> str:
    """Drop ``<think>...</think>`` reasoning; an unclosed block hides the rest of the text."""
    return _THINK.sub("", text)


def extract_json(text: str, *, want: type = dict) -> Any:
    """Find the first JSON value of type ``want`` in LLM output.

    Strips ``<think>`` blocks, prefers fenced code blocks, then scans for the first
    decodable object (or list) in the remaining text, so leading and trailing prose is fine.

    >>> extract_json('<think>hmm {no}</think> Sure! ```json\\n{"a": 1}\\n``` done')
    {'a': 1}
    >>> extract_json('Here: [1, 2] and more', want=list)
    [1, 2]
    """
    if not isinstance(text, str):
        raise TemplateError(f"expected a JSON string, got {type(text).__name__}")
    text = strip_think(text)
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    opener = "{" if want is dict else "["
    decoder = json.JSONDecoder(strict=False)  # LLMs put raw newlines inside strings
    for chunk in candidates:
        start = chunk.find(opener)
        while start != -1:
            try:
                value, _ = decoder.raw_decode(chunk, start)
            except json.JSONDecodeError:
                pass
            else:
                if isinstance(value, want):
                    return value
            start = chunk.find(opener, start + 1)
    kind = "object" if want is dict else "list"
    raise TemplateError(f"no JSON {kind} found in the text ({_preview(text)})")


def _preview(text: str, n: int = 60) -> str:
    text = " ".join(text.split())
    if not text:
        return "empty text"
    return repr(text[:n] + ("..." if len(text) > n else ""))


def parse_template(
    action: str | dict | Template, *, policy: Literal["reject", "clamp"] = "reject"
) -> tuple[Template, dict[str, Any]]:
    """Turn an action (JSON text, a dict, or a Template) into a validated Template.

    >>> t, _ = parse_template('```json\\n{"data_creation_instruction": "List facts.",'
    ...                       ' "hyperparameters": {"num_epochs": 3}}\\n```')
    >>> t.hyperparameters.num_epochs, t.hyperparameters.lora_rank
    (3, 32)
    """
    if isinstance(action, Template):
        empty: dict[str, Any] = {"defaults_used": [], "ignored_keys": [], "clamped": {}}
        return action, empty
    if isinstance(action, str):
        action = extract_json(action, want=dict)
    return Template.from_dict(action, policy=policy)
