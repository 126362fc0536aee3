"""Update operators: how a self-edit changes the model.

An update operator turns training sequences and hyperparameters into an adapted model for
the duration of a ``with`` block, and leaves the base weights exactly as they were after it.
The env only sees this protocol, so full fine-tuning or singular-value experts
(Transformer²) can be added without touching the env::

    with operator.adapted(backend, sequences, hyperparameters, seed=..., max_seconds=...) as st:
        ...  # backend.generate(...) now answers with the adapted model
    # base weights restored, stats filled in (loss curve, tokens, seconds, error)

``max_seconds`` is what is left of the env's step budget (``max_step_seconds``); an operator
stops training when it is spent and says so in ``stats.notes``. A training sequence is a
string (loss on all its tokens) or a ``(prompt, target)`` pair (loss on the target only).

An operator that can adapt several copies at once also offers :class:`BatchedUpdateOperator`'s
``adapted_many``: K requests in, K stats out, and inside the block
``backend.generate(prompts, adapters=[k or None per prompt])`` answers each prompt with its
own adapter. The env uses it when it exists (one pass for K templates, issue 11) and falls
back to one ``adapted`` block per request otherwise.

A backend that generates outside ``backend.model`` (vLLM serves its own copy of the weights)
learns of adapters through optional hooks, called only when the backend has them:
``backend.adapters_ready(bank)`` / ``backend.adapters_done()`` around a block of
:class:`LoRAUpdate` (the bank exports each adapter in PEFT's format), and
``backend.adapter_ready(peft_model)`` / ``backend.adapter_done()`` around a block of
:class:`PeftLoRAUpdate`.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from selfedit.envs.multilora import (
    AdapterRequest,
    HookedBank,
    LoRABank,
    TrainingSequence,
    cut_note,
    model_context,
    train_adapters,
)
from selfedit.envs.templates import Hyperparameters

__all__ = ["AdapterRequest", "BankUpdate", "BatchedUpdateOperator", "LoRAUpdate", "LossCurve",
           "OperatorBudgets", "PeftLoRAUpdate", "TrainingSequence", "UpdateOperator",
           "UpdateStats"]

DEFAULT_TARGET_MODULES = (
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
)


class LossCurve:
    """First and last loss of a record with a ``losses`` list (one per optimizer step)."""

    losses: list[float]

    @property
    def loss_first(self) -> float | None:
        return self.losses[0] if self.losses else None

    @property
    def loss_last(self) -> float | None:
        return self.losses[-1] if self.losses else None


@dataclass
class UpdateStats(LossCurve):
    """What one update did; filled in while the ``with`` block is entered."""

    optimizer_steps: int = 0
    train_tokens: int = 0  # real (unpadded) tokens seen, summed over epochs
    sequences: int = 0
    losses: list[float] = field(default_factory=list)  # one per optimizer step
    seconds: float = 0.0
    error: str | None = None  # the update failed (non-finite loss): do not trust the model
    notes: list[str] = field(default_factory=list)  # budgets applied; the update still counts

    def to_dict(self) -> dict[str, Any]:
        return {
            "optimizer_steps": self.optimizer_steps,
            "train_tokens": self.train_tokens,
            "sequences": self.sequences,
            "loss_first": self.loss_first,
            "loss_last": self.loss_last,
            "error": self.error,
            "notes": list(self.notes),
        }


class UpdateOperator(Protocol):
    """Adapts ``backend.model`` for the duration of a ``with`` block.

    On leaving the block, whether it ended normally or by an exception, the base weights
    must be bit-identical to before (the env checks it with ``weights_checksum``). A
    failure the caller should know about (a non-finite loss) goes into ``stats.error``.
    An operator that builds an adapter calls the backend's optional hooks (module
    docstring).
    """

    name: str

    def adapted(
        self,
        backend: Any,
        sequences: Sequence[TrainingSequence],
        hyperparameters: Hyperparameters,
        *,
        seed: int,
        max_seconds: float | None = None,
    ) -> contextlib.AbstractContextManager[UpdateStats]: ...


class BatchedUpdateOperator(UpdateOperator, Protocol):
    """An operator that adapts K copies at once (one pass through the frozen base).

    ``requests[k]`` carries sequences, hyperparameters, seed and an absolute deadline
    (``time.perf_counter()`` value). Inside the block, ``backend.generate(prompts,
    adapters=[...])`` routes prompt i through adapter ``adapters[i]`` (None: the base).
    Each request's failure is its own: ``stats[k].error``, the others unaffected.
    """

    def adapted_many(
        self, backend: Any, requests: Sequence[AdapterRequest]
    ) -> contextlib.AbstractContextManager[list[UpdateStats]]: ...


def _call_hook(backend: Any, name: str, *args: Any) -> None:
    """Call the backend's optional adapter hook ``name`` if it has one (HFBackend has none)."""
    hook = getattr(backend, name, None)
    if hook is not None:
        hook(*args)


