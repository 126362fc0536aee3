"""Tests for the cheap graders in selfedit.envs.grading (the judge: test_judge.py; the red
team and the label agreement: test_redteam.py)."""

import pytest

from selfedit.envs import grading
from selfedit.envs.grading import (
    GRADERS,
    committed,
    contains,
    exact_match,
    first_sentence,
    grade_all,
    normalize_answer,
    shorten_answer,
    token_f1,
)

# A recital of a passage: the gold ("Hastings") only appears after the first sentence.
RECITAL = (
    "In 1066 Duke William of Normandy invaded England. He defeated King Harold at the "
    "Battle of Hastings, and was crowned at Westminster Abbey on Christmas Day."
)

# --------------------------------------------------------------------------------------------
# normalize_answer
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Quick, Brown Fox!", "quick brown fox"),
        ("An apple a day", "apple day"),
        ("theatre another", "theatre another"),  # articles only as whole words
        ("  multiple   spaces\n\tand tabs ", "multiple spaces and tabs"),
        ("U.S.A.", "usa"),
        ("it's", "its"),
        ("A-team", "ateam"),  # punctuation is removed before articles, as officially
        ("the_end", "theend"),  # "_" is ASCII punctuation
        ("Caf\u00e9 \u2014 bar", "caf\u00e9 \u2014 bar"),  # only ASCII punctuation is removed
        ("THE", ""),
        ("", ""),
    ],
)
def test_normalize_answer_matches_official_squad(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


# --------------------------------------------------------------------------------------------
# exact_match and token_f1
# --------------------------------------------------------------------------------------------


def test_exact_match_values() -> None:
    answers = ["The Eiffel Tower.", "eiffel", "Paris", "1066", ""]
    golds = [["Eiffel Tower"], ["Eiffel Tower"], ["Lyon", "paris!"], ["1066 AD"], [""]]
    assert exact_match(answers, golds) == [1.0, 0.0, 1.0, 0.0, 0.0]


def test_exact_match_empty_golds_never_match() -> None:
    # "the" normalises to nothing; an empty answer must not score against it.
    assert exact_match(["", "the"], [["the"], []]) == [0.0, 0.0]


@pytest.mark.parametrize(
    ("answer", "golds", "expected"),
    [
        ("the cat sat", ["cat sat down"], 0.8),  # P = 2/2, R = 2/3
        ("cat cat", ["cat"], 2 / 3),  # repeated tokens count once each: P = 1/2, R = 1
        ("dog", ["cat"], 0.0),
        ("", ["cat"], 0.0),
        ("cat", [], 0.0),
        ("blue whale", ["whale", "the blue whale"], 1.0),  # best gold wins
        ("a large blue whale", ["blue whale shark"], 2 * (2 / 3) * (2 / 3) / (4 / 3)),
    ],
)
def test_token_f1_hand_computed(answer: str, golds: list[str], expected: float) -> None:
    assert token_f1([answer], [golds]) == [pytest.approx(expected)]


def test_graders_reject_mismatched_batches() -> None:
    for grader in GRADERS.values():
        with pytest.raises(ValueError, match="one entry per question"):
            grader(["a", "b"], [["a"]])
        with pytest.raises(TypeError, match="list of gold answers"):
            grader(["a"], ["a"])  # type: ignore[list-item]


# --------------------------------------------------------------------------------------------
# shorten_answer and contains
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("It weighs 3.5 kg. It is heavy.", "It weighs 3.5 kg."),
        ("Pi is about 3.14159", "Pi is about 3.14159"),
        ("\n\n  Paris  \nLondon", "Paris"),
        ("Really? Yes.", "Really?"),
        ("Wow! Great.", "Wow!"),
        ("Written by J. K. Rowling. Next.", "Written by J. K. Rowling."),
        ("The U.S. Army won. Then...", "The U.S. Army won."),
        ("Dr. Watson did. Holmes did not.", "Dr. Watson did."),
        ("1. Paris\n2. Lyon", "1. Paris"),
        ("Version 1.2.3 shipped. Later", "Version 1.2.3 shipped."),
        ("", ""),
        ("   \n  ", ""),
    ],
)
def test_shorten_answer(text: str, expected: str) -> None:
    assert shorten_answer(text) == expected


def test_shorten_answer_caps_words() -> None:
    long_sentence = " ".join(f"w{i}" for i in range(40))
    assert shorten_answer(long_sentence).split() == [f"w{i}" for i in range(12)]
    assert shorten_answer(long_sentence, max_words=3) == "w0 w1 w2"
    with pytest.raises(ValueError, match="max_words"):
        shorten_answer("x", max_words=0)


