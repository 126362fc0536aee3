"""Turn a model's completion of a data-creation instruction into training sequences.

Instruction-tuned models are asked for a JSON list, but small ones rarely comply: they write
numbered lists, bullets, "Q:/A:" blocks or plain paragraphs. The parser takes the first JSON
list it finds and otherwise splits on the structure the text has, so every reply yields
something trainable. Counts and lengths are bounded here, before any training starts.
"""

from __future__ import annotations

import json
import re

from selfedit.envs.templates import TemplateError, extract_json, strip_think

__all__ = ["parse_self_edit", "parse_sequences"]

_MARKER = re.compile(r"^\s*(?:[-*\u2022]|\(?\d{1,3}[.):]|[a-zA-Z][.)])\s+")
_BLANK = re.compile(r"\n\s*\n")


def _clean(item: object) -> str:
    if isinstance(item, dict):  # {"question": ..., "answer": ...} -> "question answer"
        item = " ".join(str(v) for v in item.values())
    elif isinstance(item, (list, tuple)):
        item = " ".join(str(v) for v in item)
    return _MARKER.sub("", str(item).strip()).strip()


def parse_sequences(
    completion: str,
    *,
    max_sequences: int = 64,
    max_chars: int = 2000,
    min_words: int = 3,
) -> list[str]:
    """Split a completion into at most ``max_sequences`` training sequences.

    Order of attempts: a JSON list of strings (or objects); items separated by blank
    lines; numbered or bulleted items; one item per line. Items shorter than ``min_words``
    words are dropped, longer than ``max_chars`` characters are cut.

    >>> parse_sequences('Sure: ["The bridge is red.", "It opened in 1901."]')
    ['The bridge is red.', 'It opened in 1901.']
    >>> parse_sequences("1. The bridge is red.\\n2. It opened in 1901.\\n3. ok")
    ['The bridge is red.', 'It opened in 1901.']
    >>> parse_sequences("Q: Who built it?\\nA: Ada Voss.\\n\\nQ: When?\\nA: In 1901.")
    ['Q: Who built it?\\nA: Ada Voss.', 'Q: When?\\nA: In 1901.']
    """
    text = strip_think(completion or "").strip()
    items: list[str] = []
    if "[" in text:
        try:
            items = [_clean(x) for x in extract_json(text, want=list)]
        except TemplateError:
            items = []
    if not items:
        blocks = [b for b in _BLANK.split(text) if b.strip()]
        if len(blocks) > 1:
            items = [_clean(b) for b in blocks]
        else:
            lines = [ln for ln in text.splitlines() if ln.strip()]
            items = [_clean(ln) for ln in lines]
    out = []
    for item in items:
        if len(item.split()) < min_words:
            continue
        out.append(item[:max_chars])
        if len(out) >= max_sequences:
            break
    return out


def parse_self_edit(action: object) -> tuple[list[str], dict | None]:
    """Parse a raw self-edit (SEAL's action): training sequences and optional hyperparameters.

    Accepts a list of strings, a dict ``{"sequences": [...], "hyperparameters": {...}}``, or
    text holding either as JSON.

    >>> parse_self_edit('{"sequences": ["A fact about it."], "hyperparameters": {"num_epochs": 2}}')
    (['A fact about it.'], {'num_epochs': 2})
    """
    if isinstance(action, str):
        stripped = strip_think(action).strip()
        try:
            action = json.loads(stripped)
        except json.JSONDecodeError:
            try:
                action = extract_json(stripped, want=dict)
            except TemplateError:
                action = extract_json(stripped, want=list)
    hp = None
    if isinstance(action, dict):
        if "sequences" not in action:
            raise TemplateError("a self-edit object needs a 'sequences' list of strings")
        hp = action.get("hyperparameters")
        action = action["sequences"]
    if not isinstance(action, list) or not all(isinstance(s, str) for s in action):
        raise TemplateError("self-edit sequences must be a list of strings")
    sequences = [s.strip() for s in action if s.strip()]
    if not sequences:
        raise TemplateError("the self-edit has no non-empty training sequence")
    return sequences, hp
