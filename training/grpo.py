"""GRPO on the template policy through TRL's ``GRPOTrainer``, the env as the reward function.

``selfedit train --config configs/grpo_cpu.yaml`` (``algorithm: grpo``) lands here. Each
optimizer step TRL samples a *group* of ``num_generations`` templates from the meta-prompt;
:class:`EnvReward` parses each completion as a template (the prompt ends inside the JSON
object, as :class:`~selfedit.agents.llm.MetaPromptAgent` starts its replies) and steps the env
with it on the group's training passages (the same passages for the whole group, so the
group-relative advantages compare templates on equal terms). An invalid template scores the
env's ``invalid_reward``. Rewards go through the same evaluation cache as ReST-EM.

**Self mode**: the policy is a trainable copy of the env's model; before each reward call the
env's model receives the policy's current weights (LoRA merged; :func:`copy_policy_weights`),
so the model that completes the templates and is adapted by them is the policy being
trained, as in the papers. At the end the env's model holds the final policy. **Separate
mode**: the policy is ``policy_model``; the env's model is never changed.

On a GPU, ``use_vllm: true`` makes TRL generate the groups with vLLM (``vllm_mode: colocate``
shares the GPU with training).
"""

from __future__ import annotations

import copy
import json
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from selfedit.agents.fixed import HUMAN_BASELINES
from selfedit.agents.llm import JSON_PREFIX
from selfedit.envs import prompts
from selfedit.envs.backend import HFBackend
from selfedit.envs.config import (
    ConfigError,
    EnvConfig,
    check_types,
    config_from_dict,
)
from selfedit.envs.selfedit_env import SelfEditEnv, normalized_gain
from selfedit.envs.templates import Template
from selfedit.training.checkpoint import EvalCache, copy_policy_weights, rebase_env
from selfedit.training.restem import (
    Evaluator,
    Sample,
    TemplatePolicy,
    baseline_eval,
    canonical_json,
    check_disjoint,
    check_mode,
    checked_corpus,
    env_for_policy_training,
    heldout_eval,
    heldout_table,
    open_run_dir,
    parse_policy_reply,
    resolve_passages,
)
from selfedit.training.runlog import to_jsonable

__all__ = ["EnvReward", "GRPORunConfig", "template_rewards", "train_grpo"]

REWARDS = ("accuracy", "gain", "normalized_gain")


def _f(default: Any, help: str) -> Any:  # noqa: A002
    return field(default=default, metadata={"help": help})


