"""Tests for the LLM judge (selfedit.envs.judge): verdicts, a scripted local model, and the
HTTP client against real servers on 127.0.0.1 - redirects, redaction, and one deadline per
call (issue 13, item 6)."""

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from selfedit.envs import grading
from selfedit.envs.judge import (
    JUDGE_PROMPT,
    MAX_DETAIL_CHARS,
    RUBRIC_JUDGE_PROMPT,
    ChatEndpoint,
    JudgeTimeout,
    LLMJudge,
    judge_from,
    parse_verdict,
    redact,
)

# A recital of a passage: the gold ("Hastings") only appears after the first sentence.
RECITAL = (
    "In 1066 Duke William of Normandy invaded England. He defeated King Harold at the "
    "Battle of Hastings, and was crowned at Westminster Abbey on Christmas Day."
)


def test_judge_names_stay_importable_from_grading() -> None:
    from selfedit.envs.judge import JUDGE_PROMPT

    assert grading.LLMJudge is LLMJudge
    assert grading.parse_verdict is parse_verdict
    assert grading.JUDGE_PROMPT is JUDGE_PROMPT
    with pytest.raises(AttributeError):
        grading.NoSuchName  # noqa: B018


# --------------------------------------------------------------------------------------------
# LLMJudge: verdict parsing and a scripted local model
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("yes", 1.0),
        ("YES.", 1.0),
        ("  No, that is wrong", 0.0),
        ("**Yes**", 1.0),
        ("The answer is no.", 0.0),
        ("Yes... well, no.", 1.0),  # the first verdict word decides
        ("I don't know", None),  # "know" and "not" are not "no"
        ("yesterday nothing", None),
        ("", None),
    ],
)
def test_parse_verdict(reply: str, expected: float | None) -> None:
    assert parse_verdict(reply) == expected