def test_contains_rejects_recited_passage() -> None:
    # Without shortening the gold would be found in the recital.
    assert contains([RECITAL], [["Battle of Hastings"]], max_words=1000) == [0.0]
    assert contains([RECITAL], [["Battle of Hastings"]]) == [0.0]
    assert contains(["The Battle of Hastings."], [["Battle of Hastings"]]) == [1.0]


def test_contains_rejects_long_first_sentence() -> None:
    # A first sentence that lists everything is capped at max_words.
    padded = " ".join(["filler"] * 20) + " Hastings"
    assert contains([padded], [["Hastings"]]) == [0.0]
    assert contains([padded], [["Hastings"]], max_words=21) == [1.0]


def test_contains_matches_whole_tokens_only() -> None:
    answers = ["In 1066.", "In 10 years", "concatenate", "the year 1066 AD"]
    golds = [["10"], ["10"], ["cat"], ["1066"]]
    assert contains(answers, golds) == [0.0, 1.0, 0.0, 1.0]


def test_contains_needs_consecutive_tokens() -> None:
    assert contains(["blue and whale"], [["blue whale"]]) == [0.0]
    assert contains(["a big blue whale"], [["blue whale"]]) == [1.0]


def test_contains_empty_golds_never_match() -> None:
    assert contains(["anything", "", "the"], [[""], ["the"], []]) == [0.0, 0.0, 0.0]


def test_grade_all_runs_every_cheap_grader() -> None:
    scores = grade_all(
        ["Paris.", "It is Paris, France"],
        [["Paris"], ["Paris"]],
        questions=["q1", "q2"],  # extra kwargs are ignored by cheap graders
    )
    assert set(scores) == {"exact_match", "f1", "contains", "committed"} == set(GRADERS)
    assert scores["exact_match"] == [1.0, 0.0]
    assert scores["f1"] == [1.0, pytest.approx(0.4)]  # P = 1/4, R = 1
    assert scores["contains"] == [1.0, 1.0]


def test_grade_all_passes_max_words_to_contains() -> None:
    assert grade_all(["one two Paris"], [["Paris"]], max_words=2)["contains"] == [0.0]



# --------------------------------------------------------------------------------------------
# committed: the default reward grader (issue 12)
# --------------------------------------------------------------------------------------------

PASSAGE = (
    "Ostrith Kaldane was an engineer from the port city of Belcaster. Kaldane's tide clock "
    "used a column of mercury to predict high water to within four minutes. He patented it "
    "in 1849, and seventeen harbours adopted it within a decade. The Hobb Bridge over the "
    "River Sillow opened in 1901 after nine years of work. Kaldane married the botanist "
    "Elsabet Moor."
)
QUESTIONS = [
    "Which port city was Kaldane from?",
    "What did Kaldane's tide clock use?",
    "In what year did Kaldane patent the tide clock?",
    "How many harbours adopted the tide clock within a decade?",
    "When did the Hobb Bridge open?",
    "Which river does the Hobb Bridge cross?",
    "Which botanist did Kaldane marry?",
]
GOLDS = [["Belcaster"], ["a column of mercury"], ["1849"], ["seventeen"], ["1901"],
         ["River Sillow"], ["Elsabet Moor"]]
KEYWORDS = {"questions": QUESTIONS, "title": "Ostrith Kaldane", "context": PASSAGE,
            "passage_golds": GOLDS}


def grade(answers: list[str], **overrides: object) -> list[float]:
    """Grade one answer per question of the test passage, with the env's keywords."""
    return committed(answers, GOLDS, **{**KEYWORDS, **overrides})


def test_committed_is_the_default_reward_grader() -> None:
    from selfedit.envs.config import GRADER_NAMES, EnvConfig

    assert GRADERS["committed"] is committed
    assert EnvConfig().reward_grader == "committed"
    assert "committed" in GRADER_NAMES


@pytest.mark.parametrize(
    ("index", "answer"),
    [
        (0, "Belcaster"),
        (0, "Kaldane was from the port city of Belcaster."),
        (1, "Kaldane's tide clock used a column of mercury"),
        (1, "A column of mercury."),
        (2, "He patented the tide clock in 1849."),
        (3, "17 harbours"),  # number words and digits are the same answer
        (3, "Seventeen harbours adopted the tide clock."),
        (4, "The bridge opened in 1901."),
        (4, "The Hobb Bridge opened in 1901.\nIt took nine years."),  # only the first line
        (5, "The Hobb Bridge crosses the River Sillow, a long river."),  # a short description
        (6, "Kaldane married the botanist Elsabet Moor in Tollard."),  # one further name
        (6, "Elsabet Moor. Elsabet Moor."),
        (0, "Belcaster, Belcaster, in Belcaster"),  # repetition is not a list
        (5, "The River Sillow, in Tollard, a long river."),  # one list-like item is fine
    ],
)
def test_committed_pays_natural_answers(index: int, answer: str) -> None:
    answers = [""] * len(QUESTIONS)
    answers[index] = answer
    assert grade(answers)[index] == 1.0, answer


