"""Passages and the questions asked about them, loaded from three data formats.

The environment teaches a model one passage, then quizzes it. Whatever the data looks like
on disk, it becomes the same records: a :class:`Corpus` of :class:`Passage` objects, each
holding its :class:`Question` objects with every gold answer (the first one canonical).

Accepted sources (see :func:`load_corpus`):

* ``"embedded"``: the records file shipped at ``envs/data/corpus.json``.
* a ``.json`` file in *records* format, a list of
  ``{"title", "context", "questions": [{"question", "answer"}]}`` where ``"answer"`` may be a
  string or a list of strings and may be spelled ``"answers"`` (SEAL's regrouped SQuAD). A
  record may also carry ``"split": "<name>"``; the corpus then has named splits (the embedded
  corpus has ``tune`` and ``heldout``), which :meth:`Corpus.select` takes by name.
* a ``.json`` file in the official SQuAD v1.1/v2.0 format,
  ``{"version", "data": [{"title", "paragraphs": [{"context", "qas": [...]}]}]}``.
* a directory written by ``datasets.Dataset.save_to_disk`` (or a ``DatasetDict``) with
  SQuAD-shaped rows, one question per row.
* ``"hf:<id>[:<split>]"``: a Hugging Face Hub dataset with SQuAD-shaped rows.

Questions without an answer (SQuAD v2's unanswerable ones) are dropped, then passages left
without questions; a source that leaves nothing raises ``ValueError`` rather than yielding an
empty corpus.

Example:
    >>> q = Question("Who won?", ("Denver Broncos", "the Broncos"))
    >>> p = Passage("demo:0", "Super Bowl 50", "The Denver Broncos won.", (q,))
    >>> corpus = Corpus([p], name="demo")
    >>> len(corpus), corpus[0].questions[0].answer, len(p.fingerprint)
    (1, 'Denver Broncos', 16)
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, overload

__all__ = [
    "ACCEPTED_FORMATS",
    "EMBEDDED_PATH",
    "Corpus",
    "Passage",
    "Question",
    "SelectSpec",
    "load_corpus",
    "load_hf_dataset",
    "load_records",
    "load_squad_json",
]

EMBEDDED_PATH: Path = Path(__file__).parent / "data" / "corpus.json"
"""The records file that ``load_corpus("embedded")`` reads."""

ACCEPTED_FORMATS: str = (
    '"embedded"; a .json file holding either a list of records '
    '{"title", "context", "questions": [{"question", "answer"}]} or the official SQuAD '
    'format {"version", "data": [{"title", "paragraphs": [...]}]}; a directory written by '
    'datasets\' save_to_disk with SQuAD-shaped rows; or "hf:<dataset id>[:<split>]"'
)
"""Human-readable list of the sources :func:`load_corpus` understands, used in errors."""

SelectSpec = str | slice | Sequence[int] | None
"""What :meth:`Corpus.select` takes: ``"start:stop"``, ``"i"``, a split name such as
``"heldout"`` or ``"heldout[0:12]"``, a slice, indices, or None."""

_SPLIT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
# "heldout" or "heldout[0:12]"; what is inside the brackets is parsed like any selection.
_SPLIT_SPEC = re.compile(r"([A-Za-z_][A-Za-z0-9_-]*)(?:\[([^\[\]]*)\])?")
_SPLIT_NAME_RULE = "a letter or '_', then letters, digits, '_' or '-' (like 'tune' or 'heldout')"


@dataclass(frozen=True)
class Question:
    """One question about a passage with all of its gold answers.

    Attributes:
        question: The question text.
        answers: Every distinct gold answer, in source order; the first is canonical.

    Raises:
        ValueError: If ``answers`` is empty or holds anything but non-empty strings.
    """

    question: str
    answers: tuple[str, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.question, str) or not self.question.strip():
            raise ValueError(f"Question text must be a non-empty string, got {self.question!r}")
        if isinstance(self.answers, str):
            raise ValueError(
                f"Question.answers must be a tuple of strings, got the bare string "
                f"{self.answers!r}; wrap it as ({self.answers!r},)"
            )
        answers = tuple(self.answers)
        if not answers or not all(isinstance(a, str) and a.strip() for a in answers):
            raise ValueError(
                f"Question {self.question!r} needs at least one non-empty string answer, "
                f"got {answers!r}; drop unanswerable questions before building a Question"
            )
        # Accept any sequence but store a tuple so the record stays hashable.
        object.__setattr__(self, "answers", answers)

    @property
    def answer(self) -> str:
        """The canonical (first) gold answer."""
        return self.answers[0]


@dataclass(frozen=True)
class Passage:
    """A passage to teach the model, with the questions that test it.

    Attributes:
        id: Identifier unique within its corpus, ``"<corpus name>:<source index>"`` for
            passages made by the loaders.
        title: Title of the article the passage comes from ("" when unknown).
        context: The passage text.
        questions: The answerable questions about the passage, at least one.

    Raises:
        ValueError: If ``questions`` is empty or holds something other than Questions.
    """

    id: str
    title: str
    context: str
    questions: tuple[Question, ...]

    def __post_init__(self) -> None:
        questions = tuple(self.questions)
        if not questions:
            raise ValueError(f"Passage {self.id!r} has no questions; every passage needs one")
        for q in questions:
            if not isinstance(q, Question):
                raise ValueError(
                    f"Passage {self.id!r}: questions must be Question objects, got {type(q)}"
                )
        object.__setattr__(self, "questions", questions)

    @property
    def fingerprint(self) -> str:
        """A 16-hex-digit sha256 of title, context and questions, for use as a cache key.

        The id is left out on purpose: the same text loaded from another format or under
        another corpus name should hit the same cache entry.

        Example:
            >>> p = Passage("a:0", "T", "C", (Question("Q?", ("A",)),))
            >>> p.fingerprint == Passage("b:9", "T", "C", p.questions).fingerprint
            True
        """
        payload = {
            "title": self.title,
            "context": self.context,
            "questions": [[q.question, list(q.answers)] for q in self.questions],
        }
        blob = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]

    def grader_keywords(self) -> dict[str, Any]:
        """What the env hands every grader about this passage (the Grader protocol of
        :mod:`selfedit.envs.grading`): ``questions``, ``title``, ``context`` and
        ``passage_golds``, every question's golds, which is also the graders' ``golds``
        argument when all the passage's questions are graded.

        Example:
            >>> p = Passage("a:0", "T", "C", (Question("Q?", ("A", "a")),))
            >>> p.grader_keywords()["passage_golds"], p.grader_keywords()["questions"]
            ([['A', 'a']], ['Q?'])
        """
        return {
            "questions": [q.question for q in self.questions],
            "title": self.title,
            "context": self.context,
            "passage_golds": [list(q.answers) for q in self.questions],
        }

    def grade_all(self, answers: Sequence[str]) -> dict[str, list[float]]:
        """Every cheap grader's verdicts on answers to this passage's questions, each grader
        handed :meth:`grader_keywords` (:func:`selfedit.envs.grading.grade_all`).

        Example:
            >>> p = Passage("a:0", "T", "C", (Question("Q?", ("Ann",)),))
            >>> p.grade_all(["Ann"])["committed"]
            [1.0]
        """
        from selfedit.envs import grading

        keywords = self.grader_keywords()
        return grading.grade_all(list(answers), keywords["passage_golds"], **keywords)


class Corpus(Sequence[Passage]):
    """An ordered, named, read-only collection of passages.

    Args:
        passages: The passages, in order; ids must be unique.
        name: A short name for logs and for the ids the loaders give passages.
        splits: Named subsets, each the ids of its passages in order (e.g. ``{"tune": [...],
            "heldout": [...]}``); :meth:`select` takes the names. Splits may leave passages
            out; the loaders make them disjoint.

    Raises:
        ValueError: If ``passages`` is empty, two passages share an id, or a split has a bad
            name or names a passage the corpus does not hold.

    Example:
        >>> qs = (Question("Q?", ("A",)),)
        >>> ps = [Passage(f"d:{i}", "T", f"text {i}", qs) for i in range(5)]
        >>> c = Corpus(ps, name="d", splits={"tune": ["d:0", "d:1"], "heldout": ["d:3", "d:4"]})
        >>> [p.id for p in c.select("1:3")], c.by_id("d:4").context
        (['d:1', 'd:2'], 'text 4')
        >>> [p.id for p in c.select("heldout")], [p.id for p in c.select("heldout[1:]")]
        (['d:3', 'd:4'], ['d:4'])
    """

    def __init__(
        self,
        passages: Iterable[Passage],
        name: str,
        splits: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.name: str = name
        self._passages: tuple[Passage, ...] = tuple(passages)
        if not self._passages:
            raise ValueError(
                f"Corpus {name!r} would be empty; give at least one passage with an "
                f"answered question"
            )
        self._positions: dict[str, int] = {}
        for position, passage in enumerate(self._passages):
            if passage.id in self._positions:
                raise ValueError(
                    f"Corpus {name!r}: passages {self._positions[passage.id]} and {position} "
                    f"share the id {passage.id!r}; ids must be unique"
                )
            self._positions[passage.id] = position
        self._splits: dict[str, tuple[str, ...]] = {}
        for split_name, ids in (splits or {}).items():
            self._splits[split_name] = self._check_split(split_name, ids)

    def _check_split(self, split_name: Any, ids: Any) -> tuple[str, ...]:
        """Validates one split given to ``__init__`` and returns its ids as a tuple."""
        if not isinstance(split_name, str) or not _SPLIT_NAME.fullmatch(split_name):
            raise ValueError(
                f"Corpus {self.name!r}: split name {split_name!r} must be {_SPLIT_NAME_RULE}"
            )
        if isinstance(ids, str) or not isinstance(ids, Iterable):
            raise ValueError(
                f"Corpus {self.name!r}: split {split_name!r} must be a list of passage ids, "
                f"got {type(ids).__name__}"
            )
        members = tuple(ids)
        unknown = [pid for pid in members if pid not in self._positions]
        if unknown:
            raise ValueError(
                f"Corpus {self.name!r}: split {split_name!r} names passages the corpus does "
                f"not hold: {unknown[:3]}"
            )
        if len(set(members)) != len(members):
            raise ValueError(
                f"Corpus {self.name!r}: split {split_name!r} lists a passage twice; each "
                f"passage may appear once per split"
            )
        return members

    @property
    def passages(self) -> tuple[Passage, ...]:
        """The passages, in order."""
        return self._passages

    @property
    def splits(self) -> Mapping[str, tuple[str, ...]]:
        """The named splits: split name -> ids of its passages, in order (read-only).

        A corpus made by :meth:`select` keeps every split name, each narrowed to the
        passages it holds (possibly none).
        """
        return MappingProxyType(self._splits)

    @property
    def num_questions(self) -> int:
        """Total number of questions over all passages."""
        return sum(len(p.questions) for p in self._passages)

    def __len__(self) -> int:
        return len(self._passages)

    @overload
    def __getitem__(self, index: int) -> Passage: ...

    @overload
    def __getitem__(self, index: slice) -> Corpus: ...

    def __getitem__(self, index: int | slice) -> Passage | Corpus:
        """Returns the passage at ``index``, or a sub-corpus for a slice."""
        if isinstance(index, slice):
            return self.select(index)
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(
                f"Corpus indices must be int or slice, got {type(index).__name__}; "
                f"use by_id() to look a passage up by its id"
            )
        return self._passages[self._check_index(index)]

    def __iter__(self) -> Iterator[Passage]:
        return iter(self._passages)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Corpus):
            return NotImplemented
        return (
            self.name == other.name
            and self._passages == other._passages
            and self._splits == other._splits
        )

    __hash__ = None  # type: ignore[assignment]  # mutable name, like a list

    def __repr__(self) -> str:
        sizes = {k: len(v) for k, v in self._splits.items()}
        splits = f", splits={sizes}" if sizes else ""
        return (
            f"Corpus(name={self.name!r}, passages={len(self)}, "
            f"questions={self.num_questions}{splits})"
        )

    def by_id(self, pid: str) -> Passage:
        """Returns the passage whose id is ``pid``.

        Raises:
            KeyError: If no passage has that id.
        """
        try:
            return self._passages[self._positions[pid]]
        except KeyError:
            example = self._passages[0].id
            raise KeyError(
                f"Corpus {self.name!r} has no passage with id {pid!r} (ids look like {example!r})"
            ) from None

    def select(self, spec: SelectSpec) -> Corpus:
        """Returns a new corpus holding the passages that ``spec`` picks.

        Passages keep their ids, so a passage found in a selection can be looked up in
        the full corpus. Indices follow Python's rules (negatives count from the end), but
        unlike list slicing an out-of-range bound is an error, not silently clipped: asking
        for ``"0:500"`` of a 200-passage corpus is almost always a config mistake.

        Args:
            spec: ``None`` for all passages; a string ``"start:stop"`` (either bound may be
                left out) or ``"i"``; a split name such as ``"heldout"``, optionally with a
                selection inside it such as ``"heldout[0:12]"`` or ``"heldout[3]"``
                (positions count within the split); a ``slice``; or a sequence of int
                indices.

        Returns:
            A corpus named ``"<name>[<spec>]"`` (just ``name`` for ``None``;
            ``"<name>[<split>][<inner spec>]"`` for a selection inside a split). It keeps
            every split name, narrowed to the passages it holds.

        Raises:
            IndexError: If an index or bound lies outside the corpus (or the split); the
                message gives its size.
            ValueError: If the spec cannot be parsed, names an unknown split (the message
                lists the valid names), repeats an index, or selects nothing.
            TypeError: If the spec is of an unsupported type.
        """
        if spec is None:
            return Corpus(self._passages, name=self.name, splits=self._splits)
        if isinstance(spec, str) and _names_a_split(spec):
            return self._select_split(spec.strip())
        if isinstance(spec, str):
            label = spec.strip()
            picked = self._parse_spec_string(label)
        elif isinstance(spec, slice):
            label = _slice_label(spec)
            picked = self._slice_positions(spec)
        elif isinstance(spec, Sequence):
            picked = [self._check_index(i) for i in spec]
            label = ",".join(str(i) for i in spec)
        else:
            raise TypeError(
                f"select() takes 'start:stop', a slice, a list of ints or None; "
                f"got {type(spec).__name__}"
            )
        if not picked:
            raise ValueError(
                f"Selection {spec!r} of corpus {self.name!r} ({len(self)} passages) is empty; "
                f"pick at least one passage"
            )
        if len(set(picked)) != len(picked):
            raise ValueError(
                f"Selection {spec!r} of corpus {self.name!r} repeats an index; "
                f"each passage may be selected once"
            )
        return self._subset(picked, f"{self.name}[{label}]")

    def _subset(self, positions: Sequence[int], name: str) -> Corpus:
        """The passages at ``positions`` as a corpus that keeps the splits, narrowed."""
        chosen = [self._passages[i] for i in positions]
        kept = {p.id for p in chosen}
        splits = {k: [pid for pid in ids if pid in kept] for k, ids in self._splits.items()}
        return Corpus(chosen, name=name, splits=splits)

    def _select_split(self, text: str) -> Corpus:
        """Selects ``"<split>"`` or ``"<split>[<spec>]"``; ``<spec>`` counts within the split."""
        match = _SPLIT_SPEC.fullmatch(text)
        if match is None:
            raise ValueError(
                f"Cannot parse selection {text!r} for corpus {self.name!r}; write a split "
                f"name like 'heldout', a split and a range like 'heldout[0:12]', "
                f"'start:stop' like '0:20', or a single index like '7'"
            )
        split_name, inner = match.group(1), match.group(2)
        if split_name not in self._splits:
            if not self._splits:
                raise ValueError(
                    f"Corpus {self.name!r} has no named splits, so {text!r} cannot be "
                    f"selected; select passages by 'start:stop' like '0:20' or by a list of "
                    f"indices"
                )
            raise ValueError(
                f"Corpus {self.name!r} has no split named {split_name!r}; valid split "
                f"names: {', '.join(sorted(self._splits))} (or select by 'start:stop' or "
                f"a list of indices)"
            )
        ids = self._splits[split_name]
        if not ids:
            raise ValueError(
                f"Split {split_name!r} of corpus {self.name!r} holds none of its "
                f"{len(self)} passages; pick a split the selection overlaps"
            )
        part = self._subset([self._positions[pid] for pid in ids], f"{self.name}[{split_name}]")
        if inner is None:
            return part
        if _names_a_split(inner):
            raise ValueError(
                f"Cannot parse selection {text!r}: inside a split write positions such as "
                f"'{split_name}[0:12]' or '{split_name}[3]', not another split name"
            )
        return part.select(inner)

    def _check_index(self, index: Any) -> int:
        """Resolves an int index (negatives from the end) or raises a sized IndexError."""
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"passage indices must be ints, got {index!r}")
        size = len(self._passages)
        if not -size <= index < size:
            raise IndexError(
                f"index {index} is out of range for corpus {self.name!r} with {size} "
                f"passages (valid: 0..{size - 1}, or -{size}..-1 from the end)"
            )
        return index % size

    def _parse_spec_string(self, text: str) -> list[int]:
        """Parses ``"start:stop[:step]"`` or ``"i"`` into positions."""
        parts = text.split(":")
        try:
            values = [int(p) if p.strip() else None for p in parts]
        except ValueError:
            raise ValueError(
                f"Cannot parse selection {text!r} for corpus {self.name!r}; write "
                f"'start:stop' like '0:20' (bounds optional), or a single index like '7'"
            ) from None
        if len(values) == 1:
            if values[0] is None:
                raise ValueError(
                    f"Empty selection string for corpus {self.name!r}; pass None to select "
                    f"every passage, or write 'start:stop' like '0:20'"
                )
            return [self._check_index(values[0])]
        if len(values) > 3:
            raise ValueError(
                f"Cannot parse selection {text!r} for corpus {self.name!r}; write "
                f"'start:stop' or 'start:stop:step'"
            )
        return self._slice_positions(slice(*values))

    def _slice_positions(self, spec: slice) -> list[int]:
        """Positions a slice picks, after checking that its bounds lie inside the corpus."""
        size = len(self._passages)
        for bound in (spec.start, spec.stop):
            if bound is None:
                continue
            if isinstance(bound, bool) or not isinstance(bound, int):
                raise TypeError(f"slice bounds must be ints, got {bound!r}")
            if not -size <= bound <= size:
                raise IndexError(
                    f"slice bound {bound} in {_slice_label(spec)!r} is out of range for "
                    f"corpus {self.name!r} with {size} passages (bounds go from 0 to {size})"
                )
        if spec.step == 0:
            raise ValueError("slice step cannot be zero")
        return list(range(size))[spec]


def _names_a_split(text: str) -> bool:
    """Tells a split selection (it starts like a name) from a position one ("0:20", "-3")."""
    head = text.strip()[:1]
    return head.isalpha() or head == "_"


def _slice_label(spec: slice) -> str:
    """Writes a slice back as ``"start:stop[:step]"``."""
    parts = ["" if v is None else str(v) for v in (spec.start, spec.stop)]
    if spec.step is not None:
        parts.append(str(spec.step))
    return ":".join(parts)


# --------------------------------------------------------------------------------------
# Parsing helpers shared by the loaders.


def _answer_texts(value: Any, where: str) -> tuple[str, ...]:
    """Normalises the answer shapes found in the wild to distinct texts in source order.

    Accepts a string, a list of strings, SQuAD's list of ``{"text", "answer_start"}``
    dicts, or Hugging Face's ``{"text": [...], "answer_start": [...]}``. ``None`` and
    blank strings count as "no answer" and are dropped.
    """
    if value is None:
        return ()
    if isinstance(value, str):
        items: list[Any] = [value]
    elif isinstance(value, Mapping):
        if "text" not in value:
            raise ValueError(
                f"{where}: answers given as a mapping need a 'text' key "
                f"(Hugging Face SQuAD shape), got keys {sorted(value)}"
            )
        text = value["text"]
        items = [text] if isinstance(text, str) else list(text)
    elif isinstance(value, Sequence):
        items = list(value)
    else:
        raise ValueError(
            f"{where}: an answer must be a string or a list of strings, got {type(value).__name__}"
        )
    texts: list[str] = []
    for item in items:
        if isinstance(item, Mapping):
            if "text" not in item:
                raise ValueError(
                    f"{where}: answer objects need a 'text' key, got keys {sorted(item)}"
                )
            item = item["text"]
        if not isinstance(item, str):
            raise ValueError(
                f"{where}: answers must be strings, got {type(item).__name__} ({item!r})"
            )
        if item.strip() and item not in texts:
            texts.append(item)
    return tuple(texts)


def _require(mapping: Any, key: str, where: str, what: str) -> Any:
    """Returns ``mapping[key]`` or raises a ValueError naming the place and the key."""
    if not isinstance(mapping, Mapping):
        raise ValueError(f"{where} must be a JSON object ({what}), got {type(mapping).__name__}")
    if key not in mapping:
        raise ValueError(
            f"{where} is missing the key {key!r} (expected {what}; has keys {sorted(mapping)})"
        )
    return mapping[key]


def _require_str(mapping: Any, key: str, where: str, what: str) -> str:
    value = _require(mapping, key, where, what)
    if not isinstance(value, str):
        raise ValueError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    return value


def _require_list(mapping: Any, key: str, where: str, what: str) -> list[Any]:
    value = _require(mapping, key, where, what)
    if not isinstance(value, list):
        raise ValueError(f"{where}: {key!r} must be a list, got {type(value).__name__}")
    return value


def _make_corpus(
    passages: list[Passage],
    name: str,
    source: str,
    splits: Mapping[str, Sequence[str]] | None = None,
) -> Corpus:
    """Builds the corpus, refusing to hand back an empty one."""
    if not passages:
        raise ValueError(
            f"{source} has no passage with an answered question; nothing to teach. "
            f"Check that questions carry non-empty answers"
        )
    return Corpus(passages, name=name, splits=splits)


def _read_json(path: str | Path) -> tuple[Any, Path]:
    """Reads a JSON file, turning a missing or unparsable file into a helpful error."""
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        kind = "is a directory, not a file" if resolved.is_dir() else "does not exist"
        raise FileNotFoundError(
            f"Corpus file {str(resolved)!r} {kind}. Accepted sources: {ACCEPTED_FORMATS}"
        )
    try:
        with resolved.open(encoding="utf-8") as handle:
            return json.load(handle), resolved
    except json.JSONDecodeError as err:
        raise ValueError(
            f"Corpus file {str(resolved)!r} is not valid JSON (line {err.lineno}, column "
            f"{err.colno}: {err.msg}). Accepted sources: {ACCEPTED_FORMATS}"
        ) from err
    except UnicodeDecodeError as err:
        raise ValueError(
            f"Corpus file {str(resolved)!r} is not UTF-8 text (byte {err.start}: {err.reason});"
            f" save it as UTF-8 JSON. Accepted sources: {ACCEPTED_FORMATS}"
        ) from None
    except RecursionError:
        # Python's JSON parser recurses once per nesting level; a hostile or corrupt file
        # nested deeper than the interpreter's limit would otherwise end in a traceback
        # (issue 13, item 5). Both corpus formats need at most 9 levels.
        raise ValueError(
            f"Corpus file {str(resolved)!r} is nested deeper than Python's JSON parser allows "
            f"(about {sys.getrecursionlimit()} levels) while a corpus needs at most 9, so it "
            f"is corrupt or not a corpus: give a records or official SQuAD JSON file instead"
        ) from None


def _records_corpus(data: Any, name: str, source: str) -> Corpus:
    """Builds a corpus from the records format already parsed from JSON."""
    if not isinstance(data, list):
        hint = (
            "; this looks like the official SQuAD format, use load_squad_json()"
            if isinstance(data, Mapping) and "data" in data
            else ""
        )
        raise ValueError(
            f"{source}: records format is a JSON list of "
            f'{{"title", "context", "questions"}} objects, got {type(data).__name__}{hint}'
        )
    what = '{"title", "context", "questions": [{"question", "answer"}]}'
    passages: list[Passage] = []
    splits: dict[str, list[str]] = {}  # split name -> passage ids, in first-seen order
    with_split: list[int] = []  # record indices that name a split, and those that do not
    without_split: list[int] = []
    for index, record in enumerate(data):
        where = f"{source}: record {index}"
        title = _require_str(record, "title", where, what)
        context = _require_str(record, "context", where, what)
        split = _record_split(record, where)
        (without_split if split is None else with_split).append(index)
        raw_questions = _require_list(record, "questions", where, what)
        questions: list[Question] = []
        for q_index, raw in enumerate(raw_questions):
            q_where = f"{where}, question {q_index}"
            q_what = '{"question", "answer"} (or "answers")'
            text = _require_str(raw, "question", q_where, q_what)
            if "answer" in raw:
                value = raw["answer"]
            else:
                value = _require(raw, "answers", q_where, q_what)
            answers = _answer_texts(value, q_where)
            if answers:
                questions.append(Question(text, answers))
        if questions:
            # The id keeps the source index, so it does not shift when passages are skipped.
            passages.append(Passage(f"{name}:{index}", title, context, tuple(questions)))
            if split is not None:
                splits.setdefault(split, []).append(passages[-1].id)
    if with_split and without_split:
        # Half-labelled data would leave passages in no split without anyone noticing.
        raise ValueError(
            f"{source}: record {with_split[0]} has a 'split' but record {without_split[0]} "
            f"has none; give every record a 'split' (like 'tune' or 'heldout') or none"
        )
    return _make_corpus(passages, name, source, splits)


def _record_split(record: Mapping[str, Any], where: str) -> str | None:
    """The record's optional ``"split"`` name, checked; None when it has none."""
    if "split" not in record:
        return None
    value = record["split"]
    if not isinstance(value, str) or not _SPLIT_NAME.fullmatch(value):
        raise ValueError(f"{where}: 'split' must be {_SPLIT_NAME_RULE}, got {value!r}")
    return value


