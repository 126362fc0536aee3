"""Many LoRA adapters on one frozen model: trained in one pass, answering in one batch.

A step of the vector env evaluates K templates x passages x completions; each needs its own
LoRA adapter (issue 11). Training them one after another runs the frozen base K times over
small batches. Here they share it, as mLoRA does (DESIGN.md, "Many adapters in one pass"):

- every adapter's current micro-batch is packed into one batch; the frozen base runs once
  over it (one GEMM per weight over the concatenated rows), and each adapter's low-rank
  ``B @ A`` is applied to its own tokens only;
- each adapter keeps its own loss normalisation (the mean over *its* micro-batch tokens),
  optimizer state, learning rate, epochs, rank, alpha, dropout and accumulation; an adapter
  that has finished its epochs (or spent its time) leaves the batch;
- for generation, each row of a batch is routed through its own adapter (or none), so all
  adapted models answer in one batched ``generate``.

Adapters attach through forward hooks on the target ``nn.Linear`` modules; the base modules
and their weights are never modified, so removing the hooks restores the base exactly.

Equivalence with training one adapter at a time (tested): every random draw an adapter
makes -- its ``A`` initialisation, its data order, its dropout masks -- comes from its own
generators, seeded by its own seed, and its tokens are always visited in the same order, so
adapter k's computation does not depend on which other adapters share the batch. Only the
floating-point rounding of the shared base GEMM over more rows differs.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional name

from selfedit.envs.templates import Hyperparameters

__all__ = [
    "AdapterRequest",
    "HookedBank",
    "LoRABank",
    "PackedBatch",
    "TrainingSequence",
    "cut_note",
    "encode_sequences",
    "linear_targets",
    "model_context",
    "pack",
    "packing_isolates",
    "train_adapters",
]

# An item of training data: text (loss on every token), or (prompt, target) with the loss on
# the target's tokens only (the prompt is context; ARC's "outputs only" recipes).
TrainingSequence = str | tuple[str, str]

_DROPOUT_SALT = 0x5EA1  # a dropout stream distinct from the init/data streams of one seed


def _generator(seed: int, device: torch.device | None = None) -> torch.Generator:
    gen = torch.Generator(device=device or "cpu")
    gen.manual_seed(int(seed) % (2**63))
    return gen


def model_context(model: torch.nn.Module) -> int | None:
    """The model's context length (``config.max_position_embeddings``), or None."""
    return getattr(getattr(model, "config", None), "max_position_embeddings", None)


def cut_note(cut: int, kept: int, limit: int, max_seq_tokens: int, context: int | None) -> str:
    """The ``stats.notes`` line for ``cut`` of ``kept`` sequences cut to ``limit`` tokens."""
    why = f"max_seq_tokens={max_seq_tokens}"
    if context and context < max_seq_tokens:
        why = f"the model's context of {context} tokens (max_seq_tokens is larger)"
    return f"{cut} of {kept} sequences cut to {limit} tokens: {why}"


def linear_targets(model: torch.nn.Module, names: Sequence[str],
                   setting: str) -> list[tuple[str, torch.nn.Linear]]:
    """The model's ``nn.Linear`` modules whose last name component is one of ``names``;
    none is a ValueError that names the env ``setting`` to change."""
    wanted = set(names)
    found = [(n, m) for n, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in wanted]
    if not found:
        raise ValueError(f"no nn.Linear module named any of {sorted(wanted)} in the model;"
                         f" set {setting} to names the model has")
    return found


@dataclass(frozen=True)
class Route:
    """Which rows (generation) or tokens (packed training) each adapter owns right now."""

    flat: bool  # True: indices into the (B*T) tokens; False: indices into the B rows
    groups: tuple[tuple[int, torch.Tensor], ...]  # (adapter, indices), indices in its order
    index: torch.Tensor | None  # all groups' indices concatenated (one index_add)
    single: int | None = None  # every position belongs to this adapter: no gather needed
    # (adapter, start, end) when each adapter's rows are one contiguous block (generation
    # sorts its rows by adapter): slices instead of a gather and a scatter
    spans: tuple[tuple[int, int, int], ...] | None = None


@dataclass(frozen=True)
class _SpanRun:
    """Consecutive blocks (adapter, start, end) of adapters of one rank in a packed batch."""

    spans: tuple[tuple[int, int, int], ...]
    start: int
    end: int
    offs: torch.Tensor  # int32 ends of each block, relative to start
    scale: float | torch.Tensor  # one scaling, or (end - start, 1) when they differ


# torch's grouped GEMM (MoE kernels): on the CPU it takes float32 and has a backward.
_HAS_GROUPED_MM = hasattr(F, "grouped_mm")


