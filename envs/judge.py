"""The LLM judge: a grader that asks a model whether each answer is correct.

Two parts live here, apart from the cheap metrics of :mod:`selfedit.envs.grading` (issue 14):

* :class:`ChatEndpoint`, a small HTTP client for an OpenAI-compatible
  ``/chat/completions`` endpoint, hardened for use inside a time-budgeted env step
  (issue 13, item 6):

  - it never follows a redirect: the API key travels only to the host the user named, and a
    redirecting endpoint is a clear error that names the redirect's origin (not its full
    URL);
  - every error message that quotes the endpoint's reply is cut to :data:`MAX_DETAIL_CHARS`
    printable characters with the API key redacted, because messages end up in
    ``info["error"]`` and so in ``steps.jsonl``;
  - one deadline covers a whole call (all questions, all retries, all back-off sleeps): a
    judge that never answers costs at most the call's budget, not timeout x retries x
    questions. Replies are read in chunks against that deadline and capped in size.

* :class:`LLMJudge`, the grader: builds a yes/no prompt per (question, gold, shortened
  answer), asks either a local model or a :class:`ChatEndpoint`, and parses the verdicts.

Why urllib and not the ``openai`` package: the ``openai`` client follows redirects by
default (it re-sends the prompt to wherever a 307 points), and its timeout and retry settings
apply per request, so a deadline over all questions and retries would still have to be built
around it. Doing it with the standard library keeps the judge free of a dependency and puts
the whole policy (no redirects, one deadline, capped and redacted errors) in one short file.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any

from selfedit.envs.grading import _check_batch, normalize_answer, shorten_answer

__all__ = [
    "JUDGE_PROMPT",
    "JUDGE_PROMPTS",
    "RUBRIC_JUDGE_PROMPT",
    "judge_from",
    "MAX_DETAIL_CHARS",
    "ChatEndpoint",
    "GenerateFn",
    "JudgeTimeout",
    "LLMJudge",
    "parse_verdict",
    "redact",
]

# A local model as the judge sees it: prompts in, one reply per prompt out. The env's backend
# supplies it (applying a chat template if its model needs one).
GenerateFn = Callable[[list[str], int], list[str]]

JUDGE_PROMPT = (
    "You are checking answers to a quiz.\n"
    "Question: {question}\n"
    "Correct answer(s): {golds}\n"
    "Proposed answer: {answer}\n"
    "Does the proposed answer give the same answer as one of the correct answers? Wording, "
    "spelling and extra detail do not matter as long as the meaning matches.\n"
    "Reply with a single word: yes or no."
)
"""The lenient judge prompt (``judge_prompt: lenient``): any answer that means the gold,
extra detail and all; its fields are ``{question}``, ``{golds}`` and ``{answer}``. A list of
the passage's names that holds the gold can pass it, so it is not the env's default."""

RUBRIC_JUDGE_PROMPT = (
    "You are grading a closed-book quiz, strictly.\n"
    "Question: {question}\n"
    "Correct answer(s): {golds}\n"
    "Proposed answer (its first sentence): {answer}\n"
    "Say yes only if the proposed answer commits to one of the correct answers as the "
    "answer to this question. Wording, spelling, number format and restating the question "
    "do not matter, and one short detail about the answer is fine (\"Tarn Ellick, a market "
    "town\"; \"in 1712\").\n"
    "Say no if it offers more than one candidate (\"1974 or 1975\", a list of names or "
    "numbers); if it goes on past the answer to state further facts (another clause, or "
    "more than one further name, number or date); if it gives the correct answer for "
    "something other than what is asked; if it only repeats the question; or if the answer "
    "is missing, different or garbled.\n"
    "Reply with a single word: yes or no."
)
"""The env's judge prompt (``judge_prompt: rubric``, the default): the rubric the hand labels
of results/grader_validity/ follow, in brief, so a judge pays what ``committed`` means to pay
(a committed answer, not a list or a recital) and can be scored against those labels."""

JUDGE_PROMPTS: dict[str, tuple[str, int]] = {
    "rubric": (RUBRIC_JUDGE_PROMPT, 40),
    "lenient": (JUDGE_PROMPT, 12),
}
"""Judge prompts by name, each with the words of the answer's first sentence it shows: the
rubric judge must see a recital to refuse it; the lenient one sees only the start."""

MAX_DETAIL_CHARS = 200
"""How much of an endpoint's reply an error message may quote."""

