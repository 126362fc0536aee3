"""How fast is the reward? Batched evaluation against the sequential loop and a SEAL-style one.

``selfedit bench inner-loop`` measures, in one run, on the same model and the same work
(issue 11; issue 6 before it):

(a) **evaluations per hour for K in {1, 4, 8, 16}**: the env's own evaluation of (template,
    passage) pairs -- complete the instruction, train a fresh LoRA, answer closed-book,
    grade -- through :meth:`SelfEditEnv.evaluate` with K pairs per call (the vector env's
    step). K=1 is the sequential lean loop. Rewards are compared pair by pair with K=1's
    (the equal-reward check: a paired difference whose interval contains 0);
(b) **the inner loop on fixed sequences** (train, answer, grade; what SEAL's training
    server does per request) for the lean loop at K=1 and batched at the largest K, against
    a SEAL-style reference written here the way the original code does it (a PEFT model
    and a transformers ``Trainer`` built per request, every sequence padded to 2048 tokens,
    the baseline answered again on every request), on the same sequences;
(c) the matmul throughput of the chosen precision (and float32): LoRA training with a
    frozen base costs about 4 x base parameters x training tokens (forward 2, backward
    through the activations 2), which gives the FLOP fraction;
(d) generation tokens/s of template completion, batched versus one prompt at a time;
(e) where the training time goes (torch profiler), at K=1 and batched; resident memory.

Everything is written to ``<output>/report.md`` and ``report.json`` with the command, the
CPU (model, flags that matter for precision), versions and the dtype ``auto`` chose.

Size (~510 lines): the five measurements share one loaded env and one work list, so that
every section times the same requests; the report's text lives in innerloop_report.py.
"""

from __future__ import annotations

import json
import resource
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from selfedit.envs.config import ConfigError, param
from selfedit.envs.corpus import Passage
from selfedit.envs.library import HUMAN_BASELINES, human_baseline
from selfedit.envs.selfedit_env import SelfEditEnv, SlotRequest, cfg_prompt
from selfedit.envs.templates import Hyperparameters

__all__ = ["InnerLoopConfig", "rebuild_report", "run_inner_loop_bench"]

PAD_TO = 2048  # what the SEAL-style reference pads every sequence to (issue 6)
TRAINING_BASELINES = [n for n in HUMAN_BASELINES if n != "no_training"]


@dataclass
class InnerLoopConfig:
    """What ``selfedit bench inner-loop`` measures; every field is a command-line flag."""

    model: str = param("embedded", "model: embedded, a hub id, a directory or a .gguf file")
    dtype: str = param("auto", "weights dtype (auto: what the env would choose here)")
    corpus: str = param("embedded", "passages: embedded, a SQuAD/records file, ...")
    passages: str = param("0:4", "passage selection, e.g. 0:4")
    templates: list[str] = param(help="human baselines whose evaluations make the work "
                                 "(templates x passages pairs)",
                                 factory=lambda: list(TRAINING_BASELINES))
    ks: list[int] = param(help="pairs evaluated per batched call; 1 is the sequential lean "
                          "loop", factory=lambda: [1, 4, 8, 16])
    num_epochs: int | None = param(None, "override the templates' epochs (default: their own)")
    reference_requests: int = param(2, "SEAL-style requests to time (0 skips the reference)")
    micro_batch_size: int = param(4, "sequences per micro-batch of one adapter")
    completion_max_tokens: int = param(192, "max new tokens of a template completion")
    pad_to: int = param(PAD_TO, "the reference's fixed sequence length (SEAL pads to 2048)")
    matmul_size: int = param(2048, "matmul size of the peak measurement")
    matmul_seconds: float = param(2.0, "seconds per precision of the peak measurement")
    profile: bool = param(True, "profile the training (where the time goes)")
    threads: int | None = param(None, "torch threads (default: torch's, all cores)")
    output: str = param("results/inner_loop", "report directory")
    seed: int = param(0, "seed of the evaluations (passage draws are fixed by passages)")

    def __post_init__(self) -> None:
        unknown = [t for t in self.templates if t not in TRAINING_BASELINES]
        if unknown or not self.templates:
            raise ConfigError(f"--templates must be training baselines"
                              f" ({', '.join(TRAINING_BASELINES)}), got {self.templates}")
        if not self.ks or any(k < 1 for k in self.ks):
            raise ConfigError(f"--ks must be whole numbers >= 1, e.g. 1,4,8,16; got {self.ks}")
        if 1 not in self.ks:
            raise ConfigError("--ks must include 1: the sequential loop is the reference")
        for name in ("micro_batch_size", "completion_max_tokens", "matmul_size", "pad_to"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got "
                                  f"{getattr(self, name)}")
        if self.reference_requests < 0:
            raise ConfigError("--reference-requests must be >= 0 (0 skips the reference)")
        if self.num_epochs is not None and not 1 <= self.num_epochs <= 50:
            raise ConfigError(f"--num-epochs must be between 1 and 50, got {self.num_epochs}")