class OperatorBudgets:
    """The budgets every training operator here takes (and the modules it adapts).

    Args:
        target_modules: module names (last component) whose weights the update adapts.
        micro_batch_size: sequences per micro-batch of one update;
            ``gradient_accumulation_steps`` from the template multiplies it.
        max_seq_tokens: sequences are cut to this many tokens, and never beyond the model's
            context (``config.max_position_embeddings``); ``stats.notes`` counts the cuts.
        max_train_tokens: budget of real tokens per update (sequences x epochs); the epochs
            that would exceed it are not run, and ``stats.notes`` says so.
        max_seconds: wall-clock budget per update; training stops when it is spent.
    """

    def __init__(
        self,
        *,
        target_modules: Sequence[str] = DEFAULT_TARGET_MODULES,
        micro_batch_size: int = 4,
        max_seq_tokens: int = 512,
        max_train_tokens: int = 200_000,
        max_seconds: float = 600.0,
    ) -> None:
        self.target_modules = list(target_modules)
        self.micro_batch_size = micro_batch_size
        self.max_seq_tokens = max_seq_tokens
        self.max_train_tokens = max_train_tokens
        self.max_seconds = max_seconds


class BankUpdate(OperatorBudgets):
    """An operator whose updates live in a :class:`~selfedit.envs.multilora.HookedBank`.

    K updates train together through the frozen base (:func:`~selfedit.envs.multilora.
    train_adapters`, one forward/backward per round of micro-batches) and answer in one
    batch; :meth:`adapted` is the one-update case. A subclass says how its bank is built
    (:meth:`make_bank`); budgets, freezing, deadlines, the backend's hooks and the restore
    on leaving the block are the same for all (:class:`LoRAUpdate`, :class:`~selfedit.envs.
    operators.SingularValueUpdate`).

    Args:
        max_batch_tokens: padded tokens per joint forward pass; a round of K updates'
            micro-batches larger than this runs as several passes (memory bound).
        others: as :class:`OperatorBudgets`.
    """

    name = "bank"

    def __init__(self, *, max_batch_tokens: int = 8192, **budgets: Any) -> None:
        super().__init__(**budgets)
        self.max_batch_tokens = max_batch_tokens
        self.bank: HookedBank | None = None  # the updates of the open block, if any

    def make_bank(self, backend: Any, requests: Sequence[AdapterRequest]) -> HookedBank:
        """A fresh bank on ``backend.model`` with one (identity) update per request."""
        raise NotImplementedError

    @contextlib.contextmanager
    def adapted(
        self,
        backend: Any,
        sequences: Sequence[TrainingSequence],
        hyperparameters: Hyperparameters,
        *,
        seed: int,
        max_seconds: float | None = None,
    ) -> Iterator[UpdateStats]:
        """One update: inside the block, ``backend.generate`` answers with it."""
        request = AdapterRequest(sequences, hyperparameters, seed,
                                 None if max_seconds is None
                                 else time.perf_counter() + max_seconds)
        with self.adapted_many(backend, [request]) as stats:
            if self.bank is not None:
                self.bank.default = 0
            yield stats[0]

    @contextlib.contextmanager
    def adapted_many(
        self, backend: Any, requests: Sequence[AdapterRequest]
    ) -> Iterator[list[UpdateStats]]:
        """K updates trained together; inside the block ``backend.generate(...,
        adapters=[k or None per prompt])`` routes each prompt through its own.

        A request with ``num_epochs == 0`` or no sequences is not trained (its update stays
        the identity: the base model). ``stats[k].error`` is set for an update whose loss was
        not finite; the others are unaffected.
        """
        stats = [UpdateStats() for _ in requests]
        if not any(r.sequences and r.hyperparameters.num_epochs > 0 for r in requests):
            yield stats
            return
        model = backend.model
        bank = self.make_bank(backend, requests)
        grad_state = {n: p.requires_grad for n, p in model.named_parameters()}
        for p in model.parameters():
            p.requires_grad_(False)  # the base is frozen: gradients reach the bank only
        try:
            now = time.perf_counter()
            budgeted = []
            for r in requests:
                deadline = now + self.max_seconds
                if r.deadline is not None:
                    deadline = min(deadline, r.deadline)
                sequences = r.sequences if r.hyperparameters.num_epochs > 0 else []
                budgeted.append(AdapterRequest(sequences, r.hyperparameters, r.seed, deadline))
            context = model_context(model)
            train_adapters(bank, budgeted, stats, tokenizer=backend.tokenizer,
                           device=backend.device, micro_batch_size=self.micro_batch_size,
                           max_seq_tokens=self.max_seq_tokens,
                           max_train_tokens=self.max_train_tokens,
                           max_batch_tokens=self.max_batch_tokens, context=context)
            self.bank = bank
            _call_hook(backend, "adapters_ready", bank)  # HF: row routing; vLLM: LoRARequests
            yield stats
        finally:
            self.bank = None
            try:
                _call_hook(backend, "adapters_done")
            finally:
                bank.remove()
                for name, param in model.named_parameters():
                    param.requires_grad_(grad_state.get(name, False))
                model.eval()

    def merged_weights(self, k: int = 0) -> dict[str, torch.Tensor]:
        """Inside a block: ``{module name: adapted weight}`` of update ``k`` (continual mode)."""
        if self.bank is None:
            raise RuntimeError("merged_weights() is only available inside an adapted block")
        return self.bank.merged_weights(k)