def _squad_corpus(data: Any, name: str, source: str) -> Corpus:
    """Builds a corpus from the official SQuAD format already parsed from JSON."""
    if not isinstance(data, Mapping) or "data" not in data:
        hint = (
            "; this looks like records format, use load_records()" if isinstance(data, list) else ""
        )
        raise ValueError(
            f'{source}: official SQuAD format is an object with a "data" list of articles, '
            f"got {type(data).__name__}{hint}"
        )
    articles = data["data"]
    if not isinstance(articles, list):
        raise ValueError(f'{source}: "data" must be a list of articles')
    passages: list[Passage] = []
    paragraph_index = 0  # counts across articles, so ids stay unique
    for a_index, article in enumerate(articles):
        where = f"{source}: article {a_index}"
        title = _require_str(article, "title", where, '{"title", "paragraphs"}')
        paragraphs = _require_list(article, "paragraphs", where, '{"title", "paragraphs"}')
        for p_index, paragraph in enumerate(paragraphs):
            p_where = f"{where}, paragraph {p_index}"
            context = _require_str(paragraph, "context", p_where, '{"context", "qas"}')
            qas = _require_list(paragraph, "qas", p_where, '{"context", "qas"}')
            questions: list[Question] = []
            for q_index, qa in enumerate(qas):
                q_where = f"{p_where}, qa {q_index}"
                q_what = '{"id", "question", "answers"}'
                text = _require_str(qa, "question", q_where, q_what)
                answers = _answer_texts(_require(qa, "answers", q_where, q_what), q_where)
                if answers:
                    questions.append(Question(text, answers))
            if questions:
                passages.append(
                    Passage(f"{name}:{paragraph_index}", title, context, tuple(questions))
                )
            paragraph_index += 1
    return _make_corpus(passages, name, source)


