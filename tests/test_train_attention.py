"""Training switches to the eager attention kernel where that is faster (bf16 on a CPU).

The decision itself is a doctest of ``selfedit.envs.precision.training_attention``; here:
the backend takes it, training runs under it, the model gets its own kernel back (after an
error too), generation keeps ``sdpa``, and the switch does not change what is learned.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from conftest import build_tiny_model

from selfedit.envs.backend import HFBackend
from selfedit.envs.multilora import AdapterRequest, attention_kernel, packing_isolates
from selfedit.envs.templates import Hyperparameters
from selfedit.envs.update import LoRAUpdate

FACTS = ["The lighthouse of Varnholt was lit in 1843.",
         "Its keeper, Ilse Marrow, kept it for forty years.",
         "The lamp burned whale oil until 1901."]


def _kernel(model: torch.nn.Module) -> str:
    return model.config._attn_implementation


def _kernels_seen(model: torch.nn.Module) -> tuple[list[tuple[str, bool]], Any]:
    """(kernel, gradients on) of every pass through the decoder (training calls the decoder
    alone, generation the whole model)."""
    seen: list[tuple[str, bool]] = []

    def hook(module, args, kwargs):  # noqa: ANN001, ARG001 - a forward pre-hook
        seen.append((_kernel(model), torch.is_grad_enabled()))

    return seen, model.get_decoder().register_forward_pre_hook(hook, with_kwargs=True)


def test_bf16_backend_on_cpu_trains_eager_and_answers_sdpa(smol_tokenizer) -> None:
    model = build_tiny_model(smol_tokenizer).to(torch.bfloat16)
    backend = HFBackend(model, tokenizer=smol_tokenizer, device="cpu")
    assert backend.precision.dtype == "bfloat16"
    assert backend.train_attention == "eager"
    assert _kernel(model) == "sdpa"
    seen, handle = _kernels_seen(model)
    request = AdapterRequest(FACTS, Hyperparameters(num_epochs=3, learning_rate=5e-3), seed=0)
    try:
        with LoRAUpdate(micro_batch_size=2).adapted_many(backend, [request]) as stats:
            training = {kernel for kernel, grad in seen if grad}
            seen.clear()
            backend.generate(["When was the lighthouse lit?"], max_new_tokens=4, adapters=[0])
            answering = {kernel for kernel, _ in seen}
    finally:
        handle.remove()
    assert stats[0].optimizer_steps > 0 and stats[0].loss_last < stats[0].loss_first
    assert training == {"eager"}
    assert answering == {"sdpa"}
    assert _kernel(model) == "sdpa"  # given back


def test_float32_is_left_alone(tiny_backend) -> None:
    assert tiny_backend.precision.dtype == "float32"
    assert tiny_backend.train_attention is None


def test_the_model_gets_its_kernel_back_after_an_error(tiny_backend) -> None:
    model = tiny_backend.model
    with pytest.raises(RuntimeError, match="inside"), attention_kernel(model, "eager"):
        assert _kernel(model) == "eager"
        raise RuntimeError("inside")
    assert _kernel(model) == "sdpa"
    with attention_kernel(model, None):
        assert _kernel(model) == "sdpa"


def test_eager_training_learns_what_sdpa_training_learns(tiny_backend) -> None:
    """float32: the two kernels compute the same attention, so the same adapter (loss curve
    and greedy answers) comes out; packed sequences stay isolated under eager."""
    model = tiny_backend.model
    request = AdapterRequest(FACTS, Hyperparameters(num_epochs=4, learning_rate=5e-3), seed=3)
    runs = {}
    for kernel in ("sdpa", "eager"):
        tiny_backend.train_attention = kernel
        with LoRAUpdate(micro_batch_size=2).adapted_many(tiny_backend, [request]) as stats:
            answers = tiny_backend.generate(["Who kept the lighthouse?", "What did it burn?"],
                                            max_new_tokens=8, adapters=[0, 0])
        runs[kernel] = (stats[0].losses, answers)
        with attention_kernel(model, kernel):
            assert packing_isolates(model, tiny_backend.device)
    (sdpa_losses, sdpa_answers), (eager_losses, eager_answers) = runs["sdpa"], runs["eager"]
    assert len(sdpa_losses) > 2 and sdpa_losses[-1] < sdpa_losses[0]
    assert eager_losses == pytest.approx(sdpa_losses, rel=1e-4, abs=1e-5)
    assert eager_answers == sdpa_answers


def test_bench_times_both_kernels_and_writes_its_report(tiny_model_dir, tmp_path) -> None:
    from selfedit.training.cli import main

    out = tmp_path / "attention"
    code = main(["bench", "train-attention", "--model", str(tiny_model_dir), "--dtype",
                 "float32", "--adapters", "2", "--sentences", "3", "--repeats", "1",
                 "--threads", "1", "--output", str(out)])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["train_tokens"] > 0
    for kernel in ("sdpa", "eager"):
        assert report["tokens_per_s"][kernel]["median"] > 0
    ratio = report["tokens_per_s"]["eager"]["median"] / report["tokens_per_s"]["sdpa"]["median"]
    assert report["eager_vs_sdpa"]["median"] == pytest.approx(ratio)
    assert report["max_loss_difference"] < 1e-4  # float32: the kernels agree
    assert report["backend_trains_with"] == "the model's own kernel"
    assert "eager / sdpa" in (out / "report.md").read_text()


def test_bench_rejects_nonsense(tmp_path) -> None:
    from selfedit.envs.config import ConfigError
    from selfedit.training.attention_bench import TrainAttentionConfig

    with pytest.raises(ConfigError, match="--adapters must be >= 1"):
        TrainAttentionConfig(adapters=0)
