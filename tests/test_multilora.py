"""K LoRA adapters in one pass (issue 11): the same adapters as one at a time, and as PEFT's."""

from __future__ import annotations

import json

import pytest
import torch

from selfedit.envs import multilora
from selfedit.envs.backend import weights_checksum
from selfedit.envs.multilora import LoRABank, encode_sequences, pack
from selfedit.envs.templates import Hyperparameters
from selfedit.envs.update import DEFAULT_TARGET_MODULES, AdapterRequest, LoRAUpdate

FACTS = [
    [f"The Orm harp of Drovia number {i} has {40 + j} strings of braided gut, said keeper {j}."
     for j in range(5)]
    for i in range(4)
]
# Different ranks, learning rates, epochs, accumulation and dropout: everything per adapter.
HPS = [
    Hyperparameters(lora_rank=8, learning_rate=1e-2, num_epochs=3),
    Hyperparameters(lora_rank=4, learning_rate=5e-3, num_epochs=5, gradient_accumulation_steps=2,
                    lora_dropout=0.1),
    Hyperparameters(lora_rank=16, lora_alpha=8, num_epochs=2),
    Hyperparameters(lora_rank=2, learning_rate=2e-3, num_epochs=1),
]
QUESTIONS = ["How many strings does the Orm harp have?", "Who is the keeper of the harp?"]


def _requests() -> list[AdapterRequest]:
    # Adapter 3 mixes a (prompt, target) pair in: the loss covers the target only.
    seqs = [*FACTS[:3], [("Question: what is the Orm harp? Answer:", " a harp of Drovia.")]]
    return [AdapterRequest(s, h, seed=10 + i) for i, (s, h) in enumerate(zip(seqs, HPS,
                                                                             strict=True))]


def test_batched_training_matches_one_by_one(tiny_backend) -> None:
    """Loss curves (tight, fp32) and greedy answers of K adapters trained together equal
    those of each adapter trained alone, on the same data and seeds."""
    op = LoRAUpdate(micro_batch_size=2)
    before = weights_checksum(tiny_backend.model)
    requests = _requests()
    prompts = [q for q in QUESTIONS for _ in requests]
    with op.adapted_many(tiny_backend, requests) as batched:
        ids = [k for _ in QUESTIONS for k in range(len(requests))]
        answers = tiny_backend.generate(prompts, max_new_tokens=8, adapters=ids)
    assert weights_checksum(tiny_backend.model) == before
    for k, request in enumerate(requests):
        with op.adapted_many(tiny_backend, [request]) as alone:
            solo = tiny_backend.generate(QUESTIONS, max_new_tokens=8, adapters=[0, 0])
        assert batched[k].optimizer_steps == alone[0].optimizer_steps > 0
        assert batched[k].train_tokens == alone[0].train_tokens
        assert batched[k].losses == pytest.approx(alone[0].losses, rel=1e-4, abs=1e-5)
        assert [answers[k], answers[len(requests) + k]] == solo
    assert weights_checksum(tiny_backend.model) == before
    # Each adapter's loss fell: it learned its own data.
    for stats in batched[:3]:
        assert stats.loss_last < stats.loss_first