class ScriptedModel:
    """Stands in for the user's local judge model: says yes when the proposed answer names
    a gold answer, and records what it was asked."""

    def __init__(self, garbled: bool = False) -> None:
        self.prompts: list[str] = []
        self.budgets: list[int] = []
        self.garbled = garbled

    def __call__(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        self.prompts.extend(prompts)
        self.budgets.append(max_new_tokens)
        if self.garbled:
            return ["maybe?" for _ in prompts]
        replies = []
        for prompt in prompts:
            golds_line = next(line for line in prompt.splitlines() if line.startswith("Correct"))
            answer_line = next(line for line in prompt.splitlines() if line.startswith("Proposed"))
            golds = [g.strip(' "') for g in golds_line.split(":", 1)[1].split(";")]
            hit = any(gold.lower() in answer_line.lower() for gold in golds)
            replies.append("Yes." if hit else "No, it is not.")
        return replies


def test_llm_judge_local_scores_and_prompts() -> None:
    model = ScriptedModel()
    judge = LLMJudge(generate=model, max_new_tokens=5)
    scores = judge(
        ["The Battle of Hastings.", "Westminster", RECITAL],
        [["Battle of Hastings"], ["Hastings"], ["Battle of Hastings"]],
        questions=["Which battle?", "Where was the battle?", "Which battle?"],
    )
    assert scores == [1.0, 0.0, 0.0]
    assert model.budgets == [5]
    assert len(model.prompts) == 3
    assert "Question: Which battle?" in model.prompts[0]
    assert '"Battle of Hastings"' in model.prompts[0]
    # The recital was shortened before the judge saw it: the gold sentence never reached it.
    assert "Hastings" not in model.prompts[2].split("Proposed answer:")[1]
    assert "yes or no" in model.prompts[0]
    assert judge.unparsed == 0
    assert judge.judged == 3


def test_judge_from_builds_endpoint_and_local_judges_with_a_named_prompt(tiny_model_dir,
                                                                         tmp_path) -> None:
    endpoint = judge_from("http://127.0.0.1:9/v1", model="m")
    assert (endpoint.base_url, endpoint.model) == ("http://127.0.0.1:9/v1", "m")
    assert endpoint.prompt_template == RUBRIC_JUDGE_PROMPT and endpoint.max_words == 40
    lenient = judge_from("http://127.0.0.1:9/v1", model="m", prompt="lenient")
    assert lenient.prompt_template == JUDGE_PROMPT and lenient.max_words == 12
    # A local model from its directory really answers (a tiny random model: verdicts or
    # unparsed replies, but one score per answer and every question asked).
    local = judge_from(str(tiny_model_dir))
    scores = local(["Paris.", "Rome"], [["Paris"], ["Paris"]], questions=["Capital?"] * 2)
    assert len(scores) == 2 and set(scores) <= {0.0, 1.0} and local.judged == 2
    with pytest.raises(ValueError, match="judge prompt 'kind' is not one of"):
        judge_from("http://127.0.0.1:9/v1", prompt="kind")
    with pytest.raises(FileNotFoundError, match="neither an http"):
        judge_from(str(tmp_path / "no-such-model"))


def test_the_rubric_judge_sees_the_whole_first_sentence() -> None:
    """The rubric prompt must see a recital past the answer to refuse it; the lenient one
    sees the answer's first 12 words only."""
    recital = ("The garrison was commanded by Captain Aldous Wray, who had fought at Harrow "
               "Gap in 1701 and later founded the Dunmarrow guild of armourers. More.")
    model = ScriptedModel()
    judge_from_prompt = {name: LLMJudge(generate=model, prompt_template=template,
                                        max_words=words)
                         for name, template, words in (("rubric", RUBRIC_JUDGE_PROMPT, 40),
                                                       ("lenient", JUDGE_PROMPT, 12))}
    for judge in judge_from_prompt.values():
        judge([recital], [["Aldous Wray"]], questions=["Who commanded the garrison?"])
    rubric_prompt, lenient_prompt = model.prompts
    assert "guild of armourers." in rubric_prompt and "More." not in rubric_prompt
    assert "1701" not in lenient_prompt
    assert "more than one candidate" in rubric_prompt and "further facts" in rubric_prompt


def test_llm_judge_skips_hopeless_items_without_calling_model() -> None:
    model = ScriptedModel()
    judge = LLMJudge(generate=model)
    assert judge(["", "Paris", "   "], [["Paris"], ["the"], ["x"]], questions=["a", "b", "c"]) == [
        0.0,
        0.0,
        0.0,
    ]
    assert model.prompts == []


def test_llm_judge_counts_unparsed_replies() -> None:
    judge = LLMJudge(generate=ScriptedModel(garbled=True))
    assert judge(["Paris", "Paris"], [["Paris"], ["Paris"]], questions=["q", "q"]) == [0.0, 0.0]
    assert judge.unparsed == 2
    judge(["Paris"], [["Paris"]], questions=["q"])
    assert judge.unparsed == 3  # counted across calls


def test_llm_judge_validates_inputs() -> None:
    judge = LLMJudge(generate=ScriptedModel())
    with pytest.raises(TypeError):
        judge(["a"], [["a"]])  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="questions"):
        judge(["a"], [["a"]], questions=[])
    wrong_count = LLMJudge(generate=lambda prompts, max_new_tokens: [])
    with pytest.raises(ValueError, match="replies"):
        wrong_count(["x"], [["x"]], questions=["q"])
    with pytest.raises(ValueError, match="exactly one"):
        LLMJudge()
    with pytest.raises(ValueError, match="exactly one"):
        LLMJudge(generate=ScriptedModel(), base_url="http://127.0.0.1:1/v1", model="m")
    with pytest.raises(ValueError, match="model="):
        LLMJudge(base_url="http://127.0.0.1:1/v1")
    with pytest.raises(ValueError, match="http"):
        LLMJudge(base_url="file:///etc/passwd", model="m")
    with pytest.raises(ValueError, match="max_words"):
        LLMJudge(generate=ScriptedModel(), max_words=0)


def test_llm_judge_shortening_is_configurable() -> None:
    model = ScriptedModel()
    judge = LLMJudge(generate=model, max_words=2)
    assert judge(["It was Hastings"], [["Hastings"]], questions=["q"]) == [0.0]
    assert "Proposed answer: It was\n" in model.prompts[0]


# --------------------------------------------------------------------------------------------
# LLMJudge against a real OpenAI-compatible HTTP server on 127.0.0.1
# --------------------------------------------------------------------------------------------

SECRET = "sk-test-do-not-leak-1234"


