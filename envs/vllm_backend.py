"""A vLLM backend: generation on vLLM, LoRA training still on the transformers model.

Selected with ``env.engine: vllm`` (``pip install "selfedit-gym[vllm]"``, a CUDA GPU). The
backend holds two copies of the base weights on the GPU:

* the transformers model of :class:`~selfedit.envs.backend.HFBackend` (``backend.model``),
  which the update operator wraps with PEFT and trains, exactly as with ``engine: hf``;
* a ``vllm.LLM`` started with ``enable_lora``, which generates the template completions
  and the answers (DESIGN.md: vLLM serves LoRA adapters per request).

The update operator hands trained adapters over through hooks (:mod:`selfedit.envs.update`):
``adapters_ready(bank)`` (LoRAUpdate: K adapters trained in one pass) saves each adapter in
PEFT's format to a temporary directory, and a request for prompt i inside the ``with`` block
carries the ``LoRARequest`` of the adapter ``generate(..., adapters=[...])`` names for it
(vLLM batches requests for different adapters together, up to ``max_loras`` at a time);
``adapter_ready(peft_model)`` does the same for PeftLoRAUpdate's one adapter. Every adapter
gets a fresh integer id (vLLM caches adapters by id, so an id is never reused);
``adapters_done()`` / ``adapter_done()`` drop the requests and delete the directories. Both
engines see the same token ids (:func:`request_prompts`) and sample with the same settings
(:func:`sampling_options`).

Limit: vLLM loads the base weights once. A run that changes them in place (self-mode
ReST-EM / GRPO, where the env's model is the trained policy; continual mode, which merges
adapters) cannot use this backend: those configs refuse ``engine: vllm``, and
:meth:`VLLMBackend.refresh` raises.

Everything but :class:`VLLMBackend` itself runs without vLLM, so it is tested on a CPU.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selfedit.envs.backend import (
    EMBEDDED_MODEL,
    HFBackend,
    check_engine,
    prompt_seeds,
    resolve_model_path,
)
from selfedit.envs.config import ConfigError
from selfedit.envs.templates import HP_RANGES

__all__ = [
    "VLLMBackend",
    "adapter_rank",
    "request_prompts",
    "sampling_options",
    "save_adapter",
    "save_bank_adapter",
    "vllm_max_lora_rank",
]

# The values vLLM's LoRAConfig accepts for max_lora_rank (vllm >= 0.8; older releases stop
# at 64 or 256). LoRA buffers are allocated at this rank, so the smallest that fits is best.
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
# transformers samples with top_k=50 when the model's generation config sets no top_k.
HF_DEFAULT_TOP_K = 50


def vllm_max_lora_rank(rank: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that serves adapters of ``rank``.

    >>> vllm_max_lora_rank(1), vllm_max_lora_rank(64), vllm_max_lora_rank(256)
    (8, 64, 256)
    """
    for allowed in VLLM_LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise ConfigError(f"LoRA rank {rank} is above the largest max_lora_rank vLLM accepts"
                      f" ({VLLM_LORA_RANKS[-1]}); lower lora_rank or use env.engine: hf")


def adapter_rank(peft_model: Any) -> int:
    """The largest LoRA rank in a PEFT model (its configs and their per-module patterns)."""
    ranks = [0]
    for config in peft_model.peft_config.values():
        ranks.append(int(config.r))
        ranks.extend(int(r) for r in (getattr(config, "rank_pattern", None) or {}).values())
    return max(ranks)


def save_adapter(peft_model: Any, directory: str | os.PathLike[str]) -> Path:
    """Write the adapter where vLLM (or ``PeftModel.from_pretrained``) can load it.

    ``adapter_config.json`` and ``adapter_model.safetensors``, as PEFT writes them; the
    base weights are not written.
    """
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(path), safe_serialization=True)
    return path


