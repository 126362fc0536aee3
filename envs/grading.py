"""Graders that score a model's closed-book answers against gold answers.

After the env trains a LoRA adapter on a passage, the model answers questions about the
passage with no context, and a grader turns each answer into a score in [0, 1]. Every grader
has the signature described by :class:`Grader`::

    grader(answers: list[str], golds: list[list[str]], **kwargs) -> list[float]

``answers[i]`` is graded against every string in ``golds[i]`` (SQuAD lists several acceptable
answers per question) and the best match counts. Keyword arguments a grader does not need,
such as ``questions``, are accepted and ignored, so the env can hand the same arguments to
every grader.

Graders, strictest first:

* :func:`exact_match`: the SQuAD v1.1 exact-match metric.
* :func:`token_f1`: the SQuAD v1.1 token-overlap F1.
* :func:`contains`: lenient; a gold answer appears as a run of whole tokens in the answer.
* :class:`LLMJudge`: a model decides whether the answer means the same as a gold answer.

Why answers are shortened before lenient grading: a model that has memorised the passage can
"answer" any question about it by reciting the passage. Exact match and F1 punish that on
their own (a recital equals no gold and has low token precision), but "the gold appears
somewhere in the answer" and "a judge can find the right answer in there" would both reward
it, and the policy would learn to make the model recite rather than learn the facts. So
:func:`contains` and :class:`LLMJudge` only see :func:`shorten_answer`'s view of an answer:
its first line, up to the end of its first sentence, at most ``max_words`` words.

Empty gold answers (or golds such as "the" that normalise to nothing) never match, so an empty
answer can never score against a data-set glitch.
"""

import json
import os
import re
import string
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

__all__ = [
    "GRADERS",
    "JUDGE_PROMPT",
    "GenerateFn",
    "Grader",
    "LLMJudge",
    "contains",
    "exact_match",
    "grade_all",
    "normalize_answer",
    "parse_verdict",
    "shorten_answer",
    "token_f1",
]


class Grader(Protocol):
    """What the env calls to score a batch of answers.

    Args:
        answers: One answer per question, as the model produced it.
        golds: For each answer, the acceptable gold answers (any one may match).
        **kwargs: Extra context (e.g. ``questions``); graders ignore what they do not use.

    Returns:
        One score in [0, 1] per answer, in the order of ``answers``.
    """

    def __call__(
        self, answers: list[str], golds: list[list[str]], **kwargs: Any
    ) -> list[float]: ...


# A local model as the judge sees it: prompts in, one reply per prompt out. The env's backend
# supplies it (applying a chat template if its model needs one).
GenerateFn = Callable[[list[str], int], list[str]]

# --------------------------------------------------------------------------------------------
# Normalisation and shortening
# --------------------------------------------------------------------------------------------

_PUNCTUATION = frozenset(string.punctuation)
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
    without_punctuation = "".join(ch for ch in lowered if ch not in _PUNCTUATION)
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
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    for match in _SENTENCE_END.finditer(line):
        if match.group() == "." and _is_abbreviation(line[: match.start()]):
            continue
        line = line[: match.end()]
        break
    return " ".join(line.split()[:max_words])


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


GRADERS: dict[str, Grader] = {
    "exact_match": exact_match,
    "f1": token_f1,
    "contains": contains,
}
"""The cheap graders, by the name their scores are reported under. :class:`LLMJudge` is not
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
    {'exact_match': [1.0], 'f1': [1.0], 'contains': [1.0]}
    """
    return {name: grader(answers, golds, **kwargs) for name, grader in GRADERS.items()}


# --------------------------------------------------------------------------------------------
# Model judge
# --------------------------------------------------------------------------------------------

JUDGE_PROMPT = (
    "You are checking answers to a quiz.\n"
    "Question: {question}\n"
    "Correct answer(s): {golds}\n"
    "Proposed answer: {answer}\n"
    "Does the proposed answer give the same answer as one of the correct answers? Wording, "
    "spelling and extra detail do not matter as long as the meaning matches.\n"
    "Reply with a single word: yes or no."
)
"""The default judge prompt; its fields are ``{question}``, ``{golds}`` and ``{answer}``."""

_VERDICT = re.compile(r"\b(yes|no)\b", re.IGNORECASE)
_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def parse_verdict(reply: str) -> float | None:
    """Read a judge's reply: the first standalone "yes" or "no", in any case, decides.

    Args:
        reply: The judge model's raw reply.

    Returns:
        1.0 for yes, 0.0 for no, None if the reply contains neither word.

    >>> parse_verdict("Yes, it matches.")
    1.0
    >>> parse_verdict("**No**")
    0.0
    >>> parse_verdict("I do not know") is None
    True
    """
    match = _VERDICT.search(reply)
    if match is None:
        return None
    return 1.0 if match.group(1).lower() == "yes" else 0.0


def _is_transient(status: int) -> bool:
    """Tell whether an HTTP status is worth retrying (rate limits and server errors)."""
    return status == 429 or status >= 500