class HookedBank:
    """K adapters on target ``nn.Linear`` modules via forward hooks, routed per row or token.

    What :class:`LoRABank` and :class:`~selfedit.envs.operators.SingularValueBank` share:
    the joint training loop (:func:`train_adapters`) and the backend's row routing only use
    this interface. A subclass sets ``self.modules`` and its adapters' tensors, implements
    ``__len__``, ``parameters(k)``, ``_hook(m)`` (the forward hook of module m, which reads
    :meth:`_active_route`) and ``merged_weights(k)``, then calls :meth:`_attach`.
    """

    modules: list[tuple[str, torch.nn.Linear]]

    def __len__(self) -> int:
        raise NotImplementedError

    def parameters(self, k: int) -> list[torch.nn.Parameter]:
        raise NotImplementedError

    def merged_weights(self, k: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _hook(self, m: int) -> Any:
        raise NotImplementedError

    def layout_key(self, k: int) -> int:
        """Adapters with equal keys are packed side by side in a joint training pass."""
        return 0

    def _attach(self) -> None:
        self.training = False  # dropout (where an adapter has any) only while training
        self.default: int | None = None  # adapter of positions no route names (None: base)
        self._route: Route | None = None
        self._route_memo: tuple[Route, Any, Any] | None = None  # see _per_route
        self._handles = [module.register_forward_hook(self._hook(m))
                         for m, (_, module) in enumerate(self.modules)]

    def remove(self) -> None:
        """Detach every hook: the model computes exactly as before the bank existed."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._route = None

    def _per_route(self, route: Route, key: Any, build: Any) -> Any:
        """``build()``, computed once for ``route`` and ``key`` and reused by every module's
        hook in the passes that follow (the route itself is held, so a later route can
        never be mistaken for it)."""
        memo = self._route_memo
        if memo is not None and memo[0] is route and memo[1] == key:
            return memo[2]
        value = build()
        self._route_memo = (route, key, value)
        return value

    def _active_route(self) -> Route | None:
        """The route of the current pass: the open ``rows``/``tokens`` block, else
        ``default`` everywhere, else None (the base computes alone)."""
        if self._route is not None:
            return self._route
        if self.default is None:
            return None
        return Route(False, (), None, single=self.default)

    # -- routing ------------------------------------------------------------------------
    @contextlib.contextmanager
    def rows(self, adapters: Sequence[int | None]) -> Iterator[None]:
        """Route row ``i`` of every forward pass in the block through ``adapters[i]``."""
        previous = self._route
        self._route = self._make_route(adapters, flat=False)
        try:
            yield
        finally:
            self._route = previous

    @contextlib.contextmanager
    def tokens(self, groups: Sequence[tuple[int, torch.Tensor]],
               spans: Sequence[tuple[int, int, int]] | None = None) -> Iterator[None]:
        """Route flattened (B*T) token positions: ``groups`` = (adapter, positions);
        ``spans`` = (adapter, start, end) blocks that tile all positions, when the packing
        laid the adapters out one after another (:func:`pack`)."""
        previous = self._route
        device = self.modules[0][1].weight.device
        groups = tuple((k, idx.to(device)) for k, idx in groups if len(idx))
        index = torch.cat([idx for _, idx in groups]) if groups else None
        self._route = Route(True, groups, index, spans=tuple(spans) if spans else None)
        try:
            yield
        finally:
            self._route = previous

    def _make_route(self, adapters: Sequence[int | None], *, flat: bool) -> Route:
        ids = [-1 if a is None else int(a) for a in adapters]
        for a in ids:
            if a >= len(self):
                raise IndexError(f"adapter {a} does not exist (the bank has {len(self)})")
        if ids and all(a == ids[0] for a in ids) and ids[0] >= 0:
            return Route(flat, (), None, single=ids[0])
        device = self.modules[0][1].weight.device
        groups = []
        spans: list[tuple[int, int, int]] | None = []
        for k in sorted({a for a in ids if a >= 0}):
            rows = [i for i, a in enumerate(ids) if a == k]
            groups.append((k, torch.tensor(rows, dtype=torch.long, device=device)))
            if spans is not None and rows[-1] - rows[0] + 1 == len(rows):
                spans.append((k, rows[0], rows[-1] + 1))
            else:
                spans = None
        index = torch.cat([idx for _, idx in groups]) if groups else None
        return Route(flat, tuple(groups), index, spans=tuple(spans) if spans else None)


class LoRABank(HookedBank):
    """K LoRA adapters on the target ``nn.Linear`` modules of a model, via forward hooks.

    ``W x`` becomes ``W x + (alpha / r) * B A dropout(x)`` on the positions routed to an
    adapter (PEFT's LoRA, same initialisation: ``A`` uniform in +-1/sqrt(in_features), ``B``
    zero). Adapter weights are float32 whatever the base dtype (as PEFT keeps them), so a
    bf16 base trains float32 adapters.

    Args:
        model: the frozen base model (its parameters are never written).
        specs: one ``(rank, alpha, dropout, seed)`` per adapter.
        target_modules: names (last component) of the Linear modules that get adapters.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        specs: Sequence[tuple[int, float, float, int]],
        *,
        target_modules: Sequence[str],
    ) -> None:
        self.modules = linear_targets(model, target_modules, "env.target_modules")
        self.model = model
        self.target_modules = sorted(set(target_modules))
        device = self.modules[0][1].weight.device
        self.ranks = [int(s[0]) for s in specs]
        self.scalings = [float(s[1]) / int(s[0]) for s in specs]
        self.dropouts = [float(s[2]) for s in specs]
        self.alphas = [float(s[1]) for s in specs]
        self._dropout_gens = [_generator(int(s[3]) ^ _DROPOUT_SALT, device) for s in specs]
        # weights[k][m] = (A (r, in), B (out, r)) for adapter k on module m.
        self.weights: list[list[tuple[torch.nn.Parameter, torch.nn.Parameter]]] = []
        for rank, _, _, seed in specs:
            gen = _generator(int(seed), device)
            pairs = []
            for _, module in self.modules:
                bound = 1.0 / math.sqrt(module.in_features)
                a = torch.empty(rank, module.in_features, device=device, dtype=torch.float32)
                a.uniform_(-bound, bound, generator=gen)
                b = torch.zeros(module.out_features, rank, device=device, dtype=torch.float32)
                pairs.append((torch.nn.Parameter(a), torch.nn.Parameter(b)))
            self.weights.append(pairs)
        self._attach()

    def __len__(self) -> int:
        return len(self.weights)

    def layout_key(self, k: int) -> int:
        return self.ranks[k]  # one grouped matmul pair serves a run of one rank

    def parameters(self, k: int) -> list[torch.nn.Parameter]:
        """Adapter ``k``'s trainable tensors (A and B of every target module)."""
        return [p for pair in self.weights[k] for p in pair]

    # -- the forward hook ---------------------------------------------------------------
    def _delta(self, k: int, m: int, x: torch.Tensor) -> torch.Tensor:
        a, b = self.weights[k][m]
        h = x.to(a.dtype)
        p = self.dropouts[k]
        if self.training and p > 0:
            keep = torch.empty_like(h).bernoulli_(1.0 - p, generator=self._dropout_gens[k])
            h = h * keep / (1.0 - p)
        # The scaling multiplies the rank-r activations, not the (..., out) delta: the same
        # product with out/r times fewer multiplications (and in the backward pass too).
        return F.linear(F.linear(h, a) * self.scalings[k], b)  # (..., r) -> (..., out)

    def _hook(self, m: int) -> Any:
        def hook(module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> Any:
            route = self._active_route()
            if route is None:
                return None
            x = args[0]
            if route.single is not None:  # one adapter everywhere: no gather, no scatter
                return output + self._delta(route.single, m, x).to(output.dtype)
            if route.index is None:
                return None
            if (not route.flat and route.spans is not None and not torch.is_grad_enabled()
                    and not self.training):
                # Generation: each adapter's rows are one block; add its delta in place.
                for k, start, end in route.spans:
                    output[start:end] += self._delta(k, m, x[start:end]).to(output.dtype)
                return output
            if route.flat and route.spans is not None and not (self.training and any(
                    self.dropouts[k] > 0 for k, _, _ in route.spans)):
                # Training on a packing whose adapters each own one block: slices.
                xs = x.reshape(-1, x.shape[-1])
                parts = [self._run_delta(run, m, xs) for run in self._span_runs(route)]
                delta = parts[0] if len(parts) == 1 else torch.cat(parts)
                return output + delta.view_as(output).to(output.dtype)
            # Anything else (dropout masks to draw per adapter, rows not sorted by adapter,
            # gradients through generation): gather each adapter's positions, add back.
            if route.flat:
                xs, out = x.reshape(-1, x.shape[-1]), output.reshape(-1, output.shape[-1])
            else:
                xs, out = x, output
            deltas = [self._delta(k, m, xs.index_select(0, idx)) for k, idx in route.groups]
            merged = out.index_add(0, route.index, torch.cat(deltas).to(out.dtype))
            return merged.view_as(output)

        return hook

    # -- several adapters in one grouped matmul pair --------------------------------------
    def _kernel_fits(self, m: int, ranks: Sequence[int], device: torch.device) -> bool:
        """Whether torch's ``grouped_mm`` can serve module m for adapters of ``ranks``.

        On the CPU, where it takes float32 (on CUDA it wants bf16 and a recent GPU), with
        every matrix row a multiple of 16 bytes (the kernel's alignment: ranks and widths
        that are multiples of 4). Only while gradients are recorded: in training the
        grouped pair saves K-1 autograd chains per module (joint training of 8 adapters
        1.26x faster on the embedded model); in generation, where each decode step
        re-stacks the adapters' weights for a handful of rows, the per-adapter path
        measured ~10% faster.
        """
        module = self.modules[m][1]
        return (_HAS_GROUPED_MM and device.type == "cpu" and torch.is_grad_enabled()
                and not (module.in_features % 4 or module.out_features % 4
                         or any(r % 4 for r in ranks)))

    def _slices(self, adapters: Sequence[int], lengths: Sequence[int],
                device: torch.device) -> tuple[torch.Tensor, float | torch.Tensor]:
        """``grouped_mm``'s slice ends (int32) for ``adapters`` holding ``lengths`` rows of
        the 2-D operand each, and their scaling: one float, or a (rows, 1) column when the
        adapters' scalings differ."""
        offs = torch.tensor(lengths, dtype=torch.long).cumsum(0).to(dtype=torch.int32,
                                                                     device=device)
        scalings = [self.scalings[k] for k in adapters]
        if all(c == scalings[0] for c in scalings):
            return offs, scalings[0]
        return offs, torch.cat([torch.full((int(n), 1), c) for n, c in
                                zip(lengths, scalings, strict=True)]).to(device)

    def _span_runs(self, route: Route) -> list[_SpanRun]:
        """The route's blocks, consecutive blocks of one rank merged into one run (built
        once per route)."""
        def build() -> list[_SpanRun]:
            assert route.spans is not None
            runs: list[list[tuple[int, int, int]]] = []
            for span in route.spans:
                if runs and self.ranks[runs[-1][-1][0]] == self.ranks[span[0]]:
                    runs[-1].append(span)
                else:
                    runs.append([span])
            out = []
            device = self.modules[0][1].weight.device
            for run in runs:
                offs, scale = self._slices([k for k, _, _ in run],
                                           [end - begin for _, begin, end in run], device)
                out.append(_SpanRun(tuple(run), run[0][1], run[-1][2], offs, scale))
            return out

        return self._per_route(route, "spans", build)

    def _run_delta(self, run: _SpanRun, m: int, xs: torch.Tensor) -> torch.Tensor:
        """The deltas of a run's blocks of ``xs`` (2-D), in order: one grouped matmul pair
        where the kernel takes them (:meth:`_kernel_fits`), else adapter by adapter."""
        if len(run.spans) > 1 and self._kernel_fits(m, [self.ranks[run.spans[0][0]]],
                                                    xs.device):
            adapters = tuple(k for k, _, _ in run.spans)
            return self._grouped_pair(adapters, m, xs[run.start:run.end], run.offs, run.scale)
        parts = [self._delta(k, m, xs[begin:end]) for k, begin, end in run.spans]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _grouped_pair(self, adapters: tuple[int, ...], m: int, x: torch.Tensor,
                      offs: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
        """``scale * B_k A_k x`` on slice k of the 2-D ``x`` (``offs``: slice ends)."""
        a = torch.stack([self.weights[k][m][0] for k in adapters])  # (G, r, in)
        b = torch.stack([self.weights[k][m][1] for k in adapters])  # (G, out, r)
        h = F.grouped_mm(x.to(a.dtype), a.transpose(1, 2), offs=offs) * scale  # (n, r)
        return F.grouped_mm(h, b.transpose(1, 2), offs=offs)  # (n, out)

    # -- export -------------------------------------------------------------------------
    @torch.no_grad()
    def merged_weights(self, k: int) -> dict[str, torch.Tensor]:
        """``{module name: W + scaling * B A}`` for adapter ``k`` (summed in float32, cast to
        the base dtype): what continual mode writes into the model to keep an adapter."""
        out = {}
        for (name, module), (a, b) in zip(self.modules, self.weights[k], strict=True):
            total = module.weight.detach().float() + (b @ a) * self.scalings[k]
            out[name] = total.to(module.weight.dtype)
        return out

    @torch.no_grad()
    def peft_state(self, k: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Adapter ``k`` as PEFT saves a LoRA: (tensors, adapter_config.json contents).

        Loadable by ``PeftModel.from_pretrained`` and by vLLM's ``LoRARequest`` (tested
        against PEFT on a CPU).
        """
        tensors = {}
        for (name, _), (a, b) in zip(self.modules, self.weights[k], strict=True):
            prefix = f"base_model.model.{name}"
            tensors[f"{prefix}.lora_A.weight"] = a.detach().cpu().contiguous()
            tensors[f"{prefix}.lora_B.weight"] = b.detach().cpu().contiguous()
        config = {
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": self.ranks[k],
            "lora_alpha": self.alphas[k],
            "lora_dropout": self.dropouts[k],
            "target_modules": self.target_modules,
            "bias": "none",
            "fan_in_fan_out": False,
            "base_model_name_or_path": getattr(getattr(self.model, "config", None),
                                               "_name_or_path", "") or None,
            "inference_mode": True,
        }
        return tensors, config


# ----------------------------------------------------------------------------------------
# Training data: encoding and packing
# ----------------------------------------------------------------------------------------


@dataclass
class _Encoded:
    ids: list[int]
    loss: list[bool]  # per token: does predicting this token count in the loss?


def encode_sequences(
    tokenizer: Any, sequences: Sequence[TrainingSequence], limit: int
) -> tuple[list[_Encoded], int]:
    """Token ids (+ EOS) and loss masks of ``sequences``, each cut to ``limit`` tokens.

    Returns the encoded sequences (empty ones dropped) and how many were cut. A
    ``(prompt, target)`` pair is encoded as prompt + target with the loss on the target
    (and its EOS) only.
    """
    eos = tokenizer.eos_token_id
    out: list[_Encoded] = []
    for item in sequences:
        if isinstance(item, tuple):
            prompt, target = item
            head = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
            tail = tokenizer(target, add_special_tokens=False)["input_ids"] + [eos]
            out.append(_Encoded(head + tail, [False] * len(head) + [True] * len(tail)))
        else:
            ids = tokenizer(item, add_special_tokens=False)["input_ids"]
            if ids:
                out.append(_Encoded(ids + [eos], [True] * (len(ids) + 1)))
    cut = sum(len(e.ids) > limit for e in out)
    for e in out:
        del e.ids[limit:], e.loss[limit:]
    # A sequence with nothing to predict (a prompt cut before its target) teaches nothing.
    return [e for e in out if any(e.loss[1:])], cut


@dataclass
class PackedBatch:
    """Sequences of several adapters packed into rows (one forward pass).

    Each row holds whole sequences back to back; ``position_ids`` restart at 0 for each,
    which makes transformers build a block-diagonal causal mask (no token sees another
    sequence). ``labels[r, t]`` is the token to predict at position t (-100: none).
    """

    input_ids: torch.Tensor  # (R, W)
    position_ids: torch.Tensor  # (R, W)
    labels: torch.Tensor  # (R, W), already shifted
    groups: list[tuple[int, torch.Tensor]]  # (adapter, flat positions in canonical order)
    label_counts: dict[int, int]  # adapter -> tokens in its loss
    real_tokens: dict[int, int]  # adapter -> real (unpadded) tokens
    # (adapter, start, end): the flat positions each adapter's block covers, padding
    # included; the blocks follow one another and tile all R*W positions
    spans: list[tuple[int, int, int]] = field(default_factory=list)


def pack(batches: Sequence[tuple[int, Sequence[_Encoded]]], pad_id: int, *,
         one_per_row: bool = False) -> PackedBatch:
    """Pack each adapter's micro-batch into rows (at least as wide as the longest sequence).

    The adapters come one after another in the flat (row-major) order, so each owns one
    block of positions (``spans``) and a LoRA hook slices its inputs instead of gathering
    and scattering them. Within an adapter, first-fit decreasing: its sequences are placed
    longest first into the first row with room, starting at the row the previous adapter
    ended in; padding is only at row ends (``one_per_row``: one sequence per padded row,
    for models that cannot mask packed sequences). Each adapter's token positions are also
    listed sequence by sequence in its micro-batch order (``groups``), whatever row they
    land in, so its dropout masks and loss do not depend on the packing.
    """
    items = [(k, j, e) for k, seqs in batches for j, e in enumerate(seqs)]
    longest = max(len(e.ids) for _, _, e in items)
    if one_per_row:
        width = longest
        rows = [[i] for i in range(len(items))]
    else:
        # Rows wider than the longest sequence leave less padding where the adapters'
        # blocks meet; attention grows with the width (per token, about width / 3000 of
        # a layer's matmul work for this family of models): take the cheapest.
        def cost(option: tuple[int, list[list[int]]]) -> float:
            w, r = option
            return len(r) * w * (1 + w / 3000)

        width, rows = min(((w, _fill_rows(batches, items, w)) for w in sorted(
            {longest, *(min(longest * f, max(longest, 512)) for f in (2, 3, 4))})), key=cost)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    start: dict[int, int] = {}  # item -> flat position of its first token
    for r, members in enumerate(rows):
        col = 0
        for i in members:
            e = items[i][2]
            n = len(e.ids)
            input_ids[r, col : col + n] = torch.tensor(e.ids)
            position_ids[r, col : col + n] = torch.arange(n)
            target = torch.tensor(e.ids[1:])
            mask = torch.tensor(e.loss[1:])
            labels[r, col : col + n - 1] = torch.where(mask, target, torch.full_like(target, -100))
            start[i] = r * width + col
            col += n
        # Padding continues the last sequence's positions (held below the longest
        # sequence's, which the model's context admits): causal attention means no real
        # token sees it, and it carries no label.
        position_ids[r, col:] = torch.arange(position_ids[r, col - 1] + 1,
                                             position_ids[r, col - 1] + 1 + width - col
                                             ).clamp(max=longest - 1)
    groups = []
    counts: dict[int, int] = {}
    real: dict[int, int] = {}
    firsts: list[tuple[int, int]] = []
    for k, seqs in batches:
        mine = [i for i, (owner, _, _) in enumerate(items) if owner == k]
        if not mine:
            continue
        positions = [torch.arange(start[i], start[i] + len(items[i][2].ids)) for i in mine]
        groups.append((k, torch.cat(positions)))
        counts[k] = sum(sum(e.loss[1:]) for e in seqs)
        real[k] = sum(len(e.ids) for e in seqs)
        firsts.append((k, min(start[i] for i in mine)))
    ends = [first for _, first in firsts[1:]] + [len(rows) * width]
    spans = [(k, first, end) for (k, first), end in zip(firsts, ends, strict=True)]
    return PackedBatch(input_ids, position_ids, labels, groups, counts, real, spans)


def _fill_rows(batches: Sequence[tuple[int, Sequence[_Encoded]]],
               items: list[tuple[int, int, _Encoded]], width: int) -> list[list[int]]:
    """Rows of item indices: adapter after adapter, each adapter's sequences first-fit
    decreasing into the rows from the one the previous adapter ended in."""
    rows: list[list[int]] = []
    room: list[int] = []
    for k, _ in batches:
        first = max(len(rows) - 1, 0)
        mine = [i for i, (owner, _, _) in enumerate(items) if owner == k]
        for i in sorted(mine, key=lambda i: -len(items[i][2].ids)):
            n = len(items[i][2].ids)
            for r in range(first, len(rows)):
                if room[r] >= n:
                    rows[r].append(i)
                    room[r] -= n
                    break
            else:
                rows.append([i])
                room.append(width - n)
    return rows


_PACKING_OK: dict[tuple[int, str | None], bool] = {}


@torch.no_grad()
def packing_isolates(model: torch.nn.Module, device: torch.device) -> bool:
    """Whether ``model`` keeps packed sequences apart (checked once per model object and
    attention kernel).

    transformers builds a block-diagonal mask from ``position_ids`` that restart at 0, for
    the architectures whose masks go through its masking utilities. A model that ignores
    them would let a sequence attend to the one packed before it; then the logits of the
    second sequence would depend on the first. Two packings that differ only in the first
    sequence tell: equal logits for the second mean the sequences are isolated.
    """
    key = (id(model), getattr(getattr(model, "config", None), "_attn_implementation", None))
    if key not in _PACKING_OK:
        second = [5, 6, 7, 8]
        rows = []
        for first in ([1, 2, 3], [9, 10, 11]):
            rows.append(first + second)
        ids = torch.tensor(rows, device=device)
        positions = torch.tensor([[0, 1, 2, 0, 1, 2, 3]] * 2, device=device)
        was = model.training
        model.eval()
        logits = model(input_ids=ids, position_ids=positions, use_cache=False).logits.float()
        model.train(was)
        tail = logits[:, 3:]
        _PACKING_OK[key] = bool(torch.allclose(tail[0], tail[1], rtol=1e-3, atol=1e-3))
    return _PACKING_OK[key]


# ----------------------------------------------------------------------------------------
# Joint training
# ----------------------------------------------------------------------------------------


@dataclass
class AdapterRequest:
    """One adapter to train: its data, hyperparameters, seed and wall-clock deadline."""

    sequences: Sequence[TrainingSequence]
    hyperparameters: Hyperparameters
    seed: int
    deadline: float | None = None  # time.perf_counter() value; None = no deadline


@dataclass
class _AdapterRun:
    """Training state of one adapter inside the joint loop."""

    k: int
    request: AdapterRequest
    stats: Any  # UpdateStats
    encoded: list[_Encoded]
    epochs: int
    optimizer: torch.optim.Optimizer | None = None
    generator: torch.Generator | None = None
    plan: list[list[int]] = field(default_factory=list)  # remaining micro-batches, this epoch
    epoch: int = 0
    micro: int = 0
    window_loss: float = 0.0
    active: bool = True
    started: float = 0.0


def _epoch_plan(lengths: list[int], size: int, generator: torch.Generator) -> list[list[int]]:
    """One epoch of micro-batches: shuffled, grouped by length, batches shuffled again.

    Sequences of similar length share a micro-batch so that one adapter's batch is not a
    220-token passage next to 20-token facts (the same plan as the sequential loop).
    """
    order = torch.randperm(len(lengths), generator=generator).tolist()
    order.sort(key=lambda i: lengths[i])
    batches = [order[i : i + size] for i in range(0, len(order), size)]
    perm = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in perm]


def _forward_losses(
    model: torch.nn.Module, batch: PackedBatch, device: torch.device
) -> dict[int, torch.Tensor]:
    """Mean next-token loss of each adapter over its own tokens of the packed batch.

    Logits are computed only at positions that carry a label (the LM head over a 49k
    vocabulary is a large share of a small model's compute).
    """
    decoder = head = None
    config = getattr(model, "config", None)
    # The LM head alone gives the logits only where the model applies nothing after it
    # (Gemma 2 soft-caps logits, Cohere scales them): those take the full forward.
    plain = not any(getattr(config, key, None) for key in ("final_logit_softcapping",
                                                              "logit_scale"))
    if plain and hasattr(model, "get_decoder") and hasattr(model, "get_output_embeddings"):
        decoder, head = model.get_decoder(), model.get_output_embeddings()
    labels = batch.labels.to(device).reshape(-1)  # (R*W,)
    has_label = labels != -100
    owner = torch.full_like(labels, -1)
    for k, idx in batch.groups:
        owner[idx.to(device)] = k
    if decoder is not None and head is not None:
        hidden = decoder(input_ids=batch.input_ids.to(device),
                         position_ids=batch.position_ids.to(device),
                         use_cache=False).last_hidden_state  # (R, W, H)
        hidden = hidden.reshape(-1, hidden.shape[-1])[has_label]  # (N, H)
        logits = head(hidden)  # (N, V)
    else:
        logits = model(input_ids=batch.input_ids.to(device),
                       position_ids=batch.position_ids.to(device),
                       use_cache=False).logits
        logits = logits.reshape(-1, logits.shape[-1])[has_label]
    per_token = F.cross_entropy(logits.float(), labels[has_label], reduction="none")  # (N,)
    owners = owner[has_label]
    return {k: per_token[owners == k].sum() / batch.label_counts[k]
            for k, _ in batch.groups if batch.label_counts[k]}


def train_adapters(
    bank: HookedBank,
    requests: Sequence[AdapterRequest],
    stats: Sequence[Any],
    *,
    tokenizer: Any,
    device: torch.device,
    micro_batch_size: int,
    max_seq_tokens: int,
    max_train_tokens: int,
    max_batch_tokens: int = 8192,
    context: int | None = None,
) -> None:
    """Train every adapter of ``bank`` on its request, sharing each forward/backward pass.

    Rounds: each active adapter contributes its next micro-batch; the micro-batches are
    packed and run through the model together (in several forwards when they exceed
    ``max_batch_tokens`` padded tokens). Each adapter steps its own AdamW every
    ``gradient_accumulation_steps`` of its micro-batches and leaves when its epochs are done,
    its time is spent or its loss is not finite. ``stats[k]`` (UpdateStats) is filled in.
    """
    model = bank.model
    limit = min(max_seq_tokens, context) if context else max_seq_tokens
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    runs: list[_AdapterRun] = []
    for k, (request, st) in enumerate(zip(requests, stats, strict=True)):
        encoded, cut = encode_sequences(tokenizer, request.sequences, limit)
        if cut:
            st.notes.append(cut_note(cut, len(encoded), limit, max_seq_tokens, context))
        st.sequences = len(encoded)
        hp = request.hyperparameters
        per_epoch = sum(len(e.ids) for e in encoded)
        epochs = hp.num_epochs
        if per_epoch * epochs > max_train_tokens:
            epochs = max(1, max_train_tokens // max(per_epoch, 1))
            st.notes.append(
                f"training budget: {per_epoch} tokens x {hp.num_epochs} epochs exceeds"
                f" max_train_tokens={max_train_tokens}; ran {epochs} epochs"
            )
        run = _AdapterRun(k, request, st, encoded, epochs)
        if not encoded or epochs < 1:
            run.active = False
        else:
            # The fused kernel: one op per step instead of a loop over ~400 small tensors
            # (4x faster on a CPU for a 135M model's rank-16 adapter).
            run.optimizer = torch.optim.AdamW(bank.parameters(k), lr=hp.learning_rate,
                                              weight_decay=0.0,
                                              fused=device.type in ("cpu", "cuda"))
            run.generator = _generator(request.seed)
            run.started = time.perf_counter()
        runs.append(run)

    one_per_row = not packing_isolates(model, device)
    was_training = model.training
    model.train()
    bank.training = True
    try:
        while True:
            active = [r for r in runs if r.active]
            if not active:
                break
            now = time.perf_counter()
            for run in active:  # time budgets, checked between micro-batches as before
                deadline = run.request.deadline
                if deadline is not None and now > deadline and run.micro > 0:
                    run.stats.notes.append(
                        f"time budget: training stopped after {now - run.started:.3g} s"
                        f" ({run.stats.optimizer_steps} optimizer steps)")
                    _finish(run)
            active = [r for r in runs if r.active]
            if not active:
                break
            chosen = [(run, _next_micro_batch(run, micro_batch_size)) for run in active]
            for group in _split_by_tokens(chosen, max_batch_tokens):
                _joint_step(bank, group, device, pad, one_per_row)
    finally:
        bank.training = False
        model.train(was_training)
        for run in runs:
            if run.active:
                _finish(run)
            run.stats.seconds = time.perf_counter() - run.started if run.started else 0.0
            if any(not math.isfinite(x) for x in run.stats.losses) and not run.stats.error:
                run.stats.error = "training loss was not finite"


def _next_micro_batch(run: _AdapterRun, size: int) -> list[int]:
    if not run.plan:
        assert run.generator is not None
        run.plan = _epoch_plan([len(e.ids) for e in run.encoded], size, run.generator)
    return run.plan.pop(0)


def _split_by_tokens(
    chosen: list[tuple[_AdapterRun, list[int]]], max_tokens: int
) -> list[list[tuple[_AdapterRun, list[int]]]]:
    """Groups of adapters whose packed micro-batches fit ``max_tokens`` (one forward each)."""
    groups: list[list[tuple[_AdapterRun, list[int]]]] = []
    total = 0
    for run, idx in chosen:
        tokens = sum(len(run.encoded[i].ids) for i in idx)
        if groups and total + tokens <= max_tokens:
            groups[-1].append((run, idx))
            total += tokens
        else:
            groups.append([(run, idx)])
            total = tokens
    return groups


def _joint_step(bank: HookedBank, group: list[tuple[_AdapterRun, list[int]]],
                device: torch.device, pad: int, one_per_row: bool) -> None:
    """One packed forward/backward for a group of adapters; optimizer steps where due."""
    # Adapters that one grouped matmul pair can serve (LoRA: one rank) sit side by side.
    ordered = sorted(group, key=lambda item: bank.layout_key(item[0].k))
    batch = pack([(run.k, [run.encoded[i] for i in idx]) for run, idx in ordered], pad,
                 one_per_row=one_per_row)
    with bank.tokens(batch.groups, batch.spans):
        losses = _forward_losses(bank.model, batch, device)
    total = None
    for run, _ in group:
        loss = losses.get(run.k)
        if loss is None:
            continue
        if not torch.isfinite(loss):
            run.stats.error = f"training loss became {loss.item()}; update stopped"
            assert run.optimizer is not None
            run.optimizer.zero_grad(set_to_none=True)
            run.active = False
            continue
        accum = run.request.hyperparameters.gradient_accumulation_steps
        term = loss / accum
        total = term if total is None else total + term
    if total is not None:
        # Each adapter's loss depends only on its own weights (its tokens never attend to
        # another sequence), so one backward of the sum gives every adapter its own gradient.
        total.backward()
    for run, _ in group:
        if not run.active:
            continue
        if run.k in losses:
            accum = run.request.hyperparameters.gradient_accumulation_steps
            run.window_loss += losses[run.k].item() / accum
            run.stats.train_tokens += batch.real_tokens[run.k]
            run.micro += 1
            if run.micro % accum == 0:
                _optimizer_step(run)
        if not run.plan:
            run.epoch += 1
            if run.epoch >= run.epochs:
                _finish(run)


def _optimizer_step(run: _AdapterRun) -> None:
    assert run.optimizer is not None
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.stats.optimizer_steps += 1
    run.stats.losses.append(run.window_loss)
    run.window_loss = 0.0


def _finish(run: _AdapterRun) -> None:
    """Flush a partial accumulation window, then take the adapter out of the batch."""
    if not run.active:
        return
    accum = run.request.hyperparameters.gradient_accumulation_steps
    if run.micro % accum:
        run.window_loss *= accum / (run.micro % accum)
        _optimizer_step(run)
    run.active = False