class LoRAUpdate(BankUpdate):
    """Fresh LoRA adapters trained with next-token prediction: one, or many in one pass.

    The lean loop the design measured (DESIGN.md), on :class:`~selfedit.envs.multilora.
    LoRABank`: adapters attach to the loaded model through forward hooks (the base modules
    are never replaced or written), AdamW on the adapters only, sequences packed into rows
    (no padding to a fixed length), no Trainer built per request. :meth:`adapted` trains one
    adapter (the :class:`UpdateOperator` protocol); :meth:`adapted_many` trains K adapters
    together -- one forward/backward through the frozen base per round of micro-batches --
    and lets the backend answer with all of them in one batch (issue 11). The vLLM backend's
    ``adapters_ready`` hook exports each adapter in PEFT's format (``LoRABank.peft_state``).

    Args: as :class:`BankUpdate` (``target_modules``: the Linear modules that get LoRA
    weights).
    """

    name = "lora"

    def make_bank(self, backend: Any, requests: Sequence[AdapterRequest]) -> LoRABank:
        specs = [(r.hyperparameters.lora_rank, r.hyperparameters.lora_alpha,
                  r.hyperparameters.lora_dropout, r.seed) for r in requests]
        return LoRABank(backend.model, specs, target_modules=self.target_modules)


