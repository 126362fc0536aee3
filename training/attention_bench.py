"""Which attention kernel trains faster here? ``selfedit bench train-attention``.

transformers' ``sdpa`` kernel is the default for training and answering alike
(``env.attn_implementation: null``); ``eager`` can be chosen. This bench measures the choice
for training on the machine it runs on: the same K LoRA adapters (ranks 16 and 8 in turn)
are trained jointly with each kernel, ``repeats`` times alternating, so that drift of a
shared host hits both alike. ``data`` picks their training sequences: ``sentences`` (the
first sentences of K passages, one sequence each: short rows, like a self-edit of one-line
implications) or ``passages`` (each passage whole and its first half: rows of a few hundred
tokens, like the main job's self-edits). It reports training tokens/s per kernel (median and
best), their ratio, and the largest loss difference between the kernels (float32: rounding
only; bf16: bf16 rounding), and writes ``<output>/report.md`` and ``report.json`` with the
command and the CPU flags.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from selfedit.envs.config import ConfigError, param

__all__ = ["TrainAttentionConfig", "attention_kernel", "run_train_attention_bench"]

KERNELS = ("sdpa", "eager")


@dataclass
class TrainAttentionConfig:
    """What ``selfedit bench train-attention`` measures; every field is a command-line flag."""

    model: str = param("embedded", "model: embedded, a hub id, a directory or a .gguf file")
    dtype: str = param("auto", "weights dtype (auto: what the env would choose here)")
    corpus: str = param("embedded", "passages whose text is the training data")
    data: str = param("sentences", "training sequences: sentences (short rows) or passages "
                      "(each passage whole and its first half: long rows)")
    adapters: int = param(8, "adapters trained jointly (one passage each)")
    sentences: int = param(10, "sentences of each passage to train on (data: sentences)")
    num_epochs: int = param(2, "epochs of every adapter")
    repeats: int = param(3, "timed runs per kernel, alternating")
    threads: int | None = param(None, "torch threads (default: torch's, all cores)")
    output: str = param("results/train_attention", "report directory")

    def __post_init__(self) -> None:
        if self.data not in ("sentences", "passages"):
            raise ConfigError(f"--data must be sentences or passages, got {self.data!r}")
        for name in ("adapters", "sentences", "num_epochs", "repeats"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got "
                                  f"{getattr(self, name)}")


@contextlib.contextmanager
def attention_kernel(model: torch.nn.Module, name: str | None) -> Iterator[None]:
    """Run the block with transformers' attention kernel ``name`` (None: leave the model as
    it is), and give the model its own kernel back after, whatever happens inside.

    A model that cannot switch kernels after loading (one not written against
    transformers' attention interface) is left as it is; the bench checks and says so.
    """
    config = getattr(model, "config", None)
    before = getattr(config, "_attn_implementation", None)
    can_switch = getattr(model, "_can_set_attn_implementation", None)
    if name is None or before is None or name == before or not (can_switch and can_switch()):
        yield
        return
    model.set_attn_implementation(name)
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def run_train_attention_bench(cfg: TrainAttentionConfig, *, command: str = "",
                              log: Any = print) -> dict[str, Any]:
    """Time joint training under each kernel; write and return the report."""
    from selfedit.envs.backend import HFBackend
    from selfedit.envs.corpus import load_corpus
    from selfedit.envs.multilora import AdapterRequest
    from selfedit.envs.precision import speed_flags
    from selfedit.envs.templates import Hyperparameters
    from selfedit.envs.update import LoRAUpdate
    from selfedit.training.jsonio import write_json_atomic
    from selfedit.training.recitation import passage_sentences

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    backend = HFBackend(cfg.model, dtype=cfg.dtype, device="cpu")
    corpus = load_corpus(cfg.corpus)
    requests = []
    for k in range(cfg.adapters):
        passage = corpus[k % len(corpus)]
        text = passage.context
        if cfg.data == "passages":
            sequences = [text, text[: len(text) // 2]]
        else:
            sequences = passage_sentences(text)[: cfg.sentences]
        hp = Hyperparameters(num_epochs=cfg.num_epochs, lora_rank=16 if k % 2 == 0 else 8,
                             lora_alpha=16)
        requests.append(AdapterRequest(sequences, hp, seed=k))
    operator = LoRAUpdate()
    log(f"dtype {backend.precision.dtype} ({backend.precision.reason}); "
        f"{torch.get_num_threads()} threads; {cfg.adapters} adapters")
    with operator.adapted_many(backend, requests[:1]):
        pass  # warm-up: kernels chosen, allocator pools filled
    rates: dict[str, list[float]] = {k: [] for k in KERNELS}
    losses: dict[str, list[list[float]]] = {}
    tokens = 0
    for repeat in range(cfg.repeats):
        for kernel in KERNELS:
            with attention_kernel(backend.model, kernel):
                if backend.model.config._attn_implementation != kernel:
                    raise ConfigError(f"model {cfg.model!r} cannot switch its attention kernel "
                                      f"to {kernel!r} after loading; this bench needs one that "
                                      "can (transformers' attention interface)")
                start = time.perf_counter()
                with operator.adapted_many(backend, requests) as stats:
                    pass
                seconds = time.perf_counter() - start
            tokens = sum(s.train_tokens for s in stats)
            rates[kernel].append(tokens / seconds)
            losses[kernel] = [list(s.losses) for s in stats]
            log(f"repeat {repeat + 1}/{cfg.repeats} {kernel}: {seconds:.2f} s, "
                f"{tokens / seconds:.0f} tokens/s")
    difference = max((abs(a - b) for x, y in zip(losses["sdpa"], losses["eager"], strict=True)
                      for a, b in zip(x, y, strict=True)), default=0.0)
    summary = {k: {"median": statistics.median(v), "best": max(v), "runs": v}
               for k, v in rates.items()}
    report = {
        "command": command, "config": asdict(cfg), "cpu_flags": speed_flags(),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "dtype": backend.precision.to_dict(), "train_tokens": tokens,
        "tokens_per_s": summary,
        "eager_vs_sdpa": _ratios(rates),
        "max_loss_difference": difference,
    }
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "report.json", report)
    markdown = _markdown(report)
    (out / "report.md").write_text(markdown)
    log(markdown)
    return report


def _ratios(rates: dict[str, list[float]]) -> dict[str, Any]:
    """eager / sdpa: of the medians, of the bests, and repeat by repeat (each pair ran back
    to back, so the host's drift cancels within a pair)."""
    paired = [e / s for e, s in zip(rates["eager"], rates["sdpa"], strict=True)]
    return {"median": statistics.median(rates["eager"]) / statistics.median(rates["sdpa"]),
            "best": max(rates["eager"]) / max(rates["sdpa"]), "paired": paired,
            "paired_median": statistics.median(paired)}


def _markdown(report: dict[str, Any]) -> str:
    rates, ratio = report["tokens_per_s"], report["eager_vs_sdpa"]
    lines = [
        "# Training attention kernel: eager vs sdpa", "",
        f"    {report['command']}", "",
        f"dtype {report['dtype']['dtype']} ({report['dtype']['reason']}); "
        f"{report['threads']} threads; torch {report['torch']}; CPU flags: "
        f"{', '.join(report['cpu_flags']) or 'unknown'}.",
        f"{report['config']['adapters']} adapters trained jointly on "
        f"{report['config']['data']}, {report['train_tokens']} "
        f"training tokens per run, {report['config']['repeats']} runs per kernel, alternating.",
        "", "| kernel | tokens/s, median | best | runs |", "|---|---:|---:|---|",
    ]
    for kernel in KERNELS:
        r = rates[kernel]
        lines.append(f"| {kernel} | {r['median']:.0f} | {r['best']:.0f} | "
                     f"{', '.join(f'{x:.0f}' for x in r['runs'])} |")
    lines += ["", f"eager / sdpa: **{ratio['paired_median']:.2f}x** (median of the repeats' "
              f"ratios: {', '.join(f'{x:.2f}' for x in ratio['paired'])}); "
              f"{ratio['median']:.2f}x of the medians, {ratio['best']:.2f}x of the bests. "
              "Largest difference of a logged loss between the kernels: "
              f"{report['max_loss_difference']:.2g}.", ""]
    return "\n".join(lines)
