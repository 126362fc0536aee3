"""The M-step of ReST-EM: supervised fine-tuning of the policy on winning examples.

TRL's ``SFTTrainer`` trains a LoRA on the policy with prompt -> completion examples (the loss
on the completions only), the adapter is saved (safetensors, so a resumed run can rebuild the
policy) and then **merged** into the policy's weights, which stay a plain model in eval mode.
"""

from __future__ import annotations

import gc
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfedit.envs.config import ConfigError, check_keys, check_types
from selfedit.envs.update import LossCurve
from selfedit.training.experiment import param

__all__ = ["SFTExample", "SFTResult", "SFTSettings", "sft_dataset", "sft_update"]


@dataclass
class SFTSettings:
    """The M-step: a LoRA on the policy trained with TRL's SFTTrainer, then merged."""

    learning_rate: float = param(1e-4, "SFT learning rate (constant schedule)")
    epochs: int = param(2, "passes over the iteration's winning examples")
    lora_rank: int = param(16, "rank of the policy's SFT LoRA")
    lora_alpha: float = param(32.0, "LoRA alpha of the policy's SFT LoRA")
    lora_dropout: float = param(0.0, "LoRA dropout of the policy's SFT LoRA")
    batch_size: int = param(2, "examples per optimizer step")
    gradient_accumulation_steps: int = param(1, "micro-batches per optimizer step")
    max_length: int = param(1024, "tokens per example (prompt + completion); longer ones are cut")
    target_modules: list[str] | None = param(None, "modules that get the SFT LoRA; null = all "
                                             "attention and MLP projections")
    bf16: bool = param(False, "bf16 mixed precision (on a GPU; on a CPU autocast is slower)")
    gradient_checkpointing: bool = param(False, "trade compute for memory (large models on GPU)")

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

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SFTSettings:
        check_keys(cls, raw, where="sft")
        return cls(**raw)


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
    for name, weight in model.named_parameters():
        weight.requires_grad_(grad_state.get(name, False))
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
