"""Template parsing and validation: tolerant of LLM wrapping, strict about values."""

from __future__ import annotations

import dataclasses
import decimal
import json
import math
import re
from typing import Any

import numpy as np
import pytest

from selfedit.envs.templates import (
    HP_RANGES,
    MAX_IGNORED_KEYS,
    MAX_KEY_CHARS,
    MAX_NAME_CHARS,
    Hyperparameters,
    Template,
    TemplateError,
    parse_template,
)

GOOD = '{"data_creation_instruction": "List facts.", "hyperparameters": {"lora_rank": 8}}'


@pytest.mark.parametrize(
    "text",
    [
        GOOD,
        f"```json\n{GOOD}\n```",
        f"<think>I should use {{rank}} 8</think>\n{GOOD}",
        f"Here is my template:\n{GOOD}\nHope it helps!",
    ],
)
def test_parse_tolerates_wrapping(text: str) -> None:
    template, report = parse_template(text)
    assert template.data_creation_instruction == "List facts."
    assert template.hyperparameters.lora_rank == 8
    assert "learning_rate" in report["defaults_used"]


def test_round_trip_through_json() -> None:
    template = Template("Rewrite it.", Hyperparameters(lora_rank=4, num_epochs=2),
                        include_passage=True, name="r")
    parsed, _ = parse_template(template.to_json())
    assert parsed == template


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"hyperparameters": {}}, "missing 'data_creation_instruction'"),
        ({"data_creation_instruction": 3}, "must be a string"),
        ({"data_creation_instruction": "x", "hyperparameters": [1]}, "must be a JSON object"),
        ({"data_creation_instruction": "x", "hyperparameters": {"lora_rank": 4096}},
         "lora_rank must be between 1 and 256, got 4096"),
        ({"data_creation_instruction": "x", "hyperparameters": {"num_epochs": 10**6}},
         "num_epochs must be between 0 and 50"),
        ({"data_creation_instruction": "x", "hyperparameters": {"learning_rate": 1e9}},
         "learning_rate must be between"),
        ({"data_creation_instruction": "x", "hyperparameters": {"lora_rank": -2}},
         "lora_rank must be between"),
        ({"data_creation_instruction": "x", "hyperparameters": {"lora_rank": 2.5}},
         "whole number"),
        ({"data_creation_instruction": "x", "hyperparameters": {"lora_dropout": "high"}},
         "must be a number"),
        ({"data_creation_instruction": "x", "hyperparameters": {"learning_rate": math.nan}},
         "finite"),
        ({"data_creation_instruction": "x", "hyperparameters": {"lora_rank": True}},
         "must be a number"),
        ({"data_creation_instruction": "", "hyperparameters": {}}, "nothing to train on"),
        ({"data_creation_instruction": "x", "include_passage": "yes"}, "true or false"),
        ({"data_creation_instruction": "x" * 5000}, "keep it under"),
    ],
)
def test_bad_templates_say_what_to_fix(raw: dict, message: str) -> None:
    with pytest.raises(TemplateError, match=message.replace("(", r"\(")):
        parse_template(raw)


def test_raw_newlines_inside_strings_are_accepted() -> None:
    template, _ = parse_template('{"data_creation_instruction": "List facts.\nOne per line."}')
    assert template.data_creation_instruction == "List facts.\nOne per line."


def test_no_json_at_all() -> None:
    with pytest.raises(TemplateError, match="no JSON object"):
        parse_template("I would list the implications.")


def test_unfinished_thinking_is_not_an_answer() -> None:
    # A model cut off inside <think> never committed to a template, even if it drafted one.
    with pytest.raises(TemplateError, match="no JSON object"):
        parse_template(f"<think>maybe {GOOD}")