_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
_VERDICT = re.compile(r"\b(yes|no)\b", re.IGNORECASE)
_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]+")
# Replies of a chat completion are a few hundred bytes; a megabyte is a broken or hostile
# server, and reading it all would only cost time and memory.
_MAX_REPLY_BYTES = 1_000_000
_CHUNK_BYTES = 65_536
_GRACE_S = 0.25


class JudgeTimeout(RuntimeError):
    """The judge could not finish within its deadline (the call's or the step's budget)."""


def redact(text: str, secret: str | None, limit: int = MAX_DETAIL_CHARS) -> str:
    """Make an endpoint's reply safe to put into an error message and a log.

    Removes the secret, replaces runs of non-printable or non-ASCII characters by one
    space, and cuts the text to ``limit`` characters (marking the cut).

    Args:
        text: What the endpoint sent.
        secret: The API key (or None); every occurrence becomes ``[key redacted]``.
        limit: Most characters kept.

    Returns:
        The cleaned text.

    >>> redact("bad key sk-123\\n\\x1b[31m", "sk-123")
    'bad key [key redacted]  [31m'
    >>> redact("x" * 300, None, limit=10)
    'xxxxxxxxxx... (300 characters, cut)'
    """
    if secret and len(secret) >= 4:
        text = text.replace(secret, "[key redacted]")
    text = _UNPRINTABLE.sub(" ", text).strip()
    if len(text) > limit:
        return f"{text[:limit]}... ({len(text)} characters, cut)"
    return text


def judge_from(where: str | GenerateFn, *, model: str = "gpt-4.1", prompt: str = "rubric",
               api_key_env: str = "OPENAI_API_KEY") -> LLMJudge:
    """An :class:`LLMJudge` with a named prompt, at an endpoint or on a local model.

    Args:
        where: A local model's ``generate(prompts, max_new_tokens)`` (the env passes its
            backend's), an OpenAI-compatible base URL (``http(s)://...``), or a model as
            :class:`~selfedit.envs.backend.HFBackend` loads it: a ``save_pretrained``
            directory, a ``.gguf`` file, ``embedded``, or a hub id where a hub is reachable
            (a chat model judges best).
        model: The model name sent to an endpoint.
        prompt: A key of :data:`JUDGE_PROMPTS`.
        api_key_env: The environment variable holding the endpoint's key.

    Raises:
        ValueError: For an unknown prompt name.
        FileNotFoundError: For a ``where`` that is no URL, no existing path, not
            ``embedded`` and not shaped like a hub id (``org/name``).
    """
    if prompt not in JUDGE_PROMPTS:
        raise ValueError(f"judge prompt {prompt!r} is not one of {sorted(JUDGE_PROMPTS)}")
    template, max_words = JUDGE_PROMPTS[prompt]
    if callable(where):
        return LLMJudge(generate=where, prompt_template=template, max_words=max_words)
    if where.startswith(("http://", "https://")):
        return LLMJudge(base_url=where, model=model, api_key_env=api_key_env,
                        prompt_template=template, max_words=max_words)
    if not (where == "embedded" or os.path.exists(where) or _HUB_ID.fullmatch(where)):
        raise FileNotFoundError(f"judge {where[:200]!r} is neither an http(s) base URL nor a "
                                "local model (a directory, a .gguf file, 'embedded' or a hub "
                                "id such as org/name)")
    from selfedit.envs.backend import HFBackend

    backend = HFBackend(where)
    return LLMJudge(generate=lambda texts, n: backend.generate(texts, max_new_tokens=n),
                    prompt_template=template, max_words=max_words)


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