def test_grouped_matmuls_match_one_by_one(tiny_backend, monkeypatch) -> None:
    """Without dropout and with ranks that are multiples of 4, the CPU serves K adapters with
    one grouped matmul pair per rank (torch's grouped_mm): same losses and answers as each
    adapter alone, with mixed ranks, scalings and data sizes."""
    if not multilora._HAS_GROUPED_MM:
        pytest.skip("this torch has no grouped_mm")
    calls = []
    grouped_pair = LoRABank._grouped_pair

    def counted(self, adapters, m, x, offs, scale):
        calls.append(len(adapters))
        return grouped_pair(self, adapters, m, x, offs, scale)

    monkeypatch.setattr(LoRABank, "_grouped_pair", counted)
    hps = [Hyperparameters(lora_rank=8, learning_rate=1e-2, num_epochs=3),
           Hyperparameters(lora_rank=8, lora_alpha=4, learning_rate=5e-3, num_epochs=2,
                           gradient_accumulation_steps=2),
           Hyperparameters(lora_rank=4, learning_rate=1e-2, num_epochs=2),
           Hyperparameters(lora_rank=8, learning_rate=2e-3, num_epochs=1)]
    seqs = [FACTS[0], FACTS[1][:3], FACTS[2], FACTS[3][:1]]
    requests = [AdapterRequest(s, h, seed=20 + i) for i, (s, h) in enumerate(zip(seqs, hps,
                                                                                 strict=True))]
    op = LoRAUpdate(micro_batch_size=2)
    with op.adapted_many(tiny_backend, requests) as batched:
        ids = [k for _ in QUESTIONS for k in range(len(requests))]
        answers = tiny_backend.generate([q for q in QUESTIONS for _ in requests],
                                        max_new_tokens=8, adapters=ids)
    assert calls and max(calls) == 3  # the three rank-8 adapters shared one grouped pair
    calls.clear()
    for k, request in enumerate(requests):
        with op.adapted_many(tiny_backend, [request]) as alone:
            solo = tiny_backend.generate(QUESTIONS, max_new_tokens=8, adapters=[0, 0])
        assert batched[k].losses == pytest.approx(alone[0].losses, rel=1e-4, abs=1e-5)
        assert [answers[k], answers[len(requests) + k]] == solo
        assert batched[k].loss_last < batched[k].loss_first or batched[k].optimizer_steps == 1
    assert not calls  # one adapter alone takes the plain path


def test_adapters_that_finish_early_leave_the_batch(tiny_backend) -> None:
    op = LoRAUpdate(micro_batch_size=5)
    short = AdapterRequest(FACTS[0], Hyperparameters(num_epochs=1), seed=1)
    long = AdapterRequest(FACTS[1], Hyperparameters(num_epochs=7), seed=2)
    with op.adapted_many(tiny_backend, [short, long]) as stats:
        pass
    assert stats[0].optimizer_steps == 1 and stats[1].optimizer_steps == 7


def test_no_training_request_is_the_base_model(tiny_backend) -> None:
    op = LoRAUpdate()
    base = tiny_backend.generate(QUESTIONS, max_new_tokens=6)
    requests = [AdapterRequest(FACTS[0], Hyperparameters(num_epochs=0), seed=0),
                AdapterRequest(FACTS[1], Hyperparameters(learning_rate=1e-2), seed=1)]
    with op.adapted_many(tiny_backend, requests) as stats:
        zero = tiny_backend.generate(QUESTIONS, max_new_tokens=6, adapters=[0, 0])
        none = tiny_backend.generate(QUESTIONS, max_new_tokens=6, adapters=[None, None])
    assert stats[0].optimizer_steps == 0 and stats[1].optimizer_steps > 0
    assert zero == base and none == base


def test_a_failing_adapter_does_not_touch_the_others(tiny_backend) -> None:
    """A non-finite loss stops its own adapter; the others train as if it were absent."""
    op = LoRAUpdate(micro_batch_size=2)
    good = AdapterRequest(FACTS[0], HPS[0], seed=5)
    with op.adapted_many(tiny_backend, [good]) as alone:
        pass
    bank_init = LoRABank.__init__

    def poisoned(self, *args, **kwargs):  # adapter 1 starts with a non-finite A
        bank_init(self, *args, **kwargs)
        with torch.no_grad():
            self.weights[1][0][0].fill_(float("inf"))
            self.weights[1][0][1].fill_(1.0)

    LoRABank.__init__ = poisoned
    try:
        with op.adapted_many(tiny_backend, [good, AdapterRequest(FACTS[1], HPS[0], seed=6)]) as st:
            pass
    finally:
        LoRABank.__init__ = bank_init
    assert st[1].error is not None and "loss became" in st[1].error
    assert st[0].error is None
    assert st[0].losses == pytest.approx(alone[0].losses, rel=1e-4, abs=1e-5)


def test_deadline_stops_training_and_says_so(tiny_backend) -> None:
    op = LoRAUpdate(micro_batch_size=1)
    request = AdapterRequest(FACTS[0], Hyperparameters(num_epochs=50), seed=0, deadline=0.0)
    with op.adapted_many(tiny_backend, [request]) as stats:
        pass
    assert stats[0].optimizer_steps == 1  # one micro-batch always runs, then the budget
    assert any("time budget" in note for note in stats[0].notes)


