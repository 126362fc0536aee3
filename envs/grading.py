"""Graders that score a model's closed-book answers against gold answers.

After the env trains a LoRA adapter on a passage, the model answers questions about the
passage with no context, and a grader turns each answer into a score in [0, 1]. Every grader
has the signature described by :class:`Grader`::

    grader(answers: list[str], golds: list[list[str]], **kwargs) -> list[float]

``answers[i]`` is graded against every string in ``golds[i]`` (SQuAD lists several acceptable
answers per question) and the best match counts. The env hands every grader what it may need
about the passage as keyword arguments (see :class:`Grader`); a grader ignores those it does
not use.

Graders, strictest first:

* :func:`exact_match`: the SQuAD v1.1 exact-match metric.
* :func:`token_f1`: the SQuAD v1.1 token-overlap F1.
* :func:`committed` (the default reward): the answer commits to *this* question's gold: the
  gold appears in the shortened answer, and the answer holds no other question's gold, no
  competing number, and at most ``max_extra`` further words of the passage once the
  question's own words are set aside; one answer given to several questions is paid once
  (issue 12).
* :func:`contains`: lenient; a gold answer appears as a run of whole tokens in the answer.
* :class:`~selfedit.envs.judge.LLMJudge`: a model decides whether the answer means the same
  as a gold answer (in :mod:`selfedit.envs.judge`, re-exported here).

Why answers are shortened before lenient grading: a model that has memorised the passage can
"answer" any question about it by reciting the passage. Exact match and F1 punish that on
their own (a recital equals no gold and has low token precision), but "the gold appears
somewhere in the answer" and "a judge can find the right answer in there" would both reward
it, and the policy would learn to make the model recite rather than learn the facts. So
:func:`contains`, :func:`committed` and the judge only see :func:`shorten_answer`'s view of an
answer: its first line, up to the end of its first sentence, at most ``max_words`` words.
Shortening alone is not enough: an answer that lists the passage's names and numbers, or
recites the one sentence that holds the gold, still scores under :func:`contains`
(``selfedit recitation`` measures every grader against such strategies); :func:`committed`
closes those.

Empty gold answers (or golds such as "the" that normalise to nothing) never match, so an empty
answer can never score against a data-set glitch.
"""

import functools
import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:  # the judge lives in selfedit.envs.judge, which imports this module
    from selfedit.envs.judge import JUDGE_PROMPT, GenerateFn, LLMJudge, parse_verdict

__all__ = [
    "GRADERS",
    "GRADING_VERSION",
    "JUDGE_PROMPT",
    "GenerateFn",
    "Grader",
    "LLMJudge",
    "committed",
    "contains",
    "exact_match",
    "first_sentence",
    "grade_all",
    "normalize_answer",
    "parse_verdict",
    "shorten_answer",
    "token_f1",
]

GRADING_VERSION = "4"
"""Changes whenever a cheap grader's scores change (2: ``committed`` rule 9; 3: its rule 1
pays golds longer than ``max_words``; 4: its rule 4 reads "/", "|", "&", "+" as "or"). Caches of
graded results (the env's baselines) are keyed by it, so none outlives the grader that
scored it."""

# The judge moved to selfedit.envs.judge (issue 14); these names stay importable from here.
# Resolved lazily because judge.py imports this module's text helpers.
_JUDGE_NAMES = frozenset({"JUDGE_PROMPT", "GenerateFn", "LLMJudge", "parse_verdict"})


