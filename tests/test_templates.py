"""Template parsing and validation: tolerant of LLM wrapping, strict about values."""

from __future__ import annotations

import math

import pytest

from selfedit.envs.templates import (
    HP_RANGES,
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