# --------------------------------------------------------------------------------------
# Public loaders.


def load_records(path: str | Path, *, name: str | None = None) -> Corpus:
    """Loads a records-format JSON file.

    The file is a list of ``{"title", "context", "questions": [{"question", "answer"}]}``
    objects; ``"answer"`` may be a string or a list of strings, and may be spelled
    ``"answers"``. Records may carry ``"split": "<name>"`` (all of them or none): the
    corpus's :attr:`Corpus.splits` then maps each name to its passages, in file order.

    Args:
        path: The JSON file.
        name: Corpus name; defaults to the file's stem. Passage ids are
            ``f"{name}:{record index}"``.

    Returns:
        The corpus, with unanswered questions and question-less passages dropped.

    Raises:
        FileNotFoundError: If the file is missing; the message lists accepted formats.
        ValueError: If the JSON is malformed or nested too deep (the message names the
            record index and the missing key, or the file), a ``"split"`` is not a name or
            is given for only some records, or no passage has an answered question.
    """
    data, resolved = _read_json(path)
    return _records_corpus(data, name or resolved.stem, str(resolved))


def load_squad_json(path: str | Path, *, name: str | None = None) -> Corpus:
    """Loads a file in the official SQuAD v1.1 (or v2.0) JSON format.

    Each paragraph becomes one passage titled after its article; each question keeps all
    of its distinct answer texts in order. SQuAD v2's unanswerable questions have no
    answers and are dropped.

    Args:
        path: The JSON file, e.g. ``dev-v1.1.json``.
        name: Corpus name; defaults to the file's stem. Passage ids are
            ``f"{name}:{paragraph index}"``, counting paragraphs across articles.

    Returns:
        The corpus.

    Raises:
        FileNotFoundError: If the file is missing; the message lists accepted formats.
        ValueError: If the JSON is malformed (the message names the article, paragraph and
            missing key) or no paragraph has an answered question.
    """
    data, resolved = _read_json(path)
    return _squad_corpus(data, name or resolved.stem, str(resolved))


