"""Tests for selfedit.envs.corpus: three formats in, the same records out."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from selfedit.envs import corpus as corpus_mod
from selfedit.envs.corpus import (
    EMBEDDED_PATH,
    Corpus,
    Passage,
    Question,
    load_corpus,
    load_hf_dataset,
    load_records,
    load_squad_json,
)

# /work/main/tests/test_corpus.py -> /work/shared/squad/...
REAL_SQUAD = (
    Path(__file__).resolve().parents[1].parent / "shared" / "squad" / "squad_v1.1_dev_seal.json"
)

needs_real_squad = pytest.mark.skipif(
    not REAL_SQUAD.is_file(), reason=f"real SQuAD records not found at {REAL_SQUAD}"
)

# Two passages of made-up text; the second question of passage 0 has two gold answers.
RECORDS: list[dict[str, Any]] = [
    {
        "title": "Broncos",
        "context": "The Denver Broncos won Super Bowl 50 at Levi's Stadium.",
        "questions": [
            {"question": "Who won Super Bowl 50?", "answer": "Denver Broncos"},
            {"question": "Where was it played?", "answer": ["Levi's Stadium", "Levi's"]},
        ],
    },
    {
        "title": "Warsaw",
        "context": "Warsaw is the capital of Poland.",
        "questions": [{"question": "What is Poland's capital?", "answers": ["Warsaw"]}],
    },
]


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def squad_official(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The same content as ``records`` in the official SQuAD v1.1 layout, one article each."""
    data = []
    for r_index, record in enumerate(records):
        qas = []
        for q_index, q in enumerate(record["questions"]):
            answers = q.get("answer", q.get("answers"))
            texts = [answers] if isinstance(answers, str) else answers
            qas.append(
                {
                    "id": f"q{r_index}-{q_index}",
                    "question": q["question"],
                    "answers": [
                        {"text": t, "answer_start": record["context"].find(t)} for t in texts
                    ],
                }
            )
        paragraph = {"context": record["context"], "qas": qas}
        data.append({"title": record["title"], "paragraphs": [paragraph]})
    return {"version": "1.1", "data": data}


