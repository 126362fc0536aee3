"""Turn a model's completion of a data-creation instruction into training sequences.

Instruction-tuned models are asked for a JSON list, but small ones rarely comply: they write
numbered lists, bullets, "Q:/A:" blocks or plain paragraphs. The parser takes the first JSON
list it finds and otherwise splits on the structure the text has, so every reply yields
something trainable. Counts and lengths are bounded here, before any training starts, and so
is the work: text is cut (completions) or refused (self-edit actions) past
:data:`~selfedit.envs.templates.MAX_ACTION_CHARS`, and at most :data:`MAX_ITEMS_EXAMINED`
items are looked at (issue 13, item 1).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from itertools import chain, islice

from selfedit.envs.templates import MAX_ACTION_CHARS, TemplateError, extract_json, strip_think

__all__ = ["MAX_ITEMS_EXAMINED", "MAX_SELF_EDIT_SEQUENCES", "parse_self_edit", "parse_sequences"]

# Items of a completion looked at before giving up on finding max_sequences good ones: a
# 100,000-line reply of one-word lines must not cost 100,000 regex calls.
MAX_ITEMS_EXAMINED = 10_000
# Sequences a self-edit action may hold. The env keeps max_sequences (64 by default) and says
# so in info['budget']; far more than that is not a self-edit but padding, refused at once.
MAX_SELF_EDIT_SEQUENCES = 4096

_MARKER = re.compile(r"^\s*+(?:[-*\u2022]|\(?\d{1,3}[.):]|[a-zA-Z][.)])\s+")
_BLANK = re.compile(r"\n\s*\n")  # linear: a failed match backtracks one whitespace run


def _clean(item: object) -> str:
    if isinstance(item, dict):  # {"question": ..., "answer": ...} -> "question answer"
        item = " ".join(str(v) for v in item.values())
    elif isinstance(item, (list, tuple)):
        item = " ".join(str(v) for v in item)
    return _MARKER.sub("", str(item).strip(), count=1).strip()


def _items(text: str) -> Iterator[str]:
    """Items separated by blank lines, if there is more than one; else one item per line."""
    blocks = (b for b in _BLANK.split(text) if b.strip())
    first = list(islice(blocks, 2))
    if len(first) > 1:
        return chain(first, blocks)
    return (ln for ln in text.splitlines() if ln.strip())


def _has_words(item: str, n: int) -> bool:
    # split with a bound: a megabyte item is not split into every word just to count three.
    return len(item.split(None, n)) >= n


def _first_good(
    items: Iterable[object], *, max_sequences: int, max_chars: int, min_words: int
) -> list[str]:
    out: list[str] = []
    for item in islice(items, MAX_ITEMS_EXAMINED):
        text = _clean(item)
        if not _has_words(text, min_words):
            continue
        out.append(text[:max_chars])
        if len(out) >= max_sequences:
            break
    return out


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
    words are dropped, longer than ``max_chars`` characters are cut. A completion longer
    than ``MAX_ACTION_CHARS`` is cut to it first, and at most ``MAX_ITEMS_EXAMINED`` items
    are looked at.

    >>> parse_sequences('Sure: ["The bridge is red.", "It opened in 1901."]')
    ['The bridge is red.', 'It opened in 1901.']
    >>> parse_sequences("1. The bridge is red.\\n2. It opened in 1901.\\n3. ok")
    ['The bridge is red.', 'It opened in 1901.']
    >>> parse_sequences("Q: Who built it?\\nA: Ada Voss.\\n\\nQ: When?\\nA: In 1901.")
    ['Q: Who built it?\\nA: Ada Voss.', 'Q: When?\\nA: In 1901.']
    """
    text = strip_think((completion or "")[:MAX_ACTION_CHARS]).strip()
    limits = {"max_sequences": max_sequences, "max_chars": max_chars, "min_words": min_words}
    if "[" in text:
        try:
            items = extract_json(text, want=list)
        except TemplateError:
            items = []
        if items:  # the model wrote a JSON list: its items are the sequences, or none are
            return _first_good(items, **limits)
    return _first_good(_items(text), **limits)


def _sequences(items: list[object] | tuple[object, ...]) -> Iterator[str]:
    for s in items:
        if not isinstance(s, str):
            raise TemplateError(
                f"self-edit sequences must be a list of strings, got a {type(s).__name__} item"
            )
        s = s.strip()
        if s:
            yield s


def parse_self_edit(action: object) -> tuple[list[str], dict | None]:
    """Parse a raw self-edit (SEAL's action): training sequences and optional hyperparameters.

    Accepts a list (or tuple) of strings, a mapping ``{"sequences": [...], "hyperparameters":
    {...}}``, or text holding either as JSON (an object is preferred to a list when the text
    holds both). Text longer than ``MAX_ACTION_CHARS`` is refused, and so are more than
    ``MAX_SELF_EDIT_SEQUENCES`` sequences or more than ``MAX_ACTION_CHARS`` characters of
    them in any form. The hyperparameters are returned raw: validate them with
    :meth:`~selfedit.envs.templates.Hyperparameters.from_dict` (the env does).

    >>> parse_self_edit('{"sequences": ["A fact about it."], "hyperparameters": {"num_epochs": 2}}')
    (['A fact about it.'], {'num_epochs': 2})
    """
    if isinstance(action, str):
        action = extract_json(action, want=(dict, list))
    hp = None
    if isinstance(action, dict):
        if "sequences" not in action:
            raise TemplateError("a self-edit object needs a 'sequences' list of strings")
        hp = action.get("hyperparameters")
        action = action["sequences"]
    if not isinstance(action, (list, tuple)):
        raise TemplateError(
            f"self-edit sequences must be a list of strings, got {type(action).__name__}"
        )
    if len(action) > MAX_SELF_EDIT_SEQUENCES:
        raise TemplateError(
            f"the self-edit has {len(action):,} sequences; send at most"
            f" {MAX_SELF_EDIT_SEQUENCES:,} (the env trains on max_sequences of them)"
        )
    sequences = list(_sequences(action))
    total = sum(len(s) for s in sequences)
    if total > MAX_ACTION_CHARS:
        raise TemplateError(
            f"the self-edit sequences hold {total:,} characters; the limit is"
            f" {MAX_ACTION_CHARS:,} (MAX_ACTION_CHARS)"
        )
    if not sequences:
        raise TemplateError("the self-edit has no non-empty training sequence")
    return sequences, hp
