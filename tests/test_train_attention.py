"""Training under another attention kernel: ``attention_kernel`` and
``selfedit bench train-attention`` (issue 11).

The kernel is switched for the block and given back (after an error too), training under
eager learns what training under sdpa learns (float32), packed sequences stay isolated
under both, and the bench times both kernels and writes its report.
"""

from __future__ import annotations

import json

import pytest
import torch

from selfedit.envs.multilora import AdapterRequest, packing_isolates
from selfedit.envs.templates import Hyperparameters
from selfedit.envs.update import LoRAUpdate
from selfedit.training.attention_bench import attention_kernel

FACTS = ["The lighthouse of Varnholt was lit in 1843.",
         "Its keeper, Ilse Marrow, kept it for forty years.",
         "The lamp burned whale oil until 1901."]


def _kernel(model: torch.nn.Module) -> str:
    return model.config._attn_implementation


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
    and greedy answers) comes out; packed sequences stay isolated under both."""
    model = tiny_backend.model
    request = AdapterRequest(FACTS, Hyperparameters(num_epochs=4, learning_rate=5e-3), seed=3)
    runs = {}
    for kernel in ("sdpa", "eager"):
        with attention_kernel(model, kernel), \
                LoRAUpdate(micro_batch_size=2).adapted_many(tiny_backend, [request]) as stats:
            assert _kernel(model) == kernel
            assert packing_isolates(model, tiny_backend.device)
            answers = tiny_backend.generate(["Who kept the lighthouse?", "What did it burn?"],
                                            max_new_tokens=8, adapters=[0, 0])
        runs[kernel] = (stats[0].losses, answers)
        assert _kernel(model) == "sdpa"
    (sdpa_losses, sdpa_answers), (eager_losses, eager_answers) = runs["sdpa"], runs["eager"]
    assert len(sdpa_losses) > 2 and sdpa_losses[-1] < sdpa_losses[0]
    assert eager_losses == pytest.approx(sdpa_losses, rel=1e-4, abs=1e-5)
    assert eager_answers == sdpa_answers


def test_bench_times_both_kernels_and_writes_its_report(tiny_model_dir, tmp_path) -> None:
    from selfedit.training.cli import main

    out = tmp_path / "attention"
    code = main(["bench", "train-attention", "--model", str(tiny_model_dir), "--dtype",
                 "float32", "--data", "passages", "--adapters", "2", "--repeats", "1",
                 "--threads", "1", "--output", str(out)])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["train_tokens"] > 0
    for kernel in ("sdpa", "eager"):
        assert report["tokens_per_s"][kernel]["median"] > 0
    ratio = report["tokens_per_s"]["eager"]["median"] / report["tokens_per_s"]["sdpa"]["median"]
    assert report["eager_vs_sdpa"]["median"] == pytest.approx(ratio)
    assert report["max_loss_difference"] < 1e-4  # float32: the kernels agree
    assert "eager / sdpa" in (out / "report.md").read_text()


def test_bench_rejects_nonsense(tmp_path) -> None:
    from selfedit.envs.config import ConfigError
    from selfedit.training.attention_bench import TrainAttentionConfig

    with pytest.raises(ConfigError, match="--adapters must be >= 1"):
        TrainAttentionConfig(adapters=0)
    with pytest.raises(ConfigError, match="--data must be sentences or passages"):
        TrainAttentionConfig(data="paragraphs")


def test_bench_says_so_when_the_model_cannot_switch_kernels(tiny_model_dir, tmp_path,
                                                             monkeypatch) -> None:
    from transformers import LlamaForCausalLM

    from selfedit.envs.config import ConfigError
    from selfedit.training.attention_bench import TrainAttentionConfig, run_train_attention_bench

    monkeypatch.setattr(LlamaForCausalLM, "_can_set_attn_implementation",
                        classmethod(lambda cls: False))
    cfg = TrainAttentionConfig(model=str(tiny_model_dir), dtype="float32", adapters=1,
                               sentences=2, repeats=1, output=str(tmp_path / "out"))
    with pytest.raises(ConfigError, match="cannot switch its attention kernel to 'eager'"):
        run_train_attention_bench(cfg, log=lambda _: None)
    assert not (tmp_path / "out").exists()  # no half-made report