def squad_rows(records: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """The same content as ``records`` as Hugging Face SQuAD columns, one row per question."""
    columns: dict[str, list[Any]] = {k: [] for k in ("id", "title", "context", "question")}
    columns["answers"] = []
    for r_index, record in enumerate(records):
        for q_index, q in enumerate(record["questions"]):
            answers = q.get("answer", q.get("answers"))
            texts = [answers] if isinstance(answers, str) else answers
            columns["id"].append(f"q{r_index}-{q_index}")
            columns["title"].append(record["title"])
            columns["context"].append(record["context"])
            columns["question"].append(q["question"])
            columns["answers"].append(
                {"text": texts, "answer_start": [record["context"].find(t) for t in texts]}
            )
    return columns


def contents(corpus: Corpus) -> list[tuple[str, str, tuple[Question, ...]]]:
    """What a passage says, without its id (ids depend on the corpus name)."""
    return [(p.title, p.context, p.questions) for p in corpus]


def make_corpus(n: int, name: str = "toy") -> Corpus:
    qs = (Question("Q?", ("A",)),)
    return Corpus([Passage(f"{name}:{i}", "T", f"text {i}", qs) for i in range(n)], name=name)


# ---------------------------------------------------------------- records format


def test_load_records_reads_answer_shapes_and_ids(tmp_path: Path) -> None:
    corpus = load_records(write_json(tmp_path / "toy.json", RECORDS))

    assert corpus.name == "toy"
    assert len(corpus) == 2 and corpus.num_questions == 3
    assert [p.id for p in corpus] == ["toy:0", "toy:1"]
    first = corpus[0]
    assert first.title == "Broncos"
    assert first.questions[0] == Question("Who won Super Bowl 50?", ("Denver Broncos",))
    assert first.questions[1].answers == ("Levi's Stadium", "Levi's")
    assert first.questions[1].answer == "Levi's Stadium"
    assert corpus[1].questions[0].answers == ("Warsaw",)  # the "answers" spelling
    assert corpus.by_id("toy:1") is corpus[1]
    assert corpus[-1] is corpus[1]


def test_load_records_skips_unanswered_questions_and_empty_passages(tmp_path: Path) -> None:
    records = [
        {
            "title": "A",
            "context": "no answers here",
            "questions": [
                {"question": "Q1?", "answer": ""},
                {"question": "Q2?", "answers": []},
            ],
        },
        {
            "title": "B",
            "context": "some answers",
            "questions": [
                {"question": "Q3?", "answer": None},
                {"question": "Q4?", "answer": ["", "yes", "yes"]},
            ],
        },
        {"title": "C", "context": "no questions", "questions": []},
    ]
    corpus = load_records(write_json(tmp_path / "sparse.json", records), name="sparse")

    assert len(corpus) == 1
    # Ids keep the source index even though record 0 was dropped.
    assert corpus[0].id == "sparse:1"
    assert corpus[0].questions == (Question("Q4?", ("yes",)),)


def test_load_records_refuses_to_return_an_empty_corpus(tmp_path: Path) -> None:
    records = [{"title": "A", "context": "c", "questions": [{"question": "Q?", "answer": ""}]}]
    with pytest.raises(ValueError, match="no passage with an answered question"):
        load_records(write_json(tmp_path / "empty.json", records))
    with pytest.raises(ValueError, match="no passage with an answered question"):
        load_records(write_json(tmp_path / "none.json", []))


@needs_real_squad
def test_load_records_on_real_squad_dev() -> None:
    corpus = load_records(REAL_SQUAD)

    assert len(corpus) == 2067
    assert corpus.num_questions == 10570
    assert corpus[0].title == "Super Bowl 50"
    assert corpus[0].questions[0].answers == ("Denver Broncos",)
    assert len({p.id for p in corpus}) == 2067
    assert load_corpus(str(REAL_SQUAD)) == corpus


@pytest.mark.skipif(not EMBEDDED_PATH.is_file(), reason=f"{EMBEDDED_PATH} not written yet")
def test_load_corpus_embedded() -> None:
    corpus = load_corpus("embedded")

    assert corpus.name == "embedded"
    assert len(corpus) > 0 and corpus.num_questions >= len(corpus)
    assert all(p.id.startswith("embedded:") for p in corpus)


# ---------------------------------------------------------------- official SQuAD format


def test_load_squad_json_one_passage_per_paragraph(tmp_path: Path) -> None:
    official = {
        "version": "1.1",
        "data": [
            {
                "title": "Art1",
                "paragraphs": [
                    {
                        "context": "Para one.",
                        "qas": [
                            {
                                "id": "a",
                                "question": "One?",
                                "answers": [
                                    {"text": "one", "answer_start": 5},
                                    {"text": "Para one", "answer_start": 0},
                                    {"text": "one", "answer_start": 5},
                                ],
                            },
                            {
                                "id": "b",
                                "question": "Unanswerable?",
                                "answers": [],
                                "is_impossible": True,
                            },
                        ],
                    },
                    {
                        "context": "Para two.",
                        "qas": [
                            {
                                "id": "c",
                                "question": "Two?",
                                "answers": [
                                    {"text": "two", "answer_start": 5},
                                ],
                            },
                        ],
                    },
                ],
            },
            {
                "title": "Art2",
                "paragraphs": [
                    {
                        "context": "Para three.",
                        "qas": [
                            {
                                "id": "d",
                                "question": "Three?",
                                "answers": [
                                    {"text": "three", "answer_start": 5},
                                ],
                            },
                        ],
                    },
                ],
            },
        ],
    }
    corpus = load_squad_json(write_json(tmp_path / "dev-v1.1.json", official))

    assert corpus.name == "dev-v1.1"
    assert [p.id for p in corpus] == ["dev-v1.1:0", "dev-v1.1:1", "dev-v1.1:2"]
    assert [p.title for p in corpus] == ["Art1", "Art1", "Art2"]
    assert [p.context for p in corpus] == ["Para one.", "Para two.", "Para three."]
    # Distinct answers kept in order; the unanswerable question is dropped.
    assert corpus[0].questions == (Question("One?", ("one", "Para one")),)
    assert corpus[2].questions[0].answers == ("three",)


def test_all_three_formats_give_the_same_records(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    records_path = write_json(tmp_path / "rec.json", RECORDS)
    official_path = write_json(tmp_path / "official.json", squad_official(RECORDS))
    disk_path = tmp_path / "rows"
    datasets.Dataset.from_dict(squad_rows(RECORDS)).save_to_disk(str(disk_path))

    from_records = load_corpus(str(records_path))
    from_official = load_corpus(str(official_path))  # sniffed as official format
    from_disk = load_corpus(str(disk_path))

    assert contents(from_records) == contents(from_official) == contents(from_disk)
    fingerprints = [[p.fingerprint for p in c] for c in (from_records, from_official, from_disk)]
    assert fingerprints[0] == fingerprints[1] == fingerprints[2]
    assert from_official == load_squad_json(official_path)
    assert from_records == load_records(records_path)


# ---------------------------------------------------------------- Hugging Face rows


def test_load_hf_dataset_groups_rows_by_context_in_first_seen_order(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    rows = {
        "id": ["1", "2", "3", "4", "5"],
        "title": ["B", "A", "B", "C", "A"],
        "context": ["ctx B", "ctx A", "ctx B", "ctx C", "ctx A"],
        "question": ["b1?", "a1?", "b2?", "c1?", "a2?"],
        "answers": [
            {"text": ["x", "x", "y"], "answer_start": [0, 0, 2]},
            {"text": ["a"], "answer_start": [0]},
            {"text": ["z"], "answer_start": [1]},
            {"text": [], "answer_start": []},  # unanswerable: passage C ends up empty
            {"text": ["b"], "answer_start": [3]},
        ],
    }
    path = tmp_path / "squad_rows"
    datasets.Dataset.from_dict(rows).save_to_disk(str(path))

    corpus = load_hf_dataset(str(path))

    assert corpus.name == "squad_rows"
    assert [p.context for p in corpus] == ["ctx B", "ctx A"]
    assert [p.id for p in corpus] == ["squad_rows:0", "squad_rows:1"]
    assert corpus[0].questions == (Question("b1?", ("x", "y")), Question("b2?", ("z",)))
    assert [q.question for q in corpus[1].questions] == ["a1?", "a2?"]
    assert corpus[1].title == "A"


def test_load_hf_dataset_picks_split_of_saved_datasetdict(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(squad_rows(RECORDS[:1])),
            "validation": datasets.Dataset.from_dict(squad_rows(RECORDS[1:])),
        }
    )
    path = tmp_path / "dd"
    dd.save_to_disk(str(path))

    assert contents(load_hf_dataset(path, split="train")) == contents(
        load_records(write_json(tmp_path / "a.json", RECORDS[:1]))
    )
    assert load_corpus(str(path))[0].title == "Warsaw"  # default split: validation
    with pytest.raises(KeyError, match=r"splits \['train', 'validation'\], not 'test'"):
        load_hf_dataset(path, split="test")


def test_load_hf_dataset_requires_squad_columns(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    path = tmp_path / "bad"
    datasets.Dataset.from_dict({"text": ["hello"]}).save_to_disk(str(path))
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['context', 'question'"):
        load_hf_dataset(path)


def test_load_corpus_hf_prefix_goes_to_the_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    calls: list[tuple[str, str]] = []

    def fake_load_dataset(path: str, split: str) -> Any:
        calls.append((path, split))
        return datasets.Dataset.from_dict(squad_rows(RECORDS))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)

    corpus = load_corpus("hf:someone/squadlike:train")
    assert calls == [("someone/squadlike", "train")]
    assert corpus.name == "someone/squadlike:train"
    assert corpus[0].id == "someone/squadlike:train:0"
    assert len(corpus) == 2

    load_corpus("hf:rajpurkar/squad")
    assert calls[-1] == ("rajpurkar/squad", "validation")


# ---------------------------------------------------------------- select


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, [0, 1, 2, 3, 4]),
        ("0:2", [0, 1]),
        (":2", [0, 1]),
        ("3:", [3, 4]),
        ("0:5", [0, 1, 2, 3, 4]),
        ("0:5:2", [0, 2, 4]),
        ("-2:", [3, 4]),
        ("4", [4]),
        (slice(1, 3), [1, 2]),
        ([4, 0, 2], [4, 0, 2]),
        ((1,), [1]),
        ([-1], [4]),
    ],
)
def test_select_specs(spec: Any, expected: list[int]) -> None:
    corpus = make_corpus(5)
    picked = corpus.select(spec)

    assert isinstance(picked, Corpus)
    assert [p.id for p in picked] == [f"toy:{i}" for i in expected]
    assert len(picked) == len(expected)


