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