def load_hf_dataset(
    name_or_path: str | Path = "rajpurkar/squad",
    split: str = "validation",
    *,
    name: str | None = None,
) -> Corpus:
    """Loads SQuAD-shaped rows from the Hugging Face Hub or from a ``save_to_disk`` folder.

    Rows hold one question each (``id``, ``title``, ``context``, ``question``,
    ``answers={"text": [...], "answer_start": [...]}``); rows sharing a context are
    grouped into one passage, in the order contexts are first seen. ``title`` is optional.

    Args:
        name_or_path: A hub dataset id, or a local directory written by
            ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``.
        split: The split to read from a hub dataset or a saved ``DatasetDict``; ignored
            for a saved single ``Dataset``.
        name: Corpus name; defaults to ``"<id>:<split>"`` for the hub and the directory
            name for a local folder. Passage ids are ``f"{name}:{group index}"``.

    Returns:
        The corpus.

    Raises:
        KeyError: If a saved ``DatasetDict`` lacks ``split``; the message lists its splits.
        ValueError: If rows lack the ``context``, ``question`` or ``answers`` column, or no
            row has an answer.
    """
    import datasets  # deferred: importing datasets costs seconds and is often unneeded

    local = Path(name_or_path).expanduser()
    if local.is_dir():
        loaded = datasets.load_from_disk(str(local))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise KeyError(
                    f"Dataset folder {str(local)!r} has splits {sorted(loaded)}, not "
                    f"{split!r}; pass one of those as split"
                )
            loaded = loaded[split]
        source = f"dataset folder {str(local)!r}"
        default_name = local.resolve().name
    else:
        loaded = datasets.load_dataset(str(name_or_path), split=split)
        source = f"hub dataset {str(name_or_path)!r} (split {split!r})"
        default_name = f"{name_or_path}:{split}"
    return _rows_corpus(loaded, name or default_name, source)


