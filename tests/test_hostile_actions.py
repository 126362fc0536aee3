"""Issue 13, item 1: parsing an action is bounded work, whatever the action is.

Every hostile text is parsed in both action modes (a template, a self-edit) and as a
completion, and each parse must end in its defined outcome within ``BOUND_S``. Measured on
the shared 2-core CPU under a load of 6: the worst text here takes 0.1-0.25 s (the scan
stops after ``MAX_SCAN_TOKENS`` tokens); before the fix a 1 MB bracket run took minutes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from selfedit.envs.parsing import (
    MAX_SELF_EDIT_SEQUENCES,
    parse_self_edit,
    parse_sequences,
)
from selfedit.envs.templates import (
    MAX_ACTION_CHARS,
    Template,
    TemplateError,
    extract_json,
    parse_template,
)

BOUND_S = 2.0  # generous: the slowest case below measures 0.1-0.25 s on the shared CPU
N = MAX_ACTION_CHARS  # hostile texts are built right at the cap
TEMPLATE = {"data_creation_instruction": "List the facts, one per line.",
            "hyperparameters": {"lora_rank": 8, "num_epochs": 2}}
T = json.dumps(TEMPLATE)
SELF_EDIT = json.dumps({"sequences": ["The bridge is red.", "It opened in 1901."]})


def _fit(unit: str, tail: str = "") -> str:
    """``unit`` repeated to fill the cap, leaving room for ``tail``."""
    return unit * ((N - len(tail)) // len(unit)) + tail


# Text with no usable JSON: each must be refused (TemplateError) quickly, in every mode.
HOSTILE: dict[str, Callable[[], str]] = {
    "1 MB of [": lambda: "[" * N,
    "1 MB of {": lambda: "{" * N,
    "1 MB of ]": lambda: "]" * N,
    '1 MB of {"a":': lambda: _fit('{"a":'),
    '1 MB of {"a":[': lambda: _fit('{"a":['),
    "1 MB of [1,": lambda: _fit("[1,"),
    "1 MB of {]": lambda: _fit("{]"),
    "1 MB of [}": lambda: _fit("[}"),
    "1 MB of [{": lambda: _fit("[{"),
    "1 MB of {x}": lambda: _fit("{x}"),
    '1 MB of {"': lambda: _fit('{"'),
    '1 MB of "': lambda: '"' * N,
    "escaped quotes after an open string": lambda: '{"' + _fit('\\"{', '{"'),
    "backslashes": lambda: "{" + "\\" * (N - 1),
    "one long string": lambda: '{"' + "a" * (N - 2),
    "10^5 code fences": lambda: "```" * 100_000,
    "a fence then 1 MB of spaces": lambda: "```" + " " * (N - 3),
    "a fence then 1 MB of brackets": lambda: "```json\n" + "[" * (N - 8),
    "10^5 think tags": lambda: "<think>" * 100_000,
    "unclosed think hides a template": lambda: "<think>" + T,
    "a deep prefix with no template": lambda: "[" * (N // 2) + "]" * (N // 2),
    "an int of 5000 digits": lambda: '{"data_creation_instruction": "x", "n": ' + "9" * 5000 + "}",
    "prose": lambda: _fit("The passage says it is 5\" tall; it's {big}. "),
}


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    try:
        out: Any = fn()
    except TemplateError as err:
        out = err
    return out, time.perf_counter() - t0


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_text_is_refused_quickly_in_both_modes(name: str) -> None:
    text = HOSTILE[name]()
    assert len(text) <= N
    for mode, parse in (("template", parse_template), ("self_edit", parse_self_edit)):
        out, seconds = _timed(lambda p=parse: p(text))
        assert isinstance(out, TemplateError), (mode, out)
        assert len(str(out)) < 400, "error messages quote a short preview, not the action"
        assert seconds < BOUND_S, f"{mode}: {name} took {seconds:.2f} s"


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_completions_parse_quickly(name: str) -> None:
    out, seconds = _timed(lambda: parse_sequences(HOSTILE[name](), max_sequences=64))
    assert isinstance(out, list) and len(out) <= 64
    assert all(isinstance(s, str) and len(s) <= 2000 for s in out)
    assert seconds < BOUND_S, f"{name} took {seconds:.2f} s"


@pytest.mark.parametrize("mode", ["template", "self_edit"])
def test_text_over_the_cap_is_refused_before_any_work(mode: str) -> None:
    parse = parse_template if mode == "template" else parse_self_edit
    text = T + " " * N
    out, seconds = _timed(lambda: parse(text))
    assert isinstance(out, TemplateError) and "MAX_ACTION_CHARS" in str(out)
    assert seconds < 0.5
    # A completion is model output, not an action: it is cut, not refused.
    assert parse_sequences("1. The bridge is red and tall.\n" + "x" * (2 * N)) == [
        "The bridge is red and tall."]


# A deep prefix before a valid template: the decoder recursed once per level and raised
# RecursionError near 1000; now the too-deep value is skipped whole and the template found.
DEEP_PREFIXES: dict[str, Callable[[int], str]] = {
    "balanced lists": lambda n: "[" * n + "]" * n,
    "balanced objects": lambda n: '{"a":' * n + "1" + "}" * n,
    "balanced, mixed kinds": lambda n: '[{"a":' * n + "1" + "}]" * n,
    "unclosed lists": lambda n: "[" * n,
    "unclosed objects": lambda n: '{"a":' * n,
    "unclosed lists with items": lambda n: "[1," * n,
    "lists inside a string-free object": lambda n: "{" + "[" * n + "]" * n + "}",
    "closed, then deep and wrong": lambda n: "[" * n + "}" * n,
}


@pytest.mark.parametrize("depth", [2_000, 20_000])
@pytest.mark.parametrize("name", list(DEEP_PREFIXES))
def test_template_after_a_deep_prefix_is_found(name: str, depth: int) -> None:
    text = DEEP_PREFIXES[name](depth) + "\nHere it is: " + T
    out, seconds = _timed(lambda: parse_template(text))
    assert isinstance(out, tuple), out
    assert out[0].hyperparameters.lora_rank == 8
    assert seconds < BOUND_S
    out, _ = _timed(lambda: parse_self_edit(DEEP_PREFIXES[name](depth) + SELF_EDIT))
    assert out == (["The bridge is red.", "It opened in 1901."], None)


def test_a_deep_value_is_skipped_whole_not_mined_for_inner_objects() -> None:
    # The innermost levels of a too-deep value are valid objects; the template is the answer.
    text = '{"a":' * 5000 + '{"data_creation_instruction": "inner"}' + "}" * 5000 + T
    assert parse_template(text)[0].data_creation_instruction == TEMPLATE[
        "data_creation_instruction"]


def test_no_recursion_even_with_a_raised_recursion_limit() -> None:
    # Agents' code sometimes raises the limit; handing the C decoder 10^5 levels would then
    # overflow the C stack and kill the process. Run it in a child so a crash cannot take
    # the test session down with it.
    code = (
        "import sys; sys.setrecursionlimit(10**7)\n"
        "from selfedit.envs.templates import parse_template, extract_json, TemplateError\n"
        f"T = {T!r}\n"
        "t, _ = parse_template('[' * 200000 + ']' * 200000 + T)\n"
        "assert t.hyperparameters.lora_rank == 8\n"
        "try:\n    extract_json('[' * 200000 + ']' * 200000, want=list)\n"
        "except TemplateError:\n    print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"


@pytest.mark.parametrize(
    "prefix",
    [
        'It is 5" tall. ',  # an odd quote in prose, outside brackets
        'Use {the "best} settings: ',  # a quote inside a prose brace, never closed
        "The model's {choice\" is: ",
        'See [1] and "quotes" and {braces} and [a "b]: ',
        '{see "x} {"oops": ',  # a group that never decodes, with a stray quote
        "}}}]]] stray closers ",
        "{placeholder} " * 300,  # many candidates that are not JSON
        '[ it\'s 5" ``` ',
    ],
)
def test_template_after_prose_with_stray_quotes_and_brackets(prefix: str) -> None:
    template, _ = parse_template(prefix + T + ' Hope that helps! "')
    assert template.data_creation_instruction == TEMPLATE["data_creation_instruction"]


def test_preferred_kind_and_fences() -> None:
    # A self-edit prefers an object anywhere to an earlier list (citations like [1]).
    assert parse_self_edit('See [1]: ["A list that is not it."] then ' + SELF_EDIT)[0] == [
        "The bridge is red.", "It opened in 1901."]
    assert parse_self_edit('Training data: ["One fact.", "Two facts."]')[0] == [
        "One fact.", "Two facts."]
    # A fenced block wins over JSON in the prose around it.
    text = '{"data_creation_instruction": "prose"} ```json\n' + T + "\n```"
    assert parse_template(text)[0].data_creation_instruction != "prose"
    # Too many fences: the rest is still searched as part of the whole text.
    assert parse_template("```x```" * 40 + T)[0].hyperparameters.lora_rank == 8


def test_think_blocks_are_dropped_without_backtracking() -> None:
    text = "<think>" + "{[" * 200_000 + "</think>" + T
    out, seconds = _timed(lambda: parse_template(text))
    assert isinstance(out, tuple) and seconds < BOUND_S
    closed = "<think>hmm</think>" * 50_000 + T
    assert parse_template(closed)[0].hyperparameters.lora_rank == 8


def test_self_edit_actions_are_bounded_in_every_form() -> None:
    many = ["A fact about the passage."] * (MAX_SELF_EDIT_SEQUENCES + 1)
    for action in (many, tuple(many), {"sequences": many}):
        out, seconds = _timed(lambda a=action: parse_self_edit(a))
        assert isinstance(out, TemplateError) and "at most" in str(out)
        assert seconds < BOUND_S
    huge = ["word " * (N // 10)] * 3  # 1.5 MB of data in three sequences
    with pytest.raises(TemplateError, match="MAX_ACTION_CHARS"):
        parse_self_edit({"sequences": huge})
    with pytest.raises(TemplateError, match="got a int item"):
        parse_self_edit(["fine", 3])
    assert parse_self_edit(("A tuple works.",)) == (["A tuple works."], None)


def test_completion_with_many_items_is_cut_lazily() -> None:
    text = "ok\n" * 300_000 + "The bridge is red and tall.\n"
    out, seconds = _timed(lambda: parse_sequences(text))
    # MAX_ITEMS_EXAMINED one-word lines are looked at, then the parser stops.
    assert out == [] and seconds < BOUND_S
    listed = "[" + ", ".join(['"a fact of three words"'] * 30_000) + "]"
    out, seconds = _timed(lambda: parse_sequences(listed, max_sequences=5))
    assert out == ["a fact of three words"] * 5 and seconds < BOUND_S


# JSON syntax, prose and the wrappers LLMs add, in any order.
JSONISH = st.lists(
    st.sampled_from([*'{}[]":,\\ ab1\n`', "<think>", "</think>", "```", '{"a": 1}', "[1]"]),
    max_size=60,
).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(JSONISH, st.text(max_size=80)))
def test_any_text_ends_in_a_template_or_a_template_error(text: str) -> None:
    for parse in (parse_template, parse_self_edit):
        try:
            parse(text)
        except TemplateError:
            pass
    assert isinstance(parse_sequences(text), list)


@settings(max_examples=200, deadline=None)
@given(prefix=JSONISH.filter(lambda s: "```" not in s and "<think>" not in s),
       suffix=JSONISH.filter(lambda s: "```" not in s))
def test_a_fenced_template_is_found_whatever_surrounds_it(prefix: str, suffix: str) -> None:
    template, _ = parse_template(f"{prefix}\n```json\n{T}\n```\n{suffix}")
    assert template == Template.from_dict(TEMPLATE)[0]


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_characters="{[<`"), max_size=200))
def test_a_template_after_bracket_free_prose_is_found(prefix: str) -> None:
    # Quotes, apostrophes and backslashes in prose outside brackets are never strings.
    assert parse_template(prefix + T)[0].hyperparameters.lora_rank == 8


def test_extract_json_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="want must be dict, list"):
        extract_json("{}", want=str)
    with pytest.raises(TemplateError, match="expected a JSON string"):
        extract_json(b"{}")  # type: ignore[arg-type]


# -- the same actions through the env: bounded from the moment step receives them ----------
@pytest.fixture(scope="module")
def backend(tiny_model_dir: Any) -> Any:
    from selfedit.envs.backend import HFBackend

    return HFBackend(str(tiny_model_dir), device="cpu")


@pytest.mark.parametrize("mode", ["template", "self_edit"])
def test_env_steps_refuse_hostile_actions_within_the_bound(backend: Any, mode: str) -> None:
    from selfedit.envs.selfedit_env import SelfEditEnv

    env = SelfEditEnv(backend=backend, action_mode=mode, completion_max_tokens=8,
                      answer_max_tokens=4, baseline_cache=None)
    for name in ("1 MB of [", '1 MB of {"a":', "1 MB of [1,", "escaped quotes after an open string",
                 "a deep prefix with no template"):
        env.reset(seed=0, options={"passage_ids": [0]})
        t0 = time.perf_counter()
        _, reward, terminated, _, info = env.step(HOSTILE[name]())
        seconds = time.perf_counter() - t0
        assert terminated and info["error"] and reward == env.config.invalid_reward, name
        assert len(info["error"]) < 400
        assert seconds < BOUND_S + 1.0, f"{mode}: {name} took {seconds:.2f} s in step"


def test_env_validates_a_template_altered_after_construction(backend: Any) -> None:
    from selfedit.envs.selfedit_env import SelfEditEnv

    template = Template("List the facts.", include_passage=True)
    object.__setattr__(template.hyperparameters, "lora_rank", 300)  # behind the frozen guard
    for policy, expect in (("reject", "lora_rank must be between 1 and 256, got 300"),
                           ("clamp", None)):
        env = SelfEditEnv(backend=backend, hyperparameter_policy=policy, completion_max_tokens=8,
                          answer_max_tokens=4, baseline_cache=None, max_train_tokens=64)
        env.reset(seed=0, options={"passage_ids": [0]})
        _, _, _, _, info = env.step(template)
        if expect:
            assert info["error"] == expect
        else:
            assert info["validation"]["clamped"] == {"lora_rank": (300, 256)}
            assert info["template"]["hyperparameters"]["lora_rank"] == 256
