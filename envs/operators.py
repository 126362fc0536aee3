"""Update operators beyond LoRA: full fine-tuning and singular-value scales (issue 16).

Both follow :class:`~selfedit.envs.update.UpdateOperator`: inside ``with op.adapted(...)``
the backend answers with the adapted model; on leaving the block the base weights are
bit-identical to before, whether the block ended normally, by an exception, by a failed
(non-finite) update or by a budget.

* :class:`FullFineTune` trains the model's own weights (all of them, those matching name
  patterns, or the last N decoder blocks) with next-token prediction. The trained tensors
  are copied to host memory before training and copied back afterwards (a copy, not a
  re-load: ``copy_`` of the same dtype is exact). AdamW runs on float32 master weights when
  the model is held in bf16/fp16: an update of lr x ~1 on a bf16 weight of ~0.02 is below
  half a bf16 step at lr 1e-5 and would round away. Before training, the memory it needs
  (gradients, AdamW state, master weights, the restore copy) is compared with what the
  machine has, and a model too large is refused with a message that says what to change.
* :class:`SingularValueUpdate` is Transformer²'s singular-value fine-tuning (Sun et al.,
  2025): each target matrix ``W = U diag(s) V^T`` becomes ``U diag(s * z) V^T`` with a
  trainable vector ``z`` (initialised to ones), trained here with next-token prediction on
  the self-edit. The SVDs are computed once per model and cached on disk, keyed by the
  model's fingerprint, and loaded lazily on first use. The base is never written: forward
  hooks add ``x V diag(s z - s) U^T`` to each target's output, so ``z = 1`` is exactly the
  base. Several ``z`` vectors train together in one pass and answer in one batch
  (``adapted_many``), routed per token / row as :class:`~selfedit.envs.multilora.LoRABank`
  routes LoRA adapters; the joint training loop is :func:`~selfedit.envs.multilora.
  train_adapters` itself.

:func:`make_operator` builds an operator from an :class:`~selfedit.envs.config.EnvConfig`;
the env routes each template to the operator it names (``update_operator``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional name

from selfedit.envs.multilora import (
    AdapterRequest,
    HookedBank,
    Route,
    TrainingSequence,
    _epoch_plan,  # shared with the LoRA loop: the same data order for the same seed
    _forward_losses,  # shared with the LoRA loop: loss only where labels are
    cut_note,
    encode_sequences,
    linear_targets,
    model_context,
    pack,
    packing_isolates,
)
from selfedit.envs.templates import OperatorHyperparameters
from selfedit.envs.update import (
    BankUpdate,
    LoRAUpdate,
    UpdateStats,
)

__all__ = [
    "OPERATOR_LABELS",
    "FullFineTune",
    "FullStats",
    "MemoryPlan",
    "SingularValueBank",
    "SingularValueUpdate",
    "SVDFactors",
    "host_available_memory",
    "load_or_compute_svd",
    "make_operator",
    "svd_cache_path",
]

# How an operator is named in messages ("LoRA update failed: ..."), by template name.
OPERATOR_LABELS = {"lora": "LoRA", "full": "full fine-tuning", "svd": "singular-value"}

_LAYER = re.compile(r"\.(?:layers|h|blocks|block|layer)\.(\d+)\.")


# ----------------------------------------------------------------------------------------
# Memory
# ----------------------------------------------------------------------------------------


def host_available_memory() -> int:
    """Bytes of host memory a new allocation can take (psutil, /proc, cgroup v2 limit)."""
    available: int | None = None
    try:
        import psutil

        available = int(psutil.virtual_memory().available)
    except ImportError:
        with contextlib.suppress(OSError, ValueError):
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    if available is None:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    # A container's limit is below what the host reports: respect it when one is set.
    with contextlib.suppress(OSError, ValueError):
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text().strip()
        if limit != "max":
            available = min(available, int(limit) - int(used))
    return max(int(available), 0)


def _device_available_memory(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return host_available_memory()


def _gb(n: float) -> str:
    return f"{n / 2**30:.2f} GB"


@dataclass(frozen=True)
class MemoryPlan:
    """What full fine-tuning needs beyond the loaded model, in bytes, and what is available.

    Activations are not counted (they scale with ``micro_batch_size x max_seq_tokens`` and
    are small next to AdamW's state for the default micro-batches); ``fraction`` of the
    available memory is the most a plan may take, which leaves them room.
    """

    parameters: int  # trained parameters (elements)
    gradients: int
    optimizer: int  # AdamW's two float32 moments
    master: int  # float32 master weights (0 when the model is float32)
    copy: int  # the restore copy, in host memory
    device: str
    device_available: int
    host_available: int

    @property
    def device_needed(self) -> int:
        needed = self.gradients + self.optimizer + self.master
        return needed + (self.copy if self.device == "cpu" else 0)

    @property
    def host_needed(self) -> int:
        return 0 if self.device == "cpu" else self.copy

    def fits(self, fraction: float) -> bool:
        return (self.device_needed <= fraction * self.device_available
                and self.host_needed <= fraction * self.host_available)

    def describe(self) -> str:
        parts = [f"gradients {_gb(self.gradients)}", f"AdamW state {_gb(self.optimizer)}"]
        if self.master:
            parts.append(f"float32 master weights {_gb(self.master)}")
        parts.append(f"restore copy {_gb(self.copy)} (host)")
        return (f"training {self.parameters / 1e6:.1f}M parameters needs"
                f" {_gb(self.device_needed + self.host_needed)} beyond the model ("
                + ", ".join(parts) + f"); {self.device} has {_gb(self.device_available)}"
                + (f", host {_gb(self.host_available)}" if self.device != "cpu" else "")
                + " available")

    def to_dict(self) -> dict[str, Any]:
        return {"device_needed_bytes": self.device_needed, "host_needed_bytes": self.host_needed}


def memory_plan(params: Sequence[torch.nn.Parameter], device: torch.device) -> MemoryPlan:
    """The memory full fine-tuning of ``params`` needs, next to what the machine has."""
    n = sum(p.numel() for p in params)
    own = sum(p.numel() * p.element_size() for p in params)
    master = sum(p.numel() * 4 for p in params if p.dtype != torch.float32)
    host = host_available_memory()
    return MemoryPlan(
        parameters=n,
        gradients=own,
        optimizer=2 * 4 * n,
        master=master,
        copy=own,
        device=device.type,
        device_available=host if device.type == "cpu" else _device_available_memory(device),
        host_available=host,
    )


# ----------------------------------------------------------------------------------------
# Full fine-tuning
# ----------------------------------------------------------------------------------------


@dataclass
class FullStats(UpdateStats):
    """:class:`~selfedit.envs.update.UpdateStats` plus what full fine-tuning trained.

    ``snapshot_s`` and ``restore_s`` time the copy out and back (not in :meth:`to_dict`:
    infos compare equal across identical steps, and durations never do).
    """

    trained_parameters: int = 0
    memory: dict[str, int] = field(default_factory=dict)
    snapshot_s: float = 0.0
    restore_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "trained_parameters": self.trained_parameters,
                "memory": dict(self.memory)}


class FullFineTune:
    """Full fine-tuning with next-token prediction; the base restored from a host copy.

    Which tensors train: every parameter whose name matches one of ``parameters`` (regular
    expressions, ``re.search``; None = every parameter), further limited by the template's
    ``last_layers`` (N > 0: only the last N decoder blocks and the norm after them). Tied
    tensors (input embedding = LM head) are one parameter and train once.

    Budgets (as :class:`~selfedit.envs.update.LoRAUpdate`'s): sequences cut to
    ``max_seq_tokens`` (and the model's context), ``max_train_tokens`` real tokens per
    update (later epochs skipped), ``max_seconds`` per update (training stops between
    micro-batches, after at least one). Memory: the update is refused (``stats.error``, the
    base untouched) when gradients + AdamW state + master weights + restore copy exceed
    ``memory_fraction`` of the available memory; :meth:`check_fits` raises the same verdict
    early (the env calls it when it is built).

    Time: per optimizer step, AdamW touches every trained tensor (3 reads, 3 writes of
    float32 per element); the copy out and back costs two passes over the trained weights
    (``stats.snapshot_s``, ``stats.restore_s``; results/operators_cpu has the measurements).

    Args:
        parameters: name patterns of the tensors that may train (None: all).
        micro_batch_size: sequences per micro-batch; the template's
            ``gradient_accumulation_steps`` multiplies it.
        max_seq_tokens, max_train_tokens, max_seconds: budgets per update (above).
        memory_fraction: share of the available memory a plan may take.
    """

    name = "full"

    def __init__(
        self,
        *,
        parameters: Sequence[str] | None = None,
        micro_batch_size: int = 4,
        max_seq_tokens: int = 512,
        max_train_tokens: int = 200_000,
        max_seconds: float = 600.0,
        memory_fraction: float = 0.9,
    ) -> None:
        self.patterns = [re.compile(p) for p in parameters] if parameters else []
        self.micro_batch_size = micro_batch_size
        self.max_seq_tokens = max_seq_tokens
        self.max_train_tokens = max_train_tokens
        self.max_seconds = max_seconds
        self.memory_fraction = memory_fraction
        self.trained: list[tuple[str, torch.nn.Parameter]] = []  # of the open block

    # -- which tensors ------------------------------------------------------------------
    def select(self, model: torch.nn.Module,
               last_layers: int = 0) -> list[tuple[str, torch.nn.Parameter]]:
        """The (name, parameter) pairs that train for a template's ``last_layers``."""
        named = list(model.named_parameters())  # tied tensors appear once
        if self.patterns:
            named = [(n, p) for n, p in named if any(r.search(n) for r in self.patterns)]
        if last_layers > 0:
            layer = {n: int(m.group(1)) for n, _ in named if (m := _LAYER.search(n))}
            if not layer:
                raise ValueError(
                    "last_layers needs numbered decoder blocks ('.layers.N.' in parameter"
                    " names) among the trainable parameters; set last_layers to 0")
            first = max(layer.values()) + 1 - last_layers
            order = [n for n, _ in model.named_parameters()]
            last_block = max(order.index(n) for n in layer)
            embed = getattr(model, "get_input_embeddings", lambda: None)()
            embed_weight = getattr(embed, "weight", None)
            named = [(n, p) for n, p in named
                     if (n in layer and layer[n] >= first)
                     or (n not in layer and order.index(n) > last_block and p is not embed_weight)]
        if not named:
            raise ValueError("no parameter to train: env.full_parameters matches none of the"
                             " model's parameter names")
        return named

    def check_fits(self, model: torch.nn.Module) -> MemoryPlan:
        """The plan for every trainable tensor; raises MemoryError when it does not fit."""
        params = [p for _, p in self.select(model)]
        device = params[0].device
        plan = memory_plan(params, device)
        if not plan.fits(self.memory_fraction):
            raise MemoryError(self._refusal(plan))
        return plan

    def _refusal(self, plan: MemoryPlan) -> str:
        return (f"full fine-tuning refused: {plan.describe()} (at most"
                f" {self.memory_fraction:.0%} may be used); train fewer parameters"
                " (the template's last_layers, or env.full_parameters) or use the lora or"
                " svd operator")

    # -- the update ---------------------------------------------------------------------
    @contextlib.contextmanager
    def adapted(
        self,
        backend: Any,
        sequences: Sequence[TrainingSequence],
        hyperparameters: OperatorHyperparameters,
        *,
        seed: int,
        max_seconds: float | None = None,
    ) -> Iterator[FullStats]:
        """Train the model's weights; inside the block ``backend.generate`` uses them."""
        stats = FullStats()
        hp = hyperparameters
        if hp.num_epochs == 0 or not sequences:
            yield stats  # no training: the adapted model is the base model
            return
        model = backend.model
        try:
            named = self.select(model, int(getattr(hp, "last_layers", 0)))
        except ValueError as err:
            stats.error = str(err)
            yield stats
            return
        params = [p for _, p in named]
        plan = memory_plan(params, params[0].device)
        stats.trained_parameters = plan.parameters
        stats.memory = plan.to_dict()
        if not plan.fits(self.memory_fraction):
            stats.error = self._refusal(plan)
            yield stats
            return
        grad_state = {n: p.requires_grad for n, p in model.named_parameters()}
        t0 = time.perf_counter()
        saved = [p.detach().to("cpu", copy=True) for p in params]  # the restore copy
        stats.snapshot_s = time.perf_counter() - t0
        restored = False
        try:
            for p in model.parameters():
                p.requires_grad_(False)
            for p in params:
                p.requires_grad_(True)
            budget = self.max_seconds if max_seconds is None else min(self.max_seconds,
                                                                         max_seconds)
            start = time.perf_counter()
            self._train(backend, params, sequences, hp, seed, stats, start + budget)
            stats.seconds = time.perf_counter() - start
            for p in params:
                p.grad = None
            if stats.error:  # the weights may hold a partial, failed update: not served
                self._restore(params, saved, stats)
                restored = True
            self.trained = named
            yield stats
        finally:
            self.trained = []
            for p in params:
                p.grad = None
            if not restored:
                self._restore(params, saved, stats)
            for name, param in model.named_parameters():
                param.requires_grad_(grad_state.get(name, False))
            model.eval()

    @staticmethod
    @torch.no_grad()
    def _restore(params: Sequence[torch.nn.Parameter], saved: Sequence[torch.Tensor],
                 stats: FullStats) -> None:
        t0 = time.perf_counter()
        for p, s in zip(params, saved, strict=True):
            p.copy_(s)  # same dtype and shape: bit-identical
        stats.restore_s = time.perf_counter() - t0

    def _train(
        self,
        backend: Any,
        params: list[torch.nn.Parameter],
        sequences: Sequence[TrainingSequence],
        hp: OperatorHyperparameters,
        seed: int,
        stats: FullStats,
        deadline: float,
    ) -> None:
        model, device, tok = backend.model, backend.device, backend.tokenizer
        context = model_context(model)
        limit = min(self.max_seq_tokens, context) if context else self.max_seq_tokens
        encoded, cut = encode_sequences(tok, sequences, limit)
        if cut:
            stats.notes.append(cut_note(cut, len(encoded), limit, self.max_seq_tokens,
                                         context))
        stats.sequences = len(encoded)
        if not encoded:
            return
        per_epoch = sum(len(e.ids) for e in encoded)
        epochs = hp.num_epochs
        if per_epoch * epochs > self.max_train_tokens:
            epochs = max(1, self.max_train_tokens // max(per_epoch, 1))
            stats.notes.append(
                f"training budget: {per_epoch} tokens x {hp.num_epochs} epochs exceeds"
                f" max_train_tokens={self.max_train_tokens}; ran {epochs} epochs")
        # Mixed precision: AdamW on float32 copies of low-precision weights (module doc).
        masters = [p.detach().float().clone() if p.dtype != torch.float32 else None
                   for p in params]
        tensors = [m if m is not None else p for p, m in zip(params, masters, strict=True)]
        optimizer = torch.optim.AdamW(tensors, lr=hp.learning_rate, weight_decay=0.0)
        generator = torch.Generator().manual_seed(int(seed) % (2**63))
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        one_per_row = not packing_isolates(model, device)
        accum = hp.gradient_accumulation_steps
        lengths = [len(e.ids) for e in encoded]
        micro = 0
        window = 0.0

        def step() -> bool:
            nonlocal window
            grads = [p.grad for p in params if p.grad is not None]
            norms = torch.stack([torch.linalg.vector_norm(g, dtype=torch.float32)
                                 for g in grads])
            if not bool(torch.isfinite(norms).all()):
                stats.error = "a gradient became non-finite; update stopped"
                return False
            for p, m in zip(params, masters, strict=True):
                if m is not None and p.grad is not None:
                    m.grad = p.grad.float()
                    p.grad = None
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            for p in params:
                p.grad = None
            with torch.no_grad():
                for p, m in zip(params, masters, strict=True):
                    if m is not None:
                        p.copy_(m)
            stats.optimizer_steps += 1
            stats.losses.append(window)
            window = 0.0
            return True

        was_training = model.training
        model.train()
        started = time.perf_counter()
        try:
            stop = False
            for _ in range(epochs):
                for idx in _epoch_plan(lengths, self.micro_batch_size, generator):
                    if micro > 0 and time.perf_counter() > deadline:
                        stats.notes.append(
                            "time budget: training stopped after"
                            f" {time.perf_counter() - started:.3g} s"
                            f" ({stats.optimizer_steps} optimizer steps)")
                        stop = True
                        break
                    batch = pack([(0, [encoded[i] for i in idx])], pad,
                                 one_per_row=one_per_row)
                    loss = _forward_losses(model, batch, device).get(0)
                    if loss is None:
                        continue
                    if not torch.isfinite(loss):
                        stats.error = f"training loss became {loss.item()}; update stopped"
                        return
                    (loss / accum).backward()
                    window += loss.item() / accum
                    stats.train_tokens += batch.real_tokens[0]
                    micro += 1
                    if micro % accum == 0 and not step():
                        return
                if stop:
                    break
            if micro % accum:  # flush a partial accumulation window
                window *= accum / (micro % accum)
                step()
        finally:
            model.train(was_training)
            for p in params:
                p.grad = None
        if any(not math.isfinite(x) for x in stats.losses) and not stats.error:
            stats.error = "training loss was not finite"

    def merged_weights(self) -> dict[str, torch.Tensor]:
        """Inside a block: ``{module name: trained weight}`` (continual mode keeps them).

        Only tensors named ``<module>.weight`` are listed (a trained bias is not carried).
        """
        if not self.trained:
            raise RuntimeError("merged_weights() is only available inside an adapted block")
        return {name.removesuffix(".weight"): p.detach().clone()
                for name, p in self.trained if name.endswith(".weight")}


# ----------------------------------------------------------------------------------------
# Singular values: the factors, cached on disk
# ----------------------------------------------------------------------------------------

_SVD_FORMAT = "selfedit-svd-1"


@dataclass
class SVDFactors:
    """``W = U diag(S) Vh`` of each target matrix (float32, on the CPU), and their origin."""

    fingerprint: str
    modules: list[str]
    u: dict[str, torch.Tensor]  # (out, k)
    s: dict[str, torch.Tensor]  # (k,)
    vh: dict[str, torch.Tensor]  # (k, in)
    source: str  # "computed" or "disk"
    seconds: float = 0.0


def svd_cache_path(cache_dir: Path, fingerprint: str, modules: Sequence[str]) -> Path:
    """The cache file of a model's SVDs: one per (fingerprint, set of target modules)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", fingerprint)[:120]
    names = hashlib.blake2b("\n".join(modules).encode(), digest_size=6).hexdigest()
    return cache_dir / "svd" / f"{safe}-{names}.safetensors"


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for key in sorted(tensors):
        h.update(key.encode())
        h.update(tensors[key].contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _read_cache(path: Path, fingerprint: str,
                modules: Sequence[tuple[str, torch.nn.Linear]]) -> dict[str, torch.Tensor]:
    """The cached tensors, checked against the model and their digest; ValueError if not."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 - safe_open API
    if meta.get("format") != _SVD_FORMAT or meta.get("fingerprint") != fingerprint:
        raise ValueError("written for another model or format")
    if json.loads(meta.get("modules", "[]")) != [n for n, _ in modules]:
        raise ValueError("written for other target modules")
    for name, module in modules:
        out_f, in_f = module.weight.shape
        k = min(out_f, in_f)
        shapes = {"u": (out_f, k), "s": (k,), "vh": (k, in_f)}
        for part, shape in shapes.items():
            t = tensors.get(f"{name}.{part}")
            if t is None or tuple(t.shape) != shape or t.dtype != torch.float32:
                raise ValueError(f"{name}.{part} is missing or has the wrong shape")
    if _digest(tensors) != meta.get("digest"):
        raise ValueError("its content does not match its digest (a corrupt or partial file)")
    return tensors


def _write_cache(path: Path, fingerprint: str, modules: Sequence[str],
                 tensors: dict[str, torch.Tensor]) -> None:
    """Write atomically: a unique temporary file in the same directory, then a rename."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": _SVD_FORMAT, "fingerprint": fingerprint,
            "modules": json.dumps(list(modules)), "digest": _digest(tensors)}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@torch.no_grad()
def load_or_compute_svd(
    modules: Sequence[tuple[str, torch.nn.Linear]],
    fingerprint: str,
    cache_dir: Path | None,
) -> SVDFactors:
    """The SVD of every module's weight: from the cache when it holds a valid copy, else
    computed (on the weights' device, in float32) and written to the cache.

    A cache file that cannot be read, was written for another model or other modules, or
    whose content does not match its digest is not trusted: it is recomputed and replaced,
    with a warning. ``cache_dir`` None: computed, never written.
    """
    names = [n for n, _ in modules]
    start = time.perf_counter()
    path = svd_cache_path(cache_dir, fingerprint, names) if cache_dir is not None else None
    if path is not None and path.exists():
        try:
            tensors = _read_cache(path, fingerprint, modules)
        except Exception as err:  # noqa: BLE001 - any unreadable cache is recomputed
            warnings.warn(f"SVD cache {path} is not usable ({err}); recomputing it",
                          stacklevel=2)
        else:
            return _factors(fingerprint, names, tensors, "disk", time.perf_counter() - start)
    tensors = {}
    for name, module in modules:
        w = module.weight.detach().float()  # (out, in)
        u, s, vh = torch.linalg.svd(w, full_matrices=False)  # (out,k) (k,) (k,in)
        tensors[f"{name}.u"] = u.cpu().contiguous()
        tensors[f"{name}.s"] = s.cpu().contiguous()
        tensors[f"{name}.vh"] = vh.cpu().contiguous()
    if path is not None:
        try:
            _write_cache(path, fingerprint, names, tensors)
        except OSError as err:
            warnings.warn(f"SVD cache {path} could not be written ({err}); the SVDs stay in"
                          " memory only", stacklevel=2)
    return _factors(fingerprint, names, tensors, "computed", time.perf_counter() - start)


def _factors(fingerprint: str, names: list[str], tensors: dict[str, torch.Tensor],
             source: str, seconds: float) -> SVDFactors:
    return SVDFactors(fingerprint, names,
                      {n: tensors[f"{n}.u"] for n in names},
                      {n: tensors[f"{n}.s"] for n in names},
                      {n: tensors[f"{n}.vh"] for n in names}, source, seconds)


# ----------------------------------------------------------------------------------------
# Singular values: K scale vectors on one model, through forward hooks
# ----------------------------------------------------------------------------------------


class SingularValueBank(HookedBank):
    """K singular-value adapters (a ``z`` vector per target matrix each), via forward hooks.

    Target module m with ``W = U diag(s) Vh`` gets ``y + x Vh[:r]^T diag(s[:r] (z - 1))
    U[:, :r]^T`` on the positions routed to adapter k, where r is the adapter's
    ``svd_components`` (0 = all of the matrix's singular values). The two projections are
    shared by every adapter: one ``x Vh^T`` and one ``(.) U^T`` per module serve the whole
    batch, each position scaled by its own adapter's ``s (z - 1)`` (0 for the base). The
    projections run in the weight's dtype (bf16 where the model is), ``z`` stays float32.
    A :class:`~selfedit.envs.multilora.HookedBank` as :class:`~selfedit.envs.multilora.
    LoRABank` is, so the joint training loop and the backend's row routing serve both.

    Args:
        model: the frozen base model (never written).
        modules: (name, Linear) targets.
        factors: their SVDs (:func:`load_or_compute_svd`).
        components: one ``svd_components`` per adapter.
    """

    def __init__(self, model: torch.nn.Module, modules: Sequence[tuple[str, torch.nn.Linear]],
                 factors: SVDFactors, components: Sequence[int]) -> None:
        self.model = model
        self.modules = list(modules)
        device = self.modules[0][1].weight.device
        self.u: list[torch.Tensor] = []
        self.s: list[torch.Tensor] = []
        self.vh: list[torch.Tensor] = []
        self.ranks: list[list[int]] = []  # ranks[k][m]
        self.z: list[list[torch.nn.Parameter]] = [[] for _ in components]
        for name, module in self.modules:
            dtype = module.weight.dtype
            full = factors.s[name].numel()
            wanted = [full if c <= 0 else min(int(c), full) for c in components]
            r = max(wanted)  # the projections cover the largest adapter's components
            # No copy when the factors are already on the device in the weight's dtype
            # (SingularValueUpdate.prepare converts them once per model) and r is all.
            self.u.append(factors.u[name][:, :r].to(device=device, dtype=dtype).contiguous())
            self.vh.append(factors.vh[name][:r].to(device=device, dtype=dtype))
            self.s.append(factors.s[name][:r].to(device=device, dtype=torch.float32))
            for k, rk in enumerate(wanted):
                self.z[k].append(torch.nn.Parameter(
                    torch.ones(rk, device=device, dtype=torch.float32)))
        self.ranks = [[z.numel() for z in zs] for zs in self.z]
        self._attach()

    def __len__(self) -> int:
        return len(self.z)

    def parameters(self, k: int) -> list[torch.nn.Parameter]:
        """Adapter ``k``'s trainable tensors (one ``z`` per target module)."""
        return list(self.z[k])

    def _owner(self, route: Route, n: int, device: torch.device) -> torch.Tensor:
        """Adapter of each of the ``n`` rows or flat positions (``len(self)``: the base);
        built once per route and ``n``."""
        def build() -> torch.Tensor:
            owner = torch.full((n,), len(self), dtype=torch.long, device=device)
            for k, idx in route.groups:
                owner[idx] = k
            return owner

        return self._per_route(route, n, build)

    # -- the forward hook ---------------------------------------------------------------
    def _scales(self, m: int, width: int) -> torch.Tensor:
        """(K + 1, width) float32: row k is adapter k's ``s (z - 1)``, the last row zeros."""
        s = self.s[m]
        rows = []
        for k in range(len(self)):
            z = self.z[k][m]
            row = s[: z.numel()] * (z - 1.0)
            if z.numel() < width:
                row = F.pad(row, (0, width - z.numel()))
            rows.append(row)
        rows.append(torch.zeros(width, device=s.device, dtype=torch.float32))
        return torch.stack(rows)

    def _hook(self, m: int) -> Any:
        def hook(module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> Any:
            route = self._active_route()
            if route is None:
                return None
            x = args[0]
            u, vh = self.u[m], self.vh[m]
            if route.single is not None:  # one adapter everywhere: its own components only
                k = route.single
                r = self.ranks[k][m]
                scale = self.s[m][:r] * (self.z[k][m] - 1.0)  # (r,)
                h = F.linear(x.to(vh.dtype), vh[:r])  # (..., r)
                delta = F.linear(h * scale.to(h.dtype), u[:, :r])  # (..., out)
                return output + delta.to(output.dtype)
            if route.index is None:  # every position is the base's: no projection at all
                return None
            table = self._scales(m, vh.shape[0]).to(vh.dtype)  # (K + 1, r)
            if route.flat:
                xs = x.reshape(-1, x.shape[-1])  # (N, in)
                owner = self._owner(route, xs.shape[0], xs.device)  # (N,)
                h = F.linear(xs.to(vh.dtype), vh) * table[owner]  # (N, r)
                delta = F.linear(h, u).view_as(output)  # (B, T, out)
                return output + delta.to(output.dtype)
            owner = self._owner(route, x.shape[0], x.device)  # (B,)
            scale = table[owner].view(owner.shape[0], *([1] * (x.dim() - 2)), -1)  # (B, 1, r)
            h = F.linear(x.to(vh.dtype), vh) * scale  # (B, T, r)
            return output + F.linear(h, u).to(output.dtype)

        return hook

    # -- export -------------------------------------------------------------------------
    @torch.no_grad()
    def merged_weights(self, k: int) -> dict[str, torch.Tensor]:
        """``{module name: W + U diag(s (z - 1)) Vh}`` for adapter ``k`` (float32 sum, cast to
        the base dtype): what continual mode writes into the model to keep an adapter."""
        out = {}
        for m, (name, module) in enumerate(self.modules):
            r = self.ranks[k][m]
            scale = self.s[m][:r] * (self.z[k][m] - 1.0)
            delta = (self.u[m][:, :r].float() * scale) @ self.vh[m][:r].float()
            out[name] = (module.weight.detach().float() + delta).to(module.weight.dtype)
        return out


class SingularValueUpdate(BankUpdate):
    """Transformer²-style singular-value fine-tuning: a scale per singular value, trained.

    Each target ``nn.Linear`` (``target_modules``, as LoRA's) gets a vector ``z`` (ones at
    the start) scaling its singular values; ``z`` trains with AdamW on next-token
    prediction, with the template's learning rate, epochs, accumulation and
    ``svd_components`` (how many leading singular values get a scale; 0 = all). K updates
    train together and answer in one batch (``adapted_many``, the joint loop of
    :func:`~selfedit.envs.multilora.train_adapters`).

    The SVDs are computed the first time an update needs them (the 135M model's 210
    matrices: 37 s on one busy CPU core; from the disk cache: 2.3 s), cached under ``cache_dir``
    (default: ``<cache_root()>/svd``) keyed by ``backend.fingerprint`` and the target names,
    and kept in memory for the model in use. A model whose weights change in place must
    refresh its fingerprint (``env.rebase``), or the old SVDs are used: the base is still
    exact (``z = 1`` adds nothing), but the directions are the old model's.

    Budgets: as :class:`~selfedit.envs.update.LoRAUpdate` (``max_seq_tokens``,
    ``max_train_tokens``, ``max_seconds``, ``max_batch_tokens``). Memory: U and Vh of every
    target in the model's dtype (~1.5x the target weights), plus per adapter one float32
    ``z`` per singular value (~100k for the 135M model) and its AdamW state.

    Args:
        target_modules: module names whose weights get singular-value scales.
        cache_dir: where SVDs are cached (None: :func:`~selfedit.envs.backend.cache_root`);
            ``False``: never on disk.
        micro_batch_size, max_seq_tokens, max_train_tokens, max_seconds, max_batch_tokens:
            as :class:`~selfedit.envs.update.BankUpdate`'s.
    """

    name = "svd"

    def __init__(self, *, cache_dir: Path | str | bool | None = None,
                 **budgets: Any) -> None:
        super().__init__(**budgets)
        self._cache_dir = cache_dir
        self.factors: SVDFactors | None = None  # of the model last adapted (lazy)

    @property
    def cache_dir(self) -> Path | None:
        if self._cache_dir is False:
            return None
        if self._cache_dir is None or self._cache_dir is True:
            from selfedit.envs.backend import cache_root

            return cache_root()
        return Path(self._cache_dir)

    def targets(self, model: torch.nn.Module) -> list[tuple[str, torch.nn.Linear]]:
        return linear_targets(model, self.target_modules, "env.svd_target_modules")

    def prepare(self, backend: Any,
                modules: list[tuple[str, torch.nn.Linear]] | None = None) -> SVDFactors:
        """The SVDs of ``backend.model``'s targets (``modules``: already found by
        :meth:`targets`): in memory, else from disk, else computed."""
        fingerprint = str(getattr(backend, "fingerprint", "") or "")
        if modules is None:
            modules = self.targets(backend.model)
        names = [n for n, _ in modules]
        held = self.factors
        if held is not None and held.fingerprint == fingerprint and held.modules == names \
                and fingerprint:
            return held
        if not fingerprint:
            warnings.warn("the backend has no fingerprint: SVDs are computed and not cached",
                          stacklevel=2)
        cache = self.cache_dir if fingerprint else None
        self.factors = None  # the previous model's factors go before the new ones load
        factors = load_or_compute_svd(modules, fingerprint, cache)
        # Held on the model's device in its dtype: banks then slice them without copies.
        for name, module in modules:
            w = module.weight
            factors.u[name] = factors.u[name].to(device=w.device, dtype=w.dtype)
            factors.vh[name] = factors.vh[name].to(device=w.device, dtype=w.dtype)
            factors.s[name] = factors.s[name].to(device=w.device)
        self.factors = factors
        return factors

    def make_bank(self, backend: Any, requests: Sequence[AdapterRequest]) -> SingularValueBank:
        modules = self.targets(backend.model)
        factors = self.prepare(backend, modules)
        components = [int(getattr(r.hyperparameters, "svd_components", 0)) for r in requests]
        return SingularValueBank(backend.model, modules, factors, components)


# ----------------------------------------------------------------------------------------
# Construction from the env's config
# ----------------------------------------------------------------------------------------


def make_operator(name: str, cfg: Any) -> Any:
    """The update operator ``name`` (``lora``, ``full``, ``svd``) with ``cfg``'s budgets.

    ``cfg`` is an :class:`~selfedit.envs.config.EnvConfig` (or anything with its fields).
    """
    budgets: dict[str, Any] = {
        "micro_batch_size": cfg.micro_batch_size,
        "max_seq_tokens": cfg.max_seq_tokens,
        "max_train_tokens": cfg.max_train_tokens,
        "max_seconds": cfg.max_train_seconds,
    }
    if name == "lora":
        if cfg.target_modules:
            budgets["target_modules"] = cfg.target_modules
        return LoRAUpdate(**budgets)
    if name == "full":
        return FullFineTune(parameters=getattr(cfg, "full_parameters", None), **budgets)
    if name == "svd":
        targets = getattr(cfg, "svd_target_modules", None) or cfg.target_modules
        if targets:
            budgets["target_modules"] = targets
        return SingularValueUpdate(**budgets)
    raise ValueError(f"unknown update operator {name!r}; choose lora, full or svd")