class FakeOpenAI:
    """State shared with the request handler: what arrived and how to answer."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.failures: list[int] = []  # HTTP statuses to answer with before succeeding
        self.delay_s = 0.0  # how long to stall before answering
        self.override: dict[str, Any] | None = None  # a 200 body to send instead of a verdict
        self.lock = threading.Lock()


@pytest.fixture
def fake_openai() -> Iterator[tuple[str, FakeOpenAI]]:
    """Serve /v1/chat/completions on an ephemeral localhost port for one test."""
    state = FakeOpenAI()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (name fixed by http.server)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with state.lock:
                state.requests.append(
                    {
                        "path": self.path,
                        "authorization": self.headers.get("Authorization"),
                        "content_type": self.headers.get("Content-Type"),
                        "body": body,
                    }
                )
                status = state.failures.pop(0) if state.failures else 200
            time.sleep(state.delay_s)
            if status != 200:
                self._send(status, {"error": {"message": "try again"}})
                return
            if state.override is not None:
                self._send(200, state.override)
                return
            prompt = body["messages"][0]["content"]
            answer = prompt.split("Proposed answer:")[1].splitlines()[0]
            verdict = "Yes" if "Paris" in answer else ("Unsure." if "?" in answer else "no")
            self._send(
                200,
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": verdict},
                            "finish_reason": "stop",
                        }
                    ],
                },
            )

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # keep pytest output clean

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    # A short poll interval keeps shutdown() (and so each test's teardown) fast.
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_llm_judge_endpoint_sends_key_and_parses_replies(
    fake_openai: tuple[str, FakeOpenAI], monkeypatch: pytest.MonkeyPatch
) -> None:
    base_url, state = fake_openai
    monkeypatch.setenv("JUDGE_TEST_KEY", SECRET)
    judge = LLMJudge(
        base_url=base_url + "/", model="gpt-4.1", api_key_env="JUDGE_TEST_KEY", max_new_tokens=3
    )
    scores = judge(
        ["Paris. It is also a big city.", "Lyon", "Maybe?"],
        [["Paris"], ["Paris"], ["Paris"]],
        questions=["Capital of France?"] * 3,
    )
    assert scores == [1.0, 0.0, 0.0]
    assert judge.unparsed == 1  # "Unsure." has no verdict word
    assert len(state.requests) == 3
    for request in state.requests:
        assert request["path"] == "/v1/chat/completions"
        assert request["authorization"] == f"Bearer {SECRET}"
        assert request["content_type"] == "application/json"
        body = request["body"]
        assert body["model"] == "gpt-4.1"
        assert body["temperature"] == 0
        assert body["max_tokens"] == 3
        assert body["messages"][0]["role"] == "user"
    # The answers reached the server shortened.
    sent = sorted(r["body"]["messages"][0]["content"] for r in state.requests)
    assert not any("big city" in prompt for prompt in sent)


def test_llm_judge_localhost_works_without_key(
    fake_openai: tuple[str, FakeOpenAI], monkeypatch: pytest.MonkeyPatch
) -> None:
    base_url, state = fake_openai
    monkeypatch.delenv("JUDGE_TEST_KEY", raising=False)
    judge = LLMJudge(base_url=base_url, model="local", api_key_env="JUDGE_TEST_KEY")
    assert judge(["Paris"], [["Paris"]], questions=["q"]) == [1.0]
    assert state.requests[0]["authorization"] is None


def test_llm_judge_retries_transient_errors(
    fake_openai: tuple[str, FakeOpenAI], monkeypatch: pytest.MonkeyPatch
) -> None:
    base_url, state = fake_openai
    monkeypatch.delenv("JUDGE_TEST_KEY", raising=False)
    state.failures = [503, 429]
    judge = LLMJudge(
        base_url=base_url, model="m", api_key_env="JUDGE_TEST_KEY", max_retries=2, backoff_s=0
    )
    assert judge(["Paris"], [["Paris"]], questions=["q"]) == [1.0]
    assert len(state.requests) == 3


def test_llm_judge_retries_are_bounded(
    fake_openai: tuple[str, FakeOpenAI], monkeypatch: pytest.MonkeyPatch
) -> None:
    base_url, state = fake_openai
    monkeypatch.delenv("JUDGE_TEST_KEY", raising=False)
    state.failures = [500, 500, 500, 500]
    judge = LLMJudge(
        base_url=base_url, model="m", api_key_env="JUDGE_TEST_KEY", max_retries=1, backoff_s=0
    )
    with pytest.raises(RuntimeError, match="HTTP 500 after 2 attempt"):
        judge(["Paris"], [["Paris"]], questions=["q"])
    assert len(state.requests) == 2


def test_llm_judge_does_not_retry_client_errors(
    fake_openai: tuple[str, FakeOpenAI], monkeypatch: pytest.MonkeyPatch
) -> None:
    base_url, state = fake_openai
    monkeypatch.delenv("JUDGE_TEST_KEY", raising=False)
    state.failures = [401]
    judge = LLMJudge(base_url=base_url, model="m", api_key_env="JUDGE_TEST_KEY", backoff_s=0)
    with pytest.raises(RuntimeError, match="HTTP 401 after 1 attempt"):
        judge(["Paris"], [["Paris"]], questions=["q"])
    assert len(state.requests) == 1


def test_llm_judge_unreachable_endpoint_fails_after_retries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Bind then close a socket to get a localhost port nobody listens on.
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = server.server_address[1]
    server.server_close()
    monkeypatch.delenv("JUDGE_TEST_KEY", raising=False)
    judge = LLMJudge(
        base_url=f"http://127.0.0.1:{port}/v1",
        model="m",
        api_key_env="JUDGE_TEST_KEY",
        max_retries=1,
        backoff_s=0,
        timeout_s=2,
    )
    with pytest.raises(RuntimeError, match="unreachable after 2 attempt"):
        judge(["Paris"], [["Paris"]], questions=["q"])


def test_llm_judge_times_out_and_gives_up(
    fake_openai: tuple[str, FakeOpenAI], monkeypatch: pytest.MonkeyPatch
) -> None:
    base_url, state = fake_openai
    monkeypatch.delenv("JUDGE_TEST_KEY", raising=False)
    state.delay_s = 1.0
    judge = LLMJudge(
        base_url=base_url,
        model="m",
        api_key_env="JUDGE_TEST_KEY",
        timeout_s=0.2,
        max_retries=1,
        backoff_s=0,
    )
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="unreachable after 2 attempt"):
        judge(["Paris"], [["Paris"]], questions=["q"])
    assert time.monotonic() - start < 1.5  # two 0.2 s timeouts, not two 1 s stalls
    assert len(state.requests) == 2


def test_llm_judge_rejects_malformed_response(
    fake_openai: tuple[str, FakeOpenAI], monkeypatch: pytest.MonkeyPatch
) -> None:
    base_url, state = fake_openai
    monkeypatch.delenv("JUDGE_TEST_KEY", raising=False)
    judge = LLMJudge(base_url=base_url, model="m", api_key_env="JUDGE_TEST_KEY")
    state.override = {"error": "not a chat completion"}
    with pytest.raises(RuntimeError, match="OpenAI-style"):
        judge(["Paris"], [["Paris"]], questions=["q"])
    # Null content (e.g. a refusal) is an unparsed verdict, not a crash.
    state.override = {"choices": [{"message": {"role": "assistant", "content": None}}]}
    assert judge(["Paris"], [["Paris"]], questions=["q"]) == [0.0]
    assert judge.unparsed == 1


def test_llm_judge_missing_key_for_remote_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MY_JUDGE_KEY", raising=False)
    # example.invalid never resolves; the error must come before any network access.
    judge = LLMJudge(
        base_url="https://api.example.invalid/v1", model="m", api_key_env="MY_JUDGE_KEY"
    )
    with pytest.raises(RuntimeError, match="MY_JUDGE_KEY"):
        judge(["Paris"], [["Paris"]], questions=["q"])


def test_llm_judge_never_exposes_key(
    fake_openai: tuple[str, FakeOpenAI], monkeypatch: pytest.MonkeyPatch
) -> None:
    base_url, _ = fake_openai
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    judge = LLMJudge(base_url=base_url, model="gpt-4.1")
    judge(["Paris"], [["Paris"]], questions=["q"])  # the key was read and used
    assert SECRET not in repr(judge)
    assert SECRET not in str(judge)
    assert SECRET not in repr(vars(judge))
    assert "OPENAI_API_KEY" in repr(judge)
    assert "gpt-4.1" in repr(judge)


def test_llm_judge_repr_local() -> None:
    assert repr(LLMJudge(generate=ScriptedModel(), max_words=5)) == (
        "LLMJudge(generate=ScriptedModel, max_words=5)"
    )



# --------------------------------------------------------------------------------------------
# Hardening (issue 13, item 6): redirects, redacted errors, one deadline per call
# --------------------------------------------------------------------------------------------


class Recorder:
    """A tiny HTTP server on 127.0.0.1 whose POST handler is a function of the test, and which
    records the Authorization header of every request that reached it."""

    def __init__(self, respond: Any) -> None:
        self.authorizations: list[str | None] = []
        self.release = threading.Event()  # set at teardown: ends handlers that stall
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (name fixed by http.server)
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                recorder.authorizations.append(self.headers.get("Authorization"))
                respond(self, recorder)

            do_GET = do_POST  # noqa: N815 (a followed 303 would arrive as a GET)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> "Recorder":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def _send(handler: BaseHTTPRequestHandler, status: int, body: bytes,
          headers: dict[str, str] | None = None) -> None:
    handler.send_response(status)
    for key, value in (headers or {}).items():
        handler.send_header(key, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def _completion(text: str = "yes") -> bytes:
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()


def _ok(handler: BaseHTTPRequestHandler, recorder: Recorder) -> None:
    _send(handler, 200, _completion())


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_judge_never_follows_a_redirect_with_the_key(
    status: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUDGE_TEST_KEY", SECRET)
    with Recorder(_ok) as elsewhere:
        target = f"{elsewhere.url}/chat/completions"

        def redirect(handler: BaseHTTPRequestHandler, recorder: Recorder) -> None:
            _send(handler, status, b"moved", {"Location": target})

        with Recorder(redirect) as endpoint:
            judge = LLMJudge(base_url=endpoint.url, model="m", api_key_env="JUDGE_TEST_KEY")
            with pytest.raises(RuntimeError, match="redirected") as caught:
                judge(["Paris"], [["Paris"]], questions=["q"])
            assert endpoint.authorizations == [f"Bearer {SECRET}"]  # the named host got it
        assert elsewhere.authorizations == []  # the other port never saw a request at all
    message = str(caught.value)
    assert f"127.0.0.1:{elsewhere.server.server_address[1]}" in message  # the origin only
    assert "/chat/completions" not in message.split("to ", 1)[1]
    assert SECRET not in message


def test_judge_error_bodies_are_short_and_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUDGE_TEST_KEY", SECRET)
    echo = f"invalid key {SECRET} \x1b[31m" + "x" * 5000

    def unauthorized(handler: BaseHTTPRequestHandler, recorder: Recorder) -> None:
        _send(handler, 401, echo.encode())

    def garbage(handler: BaseHTTPRequestHandler, recorder: Recorder) -> None:
        _send(handler, 200, echo.encode())

    for respond, pattern in ((unauthorized, "HTTP 401"), (garbage, "OpenAI-style")):
        with Recorder(respond) as endpoint:
            judge = LLMJudge(base_url=endpoint.url, model="m", api_key_env="JUDGE_TEST_KEY")
            with pytest.raises(RuntimeError, match=pattern) as caught:
                judge(["Paris"], [["Paris"]], questions=["q"])
        message = str(caught.value)
        assert SECRET not in message
        assert "[key redacted]" in message
        assert "\x1b" not in message
        assert len(message) < MAX_DETAIL_CHARS + 250  # the URL and the wording, not the body


def test_redact() -> None:
    assert redact("key sk-abcdef here", "sk-abcdef") == "key [key redacted] here"
    assert redact("abc", "ab") == "abc"  # a secret this short is not a secret; keep text
    assert redact("\u00e9t\u00e9\n\tok", None) == "t ok"
    assert redact("y" * 500, None).endswith("(500 characters, cut)")


def test_judge_that_never_answers_is_bounded_by_the_time_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("JUDGE_TEST_KEY", raising=False)

    def stall(handler: BaseHTTPRequestHandler, recorder: Recorder) -> None:
        recorder.release.wait(60)  # never answers while the test runs

    with Recorder(stall) as endpoint:
        judge = LLMJudge(base_url=endpoint.url, model="m", api_key_env="JUDGE_TEST_KEY",
                         timeout_s=60, max_retries=5, concurrency=2)
        start = time.monotonic()
        with pytest.raises(JudgeTimeout):
            judge(["Paris"] * 6, [["Paris"]] * 6, questions=["q"] * 6, time_budget_s=0.5)
        took = time.monotonic() - start
        # One deadline for all six questions, all retries: not 6 x 6 x 60 s.
        assert took < 2.0
        assert len(endpoint.authorizations) <= 2  # queued questions were never sent

        # The judge's own budget bounds a call too, when the caller passes none.
        bounded = LLMJudge(base_url=endpoint.url, model="m", api_key_env="JUDGE_TEST_KEY",
                           timeout_s=60, call_budget_s=0.4)
        start = time.monotonic()
        with pytest.raises(JudgeTimeout):
            bounded(["Paris"], [["Paris"]], questions=["q"])
        assert time.monotonic() - start < 2.0


def test_retries_and_back_off_stop_at_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JUDGE_TEST_KEY", raising=False)

    def busy(handler: BaseHTTPRequestHandler, recorder: Recorder) -> None:
        _send(handler, 503, b"busy", {"Retry-After": "30"})

    with Recorder(busy) as endpoint:
        judge = LLMJudge(base_url=endpoint.url, model="m", api_key_env="JUDGE_TEST_KEY",
                         max_retries=10, backoff_s=5)
        start = time.monotonic()
        with pytest.raises(JudgeTimeout, match="HTTP 503"):
            judge(["Paris"], [["Paris"]], questions=["q"], time_budget_s=0.6)
        assert time.monotonic() - start < 2.0
        assert len(endpoint.authorizations) == 1  # the back-off outlasted the budget


def test_a_reply_that_dribbles_in_is_cut_at_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JUDGE_TEST_KEY", raising=False)

    def dribble(handler: BaseHTTPRequestHandler, recorder: Recorder) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "100000")
        handler.end_headers()
        for _ in range(300):  # one byte every 0.05 s: each read is within the socket timeout
            if recorder.release.wait(0.05):
                return
            try:
                handler.wfile.write(b" ")
                handler.wfile.flush()
            except OSError:
                return

    with Recorder(dribble) as endpoint:
        judge = LLMJudge(base_url=endpoint.url, model="m", api_key_env="JUDGE_TEST_KEY",
                         timeout_s=5, max_retries=0)
        start = time.monotonic()
        with pytest.raises(JudgeTimeout):
            judge(["Paris"], [["Paris"]], questions=["q"], time_budget_s=0.5)
        assert time.monotonic() - start < 2.0


def test_oversized_reply_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JUDGE_TEST_KEY", raising=False)

    def huge(handler: BaseHTTPRequestHandler, recorder: Recorder) -> None:
        _send(handler, 200, b" " * 2_000_000)

    with Recorder(huge) as endpoint:
        judge = LLMJudge(base_url=endpoint.url, model="m", api_key_env="JUDGE_TEST_KEY")
        with pytest.raises(RuntimeError, match="larger than"):
            judge(["Paris"], [["Paris"]], questions=["q"])


def test_no_time_left_means_no_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JUDGE_TEST_KEY", raising=False)
    with Recorder(_ok) as endpoint:
        judge = LLMJudge(base_url=endpoint.url, model="m", api_key_env="JUDGE_TEST_KEY")
        with pytest.raises(JudgeTimeout, match="no time left"):
            judge(["Paris"], [["Paris"]], questions=["q"], time_budget_s=0.0)
        assert endpoint.authorizations == []
        # A budget that is ample changes nothing; cheap graders ignore the keyword.
        assert judge(["Paris"], [["Paris"]], questions=["q"], time_budget_s=30.0) == [1.0]
    assert grading.committed(["Paris"], [["Paris"]], time_budget_s=0.0) == [1.0]


def test_local_judge_ignores_the_time_budget() -> None:
    judge = LLMJudge(generate=lambda prompts, n: ["yes"] * len(prompts))
    assert judge(["Paris"], [["Paris"]], questions=["q"], time_budget_s=0.0) == [1.0]


def test_endpoint_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="user name or password"):
        LLMJudge(base_url="http://user:secret@127.0.0.1:1/v1", model="m")
    with pytest.raises(ValueError, match="call_budget_s"):
        LLMJudge(base_url="http://127.0.0.1:1/v1", model="m", call_budget_s=0)
    with pytest.raises(ValueError, match="timeout_s"):
        ChatEndpoint("http://127.0.0.1:1/v1", "m", timeout_s=float("nan"))
    endpoint = ChatEndpoint("http://127.0.0.1:1/v1/", "m", api_key_env="K")
    assert endpoint.url == "http://127.0.0.1:1/v1/chat/completions"
    assert "K" in repr(endpoint)


def test_connection_refused_is_reported_with_attempts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JUDGE_TEST_KEY", raising=False)
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    judge = LLMJudge(base_url=f"http://127.0.0.1:{port}/v1", model="m",
                     api_key_env="JUDGE_TEST_KEY", max_retries=2, backoff_s=0)
    with pytest.raises(RuntimeError, match="unreachable after 3 attempt"):
        judge(["Paris"], [["Paris"]], questions=["q"], time_budget_s=10)
