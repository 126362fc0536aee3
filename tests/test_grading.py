"""Tests for the graders in selfedit.envs.grading."""

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from selfedit.envs.grading import (
    GRADERS,
    LLMJudge,
    contains,
    exact_match,
    grade_all,
    normalize_answer,
    parse_verdict,
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
    assert set(scores) == {"exact_match", "f1", "contains"} == set(GRADERS)
    assert scores["exact_match"] == [1.0, 0.0]
    assert scores["f1"] == [1.0, pytest.approx(0.4)]  # P = 1/4, R = 1
    assert scores["contains"] == [1.0, 1.0]


def test_grade_all_passes_max_words_to_contains() -> None:
    assert grade_all(["one two Paris"], [["Paris"]], max_words=2)["contains"] == [0.0]


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