def test_packing_keeps_sequences_apart(tiny_backend, smol_tokenizer) -> None:
    """Packed rows give each sequence the logits it has alone (block-diagonal attention)."""
    model = tiny_backend.model
    texts = ["A short one here.", "A much longer sequence of words that fills the row more.",
             "Third, medium length text."]
    encoded, _ = encode_sequences(smol_tokenizer, texts, 512)
    batch = pack([(0, encoded[:2]), (1, encoded[2:])], smol_tokenizer.pad_token_id)
    assert batch.input_ids.shape[0] == 2  # three sequences in two rows
    with torch.no_grad():
        packed = model(input_ids=batch.input_ids, position_ids=batch.position_ids,
                       use_cache=False).logits
        flat = packed.reshape(-1, packed.shape[-1])
        for k, positions in batch.groups:
            mine = [e for owner, seqs in [(0, encoded[:2]), (1, encoded[2:])] if owner == k
                    for e in seqs]
            offset = 0
            for e in mine:
                alone = model(input_ids=torch.tensor([e.ids])).logits[0]
                rows = positions[offset : offset + len(e.ids)]
                torch.testing.assert_close(flat[rows], alone, rtol=1e-4, atol=1e-4)
                offset += len(e.ids)


def test_packing_gives_each_adapter_one_block(smol_tokenizer) -> None:
    """Adapters are laid out one after another: each one's tokens lie inside its own
    block, and the blocks tile every position (padding included)."""
    texts = [f"Fact {i}: the lamp of Orvel burns {'very ' * (i % 5)}bright oil." for i in range(9)]
    encoded, _ = encode_sequences(smol_tokenizer, texts, 512)
    batch = pack([(2, encoded[:4]), (0, encoded[4:5]), (1, encoded[5:])],
                 smol_tokenizer.pad_token_id)
    assert [k for k, _, _ in batch.spans] == [2, 0, 1]
    assert batch.spans[0][1] == 0 and batch.spans[-1][2] == batch.input_ids.numel()
    assert all(a[2] == b[1] for a, b in zip(batch.spans, batch.spans[1:], strict=False))
    for (k, positions), (owner, start, end) in zip(batch.groups, batch.spans, strict=True):
        assert k == owner and start <= int(positions.min()) and int(positions.max()) < end
    real = sum(batch.real_tokens.values())
    assert int((batch.input_ids != smol_tokenizer.pad_token_id).sum()) <= real
    assert batch.input_ids.numel() < 1.5 * real  # rows stay mostly full


def test_prompt_target_pairs_put_the_loss_on_the_target(smol_tokenizer) -> None:
    encoded, _ = encode_sequences(smol_tokenizer, [("Q: colour?", " Red.")], 512)
    (e,) = encoded
    prompt_len = len(smol_tokenizer("Q: colour?", add_special_tokens=False)["input_ids"])
    assert e.loss[:prompt_len] == [False] * prompt_len and all(e.loss[prompt_len:])
    batch = pack([(0, encoded)], smol_tokenizer.pad_token_id)
    labelled = (batch.labels != -100).sum().item()
    assert labelled == len(e.ids) - prompt_len == batch.label_counts[0]


def test_bank_computes_what_peft_computes(tiny_backend, tmp_path) -> None:
    """An adapter exported in PEFT's format and loaded by PEFT gives the same logits."""
    from peft import PeftModel
    from safetensors.torch import save_file

    model = tiny_backend.model
    bank = LoRABank(model, [(4, 16.0, 0.0, 3)], target_modules=DEFAULT_TARGET_MODULES)
    with torch.no_grad():
        for _, b in bank.weights[0]:
            b.normal_(0, 0.05)  # B is zero at init: make the adapter do something
    ids = torch.tensor([[1, 50, 60, 70, 80, 90]])
    with torch.no_grad():
        base = model(input_ids=ids).logits
        bank.default = 0
        ours = model(input_ids=ids).logits
        bank.default = None
        merged = dict(bank.merged_weights(0))
    tensors, config = bank.peft_state(0)
    bank.remove()
    assert not torch.allclose(ours, base)
    save_file(tensors, str(tmp_path / "adapter_model.safetensors"))
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    peft_model = PeftModel.from_pretrained(model, str(tmp_path))
    with torch.no_grad():
        theirs = peft_model(input_ids=ids).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    peft_model.unload()
    # merged_weights is the same function folded into the weights (continual mode).
    saved = {name: model.get_submodule(name).weight.clone() for name in merged}
    with torch.no_grad():
        for name, weight in merged.items():
            model.get_submodule(name).weight.copy_(weight)
        folded = model(input_ids=ids).logits
        for name, weight in saved.items():
            model.get_submodule(name).weight.copy_(weight)
    torch.testing.assert_close(ours, folded, rtol=1e-4, atol=1e-5)


