"""The LoRA update operator: it learns, it stays within budgets, it never harms the base."""

from __future__ import annotations

import math

import torch

from selfedit.envs.backend import weights_checksum
from selfedit.envs.templates import Hyperparameters
from selfedit.envs.update import LoRAUpdate, PeftLoRAUpdate

TEXT = ["The Orm harp of Drovia has forty-one strings made of braided gut and silver wire."]


def _logits(backend) -> torch.Tensor:
    with torch.no_grad():
        return backend.model(input_ids=torch.tensor([[1, 40, 41, 42, 43]])).logits


def test_lora_weights_change_and_loss_falls(tiny_backend) -> None:
    hp = Hyperparameters(lora_rank=8, learning_rate=1e-2, num_epochs=6)
    base = weights_checksum(tiny_backend.model)
    before = _logits(tiny_backend)
    op = LoRAUpdate()
    with op.adapted(tiny_backend, TEXT, hp, seed=0) as stats:
        assert op.bank is not None, "the adapters are in place inside the block"
        lora_b = op.bank.parameters(0)[1::2]
        # B starts at zero; training moved it.
        assert all(float(p.detach().abs().sum()) > 0 for p in lora_b)
        assert all(not p.requires_grad for p in tiny_backend.model.parameters())
        assert not torch.equal(_logits(tiny_backend), before)  # the model answers adapted
    assert stats.optimizer_steps == 6
    assert stats.loss_last < stats.loss_first
    assert stats.train_tokens > 6 * 10
    assert op.bank is None
    assert not any(m._forward_hooks for m in tiny_backend.model.modules())  # hooks removed
    assert torch.equal(_logits(tiny_backend), before)
    assert weights_checksum(tiny_backend.model) == base


def test_peft_reference_learns_too(tiny_backend) -> None:
    """The PEFT operator (the reference LoRAUpdate is checked against) still works."""
    hp = Hyperparameters(lora_rank=8, learning_rate=1e-2, num_epochs=6)
    base = weights_checksum(tiny_backend.model)
    with PeftLoRAUpdate().adapted(tiny_backend, TEXT, hp, seed=0) as stats:
        assert any("lora_B" in n for n, _ in tiny_backend.model.named_parameters())
    assert stats.optimizer_steps == 6 and stats.loss_last < stats.loss_first
    assert not any("lora_" in n for n, _ in tiny_backend.model.named_parameters())
    assert weights_checksum(tiny_backend.model) == base


def test_gradient_accumulation_counts_optimizer_steps(tiny_backend) -> None:
    hp = Hyperparameters(lora_rank=4, num_epochs=2, gradient_accumulation_steps=3)
    seqs = [f"Fact {i}: the lighthouse keeper owned {i} lamps." for i in range(8)]
    with LoRAUpdate(micro_batch_size=2).adapted(tiny_backend, seqs, hp, seed=0) as stats:
        pass
    # 8 sequences / 2 per micro-batch = 4 micro-batches per epoch, 8 in all, windows of 3.
    assert stats.optimizer_steps == math.ceil(8 / 3)


def test_token_budget_skips_epochs_and_says_so(tiny_backend) -> None:
    hp = Hyperparameters(num_epochs=50)
    with LoRAUpdate(max_train_tokens=100).adapted(tiny_backend, TEXT, hp, seed=0) as stats:
        pass
    assert stats.error is None
    assert stats.notes and "max_train_tokens=100" in stats.notes[0]
    assert stats.optimizer_steps < 50


def test_non_finite_loss_stops_the_update_and_restores_the_base(tiny_backend) -> None:
    model = tiny_backend.model
    with torch.no_grad():  # a base model whose activations overflow: loss becomes NaN
        model.model.layers[0].mlp.down_proj.weight.fill_(float("inf"))
    before = weights_checksum(model)
    with LoRAUpdate().adapted(tiny_backend, TEXT, Hyperparameters(), seed=0) as stats:
        pass
    assert stats.error is not None and "loss became" in stats.error
    assert weights_checksum(model) == before


def test_no_training_leaves_the_model_alone(tiny_backend) -> None:
    before = weights_checksum(tiny_backend.model)
    op = LoRAUpdate()
    with op.adapted(tiny_backend, TEXT, Hyperparameters(num_epochs=0), seed=0) as st:
        assert op.bank is None
    assert st.optimizer_steps == 0
    assert weights_checksum(tiny_backend.model) == before


def test_base_restored_when_the_block_raises(tiny_backend) -> None:
    before = weights_checksum(tiny_backend.model)
    try:
        with LoRAUpdate().adapted(tiny_backend, TEXT, Hyperparameters(num_epochs=1), seed=0):
            raise RuntimeError("answering failed")
    except RuntimeError:
        pass
    assert not any(m._forward_hooks for m in tiny_backend.model.modules())
    assert weights_checksum(tiny_backend.model) == before