def _origin(url: str) -> str:
    """``scheme://host[:port]`` of a URL: enough to say where a redirect pointed, without
    the path or query (which may carry tokens)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme or '?'}://{host}{port}"


class _Redirected(Exception):
    """Raised by the redirect handler in place of following a redirect."""

    def __init__(self, status: int, target: str) -> None:
        super().__init__(status, target)
        self.status = status
        self.target = target


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """urllib follows 301/302/303/307/308 by default and re-sends every header, the
    ``Authorization`` one included, to the new host (issue 13, item 6). A chat-completion
    endpoint has no reason to redirect a POST, so every redirect is refused."""

    def redirect_request(  # type: ignore[override]
        self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
        newurl: str,
    ) -> None:
        raise _Redirected(code, newurl)


class ChatEndpoint:
    """An OpenAI-compatible chat-completions endpoint, asked one prompt per request.

    The API key is read from the environment variable ``api_key_env`` at every call and is
    never stored on the object, so logging or serialising it cannot leak the key.

    Args:
        base_url: The API root, e.g. ``http://127.0.0.1:8000/v1``; requests go to
            ``{base_url}/chat/completions``.
        model: The model name sent with each request.
        api_key_env: The environment variable holding the key; it may be unset only for a
            localhost endpoint.
        timeout_s: Socket timeout of one request (connect and each read).
        max_retries: Retries after a transient failure (connection errors, timeouts, HTTP 429
            and 5xx); other HTTP errors fail at once. Retries never outlast the deadline.
        backoff_s: First retry delay; it doubles on each further retry. A ``Retry-After``
            header may lengthen it (capped at 60 s), never past the deadline.
        concurrency: Requests in flight at once.

    Raises:
        ValueError: For a URL that is not plain http(s) with a host, a URL that carries a
            user name or password, a missing model name, or a setting out of range.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        timeout_s: float = 60.0,
        max_retries: int = 2,
        backoff_s: float = 1.0,
        concurrency: int = 4,
    ) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        # urllib would also open file:// and ftp:// URLs; a judge must only speak HTTP.
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(
                f"base_url must be an http(s) URL such as 'http://127.0.0.1:8000/v1', "
                f"got {base_url!r}"
            )
        if parsed.username or parsed.password:
            # Credentials in the URL would be echoed by every error message that names it.
            raise ValueError(
                "base_url must not carry a user name or password; put the key in the "
                f"environment variable {api_key_env} instead"
            )
        if not model:
            raise ValueError("an endpoint judge needs model=..., e.g. model='gpt-4.1'")
        if max_retries < 0 or concurrency < 1:
            raise ValueError(
                f"max_retries must be >= 0 and concurrency >= 1, got max_retries={max_retries}"
                f" and concurrency={concurrency}"
            )
        if not timeout_s > 0 or not backoff_s >= 0:  # also rejects NaN
            raise ValueError(
                f"timeout_s must be positive and backoff_s non-negative, "
                f"got timeout_s={timeout_s} and backoff_s={backoff_s}"
            )
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.timeout_s = float(timeout_s)
        self.max_retries = max_retries
        self.backoff_s = float(backoff_s)
        self.concurrency = concurrency
        self._opener = urllib.request.build_opener(_RefuseRedirects)

    def __repr__(self) -> str:
        """Describe the endpoint without any secret (the key is never stored anyway)."""
        return (
            f"ChatEndpoint(base_url={self.base_url!r}, model={self.model!r}, "
            f"api_key_env={self.api_key_env!r})"
        )

    @property
    def url(self) -> str:
        """Where requests are posted."""
        return f"{self.base_url}/chat/completions"

    def api_key(self) -> str | None:
        """Read the key now (not at construction) so it never sits on the object.

        Raises:
            RuntimeError: If the key is unset and the endpoint is not on this machine.
        """
        api_key = os.environ.get(self.api_key_env) or None
        host = urllib.parse.urlsplit(self.base_url).hostname
        if api_key is None and host not in _LOCAL_HOSTS:
            raise RuntimeError(
                f"the judge endpoint {self.base_url} needs an API key: set the environment "
                f"variable {self.api_key_env} (or pass api_key_env= naming another one)"
            )
        return api_key

    def complete(self, prompts: list[str], max_new_tokens: int, *, deadline: float) -> list[str]:
        """Ask for one reply per prompt, all of them done by ``deadline``.

        Args:
            prompts: The user messages, one request each.
            max_new_tokens: ``max_tokens`` of each request.
            deadline: A :func:`time.monotonic` time by which the call returns or raises.

        Returns:
            One reply text per prompt, in order.

        Raises:
            JudgeTimeout: If the deadline passes first. Requests still in flight are
                abandoned (their sockets time out on their own), queued ones never start.
            RuntimeError: If the endpoint needs a missing key, redirects, keeps failing,
                or answers with something that is not a chat completion.
        """
        if not prompts:
            return []
        api_key = self.api_key()
        executor = ThreadPoolExecutor(max_workers=min(self.concurrency, len(prompts)))
        futures = [executor.submit(self._post, p, max_new_tokens, api_key, deadline)
                   for p in prompts]
        try:
            # A little past the deadline: workers stop at it themselves and say why (the
            # last HTTP status, a timeout); the wait only catches one that cannot.
            done, pending = wait(
                futures, timeout=max(0.0, deadline - time.monotonic()) + _GRACE_S,
                return_when=FIRST_EXCEPTION,
            )
            for future in futures:  # the first failure, in prompt order, explains the call
                if future in done and future.exception() is not None:
                    raise future.exception()  # type: ignore[misc]
            if pending:
                raise JudgeTimeout(
                    f"judge endpoint {self.url} answered {len(done)} of {len(prompts)} "
                    "questions before the deadline; the rest were abandoned"
                )
            return [future.result() for future in futures]
        finally:
            # Never wait for a stuck request: the deadline is the point. Queued requests are
            # cancelled; running ones end by their own socket timeout.
            executor.shutdown(wait=False, cancel_futures=True)

    def _post(self, prompt: str, max_new_tokens: int, api_key: str | None,
              deadline: float) -> str:
        """Send one request, retrying transient failures while time is left."""
        payload = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
            "max_tokens": max_new_tokens,
        }
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key is not None:
            headers["Authorization"] = f"Bearer {api_key}"
        data = json.dumps(payload).encode("utf-8")
        last = "no attempt made"
        for attempt in range(self.max_retries + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise JudgeTimeout(
                    f"judge endpoint {self.url}: deadline reached after {attempt} attempt(s);"
                    f" last: {last}"
                )
            request = urllib.request.Request(self.url, data=data, headers=headers,
                                             method="POST")
            delay = self.backoff_s * 2**attempt
            try:
                with self._opener.open(request, timeout=min(self.timeout_s, remaining)) as resp:
                    return _reply_text(self._read(resp, deadline), self.url, api_key)
            except _Redirected as err:
                raise RuntimeError(
                    f"judge endpoint {self.url} redirected (HTTP {err.status}) to "
                    f"{_origin(err.target)}; the judge never follows redirects, so the API key "
                    "only goes to the host you named: set env.judge to the final URL"
                ) from None
            except urllib.error.HTTPError as err:  # before URLError: it is a subclass
                try:
                    body = err.read(4 * MAX_DETAIL_CHARS).decode("utf-8", "replace")
                except (OSError, ValueError):  # the error body itself timed out or broke
                    body = ""
                detail = redact(body, api_key)
                err.close()
                last = f"HTTP {err.code}: {detail}"
                if not _is_transient(err.code) or attempt == self.max_retries:
                    raise RuntimeError(
                        f"judge endpoint {self.url} answered HTTP {err.code} "
                        f"after {attempt + 1} attempt(s): {detail}"
                    ) from None
                retry_after = err.headers.get("Retry-After", "") if err.headers else ""
                if retry_after.isdigit():
                    # Rate limiters say how long to wait; cap it so a run cannot stall.
                    delay = max(delay, min(float(retry_after), 60.0))
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                last = redact(str(err), api_key)
                if attempt == self.max_retries:
                    raise RuntimeError(
                        f"judge endpoint {self.url} unreachable after {attempt + 1} "
                        f"attempt(s): {last}"
                    ) from None
            # Sleep at most until the deadline; the loop's check then ends the call.
            time.sleep(max(0.0, min(delay, deadline - time.monotonic())))
        raise AssertionError("unreachable: the last attempt returns or raises")

    @staticmethod
    def _read(response: Any, deadline: float) -> bytes:
        """Read a reply in chunks, giving up at the deadline or past the size cap (a server
        that dribbles bytes would otherwise reset the socket timeout forever)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            if time.monotonic() > deadline:
                raise JudgeTimeout("the judge endpoint's reply did not arrive before the deadline")
            chunk = response.read(_CHUNK_BYTES)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > _MAX_REPLY_BYTES:
                raise RuntimeError(
                    f"the judge endpoint's reply is larger than {_MAX_REPLY_BYTES} bytes; "
                    "a chat completion is a few hundred"
                )
            chunks.append(chunk)


def _reply_text(raw: bytes, url: str, api_key: str | None = None) -> str:
    """Pull the assistant message out of an OpenAI-shaped chat completion response."""
    try:
        content = json.loads(raw)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as err:
        detail = redact(raw[: 4 * MAX_DETAIL_CHARS].decode("utf-8", "replace"), api_key)
        raise RuntimeError(
            f"judge endpoint {url} did not return an OpenAI-style chat completion: {detail}"
        ) from err
    # Some servers send null content (e.g. a refusal); that is an unparsed verdict, not a crash.
    return content if isinstance(content, str) else ""


class LLMJudge:
    """Grade answers by asking a model whether each one is correct.

    The judge sees the question, the gold answer(s) and the answer cut by
    :func:`~selfedit.envs.grading.shorten_answer` (so a recital of the passage is not graded
    as a whole), and is asked for a one-word "yes" or "no". Replies without either word score
    0.0 and are counted in :attr:`unparsed`. Answers that are empty after shortening, and
    questions without a usable gold answer, score 0.0 without a model call.

    The model is reached one of two ways, chosen at construction:

    * local: ``LLMJudge(generate=fn)`` where ``fn(prompts, max_new_tokens)`` returns one
      reply per prompt (the env's backend provides it). It runs in this process, bounded
      by ``max_new_tokens``; the time budget below does not interrupt it.
    * endpoint: ``LLMJudge(base_url="http://host:port/v1", model="gpt-4.1")`` posts to the
      OpenAI-compatible ``{base_url}/chat/completions`` through a :class:`ChatEndpoint`
      (no redirects, redacted and capped errors, one deadline per call).

    Time: one call of an endpoint judge ends within ``call_budget_s`` seconds, or within
    the ``time_budget_s`` keyword argument when the caller passes a smaller one (the env
    passes what is left of the step's ``max_step_seconds``); past it, :class:`JudgeTimeout`
    is raised and the step reports it as its error.

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
        call_budget_s: float = 600.0,
        prompt_template: str = JUDGE_PROMPT,
    ) -> None:
        """Configure the judge.

        Args:
            generate: A local model, ``generate(prompts, max_new_tokens) -> replies``.
            base_url: An OpenAI-compatible API root such as ``http://127.0.0.1:8000/v1``.
            model: The model name sent to the endpoint; required with ``base_url``.
            api_key_env: The environment variable holding the endpoint's API key. It may be
                unset only for a localhost endpoint.
            max_words: Passed to :func:`~selfedit.envs.grading.shorten_answer` before judging.
            max_new_tokens: Reply budget; a one-word verdict needs only a few tokens.
            timeout_s: Socket timeout of one endpoint request.
            max_retries: Retries after a transient endpoint failure (see
                :class:`ChatEndpoint`).
            backoff_s: First retry delay; it doubles on each further retry.
            concurrency: Endpoint requests in flight at once.
            call_budget_s: Most seconds one call may take, all questions and retries
                together (endpoint only).
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
        for name, value, low in (
            ("max_words", max_words, 1),
            ("max_new_tokens", max_new_tokens, 1),
            ("max_retries", max_retries, 0),
            ("concurrency", concurrency, 1),
        ):
            if value < low:
                raise ValueError(f"{name} must be at least {low}, got {value}")
        if not call_budget_s > 0:
            raise ValueError(f"call_budget_s must be a positive number of seconds, "
                             f"got {call_budget_s!r}")
        self.generate = generate
        self.endpoint = (
            ChatEndpoint(base_url, model or "", api_key_env=api_key_env, timeout_s=timeout_s,
                         max_retries=max_retries, backoff_s=backoff_s, concurrency=concurrency)
            if base_url is not None else None
        )
        self.max_words = max_words
        self.max_new_tokens = max_new_tokens
        self.call_budget_s = float(call_budget_s)
        self.prompt_template = prompt_template
        self.unparsed = 0
        self.judged = 0

    # The endpoint's settings, readable on the judge as before the client moved out.
    @property
    def base_url(self) -> str | None:
        """The endpoint's API root, or None for a local judge."""
        return self.endpoint.base_url if self.endpoint else None

    @property
    def model(self) -> str | None:
        """The endpoint's model name, or None for a local judge."""
        return self.endpoint.model if self.endpoint else None

    @property
    def api_key_env(self) -> str | None:
        """The environment variable the endpoint's key is read from."""
        return self.endpoint.api_key_env if self.endpoint else None

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
        time_budget_s: float | None = None,
        **kwargs: Any,
    ) -> list[float]:
        """Judge each answer; 1.0 if the model says it is correct, else 0.0.

        Args:
            answers: One answer per question.
            golds: The acceptable gold answers for each question.
            questions: The questions, which the judge needs to tell what is being asked.
            time_budget_s: Seconds the caller can still spend (the env passes what is left of
                the step's budget); the call's deadline is the smaller of this and
                ``call_budget_s``. Endpoint judges only.
            **kwargs: Ignored; accepted so every grader takes the same arguments.

        Returns:
            1.0 or 0.0 per answer.

        Raises:
            ValueError: If the batch sizes disagree, or the model returns the wrong number
                of replies.
            JudgeTimeout: If an endpoint judge runs out of time.
            RuntimeError: If the endpoint needs a key that is not set, redirects, or keeps
                failing.
        """
        _check_batch(answers, golds)
        if len(questions) != len(answers):
            raise ValueError(
                f"questions must have one entry per answer, "
                f"got {len(questions)} questions and {len(answers)} answers"
            )
        budget = self.call_budget_s
        if time_budget_s is not None:
            budget = min(budget, float(time_budget_s))
        deadline = time.monotonic() + budget
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
        if self.generate is not None:
            replies = list(self.generate(prompts, self.max_new_tokens))
        else:
            assert self.endpoint is not None
            if not budget > 0:
                raise JudgeTimeout(
                    f"no time left to judge {len(prompts)} answers (time_budget_s="
                    f"{time_budget_s!r}); raise max_step_seconds"
                )
            replies = self.endpoint.complete(prompts, self.max_new_tokens, deadline=deadline)
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
