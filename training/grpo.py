"""GRPO on the template policy through TRL's ``GRPOTrainer``, the env as the reward function.

``selfedit train --config configs/grpo_cpu.yaml`` (``algorithm: grpo``) lands here. Each
optimizer step TRL samples a *group* of ``num_generations`` templates from the meta-prompt;
:class:`~selfedit.training.rewards.EnvReward` parses each completion as a template (the prompt
ends inside the JSON object, as :class:`~selfedit.agents.llm.MetaPromptAgent` starts its
replies) and steps the env with it on the group's training passages (the same passages for
the whole group, so the group-relative advantages compare templates on equal terms). An
invalid template scores the env's ``invalid_reward``. Rewards go through the same evaluation
cache as ReST-EM.

**Self mode**: the policy is a trainable copy of the env's model; before each reward call the
env's model receives the policy's current weights (LoRA merged; :func:`copy_policy_weights`),
so the model that completes the templates and is adapted by them is the policy being
trained, as in the papers. At the end the env's model holds the final policy. **Separate
mode**: the policy is ``policy_model``; the env's model is never changed.

TRL's own settings: the keys of the ``trl`` mapping go to ``GRPOConfig`` as they are and win
over the values this runner sets (``trl: {report_to: wandb}``, ``trl: {loss_type: ...}``);
they are checked before the run directory is made. On a GPU, ``use_vllm: true`` makes TRL
generate the groups with vLLM (``vllm_mode: colocate`` shares the GPU with training).
"""

from __future__ import annotations

import copy
import difflib
import time
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from selfedit.agents.llm import JSON_PREFIX
from selfedit.envs import prompts
from selfedit.envs.backend import HFBackend
from selfedit.envs.config import ConfigError
from selfedit.envs.selfedit_env import SelfEditEnv
from selfedit.training.checkpoint import copy_policy_weights
from selfedit.training.evaluation import (
    EvalCache,
    Evaluator,
    baseline_eval,
    heldout_eval,
    heldout_table,
)
from selfedit.training.experiment import param
from selfedit.training.policy import TemplatePolicy
from selfedit.training.policy_config import PolicyRunConfig, checked_corpus, passages
from selfedit.training.rewards import METRICS, EnvReward, template_rewards
from selfedit.training.rundir import RunDir, check_trackers

__all__ = ["EnvReward", "GRPORunConfig", "template_rewards", "train_grpo", "trl_arguments"]

REWARDS = METRICS
_RUN_OWNED = ("output_dir",)  # the run directory decides where the trainer writes