def _rows_corpus(dataset: Any, name: str, source: str) -> Corpus:
    """Groups SQuAD-shaped rows (one question each) into passages by context."""
    columns = set(dataset.column_names)
    missing = [c for c in ("context", "question", "answers") if c not in columns]
    if missing:
        raise ValueError(
            f"{source} lacks the column(s) {missing}; SQuAD-shaped rows need 'context', "
            f"'question' and 'answers' (and optionally 'title'); it has {sorted(columns)}"
        )
    wanted = [c for c in ("title", "context", "question", "answers") if c in columns]
    # context -> (title, questions); dicts keep insertion order, which is first-seen order.
    groups: dict[str, tuple[str, list[Question]]] = {}
    row = 0
    for batch in dataset.select_columns(wanted).iter(batch_size=1000):
        titles = batch.get("title") or [""] * len(batch["context"])
        for title, context, question, answers in zip(
            titles, batch["context"], batch["question"], batch["answers"], strict=True
        ):
            where = f"{source}: row {row}"
            row += 1
            texts = _answer_texts(answers, where)
            group = groups.setdefault(context, (title or "", []))
            if texts:
                group[1].append(Question(question, texts))
    passages = [
        Passage(f"{name}:{index}", title, context, tuple(questions))
        for index, (context, (title, questions)) in enumerate(groups.items())
        if questions
    ]
    return _make_corpus(passages, name, source)