# -- measurement helpers ------------------------------------------------------------------
def rss_mib() -> float:
    """Current resident memory of this process in MiB (Linux /proc; else the peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak_rss_mib()


def peak_rss_mib() -> float:
    """Peak resident memory of this process in MiB (ru_maxrss is KiB on Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / 1024 if sys.platform == "darwin" else peak / 1024


def matmul_gflops(dtype: torch.dtype, n: int, *, seconds: float = 2.0) -> float:
    """Best sustained GFLOP/s of an (n x n) @ (n x n) matmul in ``dtype`` on the CPU/GPU."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    flops = 2 * n**3
    torch.matmul(a, b)  # warm-up: kernels chosen, caches filled
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        torch.matmul(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        best = max(best, flops / (time.perf_counter() - t0) / 1e9)
    return best


def base_parameters(model: torch.nn.Module) -> int:
    """Parameters of the base model, each tied tensor counted once."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def paired_difference(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Mean of ``a - b`` pair by pair, its 95% t-interval, and how many pairs are equal.

    >>> d = paired_difference([0.5, 0.5, 0.2], [0.5, 0.5, 0.2])
    >>> d["identical"], d["low"] <= 0 <= d["high"]
    (3, True)
    """
    from selfedit.training.stats import t_quantile

    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)  # (pairs,)
    out = {"mean": float(diff.mean()), "identical": int(np.sum(np.abs(diff) < 1e-12)),
           "pairs": len(diff), "max_abs": float(np.abs(diff).max())}
    if len(diff) > 1 and diff.std(ddof=1) > 0:
        half = t_quantile(0.975, len(diff) - 1) * diff.std(ddof=1) / np.sqrt(len(diff))
    else:
        half = 0.0
    out.update(low=out["mean"] - half, high=out["mean"] + half)
    return out


# -- (a) env evaluations per hour, K at a time ----------------------------------------------
def evaluation_requests(env: SelfEditEnv, cfg: InnerLoopConfig) -> list[tuple[str, SlotRequest]]:
    """The work: every template on every passage, with a fixed seed per pair."""
    pairs = []
    for t, name in enumerate(cfg.templates):
        template = human_baseline(name)
        if cfg.num_epochs is not None:
            template = human_baseline(name, num_epochs=cfg.num_epochs)
        for p in range(len(env.corpus)):
            seed = cfg.seed + 1000 * t + p
            pairs.append((name, SlotRequest(template, (p,), seed, 0.0)))
    return pairs


def evaluate_in_blocks(env: SelfEditEnv, work: list[tuple[str, SlotRequest]],
                       k: int) -> dict[str, Any]:
    """Evaluate the work K pairs per call; seconds, rewards and the step infos."""
    rewards: list[float] = []
    infos: list[dict[str, Any]] = []
    # Where the time went, summed over calls: completion and answer times are each
    # evaluation's share of a batched generate; the adapters of a call train together, so
    # a call's training time is the longest of its evaluations' (their joint pass).
    phases = {"complete_s": 0.0, "train_s": 0.0, "answer_s": 0.0}
    start = time.perf_counter()
    for i in range(0, len(work), k):
        now = time.perf_counter()
        block = [SlotRequest(r.action, r.passage_idx, r.seed, now) for _, r in work[i : i + k]]
        timings = []
        for reward, info in env.evaluate(block):
            rewards.append(reward)
            infos.append(info)
            timings.append(info.get("timings") or {})
        phases["complete_s"] += sum(float(t.get("complete_s", 0.0)) for t in timings)
        phases["answer_s"] += sum(float(t.get("answer_s", 0.0)) for t in timings)
        phases["train_s"] += max((float(t.get("train_s", 0.0)) for t in timings), default=0.0)
    seconds = time.perf_counter() - start
    errors = [info.get("error") for info in infos if info.get("error")]
    if errors:
        raise RuntimeError(f"an evaluation failed in the benchmark: {errors[0]}")
    return {"k": k, "seconds": seconds, "evaluations": len(work),
            "evaluations_per_hour": 3600 * len(work) / seconds, "rewards": rewards,
            "phases": phases,
            "train_tokens": sum(i["tokens"]["train"] for i in infos),
            "completion_tokens": sum(i["tokens"]["completion"] for i in infos),
            "infos": infos}


# -- (b) the inner loop on fixed sequences ----------------------------------------------------
def inner_loop(env: SelfEditEnv, items: list[tuple[Passage, Hyperparameters, list[str], int]],
               k: int) -> dict[str, Any]:
    """Train, answer, grade each item (baselines cached), K items per joint pass."""
    seconds: list[float] = []
    train_wall = 0.0
    accuracy: list[float] = []
    tokens = 0
    for i in range(0, len(items), k):
        t0 = time.perf_counter()
        results = env.evaluate_many(items[i : i + k])
        spent = time.perf_counter() - t0
        seconds += [spent / len(results)] * len(results)  # amortised per request
        train_wall += max(r.timings["train_loop_s"] for r in results)
        accuracy += [r.accuracy for r in results]
        tokens += sum(int(r.update["train_tokens"]) for r in results)
    return {"k": k, "requests": len(items), "seconds": seconds,
            "mean_seconds": float(np.mean(seconds)), "accuracy": accuracy,
            "train_tokens": tokens, "train_seconds": train_wall,
            "train_tokens_per_s": tokens / max(train_wall, 1e-9), "rss_mib": rss_mib()}


def seal_style_loop(env: SelfEditEnv, items: list[tuple[Passage, Hyperparameters, list[str],
                                                         int]],
                    micro_batch_size: int, pad_to: int = PAD_TO) -> dict[str, Any]:
    """A SEAL-style reference (issue 6): per request, baseline recomputed, PEFT model and
    ``Trainer`` built, every sequence padded to ``pad_to`` tokens, trained, answered, graded.

    Same model, sequences, hyperparameters, micro-batch size and questions as the lean
    loop; the LoRA adapter is unloaded after each request, as the lean loop discards its.
    """
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    backend = env.backend
    out: dict[str, Any] = {"seconds": [], "accuracy": [], "train_tokens": 0,
                           "train_seconds": 0.0, "stages": {}}

    def stage(name: str, seconds: float) -> None:
        out["stages"][name] = out["stages"].get(name, 0.0) + seconds

    for passage, hp, sequences, seed in items:
        t0 = time.perf_counter()
        questions = [q.question for q in passage.questions]
        env.grade(env.answer(questions), passage)  # the baseline, every time
        stage("baseline_s", time.perf_counter() - t0)
        tmp = tempfile.mkdtemp(prefix="seal_style_")
        t1 = time.perf_counter()
        torch.manual_seed(seed)
        lora = LoraConfig(r=hp.lora_rank, lora_alpha=hp.lora_alpha, lora_dropout=hp.lora_dropout,
                          bias="none", task_type="CAUSAL_LM",
                          target_modules=env.update.target_modules)  # type: ignore[attr-defined]
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            model = get_peft_model(backend.model, lora)
        rows = _padded_rows(backend.tokenizer, sequences,
                            env.config.max_seq_tokens, pad_to)
        args = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=micro_batch_size,
            gradient_accumulation_steps=hp.gradient_accumulation_steps,
            num_train_epochs=hp.num_epochs, learning_rate=hp.learning_rate, weight_decay=0.0,
            lr_scheduler_type="constant", warmup_steps=0, save_strategy="no", report_to=[],
            logging_steps=10**6, disable_tqdm=True, seed=seed,
            use_cpu=backend.device.type == "cpu", dataloader_num_workers=0)
        trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_dict(rows))
        stage("build_s", time.perf_counter() - t1)
        try:
            t2 = time.perf_counter()
            trainer.train()
            out["train_seconds"] += time.perf_counter() - t2
            stage("train_s", time.perf_counter() - t2)
            out["train_tokens"] += sum(map(sum, rows["attention_mask"])) * hp.num_epochs
            model.eval()
            t3 = time.perf_counter()
            verdicts = env.grade(env.answer(questions), passage)
            out["accuracy"].append(float(np.mean(verdicts[env.grader_name])))
            stage("answer_grade_s", time.perf_counter() - t3)
        finally:
            model.unload()
            for p in backend.model.parameters():
                p.requires_grad_(False)
            backend.model.eval()
            shutil.rmtree(tmp, ignore_errors=True)
            del trainer, model
        out["seconds"].append(time.perf_counter() - t0)
    out.update(requests=len(items), mean_seconds=float(np.mean(out["seconds"])),
               train_tokens_per_s=out["train_tokens"] / max(out["train_seconds"], 1e-9),
               rss_mib=rss_mib())
    return out


def _padded_rows(tok: Any, sequences: Sequence[str], limit: int,
                 pad_to: int) -> dict[str, list[list[int]]]:
    """The lean loop's token ids (sequence + EOS, cut to ``limit``), padded to ``pad_to``."""
    encoded = [(ids + [tok.eos_token_id])[:limit]
               for ids in tok(list(sequences), add_special_tokens=False)["input_ids"] if ids]
    width = max([pad_to, *map(len, encoded)])  # a longer sequence widens every row
    rows: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": []}
    for ids in encoded:
        pad = width - len(ids)
        rows["input_ids"].append(ids + [tok.pad_token_id] * pad)
        rows["attention_mask"].append([1] * len(ids) + [0] * pad)
        rows["labels"].append(ids + [-100] * pad)
    return rows


# -- (d) generation, (e) profile ----------------------------------------------------------
def generation_rates(env: SelfEditEnv, prompts: list[str], max_new_tokens: int,
                     seed: int) -> dict[str, float]:
    """Completion tokens/s with every prompt in one call versus one prompt per call."""
    backend = env.backend
    out: dict[str, float] = {"prompts": len(prompts)}
    for name, chunks in (("batched", [prompts]), ("one_by_one", [[p] for p in prompts])):
        t0 = time.perf_counter()
        texts = [t for chunk in chunks
                 for t in backend.generate(chunk, max_new_tokens=max_new_tokens,
                                           temperature=0.7, seed=seed)]
        seconds = time.perf_counter() - t0
        tokens = sum(backend.count_tokens(t) for t in texts)
        out[f"{name}_tokens_per_s"] = tokens / seconds
        out[f"{name}_s"] = seconds
    return out


_OP_GROUPS = (  # profiler op name -> where the training time goes
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")),
    ("attention", ("scaled_dot_product", "aten::_softmax", "aten::softmax")),
    ("adapter routing (gather/scatter)", ("index_select", "index_add", "aten::index")),
    ("dtype casts and copies", ("aten::copy_", "aten::_to_copy", "aten::to")),
    ("loss (log-softmax over the vocabulary)", ("log_softmax", "nll_loss", "cross_entropy")),
    ("optimizer", ("Optimizer.step", "aten::_foreach", "aten::lerp", "aten::addcdiv")),
)


def profile_training(env: SelfEditEnv, items: list[tuple[Passage, Hyperparameters, list[str],
                                                          int]]) -> dict[str, Any]:
    """Where the joint training of ``items`` (one epoch each) spends its time, by operator
    group (self time), and the rate inside the matmuls alone."""
    from torch.profiler import ProfilerActivity, profile

    from selfedit.envs.update import AdapterRequest

    one = [AdapterRequest(s, Hyperparameters(**{**hp.to_dict(), "num_epochs": 1}), seed)
           for _, hp, s, seed in items]
    with env.update.adapted_many(env.backend, one):  # type: ignore[attr-defined]
        pass  # warm-up: kernels chosen, allocator pools filled
    with profile(activities=[ProfilerActivity.CPU]) as prof, \
            env.update.adapted_many(env.backend, one) as stats:  # type: ignore[attr-defined]
        pass
    shares: dict[str, float] = {name: 0.0 for name, _ in _OP_GROUPS}
    total = 0.0
    for event in prof.key_averages():
        seconds = event.self_cpu_time_total / 1e6
        total += seconds
        for name, keys in _OP_GROUPS:
            if any(k in event.key for k in keys):
                shares[name] += seconds
                break
    shares["other"] = total - sum(shares.values())
    tokens = sum(s.train_tokens for s in stats)
    params = base_parameters(env.backend.model)
    return {"adapters": len(items), "train_tokens": tokens, "seconds": total,
            "share": {k: v / total for k, v in shares.items()},
            "matmul_gflops": 4 * params * tokens / max(shares["matmul"], 1e-9) / 1e9}


# -- the benchmark ------------------------------------------------------------------------
_TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def run_inner_loop_bench(cfg: InnerLoopConfig, *, command: str = "",
                         log: Any = print) -> dict[str, Any]:
    """Run every measurement; write ``report.md`` and ``report.json``; return the report."""
    from selfedit.envs.precision import machine_precision, speed_flags
    from selfedit.training.innerloop_report import report_markdown
    from selfedit.training.provenance import machine_description

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    env = SelfEditEnv(model=cfg.model, dtype=cfg.dtype, corpus=cfg.corpus,
                      passages=cfg.passages, baseline_cache=None,
                      micro_batch_size=cfg.micro_batch_size,
                      completion_max_tokens=cfg.completion_max_tokens)
    dtype = env.backend.precision.dtype
    params = base_parameters(env.backend.model)
    report: dict[str, Any] = {
        "command": command, "config": asdict(cfg),
        "machine": {**machine_description(), **machine_precision(), "cpu_flags": speed_flags()},
        "threads": torch.get_num_threads(), "dtype": env.backend.precision.to_dict(),
        "base_parameters": params,
    }
    log(f"dtype {dtype} ({env.backend.precision.reason}); {torch.get_num_threads()} threads")
    peaks = {d: matmul_gflops(_TORCH_DTYPES[d], cfg.matmul_size, seconds=cfg.matmul_seconds)
             for d in sorted({"float32", dtype})}
    report["matmul_gflops_start"] = peaks
    log("matmul peak: " + ", ".join(f"{d} {g:.0f} GFLOP/s" for d, g in peaks.items()))

    work = evaluation_requests(env, cfg)
    for passage in env.corpus:
        env.baseline(passage)  # cached for every row alike: the rows time the same work
    report["work"] = {"templates": cfg.templates, "passages": [p.id for p in env.corpus],
                      "pairs": len(work)}
    rows: dict[int, dict[str, Any]] = {}
    for k in sorted(cfg.ks):
        log(f"(a) {len(work)} env evaluations, {k} per call")
        row = rows[k] = evaluate_in_blocks(env, work, k)
        log(f"  {row['seconds']:.1f} s, {row['evaluations_per_hour']:.0f} evaluations/hour,"
            f" mean reward {np.mean(row['rewards']):.3f}")
    sequential = rows[1]
    for row in rows.values():
        row["speedup"] = sequential["seconds"] / row["seconds"]
        row["vs_sequential"] = paired_difference(row["rewards"], sequential["rewards"])
    items = [(env.corpus[r.passage_idx[0]], r.action.hyperparameters,
              info["results"][0]["sequences"], r.seed)
             for (_, r), info in zip(work, sequential["infos"], strict=True)]
    for row in rows.values():
        row.pop("infos")
    report["evaluations"] = [rows[k] for k in sorted(rows)]

    _checkpoint(cfg, report, "a")
    big = max(cfg.ks)
    log(f"(b) inner loop on fixed sequences: lean K=1 and K={big}")
    report["inner_loop"] = {"lean": inner_loop(env, items, 1),
                            "batched": inner_loop(env, items, big)}
    n_ref = min(cfg.reference_requests, len(items))
    if n_ref:
        log(f"(b) SEAL-style reference on {n_ref} of the same requests (pad to {cfg.pad_to})")
        report["inner_loop"]["seal_style"] = seal_style_loop(env, items[:n_ref],
                                                             cfg.micro_batch_size, cfg.pad_to)
        report["inner_loop"]["reference_requests"] = n_ref

    _checkpoint(cfg, report, "b")
    log("(d) generation: batched versus one by one")
    prompts = [cfg_prompt(human_baseline(name).data_creation_instruction, p)
               for name in cfg.templates[:2] for p in env.corpus]
    report["generation"] = generation_rates(env, prompts[: min(8, len(prompts))],
                                            cfg.completion_max_tokens, cfg.seed)
    _checkpoint(cfg, report, "d")
    if cfg.profile:
        # Profiled at K <= 8: the profiler keeps every op's event, and at K=16 one epoch's
        # events (plus the model) grew past 24 GiB and the run was killed (2026-12-01).
        k_prof = min(big, 8, len(items))
        log(f"(e) profile: K=1 and K={k_prof} training, one epoch each")
        report["profile"] = [profile_training(env, items[:1]),
                             profile_training(env, items[:k_prof])]
    report["peak_rss_mib"] = peak_rss_mib()
    # The peak is read again at the end and the higher kept: on a shared machine one
    # reading can be low, which would flatter every FLOP fraction.
    end = {d: matmul_gflops(_TORCH_DTYPES[d], cfg.matmul_size, seconds=cfg.matmul_seconds)
           for d in peaks}
    report["matmul_gflops_end"] = end
    report["matmul_gflops"] = {d: max(peaks[d], end[d]) for d in peaks}
    out = _write_json(cfg, report)
    text = report_markdown(report)
    (out / "report.md").write_text(text)
    log("\n" + text)
    log(f"written: {out / 'report.md'}, {out / 'report.json'}")
    return report


def _write_json(cfg: InnerLoopConfig, report: dict[str, Any]) -> Path:
    """Write ``report`` to ``<output>/report.json``; return the output directory."""
    from selfedit.training.jsonio import write_json_atomic

    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "report.json", report)
    return out


def _checkpoint(cfg: InnerLoopConfig, report: dict[str, Any], section: str) -> None:
    """Write what is measured so far to ``report.json`` (``partial`` names the last section
    done), so a run killed later (out of memory, out of time) keeps its measurements; the
    finished run overwrites it with the whole report."""
    _write_json(cfg, {**report, "partial": section})


def rebuild_report(directory: Path) -> str:
    """Rewrite ``directory/report.md`` from its ``report.json``; return the Markdown."""
    from selfedit.training.innerloop_report import report_markdown

    path = Path(directory) / "report.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {directory} an inner-loop report"
                                " directory (selfedit bench inner-loop --output ...)?")
    text = report_markdown(json.loads(path.read_text()))
    (Path(directory) / "report.md").write_text(text)
    return text
