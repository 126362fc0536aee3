"""ReST-EM on the template policy: sample -> score with the env -> keep the best -> SFT -> repeat.

``selfedit train --config configs/restem_cpu.yaml`` lands here. TRL has no ReST-EM trainer
(DESIGN.md); one iteration is (SEAL, arXiv 2506.10943, sec. 3.1; template search, arXiv
2601.14532):

1. **E-step, sample**: the policy writes K templates from the meta-prompt (the env's
   observation; the reply starts inside the JSON object, as :class:`MetaPromptAgent` does).
2. **E-step, score**: each template is one env step on every training passage, with M
   completions per passage (``env.completions_per_passage``); each (template, passage) gives
   the mean accuracy over its completions and each completion its own accuracy.
3. **Filter**: per passage the ``keep_per_passage`` best templates (only those with a
   positive gain over the no-adapter baseline when ``positive_gain_only``), and for each its
   ``completions_kept`` best completions.
4. **M-step**: TRL's ``SFTTrainer`` trains a LoRA on the policy with two kinds of
   prompt -> completion examples: (meta-prompt -> winning template JSON) and (completion
   prompt with the passage -> winning completion). The LoRA is saved, then **merged** into
   the policy weights, so the next iteration samples from (and, in self mode, completes
   with and adapts) the updated model, and the env's per-step LoRA goes on top of plain
   weights as before.

**Self mode** (``mode: self``, the papers' setting): the policy is the env's own model, so an
update changes the template writer, the completer and the adapted model at once; the env's
baseline cache key follows the new weights (:func:`~selfedit.training.checkpoint.rebase_env`).
**Separate mode** (``mode: separate`` + ``policy_model``): the policy is another model; the
env's model is never trained, so only (meta-prompt -> template) examples are used.

Every iteration ends with a held-out evaluation (one greedy and ``heldout_samples`` sampled
templates on passages disjoint from the training ones) next to the human baselines on the
same passages, and a checkpoint; ``--resume`` continues a killed run without repeating any
finished env evaluation.
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import shlex
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from selfedit.agents.fixed import HUMAN_BASELINES
from selfedit.agents.llm import JSON_PREFIX, MetaPromptAgent, parse_reply
from selfedit.envs import prompts
from selfedit.envs.backend import (
    HFBackend,
    check_engine,
    check_model_source,
    refuse_weight_updates,
)
from selfedit.envs.config import (
    ConfigError,
    EnvConfig,
    check_keys,
    check_types,
    config_from_dict,
)
from selfedit.envs.corpus import Corpus
from selfedit.envs.selfedit_env import SelfEditEnv, cfg_prompt, load_env_corpus
from selfedit.envs.templates import Template
from selfedit.envs.update import LossCurve
from selfedit.training.checkpoint import (
    EvalCache,
    apply_adapter,
    latest_checkpoint,
    rebase_env,
    rng_state,
    set_rng_state,
    stable_hash,
    write_checkpoint,
    write_json_atomic,
)
from selfedit.training.config import apply_overrides, read_yaml
from selfedit.training.runlog import to_jsonable

__all__ = [
    "Evaluation",
    "Evaluator",
    "RestemConfig",
    "SFTExample",
    "SFTSettings",
    "Sample",
    "TemplatePolicy",
    "load_train_config",
    "parse_policy_reply",
    "resolve_passages",
    "select_winners",
    "sft_update",
    "train_restem",
]


def _f(default: Any, help: str) -> Any:  # noqa: A002 - "help" reads best at call sites
    return field(default=default, metadata={"help": help})


# ======================================================================================
# 1. Config
# ======================================================================================
@dataclass
class SFTSettings:
    """The M-step: a LoRA on the policy trained with TRL's SFTTrainer, then merged."""

    learning_rate: float = _f(1e-4, "SFT learning rate (constant schedule)")
    epochs: int = _f(2, "passes over the iteration's winning examples")
    lora_rank: int = _f(16, "rank of the policy's SFT LoRA")
    lora_alpha: float = _f(32.0, "LoRA alpha of the policy's SFT LoRA")
    lora_dropout: float = _f(0.0, "LoRA dropout of the policy's SFT LoRA")
    batch_size: int = _f(2, "examples per optimizer step")
    gradient_accumulation_steps: int = _f(1, "micro-batches per optimizer step")
    max_length: int = _f(1024, "tokens per example (prompt + completion); longer ones are cut")
    target_modules: list[str] | None = _f(None, "modules that get the SFT LoRA; null = all "
                                          "attention and MLP projections")
    bf16: bool = _f(False, "bf16 mixed precision (on a GPU; on a CPU autocast is slower)")
    gradient_checkpointing: bool = _f(False, "trade compute for memory (large models on GPU)")

    def __post_init__(self) -> None:
        check_types(self, where="sft")
        for name in ("epochs", "lora_rank", "batch_size", "gradient_accumulation_steps",
                     "max_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"sft.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.learning_rate < 1:
            raise ConfigError(f"sft.learning_rate must be in (0, 1), got {self.learning_rate}")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"sft.lora_dropout must be in [0, 1), got {self.lora_dropout}")


TRAIN_ON = ("templates", "completions")