def test_clamp_policy_reports_what_it_changed() -> None:
    raw = {"data_creation_instruction": "x",
           "hyperparameters": {"lora_rank": 4096, "learning_rate": 1e9, "num_epochs": 3}}
    template, report = parse_template(raw, policy="clamp")
    assert template.hyperparameters.lora_rank == HP_RANGES["lora_rank"][1]
    assert template.hyperparameters.learning_rate == HP_RANGES["learning_rate"][1]
    assert report["clamped"]["lora_rank"] == (4096, 256)
    assert "num_epochs" not in report["clamped"]


def test_quoted_numbers_and_extra_keys_are_tolerated() -> None:
    raw = {"data_creation_instruction": "x", "style": "terse",
           "hyperparameters": {"learning_rate": "1e-4", "momentum": 0.9}}
    template, report = parse_template(raw)
    assert template.hyperparameters.learning_rate == pytest.approx(1e-4)
    assert report["ignored_keys"] == ["momentum", "style"]


def test_empty_instruction_is_fine_without_training_or_with_passage() -> None:
    assert not Template("", Hyperparameters(num_epochs=0)).trains
    assert Template("", include_passage=True).trains


# -- issue 13, item 2: every action form meets the same validation and policy ----------------
def _forms(raw: dict[str, Any]) -> dict[str, Any]:
    """The same action as JSON text, a dict, a dict holding a Hyperparameters, and a Template
    whose fields were altered after construction (behind the frozen dataclass's guard)."""
    forms: dict[str, Any] = {"dict": raw}
    try:
        forms["json"] = json.dumps(raw)
    except TypeError:
        pass  # numpy scalars have no JSON form
    base = Template("Placeholder.", include_passage=True)
    hp = Hyperparameters()
    for key, value in raw.get("hyperparameters", {}).items():
        object.__setattr__(hp, key, value)
    forms["dict with Hyperparameters"] = {**raw, "hyperparameters": hp}
    for key in ("data_creation_instruction", "include_passage", "name"):
        if key in raw:
            object.__setattr__(base, key, raw[key])
    object.__setattr__(base, "hyperparameters", hp)
    forms["altered Template"] = base
    return forms


BAD_FIELDS = [
    ({"lora_rank": 300}, "lora_rank must be between 1 and 256, got 300", (300, 256)),
    ({"num_epochs": -3}, "num_epochs must be between 0 and 50, got -3", (-3, 0)),
    ({"learning_rate": 1e9}, "learning_rate must be between", (1e9, 1e-2)),
    ({"lora_dropout": 2.5}, "lora_dropout must be between", (2.5, 0.9)),
    ({"gradient_accumulation_steps": 10**6}, "gradient_accumulation_steps must be between",
     (10**6, 64)),
]


@pytest.mark.parametrize(("hp", "message", "clamped"), BAD_FIELDS)
def test_every_action_form_is_rejected_or_clamped_alike(hp: dict, message: str,
                                                        clamped: tuple) -> None:
    raw = {"data_creation_instruction": "List facts.", "hyperparameters": hp}
    (key,) = hp
    for form, action in _forms(raw).items():
        with pytest.raises(TemplateError, match=re.escape(message)):
            parse_template(action, policy="reject")
        template, report = parse_template(action, policy="clamp")
        assert report["clamped"] == {key: clamped}, form
        assert getattr(template.hyperparameters, key) == clamped[1], form


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"data_creation_instruction": "x" * 900_000}, "keep it under 4000"),
        ({"data_creation_instruction": 42}, "must be a string"),
        ({"data_creation_instruction": "a\ud800b"}, "not valid unicode text"),
        ({"include_passage": "no"}, "include_passage must be true or false, got 'no'"),
        ({"include_passage": 1}, "include_passage must be true or false, got 1"),
        ({"include_passage": None}, "include_passage must be true or false, got null"),
        ({"data_creation_instruction": "", "include_passage": False}, "nothing to train on"),
    ],
)
def test_template_fields_are_checked_in_every_form(change: dict, message: str) -> None:
    raw = {"data_creation_instruction": "List facts.", "include_passage": True, **change}
    for form, action in _forms(raw).items():
        if form == "json" and "\ud800" in str(change):
            continue  # JSON text carries it as an escape; the dict forms carry it raw
        with pytest.raises(TemplateError, match=re.escape(message)):
            parse_template(action)