def __getattr__(name: str) -> Any:
    """Re-export the judge's public names (``grading.LLMJudge`` keeps working)."""
    if name in _JUDGE_NAMES:
        from selfedit.envs import judge

        return getattr(judge, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Grader(Protocol):
    """What the env calls to score a batch of answers.

    A grader is any callable with this signature; it must accept (and may ignore) every
    keyword below, and any further keyword, so the env can hand all graders the same ones.

    Args:
        answers: One answer per question, as the model produced it.
        golds: For each answer, the acceptable gold answers (any one may match).
        **kwargs: What the env passes about the passage and the step; a grader uses what it
            needs and must work (possibly more strictly) when a keyword is missing:

            - ``questions`` (``list[str]``): the question text of each answer;
            - ``title`` (``str``): the passage's title;
            - ``context`` (``str``): the passage's text;
            - ``passage_golds`` (``list[list[str]]``): the gold answers of *all* the
              passage's questions, one list per question (``golds`` may be a subset);
            - ``time_budget_s`` (``float``): seconds left of the step's budget; a grader that
              calls out (the judge) must return or raise within it.

    Returns:
        One score in [0, 1] per answer, in the order of ``answers``.
    """

    def __call__(
        self, answers: list[str], golds: list[list[str]], **kwargs: Any
    ) -> list[float]: ...


# --------------------------------------------------------------------------------------------
# Normalisation and shortening
# --------------------------------------------------------------------------------------------

# str.translate deletes ASCII punctuation in one pass (the official script's per-character
# set test, at a fraction of the cost: graders run on every answer of every step).
_DELETE_PUNCTUATION = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Normalise an answer the way the official SQuAD v1.1 evaluation script does.

    Lowercases, removes ASCII punctuation, removes the articles "a", "an" and "the", and
    collapses runs of whitespace. The order matters and follows the official script:
    punctuation goes before articles, so "A-team" becomes "ateam", not "team".

    Args:
        text: Any answer or gold string.

    Returns:
        The normalised string (possibly empty).

    >>> normalize_answer("The  Eiffel Tower!")
    'eiffel tower'
    >>> normalize_answer("An apple, a day.")
    'apple day'
    """
    lowered = text.lower()
    without_punctuation = lowered.translate(_DELETE_PUNCTUATION)
    without_articles = _ARTICLES.sub(" ", without_punctuation)
    return " ".join(without_articles.split())


# A terminator run followed by whitespace ends a sentence. Requiring the whitespace is what
# keeps decimals ("3.5"), versions ("v1.2") and URLs intact.
_SENTENCE_END = re.compile(r"[.?!]+(?=\s)")
# A period after one of these is an abbreviation, not a sentence end. Erring towards not
# cutting is safe: the answer stays longer, and max_words still bounds it.
_INITIALS = re.compile(r"(?:[A-Za-z]\.)*[A-Za-z]")  # "J", "U.S", "e.g"
_LIST_MARKER = re.compile(r"\d{1,2}")  # "1. Paris" is a numbered answer, not a sentence
_TITLES = frozenset({"mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "mt", "vs", "ft"})


def _is_abbreviation(before: str) -> bool:
    """Tell whether the word just before a period makes that period an abbreviation."""
    words = before.split()
    if not words:
        return False
    word = words[-1]
    if len(words) == 1 and _LIST_MARKER.fullmatch(word):
        return True
    return bool(_INITIALS.fullmatch(word)) or word.lower() in _TITLES


def shorten_answer(text: str, max_words: int = 12) -> str:
    """Cut an answer down to the part a lenient grader may look at.

    Keeps the first non-empty line, cuts it after its first sentence (a ".", "?" or "!"
    followed by whitespace, so "3.5" is not cut; initials such as "J. K." and titles such
    as "Dr." are not treated as sentence ends), then keeps at most ``max_words`` words.
    This is what stops a model that recites the passage from being rewarded (see the
    module docstring).

    Args:
        text: The model's answer.
        max_words: How many whitespace-separated words to keep at most.

    Returns:
        The shortened answer, stripped; empty if ``text`` has no non-blank line.

    Raises:
        ValueError: If ``max_words`` is less than 1.

    >>> shorten_answer("Paris. It has been the capital since 987.\\nMore text.")
    'Paris.'
    >>> shorten_answer("It weighs about 3.5 kg! Mostly water.")
    'It weighs about 3.5 kg!'
    >>> shorten_answer("one two three four", max_words=2)
    'one two'
    """
    if max_words < 1:
        raise ValueError(f"max_words must be at least 1, got {max_words}")
    return " ".join(first_sentence(text).split()[:max_words])


def first_sentence(text: str) -> str:
    """The first non-empty line of an answer, cut after its first sentence.

    What :func:`shorten_answer` cuts to before it caps the number of words; sentence ends
    are found the same way (not in "3.5", "J. K." or "Dr.").

    >>> first_sentence("\\n Paris is the capital. It is big.")
    'Paris is the capital.'
    """
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    for match in _SENTENCE_END.finditer(line):
        if match.group() == "." and _is_abbreviation(line[: match.start()]):
            continue
        return line[: match.end()]
    return line


# --------------------------------------------------------------------------------------------
# Cheap graders
# --------------------------------------------------------------------------------------------


def _check_batch(answers: Sequence[str], golds: Sequence[Sequence[str]]) -> None:
    """Fail loudly on mismatched batches; zip would silently drop the tail."""
    if len(answers) != len(golds):
        raise ValueError(
            f"answers and golds must have one entry per question, "
            f"got {len(answers)} answers and {len(golds)} gold lists"
        )
    for i, answer_golds in enumerate(golds):
        # A bare string would be iterated character by character and match almost anything.
        if isinstance(answer_golds, str):
            raise TypeError(
                f"golds[{i}] must be a list of gold answers, got the string {answer_golds!r}; "
                f"wrap it as [{answer_golds!r}]"
            )


def _normalized_golds(answer_golds: Sequence[str]) -> list[str]:
    """Normalise golds, dropping those that normalise to nothing (they must never match)."""
    return [norm for norm in (normalize_answer(gold) for gold in answer_golds) if norm]


def exact_match(answers: list[str], golds: list[list[str]], **kwargs: Any) -> list[float]:
    """Score 1.0 where the normalised answer equals any normalised gold (SQuAD v1.1 EM).

    Args:
        answers: One answer per question.
        golds: The acceptable gold answers for each question.
        **kwargs: Ignored; accepted so every grader takes the same arguments.

    Returns:
        1.0 or 0.0 per answer.

    >>> exact_match(["The Eiffel Tower.", "Paris, France"], [["Eiffel Tower"], ["Paris"]])
    [1.0, 0.0]
    """
    _check_batch(answers, golds)
    scores = []
    for answer, answer_golds in zip(answers, golds, strict=True):
        normalized = normalize_answer(answer)
        scores.append(float(normalized in _normalized_golds(answer_golds)))
    return scores


def _f1(answer_tokens: list[str], gold_tokens: list[str]) -> float:
    """SQuAD token F1 between two token lists, counting repeated tokens as a multiset."""
    overlap = sum((Counter(answer_tokens) & Counter(gold_tokens)).values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(answer_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(answers: list[str], golds: list[list[str]], **kwargs: Any) -> list[float]:
    """Score the SQuAD v1.1 token F1 of each answer, taking the best over its golds.

    Args:
        answers: One answer per question.
        golds: The acceptable gold answers for each question.
        **kwargs: Ignored; accepted so every grader takes the same arguments.

    Returns:
        The F1 in [0, 1] per answer; 0.0 when an answer has no gold.

    >>> token_f1(["the cat sat", "a dog"], [["cat sat down"], ["cat", "bird"]])
    [0.8, 0.0]
    """
    _check_batch(answers, golds)
    scores = []
    for answer, answer_golds in zip(answers, golds, strict=True):
        answer_tokens = normalize_answer(answer).split()
        best = max(
            (_f1(answer_tokens, gold.split()) for gold in _normalized_golds(answer_golds)),
            default=0.0,
        )
        scores.append(best)
    return scores


def _contains_run(tokens: list[str], run: list[str]) -> bool:
    """Tell whether ``run`` occurs as consecutive whole tokens in ``tokens``."""
    width = len(run)
    return any(tokens[start : start + width] == run for start in range(len(tokens) - width + 1))


def contains(
    answers: list[str], golds: list[list[str]], *, max_words: int = 12, **kwargs: Any
) -> list[float]:
    """Score 1.0 where a gold appears, as whole tokens, in the shortened answer.

    The answer is first cut by :func:`shorten_answer` so that reciting the passage does not
    pay off. Matching is on normalised tokens, not raw substrings, so "10" does not match
    inside "1066" and "cat" does not match inside "concatenate".

    Args:
        answers: One answer per question.
        golds: The acceptable gold answers for each question.
        max_words: Passed to :func:`shorten_answer`.
        **kwargs: Ignored; accepted so every grader takes the same arguments.

    Returns:
        1.0 or 0.0 per answer.

    >>> contains(["It was the Battle of Hastings.", "In 1066."], [["Hastings"], ["10"]])
    [1.0, 0.0]
    >>> contains(["Rome. Paris is in the passage too."], [["Paris"]])
    [0.0]
    """
    _check_batch(answers, golds)
    scores = []
    for answer, answer_golds in zip(answers, golds, strict=True):
        tokens = normalize_answer(shorten_answer(answer, max_words)).split()
        hit = any(_contains_run(tokens, gold.split()) for gold in _normalized_golds(answer_golds))
        scores.append(float(hit))
    return scores


# --------------------------------------------------------------------------------------------
# committed: the gaming-resistant reward grader (issue 12)
# --------------------------------------------------------------------------------------------

# Function words never count as further words: answers may restate the question in a
# sentence ("It was built in 1901 by the city") without losing credit. Written for this
# project; deliberately small, since every word listed here is one a list can hide behind.
_FUNCTION_WORDS = frozenset(
    """
    a an the of in on at by for to from with as into onto upon over under about after before
    during since until than then that this these those there here it its is are was were be
    been being am has have had do does did done will would shall should can could may might
    must and or but nor if so because while which who whom whose what when where why how
    also only just very some any each every all both either such own same he she they them
    their theirs his her hers him we us our you your i me my itself himself herself
    themselves called named known around approximately roughly nearly almost more most less
    answer
    """.split()
)
# Number words up to twenty and the tens: "Seventeen" and "17" are the same answer.
_NUMBER_WORDS = {
    word: str(value)
    for value, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen"
        " fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
} | {
    word: str(10 * tens)
    for tens, word in enumerate("thirty forty fifty sixty seventy eighty ninety".split(), 3)
}
_SUFFIXES = ("ing", "ed", "es", "s", "e")
_OPENING_MARKS = "\"'([\u201c\u2018"
# Between two words, these offer alternatives the way "or" does ("Belcaster / Tollard").
_SEPARATORS = "/|&+"
# A number as SQuAD normalisation leaves it: "1993", "2817" (from "2,817"), "24\u201310",
# "1990s", "7th"; not a name that holds a digit, such as "wren2".
_NUMBER = re.compile(r"\d[\d\u2013\u2014-]*(?:st|nd|rd|th|s)?")
_ORDINAL = re.compile(r"(?<=\d)(?:st|nd|rd|th|s)$")
# A comma followed by one of these, or a semicolon, starts a further clause: "1974, and the
# visitor centre ...", "in 1816, when the partitions ...".
_CLAUSE_WORDS = frozenset(
    "and but which where when while whereas who whose so yet although though ending making"
    .split()
)
# These start a further clause even without a comma ("named after a tavern where it burned
# for 133 years"), unless they open the answer.
_RELATIVE_WORDS = frozenset("which where who whose".split())
# "and"/"but" followed by one of these starts a further clause even without a comma: "closed
# in 1958 and is now a footpath".
_CLAUSE_VERBS = frozenset("is are was were has have had will would can could".split())
# An answer's first sentence is read up to this many words: the env's answers are far
# shorter (answer_max_tokens), and the bound keeps grading linear in a hostile answer.
_MAX_SENTENCE_WORDS = 80


def _is_number(token: str) -> bool:
    return bool(_NUMBER.fullmatch(token))


@functools.lru_cache(maxsize=65_536)
def _stem(token: str) -> str:
    """A crude stem, only used to tell whether two words are the same word ("drains",
    "drained"; "Kaldane's", "Kaldane"; "50th", "50").

    >>> [_stem(t) for t in ["drains", "drained", "kaldanes", "kaldane", "used", "use", "50th"]]
    ['drain', 'drain', 'kaldan', 'kaldan', 'us', 'us', '50']
    """
    if any(ch.isdigit() for ch in token):
        return _ORDINAL.sub("", token) if _is_number(token) else token
    for suffix in _SUFFIXES:
        if token.endswith(suffix) and len(token) - len(suffix) >= 2:
            return token[: -len(suffix)]
    return token


def _tokens(text: str) -> list[str]:
    """SQuAD-normalised tokens with number words written as digits.

    >>> _tokens("The Seventeen harbours!")
    ['17', 'harbours']
    """
    return [_NUMBER_WORDS.get(token, token) for token in normalize_answer(text).split()]


def _stems(tokens: Iterable[str]) -> set[str]:
    return {_stem(token) for token in tokens}


class _Word(NamedTuple):
    """One word of an answer as :func:`committed` reads it."""

    token: str  # SQuAD-normalised, number words as digits
    fact: bool  # a number, or written with a capital anywhere but at the start (a name)
    clause: int  # which clause of the sentence the word is in, from 0
    capital: bool  # written with a capital (at the start, a name or just the first word)
    segment: int  # commas and semicolons cut the sentence into segments, from 0
    joined: bool = False  # a separator ("/", "|", "&", "+") stands between it and the last word


def _words(sentence: str) -> list[_Word]:
    """The words of a sentence (at most ``_MAX_SENTENCE_WORDS``), see :class:`_Word`.

    A new clause starts after a semicolon, at a comma followed by "and", "which", "when",
    ..., at "which", "where", "who" or "whose" anywhere but at the start, and at "and"/"but"
    followed by "is", "was", "has", ...

    >>> [(w.token, w.fact, w.clause) for w in _words("In 9 June, which")]
    [('in', False, 0), ('9', True, 0), ('june', True, 0), ('which', False, 1)]
    """
    words: list[_Word] = []
    clause = segment = 0
    previous = ""
    joined = False  # a separator since the last word ("Belcaster / Tollard", "A &B")
    for position, raw in enumerate(sentence.split()[:_MAX_SENTENCE_WORDS]):
        joined = joined or raw.lstrip(_OPENING_MARKS)[:1] in _SEPARATORS
        token = normalize_answer(raw)  # one whitespace-free word gives at most one token
        if (previous.endswith(";") or (previous.endswith(",") and token in _CLAUSE_WORDS)
                or (token in _RELATIVE_WORDS and words)
                or (normalize_answer(previous) in ("and", "but") and token in _CLAUSE_VERBS)):
            clause += 1
        if previous.endswith((",", ";")):
            segment += 1
        previous = raw
        if not token:
            continue
        token = _NUMBER_WORDS.get(token, token)
        capital = raw.lstrip(_OPENING_MARKS + _SEPARATORS)[:1].isupper()
        fact = _is_number(token) or (position > 0 and capital)
        words.append(_Word(token, fact, clause, capital, segment, joined))
        joined = raw.rstrip(".,;:!?\"')]\u201d\u2019")[-1:] in _SEPARATORS
    return words


def _kind(words: Sequence[_Word]) -> str:
    """What sort of answer a run of words is: a number, a name, or plain words."""
    if any(_is_number(w.token) for w in words):
        return "number"
    return "name" if any(w.fact for w in words) else "plain"


def _find_run(tokens: list[str], run: list[str]) -> int:
    """Index where ``run`` starts as consecutive whole tokens in ``tokens``, or -1."""
    width = len(run)
    for start in range(len(tokens) - width + 1):
        if tokens[start : start + width] == run:
            return start
    return -1


def _commits(
    sentence: str,
    gold_runs: list[list[str]],
    question: str | None,
    title_stems: set[str],
    other_golds: list[list[str]],
    passage_vocab: set[str] | None,
    max_words: int,
    max_extra: int,
) -> bool:
    """Decide one answer for :func:`committed`; the rules are documented there."""
    words = _words(sentence)
    tokens = [w.token for w in words]
    gold = _stems(token for run in gold_runs for token in run)
    asked_only = _stems(_tokens(question)) if question is not None else set()
    # Words of the question and of the title restate what is asked about, not the answer.
    asked = asked_only | title_stems
    # Rule 1: a gold as whole tokens, within the first max_words words that do not restate
    # the question (restating is not reciting); a longer gold must start the answer.
    new_words = [k for k, t in enumerate(tokens) if _stem(t) not in asked]
    horizon = new_words[max_words - 1] if len(new_words) >= max_words else len(tokens)
    starts = {tuple(run): _find_run(tokens, run) for run in gold_runs}
    matched = [run for run in gold_runs
               if 0 <= starts[tuple(run)] <= horizon - min(len(run), max_words)]
    if not matched:
        return False
    start = starts[tuple(matched[0])]
    end = start + len(matched[0])
    # Rule 2: a gold that the question itself holds is in any echo of the question; an
    # answer holding most of the question's other words is such an echo.
    if all(_stems(run) <= asked_only for run in matched):
        others = {t for t in asked_only - gold if t not in _FUNCTION_WORDS}
        if others and len(others & _stems(tokens)) >= 0.75 * len(others):
            return False
    # Rule 3: another question's gold, unless it is part of this gold or of what is asked.
    for run in other_golds:
        if _find_run(tokens, run) >= 0 and not _stems(run) <= gold | asked:
            return False
    # Rule 4, hedges: the gold joined by "and"/"or", or by a separator ("/", "|", "&", "+"),
    # to another candidate of its kind ("blue and gold", "the River Sillow or the River
    # Audle", "Belcaster / Tollard"): the nearest word beyond the joiner that is not a
    # function word or a word of the gold.
    kind = _kind(words[start:end])
    for joiner, step in ((start - 1, -1), (end, 1)):
        if 0 <= joiner < len(tokens) and tokens[joiner] in ("and", "or", "nor"):
            k = joiner + step
        elif step == 1 and end < len(words) and words[end].joined:
            k = end  # "<gold> / X"
        elif step == -1 and start > 0 and words[start].joined:
            k = start - 1  # "X / <gold>"
        else:
            continue
        while 0 <= k < len(tokens) and (tokens[k] in _FUNCTION_WORDS
                                        or _stem(tokens[k]) in gold):
            k += step
        if 0 <= k < len(tokens) and _stem(tokens[k]) not in asked:
            other = _kind([words[k]])
            # A capitalised first word may be a name or just the sentence's first word.
            if other == kind or (words[k].capital and kind != "number" and other != "number"):
                return False
    # Rule 8, lists: besides the gold's, two or more comma-separated items that are nothing
    # but names and numbers (and function words): "Ostrander Observatory, 2025, during
    # 1964" is a list even though the question names 1964.
    gold_segments = {w.segment for w in words[start:end]}
    items: dict[int, list[_Word]] = {}
    for word in words:
        if word.segment not in gold_segments:
            items.setdefault(word.segment, []).append(word)
    listed = [item for item in items.values()
              if all(w.fact or w.token in _FUNCTION_WORDS for w in item)
              and any(w.fact and _stem(w.token) not in gold for w in item)]
    if len(listed) >= 2:
        return False
    # Rules 5-7: further words. Each counts once (repeating is not reciting); names and
    # numbers count wherever they come from, plain words only when the passage has them (a
    # hallucinated detail is not a way to game a grader, a recited one is).
    answer_clause = words[start].clause
    numeric_gold = any(_is_number(w.token) for w in words[start:end])
    extra: set[str] = set()
    seen: set[str] = set()
    for word in words:
        stem = _stem(word.token)
        repeated = stem in seen
        seen.add(stem)
        if word.token in _FUNCTION_WORDS or stem in gold or stem in asked:
            continue
        if word.clause != answer_clause and not repeated:
            return False  # rule 7: a further clause says something of its own (a recital)
        if numeric_gold and _is_number(word.token):
            return False  # rule 5: a second number competes with a numeric gold
        if word.fact or passage_vocab is None or stem in passage_vocab:
            extra.add(stem)
    return len(extra) <= max_extra  # rule 6


def committed(
    answers: list[str],
    golds: list[list[str]],
    *,
    questions: Sequence[str] | None = None,
    title: str | None = None,
    context: str | None = None,
    passage_golds: Sequence[Sequence[str]] | None = None,
    max_words: int = 12,
    max_extra: int = 2,
    **kwargs: Any,
) -> list[float]:
    """Score 1.0 where the answer commits to this question's gold, and to nothing else.

    The default reward grader (issue 12). :func:`contains` pays any answer whose first
    sentence holds the gold, so an answer that lists the passage's names and numbers, or
    recites the sentence that holds the answer, scores on many questions without knowing
    any. Here the answer's first sentence (:func:`first_sentence`) is tokenised as SQuAD
    does (number words read as digits), words that restate the question or the passage's
    title are set aside, and the answer scores 1.0 only when all of these hold:

    1. a gold appears in it as whole tokens, within its first ``max_words`` words that do
       not restate the question (a gold longer than that must start the answer, after
       words that restate the question);
    2. if the question itself holds that gold, the answer is not an echo of the question
       (it does not hold 3/4 of the question's other words);
    3. it holds no gold answer of the passage's *other* questions (``passage_golds``),
       unless that gold is part of this question's gold or of the question or title;
    4. the gold is not joined by "and"/"or", or by a separator ("/", "|", "&", "+"), to
       another candidate of its kind (a number to a number, a name to a name: "1974 or
       1975", "blue and gold", "Belcaster / Tollard");
    5. beside a numeric gold there is no further number ("1460, 1974");
    6. it holds at most ``max_extra`` further words: names and numbers (words written with a
       capital, other than the first) wherever they come from, plain words when the passage
       has them; each counted once. A short description of the answer fits ("Tarn Ellick,
       a market town"); a recital of the sentence around the gold does not;
    7. no further clause (after a semicolon, ", and ...", ", which ...", "where ...",
       "and is ...") says anything of its own (words it repeats do not count);
    8. it is not a list: besides the gold's, at most one of its comma-separated parts is
       nothing but names and numbers ("Ostrander Observatory, 2025, during 1964" is a list,
       even though the question names 1964).

    An answer that passes scores ``1 / m``, where ``m - 1`` is the number of the passage's
    *other* questions whose answers are wrong for them but commit to this gold by the same
    rules, as if it were theirs (rule 9; a question whose gold holds this one, or lies
    within it, is not another question here). The same answer given to m
    questions is right at most once, so it is paid once in all: a model that answers every
    "when" question with the passage's first year, or every question about a subject with
    the one sentence it memorised about it, earns no more than one right answer's worth.

    Words are compared by a crude stem ("drained" restates "drains"); a small list of
    function words never counts. Strategies that need no knowledge of the question fail: a
    list of the passage's names holds other questions' golds (3) or further names (6); the
    passage's first sentence, or the sentence that holds the gold, brings further names,
    numbers and words (5-7); a question echo holds no gold (1) or is an echo (2); one
    candidate of the question's type for every question is paid once (9).
    ``selfedit recitation`` measures every grader against such strategies, and
    ``selfedit graders`` against hand labels (results/grader_validity/).

    Missing keywords degrade to what can still be checked, always towards strictness:
    without ``questions`` the words restating the question count as further words (only
    near-bare answers pass); without ``context`` and ``title`` every further plain word
    counts, not only the passage's; without ``passage_golds`` rule 3 uses the other entries
    of ``golds`` (nothing to check when ``golds`` holds one question).

    Args:
        answers: One answer per question.
        golds: The acceptable gold answers for each question.
        questions: The question of each answer.
        title: The passage's title (restating it is not a further word).
        context: The passage's text.
        passage_golds: The gold answers of all the passage's questions, one list per
            question.
        max_words: Rule 1's horizon, as in :func:`shorten_answer`.
        max_extra: Rule 6's limit.
        **kwargs: Ignored; accepted so every grader takes the same arguments.

    Returns:
        A score per answer: 0.0, or ``1 / m`` (1.0 for an answer given to one question).

    Raises:
        ValueError: If ``questions`` is given with the wrong length, or a limit is out of
            range.

    A natural sentence answer, and a bare one:

    >>> passage = ("Kaldane's tide clock used a column of mercury to predict high water "
    ...            "to within four minutes. It was patented in 1849 at Belcaster. The Hobb "
    ...            "Bridge opened in 1901 after nine years of work.")
    >>> qs = ["What did Kaldane's tide clock use?", "When was the tide clock patented?",
    ...       "When did the bridge open?"]
    >>> gs = [["a column of mercury"], ["1849"], ["1901"]]
    >>> kw = dict(questions=qs, context=passage, passage_golds=gs)
    >>> committed(["Kaldane's tide clock used a column of mercury", "In 1849.",
    ...            "The bridge opened in 1901."], gs, **kw)
    [1.0, 1.0, 1.0]

    A list of the passage's facts, and the same list behind "It is", for every question:

    >>> facts = "Kaldane, mercury, 1849, Hobb Bridge, 1901"
    >>> committed([facts] * 3, gs, **kw), committed(["It is " + facts] * 3, gs, **kw)
    ([0.0, 0.0, 0.0], [0.0, 0.0, 0.0])

    Reciting the sentence that holds the gold (rule 6), a hedge (rule 4), a second number
    (rule 5), a further clause (rule 7):

    >>> committed(["Kaldane's tide clock used a column of mercury to predict high water "
    ...            "to within four minutes.", "In 1849 or 1850.",
    ...            "It opened in 1901 after nine years of work."], gs, **kw)
    [0.0, 0.0, 0.0]
    >>> committed(["", "In 1849, and it was sold at Belcaster.", ""], gs, **kw)[1]
    0.0
    >>> committed(["", "1849 / 1850", "The Hobb Bridge opened in 1901 | 1902."], gs, **kw)
    [0.0, 0.0, 0.0]

    A question echo, yes/no, and another question's gold:

    >>> committed([qs[0], "yes", "1849"], gs, **kw)
    [0.0, 0.0, 0.0]

    One guess for both "when" questions: right once, paid once (rule 9):

    >>> committed(["", "In 1849.", "In 1849."], gs, **kw)
    [0.0, 0.5, 0.0]

    Without the keywords the grader is stricter, never more lenient:

    >>> answer = ["The Hobb Bridge at Belcaster opened in 1901."]
    >>> committed(answer, [["1901"]]), committed(answer, [["1901"]], questions=["When?"])
    ([0.0], [0.0])
    >>> committed(answer, [["1901"]], questions=["When did the Hobb Bridge open?"])
    [1.0]
    """
    _check_batch(answers, golds)
    if questions is not None and len(questions) != len(answers):
        raise ValueError(
            f"questions must have one entry per answer, "
            f"got {len(questions)} questions and {len(answers)} answers"
        )
    if max_words < 1 or max_extra < 0:
        raise ValueError(
            f"max_words must be >= 1 and max_extra >= 0, got max_words={max_words} and "
            f"max_extra={max_extra}"
        )
    every_gold = passage_golds if passage_golds is not None else golds
    all_runs = {tuple(run) for gold_list in every_gold for run in map(_tokens, gold_list) if run}
    passage_vocab: set[str] | None = None
    if context is not None or title is not None:
        passage_vocab = _stems(_tokens(f"{title or ''} {context or ''}"))
    title_stems = _stems(_tokens(title)) if title else set()
    sentences = [first_sentence(answer) for answer in answers]
    runs = [[run for run in map(_tokens, answer_golds) if run] for answer_golds in golds]

    def commits(j: int, gold_runs: list[list[str]]) -> bool:
        """Whether answer j commits to ``gold_runs`` (rules 1-8), as if they were its golds."""
        others = [list(run) for run in sorted(all_runs - {tuple(run) for run in gold_runs})]
        question = questions[j] if questions is not None else None
        return _commits(sentences[j], gold_runs, question, title_stems, others,
                        passage_vocab, max_words, max_extra)

    # A gold that normalises to nothing never matches.
    scores = [float(bool(gold_runs) and commits(i, gold_runs))
              for i, gold_runs in enumerate(runs)]
    # Rule 9: a gold that the wrong answers to other questions (whose golds are not this
    # one, nor hold it, nor lie within it) commit to was given to m questions: paid 1/m.
    wrong = [not score and bool(sentence.strip())
             for score, sentence in zip(scores, sentences, strict=True)]
    for i in [i for i, score in enumerate(scores) if score]:
        given = 1
        for j in range(len(answers)):
            if j == i or not wrong[j] or any(_find_run(b, a) >= 0 or _find_run(a, b) >= 0
                                             for a in runs[i] for b in runs[j]):
                continue
            if any(commits(j, [run]) for run in runs[i]):
                given += 1
        scores[i] /= given
    return scores


GRADERS: dict[str, Grader] = {
    "exact_match": exact_match,
    "f1": token_f1,
    "contains": contains,
    "committed": committed,
}
"""The cheap graders, by the name their scores are reported under. The LLM judge is not
here because it needs a model; the env adds it when one is configured."""


def grade_all(answers: list[str], golds: list[list[str]], **kwargs: Any) -> dict[str, list[float]]:
    """Run every grader in :data:`GRADERS` on the same batch.

    Args:
        answers: One answer per question.
        golds: The acceptable gold answers for each question.
        **kwargs: Passed to every grader (e.g. ``max_words`` for :func:`contains`).

    Returns:
        The scores of each grader, keyed by its name in :data:`GRADERS`.

    >>> grade_all(["Paris."], [["Paris"]])
    {'exact_match': [1.0], 'f1': [1.0], 'contains': [1.0], 'committed': [1.0]}
    """
    return {name: grader(answers, golds, **kwargs) for name, grader in GRADERS.items()}