# ======================================================================================
# 1. Config
# ======================================================================================
@dataclass
class GRPORunConfig:
    """A GRPO run on the template policy (``algorithm: grpo``)."""

    algorithm: str = _f("grpo", "which trainer runs: 'grpo' or 'restem'")
    name: str = _f("grpo", "experiment name; the run writes to <output_dir>/<name>__<seed>__<time>")
    seed: int = _f(0, "seed of the trainer, the dataset's passage draws and env resets")
    output_dir: str = _f("results", "parent directory of run directories")
    tensorboard: bool = _f(True, "write TensorBoard events under <run>/tb (trl/ and env/)")
    progress: bool = _f(True, "print one line per env evaluation")
    mode: str = _f("self", "'self': the policy is (a trainable copy of) the env's model, and "
                   "the env follows its weights; 'separate': the policy is policy_model")
    policy_model: str | None = _f(None, "separate mode: the policy model")
    policy_dtype: str = _f("float32", "separate mode: the policy's weights dtype")
    steps: int = _f(4, "optimizer steps (TRL max_steps)")
    num_generations: int = _f(4, "G: templates per group (>= 2)")
    prompts_per_step: int = _f(1, "groups per optimizer step")
    learning_rate: float = _f(1e-5, "policy learning rate")
    beta: float = _f(0.0, "KL coefficient against the initial policy (0 = no reference model)")
    temperature: float = _f(1.0, "sampling temperature of the templates")
    max_new_tokens: int = _f(256, "max tokens per template (TRL max_completion_length)")
    lora_rank: int = _f(16, "rank of the policy's LoRA; 0 = train all weights")
    lora_alpha: float = _f(32.0, "LoRA alpha")
    target_modules: list[str] | None = _f(None, "modules with LoRA; null = attention and MLP")
    reward: str = _f("accuracy", "what the env returns to GRPO: accuracy, gain (over the "
                     "no-adapter baseline) or normalized_gain")
    completions_per_passage: int = _f(1, "M: completions of each template per passage")
    passages_per_reward: int = _f(1, "training passages each group is scored on")
    train_passages: str | list[int] = _f("0:4", "training passages (selection of the corpus)")
    heldout_passages: str | list[int] | None = _f(None, "held-out passages evaluated before "
                                                  "and after training (null = none)")
    heldout_samples: int = _f(1, "sampled templates on the held-out passages, besides the "
                              "greedy one")
    baselines: list[str] = field(default_factory=lambda: ["passage", "no_training"],
                                 metadata={"help": "human baselines on the held-out passages"})
    prefix_json: bool = _f(True, "the prompt ends with {\"data_creation_instruction\": \"")
    bf16: bool = _f(False, "bf16 mixed precision (GPU)")
    gradient_checkpointing: bool = _f(False, "trade compute for memory (large models)")
    use_vllm: bool = _f(False, "generate with vLLM (GPU; pip install selfedit-gym[vllm])")
    vllm_mode: str = _f("colocate", "'colocate' (same GPU) or 'server' (trl vllm-serve)")
    vllm_gpu_memory_utilization: float = _f(0.3, "GPU memory share of a colocated vLLM")
    save_steps: int = _f(0, "TRL checkpoint every N steps (for --resume); 0 = none")
    trl: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "further TRL GRPOConfig arguments, passed as they are (e.g. loss_type)"})
    env: EnvConfig = field(default_factory=EnvConfig, metadata={"help": "env settings"})

    def __post_init__(self) -> None:
        if isinstance(self.env, dict):
            self.env = EnvConfig.from_dict(self.env)
        check_types(self, where="grpo")
        if self.algorithm != "grpo":
            raise ConfigError(f"algorithm must be 'grpo' here, got {self.algorithm!r}")
        check_mode(self.mode, self.policy_model, self.env.engine)
        for name in ("steps", "prompts_per_step", "max_new_tokens", "completions_per_passage",
                     "passages_per_reward"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_generations < 2:
            raise ConfigError("num_generations must be >= 2: GRPO compares templates within a "
                              f"group, got {self.num_generations}")
        if self.lora_rank < 0 or self.save_steps < 0 or self.heldout_samples < 0:
            raise ConfigError("lora_rank, save_steps and heldout_samples must be >= 0")
        if self.reward not in REWARDS:
            raise ConfigError(f"reward must be one of {', '.join(REWARDS)}, got {self.reward!r}")
        if not 0 < self.temperature <= 5:
            raise ConfigError(f"temperature must be in (0, 5], got {self.temperature}")
        unknown = [b for b in self.baselines if b not in HUMAN_BASELINES]
        if unknown:
            raise ConfigError(f"unknown baselines {unknown}; choose from "
                              f"{', '.join(HUMAN_BASELINES)}")
        self.env = env_for_policy_training(self.env, self.completions_per_passage,
                                           key="completions_per_passage")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> GRPORunConfig:
        return config_from_dict(cls, raw, where="grpo")


# ======================================================================================
# 2. The reward: a completion is a template, the env scores it
# ======================================================================================
def template_rewards(
    completions: Sequence[str],
    passage_ids: Sequence[Sequence[int]],
    *,
    score: Callable[[Template, int], float],
    prefix: str = "",
    invalid_reward: float = -0.1,
    **kwargs: Any,
) -> list[float]:
    """Reward of each completion: its template's mean score over its passages.

    ``prefix`` is the start of the reply the prompt already contained (the JSON opener);
    a completion that is no valid template, even with its truncated JSON closed, gets
    ``invalid_reward``.

    >>> opener = '{"data_creation_instruction": "'
    >>> template_rewards(['List facts."}', '", "hyperparameters": {"lora_rank": 4096}}'],
    ...                  [[0, 1], [0, 1]], score=lambda t, p: 0.25 * p, prefix=opener)
    [0.125, -0.1]
    """
    out = []
    for completion, passages in zip(completions, passage_ids, strict=True):
        template = parse_policy_reply(prefix + completion)
        if template is None:
            out.append(float(invalid_reward))
        else:
            out.append(float(np.mean([score(template, int(p)) for p in passages])))
    return out


class EnvReward:
    """TRL reward function (``reward_funcs=``): steps the env with each sampled template.

    Called by ``GRPOTrainer`` as ``reward(prompts=, completions=, completion_ids=,
    passage_ids=, trainer_state=, ...)`` and returns one float per completion.
    ``before_call(step)`` runs first (self mode: give the env the policy's weights).
    """

    __name__ = "env_reward"

    def __init__(self, evaluator: Evaluator, *, metric: str, prefix: str,
                 before_call: Callable[[int], None] | None = None, writer: Any = None) -> None:
        self.evaluator = evaluator
        self.metric = metric
        self.prefix = prefix
        self.before_call = before_call
        self.writer = writer
        self.calls = 0

    def score(self, template: Template, passage: int) -> float:
        ev = self.evaluator.evaluate(Sample(canonical_json(template), template), passage)
        if ev.error is not None or self.metric == "accuracy":
            return ev.reward
        if self.metric == "gain":
            return float(ev.gain)
        return normalized_gain(float(ev.accuracy), float(ev.base_accuracy))

    def __call__(self, prompts: Sequence[Any], completions: Sequence[str],
                 passage_ids: Sequence[Sequence[int]], trainer_state: Any = None,
                 **kwargs: Any) -> list[float]:
        step = int(getattr(trainer_state, "global_step", 0) or 0)
        if self.before_call is not None:
            self.before_call(step)
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        rewards = template_rewards(texts, passage_ids, score=self.score, prefix=self.prefix,
                                   invalid_reward=self.evaluator.env.config.invalid_reward)
        self.calls += 1
        if self.writer is not None:
            self._log(step, texts, rewards)
        return rewards

    def _log(self, step: int, texts: list[str], rewards: list[float]) -> None:
        w = self.writer
        w.add_histogram("env/reward_distribution", np.asarray(rewards), step)
        w.add_scalar("env/reward_mean", float(np.mean(rewards)), step)
        w.add_scalar("env/reward_max", float(np.max(rewards)), step)
        templates = [parse_policy_reply(self.prefix + t) for t in texts]
        w.add_scalar("env/invalid_templates", sum(t is None for t in templates), step)
        valid = [t for t in templates if t is not None]
        for name in (valid[0].hyperparameters.to_dict() if valid else {}):
            values = [float(getattr(t.hyperparameters, name)) for t in valid]
            w.add_histogram(f"hyperparameters/{name}", np.asarray(values), step)
        rows = ["| reward | template |", "|---:|---|"]
        for t, r in zip(templates, rewards, strict=True):
            text = canonical_json(t) if t is not None else "(invalid)"
            rows.append(f"| {r:.3f} | `{text[:400].replace('|', '/')}` |")
        w.add_text("templates", "\n".join(rows), step)
        w.flush()


# ======================================================================================
# 3. The run
# ======================================================================================
def grpo_dataset(prompt: str, train: list[int], cfg: GRPORunConfig) -> Any:
    """One row per group: the (fixed) meta-prompt and the passages the group is scored on."""
    from datasets import Dataset

    rng = np.random.default_rng(cfg.seed)
    rows = []
    for _ in range(cfg.steps * cfg.prompts_per_step):
        picked = rng.choice(len(train), size=min(cfg.passages_per_reward, len(train)),
                            replace=False)
        rows.append({"prompt": prompt, "passage_ids": sorted(int(train[i]) for i in picked)})
    return Dataset.from_list(rows)


def train_grpo(cfg: GRPORunConfig, *, resume: Path | None = None, env: SelfEditEnv | None = None,
               policy_backend: Any = None, command: str | None = None) -> Path:
    """Run GRPO on the template policy; return the run directory."""
    from peft import LoraConfig
    from torch.utils.tensorboard import SummaryWriter
    from transformers import PrinterCallback
    from transformers.integrations import TensorBoardCallback
    from trl import GRPOConfig, GRPOTrainer

    from selfedit.envs.update import DEFAULT_TARGET_MODULES

    # 1. Passages and files first; then the run directory, the env and the policy.
    corpus = checked_corpus(cfg, env)
    train = resolve_passages(corpus, cfg.train_passages, key="train_passages")
    heldout: list[int] = []
    if cfg.heldout_passages is not None:
        heldout = resolve_passages(corpus, cfg.heldout_passages, key="heldout_passages")
        check_disjoint(corpus, train, heldout)
    run_dir = open_run_dir(cfg, resume, command)
    env = env or SelfEditEnv(cfg.env, corpus=corpus)
    if cfg.mode == "self":
        writer_backend = env.backend
        policy_model = copy.deepcopy(env.backend.model)  # trained; the env follows its weights
    else:
        writer_backend = policy_backend or HFBackend(cfg.policy_model, dtype=cfg.policy_dtype,
                                                     device=cfg.env.device)
        policy_model = writer_backend.model
    tokenizer = writer_backend.tokenizer
    cache = EvalCache(run_dir / "evaluations.jsonl")
    evaluator = Evaluator(env, cache, seed=cfg.seed, progress=cfg.progress)
    env_writer = SummaryWriter(str(run_dir / "tb" / "env")) if cfg.tensorboard else None
    records = _read_records(run_dir)

    # 2. Held-out evaluation of the initial policy (iteration 0), next to the baselines.
    def writer_policy() -> TemplatePolicy:
        return TemplatePolicy(writer_backend, temperature=cfg.temperature,
                              max_new_tokens=cfg.max_new_tokens, prefix_json=cfg.prefix_json)

    if heldout and not records:
        records.append(_heldout_record(0, writer_policy(), evaluator, heldout, cfg, env_writer,
                                       run_dir, baselines=True))

    # 3. The trainer: the meta-prompt (chat template applied, reply opened inside the JSON).
    prefix = JSON_PREFIX if cfg.prefix_json else ""
    prompt = writer_backend.format_prompt(prompts.meta_prompt()) + prefix
    state = {"synced": 0}
    trainer: Any = None

    def sync(step: int) -> None:
        # Self mode: the env's model becomes the policy's current weights (once per step).
        if cfg.mode != "self" or step == state["synced"]:
            return
        copy_policy_weights(trainer.model, env.backend.model)
        rebase_env(env, tag=f"{run_dir.name}-step{step}")
        state["synced"] = step

    reward = EnvReward(evaluator, metric=cfg.reward, prefix=prefix, before_call=sync,
                       writer=env_writer)
    use_cpu = str(getattr(writer_backend, "device", "")) == "cpu"
    args = GRPOConfig(
        output_dir=str(run_dir / "trainer"),
        max_steps=cfg.steps,
        per_device_train_batch_size=cfg.num_generations * cfg.prompts_per_step,
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_new_tokens,
        temperature=cfg.temperature,
        learning_rate=cfg.learning_rate,
        beta=cfg.beta,
        logging_steps=1,
        save_strategy="steps" if cfg.save_steps else "no",
        save_steps=cfg.save_steps or 500,
        report_to="none",
        bf16=cfg.bf16,
        activation_checkpointing=cfg.gradient_checkpointing,
        use_cpu=use_cpu,
        seed=cfg.seed,
        shuffle_dataset=False,  # groups meet their passages in the order drawn
        disable_tqdm=True,
        use_vllm=cfg.use_vllm,
        vllm_mode=cfg.vllm_mode,
        vllm_gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
        **cfg.trl,
    )
    peft_config = None
    if cfg.lora_rank:
        peft_config = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, bias="none",
                                 target_modules=list(cfg.target_modules or DEFAULT_TARGET_MODULES),
                                 task_type="CAUSAL_LM")
    callbacks = []
    if cfg.tensorboard:
        callbacks.append(TensorBoardCallback(SummaryWriter(str(run_dir / "tb" / "trl"))))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
        trainer = GRPOTrainer(model=policy_model, reward_funcs=reward, args=args,
                              train_dataset=grpo_dataset(prompt, train, cfg),
                              processing_class=tokenizer, peft_config=peft_config,
                              callbacks=callbacks)
        trainer.remove_callback(PrinterCallback)
        start = time.perf_counter()
        checkpoint = resume is not None and any((run_dir / "trainer").glob("checkpoint-*"))
        trainer.train(resume_from_checkpoint=True if checkpoint else None)
    train_s = time.perf_counter() - start
    losses = [h for h in trainer.state.log_history if "loss" in h]

    # 4. The final policy: the env gets its weights (self mode); the LoRA is saved, merged.
    step = trainer.state.global_step
    policy = trainer.model
    if cfg.lora_rank:
        policy.save_pretrained(str(run_dir / "policy"))
    if cfg.mode == "self":
        sync(step)
    merged = policy.merge_and_unload() if cfg.lora_rank else policy
    merged.eval()
    if cfg.mode == "separate":
        writer_backend.model = merged
        writer_backend.refresh()
    if not cfg.lora_rank:
        merged.save_pretrained(str(run_dir / "policy"))

    # 5. Held-out evaluation of the trained policy; summary.
    if heldout:
        records.append(_heldout_record(1, writer_policy(), evaluator, heldout, cfg, env_writer,
                                       run_dir, baselines=False))
    summary = {
        "steps": step, "train_s": train_s, "env_steps": evaluator.steps,
        "reward_calls": reward.calls, "evaluations": len(cache),
        "log": losses,
        "heldout": [{"iteration": r["iteration"], **{k: r["heldout"][k] for k in
                     ("greedy", "sampled_mean", "sampled_best")}} for r in records],
    }
    (run_dir / "summary.json").write_text(json.dumps(to_jsonable(summary), indent=1))
    if records:
        table = heldout_table(records, cfg.baselines)
        (run_dir / "heldout.md").write_text(table + "\n")
        print(table)
    cache.close()
    if env_writer is not None:
        env_writer.close()
    print(f"\nrun directory: {run_dir}")
    return run_dir


def _read_records(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "iterations.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _heldout_record(iteration: int, policy: TemplatePolicy, evaluator: Evaluator,
                    heldout: list[int], cfg: GRPORunConfig, writer: Any, run_dir: Path,
                    *, baselines: bool) -> dict[str, Any]:
    record: dict[str, Any] = {"iteration": iteration,
                              "policy_fingerprint": policy.backend.fingerprint,
                              "heldout": heldout_eval(policy, evaluator, heldout,
                                                      samples=cfg.heldout_samples,
                                                      seed=cfg.seed + 7)}
    if baselines:
        record["baselines"] = baseline_eval(evaluator, heldout, cfg.baselines)
    with (run_dir / "iterations.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(to_jsonable(record), ensure_ascii=False) + "\n")
    if writer is not None:
        writer.add_scalar("heldout/greedy", record["heldout"]["greedy"], iteration)
        if record["heldout"]["sampled_mean"] is not None:
            writer.add_scalar("heldout/sampled_mean", record["heldout"]["sampled_mean"], iteration)
        for name, value in (record.get("baselines") or {}).items():
            writer.add_scalar(f"heldout/baseline_{name}", value, iteration)
    return record