def load_corpus(source: str | Path) -> Corpus:
    """Loads a corpus from any accepted source, working out the format itself.

    Args:
        source: ``"embedded"`` (``envs/data/corpus.json``); a path to a ``.json`` file in
            records or official SQuAD format (told apart by whether the top level is a list
            or an object with ``"data"``); a directory written by ``save_to_disk``; or
            ``"hf:<dataset id>[:<split>]"`` for the hub (split defaults to validation).

    Returns:
        The corpus.

    Raises:
        FileNotFoundError: If the path does not exist; the message names it and lists the
            accepted formats.
        ValueError: If the file's contents are in neither JSON format or are malformed.
    """
    text = str(source).strip()
    if text == "embedded":
        return load_records(EMBEDDED_PATH, name="embedded")
    if text.startswith("hf:"):
        hub_id, _, split = text[len("hf:") :].partition(":")
        if not hub_id:
            raise ValueError(f"{text!r} names no dataset; write 'hf:rajpurkar/squad[:split]'")
        return load_hf_dataset(hub_id, split or "validation")
    path = Path(text).expanduser()
    if path.is_dir():
        return load_hf_dataset(path)
    if not path.exists():
        hint = ""
        if "/" in text and not text.startswith(("/", ".", "~")) and not text.endswith(".json"):
            hint = f" If you meant a hub dataset, write 'hf:{text}'."
        raise FileNotFoundError(
            f"Corpus source {str(path)!r} does not exist.{hint} Accepted sources: "
            f"{ACCEPTED_FORMATS}"
        )
    data, resolved = _read_json(path)
    if isinstance(data, list):
        return _records_corpus(data, resolved.stem, str(resolved))
    if isinstance(data, Mapping) and "data" in data:
        return _squad_corpus(data, resolved.stem, str(resolved))
    shape = "an object without a 'data' key" if isinstance(data, Mapping) else type(data).__name__
    raise ValueError(
        f"Cannot tell the format of {str(resolved)!r}: the top level is {shape}. "
        f"Accepted sources: {ACCEPTED_FORMATS}"
    )