def save_bank_adapter(bank: Any, k: int, directory: str | os.PathLike[str]) -> Path:
    """Write adapter ``k`` of a :class:`~selfedit.envs.multilora.LoRABank` as PEFT saves a
    LoRA (``adapter_config.json`` + ``adapter_model.safetensors``), for vLLM to load."""
    from safetensors.torch import save_file

    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    tensors, config = bank.peft_state(k)
    save_file(tensors, str(path / "adapter_model.safetensors"))
    (path / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return path


def request_prompts(
    backend: HFBackend,
    prompts: Sequence[str],
    *,
    response_prefix: str = "",
    max_prompt_tokens: int = 2048,
) -> list[dict[str, list[int]]]:
    """vLLM's prompts: the token ids :meth:`HFBackend.generate` feeds its model, unpadded.

    Same texts (:meth:`HFBackend.prompt_texts`: chat template, then ``response_prefix``),
    same tokenizer call (no special tokens added to a chat-formatted text, same truncation).
    Token ids rather than text, so vLLM's own tokenizer cannot add a second BOS.
    """
    texts = backend.prompt_texts(prompts, response_prefix)
    encoded = backend.tokenizer(
        texts, truncation=True, max_length=max_prompt_tokens,
        add_special_tokens=not backend.chat,
    )["input_ids"]
    return [{"prompt_token_ids": list(ids)} for ids in encoded]


def sampling_options(
    generation_config: Any,
    count: int,
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int | Sequence[int] | None,
) -> list[dict[str, Any]]:
    """``vllm.SamplingParams`` arguments, one per request, that decode as HFBackend does.

    Greedy when ``temperature`` is 0. transformers also applies the model's generation
    config (Qwen2.5-Instruct ships top_k 20 and repetition_penalty 1.05) and stops at its
    EOS ids; vLLM applies none of it to parameters given explicitly, so they are copied
    here. Each request gets its own seed, ``seed + i``: vLLM seeds per request, and the
    identical prompts of several completions per passage must not give identical samples.

    >>> from transformers import GenerationConfig
    >>> opts = sampling_options(GenerationConfig(eos_token_id=[2, 7]), 2, max_new_tokens=8,
    ...                         temperature=0.7, top_p=0.9, seed=5)
    >>> [o["seed"] for o in opts], opts[0]["top_k"], opts[0]["stop_token_ids"]
    ([5, 6], 50, [2, 7])
    >>> sampling_options(GenerationConfig(), 1, max_new_tokens=8, temperature=0.0,
    ...                  top_p=1.0, seed=5)[0]["temperature"]
    0.0
    """
    eos = getattr(generation_config, "eos_token_id", None)
    stop = [] if eos is None else [eos] if isinstance(eos, int) else [int(e) for e in eos]
    penalty = getattr(generation_config, "repetition_penalty", None) or 1.0
    common: dict[str, Any] = {"max_tokens": max_new_tokens, "stop_token_ids": stop,
                              "repetition_penalty": float(penalty)}
    if temperature <= 0:
        return [{**common, "temperature": 0.0} for _ in range(count)]
    top_k = getattr(generation_config, "top_k", None)
    if top_k is None:
        top_k = HF_DEFAULT_TOP_K
    elif int(top_k) == 0:
        top_k = -1  # off; every vLLM release reads -1 as off (newer ones also 0)
    common.update(temperature=temperature, top_p=top_p, top_k=int(top_k))
    if seed is None:
        return [{**common, "seed": None} for _ in range(count)]
    return [{**common, "seed": s} for s in prompt_seeds(seed, count)]


class VLLMBackend(HFBackend):
    """:class:`HFBackend` for training, a ``vllm.LLM`` with LoRA per request for generation.

    Args:
        model: ``"embedded"``, a hub id, a local ``save_pretrained`` directory or a ``.gguf``
            file (converted once, as for HFBackend); vLLM reads the same path. Not a model
            object: vLLM loads its own copy of the weights.
        dtype: weights dtype of both copies.
        device: the transformers copy's device; must be a CUDA device (default ``cuda``).
        batch_size, chat: as for :class:`HFBackend` (vLLM batches by itself).
        gpu_memory_utilization: the share of the GPU vLLM takes (its weights and KV cache);
            the transformers copy, its LoRA and the training activations live in the rest.
        max_model_len: longest prompt + reply in tokens; ``None`` = the model's context.
        max_lora_rank: the largest adapter rank served; default: the largest rank a template
            may ask for (``HP_RANGES``), rounded up to a value vLLM accepts.
        llm_kwargs: further ``vllm.LLM`` arguments (e.g. ``enforce_eager=True``).
    """

    def __init__(
        self,
        model: str | os.PathLike[str] = EMBEDDED_MODEL,
        *,
        dtype: str = "bfloat16",
        device: str | None = None,
        batch_size: int = 16,
        chat: bool = True,
        gpu_memory_utilization: float = 0.4,
        max_model_len: int | None = None,
        max_lora_rank: int | None = None,
        max_loras: int = 8,
        **llm_kwargs: Any,
    ) -> None:
        if not isinstance(model, (str, os.PathLike)):
            raise TypeError("VLLMBackend loads its model by name or path (vLLM reads its own"
                            " copy from there); use HFBackend for a model object")
        check_engine("vllm", device)  # before the transformers copy loads
        super().__init__(model, dtype=dtype, device=device, batch_size=batch_size, chat=chat)
        from vllm import LLM

        self.max_lora_rank = vllm_max_lora_rank(max_lora_rank or int(HP_RANGES["lora_rank"][1]))
        self.llm = LLM(
            model=resolve_model_path(model),
            dtype=self.precision.dtype,  # the transformers copy's choice (dtype may be auto)
            enable_lora=True,
            max_lora_rank=self.max_lora_rank,
            max_loras=max_loras,  # adapters in one batch; more are scheduled in turns
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            **llm_kwargs,
        )
        self._lora: Any = None  # the LoRARequest of the adapter being served, if any
        self._adapter_dir: Path | None = None
        self._bank_loras: list[Any] = []  # one LoRARequest per adapter of the active bank
        self._bank_default: Any = None
        self._lora_ids = itertools.count(1)  # vLLM ids start at 1 and must stay unique

    def refresh(self, tag: str | None = None) -> str:
        """Refuse: vLLM cannot see base weights changed in place (module docstring)."""
        raise ConfigError(
            "the base weights changed in place, but the vLLM engine serves the copy it loaded"
            " at start: self-mode ReST-EM / GRPO and continual mode need env.engine: hf (or"
            " save the new weights with save_pretrained and start again with env.model"
            " pointing at them)"
        )

    # -- adapter hand-over (called by the update operator) ------------------------------
    def adapter_ready(self, peft_model: Any) -> None:
        """Serve ``peft_model``'s adapter: saved to a temp dir, sent with every request."""
        from vllm.lora.request import LoRARequest

        self.adapter_done()  # never two: a stale adapter must not answer
        rank = adapter_rank(peft_model)
        if rank > self.max_lora_rank:
            raise ValueError(f"LoRA rank {rank} exceeds this vLLM engine's max_lora_rank="
                             f"{self.max_lora_rank}; build VLLMBackend with max_lora_rank >="
                             f" {rank}")
        self._adapter_dir = Path(tempfile.mkdtemp(prefix="selfedit-lora-"))
        save_adapter(peft_model, self._adapter_dir)
        lora_id = next(self._lora_ids)
        self._lora = LoRARequest(f"selfedit-{lora_id}", lora_id, str(self._adapter_dir))

    def adapter_done(self) -> None:
        """Back to the base model; the adapter's directory is deleted.

        vLLM keeps the adapter in its cache until the next one evicts it (``max_loras=1``);
        its id is never sent again, so the deleted files are never read again.
        """
        self._lora = None
        if self._adapter_dir is not None:
            shutil.rmtree(self._adapter_dir, ignore_errors=True)
            self._adapter_dir = None

    def adapters_ready(self, bank: Any) -> None:
        """Serve every adapter of ``bank``: each saved to its own temp dir, one id each."""
        from vllm.lora.request import LoRARequest

        self.adapters_done()
        if max(bank.ranks) > self.max_lora_rank:
            raise ValueError(f"LoRA rank {max(bank.ranks)} exceeds this vLLM engine's"
                             f" max_lora_rank={self.max_lora_rank}")
        self._bank = bank
        self._adapter_dir = Path(tempfile.mkdtemp(prefix="selfedit-loras-"))
        for k in range(len(bank)):
            lora_id = next(self._lora_ids)
            path = save_bank_adapter(bank, k, self._adapter_dir / str(k))
            self._bank_loras.append(LoRARequest(f"selfedit-{lora_id}", lora_id, str(path)))

    def adapters_done(self) -> None:
        self._bank = None
        self._bank_loras = []
        self.adapter_done()

    def _requests_loras(self, count: int, adapters: Sequence[int | None] | None) -> Any:
        """The LoRARequest of each prompt: the named adapter, the bank's default, or the
        single adapter of adapter_ready (None: the base model)."""
        if self._bank_loras:
            if adapters is None:
                default = getattr(self._bank, "default", None)
                adapters = [default] * count
            return [None if a is None else self._bank_loras[a] for a in adapters]
        if adapters is not None and any(a is not None for a in adapters):
            raise RuntimeError("adapters= names adapters, but none is active")
        return self._lora

    # -- text ---------------------------------------------------------------------------
    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | Sequence[int] | None = None,
        max_prompt_tokens: int = 2048,
        response_prefix: str = "",
        adapters: Sequence[int | None] | None = None,
    ) -> list[str]:
        """:meth:`HFBackend.generate`'s contract, on vLLM, each prompt with its adapter."""
        from vllm import SamplingParams

        if not prompts:
            return []
        requests = request_prompts(self, prompts, response_prefix=response_prefix,
                                   max_prompt_tokens=max_prompt_tokens)
        options = sampling_options(self.model.generation_config, len(requests),
                                   max_new_tokens=max_new_tokens, temperature=temperature,
                                   top_p=top_p, seed=seed)
        if adapters is not None and len(adapters) != len(prompts):
            raise ValueError(f"adapters has {len(adapters)} entries for {len(prompts)} prompts")
        outputs = self.llm.generate(requests, [SamplingParams(**o) for o in options],
                                    lora_request=self._requests_loras(len(prompts), adapters),
                                    use_tqdm=False)
        # Decoded by the transformers tokenizer, as HFBackend decodes: same tokens, same text.
        replies = [self.tokenizer.decode(list(out.outputs[0].token_ids),
                                         skip_special_tokens=True) for out in outputs]
        return [(response_prefix + r).strip() for r in replies]
