"""Completions become bounded training sequences, whatever shape the model wrote."""

from __future__ import annotations

import pytest

from selfedit.envs.parsing import parse_self_edit, parse_sequences
from selfedit.envs.templates import TemplateError


def test_json_objects_become_text() -> None:
    text = '```json\n[{"question": "Who built it?", "answer": "Ada Voss"}]\n```'
    assert parse_sequences(text) == ["Who built it? Ada Voss"]


def test_bullets_and_short_items() -> None:
    text = "- The tower is 40 metres tall.\n* It was painted blue in 1902.\n- ok"
    assert parse_sequences(text) == ["The tower is 40 metres tall.", "It was painted blue in 1902."]


def test_counts_and_lengths_are_bounded() -> None:
    text = "\n".join(f"Fact number {i} is here." for i in range(100_000))
    out = parse_sequences(text, max_sequences=64)
    assert len(out) == 64
    assert len(parse_sequences("word " * 10_000, max_chars=500)[0]) == 500


def test_empty_and_garbage() -> None:
    assert parse_sequences("") == []
    assert parse_sequences("<think>long thoughts</think>") == []
    assert parse_sequences("\x00\x01 ok") == []


@pytest.mark.parametrize("bad", ['{"hyperparameters": {}}', "[1, 2]", '["", "  "]', 42])
def test_bad_self_edits(bad: object) -> None:
    with pytest.raises(TemplateError):
        parse_self_edit(bad)


def test_self_edit_as_list_and_text() -> None:
    assert parse_self_edit(["A fact.", " "]) == (["A fact."], None)
    assert parse_self_edit('Training data: ["One.", "Two."]') == (["One.", "Two."], None)


def test_a_json_list_decides_even_when_no_item_survives() -> None:
    # The model wrote a JSON list: its items are the candidates, the prose around it is not.
    assert parse_sequences('Facts: ["ok", "no"]\nThe bridge is red and tall.') == []
    assert parse_sequences("[not json] The bridge is red and tall.") == [
        "[not json] The bridge is red and tall."]


def test_items_are_cleaned_once_and_counted_with_a_bounded_split() -> None:
    text = "1. " + "word " * 200_000 + "\n2. ok"
    out = parse_sequences(text, max_chars=100)
    assert len(out) == 1 and len(out[0]) == 100 and out[0].startswith("word")
    assert parse_sequences("a b c", min_words=3) == ["a b c"]
    assert parse_sequences("a b", min_words=3) == []
    assert parse_sequences("a", min_words=0) == ["a"]


def test_blank_line_split_is_linear_on_whitespace_without_a_second_newline() -> None:
    text = ("\n" + " " * 1000 + "x") * 1000  # each newline starts a failed blank-line match
    assert parse_sequences(text) == []
    assert parse_sequences("\n" + " " * 10**5 + "The bridge is red.") == ["The bridge is red."]


@pytest.mark.parametrize(
    "action",
    [
        {"sequences": ["A fact."], "hyperparameters": {"num_epochs": 2}},
        '{"sequences": ["A fact."], "hyperparameters": {"num_epochs": 2}}',
        '<think>{"sequences": ["no"]}</think> ```json\n{"sequences": ["A fact."],'
        ' "hyperparameters": {"num_epochs": 2}}\n```',
    ],
)
def test_self_edit_forms_agree(action: object) -> None:
    assert parse_self_edit(action) == (["A fact."], {"num_epochs": 2})


def test_self_edit_hyperparameters_are_returned_raw_for_validation() -> None:
    from selfedit.envs.templates import Hyperparameters

    hp = Hyperparameters(num_epochs=2)
    object.__setattr__(hp, "lora_rank", 300)
    sequences, raw = parse_self_edit({"sequences": ["A fact."], "hyperparameters": hp})
    assert raw is hp  # validated by Hyperparameters.from_dict, like a dict from JSON
    with pytest.raises(TemplateError, match="lora_rank must be between 1 and 256, got 300"):
        Hyperparameters.from_dict(raw)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"sequences": "A fact."}, "must be a list of strings, got str"),
        ({"sequences": [b"bytes"]}, "got a bytes item"),
        ('{"sequences": ["A", 1]}', "got a int item"),
        ("no json here", "no JSON object or list found"),
        ("[" * 10**5, "no JSON object or list found"),
    ],
)
def test_bad_self_edits_say_what_is_wrong(bad: object, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        parse_self_edit(bad)