@pytest.mark.parametrize(
    ("index", "answer", "why"),
    [
        (0, "Belcaster, mercury, 1849, Hobb Bridge, River Sillow", "other golds (list)"),
        (0, "It is Belcaster, 1849, Hobb Bridge", "list behind a prefix"),
        (4, "1899, 1901", "a competing number"),
        (4, "1901 or 1902", "a hedge between numbers"),
        (5, "The River Sillow or the River Audle", "a hedge between names"),
        (0, "Belcaster / Tollard", "a hedge behind a slash"),
        (0, "Tollard /Belcaster", "a hedge behind a slash, the gold second"),
        (6, "Elsabet Moor & Ann Brill", "a hedge behind an ampersand"),
        (0, "Belcaster | Marrow | Tollard", "three candidates behind bars"),
        (1, "Kaldane's tide clock used a column of mercury to predict high water to within "
            "four minutes.", "the sentence holding the gold"),
        (2, "He patented it in 1849, and seventeen harbours adopted it within a decade.",
         "a further clause (and another question's gold)"),
        (4, "The Hobb Bridge over the River Sillow opened in 1901 after nine years of work.",
         "recital with further facts"),
        (4, "When did the Hobb Bridge open?", "question echo"),
        (4, "Yes.", "yes/no"),
        (0, "Kaldane", "the most frequent word"),
        (6, "Belcaster", "another question's gold"),
        (4, " ".join(["word"] * 13) + " 1901", "the gold after the word horizon"),
        (4, "", "empty"),
        (4, "1901, Tollard, in Marrow", "a list (no other gold, within the word budget)"),
        (2, "1849, Hobb Bridge, in Belcaster, tide clock", "a list holding names of the question"),
    ],
)
def test_committed_rejects_answers_that_do_not_commit(index: int, answer: str, why: str) -> None:
    answers = [""] * len(QUESTIONS)
    answers[index] = answer
    assert grade(answers)[index] == 0.0, why


def test_committed_restating_the_question_does_not_use_up_the_horizon() -> None:
    # 14 words before the gold, all of them restating the question.
    question = ("In what year did the engineer from the port city patent the pressure regulated "
                "tide clock?")
    answer = ("The engineer from the port city patented the pressure regulated tide clock in "
              "the year 1849.")
    assert committed([answer], [["1849"]], questions=[question]) == [1.0]
    assert contains([answer], [["1849"]]) == [0.0]  # contains cuts at 12 words


def test_committed_gold_inside_the_question() -> None:
    question = "Who won the final, the Broncos or the Steelers?"
    golds = [["Broncos"]]
    assert committed(["The Broncos."], golds, questions=[question]) == [1.0]
    assert committed([question], golds, questions=[question]) == [0.0]  # an echo
    assert committed(["The Broncos won the final over the Steelers."], golds,
                     questions=[question]) == [0.0]


def test_committed_other_gold_inside_own_gold_or_question_is_fine() -> None:
    golds = [["Denver Broncos"], ["Broncos"], ["Levi's Stadium"]]
    questions = ["Who won?", "Which team scored first?", "Where did the Broncos play?"]
    answers = ["The Denver Broncos won.", "", "The Broncos played at Levi's Stadium."]
    scores = committed(answers, golds, questions=questions, passage_golds=golds)
    assert scores[0] == 1.0  # "Broncos" (another gold) is part of this gold
    assert scores[2] == 1.0  # "Broncos" is in this question


def test_committed_separators_inside_a_gold_are_part_of_it() -> None:
    """A separator that the gold itself holds is no hedge ("Marks & Spencer", "AC/DC")."""
    for gold, answer in (("Marks & Spencer", "It was sold to Marks & Spencer."),
                         ("AC/DC", "The band AC/DC played."), ("1901", "In 1901 / so it seems")):
        assert committed([answer], [[gold]], questions=["Who bought it?"]) == [1.0], answer


def test_committed_pays_a_gold_longer_than_the_horizon_that_starts_the_answer() -> None:
    question = "Why did the guild refuse the charter?"
    gold = ("because the charter would have bound every weaver of the valley to sell "
            "through the guild hall")  # 17 words, past the 12-word horizon
    assert committed([gold.capitalize() + "."], [[gold]], questions=[question]) == [1.0]
    assert committed([f"The guild refused the charter {gold}."], [[gold]],
                     questions=[question]) == [1.0]  # restating the question first
    late = "In the spring of that year after a long and bitter winter of debate, " + gold
    assert committed([late], [[gold]], questions=[question]) == [0.0]