def test_templates_are_frozen_and_a_subclass_gains_nothing() -> None:
    template = Template("List facts.")
    with pytest.raises(dataclasses.FrozenInstanceError):
        template.hyperparameters.lora_rank = 300  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        template.include_passage = "no"  # type: ignore[misc]

    class Sneaky(Template):
        @property
        def trains(self) -> bool:
            return False

    parsed, _ = parse_template(Sneaky("List facts."))
    assert type(parsed) is Template and parsed.trains


def test_constructors_check_types() -> None:
    with pytest.raises(TemplateError, match="must be a Hyperparameters object, got dict"):
        Template("x", {"lora_rank": 8})  # type: ignore[arg-type]
    with pytest.raises(TemplateError, match="include_passage must be true or false"):
        Template("x", include_passage="yes")  # type: ignore[arg-type]
    with pytest.raises(TemplateError, match="name must be a string"):
        Template("x", name=5)  # type: ignore[arg-type]
    with pytest.raises(TemplateError, match="keep it under 200"):
        Template("x", name="n" * 201)
    with pytest.raises(TemplateError, match="name is not valid unicode"):
        Template("x", name="a\udfffb")
    # Text is a wire tolerance (LLMs quote numbers); in Python a string is a bug.
    with pytest.raises(TemplateError, match="lora_rank must be a number, got the text '8'"):
        Hyperparameters(lora_rank="8")  # type: ignore[arg-type]
    assert Hyperparameters.from_dict({"lora_rank": "8"})[0].lora_rank == 8
    with pytest.raises(ValueError, match="policy must be 'reject' or 'clamp'"):
        Hyperparameters.from_dict({}, policy="clmp")  # type: ignore[arg-type]


NUMPY_NUMBERS = [
    ("lora_rank", np.int64(8), 8),
    ("lora_rank", np.uint8(16), 16),
    ("lora_rank", np.float64(4.0), 4),
    ("num_epochs", np.int32(3), 3),
    ("learning_rate", np.float32(1e-3), float(np.float32(1e-3))),
    ("lora_alpha", np.int16(64), 64.0),
    ("lora_dropout", np.float16(0.5), 0.5),
]


@pytest.mark.parametrize(("key", "value", "expected"), NUMPY_NUMBERS)
def test_numpy_scalars_are_the_numbers_they_hold_in_every_form(key: str, value: Any,
                                                               expected: float) -> None:
    hp = Hyperparameters(**{key: value})
    assert getattr(hp, key) == expected and type(getattr(hp, key)) is type(expected)
    assert hp == Hyperparameters(**{key: expected})
    json.dumps(hp.to_dict())  # a numpy scalar would not serialise
    raw = {"data_creation_instruction": "List facts.", "hyperparameters": {key: value}}
    for form, action in _forms(raw).items():
        template, _ = parse_template(action)
        assert getattr(template.hyperparameters, key) == expected, form
        assert type(getattr(template.hyperparameters, key)) is type(expected), form


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "must be a number, got the boolean True"),
        (np.bool_(False), "must be a number, got the boolean False"),
        (math.nan, "must be a finite number"),
        (np.float32("nan"), "must be a finite number"),
        (-math.inf, "must be a finite number"),
        (np.float64("inf"), "must be a finite number"),
        ("inf", "must be a finite number"),
        ("eight", "must be a number, got 'eight'"),
        ("x" * 10**6, "(1000000 characters)"),
        (None, "must be a number, got NoneType"),
        ([8], "must be a number, got list"),
        (np.array([8]), "must be a number, got ndarray"),
        (decimal.Decimal("8"), "must be a number, got Decimal"),
        (10**5000, "must be a finite number"),
        (np.complex64(8), "must be a number, got complex64"),
    ],
    ids=["bool", "np.bool_", "nan", "np.nan", "-inf", "np.inf", "text inf", "text", "1 MB text",
         "None", "list", "ndarray", "Decimal", "5000 digits", "complex"],
)
def test_non_numbers_are_rejected_with_a_short_message(value: Any, message: str) -> None:
    for policy in ("reject", "clamp"):
        with pytest.raises(TemplateError, match=re.escape(message)) as err:
            parse_template({"data_creation_instruction": "x",
                            "hyperparameters": {"lora_rank": value}}, policy=policy)
        assert len(str(err.value)) < 200