@dataclass
class GRPORunConfig(PolicyRunConfig):
    """A GRPO run on the template policy (``algorithm: grpo``)."""

    where: ClassVar[str] = "grpo"

    algorithm: str = param("grpo")
    name: str = param("grpo")
    tensorboard: bool = param(True, "write TensorBoard events under <run>/tb (trl/ and env/)")
    heldout_passages: str | list[int] | None = param(
        None, "held-out passages evaluated before and after training (null = none)")
    heldout_samples: int = param(1)
    baselines: list[str] = param(factory=lambda: ["passage", "no_training"])
    steps: int = param(4, "optimizer steps (TRL max_steps)")
    num_generations: int = param(4, "G: templates per group (>= 2)")
    prompts_per_step: int = param(1, "groups per optimizer step")
    learning_rate: float = param(1e-5, "policy learning rate")
    beta: float = param(0.0, "KL coefficient against the initial policy (0 = no reference "
                        "model)")
    lora_rank: int = param(16, "rank of the policy's LoRA; 0 = train all weights")
    lora_alpha: float = param(32.0, "LoRA alpha")
    target_modules: list[str] | None = param(None, "modules with LoRA; null = attention and "
                                             "MLP")
    reward: str = param("accuracy", "what the env returns to GRPO: accuracy, gain (over the "
                        "no-adapter baseline) or normalized_gain")
    passages_per_reward: int = param(1, "training passages each group is scored on")
    bf16: bool = param(False, "bf16 mixed precision (GPU)")
    gradient_checkpointing: bool = param(False, "trade compute for memory (large models)")
    use_vllm: bool = param(False, "generate with vLLM (GPU; pip install selfedit-gym[vllm])")
    vllm_mode: str = param("colocate", "'colocate' (same GPU) or 'server' (trl vllm-serve)")
    vllm_gpu_memory_utilization: float = param(0.3, "GPU memory share of a colocated vLLM")
    save_steps: int = param(0, "TRL checkpoint every N steps (for --resume); 0 = none")
    trl: dict[str, Any] = param(factory=dict, help=(
        "further TRL GRPOConfig arguments, passed as they are; a key the runner also sets "
        "(report_to, loss_type, logging_steps, ...) takes the value given here"))

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("steps", "prompts_per_step", "passages_per_reward"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_generations < 2:
            raise ConfigError("num_generations must be >= 2: GRPO compares templates within a "
                              f"group, got {self.num_generations}")
        if self.lora_rank < 0 or self.save_steps < 0:
            raise ConfigError("lora_rank and save_steps must be >= 0")
        if self.reward not in REWARDS:
            raise ConfigError(f"reward must be one of {', '.join(REWARDS)}, got {self.reward!r}")
        owned = [k for k in self.trl if k in _RUN_OWNED]
        if owned:
            raise ConfigError(f"trl.{owned[0]}: the run directory holds the trainer's files "
                              "(<run>/trainer); drop the key")


def trl_arguments(cfg: GRPORunConfig, output_dir: str, *, use_cpu: bool) -> dict[str, Any]:
    """``GRPOConfig`` keyword arguments: the runner's values, then ``cfg.trl`` (which wins)."""
    ours: dict[str, Any] = dict(
        output_dir=output_dir,
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
        # TensorBoard is the runner's own writer (tb/trl), which report_to: [wandb] mirrors
        # to W&B already; TRL's own trackers only when trl.report_to asks for them.
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
    )
    return {**ours, **cfg.trl}


def check_trl_arguments(cfg: GRPORunConfig, *, use_cpu: bool) -> None:
    """Build the ``GRPOConfig`` once before the run directory exists: an unknown TRL key, a
    bad value or a missing tracker is one line now rather than a traceback later."""
    from trl import GRPOConfig

    known = [f.name for f in fields(GRPOConfig)]
    for key in cfg.trl:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else " (see TRL's GRPOConfig)"
            raise ConfigError(f"unknown key 'trl.{key}'{hint}")
    args = trl_arguments(cfg, str(Path(cfg.output_dir) / "(not yet made)"), use_cpu=use_cpu)
    report_to = args.get("report_to") or []
    report_to = [report_to] if isinstance(report_to, str) else list(report_to)
    if "wandb" in report_to or "all" in report_to:
        check_trackers(["wandb"])
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            GRPOConfig(**args)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"trl: {str(err).splitlines()[0]}") from None


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
    from transformers import PrinterCallback
    from transformers.integrations import TensorBoardCallback
    from trl import GRPOConfig, GRPOTrainer

    from selfedit.envs.update import DEFAULT_TARGET_MODULES

    # 1. Passages, files and TRL's settings first; then the run directory, env and policy.
    corpus = checked_corpus(cfg, env)
    train, heldout = passages(cfg, corpus)
    device = cfg.env.device if env is None else env.backend.device
    check_trl_arguments(cfg, use_cpu=str(device or "") == "cpu")
    rundir = (RunDir.resume(resume, cfg, command=command) if resume is not None
              else RunDir.create(cfg, command=command))
    try:
        env = env or SelfEditEnv(cfg.env, corpus=corpus)
        if cfg.mode == "self":
            writer_backend = env.backend
            policy_model = copy.deepcopy(env.backend.model)  # trained; the env follows it
        else:
            writer_backend = policy_backend or HFBackend(
                cfg.policy_model, dtype=cfg.policy_dtype, device=cfg.env.device)
            policy_model = writer_backend.model
        evaluator = Evaluator(env, EvalCache(rundir.log("evaluations.jsonl", key="key")),
                              seed=cfg.seed, progress=cfg.progress)
        records = rundir.log("iterations.jsonl")

        # 2. Held-out evaluation of the initial policy (iteration 0), next to the baselines.
        def writer_policy() -> TemplatePolicy:
            return TemplatePolicy(writer_backend, temperature=cfg.temperature,
                                  max_new_tokens=cfg.max_new_tokens, prefix_json=cfg.prefix_json)

        if heldout and not len(records):
            _heldout_record(0, writer_policy(), evaluator, heldout, cfg, rundir, baselines=True)

        # 3. The trainer: the meta-prompt (chat template applied, reply opened in the JSON).
        prefix = JSON_PREFIX if cfg.prefix_json else ""
        prompt = writer_backend.format_prompt(prompts.meta_prompt()) + prefix
        state = {"synced": 0}
        trainer: Any = None

        def sync(step: int) -> None:
            # Self mode: the env's model becomes the policy's current weights, once a step.
            if cfg.mode != "self" or step == state["synced"]:
                return
            copy_policy_weights(trainer.model, env.backend.model)
            env.rebase(tag=f"{rundir.path.name}-step{step}")
            state["synced"] = step

        reward = EnvReward(evaluator, metric=cfg.reward, prefix=prefix, before_call=sync,
                           writer=rundir.writer("env"))
        use_cpu = str(getattr(writer_backend, "device", "")) == "cpu"
        args = GRPOConfig(**trl_arguments(cfg, str(rundir.path / "trainer"), use_cpu=use_cpu))
        peft_config = None
        if cfg.lora_rank:
            peft_config = LoraConfig(
                r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, bias="none", task_type="CAUSAL_LM",
                target_modules=list(cfg.target_modules or DEFAULT_TARGET_MODULES))
        trl_writer = rundir.writer("trl")
        callbacks = [TensorBoardCallback(trl_writer)] if trl_writer is not None else []
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", category=UserWarning)
            trainer = GRPOTrainer(model=policy_model, reward_funcs=reward, args=args,
                                  train_dataset=grpo_dataset(prompt, train, cfg),
                                  processing_class=writer_backend.tokenizer,
                                  peft_config=peft_config, callbacks=callbacks)
            trainer.remove_callback(PrinterCallback)
            start = time.perf_counter()
            checkpoint = resume is not None and any((rundir.path / "trainer").glob("checkpoint-*"))
            trainer.train(resume_from_checkpoint=True if checkpoint else None)
        train_s = time.perf_counter() - start
        losses = [h for h in trainer.state.log_history if "loss" in h]

        # 4. The final policy: the env gets its weights (self mode); the LoRA is saved, merged.
        step = trainer.state.global_step
        policy = trainer.model
        if cfg.lora_rank:
            policy.save_pretrained(str(rundir.path / "policy"))
        if cfg.mode == "self":
            sync(step)
        merged = policy.merge_and_unload() if cfg.lora_rank else policy
        merged.eval()
        if cfg.mode == "separate":
            writer_backend.model = merged
            writer_backend.refresh()
        if not cfg.lora_rank:
            merged.save_pretrained(str(rundir.path / "policy"))

        # 5. Held-out evaluation of the trained policy; summary; HParams.
        if heldout:
            _heldout_record(1, writer_policy(), evaluator, heldout, cfg, rundir,
                            baselines=False)
        held = [r for r in records if r.get("heldout")]
        rundir.write_json("summary.json", {
            "steps": step, "train_s": train_s, "env_steps": evaluator.steps,
            "reward_calls": reward.calls, "evaluations": len(evaluator.cache), "log": losses,
            "heldout": [{"iteration": r["iteration"], **{k: r["heldout"][k] for k in
                         ("greedy", "sampled_mean", "sampled_best")}} for r in held],
        })
        table = heldout_table(held, cfg.baselines) if held else None
        if table:
            rundir.write_text("heldout.md", table + "\n")
        rundir.add_hparams(cfg.hparams(), {
            "hparams/heldout_greedy": held[-1]["heldout"]["greedy"] if held else None,
            "hparams/reward": losses[-1].get("reward") if losses else None,
            "hparams/steps": step}, sub="env", step=step)
    finally:
        rundir.close()
    if table:
        print(table)
    print(f"\nrun directory: {rundir.path}")
    return rundir.path


def _heldout_record(iteration: int, policy: TemplatePolicy, evaluator: Evaluator,
                    heldout: list[int], cfg: GRPORunConfig, rundir: RunDir,
                    *, baselines: bool) -> dict[str, Any]:
    record: dict[str, Any] = {"iteration": iteration,
                              "policy_fingerprint": policy.backend.fingerprint,
                              "heldout": heldout_eval(policy, evaluator, heldout,
                                                      samples=cfg.heldout_samples,
                                                      seed=cfg.seed + 7)}
    if baselines:
        record["baselines"] = baseline_eval(evaluator, heldout, cfg.baselines)
    record = rundir.log("iterations.jsonl").append(record)
    writer = rundir.writer("env")
    if writer is not None:
        writer.add_scalar("heldout/greedy", record["heldout"]["greedy"], iteration)
        if record["heldout"]["sampled_mean"] is not None:
            writer.add_scalar("heldout/sampled_mean", record["heldout"]["sampled_mean"], iteration)
        for name, value in (record.get("baselines") or {}).items():
            writer.add_scalar(f"heldout/baseline_{name}", value, iteration)
    return record