def test_committed_pays_one_answer_given_to_several_questions_once() -> None:
    """Rule 9: a gold that the answers to m-1 other questions also commit to earns 1/m."""
    answers = [""] * len(QUESTIONS)
    answers[2] = answers[4] = "In 1849."  # one guess for both "when" questions
    assert grade(answers)[2] == 0.5 and grade(answers)[4] == 0.0
    # The first name of the passage for every "which" question: right once, paid a third.
    which = [0, 5, 6]
    answers = ["Belcaster" if i in which else "" for i in range(len(QUESTIONS))]
    assert [grade(answers)[i] for i in which] == pytest.approx([1 / 3, 0.0, 0.0])
    # The same sentence for two questions about the bridge: the right one is paid half.
    answers = [""] * len(QUESTIONS)
    answers[4] = answers[5] = "The Hobb Bridge opened in 1901."
    assert grade(answers)[4] == 0.5


def test_committed_shares_only_between_questions_with_other_golds() -> None:
    # Two questions with one gold: the same answer to both is right twice.
    golds = [["Elsabet Moor"], ["Elsabet Moor"]]
    questions = ["Which botanist did Kaldane marry?", "Who was Kaldane's wife?"]
    assert committed(["Elsabet Moor."] * 2, golds, questions=questions,
                     passage_golds=golds) == [1.0, 1.0]
    # Another answer that mentions this gold while committing to its own is no sharer.
    answers = [""] * len(QUESTIONS)
    answers[0] = "Belcaster"
    answers[6] = "Elsabet Moor, a botanist."
    answers[1] = "Kaldane's tide clock, made in Belcaster, used a column of mercury."
    scores = grade(answers)
    assert scores[0] == 1.0 and scores[6] == 1.0


def test_committed_degrades_towards_strictness_without_keywords() -> None:
    answer = "Kaldane married the botanist Elsabet Moor in Tollard."
    index = 6
    answers = [""] * len(QUESTIONS)
    answers[index] = answer
    full = grade(answers)[index]
    without_questions = committed(answers, GOLDS, context=PASSAGE,
                                  passage_golds=GOLDS)[index]
    bare = committed([answer], [GOLDS[index]])[0]
    assert (full, without_questions, bare) == (1.0, 0.0, 0.0)
    # Every keyword missing: the bare gold still scores.
    assert committed(["Elsabet Moor"], [["Elsabet Moor"]]) == [1.0]
    # Without passage_golds, the other entries of golds are the other questions' golds.
    assert committed(["Belcaster, 1849"] * 2, [["Belcaster"], ["1849"]]) == [0.0, 0.0]


def test_committed_never_rises_when_a_keyword_is_removed() -> None:
    """Missing keywords may only make the grader stricter, for every answer we have."""
    answers = [
        "Belcaster", "Kaldane's tide clock used a column of mercury", "In 1849.",
        "Seventeen harbours adopted the tide clock.", "The bridge opened in 1901.",
        "The Hobb Bridge crosses the River Sillow, a long river.",
        "Kaldane married the botanist Elsabet Moor in Tollard.",
    ]
    full = grade(answers)
    for missing in ("questions", "title", "context", "passage_golds"):
        kept = {k: v for k, v in KEYWORDS.items() if k != missing}
        if missing == "context":
            kept.pop("title")
        partial = committed(answers, GOLDS, **kept)
        assert all(p <= f for p, f in zip(partial, full, strict=True)), missing


def test_committed_is_deterministic_and_bounded() -> None:
    answers = ["Belcaster " * 100_000]  # a hostile megabyte answer
    assert committed(answers, [["Belcaster"]]) == committed(answers, [["Belcaster"]])
    words = grading._words(first_sentence(answers[0]))
    assert len(words) <= grading._MAX_SENTENCE_WORDS


def test_committed_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="questions"):
        committed(["a", "b"], [["a"], ["b"]], questions=["q"])
    with pytest.raises(ValueError, match="max_extra"):
        committed(["a"], [["a"]], max_extra=-1)
    with pytest.raises(TypeError, match="list of gold answers"):
        committed(["a"], ["a"])  # type: ignore[list-item]
    assert committed(["the"], [["the"]]) == [0.0]  # golds that normalise to nothing


def test_first_sentence_and_shorten_answer_agree() -> None:
    text = "Dr. Watson paid 3.5 pounds. Then he left.\nMore."
    assert first_sentence(text) == "Dr. Watson paid 3.5 pounds."
    assert shorten_answer(text, max_words=3) == "Dr. Watson paid"
