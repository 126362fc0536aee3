"""What lets a policy-training run survive a kill: weights and RNG states.

(Every env evaluation is kept by :class:`~selfedit.training.evaluation.EvalCache`.)

- Adapters: the policy's LoRA of each iteration is saved with peft (``adapter_model.safetensors``
  + ``adapter_config.json``) before it is merged; a resumed run rebuilds the policy by merging
  the saved adapters into the base weights in order (bit-identical to the run it continues:
  tested).
- :func:`rng_state` / :func:`set_rng_state`: Python, NumPy and torch generators as JSON.
- Weight plumbing shared by ReST-EM, GRPO and continual mode: :func:`lora_merged_weights`
  (the effective weights of LoRA-wrapped modules), :func:`copy_policy_weights` (a policy,
  LoRA merged, into another model's storage). After such a change the env's caches follow
  the new weights through its public ``env.rebase()``.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from selfedit.training.jsonio import write_json_atomic

__all__ = [
    "apply_adapter",
    "copy_policy_weights",
    "latest_checkpoint",
    "lora_merged_weights",
    "rng_state",
    "set_rng_state",
    "write_checkpoint",
]


# -- RNG states -------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """Python, NumPy (global) and torch (CPU and CUDA) generator states, JSON-able."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": _listify(random.getstate()),
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def _listify(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_listify(v) for v in value]
    return value


# -- checkpoints ------------------------------------------------------------------------
def write_checkpoint(run_dir: Path, iteration: int, state: dict[str, Any],
                     adapter: Path | None = None) -> Path:
    """Write ``checkpoints/iter_<i>/`` (state.json, and the iteration's adapter) atomically.

    The directory appears under its final name only when complete, so
    :func:`latest_checkpoint` never picks up half a checkpoint.
    """
    root = Path(run_dir) / "checkpoints"
    root.mkdir(exist_ok=True)
    final = root / f"iter_{iteration:03d}"
    tmp = root / f"iter_{iteration:03d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    if adapter is not None:
        shutil.copytree(adapter, tmp / "adapter")
    write_json_atomic(tmp / "state.json", {"iteration": iteration, **state})
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete ``checkpoints/iter_<i>`` of a run directory, or None."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return None
    done = sorted(p for p in root.glob("iter_*") if p.is_dir() and not p.name.endswith(".tmp")
                  and (p / "state.json").is_file())
    return done[-1] if done else None


# -- weights ----------------------------------------------------------------------------
@torch.no_grad()
def apply_adapter(model: torch.nn.Module, adapter_dir: Path) -> torch.nn.Module:
    """Merge a saved peft adapter into ``model``'s weights, in place; return ``model``."""
    import warnings

    from peft import PeftModel

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    if merged is not model:
        raise RuntimeError("merging the adapter returned a different model object")
    model.eval()
    return model


@torch.no_grad()
def lora_merged_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``{module name: base weight + LoRA delta}`` for every LoRA-wrapped module of ``model``.

    Names are those of the modules in ``model`` (after the adapter is unloaded,
    ``model.get_submodule(name).weight`` is the weight to overwrite). The delta is summed in
    float32 and cast to the base dtype. Used by continual mode to keep an adapter that the
    env's update operator would otherwise discard.
    """
    from peft.tuners.lora import LoraLayer

    out: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer) or getattr(module, "merged", False):
            continue
        weight = module.get_base_layer().weight
        total = weight.detach().float().clone()
        for adapter in module.active_adapters:
            if adapter in module.lora_A:
                total += module.get_delta_weight(adapter).float()
        out[name] = total.to(weight.dtype)
    return out


@torch.no_grad()
def copy_policy_weights(policy: torch.nn.Module, target: torch.nn.Module) -> None:
    """Copy a policy's effective weights (its LoRA merged, if it has one) into ``target``.

    ``target`` keeps its own storage: the policy's base weights and adapter are not touched.
    GRPO in self mode uses this to give the env's model the policy's current weights before
    each reward call.
    """
    base = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
    merged = lora_merged_weights(base)
    state: dict[str, torch.Tensor] = {}
    for key, tensor in base.state_dict().items():
        if ".lora_" in key or "lora_magnitude" in key:
            continue
        state[key.replace(".base_layer.", ".")] = tensor
    for name, weight in merged.items():
        state[f"{name}.weight"] = weight
    missing, unexpected = target.load_state_dict(state, strict=False)
    if unexpected or [m for m in missing if not m.endswith("lm_head.weight")]:
        raise RuntimeError(f"policy and target models differ: missing {missing[:3]},"
                           f" unexpected {unexpected[:3]}")
