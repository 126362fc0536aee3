"""Issue 7: any action ends in a defined outcome, budgets hold, the base is never harmed,
a killed run resumes without loss or repeats, bad configuration fails early, nothing is
executed and no key is logged.

Every failure case below checks the base-weight checksum after the failure.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from selfedit.envs.backend import HFBackend
from selfedit.envs.config import ConfigError
from selfedit.envs.selfedit_env import SelfEditEnv
from selfedit.envs.templates import HP_RANGES, MAX_INSTRUCTION_CHARS
from selfedit.envs.update import LoRAUpdate
from selfedit.training.cli import main
from selfedit.training.runlog import read_steps, to_jsonable

REPO = Path(__file__).resolve().parents[1]
FAST = {"completion_max_tokens": 8, "answer_max_tokens": 4, "baseline_cache": None}
# A valid template that trains on the passage alone: no completion to generate.
PASSAGE_ONLY = {"data_creation_instruction": "", "include_passage": True,
                "hyperparameters": {"lora_rank": 4, "num_epochs": 1, "learning_rate": 1e-3}}


@pytest.fixture(scope="module")
def backend(tiny_model_dir) -> HFBackend:
    """One tiny model for the module (loaded from disk); tests must leave it as they found it."""
    return HFBackend(str(tiny_model_dir), device="cpu")


def make_env(backend: Any, **overrides: Any) -> SelfEditEnv:
    return SelfEditEnv(backend=backend, **{**FAST, **overrides})


def step(env: SelfEditEnv, action: Any, passage: int = 0) -> tuple[float, dict[str, Any]]:
    """Reset on one passage, step, and check the outcome is defined and the base intact."""
    k = env.config.passages_per_step
    env.reset(seed=0, options={"passage_ids": list(range(passage, passage + k))})
    before = env.base_checksum()
    obs, reward, terminated, truncated, info = env.step(action)
    assert terminated and not truncated
    assert isinstance(reward, float) and math.isfinite(reward)
    assert env.observation_space.contains(obs)
    if info["error"] is not None:
        assert isinstance(info["error"], str) and info["error"].strip()
        assert reward == env.config.invalid_reward
    else:
        assert 0.0 <= reward <= 1.0 and reward == info["accuracy"]
    # The runner writes info to steps.jsonl: it must serialise, whatever the action was.
    json.dumps(to_jsonable(info), ensure_ascii=False).encode("utf-8", "backslashreplace")
    assert env.base_checksum() == before, "a step changed the base weights"
    return reward, info


# -- 1. property test: 500 generated actions, one env ---------------------------------------

ODD = ["\x00", "\x07", "\x1b", "\x7f", "\u200b", "\u202e", "\ufeff", "\ufffe", "\uffff",
       "\ud800", "\udfff", "\U0001f600", "\u0301", "\u2028", "𝔘", "ﷺ", "\\", '"', "{", "}",
       "[", "]", "`", "```", "<think>", "</think>", "\r\n"]
# Any code point, lone surrogates included, mixed with control characters and JSON syntax.
PIECES = st.one_of(st.characters(exclude_categories=()), st.sampled_from(ODD))
TEXT = st.lists(PIECES, max_size=40).map("".join)
LONG = st.builds(
    lambda unit, n: unit * n,
    st.sampled_from(["x", "{", "[", '{"a":', '"', "\\", "\u202e", "```", "<think>", "ab ",
                     '{"data_creation_instruction": "', "\x00"]),
    st.integers(1_000, 200_000),
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
HP_VALUE = st.one_of(
    st.integers(-3, 3),
    st.integers(),
    st.sampled_from([0, -1, 4096, 10**6, 2**63, 1e9, -1e9, 1e-300, 0.5, 2.5, 1e308]),
    st.sampled_from([400, 5000]).map(lambda n: 10**n),  # 10**5000 cannot even be printed
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["1e-3", "nan", "inf", "-inf", " 8 ", "1e999", "0x10", "", "ten"]),
    TEXT,
    st.none(),
    st.booleans(),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
HP_DICT = st.dictionaries(
    st.one_of(st.sampled_from([*HP_RANGES, "epochs", "rank", "lr", ""]), TEXT),
    HP_VALUE,
    max_size=7,
)
# Valid hyperparameters, kept cheap: at most 2 epochs, small ranks.
VALID_HP = st.fixed_dictionaries(
    {"num_epochs": st.integers(0, 2)},
    optional={
        "lora_rank": st.sampled_from([1, 2, 4, 8]),
        "lora_alpha": st.sampled_from([1, 8, 16.0]),
        "lora_dropout": st.sampled_from([0.0, 0.1]),
        "learning_rate": st.floats(1e-5, 1e-2),
        "gradient_accumulation_steps": st.integers(1, 2),
    },
)
INSTRUCTION = st.one_of(
    TEXT,
    st.sampled_from(["", "List the facts of the passage.", "Rewrite it.", " \n\t "]),
    st.integers(MAX_INSTRUCTION_CHARS - 5, MAX_INSTRUCTION_CHARS + 5).map(lambda n: "y" * n),
    st.builds(lambda: "z" * 1_000_000),
)
TEMPLATE_LIKE = st.builds(
    lambda extra, known: {**extra, **known},  # random extra keys next to the known ones
    st.dictionaries(TEXT, JSON_VALUES, max_size=3),
    st.fixed_dictionaries(
        {"data_creation_instruction": st.one_of(INSTRUCTION, HP_VALUE)},
        optional={
            "hyperparameters": st.one_of(HP_DICT, VALID_HP, HP_VALUE),
            "include_passage": st.one_of(st.booleans(), HP_VALUE),
            "name": st.one_of(TEXT, st.integers()),
            "instruction": TEXT,
        },
    ),
)
# Known instruction, hostile hyperparameters: most of these reach the range checks.
HP_TEMPLATE = st.fixed_dictionaries(
    {
        "data_creation_instruction": st.sampled_from(["", "List the facts."]),
        "hyperparameters": st.dictionaries(st.sampled_from(list(HP_RANGES)), HP_VALUE,
                                           min_size=1, max_size=6),
    },
    optional={"include_passage": st.booleans()},
)
VALID_TEMPLATE = st.fixed_dictionaries(
    {
        "data_creation_instruction": st.sampled_from(["", "List the facts.", "Ask questions."]),
        "hyperparameters": VALID_HP,
        "include_passage": st.just(True),
    },
    optional={"name": TEXT},
)


@st.composite
def rendered(draw: st.DrawFn, objects: st.SearchStrategy[Any]) -> Any:
    """A template-ish object as an agent might send it: dict, JSON, wrapped or truncated."""
    obj = draw(objects)
    how = draw(st.sampled_from(["dict", "json", "fenced", "think", "prose", "truncated"]))
    if how == "dict":
        return obj
    try:
        text = json.dumps(obj, ensure_ascii=draw(st.booleans()))  # NaN/Infinity literals too
    except ValueError:  # a 5000-digit int has no JSON text: send the dict
        return obj
    if how == "fenced":
        return f"```json\n{text}\n```"
    if how == "think":
        return f"<think>{draw(TEXT)}</think>{text}"
    if how == "prose":
        return f"{draw(TEXT)}\n{text}\n{draw(TEXT)}"
    return text[: draw(st.integers(0, max(len(text) - 1, 0)))]


ACTIONS = st.one_of(
    TEXT,
    LONG,
    rendered(TEMPLATE_LIKE),
    rendered(HP_TEMPLATE),
    rendered(HP_TEMPLATE),  # twice: weighted towards runaway hyperparameters
    rendered(VALID_TEMPLATE),
    rendered(st.dictionaries(TEXT, JSON_VALUES, max_size=5)),
    st.none() | st.integers() | st.floats() | st.binary(max_size=8) | st.lists(TEXT, max_size=3),
)


@pytest.fixture(scope="module")
def property_env(backend) -> SelfEditEnv:
    # Small training budgets: a valid template trains in well under a second.
    return make_env(backend, max_seq_tokens=128, max_train_tokens=600)


def test_any_action_ends_in_a_defined_outcome(property_env) -> None:
    env = property_env
    start_checksum = env.base_checksum()
    seen = {"steps": 0, "evaluated": 0, "errors": 0}

    @settings(max_examples=500, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.large_base_example])
    @given(action=ACTIONS, passage=st.sampled_from([0, 1]))
    def check(action: Any, passage: int) -> None:
        env.reset(seed=passage, options={"passage_ids": [passage]})
        obs, reward, terminated, truncated, info = env.step(action)  # must not raise
        assert terminated and not truncated
        assert isinstance(reward, float) and math.isfinite(reward)
        assert env.observation_space.contains(obs)
        if info["error"] is None:
            assert 0.0 <= reward <= 1.0
            seen["evaluated"] += 1
        else:
            assert isinstance(info["error"], str) and info["error"].strip()
            assert reward == env.config.invalid_reward
            info["error"].encode("utf-8")  # writable to a UTF-8 log as is
            seen["errors"] += 1
        json.dumps(to_jsonable(info), ensure_ascii=False).encode("utf-8", "backslashreplace")
        seen["steps"] += 1
        if seen["steps"] % 50 == 0:
            assert env.base_checksum() == start_checksum, f"after {seen['steps']} steps"

    check()
    assert env.base_checksum() == start_checksum
    assert seen["steps"] >= 500
    # Both outcomes were exercised: some actions trained and were graded.
    assert seen["evaluated"] >= 25 and seen["errors"] >= 200, seen


# -- 2. one test per listed case --------------------------------------------------------------

def test_truncated_json(backend) -> None:
    text = json.dumps(PASSAGE_ONLY)
    env = make_env(backend)
    for cut in (1, len(text) // 2, len(text) - 1):
        _, info = step(env, text[:cut])
        # The outer object never closes; at most an inner one (the hyperparameters) decodes.
        assert ("no JSON object found" in info["error"]
                or "missing 'data_creation_instruction'" in info["error"]), info["error"]


def test_extra_keys_are_ignored_and_reported(backend) -> None:
    action = {**PASSAGE_ONLY, "style": "terse", "code": "__import__('os').system('x')",
              "hyperparameters": {**PASSAGE_ONLY["hyperparameters"], "momentum": 0.9}}
    _, info = step(make_env(backend), json.dumps(action))
    assert info["error"] is None
    assert info["validation"]["ignored_keys"] == ["momentum", "code", "style"]


@pytest.mark.parametrize("action", ["", "   \n\t", "{}", "[]", "null", "{\"\": \"\"}"])
def test_empty_actions(backend, action: str) -> None:
    _, info = step(make_env(backend), action)
    assert info["error"]


def test_megabyte_instruction_is_rejected_quickly(backend) -> None:
    action = json.dumps({**PASSAGE_ONLY, "data_creation_instruction": "facts " * 150_000})
    assert len(action) > 800_000
    t0 = time.perf_counter()
    _, info = step(make_env(backend), action)
    assert f"keep it under {MAX_INSTRUCTION_CHARS}" in info["error"]
    assert time.perf_counter() - t0 < 10
    # Past MAX_ACTION_CHARS the action is refused before it is scanned (issue 13).
    t0 = time.perf_counter()
    _, info = step(make_env(backend), action * 2)
    assert "MAX_ACTION_CHARS" in info["error"]
    assert time.perf_counter() - t0 < 10


def test_control_characters_and_odd_unicode_in_an_instruction(backend) -> None:
    odd = "List\x00 the\x07 facts \u202e\ufeff\U0001f600 \u0301 𝔘\u2028 \x1b[31m."
    _, info = step(make_env(backend), {**PASSAGE_ONLY, "data_creation_instruction": odd,
                                       "hyperparameters": {"num_epochs": 1}})
    assert info["error"] is None  # odd text is data: it is evaluated, never interpreted
    _, info = step(make_env(backend), {**PASSAGE_ONLY, "data_creation_instruction": "a\ud800b"})
    assert "not valid unicode text" in info["error"]


@pytest.mark.parametrize(
    ("hp", "reject", "clamped"),
    [
        ({"lora_rank": 4096}, "lora_rank must be between 1 and 256, got 4096", (4096, 256)),
        ({"num_epochs": 10**6}, "num_epochs must be between 0 and 50", (10**6, 50)),
        ({"learning_rate": 1e9}, "learning_rate must be between", (1e9, 1e-2)),
        ({"learning_rate": -1.0}, "learning_rate must be between", (-1.0, 1e-6)),
        ({"lora_rank": 0}, "lora_rank must be between", (0, 1)),
        ({"learning_rate": math.nan}, "learning_rate must be a finite number", None),
        ({"num_epochs": math.inf}, "num_epochs must be a finite number", None),
        ({"lora_rank": "nan"}, "lora_rank must be a finite number", None),
        ({"lora_alpha": 10**5000}, "lora_alpha must be a finite number", None),
    ],
)
def test_runaway_hyperparameters(backend, hp: dict, reject: str, clamped: tuple | None) -> None:
    action: Any = {**PASSAGE_ONLY, "hyperparameters": {**PASSAGE_ONLY["hyperparameters"], **hp}}
    with contextlib.suppress(ValueError):  # as JSON text (NaN literal) unless unprintable
        action = json.dumps(action)
    _, info = step(make_env(backend, hyperparameter_policy="reject"), action)
    assert reject in info["error"]
    # Clamp: into range and reported; NaN and infinity have no nearest valid value.
    # A token budget keeps the clamped 50 epochs cheap (and is reported too).
    _, info = step(make_env(backend, hyperparameter_policy="clamp", max_seq_tokens=64,
                            max_train_tokens=200), action)
    (key,) = hp
    if clamped is None:
        assert "finite number" in info["error"]
    else:
        assert info["error"] is None
        assert info["validation"]["clamped"][key] == clamped
        assert info["template"]["hyperparameters"][key] == clamped[1]


def test_a_completion_that_yields_no_sequence(backend, monkeypatch) -> None:
    real = backend.generate

    def generate(prompts: list[str], **kw: Any) -> list[str]:
        if "Write one fact" in prompts[0]:
            return ["ok", ""][: len(prompts)]  # nothing of 3+ words
        return real(prompts, **kw)

    monkeypatch.setattr(backend, "generate", generate)
    action = {"data_creation_instruction": "Write one fact.", "hyperparameters": {"num_epochs": 1}}
    _, info = step(make_env(backend), action)
    assert "gave no training sequence" in info["error"]


def test_a_hundred_thousand_sequences(backend, monkeypatch) -> None:
    # Self-edit mode: the action itself holds 100,000 sequences.
    env = make_env(backend, action_mode="self_edit")
    many = [f"Fact {i} here." for i in range(100_000)]
    t0 = time.perf_counter()
    _, info = step(env, {"sequences": many, "hyperparameters": {"num_epochs": 1}})
    assert time.perf_counter() - t0 < 30
    assert info["error"]  # more than a self-edit may hold: refused, quickly
    action = json.dumps({"sequences": many[:4000], "hyperparameters": {"num_epochs": 1}})
    _, info = step(env, action)
    assert info["error"] is None
    assert len(info["results"][0]["sequences"]) == env.config.max_sequences
    assert any("4000 sequences; kept the first 64" in note for note in info["budget"])
    # Template mode: a completion with 100,000 lines is cut by the parser the same way.
    real = backend.generate

    def generate(prompts: list[str], **kw: Any) -> list[str]:
        if "List every fact" in prompts[0]:
            return ["\n".join(f"Fact number {i} is here." for i in range(100_000))] * len(prompts)
        return real(prompts, **kw)

    monkeypatch.setattr(backend, "generate", generate)
    _, info = step(make_env(backend), {"data_creation_instruction": "List every fact.",
                                       "hyperparameters": {"num_epochs": 1}})
    assert info["error"] is None
    assert len(info["results"][0]["sequences"]) == 64


def test_sequences_longer_than_the_context_are_cut(backend, monkeypatch) -> None:
    monkeypatch.setattr(backend.model.config, "max_position_embeddings", 32)
    env = make_env(backend, action_mode="self_edit", max_seq_tokens=100_000)
    long = " ".join(f"word{i}" for i in range(3000))
    _, info = step(env, json.dumps({"sequences": [long], "hyperparameters": {"num_epochs": 2}}))
    assert info["error"] is None
    update = info["results"][0]["update"]
    assert update["train_tokens"] == 2 * 32
    assert any("cut to 32 tokens: the model's context" in n for n in info["budget"])


def test_non_finite_loss_mid_training(tiny_backend) -> None:
    with torch.no_grad():  # activations overflow: the training loss is NaN from the start
        tiny_backend.model.model.layers[0].mlp.down_proj.weight.fill_(float("inf"))
    env = make_env(tiny_backend, verify_base_every=1)
    _, info = step(env, json.dumps(PASSAGE_ONLY))
    assert "LoRA update failed: training loss became nan" in info["error"]
    assert not any("lora_" in n for n, _ in tiny_backend.model.named_parameters())


class SlowUpdate:
    """LoRA, then a pause: one (passage, completion) evaluation that takes a known time."""

    name = "slow-lora"

    def __init__(self, delay: float) -> None:
        self.inner, self.delay = LoRAUpdate(), delay

    @contextlib.contextmanager
    def adapted(self, backend: Any, sequences: Any, hp: Any, *, seed: int,
                max_seconds: float | None = None):
        with self.inner.adapted(backend, sequences, hp, seed=seed,
                                max_seconds=max_seconds) as stats:
            time.sleep(self.delay)
            yield stats


def test_step_time_budget_skips_the_rest_and_reports(backend) -> None:
    env = SelfEditEnv(backend=backend, update=SlowUpdate(1.5), passages_per_step=2,
                      max_step_seconds=1.0, **FAST)
    _, info = step(env, PASSAGE_ONLY)
    assert info["error"] is None
    assert len(info["results"]) == 1  # the second passage was never started
    assert info["accuracy"] == info["results"][0]["accuracy"]
    assert any("max_step_seconds=1 spent after 1 of 2" in n for n in info["budget"])


def test_step_time_budget_spent_before_anything(backend) -> None:
    _, info = step(make_env(backend, max_step_seconds=1e-9), PASSAGE_ONLY)
    assert "was spent before any (passage, completion) pair" in info["error"]


def test_step_time_budget_stops_training(backend) -> None:
    # 64 sequences x 50 epochs = 800 micro-batches: far more than half a second anywhere.
    env = make_env(backend, action_mode="self_edit", max_step_seconds=0.5)
    action = {"sequences": [f"Fact {i}: the harp has {i} strings of silver wire." for i in
                            range(64)], "hyperparameters": {"num_epochs": 50, "lora_rank": 4}}
    t0 = time.perf_counter()
    _, info = step(env, json.dumps(action))
    assert time.perf_counter() - t0 < 20
    assert info["error"] is None
    assert info["results"][0]["update"]["optimizer_steps"] < 800
    assert any("time budget: training stopped" in n for n in info["budget"])


def test_max_step_seconds_is_validated(backend) -> None:
    for bad in (0, -1.0, math.nan):
        with pytest.raises(ConfigError, match="max_step_seconds must be a number of seconds"):
            make_env(backend, max_step_seconds=bad)


def test_failed_steps_pass_runtime_verification(backend) -> None:
    env = make_env(backend, verify_base_every=1)
    for action in ("{", {"data_creation_instruction": "x", "hyperparameters": {"lora_rank": -1}},
                   PASSAGE_ONLY, "", json.dumps(PASSAGE_ONLY)[:-3]):
        step(env, action)  # verify_base_every=1 raises inside step if the base changed


class LeakyUpdate:
    """A broken operator that writes into a base weight: the runtime check must notice."""

    name = "leaky"

    @contextlib.contextmanager
    def adapted(self, backend: Any, sequences: Any, hp: Any, *, seed: int,
                max_seconds: float | None = None):
        with LoRAUpdate().adapted(backend, sequences, hp, seed=seed,
                                  max_seconds=max_seconds) as s:
            yield s
        with torch.no_grad():
            backend.model.model.norm.weight[0] += 1.0


class LeakyBatchedUpdate(LoRAUpdate):
    """The same bug in the batched path the env takes when an operator offers it."""

    @contextlib.contextmanager
    def adapted_many(self, backend: Any, requests: Any):
        with super().adapted_many(backend, requests) as stats:
            yield stats
        with torch.no_grad():
            backend.model.model.norm.weight[0] += 1.0


@pytest.mark.parametrize("operator", [LeakyUpdate, LeakyBatchedUpdate])
def test_runtime_verification_catches_a_leaking_operator(tiny_backend, operator) -> None:
    env = SelfEditEnv(backend=tiny_backend, update=operator(), verify_base_every=1, **FAST)
    env.reset(seed=0)
    with pytest.raises(RuntimeError, match="base weights changed"):
        env.step(PASSAGE_ONLY)


# -- 3. SIGKILL at random moments, resume, nothing lost or repeated ---------------------------

def _count_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.is_file() else 0


def test_sigkill_and_resume_leaves_every_step_exactly_once(tiny_model_dir, tmp_path) -> None:
    out = tmp_path / "runs"
    env = {**os.environ, "SELFEDIT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cli = [sys.executable, "-m", "selfedit.training.cli", "run"]
    first = [f"env.model={tiny_model_dir}", "env.passages=0:6", "env.completion_max_tokens=8",
             "env.answer_max_tokens=4", "env.max_seq_tokens=128", "agents=[passage, no_training]",
             f"output_dir={out}", "name=kill", "progress=false", "tensorboard=false",
             "iteration_size=100"]
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    run_dir: Path | None = None
    kills = 0
    for _ in range(3):  # three runs, each killed at a random moment
        args = first if run_dir is None else ["--resume", str(run_dir)]
        proc = subprocess.Popen([*cli, *args], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 60
            if run_dir is None:
                while not out.is_dir() or not any(out.iterdir()):
                    assert proc.poll() is None, proc.stderr.read().decode()
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
                (run_dir,) = out.iterdir()
            steps = run_dir / "steps.jsonl"
            had = _count_lines(steps)
            while _count_lines(steps) <= had and proc.poll() is None:  # one new step at least
                assert time.monotonic() < deadline, f"no progress (seed {seed})"
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.4))  # mid-step, mid-write, or between
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                kills += 1
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
    assert kills >= 2, f"the run finished before it could be killed (seed {seed})"
    assert run_dir is not None
    done = subprocess.run([*cli, "--resume", str(run_dir)], env=env, capture_output=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-2000:]

    lines = (run_dir / "steps.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]  # every line parses
    keys = [r["key"] for r in records]
    planned = {f"{a}|s0|e{e}" for a in ("passage", "no_training") for e in range(6)}
    assert sorted(keys) == sorted(planned), f"seed {seed}: {keys}"
    assert all(r["error"] is None for r in records)
    assert (run_dir / "summary.json").is_file()


# -- 4. bad configuration and files: one line naming the key or path, nothing started ---------

def _cli_error(args: list[str], capsys) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("selfedit: error:") and "\n" not in err, err
    assert "Traceback" not in err
    return err


def _run_args(tmp_path: Path, model: Path | str, *extra: str) -> list[str]:
    return ["run", f"env.model={model}", "env.passages=0:1", "agents=[no_training]",
            f"output_dir={tmp_path / 'out'}", "progress=false", *extra]


def test_yaml_wrong_type_for_a_nested_env_key(tmp_path, capsys) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("env:\n  passages_per_step: two\n")
    err = _cli_error(["run", "--config", str(config)], capsys)
    assert "env.passages_per_step must be int, got str 'two'" in err


def test_yaml_misspelt_top_level_key(tmp_path, capsys) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("seeed: 3\nenv:\n  passages: '0:2'\n")
    err = _cli_error(["run", "--config", str(config)], capsys)
    assert "unknown key 'run.seeed'; did you mean 'seed'?" in err


def test_missing_corpus_file(tiny_model_dir, tmp_path, capsys) -> None:
    missing = tmp_path / "nowhere" / "squad.json"
    err = _cli_error(_run_args(tmp_path, tiny_model_dir, f"env.corpus={missing}"), capsys)
    assert str(missing) in err and "does not exist" in err
    assert not (tmp_path / "out").exists()  # no run directory: nothing started


def test_corrupt_corpus_file(tiny_model_dir, tmp_path, capsys) -> None:
    corrupt = tmp_path / "squad.json"
    corrupt.write_text('{"data": [{"title": ')
    err = _cli_error(_run_args(tmp_path, tiny_model_dir, f"env.corpus={corrupt}"), capsys)
    assert "env.corpus=" in err and str(corrupt) in err and "not valid JSON" in err
    assert not (tmp_path / "out").exists()


def test_passage_selection_out_of_range(tiny_model_dir, tmp_path, capsys) -> None:
    err = _cli_error(_run_args(tmp_path, tiny_model_dir, "env.passages=0:500"), capsys)
    assert "env.passages='0:500'" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"config.json": "garbage{"}, "config.json is not valid JSON"),
        ({"config.json": "[1, 2]"}, "config.json does not hold a JSON object"),
        ({"config.json": '{"model_type": "llama"}', "model.safetensors": "not a tensor"},
         "model.safetensors cannot be read"),
    ],
)
def test_corrupt_model_directory(tmp_path, capsys, files: dict, message: str) -> None:
    model = tmp_path / "model"
    model.mkdir()
    for name, text in files.items():
        (model / name).write_text(text)
    t0 = time.perf_counter()
    err = _cli_error(_run_args(tmp_path, model), capsys)
    assert message in err and str(model) in err
    assert time.perf_counter() - t0 < 5  # before any expensive work
    assert not (tmp_path / "out").exists()


def test_unloadable_model_directory_is_one_line(tiny_model_dir, tmp_path, capsys) -> None:
    # Passes the cheap checks, fails in transformers: still one line with the path.
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "no-such-architecture"}')
    err = _cli_error(_run_args(tmp_path, model), capsys)
    assert "cannot load model" in err and str(model) in err


def test_corrupt_gguf_file(tmp_path, capsys) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"\x00" * 64)
    err = _cli_error(_run_args(tmp_path, gguf), capsys)
    assert f"model file {gguf} is not a GGUF file" in err


def test_corrupt_run_config_on_resume(tmp_path, capsys) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("env: [unclosed\n")
    err = _cli_error(["run", "--resume", str(run_dir)], capsys)
    assert "config.yaml is not valid YAML" in err


# -- 5. security: nothing executed, no unsafe deserialisation, no key in the logs -------------

SOURCE_DIRS = ("envs", "agents", "training", "selfedit")


def _source_files() -> list[Path]:
    files = [p for d in SOURCE_DIRS for p in sorted((REPO / d).rglob("*.py"))]
    assert len(files) > 10
    return files


def test_no_eval_exec_pickle_or_unsafe_loads() -> None:
    bad = {
        "eval(": re.compile(r"(?<![\w.])eval\s*\("),
        "exec(": re.compile(r"(?<![\w.])exec\s*\("),
        "pickle": re.compile(r"\b(c?pickle|dill|joblib|marshal)\b"),
        "yaml.load(": re.compile(r"\byaml\.(load|unsafe_load|full_load)\s*\("),
        "trust_remote_code=True": re.compile(r"trust_remote_code\s*=\s*True"),
    }
    found = []
    for path in _source_files():
        text = path.read_text(encoding="utf-8")
        for label, pattern in bad.items():
            found += [f"{path.relative_to(REPO)}: {label}" for _ in pattern.finditer(text)]
        for match in re.finditer(r"torch\.load\s*\(", text):
            call = text[match.end(): match.end() + 300].split(")\n")[0]
            if "weights_only=True" not in call:
                found.append(f"{path.relative_to(REPO)}: torch.load without weights_only=True")
    assert not found, found


def _grep_run(root: Path, secret: str) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_judge_api_key_never_reaches_the_run_directory(tiny_model_dir, tmp_path, capsys,
                                                       monkeypatch) -> None:
    secret = "sk-selfedit-test-" + os.urandom(8).hex()
    monkeypatch.setenv("SELFEDIT_TEST_JUDGE_KEY", secret)
    args = _run_args(tmp_path, tiny_model_dir, "env.reward_grader=f1",
                     "env.judge_api_key_env=SELFEDIT_TEST_JUDGE_KEY", "env.baseline_cache=null",
                     "env.answer_max_tokens=4", "tensorboard=true")
    assert main(args) == 0
    (run_dir,) = (tmp_path / "out").iterdir()
    assert "SELFEDIT_TEST_JUDGE_KEY" in (run_dir / "config.yaml").read_text()  # the name only
    assert not _grep_run(run_dir, secret)
    assert secret not in capsys.readouterr().out


class _EchoingJudge(http.server.BaseHTTPRequestHandler):
    """A hostile endpoint: rejects every request and echoes the bearer token back."""

    seen: list[str] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        auth = self.headers.get("Authorization", "")
        type(self).seen.append(auth)
        body = f"invalid api key: {auth}".encode()
        self.send_response(401)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_judge_key_echoed_by_an_endpoint_is_not_logged(backend, tmp_path, monkeypatch) -> None:
    from selfedit.training.config import load_config
    from selfedit.training.run import run

    secret = "sk-selfedit-echo-" + os.urandom(8).hex()
    monkeypatch.setenv("SELFEDIT_TEST_JUDGE_KEY", secret)
    # The tiny model answers with empty strings, which a judge is never asked about.
    monkeypatch.setattr(backend, "generate", lambda prompts, **kw: ["An answer."] * len(prompts))
    server = http.server.HTTPServer(("127.0.0.1", 0), _EchoingJudge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        cfg = load_config(None, _run_args(tmp_path, "unused")[1:] + [
            "env.reward_grader=judge", f"env.judge={url}", "env.baseline_cache=null",
            "env.judge_api_key_env=SELFEDIT_TEST_JUDGE_KEY"])
        run_dir = run(cfg, env=SelfEditEnv(cfg.env, backend=backend))
    finally:
        server.shutdown()
        server.server_close()
    assert f"Bearer {secret}" in _EchoingJudge.seen  # the key was read and sent
    (record,) = read_steps(run_dir / "steps.jsonl")
    assert "HTTP 401" in record["error"] and "redacted" in record["error"]  # defined outcome
    assert not _grep_run(run_dir, secret)
