"""The red team for graders (issue 12, part 2) and grader validity against hand labels (part 3).

Answers that need no knowledge of the question are scored by every grader on the embedded
corpus (always) and on SQuAD dev (when ../shared/squad is present); the default reward
grader must give each at most MAX_GAMED. The end-to-end check (fact-list self-edits through
the env with the embedded model) is marked slow.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest

from selfedit.envs import grading
from selfedit.envs.config import ConfigError
from selfedit.envs.corpus import Passage, Question, load_corpus
from selfedit.training import graders as validity
from selfedit.training import recitation
from selfedit.training.recitation import (
    MAX_GAMED,
    SANITY,
    STRATEGIES,
    capitalised_phrases,
    red_team_answers,
    red_team_scores,
)

REPO = Path(__file__).resolve().parents[1]
SQUAD = REPO.parent / "shared" / "squad" / "squad_v1.1_dev_seal.json"
LABELS = REPO / "results" / "grader_validity" / "labels.jsonl"

PASSAGE = Passage(
    "t:0",
    "Velmora Highlands",
    "The Velmora Highlands are a plateau in Aster Reach. Their highest summit, Mount "
    "Corrigane, rises to 2,817 metres. The highlands are drained by the River Sillow, which "
    "flows east for 310 kilometres. The largest settlement, Tarn Ellick, has about 18,000 "
    "inhabitants.",
    (
        Question("What is the highest summit of the Velmora Highlands?", ("Mount Corrigane",)),
        Question("How tall is the highest summit?", ("2,817 metres",)),
        Question("Which river drains the Velmora Highlands?", ("River Sillow",)),
        Question("What is the largest settlement?", ("Tarn Ellick",)),
    ),
)


# --------------------------------------------------------------------------------------------
# The strategies do what their names say
# --------------------------------------------------------------------------------------------


def test_strategies_answer_every_question_without_its_gold_knowledge() -> None:
    answers = {name: red_team_answers(PASSAGE, fn) for name, (_, fn) in STRATEGIES.items()}
    for name, given in answers.items():
        assert len(given) == len(PASSAGE.questions), name
    # Strategies that ignore the question give the same answer to every question.
    for name in ("passage", "first_sentence", "capitalised_words", "capitalised_phrases",
                 "it_is_list", "all_golds", "yes", "no", "title", "most_frequent_word"):
        assert len(set(answers[name])) == 1, name
    assert answers["capitalised_phrases"][0].startswith("Velmora Highlands, Aster Reach, ")
    assert "2,817" in answers["capitalised_words"][0]
    assert answers["it_is_list"][0].startswith("It is ")
    assert answers["question_echo"] == [q.question for q in PASSAGE.questions]
    assert answers["typed_list"][1] == "2,817, 310, 18,000"  # a "how tall" question: numbers
    sentences = red_team_answers(PASSAGE, recitation.POSITIONAL["gold_sentence"][1])
    for i, q in enumerate(PASSAGE.questions):
        assert q.answers[0] in sentences[i]
        assert answers["other_gold"][i] not in q.answers  # never an acceptable answer
    assert answers["most_frequent_word"][0] == "highlands"
    # No knowledge-free strategy looks up where the gold sits.
    assert not {"gold_sentence", "gold_sentence_and_next"} & set(STRATEGIES)


def test_the_guesser_gives_one_candidate_per_question_type() -> None:
    guesses = red_team_answers(PASSAGE, recitation.GUESSES["typed_guess"][1])
    # The first name the question does not hold; the first number for "how tall".
    assert guesses == ["Aster Reach", "2,817", "Aster Reach", "Velmora Highlands"]
    hedges = red_team_answers(PASSAGE, recitation.GUESSES["typed_hedge"][1])
    assert hedges[:2] == ["Aster Reach / Mount Corrigane", "2,817 / 310"]
    # The hedge holding the gold of the first question is no answer to it.
    assert red_team_scores([PASSAGE], positional=False, sanity=False)["typed_hedge"][
        "committed"] == 0.0


def test_capitalised_phrases() -> None:
    assert capitalised_phrases("Tarn Ellick, in Aster Reach, has 18,000 people.") == [
        "Tarn Ellick", "Aster Reach", "18,000"]
    assert capitalised_phrases("The end.", words=True) == []


# --------------------------------------------------------------------------------------------
# The red team on real corpora
# --------------------------------------------------------------------------------------------


def _check_red_team(scores: dict[str, dict[str, float]]) -> None:
    for name in STRATEGIES:
        assert scores[name]["committed"] <= MAX_GAMED, (name, scores[name])
    # The red team has teeth: lists pay off under the lenient grader ...
    assert scores["all_golds"]["contains"] > 0.5
    assert scores["capitalised_phrases"]["contains"] > 0.2
    # ... and the graders still pay real answers (all but golds longer than the 12-word
    # horizon, a few percent of SQuAD's later passages).
    assert scores["gold"]["committed"] > 0.9
    assert scores["gold_in_sentence"]["committed"] > 0.9
    # A guesser is paid less than its right guesses: one guess given to m questions once.
    guess = scores["typed_guess"]
    assert guess["committed"] < guess["exact_match"], guess
    # A hedge of two candidates is paid where it degenerates into a guess (one candidate of
    # a type) or its second "candidate" is no rival (a word of the question, "It", a number
    # beside a name): a fraction of what contains pays it (0.11-0.34 measured).
    hedge = scores["typed_hedge"]
    assert hedge["committed"] <= 0.4 * hedge["contains"], hedge
    # The informed reciters are paid no more than the lenient grader pays them.
    for name in recitation.POSITIONAL:
        assert scores[name]["committed"] <= scores[name]["contains"], (name, scores[name])


def test_red_team_on_the_embedded_corpus() -> None:
    scores = red_team_scores(load_corpus("embedded"))
    _check_red_team(scores)
    # Ten or more questions a passage: rule 9 pays about half of the right guesses.
    guess = scores["typed_guess"]
    assert guess["committed"] <= 0.6 * guess["exact_match"], guess


@pytest.mark.skipif(not SQUAD.is_file(), reason="SQuAD dev file not present")
@pytest.mark.parametrize("selection", ["0:100", "1900:2000"])
def test_red_team_on_squad_dev(selection: str) -> None:
    """The slice the grader was first checked on, and one it never was (on every
    100-passage slice of SQuAD dev the worst knowledge-free strategy stays <= 0.035,
    results/redteam/squad_dev_all.md)."""
    _check_red_team(red_team_scores(load_corpus(SQUAD).select(selection)))


def test_positional_reciters_are_reported_and_cut_by_committed() -> None:
    """The reciters that know where the gold sits are not held to MAX_GAMED (a short piece of
    the passage around the gold is often a correct answer), but committed pays them no more
    than contains does, windows and clauses far less, and the longer the piece, the less."""
    scores = red_team_scores(load_corpus("embedded"))
    for name in recitation.POSITIONAL:
        assert scores[name]["committed"] <= scores[name]["contains"], (name, scores[name])
    for name in ("gold_clause", "gold_window_8", "gold_window_12", "gold_window_16"):
        assert scores[name]["committed"] < 0.75 * scores[name]["contains"], (name, scores[name])
    assert (scores["gold_window_16"]["committed"] < scores["gold_window_12"]["committed"]
            < scores["gold_window_8"]["committed"])
    answers = red_team_answers(PASSAGE, recitation.POSITIONAL["gold_sentence_first_8"][1])
    assert answers[0] == "Their highest summit, Mount Corrigane, rises to 2,817"
    assert red_team_answers(PASSAGE, recitation.POSITIONAL["gold_clause"][1])[0] == (
        "Mount Corrigane,")


def test_red_team_report_and_the_old_recitation_api() -> None:
    table = recitation.recitation_report("embedded", "0:4")
    assert "| strategy | answer given | exact_match | f1 | contains | committed |" in table
    for name in [*STRATEGIES, *recitation.POSITIONAL, *recitation.GUESSES, *SANITY]:
        assert f"| {name} |" in table
    assert "Default grader `committed` passes" in table
    assert "typed_guess 0." in table and "typed_hedge 0." in table
    old = recitation.recitation_scores(load_corpus("embedded").select("0:4"))
    assert set(old) == {"passage", "sentence", "gold"}
    assert old["gold"]["exact_match"] == 1.0


def test_recitation_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    recitation.add_subcommand(parser.add_subparsers(dest="command"))
    out = tmp_path / "table.md"
    args = parser.parse_args(["recitation", "--passages", "0:2", "--output", str(out)])
    assert recitation.main(args) == 0
    assert "| question_echo |" in capsys.readouterr().out
    assert "| question_echo |" in out.read_text()


def test_end_to_end_report_and_regrade(tmp_path: Path) -> None:
    corpus = load_corpus("embedded")
    rows = []
    for p in corpus.select("0:3"):
        n = len(p.questions)
        for name, answers in (("no_training", ["I do not know."] * n),
                              ("passage", [q.answers[0] for q in p.questions]),
                              ("fact_dump", [", ".join(q.answers[0] for q in p.questions)] * n)):
            rows.append(recitation.EndToEndRow(name, "template", p.id, {}, {}, answers, 1.0, 0.0))
    path = tmp_path / "rows.jsonl"
    recitation.save_rows(rows, path)
    graded = recitation.regrade(recitation.load_rows(path), corpus)
    by = {(r.strategy, r.passage_id): r for r in graded}
    assert by[("passage", "embedded:0")].metrics["committed"] == 1.0
    assert by[("fact_dump", "embedded:0")].metrics["committed"] == 0.0
    assert by[("fact_dump", "embedded:0")].metrics["contains"] > 0.2
    table = recitation.end_to_end_report(graded)
    assert "| passage | template | 1.000 |" in table
    assert "| no_training | template |" in table


# --------------------------------------------------------------------------------------------
# Grader validity: kappa, the labels file, the command
# --------------------------------------------------------------------------------------------


def test_cohen_kappa_edge_cases() -> None:
    assert validity.cohen_kappa([1, 1, 1], [1, 1, 1]) == 1.0
    assert validity.cohen_kappa([0, 1], [0, 0]) == 0.0  # p_o 0.5, p_e 0.5
    with pytest.raises(ValueError, match="length"):
        validity.cohen_kappa([1], [1, 0])
    with pytest.raises(ValueError, match="0 or 1"):
        validity.cohen_kappa([2], [1])
    with pytest.raises(ValueError, match="at least one"):
        validity.cohen_kappa([], [])
    a = validity.agreement([1, 0, 0, 0], [0, 0, 0, 0])
    assert (a.precision, a.recall, a.agreement) == (1.0, 0.0, 0.75)


def test_kappa_interval_covers_the_estimate_and_widens_for_clustered_items() -> None:
    """The bootstrap interval holds the point estimate, is reproducible, narrows with more
    items, and is wider when errors come in whole passages than when they are spread."""
    labels = [1, 0, 0, 0] * 30  # 120 items, 30 correct
    verdicts = list(labels)
    for i in range(0, 120, 10):  # 12 disagreements
        verdicts[i] = 1 - verdicts[i]
    kappa = validity.cohen_kappa(labels, verdicts)
    low, high = validity.kappa_interval(labels, verdicts)
    assert low < kappa < high and (low, high) == validity.kappa_interval(labels, verdicts)
    small = validity.kappa_interval(labels[:40], verdicts[:40])
    assert small[1] - small[0] > high - low
    # The same items in 12 passages of 10, every disagreement inside the first three.
    clustered_verdicts = list(labels)
    for i in range(12):
        clustered_verdicts[i] = 1 - clustered_verdicts[i]
    passages = [f"p{i // 10}" for i in range(120)]
    assert validity.cohen_kappa(labels, clustered_verdicts) == pytest.approx(kappa, abs=0.05)
    by_item = validity.kappa_interval(labels, clustered_verdicts)
    by_passage = validity.kappa_interval(labels, clustered_verdicts, passages)
    assert by_passage[1] - by_passage[0] > 1.5 * (by_item[1] - by_item[0])
    with pytest.raises(ValueError, match="one cluster per item"):
        validity.kappa_interval(labels, verdicts, passages[:5])
    with pytest.raises(ValueError, match="resamples"):
        validity.kappa_interval(labels, verdicts, resamples=10)


def test_committed_labels_file_is_complete() -> None:
    items = validity.load_labels(LABELS)
    assert len(items) >= 200
    assert {item.split for item in items} == {"tune", "tune2", "heldout", "heldout2", "heldout3"}
    assert sum(item.split == "heldout2" for item in items) >= 100
    assert sum(item.split == "heldout3" for item in items) >= 150
    # Every item was read twice, independently; load_labels checks label against readings.
    assert all(len(item.readings) == 2 for item in items)
    assert sum(item.label for item in items) >= 40
    assert all(item.passage is not None for item in items)  # every passage resolves
    sources = {item.source.split()[0] for item in items}
    assert "red" in sources and any(s.startswith("results/") for s in sources)
    for item in items:
        assert item.passage["questions"][item.qi] == item.question
        assert item.passage["golds"][item.qi] == item.golds


def test_load_labels_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "labels.jsonl"
    good = {"question": "q", "golds": ["a"], "answer": "a", "label": 1}
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "label": "yes"}) + "\n")
    with pytest.raises(ValueError, match=r"labels.jsonl:2"):
        validity.load_labels(path)
    path.write_text(json.dumps({**good, "golds": "a"}) + "\n")
    with pytest.raises(ValueError, match="golds"):
        validity.load_labels(path)
    with pytest.raises(FileNotFoundError, match="--passages"):
        validity.load_labels(path, tmp_path / "missing.json")


def test_load_labels_checks_the_readings_against_the_label(tmp_path: Path) -> None:
    path = tmp_path / "labels.jsonl"
    item = {"question": "q", "golds": ["a"], "answer": "a", "label": 1}
    one, zero = {"by": "x", "label": 1}, {"by": "y", "label": 0}

    def load(**fields: object) -> list[validity.LabelledItem]:
        path.write_text(json.dumps({**item, **fields}) + "\n")
        return validity.load_labels(path)

    assert load(annotations=[one, one])[0].readings == (1, 1)
    assert load(annotations=[one, zero], adjudication={"label": 1})[0].readings == (1, 0)
    with pytest.raises(ValueError, match="disagree.*adjudication"):
        load(annotations=[one, zero])
    with pytest.raises(ValueError, match="not the adjudication's 0"):
        load(annotations=[one, zero], adjudication={"label": 0})
    with pytest.raises(ValueError, match="common reading 0"):
        load(annotations=[zero, zero])
    with pytest.raises(ValueError, match="annotation 2's label must be 0 or 1"):
        load(annotations=[one, {"label": "yes"}])
    with pytest.raises(ValueError, match="annotations must be a list"):
        load(annotations={"label": 1})


def test_graders_command_prints_every_grader(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "labels.jsonl"
    rows = [
        {"split": "a", "question": "Who?", "golds": ["Ann"], "answer": "Ann", "label": 1},
        {"split": "a", "question": "Who?", "golds": ["Ann"], "answer": "Bob or Ann", "label": 0},
        {"split": "b", "question": "When?", "golds": ["1901"], "answer": "In 1901.", "label": 1},
        {"split": "b", "question": "When?", "golds": ["1901"], "answer": "1900", "label": 0},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    parser = argparse.ArgumentParser()
    validity.add_subcommand(parser.add_subparsers(dest="command"))
    out = tmp_path / "table.md"
    args = parser.parse_args(["graders", "--labels", str(path), "--output", str(out)])
    assert validity.main(args) == 0
    printed = capsys.readouterr().out
    for name in grading.GRADERS:
        assert f"| {name} | all (4) |" in printed
    assert "| committed | all (4) | 1.000 | 1.000 | 1.000 | 1.000 |" in printed
    assert out.read_text().strip() == printed.strip()
    assert "second reading" not in printed  # no item was read twice

    # Two readings per item: the second annotator is scored against the first, per split.
    readings = [(1, 1), (0, 1), (1, 1), (0, 0)]
    for r, (first, second) in zip(rows, readings, strict=True):
        r["annotations"] = [{"by": "one", "label": first}, {"by": "two", "label": second}]
        if first != second:
            r["adjudication"] = {"by": "third", "label": r["label"]}
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert validity.main(args) == 0
    printed = capsys.readouterr().out
    # all four: agreement 3/4, the second's "correct" 3 of which 2 right, recall 2/2
    assert "| second reading | all (4) | 0.750 | 0.667 | 1.000 | 0.500 |" in printed
    assert "| second reading | b (2) | 1.000 | 1.000 | 1.000 | 1.000 |" in printed


def test_graders_command_lists_a_graders_disagreements(tmp_path: Path) -> None:
    path = tmp_path / "labels.jsonl"
    rows = [{"id": f"i{k}", "question": "Who?", "golds": ["Ann"], "answer": answer,
             "label": label}
            for k, (answer, label) in enumerate((("Ann", 1), ("Bob or Ann", 0),
                                                 ("Bob or Ann", 1)))]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = validity.graders_command(path, errors="contains")
    listing = table.split("contains disagrees with the labels on ")[1]
    # contains passes both hedges: the one labelled wrong is its only disagreement
    assert listing.startswith("1 of 3 items (0 correct failed, 1 wrong passed)")
    assert "| i1 | all | 0 | 1 | Who? | Ann | Bob or Ann |" in listing and "| i0 |" not in listing
    with pytest.raises(ConfigError, match="--errors 'judge': no such grader"):
        validity.graders_command(path, errors="judge")


def test_graders_command_scores_a_local_judge(tmp_path: Path, tiny_model_dir: Path) -> None:
    """`selfedit graders --judge DIR`: a local model judges the labelled answers too."""
    path = tmp_path / "labels.jsonl"
    rows = [{"question": "Who?", "golds": ["Ann"], "answer": answer, "label": label}
            for answer, label in (("Ann", 1), ("Bob", 0), ("It was Ann.", 1))]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = validity.graders_command(path, judge=str(tiny_model_dir), judge_prompt="lenient")
    assert "| judge | all (3) |" in table and "| committed | all (3) |" in table


# --------------------------------------------------------------------------------------------
# End to end through the env (slow: the embedded model trains ~25 LoRA adapters)
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_fact_list_self_edits_do_not_beat_no_training_end_to_end() -> None:
    """Both action modes through the env with the embedded model on 6 embedded passages
    (SEAL's 10 epochs; about 20 minutes on 2 CPU cores, most of it the implications
    template's completions). The committed run is results/redteam_e2e/."""
    corpus = load_corpus("embedded")
    rows = recitation.end_to_end(range(6))
    by: dict[str, list[float]] = {}
    for row in rows:
        by.setdefault(row.strategy, []).append(row.metrics["committed"])
        # Whatever a strategy taught, an answer shaped like a list never scores.
        passage = corpus.by_id(row.passage_id)
        golds = [list(q.answers) for q in passage.questions]
        scores = grading.committed(
            row.answers, golds, questions=[q.question for q in passage.questions],
            title=passage.title, context=passage.context, passage_golds=golds)
        for answer, score in zip(row.answers, scores, strict=True):
            # Three or more commas outside numbers ("1,800,000" is one number, not a list).
            if re.sub(r"(?<=\d),(?=\d)", "", grading.first_sentence(answer)).count(",") >= 3:
                assert score == 0.0, (row.strategy, answer)
    mean = {name: sum(v) / len(v) for name, v in by.items()}
    noise = 0.05  # six passages of ~11 questions: smaller differences are not resolved
    assert mean["fact_dump"] <= mean["no_training"] + noise, mean
    assert mean["passage"] > mean["no_training"] + noise, mean
    assert mean["implications"] > mean["no_training"], mean