class LLMJudge:
    """Grade answers by asking a model whether each one is correct.

    The judge sees the question, the gold answer(s) and the answer cut by
    :func:`shorten_answer` (so a recital of the passage is not graded as a whole), and is
    asked for a one-word "yes" or "no". Replies without either word score 0.0 and are
    counted in :attr:`unparsed`. Answers that are empty after shortening, and questions
    without a usable gold answer, score 0.0 without a model call.

    The model is reached one of two ways, chosen at construction:

    * local: ``LLMJudge(generate=fn)`` where ``fn(prompts, max_new_tokens)`` returns one
      reply per prompt (the env's backend provides it);
    * endpoint: ``LLMJudge(base_url="http://host:port/v1", model="gpt-4.1")`` posts to the
      OpenAI-compatible ``{base_url}/chat/completions``. The API key is read from the
      environment variable named by ``api_key_env`` on every call and never kept on the
      object, so logging or serialising the judge cannot leak it.

    Attributes:
        unparsed: Replies so far that had neither "yes" nor "no" (scored 0.0).
        judged: Verdicts asked of the model so far; ``unparsed / judged`` is the failure rate.

    >>> def scripted(prompts: list[str], max_new_tokens: int) -> list[str]:
    ...     return ["Yes." if "Proposed answer: Paris" in p else "no" for p in prompts]
    >>> judge = LLMJudge(generate=scripted)
    >>> judge(["Paris. It is big.", "Rome"], [["Paris"], ["Paris"]],
    ...       questions=["Capital of France?", "Capital of France?"])
    [1.0, 0.0]
    """

    def __init__(
        self,
        generate: GenerateFn | None = None,
        *,
        base_url: str | None = None,
        model: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        max_words: int = 12,
        max_new_tokens: int = 8,
        timeout_s: float = 60.0,
        max_retries: int = 2,
        backoff_s: float = 1.0,
        concurrency: int = 4,
        prompt_template: str = JUDGE_PROMPT,
    ) -> None:
        """Configure the judge.

        Args:
            generate: A local model, ``generate(prompts, max_new_tokens) -> replies``.
            base_url: An OpenAI-compatible API root such as ``http://127.0.0.1:8000/v1``.
            model: The model name sent to the endpoint; required with ``base_url``.
            api_key_env: The environment variable holding the endpoint's API key. It may be
                unset only for a localhost endpoint.
            max_words: Passed to :func:`shorten_answer` before judging.
            max_new_tokens: Reply budget; a one-word verdict needs only a few tokens.
            timeout_s: Per-request timeout for the endpoint.
            max_retries: Retries after a transient endpoint failure (connection errors,
                timeouts, HTTP 429 and 5xx); other HTTP errors fail at once.
            backoff_s: First retry delay; it doubles on each further retry.
            concurrency: Endpoint requests in flight at once.
            prompt_template: The judge prompt, with ``{question}``, ``{golds}`` and
                ``{answer}`` fields.

        Raises:
            ValueError: If not exactly one of ``generate`` and ``base_url`` is given, or a
                setting is out of range.
        """
        if (generate is None) == (base_url is None):
            raise ValueError(
                "LLMJudge needs exactly one model: pass generate=fn for a local model or "
                "base_url='http://host:port/v1' (with model=...) for an endpoint"
            )
        if base_url is not None:
            parsed = urllib.parse.urlsplit(base_url)
            # urllib would also open file:// and ftp:// URLs; a judge must only speak HTTP.
            if parsed.scheme not in ("http", "https") or not parsed.hostname:
                raise ValueError(
                    f"base_url must be an http(s) URL such as 'http://127.0.0.1:8000/v1', "
                    f"got {base_url!r}"
                )
            if not model:
                raise ValueError("an endpoint judge needs model=..., e.g. model='gpt-4.1'")
        for name, value, low in (
            ("max_words", max_words, 1),
            ("max_new_tokens", max_new_tokens, 1),
            ("max_retries", max_retries, 0),
            ("concurrency", concurrency, 1),
        ):
            if value < low:
                raise ValueError(f"{name} must be at least {low}, got {value}")
        if timeout_s <= 0 or backoff_s < 0:
            raise ValueError(
                f"timeout_s must be positive and backoff_s non-negative, "
                f"got timeout_s={timeout_s} and backoff_s={backoff_s}"
            )
        self.generate = generate
        self.base_url = base_url.rstrip("/") if base_url is not None else None
        self.model = model
        self.api_key_env = api_key_env
        self.max_words = max_words
        self.max_new_tokens = max_new_tokens
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.concurrency = concurrency
        self.prompt_template = prompt_template
        self.unparsed = 0
        self.judged = 0

    def __repr__(self) -> str:
        """Describe the judge without any secret (the key is never stored anyway)."""
        if self.generate is not None:
            name = getattr(self.generate, "__qualname__", type(self.generate).__name__)
            return f"LLMJudge(generate={name}, max_words={self.max_words})"
        return (
            f"LLMJudge(base_url={self.base_url!r}, model={self.model!r}, "
            f"api_key_env={self.api_key_env!r}, max_words={self.max_words})"
        )

    def __call__(
        self,
        answers: list[str],
        golds: list[list[str]],
        *,
        questions: list[str],
        **kwargs: Any,
    ) -> list[float]:
        """Judge each answer; 1.0 if the model says it is correct, else 0.0.

        Args:
            answers: One answer per question.
            golds: The acceptable gold answers for each question.
            questions: The questions, which the judge needs to tell what is being asked.
            **kwargs: Ignored; accepted so every grader takes the same arguments.

        Returns:
            1.0 or 0.0 per answer.

        Raises:
            ValueError: If the batch sizes disagree, or the model returns the wrong number
                of replies.
            RuntimeError: If the endpoint needs a key that is not set, or keeps failing.
        """
        _check_batch(answers, golds)
        if len(questions) != len(answers):
            raise ValueError(
                f"questions must have one entry per answer, "
                f"got {len(questions)} questions and {len(answers)} answers"
            )
        scores = [0.0] * len(answers)
        prompts: list[str] = []
        asked: list[int] = []  # index into answers of each prompt
        for i, (question, answer, answer_golds) in enumerate(
            zip(questions, answers, golds, strict=True)
        ):
            short = shorten_answer(answer, self.max_words)
            usable = [gold.strip() for gold in answer_golds if normalize_answer(gold)]
            if not short or not usable:
                continue  # can never be correct; spare the model call
            prompts.append(
                self.prompt_template.format(
                    question=question.strip(),
                    golds="; ".join(f'"{gold}"' for gold in usable),
                    answer=short,
                )
            )
            asked.append(i)
        if not prompts:
            return scores
        replies = self._ask(prompts)
        if len(replies) != len(prompts):
            raise ValueError(
                f"the judge model returned {len(replies)} replies for {len(prompts)} prompts"
            )
        self.judged += len(replies)
        for i, reply in zip(asked, replies, strict=True):
            verdict = parse_verdict(reply or "")
            if verdict is None:
                self.unparsed += 1
                verdict = 0.0
            scores[i] = verdict
        return scores

    def _ask(self, prompts: list[str]) -> list[str]:
        """Get one reply per prompt from whichever model this judge was given."""
        if self.generate is not None:
            return list(self.generate(prompts, self.max_new_tokens))
        api_key = self._api_key()
        executor = ThreadPoolExecutor(max_workers=min(self.concurrency, len(prompts)))
        try:
            return list(executor.map(lambda prompt: self._post(prompt, api_key), prompts))
        finally:
            # On a failure, don't keep sending requests whose results will be thrown away.
            executor.shutdown(wait=True, cancel_futures=True)

    def _api_key(self) -> str | None:
        """Read the key now (not at construction) so it never sits on the object."""
        api_key = os.environ.get(self.api_key_env) or None
        assert self.base_url is not None
        host = urllib.parse.urlsplit(self.base_url).hostname
        if api_key is None and host not in _LOCAL_HOSTS:
            raise RuntimeError(
                f"the judge endpoint {self.base_url} needs an API key: set the environment "
                f"variable {self.api_key_env} (or pass api_key_env= naming another one)"
            )
        return api_key

    def _post(self, prompt: str, api_key: str | None) -> str:
        """Send one chat completion request, retrying transient failures a bounded number
        of times, and return the reply text."""
        url = f"{self.base_url}/chat/completions"
        payload = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
            "max_tokens": self.max_new_tokens,
        }
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key is not None:
            headers["Authorization"] = f"Bearer {api_key}"
        request = urllib.request.Request(
            url, data=json.dumps(payload).encode("utf-8"), headers=headers, method="POST"
        )
        for attempt in range(self.max_retries + 1):
            delay = self.backoff_s * 2**attempt
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return _reply_text(response.read(), url)
            except urllib.error.HTTPError as err:  # before URLError: it is a subclass
                detail = err.read(300).decode("utf-8", "replace").strip()
                err.close()
                if not _is_transient(err.code) or attempt == self.max_retries:
                    raise RuntimeError(
                        f"judge endpoint {url} answered HTTP {err.code} "
                        f"after {attempt + 1} attempt(s): {detail}"
                    ) from err
                retry_after = err.headers.get("Retry-After", "") if err.headers else ""
                if retry_after.isdigit():
                    # Rate limiters say how long to wait; cap it so a run cannot stall.
                    delay = max(delay, min(float(retry_after), 60.0))
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                if attempt == self.max_retries:
                    raise RuntimeError(
                        f"judge endpoint {url} unreachable after {attempt + 1} attempt(s): {err}"
                    ) from err
            time.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")


def _reply_text(raw: bytes, url: str) -> str:
    """Pull the assistant message out of an OpenAI-shaped chat completion response."""
    try:
        content = json.loads(raw)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as err:
        raise RuntimeError(
            f"judge endpoint {url} did not return an OpenAI-style chat completion: {raw[:300]!r}"
        ) from err
    # Some servers send null content (e.g. a refusal); that is an unparsed verdict, not a crash.
    return content if isinstance(content, str) else ""