@dataclass
class RestemConfig:
    """A ReST-EM run on the template policy (``algorithm: restem``)."""

    algorithm: str = _f("restem", "which trainer runs: 'restem' or 'grpo'")
    name: str = _f("restem", "experiment name; the run writes to "
                   "<output_dir>/<name>__<seed>__<time>")
    seed: int = _f(0, "seed of sampling, env resets and SFT")
    output_dir: str = _f("results", "parent directory of run directories")
    tensorboard: bool = _f(True, "write TensorBoard events under <run>/tb")
    progress: bool = _f(True, "print one line per env evaluation")
    mode: str = _f("self", "'self': the policy is the env's model (template writer, completer "
                   "and adapted model are one; an update changes all three); 'separate': the "
                   "policy is policy_model")
    policy_model: str | None = _f(None, "separate mode: the policy model ('embedded', a hub "
                                  "id, a local directory or a .gguf file)")
    policy_dtype: str = _f("float32", "separate mode: the policy's weights dtype")
    iterations: int = _f(2, "ReST-EM iterations (sample, score, filter, SFT)")
    templates_per_iteration: int = _f(4, "K: templates sampled from the policy per iteration")
    completions_per_passage: int = _f(1, "M: completions of each template per training "
                                      "passage (sets env.completions_per_passage)")
    keep_per_passage: int = _f(1, "templates kept per training passage (the best by reward)")
    completions_kept: int = _f(1, "completions kept per kept (template, passage)")
    positive_gain_only: bool = _f(True, "keep only templates (and completions) whose accuracy "
                                  "beats the passage's no-adapter baseline")
    train_on: list[str] | None = _f(None, "example kinds for SFT: 'templates' (meta-prompt -> "
                                    "template JSON) and 'completions' (completion prompt -> "
                                    "completion, self mode only); null = both in self mode, "
                                    "templates in separate mode")
    train_passages: str | list[int] = _f("0:4", "training passages: a slice like '0:50' or "
                                         "indices into the env's corpus selection")
    heldout_passages: str | list[int] = _f("4:8", "held-out passages, disjoint from "
                                           "train_passages")
    heldout_samples: int = _f(2, "sampled templates evaluated on the held-out passages after "
                              "every iteration, besides the greedy one")
    baselines: list[str] = field(
        default_factory=lambda: ["implications", "passage", "no_training"],
        metadata={"help": "human baselines evaluated on the held-out passages"})
    baselines_every_iteration: bool = _f(False, "re-evaluate the baselines after every "
                                         "iteration (in self mode their completer changes); "
                                         "false = once, with the initial model")
    eval_before_training: bool = _f(True, "held-out evaluation of the initial policy "
                                    "(iteration 0)")
    temperature: float = _f(1.0, "sampling temperature of the template writer")
    max_new_tokens: int = _f(256, "max new tokens per template")
    max_retries: int = _f(2, "extra attempts when a reply is not a valid template (a reply "
                          "that stays invalid scores env.invalid_reward)")
    prefix_json: bool = _f(True, "start the reply with {\"data_creation_instruction\": \"")
    sft: SFTSettings = field(default_factory=SFTSettings,
                             metadata={"help": "SFT settings (the M-step)"})
    env: EnvConfig = field(default_factory=EnvConfig, metadata={"help": "env settings"})

    def __post_init__(self) -> None:
        if isinstance(self.sft, dict):
            check_keys(SFTSettings, self.sft, where="sft")
            self.sft = SFTSettings(**self.sft)
        if isinstance(self.env, dict):
            self.env = EnvConfig.from_dict(self.env)
        check_types(self, where="restem")
        if self.algorithm != "restem":
            raise ConfigError(f"algorithm must be 'restem' here, got {self.algorithm!r}")
        check_mode(self.mode, self.policy_model, self.env.engine)
        for name in ("iterations", "templates_per_iteration", "completions_per_passage",
                     "keep_per_passage", "completions_kept", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.heldout_samples < 0 or self.max_retries < 0:
            raise ConfigError("heldout_samples and max_retries must be >= 0")
        if not 0 < self.temperature <= 5:
            raise ConfigError(f"temperature must be in (0, 5], got {self.temperature}")
        unknown = [b for b in self.baselines if b not in HUMAN_BASELINES]
        if unknown:
            raise ConfigError(f"unknown baselines {unknown}; choose from "
                              f"{', '.join(HUMAN_BASELINES)}")
        if self.train_on is not None:
            bad = [k for k in self.train_on if k not in TRAIN_ON]
            if bad or not self.train_on:
                raise ConfigError(f"train_on must list some of {list(TRAIN_ON)}, got "
                                  f"{self.train_on}")
            if self.mode == "separate" and "completions" in self.train_on:
                raise ConfigError("train_on 'completions' needs mode: self (in separate mode "
                                  "the env's model completes templates, and it is not trained)")
        self.env = env_for_policy_training(self.env, self.completions_per_passage,
                                           key="completions_per_passage")

    @property
    def example_kinds(self) -> list[str]:
        if self.train_on is not None:
            return list(self.train_on)
        return list(TRAIN_ON) if self.mode == "self" else ["templates"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RestemConfig:
        def sft(section: dict[str, Any]) -> SFTSettings:
            return config_from_dict(SFTSettings, section, where="sft")

        return config_from_dict(cls, raw, where="restem", sections={"sft": sft})


def check_mode(mode: str, policy_model: str | None, engine: str = "hf") -> None:
    if mode not in ("self", "separate"):
        raise ConfigError(f"mode must be 'self' or 'separate', got {mode!r}")
    if mode == "separate" and not policy_model:
        raise ConfigError("mode: separate needs policy_model (a hub id, directory or .gguf)")
    if mode == "self" and policy_model:
        raise ConfigError("mode: self uses the env's model as the policy; drop policy_model "
                          "or set mode: separate")
    if mode == "self":  # the env's base model is the policy, updated after every iteration
        refuse_weight_updates(engine, run="mode: self",
                              fix="set env.engine: hf, or mode: separate with a policy_model")


def env_for_policy_training(env: EnvConfig, completions: int, *, key: str) -> EnvConfig:
    """The env settings policy training needs: one passage per step, M completions."""
    if env.action_mode != "template":
        raise ConfigError("policy training writes templates: env.action_mode must be 'template'")
    if env.passages_per_step != 1:
        raise ConfigError("policy training scores each template on each passage separately: "
                          f"leave env.passages_per_step at 1 (got {env.passages_per_step})")
    if env.completions_per_passage not in (1, completions):
        raise ConfigError(f"set {key} (top level) rather than env.completions_per_passage "
                          f"({env.completions_per_passage} != {completions})")
    return replace(env, completions_per_passage=completions)


def load_train_config(path: str | Path | None, overrides: list[str] | None = None) -> Any:
    """Read a training config; its ``algorithm`` key (restem or grpo) picks the dataclass."""
    raw = apply_overrides(read_yaml(Path(path) if path else None), overrides or [])
    algorithm = raw.get("algorithm", "restem")
    if algorithm == "restem":
        return RestemConfig.from_dict(raw)
    if algorithm == "grpo":
        from selfedit.training.grpo import GRPORunConfig

        return GRPORunConfig.from_dict(raw)
    raise ConfigError(f"algorithm must be 'restem' or 'grpo', got {algorithm!r}")


def resolve_passages(corpus: Corpus, spec: str | list[int], *, key: str) -> list[int]:
    """Indices into ``corpus`` picked by a selection (``'0:50'`` or a list of indices)."""
    try:
        picked = corpus.select(spec)
    except (IndexError, ValueError, TypeError) as err:
        raise ConfigError(f"{key}={spec!r}: {err}") from None
    position = {p.id: i for i, p in enumerate(corpus)}
    return [position[p.id] for p in picked]


def check_disjoint(corpus: Corpus, train: list[int], heldout: list[int]) -> None:
    """Held-out passages must not be training passages, by index or by text."""
    same = sorted(set(train) & set(heldout))
    text = {corpus[i].fingerprint: i for i in train}
    same += sorted(i for i in heldout if corpus[i].fingerprint in text and i not in same)
    if same:
        ids = ", ".join(corpus[i].id for i in same[:5])
        raise ConfigError(
            f"train_passages and heldout_passages share {len(same)} passage(s) ({ids}): "
            "held-out passages must be disjoint from the training passages, e.g. "
            "train_passages: '0:50' and heldout_passages: '50:250'"
        )


# ======================================================================================
# 2. The policy: sampling templates, learning from winners
# ======================================================================================
@dataclass(frozen=True)
class Sample:
    """One template the policy wrote: its JSON (canonical) or, if invalid, the raw reply."""

    text: str
    template: Template | None

    @property
    def valid(self) -> bool:
        return self.template is not None


def canonical_json(template: Template) -> str:
    """The template as SFT target and cache key: its JSON without a display name."""
    body = template.to_dict()
    body.pop("name", None)
    return json.dumps(body, ensure_ascii=False)


# The policy's replies are parsed exactly as the LLM agents parse theirs.
parse_policy_reply = parse_reply


class TemplatePolicy:
    """The template writer being trained.

    Args:
        backend: the policy's model (an :class:`HFBackend`; in self mode the env's backend).
        temperature, max_new_tokens, max_retries, prefix_json: how templates are sampled
            (through :class:`~selfedit.agents.llm.MetaPromptAgent`).
    """

    def __init__(self, backend: Any, *, temperature: float = 1.0, max_new_tokens: int = 256,
                 max_retries: int = 2, prefix_json: bool = True) -> None:
        self.backend = backend
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens
        self.max_retries = max_retries
        self.prefix_json = prefix_json

    @property
    def prompt(self) -> str:
        """The meta-prompt: the env's observation for a template writer (no archive)."""
        return prompts.meta_prompt()

    @property
    def response_prefix(self) -> str:
        return JSON_PREFIX if self.prefix_json else ""

    def sample(self, n: int, *, seed: int, greedy: bool = False) -> list[Sample]:
        """``n`` templates; seeded, so a resumed run samples exactly what the killed one did."""
        agent = MetaPromptAgent(
            self.backend, explore_ratio=0.0,
            exploit_temperature=0.0 if greedy else self.temperature,
            max_retries=0 if greedy else self.max_retries,  # greedy: a retry repeats itself
            max_new_tokens=self.max_new_tokens, prefix_json=self.prefix_json, seed=seed,
        )
        out = []
        for action in agent.act_batch([{"prompt": self.prompt}] * n, [{}] * n):
            if isinstance(action, Template):
                out.append(Sample(canonical_json(action), action))
            else:
                out.append(Sample(str(action), None))
        return out


@dataclass(frozen=True)
class SFTExample:
    """A prompt -> completion pair for the M-step; ``kind`` is 'templates' or 'completions'."""

    kind: str
    prompt: str
    completion: str


@dataclass
class SFTResult(LossCurve):
    """What one M-step did."""

    examples: int
    losses: list[float]
    seconds: float
    adapter_dir: str


def sft_dataset(examples: list[SFTExample], chat: bool) -> Any:
    """A TRL prompt-completion dataset: conversational when the backend uses a chat template,
    so training sees exactly the text the policy generates from (``backend.format_prompt``)."""
    from datasets import Dataset

    if chat:
        rows = [{"prompt": [{"role": "user", "content": e.prompt}],
                 "completion": [{"role": "assistant", "content": e.completion}]}
                for e in examples]
    else:
        rows = [{"prompt": e.prompt, "completion": e.completion} for e in examples]
    return Dataset.from_list(rows)


def sft_update(backend: Any, examples: list[SFTExample], settings: SFTSettings, *,
               seed: int, work_dir: Path) -> SFTResult:
    """Train a LoRA on ``backend.model`` with TRL's SFTTrainer, save it, merge it in place.

    The loss is on the completions only (TRL's default for prompt-completion data). The
    adapter is saved to ``work_dir/adapter`` (safetensors) before it is merged, so a resumed
    run can rebuild the policy; afterwards ``backend.model`` is a plain model again with the
    LoRA folded into its weights, in eval mode, with its ``requires_grad`` flags restored.
    """
    from datasets.utils.logging import disable_progress_bar, enable_progress_bar
    from peft import LoraConfig
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from selfedit.envs.update import DEFAULT_TARGET_MODULES

    model = backend.model
    grad_state = {n: p.requires_grad for n, p in model.named_parameters()}
    use_cache = getattr(getattr(model, "config", None), "use_cache", None)
    device = getattr(backend, "device", None)
    args = SFTConfig(
        output_dir=str(work_dir / "trainer"),
        num_train_epochs=settings.epochs,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="constant",
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        max_length=settings.max_length,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        bf16=settings.bf16,
        activation_checkpointing=settings.gradient_checkpointing,
        use_cpu=device is not None and str(device) == "cpu",
        seed=seed,
        data_seed=seed,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    peft_config = LoraConfig(
        r=settings.lora_rank, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
        target_modules=list(settings.target_modules or DEFAULT_TARGET_MODULES),
        bias="none", task_type="CAUSAL_LM",
    )
    dataset = sft_dataset(examples, getattr(backend, "chat", False))
    start = time.perf_counter()
    disable_progress_bar()  # "Tokenizing train dataset" bars, once per iteration: noise
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", category=UserWarning)
            trainer = SFTTrainer(model=model, args=args,
                                 train_dataset=dataset,
                                 processing_class=backend.tokenizer, peft_config=peft_config)
            trainer.remove_callback(PrinterCallback)
            trainer.train()
    finally:
        enable_progress_bar()
    losses = [float(h["loss"]) for h in trainer.state.log_history if "loss" in h]
    peft_model = trainer.model
    adapter_dir = work_dir / "adapter"
    peft_model.save_pretrained(str(adapter_dir))
    merged = peft_model.merge_and_unload()
    if merged is not model:
        raise RuntimeError("merging the SFT LoRA returned a different model object")
    for name, param in model.named_parameters():
        param.requires_grad_(grad_state.get(name, False))
    # Leave no training machinery on the policy: it generates (and, in self mode, is the
    # env's base model) from here on.
    if getattr(model, "is_activation_checkpointing", False):
        model.activation_checkpointing_disable()
    if hasattr(model, "disable_input_require_grads"):
        model.disable_input_require_grads()
    if use_cache is not None:
        model.config.use_cache = use_cache
    model.eval()
    del trainer, peft_model
    gc.collect()
    return SFTResult(len(examples), losses, time.perf_counter() - start, str(adapter_dir))


# ======================================================================================
# 3. Scoring templates with the env, each evaluation once
# ======================================================================================
@dataclass
class Evaluation:
    """One template on one passage (M completions): an env step, or an invalid template."""

    key: str
    passage_index: int
    passage_id: str
    reset_seed: int
    fingerprint: str  # the env model's weights the step ran with
    template: str  # canonical JSON, or the raw reply of an invalid one
    valid: bool
    reward: float
    accuracy: float | None = None
    base_accuracy: float | None = None
    gain: float | None = None
    error: str | None = None
    completions: list[dict[str, Any]] = field(default_factory=list)  # text, accuracy, gain
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Evaluation:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


class Evaluator:
    """Steps the env with a template on one passage; every result goes through the cache.

    The key is (the env model's fingerprint, the env settings, the template, the passage's
    text, the reset seed): the same key is the same deterministic env step, so it is run
    once per run directory, killed runs included. The reset seed depends on the run seed and
    the passage only, so every template of every iteration meets the same completion and
    LoRA seeds on a passage: comparisons are paired.
    """

    def __init__(self, env: SelfEditEnv, cache: EvalCache, *, seed: int,
                 progress: bool = True) -> None:
        self.env = env
        self.cache = cache
        self.seed = seed
        self.progress = progress
        self.steps = 0  # env steps run by this process
        settings = asdict(env.config)
        for volatile in ("baseline_cache", "verify_base_every", "device"):
            settings.pop(volatile, None)
        self._settings = stable_hash(settings)

    def reset_seed(self, passage_index: int) -> int:
        return self.seed * 100_003 + passage_index

    def evaluate(self, sample: Sample, passage_index: int) -> Evaluation:
        env = self.env
        passage = env.corpus[passage_index]
        reset_seed = self.reset_seed(passage_index)
        fingerprint = env.backend.fingerprint
        key = stable_hash([fingerprint, self._settings, sample.text, passage.fingerprint,
                           reset_seed], n=24)
        if sample.template is None:
            return Evaluation(key, passage_index, passage.id, reset_seed, fingerprint,
                              sample.text, False, float(env.config.invalid_reward),
                              error="the reply is not a valid template")
        cached = self.cache.get(key)
        if cached is not None:
            return Evaluation.from_dict(cached)
        start = time.perf_counter()
        env.reset(seed=reset_seed, options={"passage_ids": [passage_index]})
        _, reward, _, _, info = env.step(sample.template)
        self.steps += 1
        result = Evaluation(key, passage_index, passage.id, reset_seed, fingerprint,
                            sample.text, True, float(reward), error=info.get("error"),
                            seconds=time.perf_counter() - start)
        if result.error is None:
            result.accuracy = float(info["accuracy"])
            result.base_accuracy = float(info["base_accuracy"])
            result.gain = float(info["gain"])
            result.metrics = dict(info["metrics"])
            result.completions = [
                {"completion": r["completion"], "accuracy": r["accuracy"],
                 "base_accuracy": r["base_accuracy"], "gain": r["gain"]}
                for r in info["results"]
            ]
        self.cache.put(result.to_dict())
        if self.progress:
            what = f"error: {result.error}" if result.error else (
                f"reward {result.reward:.3f}  base {result.base_accuracy:.3f}")
            print(f"  [{passage.id}] {what}  ({result.seconds:.1f}s)  {_short(sample.text)}",
                  flush=True)
        return result


def _short(text: str, n: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


# ======================================================================================
# 4. The filter: per passage the best templates and their best completions
# ======================================================================================
def select_winners(samples: list[Sample], scores: list[list[Evaluation]], corpus: Corpus,
                   *, keep: int, completions_kept: int, positive_gain_only: bool,
                   kinds: list[str], meta_prompt: str) -> tuple[list[SFTExample], list[dict]]:
    """ReST-EM's filter. ``scores[k][p]``: template k on training passage p.

    Returns the SFT examples and a record of what was kept (passage, template, reward).
    Ties keep the earlier template; invalid templates and failed steps are never kept.
    """
    examples: list[SFTExample] = []
    kept: list[dict] = []
    for p in range(len(scores[0]) if scores else 0):
        ranked = sorted(
            (k for k in range(len(samples)) if samples[k].valid and scores[k][p].error is None),
            key=lambda k: -scores[k][p].reward,
        )
        if positive_gain_only:
            ranked = [k for k in ranked if (scores[k][p].gain or 0.0) > 0]
        for k in ranked[:keep]:
            ev = scores[k][p]
            template = samples[k].template
            assert template is not None
            kept.append({"passage": ev.passage_id, "template": k, "reward": ev.reward,
                         "gain": ev.gain})
            if "templates" in kinds:
                examples.append(SFTExample("templates", meta_prompt, samples[k].text))
            if "completions" not in kinds or not template.data_creation_instruction.strip():
                continue
            outs = sorted(ev.completions, key=lambda c: -c["accuracy"])
            if positive_gain_only:
                outs = [c for c in outs if c["gain"] > 0]
            passage = corpus[ev.passage_index]
            for c in outs[:completions_kept]:
                if c["completion"].strip():
                    examples.append(SFTExample(
                        "completions", cfg_prompt(template.data_creation_instruction, passage),
                        c["completion"]))
    return examples, kept


# ======================================================================================
# 5. Held-out evaluation
# ======================================================================================
def heldout_eval(policy: TemplatePolicy, evaluator: Evaluator, passages: list[int], *,
                 samples: int, seed: int) -> dict[str, Any]:
    """The policy's greedy template and ``samples`` sampled ones on the held-out passages.

    The sampling seed is the same after every iteration, so the held-out numbers of two
    iterations differ by the policy only.
    """
    written = policy.sample(1, seed=seed, greedy=True)
    if samples:
        written += policy.sample(samples, seed=seed + 1)
    rows = []
    for i, sample in enumerate(written):
        evs = [evaluator.evaluate(sample, p) for p in passages]
        rows.append({"kind": "greedy" if i == 0 else "sampled", "template": sample.text,
                     "valid": sample.valid, "reward": float(np.mean([e.reward for e in evs])),
                     "per_passage": {e.passage_id: e.reward for e in evs}})
    sampled = [r["reward"] for r in rows[1:]]
    return {
        "greedy": rows[0]["reward"],
        "sampled_mean": float(np.mean(sampled)) if sampled else None,
        "sampled_best": float(np.max(sampled)) if sampled else None,
        "templates": rows,
    }


def baseline_eval(evaluator: Evaluator, passages: list[int], names: list[str]) -> dict[str, float]:
    """Mean reward of each human baseline on the held-out passages (same seeds as the policy)."""
    out = {}
    for name in names:
        sample = Sample(canonical_json(HUMAN_BASELINES[name]), HUMAN_BASELINES[name])
        out[name] = float(np.mean([evaluator.evaluate(sample, p).reward for p in passages]))
    return out


# ======================================================================================
# 6. The run: config, env, policy, loop, save
# ======================================================================================
def make_run_dir(output_dir: str, name: str, seed: int) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(output_dir) / f"{name}__{seed}__{stamp}"
    run_dir.mkdir(parents=True, exist_ok=False)
    return run_dir


def open_run_dir(cfg: Any, resume: Path | None, command: str | None) -> Path:
    """A new run directory with config.yaml and command.txt, or the one being resumed."""
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"--resume {run_dir}: no config.yaml there; is it a run directory?")
        return run_dir
    run_dir = make_run_dir(cfg.output_dir, cfg.name, cfg.seed)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    command = command or shlex.join(["selfedit", *sys.argv[1:]])
    (run_dir / "command.txt").write_text(command + "\n")
    return run_dir


def load_policy(cfg: Any, env: SelfEditEnv, policy_backend: Any = None) -> Any:
    """Self mode: the env's own backend. Separate mode: ``policy_model`` loaded on its own."""
    if cfg.mode == "self":
        return env.backend
    return policy_backend or HFBackend(cfg.policy_model, dtype=cfg.policy_dtype,
                                       device=cfg.env.device)


def checked_corpus(cfg: Any, env: SelfEditEnv | None) -> Corpus:
    """The env's passage selection; without an env, model file and corpus are checked first,
    so a bad path fails before any weights load or a run directory is made."""
    if env is not None:
        return env.corpus
    check_engine(cfg.env.engine, cfg.env.device)
    check_model_source(cfg.env.model)
    return load_env_corpus(cfg.env.corpus).select(cfg.env.passages)


def _after_update(cfg: Any, env: SelfEditEnv, policy: Any) -> str:
    """New weights were merged into the policy: the fingerprints (cache keys) must follow."""
    if cfg.mode == "self":
        return rebase_env(env)  # the env's base model *is* the policy
    return policy.refresh()


def train_restem(cfg: RestemConfig, *, resume: Path | None = None, env: SelfEditEnv | None = None,
                 policy_backend: Any = None, command: str | None = None) -> Path:
    """Run ReST-EM; return the run directory. ``env`` / ``policy_backend`` inject models."""
    from torch.utils.tensorboard import SummaryWriter

    # 1. Passages and model files: a bad selection or a missing file fails before any
    #    weights load or a run directory is made.
    corpus = checked_corpus(cfg, env)
    if cfg.mode == "separate" and policy_backend is None:
        check_model_source(cfg.policy_model)  # type: ignore[arg-type]
    train = resolve_passages(corpus, cfg.train_passages, key="train_passages")
    heldout = resolve_passages(corpus, cfg.heldout_passages, key="heldout_passages")
    check_disjoint(corpus, train, heldout)

    # 2. Run directory, env, policy.
    run_dir = open_run_dir(cfg, resume, command)
    env = env or SelfEditEnv(cfg.env, corpus=corpus)
    backend = load_policy(cfg, env, policy_backend)
    policy = TemplatePolicy(backend, temperature=cfg.temperature,
                            max_new_tokens=cfg.max_new_tokens, max_retries=cfg.max_retries,
                            prefix_json=cfg.prefix_json)
    cache = EvalCache(run_dir / "evaluations.jsonl")
    evaluator = Evaluator(env, cache, seed=cfg.seed, progress=cfg.progress)
    writer = SummaryWriter(str(run_dir / "tb")) if cfg.tensorboard else None

    # 3. Resume: merge the saved adapters in order, check the weights, restore RNG states.
    records, start = restore_run(run_dir, cfg, env, backend)
    print(f"run directory: {run_dir}  (mode {cfg.mode}, {len(train)} training and "
          f"{len(heldout)} held-out passages; starting at iteration {start}; "
          f"{len(cache)} cached evaluations)", flush=True)

    try:
        # 4. Iteration 0: the initial policy and the baselines on the held-out passages.
        if start == 0:
            t0 = time.perf_counter()
            record: dict[str, Any] = {"iteration": 0, "policy_fingerprint": backend.fingerprint}
            if cfg.eval_before_training:
                record["heldout"] = heldout_eval(policy, evaluator, heldout,
                                                 samples=cfg.heldout_samples, seed=cfg.seed + 7)
            record["baselines"] = baseline_eval(evaluator, heldout, cfg.baselines)
            record["time_s"] = time.perf_counter() - t0
            _finish_iteration(run_dir, record, writer, evaluator, adapter=None)
            records.append(record)
            start = 1

        # 5. The ReST-EM loop.
        for iteration in range(start, cfg.iterations + 1):
            record = restem_iteration(cfg, iteration, policy, env, evaluator, train, heldout,
                                      run_dir, writer)
            adapter = Path(record["sft"]["adapter_dir"]) if record.get("sft") else None
            _finish_iteration(run_dir, record, writer, evaluator, adapter=adapter)
            records.append(record)
    finally:
        cache.close()
        if writer is not None:
            writer.close()

    # 6. Summary: held-out reward per iteration next to the baselines.
    table = heldout_table(records, cfg.baselines)
    write_json_atomic(run_dir / "summary.json", {"iterations": [_summary_row(r) for r in records],
                                                 "baselines": cfg.baselines})
    (run_dir / "heldout.md").write_text(table + "\n")
    print(table)
    print(f"\nrun directory: {run_dir}")
    return run_dir


def restem_iteration(cfg: RestemConfig, iteration: int, policy: TemplatePolicy,
                     env: SelfEditEnv, evaluator: Evaluator, train: list[int],
                     heldout: list[int], run_dir: Path, writer: Any) -> dict[str, Any]:
    """One ReST-EM iteration: sample, score, filter, SFT + merge, held-out evaluation."""
    t0 = time.perf_counter()
    steps_before = evaluator.steps
    record: dict[str, Any] = {"iteration": iteration,
                              "policy_fingerprint": policy.backend.fingerprint}
    print(f"iteration {iteration}: sampling {cfg.templates_per_iteration} templates", flush=True)

    # E-step: sample K templates (seeded by the iteration: a resumed run gets the same ones).
    samples = policy.sample(cfg.templates_per_iteration, seed=cfg.seed * 1000 + iteration)
    scores = [[evaluator.evaluate(s, p) for p in train] for s in samples]  # (K, P)
    rewards = np.array([[e.reward for e in row] for row in scores])  # (K, P)
    record["templates"] = [
        {"index": k, "template": s.text, "valid": s.valid, "mean_reward": float(rewards[k].mean()),
         "rewards": {e.passage_id: e.reward for e in scores[k]}}
        for k, s in enumerate(samples)
    ]
    gains = [e.gain for row in scores for e in row if e.gain is not None]
    record.update({
        "reward/mean": float(rewards.mean()),
        "reward/max": float(rewards.max()),
        "reward/best_template": float(rewards.mean(axis=1).max()),
        "reward/invalid_templates": sum(not s.valid for s in samples),
        "reward/positive_gain": sum(g > 0 for g in gains),
        "rewards": rewards.tolist(),
    })
    valid = [s.template for s in samples if s.template is not None]
    if valid:
        from selfedit.training.collapse import distinct_configs, hyperparameter_similarity

        hps = [t.hyperparameters.to_dict() for t in valid]
        record["collapse/hyperparameter_similarity"] = hyperparameter_similarity(hps)
        record["collapse/distinct_configs"] = distinct_configs(hps)

    # Filter + M-step.
    examples, kept = select_winners(
        samples, scores, env.corpus, keep=cfg.keep_per_passage,
        completions_kept=cfg.completions_kept, positive_gain_only=cfg.positive_gain_only,
        kinds=cfg.example_kinds, meta_prompt=policy.prompt)
    record["kept"] = kept
    if examples:
        work = run_dir / "sft" / f"iter_{iteration:03d}"
        print(f"iteration {iteration}: SFT on {len(examples)} examples "
              f"({sum(e.kind == 'templates' for e in examples)} template,"
              f" {sum(e.kind == 'completions' for e in examples)} completion)", flush=True)
        result = sft_update(policy.backend, examples, cfg.sft, seed=cfg.seed + iteration,
                            work_dir=work)
        record["sft"] = {"examples": result.examples, "losses": result.losses,
                         "loss_first": result.loss_first, "loss_last": result.loss_last,
                         "seconds": result.seconds, "adapter_dir": result.adapter_dir,
                         "template_examples": sum(e.kind == "templates" for e in examples),
                         "completion_examples": sum(e.kind == "completions" for e in examples)}
        record["policy_fingerprint_after"] = _after_update(cfg, env, policy.backend)
    else:
        print(f"iteration {iteration}: no winners (no template beat the baseline); the policy "
              "is unchanged", flush=True)
        record["sft"] = None
        record["policy_fingerprint_after"] = policy.backend.fingerprint

    # Held-out evaluation of the updated policy, next to the baselines.
    record["heldout"] = heldout_eval(policy, evaluator, heldout, samples=cfg.heldout_samples,
                                     seed=cfg.seed + 7)
    if cfg.baselines_every_iteration:
        record["baselines"] = baseline_eval(evaluator, heldout, cfg.baselines)
    record["env_steps"] = evaluator.steps - steps_before
    record["time_s"] = time.perf_counter() - t0
    return record


def _finish_iteration(run_dir: Path, record: dict[str, Any], writer: Any, evaluator: Evaluator,
                      adapter: Path | None) -> None:
    """Checkpoint first (with the record inside), then the JSONL line and TensorBoard."""
    write_checkpoint(run_dir, record["iteration"], {
        "record": record,
        "policy_fingerprint": record.get("policy_fingerprint_after",
                                         record["policy_fingerprint"]),
        "env_fingerprint": evaluator.env.backend.fingerprint,
        "evaluations": len(evaluator.cache),
        "rng": rng_state(),
    }, adapter=adapter)
    with (run_dir / "iterations.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(to_jsonable(record), ensure_ascii=False) + "\n")
    if writer is not None:
        log_iteration_tb(writer, record)
    held = record.get("heldout") or {}
    line = f"iteration {record['iteration']} done"
    if "reward/mean" in record:
        line += f": train reward mean {record['reward/mean']:.3f} max {record['reward/max']:.3f}"
    if held:
        line += f"; held-out greedy {held['greedy']:.3f}"
        if held.get("sampled_mean") is not None:
            line += f", sampled {held['sampled_mean']:.3f}"
    if record.get("baselines"):
        line += "; baselines " + ", ".join(f"{k} {v:.3f}" for k, v in record["baselines"].items())
    print(line + f"  ({record.get('time_s', 0):.0f}s)", flush=True)


def restore_run(run_dir: Path, cfg: Any, env: SelfEditEnv,
                backend: Any) -> tuple[list[dict[str, Any]], int]:
    """Rebuild the policy of the last checkpoint; return its records and the next iteration."""
    last = latest_checkpoint(run_dir)
    if last is None:
        return [], 0
    state = json.loads((last / "state.json").read_text())
    done = state["iteration"]
    records = []
    for i in range(done + 1):
        ckpt = run_dir / "checkpoints" / f"iter_{i:03d}"
        if not (ckpt / "state.json").is_file():
            raise RuntimeError(f"checkpoint {ckpt} is missing; cannot resume {run_dir}")
        records.append(json.loads((ckpt / "state.json").read_text())["record"])
        if (ckpt / "adapter").is_dir():
            apply_adapter(backend.model, ckpt / "adapter")
    fingerprint = _after_update(cfg, env, backend) if done else backend.fingerprint
    if fingerprint != state["policy_fingerprint"]:
        raise RuntimeError(
            f"resuming {run_dir}: the rebuilt policy's weights ({fingerprint}) differ from the "
            f"checkpoint's ({state['policy_fingerprint']}); was the model or dtype changed?"
        )
    set_rng_state(state["rng"])
    # iterations.jsonl may lack the last line if the kill came right after the checkpoint.
    lines = (run_dir / "iterations.jsonl")
    if not lines.is_file() or len(lines.read_text().splitlines()) != len(records):
        lines.write_text("".join(json.dumps(to_jsonable(r), ensure_ascii=False) + "\n"
                                 for r in records))
    return records, done + 1


# ======================================================================================
# 7. Logging and tables
# ======================================================================================
def log_iteration_tb(writer: Any, record: dict[str, Any]) -> None:
    """Per iteration: reward distribution and stats, held-out and baseline rewards, SFT loss,
    hyperparameter histograms, the templates' text."""
    step = record["iteration"]
    if "rewards" in record:
        writer.add_histogram("train/reward_distribution", np.asarray(record["rewards"]), step)
    for key, value in record.items():
        if "/" in key and isinstance(value, (int, float)):
            writer.add_scalar(key.replace("reward/", "train/reward_"), value, step)
    held = record.get("heldout")
    if held:
        writer.add_scalar("heldout/greedy", held["greedy"], step)
        if held.get("sampled_mean") is not None:
            writer.add_scalar("heldout/sampled_mean", held["sampled_mean"], step)
            writer.add_scalar("heldout/sampled_best", held["sampled_best"], step)
    for name, value in (record.get("baselines") or {}).items():
        writer.add_scalar(f"heldout/baseline_{name}", value, step)
    sft = record.get("sft")
    if sft:
        if sft["loss_last"] is not None:
            writer.add_scalar("sft/loss_first", sft["loss_first"], step)
            writer.add_scalar("sft/loss_last", sft["loss_last"], step)
            writer.add_histogram("sft/loss", np.asarray(sft["losses"]), step)
        writer.add_scalar("sft/examples", sft["examples"], step)
    templates = [t for t in record.get("templates", []) if t["valid"]]
    if templates:
        hps = [json.loads(t["template"])["hyperparameters"] for t in templates]
        for name in hps[0]:
            writer.add_histogram(f"hyperparameters/{name}",
                                 np.asarray([float(h[name]) for h in hps]), step)
    rows = ["| # | mean reward | template |", "|---:|---:|---|"]
    for t in record.get("templates", []):
        rows.append(f"| {t['index']} | {t['mean_reward']:.3f} | "
                    f"`{_short(t['template'], 400).replace('|', '/')}` |")
    for t in (held or {}).get("templates", []):
        rows.append(f"| held-out {t['kind']} | {t['reward']:.3f} | "
                    f"`{_short(t['template'], 400).replace('|', '/')}` |")
    if len(rows) > 2:
        writer.add_text("templates", "\n".join(rows), step)
    writer.flush()


def _summary_row(record: dict[str, Any]) -> dict[str, Any]:
    held = record.get("heldout") or {}
    return {
        "iteration": record["iteration"],
        "heldout_greedy": held.get("greedy"),
        "heldout_sampled_mean": held.get("sampled_mean"),
        "heldout_sampled_best": held.get("sampled_best"),
        "train_reward_mean": record.get("reward/mean"),
        "train_reward_max": record.get("reward/max"),
        "sft_examples": (record.get("sft") or {}).get("examples"),
        "sft_loss_last": (record.get("sft") or {}).get("loss_last"),
        "baselines": record.get("baselines"),
        "policy_fingerprint": record.get("policy_fingerprint_after",
                                         record.get("policy_fingerprint")),
    }


def heldout_table(records: list[dict[str, Any]], baselines: list[str]) -> str:
    """Markdown: held-out reward of the policy per iteration, with the baselines beside it.

    Baselines measured once (with the initial model) are repeated on every row.
    """
    def cell(value: Any) -> str:
        return "-" if value is None else f"{value:.3f}"

    head = ("| iteration | policy greedy | policy sampled (mean) | policy sampled (best) | "
            + " | ".join(baselines) + " |")
    rows = [head, "|" + "---:|" * (4 + len(baselines))]
    last_baselines: dict[str, float] = {}
    for r in records:
        last_baselines = r.get("baselines") or last_baselines
        held = r.get("heldout") or {}
        rows.append(f"| {r['iteration']} | {cell(held.get('greedy'))} | "
                    f"{cell(held.get('sampled_mean'))} | {cell(held.get('sampled_best'))} | "
                    + " | ".join(cell(last_baselines.get(b)) for b in baselines) + " |")
    return "\n".join(rows)