def test_generation_adds_each_adapters_delta_to_its_own_block_of_rows(tiny_backend) -> None:
    """Generation sorts its rows by adapter; each adapter's block then gets its delta in
    place (no gather, no scatter): the same outputs as the gather path and the base."""
    model = tiny_backend.model
    bank = LoRABank(model, [(4, 16.0, 0.0, 3), (2, 4.0, 0.0, 4), (8, 8.0, 0.0, 5)],
                    target_modules=DEFAULT_TARGET_MODULES)
    try:
        with torch.no_grad():
            for pairs in bank.weights:
                for _, b in pairs:
                    b.normal_(0, 0.05)
        module = bank.modules[0][1]
        x = torch.randn(6, 3, module.in_features)
        blocks, mixed = [None, 0, 0, 1, 2, 2], [0, None, 2, 1, 2, 0]
        assert bank._make_route(blocks, flat=False).spans == ((0, 1, 3), (1, 3, 4), (2, 4, 6))
        assert bank._make_route(mixed, flat=False).spans is None
        with torch.no_grad():
            base = module(x)
            with bank.rows(blocks):
                in_place = module(x)
            perm = [1, 0, 4, 3, 5, 2]  # row i of the mixed batch is row perm[i] of x
            with bank.rows(mixed):
                gathered = module(x[perm])
        torch.testing.assert_close(in_place[perm], gathered, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(in_place[0], base[0])  # the base's row: untouched
        assert not torch.allclose(in_place[1:], base[1:])
    finally:
        bank.remove()


def test_row_routing_rejects_bad_use(tiny_backend) -> None:
    with pytest.raises(RuntimeError, match="none is active"):
        tiny_backend.generate(["hi"], max_new_tokens=2, adapters=[0])
    with pytest.raises(ValueError, match="entries"):
        tiny_backend.generate(["hi", "there"], max_new_tokens=2, adapters=[None])


def test_sampling_does_not_depend_on_the_batch(tiny_backend) -> None:
    """Prompt i samples from seed + i whatever else is in its batch (issue 11)."""
    prompts = ["Tell me about harps.", "A much longer prompt about the lighthouse keeper."]
    together = tiny_backend.generate(prompts, max_new_tokens=10, temperature=0.9, seed=7)
    first = tiny_backend.generate(prompts[:1], max_new_tokens=10, temperature=0.9, seed=7)
    second = tiny_backend.generate(prompts[1:], max_new_tokens=10, temperature=0.9, seed=8)
    assert together == [*first, *second]
    assert tiny_backend.generate(prompts, max_new_tokens=10, temperature=0.9, seed=9) != together


def test_packing_check_tells_isolating_models_apart(tiny_backend) -> None:
    from selfedit.envs import multilora

    assert multilora.packing_isolates(tiny_backend.model, tiny_backend.device)

    class Leaky(torch.nn.Module):  # a model whose outputs mix every position of a row
        def forward(self, input_ids, position_ids=None, use_cache=False):
            mixed = input_ids.float().cumsum(-1).unsqueeze(-1).expand(-1, -1, 3)
            return type("Out", (), {"logits": mixed})()

    assert not multilora.packing_isolates(Leaky(), torch.device("cpu"))
    seqs, _ = encode_sequences(tiny_backend.tokenizer, ["one two three", "four five"], 64)
    rows = pack([(0, seqs)], tiny_backend.tokenizer.pad_token_id, one_per_row=True)
    assert rows.input_ids.shape[0] == 2