def test_select_names_the_subset_and_keeps_ids() -> None:
    corpus = make_corpus(5)
    picked = corpus.select("1:3")
    assert picked.name == "toy[1:3]"
    assert picked.by_id("toy:2") == corpus.by_id("toy:2")
    assert corpus[1:3] == picked
    assert corpus.select(None) == corpus


@pytest.mark.parametrize("spec", ["0:6", "6:", "-6:", [5], [0, -6], "5"])
def test_select_out_of_range_names_the_corpus_size(spec: Any) -> None:
    corpus = make_corpus(5)
    with pytest.raises(IndexError, match=r"corpus 'toy' with 5 passages"):
        corpus.select(spec)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("a:b", "Cannot parse selection 'a:b'"),
        ("", "Empty selection string"),
        ("1:2:3:4", "Cannot parse selection"),
        ("3:1", "is empty"),
        ([], "is empty"),
        ([1, 1], "repeats an index"),
    ],
)
def test_select_rejects_bad_specs(spec: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_corpus(5).select(spec)


def test_select_rejects_wrong_types() -> None:
    corpus = make_corpus(3)
    with pytest.raises(TypeError):
        corpus.select(2.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        corpus.select([True])
    with pytest.raises(TypeError, match="by_id"):
        corpus["toy:0"]  # type: ignore[call-overload]


def test_corpus_index_and_lookup_errors() -> None:
    corpus = make_corpus(3)
    with pytest.raises(IndexError, match="3 passages"):
        corpus[3]
    with pytest.raises(KeyError, match="no passage with id 'nope'"):
        corpus.by_id("nope")
    with pytest.raises(ValueError, match="would be empty"):
        Corpus([], name="empty")
    with pytest.raises(ValueError, match="share the id 'toy:0'"):
        Corpus([corpus[0], corpus[0]], name="dup")


# ---------------------------------------------------------------- records


def test_question_and_passage_validate() -> None:
    assert Question("Q?", ["a", "b"]).answers == ("a", "b")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one non-empty string answer"):
        Question("Q?", ())
    with pytest.raises(ValueError, match="wrap it as"):
        Question("Q?", "a")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="has no questions"):
        Passage("p", "T", "C", ())


def test_fingerprint_is_stable() -> None:
    q = Question("Who won?", ("Denver Broncos", "Broncos"))
    passage = Passage("demo:0", "Super Bowl 50", "The Denver Broncos won.", (q,))

    fp = passage.fingerprint
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert fp == passage.fingerprint
    # Pinned: a change here silently invalidates every cache keyed on fingerprints.
    assert fp == "fc4b9d42341bd512"
    # Content-only: another id or corpus name gives the same key.
    assert Passage("other:7", passage.title, passage.context, passage.questions).fingerprint == fp


@pytest.mark.parametrize(
    "changed",
    [
        Passage(
            "demo:0",
            "Super Bowl 51",
            "The Denver Broncos won.",
            (Question("Who won?", ("Denver Broncos", "Broncos")),),
        ),
        Passage(
            "demo:0",
            "Super Bowl 50",
            "The Denver Broncos won!",
            (Question("Who won?", ("Denver Broncos", "Broncos")),),
        ),
        Passage(
            "demo:0",
            "Super Bowl 50",
            "The Denver Broncos won.",
            (Question("Who lost?", ("Denver Broncos", "Broncos")),),
        ),
        Passage(
            "demo:0",
            "Super Bowl 50",
            "The Denver Broncos won.",
            (Question("Who won?", ("Denver Broncos",)),),
        ),
        Passage(
            "demo:0",
            "Super Bowl 50",
            "The Denver Broncos won.",
            (Question("Who won?", ("Broncos", "Denver Broncos")),),
        ),
        Passage(
            "demo:0",
            "Super Bowl 50",
            "The Denver Broncos won.",
            (
                Question("Who won?", ("Denver Broncos", "Broncos")),
                Question("Who won?", ("Denver Broncos", "Broncos")),
            ),
        ),
        # Field boundaries matter: moving text between title and context changes the key.
        Passage(
            "demo:0",
            "Super Bowl 50The",
            " Denver Broncos won.",
            (Question("Who won?", ("Denver Broncos", "Broncos")),),
        ),
    ],
)
def test_fingerprint_changes_with_content(changed: Passage) -> None:
    assert changed.fingerprint != "fc4b9d42341bd512"


@needs_real_squad
def test_fingerprints_are_distinct_on_real_squad() -> None:
    corpus = load_records(REAL_SQUAD)
    assert len({p.fingerprint for p in corpus}) == len(corpus)


# ---------------------------------------------------------------- errors


def test_missing_file_names_path_and_formats(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "corpus.json"
    for load in (load_corpus, load_records, load_squad_json):
        with pytest.raises(FileNotFoundError) as info:
            load(str(missing))
        message = str(info.value)
        assert str(missing) in message
        assert "records" in message and "official SQuAD" in message
        assert "save_to_disk" in message and "hf:" in message


def test_missing_source_that_looks_like_a_hub_id_hints_at_hf_prefix() -> None:
    with pytest.raises(FileNotFoundError, match="write 'hf:rajpurkar/squad'"):
        load_corpus("rajpurkar/squad")


def test_missing_embedded_file_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(corpus_mod, "EMBEDDED_PATH", tmp_path / "data" / "corpus.json")
    with pytest.raises(FileNotFoundError, match="corpus.json"):
        load_corpus("embedded")


@pytest.mark.parametrize(
    ("records", "fragments"),
    [
        (
            [RECORDS[0], {"title": "x", "questions": []}],
            ["record 1", "missing the key 'context'"],
        ),
        (
            [{"title": "x", "context": "c"}],
            ["record 0", "missing the key 'questions'"],
        ),
        (
            [RECORDS[0], RECORDS[1], {"title": "x", "context": "c", "questions": [{"q": "?"}]}],
            ["record 2, question 0", "missing the key 'question'"],
        ),
        (
            [{"title": "x", "context": "c", "questions": [{"question": "?"}]}],
            ["record 0, question 0", "missing the key 'answers'"],
        ),
        (
            [{"title": "x", "context": 3, "questions": []}],
            ["record 0", "'context' must be a string"],
        ),
        (
            ["just a string"],
            ["record 0 must be a JSON object"],
        ),
        (
            [{"title": "x", "context": "c", "questions": [{"question": "?", "answer": 5}]}],
            ["record 0, question 0", "must be a string or a list of strings"],
        ),
    ],
)
def test_malformed_record_names_index_and_key(
    tmp_path: Path, records: list[Any], fragments: list[str]
) -> None:
    path = write_json(tmp_path / "bad.json", records)
    for load in (load_records, load_corpus):
        with pytest.raises(ValueError) as info:
            load(str(path))
        for fragment in fragments:
            assert fragment in str(info.value)


def test_malformed_official_file_names_article_paragraph_and_key(tmp_path: Path) -> None:
    official = {
        "version": "1.1",
        "data": [
            {"title": "A", "paragraphs": [{"context": "c", "qas": []}, {"qas": []}]},
        ],
    }
    path = write_json(tmp_path / "bad_official.json", official)
    with pytest.raises(ValueError, match="article 0, paragraph 1 is missing the key 'context'"):
        load_corpus(str(path))


def test_wrong_loader_for_format_says_which_to_use(tmp_path: Path) -> None:
    records_path = write_json(tmp_path / "rec.json", RECORDS)
    official_path = write_json(tmp_path / "off.json", squad_official(RECORDS))
    with pytest.raises(ValueError, match="use load_records"):
        load_squad_json(records_path)
    with pytest.raises(ValueError, match="use load_squad_json"):
        load_records(official_path)


def test_unrecognised_json_and_invalid_json(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="without a 'data' key"):
        load_corpus(str(write_json(tmp_path / "odd.json", {"passages": []})))
    broken = tmp_path / "broken.json"
    broken.write_text('[{"title": ', encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_corpus(str(broken))


def test_unreadable_json_is_one_line_error_naming_the_file(tmp_path: Path) -> None:
    from selfedit.envs.config import ConfigError
    from selfedit.envs.selfedit_env import load_env_corpus

    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")  # issue 13, item 5
    binary = tmp_path / "latin1.json"
    binary.write_bytes('[{"title": "caf\xe9"}]'.encode("latin-1"))
    for path, fragment in ((deep, "nested deeper than Python's JSON parser allows"),
                           (binary, "not UTF-8")):
        for load in (load_corpus, load_records, load_squad_json):
            with pytest.raises(ValueError, match=fragment) as info:
                load(str(path))
            assert str(path) in str(info.value) and "\n" not in str(info.value)
        with pytest.raises(ConfigError, match="env.corpus=") as info:
            load_env_corpus(str(path))
        assert fragment in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------- named splits


def split_corpus() -> Corpus:
    """Five passages; tune = 0-2, heldout = 3-4."""
    corpus = make_corpus(5)
    return Corpus(corpus, name="toy", splits={"tune": ["toy:0", "toy:1", "toy:2"],
                                              "heldout": ["toy:3", "toy:4"]})


@pytest.mark.parametrize(
    ("spec", "expected", "name"),
    [
        ("heldout", [3, 4], "toy[heldout]"),
        (" tune ", [0, 1, 2], "toy[tune]"),
        ("heldout[0:1]", [3], "toy[heldout][0:1]"),
        ("heldout[-1]", [4], "toy[heldout][-1]"),
        ("tune[1:]", [1, 2], "toy[tune][1:]"),
        ("tune[::2]", [0, 2], "toy[tune][::2]"),
    ],
)
def test_select_split_by_name(spec: str, expected: list[int], name: str) -> None:
    picked = split_corpus().select(spec)
    assert [p.id for p in picked] == [f"toy:{i}" for i in expected]
    assert picked.name == name


def test_selections_keep_split_names_narrowed() -> None:
    corpus = split_corpus()
    first = corpus.select("0:4")
    assert dict(first.splits) == {"tune": ("toy:0", "toy:1", "toy:2"), "heldout": ("toy:3",)}
    assert [p.id for p in first.select("heldout")] == ["toy:3"]
    assert dict(corpus.select("heldout").splits) == {"tune": (), "heldout": ("toy:3", "toy:4")}
    assert corpus.select(None) == corpus and corpus.select(None).splits == corpus.splits
    assert "splits={'tune': 3, 'heldout': 2}" in repr(corpus)
    assert corpus != make_corpus(5)  # same passages, no splits


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        ("heldot", ValueError, r"no split named 'heldot'; valid split names: heldout, tune"),
        ("heldout[0:3]", IndexError, r"corpus 'toy\[heldout\]' with 2 passages"),
        ("heldout[2]", IndexError, r"corpus 'toy\[heldout\]' with 2 passages"),
        ("heldout[tune]", ValueError, "not another split name"),
        ("heldout[0:1", ValueError, "Cannot parse selection 'heldout\\[0:1'"),
        ("heldout[]", ValueError, "Empty selection string"),
        ("held out", ValueError, "Cannot parse selection"),
    ],
)
def test_select_split_errors(spec: str, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        split_corpus().select(spec)


def test_select_split_on_a_corpus_without_splits_or_outside_the_selection() -> None:
    with pytest.raises(ValueError, match="has no named splits"):
        make_corpus(5).select("heldout")
    with pytest.raises(ValueError, match="holds none of its 2 passages"):
        split_corpus().select("0:2").select("heldout")


def test_env_reports_an_unknown_split_as_a_config_error() -> None:
    from selfedit.envs.config import ConfigError
    from selfedit.envs.selfedit_env import select_passages

    assert [p.id for p in select_passages(split_corpus(), "heldout[1:]")] == ["toy:4"]
    with pytest.raises(ConfigError, match=r"env.passages='test'.*valid split names: heldout"):
        select_passages(split_corpus(), "test")


@pytest.mark.parametrize(
    ("splits", "message"),
    [
        ({"1st": ["toy:0"]}, "split name '1st' must be a letter"),
        ({"a b": ["toy:0"]}, "split name 'a b'"),
        ({"tune": ["toy:9"]}, r"names passages the corpus does not hold: \['toy:9'\]"),
        ({"tune": ["toy:0", "toy:0"]}, "lists a passage twice"),
        ({"tune": "toy:0"}, "must be a list of passage ids"),
    ],
)
def test_corpus_checks_its_splits(splits: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Corpus(make_corpus(3), name="toy", splits=splits)


def test_records_with_split_fields_give_named_splits(tmp_path: Path) -> None:
    records = [
        dict(RECORDS[0], split="tune"),
        {"title": "gone", "context": "c", "questions": [], "split": "tune"},  # dropped
        dict(RECORDS[1], split="heldout"),
        dict(RECORDS[0], title="again", split="tune"),
    ]
    path = write_json(tmp_path / "split.json", records)
    corpus = load_corpus(str(path))

    assert dict(corpus.splits) == {"tune": ("split:0", "split:3"), "heldout": ("split:2",)}
    assert list(corpus.splits) == ["tune", "heldout"]  # first-seen order
    assert [p.title for p in corpus.select("tune")] == ["Broncos", "again"]
    assert load_records(path) == corpus
    # The split is not content: it leaves the cache key of a passage unchanged.
    plain = load_records(write_json(tmp_path / "plain.json", RECORDS))
    assert corpus[0].fingerprint == plain[0].fingerprint
    assert dict(plain.splits) == {}


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([dict(RECORDS[0], split="tune"), RECORDS[1]],
         "record 0 has a 'split' but record 1 has none"),
        ([RECORDS[0], dict(RECORDS[1], split="tune")],
         "record 1 has a 'split' but record 0 has none"),
        ([dict(RECORDS[0], split=3)], "record 0: 'split' must be a letter"),
        ([dict(RECORDS[0], split="held out")], "got 'held out'"),
    ],
)
def test_bad_split_fields_name_the_record(
    tmp_path: Path, records: list[dict[str, Any]], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        load_corpus(str(write_json(tmp_path / "bad_split.json", records)))


# ---------------------------------------------------------------- the embedded corpus
# The rules envs/data/README.md states, checked on the shipped file. The raw JSON is read
# so that nothing the loader would drop or normalise escapes the checks.

EMBEDDED_RECORDS: list[dict[str, Any]] = (
    json.loads(EMBEDDED_PATH.read_text(encoding="utf-8")) if EMBEDDED_PATH.is_file() else []
)
ORIGINAL_PASSAGES = 24  # the first release: 6 questions each, referred to by committed runs
ORIGINAL_QUESTIONS = 6
_NUMBER_WORDS = frozenset(
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety "
    "hundred thousand million dozen half".split()
)
_TITLE_STOPWORDS = frozenset({"the", "and", "of"})


def _norm_tokens(text: str) -> list[str]:
    from selfedit.envs.grading import normalize_answer

    return normalize_answer(text).split()


def _runs(tokens: list[str], run: list[str]) -> int:
    """How often ``run`` occurs as consecutive whole tokens in ``tokens``."""
    width = len(run)
    return sum(tokens[i : i + width] == run for i in range(len(tokens) - width + 1))


def _verbatim_count(answer: str, context: str) -> int:
    """Occurrences of ``answer`` in ``context``, case-sensitive, not inside a longer word."""
    pattern = r"(?<![A-Za-z0-9])" + re.escape(answer) + r"(?![A-Za-z0-9])"
    return len(re.findall(pattern, context))


def _is_numeric(answer: str) -> bool:
    """Numbers, quantities with units, dates and years ("2,817 metres", "seven", "1974")."""
    words = re.split(r"[\s-]+", answer.lower())
    return bool(re.search(r"\d", answer)) or any(w in _NUMBER_WORDS for w in words)


def embedded_problems(records: list[dict[str, Any]], first_index: int = 0) -> list[str]:
    """Every breach of the corpus rules, one line each (empty when the corpus is clean).

    ``first_index`` is the corpus position of ``records[0]``: the original passages (the
    first 24) keep their first six questions as they were released.
    """
    problems: list[str] = []
    titles: set[str] = set()
    for index, record in enumerate(records, first_index):
        where = f"passage {index} ({record['title']!r})"
        title, context, questions = record["title"], record["context"], record["questions"]
        if title in titles:
            problems.append(f"{where}: duplicate title")
        titles.add(title)
        texts = [title, context] + [q["question"] + q["answer"] for q in questions]
        if not all(t.isascii() for t in texts):
            problems.append(f"{where}: non-ASCII text")
        if "\n" in context or not 110 <= len(context.split()) <= 200:
            problems.append(f"{where}: not one paragraph of 110-200 words")
        if len(questions) < 10:
            problems.append(f"{where}: {len(questions)} questions, need at least 10")
        context_tokens = _norm_tokens(context)
        golds = [_norm_tokens(q["answer"]) for q in questions]
        subject = [w for w in re.findall(r"[a-z]+", title.lower())
                   if len(w) >= 4 and w not in _TITLE_STOPWORDS]
        for k, q in enumerate(questions):
            answer, question = q["answer"], q["question"]
            q_where = f"{where}, question {k} ({question!r})"
            original = index < ORIGINAL_PASSAGES and k < ORIGINAL_QUESTIONS
            if _verbatim_count(answer, context) != 1 or _runs(context_tokens, golds[k]) != 1:
                problems.append(f"{q_where}: answer {answer!r} is not in the passage exactly once")
            if not 1 <= len(answer.split()) <= 6 or not question.endswith("?"):
                problems.append(f"{q_where}: answer longer than 6 words, or no question mark")
            question_tokens = _norm_tokens(question)
            for x, gold in enumerate(golds):
                # Original questions may name facts asked by other original questions.
                if (x == k or not (original and x < ORIGINAL_QUESTIONS)) and _runs(
                    question_tokens, gold
                ):
                    problems.append(f"{q_where}: gives away the answer {questions[x]['answer']!r}")
                if x != k and _runs(golds[x], golds[k]):
                    problems.append(f"{q_where}: answer is part of {questions[x]['answer']!r}")
            # Closed-book questions must say what they are about; the original ones may lean
            # on the passage ("the observatory").
            if not original and not any(w in question.lower() for w in subject):
                problems.append(f"{q_where}: does not name the subject {title!r}")
    return problems


needs_embedded = pytest.mark.skipif(not EMBEDDED_RECORDS, reason=f"{EMBEDDED_PATH} not written")


@needs_embedded
def test_embedded_corpus_follows_its_rules() -> None:
    problems = embedded_problems(EMBEDDED_RECORDS)
    assert not problems, "\n".join(problems)


VELT_CONTEXT = "The Velt Tower was built in 1710 by Ada Quill. " + " ".join(["Moss grows."] * 55)


@pytest.mark.parametrize(
    ("questions", "context", "message"),
    [
        ([("Who built the Velt Tower?", "Ada Quill")], VELT_CONTEXT, None),
        ([("Who built the Velt Tower?", "Ada Quill"), ("Whose first name is Ada?", "Ada")],
         VELT_CONTEXT, "is part of 'Ada Quill'"),
        ([("When was it built?", "1710")], VELT_CONTEXT, "does not name the subject"),
        ([("Who built the Velt Tower?", "Bob Quill")], VELT_CONTEXT, "exactly once"),
        ([("Who built the Velt Tower?", "Ada Quill")], VELT_CONTEXT + " Ada Quill.",
         "exactly once"),
        ([("Who built the Velt Tower, Ada Quill?", "Ada Quill")], VELT_CONTEXT,
         "gives away the answer 'Ada Quill'"),
        ([("Who built the Velt Tower\u2019s top?", "Ada Quill")], VELT_CONTEXT, "non-ASCII"),
        ([("What is the Velt Tower?", "The Velt Tower was built in 1710")], VELT_CONTEXT,
         "longer than 6 words"),
        ([("Who built the Velt Tower?", "Ada Quill")], "The Velt Tower was built by Ada Quill.",
         "110-200 words"),
    ],
)
def test_embedded_rules_catch_each_kind_of_breach(
    questions: list[tuple[str, str]], context: str, message: str | None
) -> None:
    record = {"title": "Velt Tower", "context": context,
              "questions": [{"question": q, "answer": a} for q, a in questions]}
    problems = embedded_problems([record], first_index=ORIGINAL_PASSAGES)
    assert any(p.endswith(f"{len(questions)} questions, need at least 10") for p in problems)
    others = [p for p in problems if "need at least 10" not in p]
    if message is None:
        assert others == []
    else:
        assert any(message in p for p in others), problems
    duplicated = embedded_problems([record, record], first_index=ORIGINAL_PASSAGES)
    assert any("duplicate title" in p for p in duplicated)


@needs_embedded
def test_embedded_corpus_keeps_the_original_passages_first() -> None:
    """Committed results name the first 24 passages by index: their text and first six
    questions must never change (a digest of the first release's content)."""
    original = [
        [r["title"], r["context"], [[q["question"], q["answer"]] for q in r["questions"][:6]]]
        for r in EMBEDDED_RECORDS[:ORIGINAL_PASSAGES]
    ]
    blob = json.dumps(original, separators=(",", ":")).encode("utf-8")
    assert hashlib.sha256(blob).hexdigest() == (
        "e67fb97068c480e651c7141aaf54e5072d930979b8d275bdcfc4f1cf15341810"
    )


@needs_embedded
def test_embedded_corpus_size_and_splits() -> None:
    corpus = load_corpus("embedded")
    assert len(corpus) == len(EMBEDDED_RECORDS) >= 96
    assert all(len(p.questions) >= 10 for p in corpus)
    assert list(corpus.splits) == ["tune", "heldout"]
    tune, heldout = corpus.select("tune"), corpus.select("heldout")
    # Disjoint and covering, the development passages (the originals) in tune, and both
    # halves large enough to report on.
    assert {p.id for p in tune}.isdisjoint(p.id for p in heldout)
    assert len(tune) + len(heldout) == len(corpus)
    assert [p.id for p in tune][:ORIGINAL_PASSAGES] == [f"embedded:{i}" for i in range(24)]
    assert min(len(tune), len(heldout)) >= 48
    assert [p.id for p in corpus.select("heldout[0:12]")] == [p.id for p in heldout][:12]
    with pytest.raises(ValueError, match="valid split names: heldout, tune"):
        corpus.select("test")


@needs_embedded
def test_embedded_answers_are_of_varied_types() -> None:
    answers = [q["answer"] for r in EMBEDDED_RECORDS for q in r["questions"]]
    questions = [q["question"] for r in EMBEDDED_RECORDS for q in r["questions"]]
    numeric = sum(map(_is_numeric, answers)) / len(answers)
    named = sum(bool(re.match(r"(?:(?:the|a|an) )?[A-Z]", a)) for a in answers) / len(answers)
    reasons = sum(q.startswith("Why") for q in questions) / len(questions)
    assert 0.2 <= numeric <= 0.6, numeric  # numbers with units, dates, years, counts
    assert named >= 0.2, named  # people, places, named things
    assert reasons >= 0.03, reasons  # short "why" spans
    for index, record in enumerate(EMBEDDED_RECORDS):
        kinds = [_is_numeric(q["answer"]) for q in record["questions"]]
        assert 1 <= sum(kinds) <= len(kinds) - 3, f"passage {index}: {sum(kinds)} numeric"