def test_huge_numbers_clamp_to_the_range() -> None:
    for value in (10**300, np.uint64(2**64 - 1), "1" * 100):
        template, report = parse_template({"data_creation_instruction": "x",
                                           "hyperparameters": {"lora_rank": value}},
                                          policy="clamp")
        assert template.hyperparameters.lora_rank == 256
        assert report["clamped"]["lora_rank"][1] == 256


# -- issue 13, item 8 (action side): what an action can put into the logs is capped -----------
def _log_line(report: dict[str, Any], template: Template) -> str:
    line = json.dumps({"validation": report, "template": template.to_dict()}, ensure_ascii=False)
    line.encode("utf-8")  # writable to a UTF-8 log: no lone surrogate survives
    return line


def test_many_and_long_ignored_keys_are_capped_and_reported() -> None:
    raw = {"data_creation_instruction": "x",
           **{f"key{i:04d}" + "k" * 500: i for i in range(1000)},
           "hyperparameters": {"z" * 10**5: 1, "momentum": 0.9}}
    template, report = parse_template(json.dumps(raw))
    kept = report["ignored_keys"]
    assert len(kept) == MAX_IGNORED_KEYS and all(len(k) <= MAX_KEY_CHARS for k in kept)
    assert kept[:2] == ["momentum", "z" * MAX_KEY_CHARS]  # hyperparameters' keys first
    assert report["truncated"] == [
        f"ignored_keys: {MAX_IGNORED_KEYS} of 1002 kept, {MAX_IGNORED_KEYS - 1} cut to"
        f" {MAX_KEY_CHARS} characters"]
    assert len(_log_line(report, template)) < 10_000


@pytest.mark.parametrize("form", ["json", "dict", "altered Template"])
def test_a_long_name_is_cut_and_reported(form: str) -> None:
    raw = {"data_creation_instruction": "x", "name": "n" * 900_000}
    template, report = parse_template(_forms(raw)[form])
    assert template.name == "n" * MAX_NAME_CHARS
    assert report["truncated"] == [f"name: cut from 900000 to {MAX_NAME_CHARS} characters"]
    assert len(_log_line(report, template)) < 2_000


def test_odd_keys_and_names_stay_short_and_writable() -> None:
    raw = {"data_creation_instruction": "x", 10**5000: 1, ("a",) * 10**5: 2, 3.5: 3,
           "bad\ud800key": 4, "name": ["not", "a", "string"]}
    template, report = parse_template(raw)
    assert report["ignored_keys"] == ["3.5", "<int>", "<tuple>", "bad\\ud800key", "name"]
    assert template.name is None
    _log_line(report, template)
    named, _ = parse_template({"data_creation_instruction": "x", "name": "a\ud800b"})
    assert named.name == "a\\ud800b"
    _log_line({}, named)


def test_reports_have_the_same_keys_in_every_form() -> None:
    raw = {"data_creation_instruction": "x", "hyperparameters": {"lora_rank": 8}}
    for action in _forms(raw).values():
        _, report = parse_template(action)
        assert set(report) == {"defaults_used", "ignored_keys", "clamped", "truncated"}
        assert report["ignored_keys"] == [] and report["truncated"] == []