class PeftLoRAUpdate(OperatorBudgets):
    """One fresh PEFT LoRA adapter per update: the reference for :class:`LoRAUpdate`.

    The previous default operator, kept as an independent implementation: tests check that
    :class:`LoRAUpdate` computes the same function as PEFT's LoRA, and backends that need a
    ``PeftModel`` (the ``adapter_ready`` hook) can still be served.

    Args: as :class:`OperatorBudgets` (a micro-batch here is padded to its longest
    sequence).
    """

    name = "peft-lora"

    def _encode(
        self, tokenizer: Any, sequences: Sequence[str], context: int | None, stats: UpdateStats
    ) -> list[list[int]]:
        eos = tokenizer.eos_token_id
        encoded = tokenizer(list(sequences), add_special_tokens=False)["input_ids"]
        # EOS teaches the sequence boundary; cut to the budget per sequence, and to the
        # model's context: positions past it were never trained (or do not exist).
        limit = min(self.max_seq_tokens, context) if context else self.max_seq_tokens
        out = [(ids + [eos]) for ids in encoded if ids]
        cut = sum(len(ids) > limit for ids in out)
        if cut:
            stats.notes.append(cut_note(cut, len(out), limit, self.max_seq_tokens, context))
        return [ids[:limit] for ids in out]

    def _batches(self, encoded: list[list[int]], generator: torch.Generator) -> list[list[int]]:
        """One epoch of micro-batches: shuffled, then grouped by length.

        Sequences of similar length share a batch so padding stays small (a 220-token
        passage batched with 20-token facts would otherwise waste most of the compute);
        the order of the batches is shuffled again so the epoch is not sorted by length.
        """
        order = torch.randperm(len(encoded), generator=generator).tolist()
        order.sort(key=lambda i: len(encoded[i]))
        size = self.micro_batch_size
        batches = [order[i : i + size] for i in range(0, len(order), size)]
        perm = torch.randperm(len(batches), generator=generator).tolist()
        return [batches[i] for i in perm]

    @contextlib.contextmanager
    def adapted(
        self,
        backend: Any,
        sequences: Sequence[str],
        hyperparameters: Hyperparameters,
        *,
        seed: int,
        max_seconds: float | None = None,
    ) -> Iterator[UpdateStats]:
        from peft import LoraConfig, get_peft_model

        stats = UpdateStats()
        hp = hyperparameters
        if hp.num_epochs == 0 or not sequences:
            yield stats  # no training: the adapted model is the base model
            return
        model = backend.model
        grad_state = {n: p.requires_grad for n, p in model.named_parameters()}
        torch.manual_seed(seed)  # LoRA init (A is random) and dropout
        config = LoraConfig(
            r=hp.lora_rank,
            lora_alpha=hp.lora_alpha,
            lora_dropout=hp.lora_dropout,
            target_modules=self.target_modules,
            bias="none",
            task_type="CAUSAL_LM",
        )
        with warnings.catch_warnings():
            # peft probes a deprecated transformers attribute on every wrap: noise, not news.
            warnings.filterwarnings("ignore", category=FutureWarning)
            peft_model = get_peft_model(model, config)
        try:
            start = time.perf_counter()
            budget = self.max_seconds if max_seconds is None else min(self.max_seconds,
                                                                         max_seconds)
            self._train(peft_model, backend, sequences, hp, seed, stats, budget)
            stats.seconds = time.perf_counter() - start
            _call_hook(backend, "adapter_ready", peft_model)  # e.g. vLLM: save, serve it
            yield stats
        finally:
            try:
                _call_hook(backend, "adapter_done")
            finally:
                restored = peft_model.unload()  # drops the LoRA layers, restores the base
                if restored is not model:
                    raise RuntimeError("LoRA unload returned a different model object")
                for name, param in model.named_parameters():
                    param.requires_grad_(grad_state.get(name, False))
                model.eval()

    def _train(
        self,
        model: Any,
        backend: Any,
        sequences: Sequence[str],
        hp: Hyperparameters,
        seed: int,
        stats: UpdateStats,
        max_seconds: float,
    ) -> None:
        device = backend.device
        context = model_context(backend.model)
        encoded = self._encode(backend.tokenizer, sequences, context, stats)
        stats.sequences = len(encoded)
        tokens_per_epoch = sum(len(ids) for ids in encoded)
        epochs = hp.num_epochs
        if tokens_per_epoch * epochs > self.max_train_tokens:
            epochs = max(1, self.max_train_tokens // max(tokens_per_epoch, 1))
            stats.notes.append(
                f"training budget: {tokens_per_epoch} tokens x {hp.num_epochs} epochs exceeds"
                f" max_train_tokens={self.max_train_tokens}; ran {epochs} epochs"
            )
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=hp.learning_rate, weight_decay=0.0)
        generator = torch.Generator().manual_seed(seed)
        pad = backend.tokenizer.pad_token_id
        accum = hp.gradient_accumulation_steps
        deadline = time.perf_counter() + max_seconds
        model.train()
        micro = 0
        window_loss = 0.0
        for _ in range(epochs):
            for batch_idx in self._batches(encoded, generator):
                batch = [encoded[i] for i in batch_idx]
                width = max(len(ids) for ids in batch)  # dynamic padding
                input_ids = torch.full((len(batch), width), pad, dtype=torch.long)  # (B, T)
                labels = torch.full((len(batch), width), -100, dtype=torch.long)  # (B, T)
                mask = torch.zeros((len(batch), width), dtype=torch.long)  # (B, T)
                for row, ids in enumerate(batch):
                    input_ids[row, : len(ids)] = torch.tensor(ids)
                    labels[row, : len(ids)] = torch.tensor(ids)
                    mask[row, : len(ids)] = 1
                out = model(
                    input_ids=input_ids.to(device),
                    attention_mask=mask.to(device),
                    labels=labels.to(device),
                    use_cache=False,
                )
                loss = out.loss
                if not torch.isfinite(loss):
                    stats.error = f"training loss became {loss.item()}; update stopped"
                    optimizer.zero_grad(set_to_none=True)
                    return
                (loss / accum).backward()
                window_loss += loss.item() / accum
                stats.train_tokens += int(mask.sum())
                micro += 1
                if micro % accum == 0:
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    stats.optimizer_steps += 1
                    stats.losses.append(window_loss)
                    window_loss = 0.0
                if time.perf_counter() > deadline:
                    stats.notes.append(
                        f"time budget: training stopped after {max_seconds:.3g} s"
                        f" ({stats.optimizer_steps} optimizer steps)"
                    )
                    break
            else:
                continue
            break
        if micro % accum:  # flush a partial accumulation window at the end
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            stats.optimizer_steps += 1
            stats.losses.append(window_loss * accum / (micro % accum))
        if any(not math.isfinite(x) for x in stats.losses):
            stats.error = "training loss was not finite"
