"""The red team for graders: answers that need no knowledge of the question, scored by every
grader (issue 12, part 2).

An RL agent maximises whatever the reward grader pays for. Each strategy below writes an
answer to every question of a passage *without knowing the question's answer*: it may look
at the passage (a model trained on the passage can recite it) and at the question text,
but it never picks the gold out (:data:`STRATEGIES`). A grader fit to be a reward gives
every such strategy (almost) nothing; the default reward grader ``committed`` must give
each at most :data:`MAX_GAMED` on the embedded corpus and on SQuAD dev. Two groups are
reported beside them and held to other bars, because a perfect grader pays them something:
reciters that know where the gold sits (:data:`POSITIONAL`: its sentence, clause or words;
often a correct answer) and guessers (:data:`GUESSES`: one candidate of the question's
type; a right guess is a right answer). Two sanity rows (the gold itself, and the gold in
a short sentence) show that the graders still pay real answers.

``selfedit recitation`` prints the table (the command's old two reciters are the rows
``passage`` and ``gold_sentence``); :func:`red_team_report` builds it.

Size (~700 lines): the red team is one unit, kept together so that a strategy, its
scoring and its rows in the table change in one place: the knowledge-free and positional
strategies (~250 lines of small functions), scoring them under every grader, the
end-to-end runner that trains on them, and the tables.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from selfedit.envs import grading
from selfedit.envs.corpus import Corpus, Passage, load_corpus
from selfedit.envs.grading import normalize_answer

__all__ = [
    "E2E_GRADERS",
    "FACT_LIST_INSTRUCTION",
    "GUESSES",
    "MAX_GAMED",
    "POSITIONAL",
    "EndToEndRow",
    "add_subcommand",
    "SANITY",
    "STRATEGIES",
    "capitalised_phrases",
    "end_to_end",
    "end_to_end_command",
    "end_to_end_report",
    "fact_dump",
    "load_rows",
    "main",
    "passage_sentences",
    "recitation_report",
    "recitation_scores",
    "red_team_answers",
    "red_team_report",
    "red_team_scores",
    "regrade",
    "save_rows",
]

MAX_GAMED = 0.05
"""The most the default reward grader may give any red-team strategy (issue 12)."""

# Sentence ends: a terminator, whitespace, then a capital, digit or quote.
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'])")
# A word of the passage as written: letters, digits and inner apostrophes/hyphens/commas of
# numbers ("Levi's", "black-faced", "2,817", "24\u201310").
_WORD = re.compile(r"[A-Za-z0-9\u00c0-\u024f]+(?:['\u2019\u2013,.-][A-Za-z0-9\u00c0-\u024f]+)*")
# Questions whose answer is a number or a date: a type-aware lister offers numbers only.
_AMOUNTS = "many|much|tall|long|far|old|high|deep|wide|large|big"
_NUMERIC_QUESTION = re.compile(
    rf"^\s*(when|how ({_AMOUNTS})|"
    r"(in |by |during )?what (year|decade|century|month|day|date|percentage|number))\b",
    re.IGNORECASE,
)
_FUNCTION = frozenset("a an the of in on at by for to and or but its their his her".split())

# (passage, index of the question) -> the answer this strategy gives to that question.
Strategy = Callable[[Passage, int], str]


def passage_sentences(context: str) -> list[str]:
    """Split a passage into sentences (a terminator, whitespace, then a capital or digit).

    >>> passage_sentences("It rose in 1901. Mr. Lee paid 3.5 m. Then it fell!")
    ['It rose in 1901.', 'Mr.', 'Lee paid 3.5 m.', 'Then it fell!']
    """
    return [s for s in _SENTENCE.split(context.strip()) if s]


def _is_name_or_number(word: str) -> bool:
    return word[:1].isupper() or any(ch.isdigit() for ch in word)


@functools.lru_cache(maxsize=1024)  # strategies ask again for every question of a passage
def _phrases(text: str, words: bool) -> tuple[str, ...]:
    return tuple(_capitalised_phrases(text, words=words))


def capitalised_phrases(text: str, *, words: bool = False) -> list[str]:
    """Every capitalised word or number of ``text``, joined into phrases, in order, once.

    Consecutive capitalised words and numbers form one phrase ("River Sillow"); sentence
    openers such as "The" are dropped. With ``words=True`` each word stands alone.

    >>> capitalised_phrases("The River Sillow flows 310 km to the Gulf of Maren, as River Sillow.")
    ['River Sillow', '310', 'Gulf', 'Maren']
    >>> capitalised_phrases("The River Sillow flows 310 km.", words=True)
    ['River', 'Sillow', '310']
    """
    return list(_phrases(text, words))


def _capitalised_phrases(text: str, *, words: bool = False) -> list[str]:
    phrases: list[str] = []
    run: list[str] = []
    for match in _WORD.finditer(text):
        word = match.group()
        if _is_name_or_number(word) and word.lower() not in _FUNCTION:
            if words:
                phrases.append(word)
            else:
                run.append(word)
            continue
        if run:
            phrases.append(" ".join(run))
            run = []
    if run:
        phrases.append(" ".join(run))
    return list(dict.fromkeys(phrases))


def _numbers(text: str) -> list[str]:
    return list(dict.fromkeys(w for w in _WORD.findall(text) if any(c.isdigit() for c in w)))


def _most_frequent_word(passage: Passage) -> str:
    counts = Counter(
        t for t in normalize_answer(passage.context).split() if t not in grading._FUNCTION_WORDS
    )
    return counts.most_common(1)[0][0] if counts else ""


def _sentence_with(context: str, gold: str) -> str:
    """The passage sentence holding the gold; the whole passage if none does."""
    for sentence in passage_sentences(context):
        if gold in sentence:
            return sentence
    norm = normalize_answer(gold)
    for sentence in passage_sentences(context):
        if norm and f" {norm} " in f" {normalize_answer(sentence)} ":
            return sentence
    return context


def _other_gold(passage: Passage, i: int) -> str:
    """The gold of the next question (cyclically) that is not also an answer to question i:
    an answer that a perfect grader must reject."""
    own = {normalize_answer(g) for g in passage.questions[i].answers}
    n = len(passage.questions)
    for step in range(1, n):
        other = passage.questions[(i + step) % n].answers
        if not own & {normalize_answer(g) for g in other}:
            return other[0]
    return ""


def _all_golds(passage: Passage) -> str:
    return ", ".join(dict.fromkeys(q.answers[0] for q in passage.questions))


def _typed_list(passage: Passage, i: int) -> str:
    """A lister that reads the question's type: every number of the passage for a when /
    how-many question, every name otherwise."""
    if _NUMERIC_QUESTION.match(passage.questions[i].question):
        return ", ".join(_numbers(passage.context))
    return ", ".join(capitalised_phrases(passage.context))


_YEAR = re.compile(r"^(1[0-9]{3}|20[0-9]{2})$")
_WHEN_QUESTION = re.compile(r"^\s*(when|(in |by |during )?what (year|decade|century|date))\b",
                            re.IGNORECASE)
_AMOUNT_QUESTION = re.compile(rf"^\s*how ({_AMOUNTS})\b", re.IGNORECASE)


def _typed_guess(passage: Passage, i: int) -> str:
    """One candidate of the question's type, the same for every question of that type: the
    passage's first year for a when-question, its first other number for a how-many/much
    one, else its first name phrase that the question does not hold. What a model taught
    "When ...? 1460" for every "when" question would say."""
    return (_typed_candidates(passage, i) or [""])[0]


def _typed_hedge(passage: Passage, i: int) -> str:
    """The first two candidates of :func:`_typed_guess`, offered as alternatives."""
    return " / ".join(_typed_candidates(passage, i)[:2])


def _typed_candidates(passage: Passage, i: int) -> list[str]:
    question = passage.questions[i].question
    numbers = _numbers(passage.context)
    if _WHEN_QUESTION.match(question):
        candidates = [n for n in numbers if _YEAR.match(n)] or numbers
    elif _AMOUNT_QUESTION.match(question):
        candidates = [n for n in numbers if not _YEAR.match(n)] or numbers
    else:
        asked = set(normalize_answer(question).split())
        candidates = [phrase for phrase in capitalised_phrases(passage.context)
                      if not set(normalize_answer(phrase).split()) <= asked]
    return candidates


STRATEGIES: dict[str, tuple[str, Strategy]] = {
    "passage": ("the whole passage", lambda p, i: p.context),
    "first_sentence": ("the passage's first sentence",
                       lambda p, i: (passage_sentences(p.context) or [""])[0]),
    "capitalised_words": ("every capitalised word or number, comma-separated",
                          lambda p, i: ", ".join(capitalised_phrases(p.context, words=True))),
    "capitalised_phrases": ("every name or number phrase, comma-separated",
                            lambda p, i: ", ".join(capitalised_phrases(p.context))),
    "it_is_list": ('"It is " + the name and number phrases',
                   lambda p, i: "It is " + ", ".join(capitalised_phrases(p.context))),
    "typed_list": ("the passage's numbers for when/how-many questions, names otherwise",
                   _typed_list),
    "all_golds": ("the list of all the passage's gold answers", lambda p, i: _all_golds(p)),
    "echo_then_golds": ("the question, then all the passage's gold answers",
                        lambda p, i: f"{p.questions[i].question} {_all_golds(p)}"),
    "question_echo": ("the question itself", lambda p, i: p.questions[i].question),
    "yes": ('"Yes."', lambda p, i: "Yes."),
    "no": ('"No."', lambda p, i: "No."),
    "title": ("the passage's title", lambda p, i: p.title),
    "most_frequent_word": ("the passage's most frequent content word",
                           lambda p, i: _most_frequent_word(p)),
    "other_gold": ("the gold of another question of the passage", _other_gold),
}
"""Red-team strategies by name: (description, strategy). None knows where the gold sits;
the default grader must give each at most :data:`MAX_GAMED`."""

def _gold_sentence_words(passage: Passage, i: int) -> tuple[list[str], int, int]:
    """The words of the gold's sentence and where the gold sits in them: ``(words, start,
    end)``, with ``start == end == -1`` when no run of whole words holds the gold."""
    words = _sentence_with(passage.context, passage.questions[i].answers[0]).split()
    gold = normalize_answer(passage.questions[i].answers[0]).split()
    normalized = [normalize_answer(w).split() for w in words]
    for start in range(len(words)):
        tokens: list[str] = []
        end = start
        while end < len(words) and len(tokens) < len(gold):
            tokens += normalized[end]
            end += 1
        if gold and tokens == gold:
            return words, start, end
    return words, -1, -1


def _first_words(n: int) -> Strategy:
    """The first ``n`` words of the gold's sentence: what a reciter of that sentence says
    when its answer is cut short (the env caps answers at a few dozen tokens)."""
    return lambda p, i: " ".join(_gold_sentence_words(p, i)[0][:n])


def _window(n: int) -> Strategy:
    """``n`` words of the gold's sentence centred on the gold (knows where the gold sits)."""
    def strategy(p: Passage, i: int) -> str:
        words, start, end = _gold_sentence_words(p, i)
        if start < 0:
            return " ".join(words[:n])
        low = max(0, (start + end) // 2 - n // 2)
        return " ".join(words[low:low + n])
    return strategy


def _gold_clause(p: Passage, i: int) -> str:
    """The part of the gold's sentence between the commas or semicolons around the gold."""
    sentence = _sentence_with(p.context, p.questions[i].answers[0])
    for part in re.split(r"(?<=[,;:])\s+", sentence):
        if p.questions[i].answers[0] in part:
            return part
    return sentence


POSITIONAL: dict[str, tuple[str, Strategy]] = {
    "gold_sentence": ("the sentence holding the gold (knows where, not what)",
                      lambda p, i: _sentence_with(p.context, p.questions[i].answers[0])),
    "gold_sentence_and_next": ("that sentence and the next one, as one line",
                               lambda p, i: _sentence_and_next(p, i)),
    "gold_sentence_first_8": ("the first 8 words of the gold's sentence", _first_words(8)),
    "gold_sentence_first_12": ("the first 12 words of the gold's sentence", _first_words(12)),
    "gold_clause": ("the comma-separated part of the gold's sentence that holds the gold",
                    _gold_clause),
    "gold_window_8": ("8 words of the gold's sentence centred on the gold", _window(8)),
    "gold_window_12": ("12 words of the gold's sentence centred on the gold", _window(12)),
    "gold_window_16": ("16 words of the gold's sentence centred on the gold", _window(16)),
}
"""Reciters that know where the gold sits (its sentence, clause or words) and recite a piece
of the passage around it. Reported beside :data:`STRATEGIES` but not held to
:data:`MAX_GAMED`: a short piece of the passage around the gold, or the sentence that holds
it, is often a correct answer by the rubric (results/grader_validity/rubric.md): on SQuAD,
whose questions paraphrase one sentence, the gold's sentence restates the question and
gives the answer ("Europe's last major epidemic occurred in 1720 in Marseille."). No grader
that pays natural answers can give these nothing (see results/redteam/README.md)."""

GUESSES: dict[str, tuple[str, Strategy]] = {
    "typed_guess": ("one guess per question type: the first year (when), the first other "
                    "number (how many), else the first name not in the question", _typed_guess),
    "typed_hedge": ("the first two such candidates as alternatives: \"1460 / 1974\"",
                    _typed_hedge),
}
"""Guessers: one candidate of the question's type, the same for every question of that
type (or two, offered as alternatives: ``committed`` reads a separator as "or", rule 4, so
the hedge pays only where it degenerates into a guess: a passage with one candidate). A
right guess is a right answer, so no grader can pay a guesser nothing where a passage has
few candidates of a type; ``committed`` pays a candidate given to m questions
once in all (its rule 9), so a guesser earns a part of its right guesses (its exact-match
rate): about half where passages have ten questions, more where they have few. Reported
with that part, not held to :data:`MAX_GAMED`."""

SANITY: dict[str, tuple[str, Strategy]] = {
    "gold": ("the gold answer (sanity: should score 1)", lambda p, i: p.questions[i].answers[0]),
    "gold_in_sentence": ('"It was <gold>." (sanity: should score 1 under lenient graders)',
                         lambda p, i: f"It was {p.questions[i].answers[0]}."),
}
"""Rows that show the graders still pay real answers."""


def _sentence_and_next(passage: Passage, i: int) -> str:
    """The gold's sentence and the following one with the period between them dropped, so
    the shortener cannot cut after the first."""
    sentences = passage_sentences(passage.context)
    first = _sentence_with(passage.context, passage.questions[i].answers[0])
    if first not in sentences:
        return first
    k = sentences.index(first)
    following = sentences[k + 1] if k + 1 < len(sentences) else ""
    return f"{first.rstrip('.!?')}, {following}".strip(", ")


def red_team_answers(passage: Passage, strategy: Strategy) -> list[str]:
    """The answers a strategy gives to every question of a passage."""
    return [strategy(passage, i) for i in range(len(passage.questions))]


def _rows(*, positional: bool = True, guesses: bool = True,
          sanity: bool = True) -> dict[str, tuple[str, Strategy]]:
    """The red team's rows, in table order: knowledge-free, informed, guessers, sanity."""
    return (dict(STRATEGIES) | (dict(POSITIONAL) if positional else {})
            | (dict(GUESSES) if guesses else {}) | (dict(SANITY) if sanity else {}))


def red_team_scores(
    corpus: Corpus | Sequence[Passage],
    graders: dict[str, grading.Grader] | None = None,
    *,
    sanity: bool = True,
    positional: bool = True,
    guesses: bool = True,
) -> dict[str, dict[str, float]]:
    """Mean score per (strategy, grader) over every question of the corpus.

    Each passage is graded as the env grades it: one call per passage with ``questions``,
    ``title``, ``context`` and ``passage_golds`` as keywords.

    Args:
        corpus: The passages.
        graders: Graders by name; default every grader in ``GRADERS``.
        sanity: Also score the :data:`SANITY` rows.
        positional: Also score the :data:`POSITIONAL` reciters.
        guesses: Also score the :data:`GUESSES`.

    Returns:
        ``{strategy: {grader: mean score}}``, question-weighted.
    """
    graders = dict(graders) if graders is not None else dict(grading.GRADERS)
    rows = _rows(positional=positional, guesses=guesses, sanity=sanity)
    totals: dict[str, dict[str, list[float]]] = {
        name: {g: [] for g in graders} for name in rows
    }
    for passage in corpus:
        keywords = passage.grader_keywords()
        golds = keywords["passage_golds"]
        for name, (_, strategy) in rows.items():
            answers = red_team_answers(passage, strategy)
            for gname, grader in graders.items():
                totals[name][gname].extend(float(v) for v in grader(answers, golds, **keywords))
    return {
        name: {g: float(np.mean(v)) if v else 0.0 for g, v in per.items()}
        for name, per in totals.items()
    }


def red_team_report(source: str = "embedded", passages: str | None = None,
                    judge: Any = None) -> str:
    """The red-team table of a corpus, in Markdown.

    Args:
        source: A corpus source (see :func:`~selfedit.envs.corpus.load_corpus`).
        passages: A selection such as ``"0:100"``; None for all.
        judge: Optionally an :class:`~selfedit.envs.judge.LLMJudge` scored beside the cheap
            graders (one call per passage and strategy).

    Returns:
        A title line, the table, and a line saying whether the default grader passed.
    """
    corpus = load_corpus(source).select(passages)
    graders = dict(grading.GRADERS)
    if judge is not None:
        graders["judge"] = judge
    scores = red_team_scores(corpus, graders)
    names = list(graders)
    lines = [
        f"Red team on {corpus.name} ({len(corpus)} passages, {corpus.num_questions} "
        "questions): mean score per grader of answers that need no knowledge of the question",
        "",
        "| strategy | answer given | " + " | ".join(names) + " |",
        "|---|---|" + "---:|" * len(names),
    ]
    rows = _rows()
    for name, row in scores.items():
        cells = " | ".join(f"{row[g]:.3f}" for g in names)
        lines.append(f"| {name} | {rows[name][0]} | {cells} |")
    worst = max(STRATEGIES, key=lambda name: scores[name]["committed"])
    verdict = "passes" if scores[worst]["committed"] <= MAX_GAMED else "FAILS"
    guesses = [f"{name} {scores[name]['committed']:.3f} (exact match "
               f"{scores[name]['exact_match']:.3f}, contains {scores[name]['contains']:.3f})"
               for name in GUESSES]
    lines += ["", f"Default grader `committed` {verdict}: worst knowledge-free strategy {worst} "
              f"scores {scores[worst]['committed']:.3f} (limit {MAX_GAMED}). The reciters that "
              "know where the gold sits (gold_sentence*, gold_clause, gold_window_*) are "
              "reported, not held to the limit: the gold's sentence, or a short piece of it "
              "around the gold, is often a correct answer. Guessers are reported beside what "
              "the exact and lenient graders pay them (a right guess is a right answer; "
              "committed pays one guess given to m questions once and no hedge): "
              + "; ".join(guesses) + "."]
    return "\n".join(lines)


# The command's first version scored two reciters; its names stay for existing callers.
def recitation_scores(corpus: Corpus, judge: Any = None) -> dict[str, dict[str, float]]:
    """Mean score per (reciter, grader): the whole passage, the gold's sentence, the gold.

    Kept for callers of the first version; :func:`red_team_scores` scores every strategy.
    """
    graders = dict(grading.GRADERS) | ({"judge": judge} if judge is not None else {})
    scores = red_team_scores(corpus, graders)
    return {"passage": scores["passage"], "sentence": scores["gold_sentence"],
            "gold": scores["gold"]}


def recitation_report(source: str = "embedded", passages: str | None = None,
                      judge: Any = None) -> str:
    """What ``selfedit recitation`` prints: now the full red-team table
    (:func:`red_team_report`)."""
    return red_team_report(source, passages, judge=judge)


# --------------------------------------------------------------------------------------------
# End to end (issue 12, part 2): strategies that teach the model to emit fact lists, through
# the env, next to no_training and the human templates
# --------------------------------------------------------------------------------------------

FACT_LIST_INSTRUCTION = (
    "List every name, place, date and number in the passage, separated by commas, on one "
    "line. Write nothing else."
)
"""The template-mode attack: the self model is asked for a comma-separated fact list, and
only that list is trained on (``include_passage`` false)."""

E2E_GRADERS = ("committed", "contains", "f1", "exact_match")


def fact_dump(passage: Passage) -> dict[str, Any]:
    """The self-edit-mode attack: one training sequence that is nothing but the passage's
    capitalised words and numbers, comma-separated (consecutive ones kept together, as in
    "Denver Broncos, Carolina Panthers, Levi's Stadium, 2016")."""
    return {"sequences": [", ".join(capitalised_phrases(passage.context))]}


@dataclass
class EndToEndRow:
    """One (strategy, passage) evaluation through the env."""

    strategy: str
    mode: str  # the env's action_mode
    passage_id: str
    metrics: dict[str, float]  # adapted accuracy per grader
    base_metrics: dict[str, float]  # no-adapter accuracy per grader
    answers: list[str]
    seconds: float
    reward: float  # what the env paid (invalid_reward for an action it could not evaluate)
    error: str | None = None  # the env's error; the model then answers as without training
    completion: str = ""  # template mode: what the self model wrote (first 400 characters)


def end_to_end(
    passages: Sequence[int], *, num_epochs: int | None = None, seed: int = 0,
    env_kwargs: dict[str, Any] | None = None, progress: Callable[[str], None] | None = None,
    done: Sequence[EndToEndRow] = (), on_row: Callable[[EndToEndRow], None] | None = None,
) -> list[EndToEndRow]:
    """Run the attacks and the references through :class:`SelfEditEnv` on each passage.

    Template mode: ``no_training``, the ``passage`` and ``implications`` human templates, and
    ``fact_list`` (:data:`FACT_LIST_INSTRUCTION`, trained on the list alone). Self-edit mode:
    ``fact_dump`` (:func:`fact_dump`). Both envs share one backend (one model in memory).

    Args:
        passages: Indices into the env's corpus.
        num_epochs: Train every strategy for this many epochs instead of SEAL's 10 (a
            shorter run for tests); None keeps each template's own.
        seed: Reset seed of every step (steps are deterministic for a seed).
        env_kwargs: Further :class:`EnvConfig` keys for both envs (e.g. ``model``).
        progress: Called with a line after each evaluation.
        done: Rows of an earlier, interrupted call: not evaluated again.
        on_row: Called with each new row as soon as it exists (to save progress).

    An action the env cannot evaluate (e.g. a fact list with no item of three words: no
    training sequence) is paid ``invalid_reward``; its row keeps the env's error, and its
    answers and metrics are those of ``no_training`` on the passage (nothing was trained).

    Returns:
        One row per (strategy, passage), ``done`` included.
    """
    from selfedit.envs.library import HUMAN_BASELINES
    from selfedit.envs.selfedit_env import SelfEditEnv
    from selfedit.envs.templates import Hyperparameters, Template

    kwargs = {"baseline_cache": None, **(env_kwargs or {})}
    template_env = SelfEditEnv(action_mode="template", **kwargs)
    self_edit_env = SelfEditEnv(action_mode="self_edit", backend=template_env.backend, **kwargs)

    def epochs(template: Template) -> Template:
        if num_epochs is None or template.hyperparameters.num_epochs == 0:
            return template
        hp = {**template.hyperparameters.to_dict(), "num_epochs": num_epochs}
        return Template(template.data_creation_instruction, Hyperparameters(**hp),
                        include_passage=template.include_passage, name=template.name)

    fact_list = Template(FACT_LIST_INSTRUCTION, Hyperparameters(), include_passage=False,
                         name="fact_list")
    templates = {name: epochs(HUMAN_BASELINES[name])
                 for name in ("no_training", "passage", "implications")}
    templates["fact_list"] = epochs(fact_list)
    dump_hp = Hyperparameters() if num_epochs is None else Hyperparameters(num_epochs=num_epochs)
    plan = [(name, "template") for name in templates] + [("fact_dump", "self_edit")]
    rows: list[EndToEndRow] = list(done)
    finished = {(r.strategy, r.passage_id) for r in rows}
    for index in passages:
        for name, mode in plan:
            env = template_env if mode == "template" else self_edit_env
            passage = env.corpus[index]
            if (name, passage.id) in finished:
                continue
            action: Any = (templates[name] if mode == "template"
                           else {**fact_dump(passage), "hyperparameters": dump_hp.to_dict()})
            env.reset(seed=seed, options={"passage_ids": [index]})
            start = time.perf_counter()
            _, reward, _, _, info = env.step(action)
            seconds = time.perf_counter() - start
            if info.get("error"):
                untrained = next(r for r in rows
                                 if r.strategy == "no_training" and r.passage_id == passage.id)
                row = EndToEndRow(name, mode, passage.id, dict(untrained.metrics),
                                  dict(untrained.base_metrics), list(untrained.answers),
                                  seconds, float(reward), str(info["error"]))
            else:
                result = info["results"][0] if info.get("results") else {}
                row = EndToEndRow(name, mode, passage.id, dict(info["metrics"]),
                                  dict(info["base_metrics"]), list(result.get("answers", [])),
                                  seconds, float(reward),
                                  completion=str(result.get("completion") or "")[:400])
            rows.append(row)
            if on_row is not None:
                on_row(row)
            if progress is not None:
                progress(f"{passage.id} {name}: " + ", ".join(
                    f"{g} {row.metrics.get(g, float('nan')):.3f}" for g in E2E_GRADERS)
                    + f", reward {row.reward:+.3f} ({row.seconds:.0f} s)"
                    + (f" invalid: {row.error}" if row.error else ""))
    return rows


def end_to_end_report(rows: Sequence[EndToEndRow]) -> str:
    """Mean accuracy per strategy and grader, and each strategy against ``no_training`` under
    every grader (paired over passages, bootstrap 95% interval), in Markdown."""
    from selfedit.training.stats import paired_bootstrap

    strategies = list(dict.fromkeys(r.strategy for r in rows))
    passages = list(dict.fromkeys(r.passage_id for r in rows))
    by = {(r.strategy, r.passage_id): r for r in rows}
    graders = [g for g in E2E_GRADERS if g in rows[0].metrics]
    lines = [
        f"{len(passages)} passages ({', '.join(passages)}); accuracy of the adapted model, mean"
        " over passages; 'vs no_training' is the paired mean difference with a bootstrap 95%"
        " interval over passages.",
        "",
        "| strategy | mode | " + " | ".join(graders) + " | vs no_training ("
        + graders[0] + ") | reward | invalid | s/step |",
        "|---|---|" + "---:|" * len(graders) + "---|---:|---:|---:|",
    ]
    reference = [by[("no_training", p)].metrics[graders[0]] for p in passages]
    for name in strategies:
        mine = [by[(name, p)] for p in passages]
        cells = " | ".join(f"{np.mean([r.metrics[g] for r in mine]):.3f}" for g in graders)
        if name == "no_training":
            versus = "-"
        else:
            test = paired_bootstrap([r.metrics[graders[0]] for r in mine], reference)
            verdict = "within noise" if test.within_noise else (
                "higher" if test.mean_diff > 0 else "lower")
            versus = f"{test.mean_diff:+.3f} [{test.low:+.3f}, {test.high:+.3f}] {verdict}"
        seconds = np.mean([r.seconds for r in mine])
        reward = np.mean([r.reward for r in mine])
        invalid = sum(r.error is not None for r in mine)
        lines.append(f"| {name} | {mine[0].mode} | {cells} | {versus} | {reward:+.3f} |"
                     f" {invalid} | {seconds:.0f} |")
    lines += ["", "reward: what the env paid under its reward grader (committed), with "
              "invalid_reward for actions it could not evaluate; invalid: such steps (their "
              "accuracy is that of no training, since nothing was trained)."]
    return "\n".join(lines)


def save_rows(rows: Sequence[EndToEndRow], path: Path) -> None:
    """Write end-to-end rows as JSON Lines (answers included, so they can be re-graded)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(asdict(row), ensure_ascii=False) + "\n")


def load_rows(path: Path) -> list[EndToEndRow]:
    """Read rows written by :func:`save_rows`."""
    with path.open(encoding="utf-8") as lines:
        return [EndToEndRow(**json.loads(line)) for line in lines if line.strip()]


def regrade(rows: Sequence[EndToEndRow], corpus: Corpus) -> list[EndToEndRow]:
    """Grade the rows' answers again with today's graders (the answers do not change when a
    grader does; base metrics are re-graded from the no_training rows' answers)."""
    base = {r.passage_id: r.answers for r in rows if r.strategy == "no_training"}
    out = []
    for row in rows:
        passage = corpus.by_id(row.passage_id)
        metrics = {g: float(np.mean(v)) for g, v in passage.grade_all(row.answers).items()}
        base_answers = base.get(row.passage_id)
        base_metrics = ({g: float(np.mean(v)) for g, v in passage.grade_all(base_answers).items()}
                        if base_answers is not None else row.base_metrics)
        reward = row.reward if row.error else metrics["committed"]
        out.append(EndToEndRow(row.strategy, row.mode, row.passage_id, metrics, base_metrics,
                               row.answers, row.seconds, reward, row.error, row.completion))
    return out


def add_subcommand(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``recitation`` (the red team) to the CLI's subparsers; :func:`main` runs it.

    Keeps the options of the command's first version (``--corpus``, ``--passages``,
    ``--output``, ``--judge``, ``--judge-model``) and adds ``--end-to-end``.
    """
    parser = subparsers.add_parser(
        "recitation", help="the red team: answers that need no knowledge of the question, "
        "scored by every grader (and, with --end-to-end, fact-list self-edits through the env)",
        description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default="embedded", help="corpus source (default: embedded)")
    parser.add_argument("--passages", default=None, help="selection, e.g. 0:100")
    parser.add_argument("--output", type=Path, help="also write the table here (Markdown)")
    parser.add_argument("--judge", default=None,
                        help="also score with an LLM judge: a model for a local judge "
                        "('embedded', a path or hub id) or an OpenAI-compatible base URL")
    parser.add_argument("--judge-model", default="gpt-4.1", help="model name for an endpoint judge")
    parser.add_argument("--end-to-end", type=Path, metavar="DIR", default=None,
                        help="run the fact-list attacks through the env (both action modes) "
                        "next to no_training and the passage/implications templates on "
                        "--passages (default 0:6) of --corpus; write rows.jsonl, table.md and "
                        "command.txt to DIR (minutes per passage on a CPU)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="--end-to-end: epochs of every training strategy (default: "
                        "each template's own, SEAL's 10)")
    parser.add_argument("--regrade", action="store_true",
                        help="--end-to-end: re-grade DIR/rows.jsonl with today's graders and "
                        "rewrite table.md (no model is loaded)")
    return parser


def end_to_end_command(corpus: str, passages: str | None, out: Path, *,
                       epochs: int | None = None, regrade_only: bool = False,
                       command: str | None = None) -> str:
    """What ``selfedit recitation --end-to-end DIR`` does; returns the table it wrote.

    Runs (or, with ``regrade_only``, re-grades) the end-to-end attacks on ``passages``
    (default ``0:6``) of ``corpus`` and writes ``rows.jsonl`` (appended row by row, so a
    killed run resumes where it stopped), ``table.md`` and ``command.txt`` to ``out``.
    """
    source = load_corpus(corpus)
    rows_path = out / "rows.jsonl"
    if regrade_only:
        rows = regrade(load_rows(rows_path), source)
        save_rows(rows, rows_path)
    else:
        indices = [source.passages.index(p) for p in source.select(passages or "0:6")]
        out.mkdir(parents=True, exist_ok=True)
        done = load_rows(rows_path) if rows_path.is_file() else []  # resume a killed run
        if command:
            (out / "command.txt").write_text(command + "\n", encoding="utf-8")

        def append(row: EndToEndRow) -> None:
            with rows_path.open("a", encoding="utf-8") as stream:
                stream.write(json.dumps(asdict(row), ensure_ascii=False) + "\n")

        env_kwargs = {} if corpus == "embedded" else {"corpus": corpus}
        rows = end_to_end(indices, num_epochs=epochs, env_kwargs=env_kwargs,
                          progress=lambda line: print(line, flush=True), done=done,
                          on_row=append)
    table = end_to_end_report(rows)
    (out / "table.md").write_text(table + "\n", encoding="utf-8")
    return table


def main(args: argparse.Namespace) -> int:
    """Run ``selfedit recitation`` on parsed arguments; print the table, return an exit code."""
    if args.end_to_end is None:
        from selfedit.envs.judge import judge_from

        judge = judge_from(args.judge, model=args.judge_model) if args.judge else None
        table = red_team_report(args.corpus, args.passages, judge=judge)
        if args.output:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(table + "\n", encoding="utf-8")
    else:
        argv = sys.argv[1:]
        argv = argv[argv.index("recitation") + 1:] if "recitation" in argv else argv
        command = " ".join(["OMP_NUM_THREADS=1 selfedit recitation", *argv])
        table = end_to_end_command(args.corpus, args.passages, args.end_to_end,
                                   epochs=args.epochs, regrade_only=args.regrade,
                                   command=command)
    print(table)
    return 0


if __name__ == "__main__":  # python -m selfedit.training.recitation [options]
    _parser = argparse.ArgumentParser(prog="selfedit")
    add_subcommand(_parser.add_subparsers(dest="command", required=True))
    raise SystemExit(main(_parser.parse_args(["recitation", *sys.argv[1:]])))
