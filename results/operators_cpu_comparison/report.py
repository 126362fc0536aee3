"""The operator comparison and the CPT run side by side (issue 16), from the committed runs.

Reads the two run directories (``selfedit run --config configs/operators_cpu.yaml`` and
``configs/cpt_cpu.yaml``) and ``memory.json`` (``measure.py`` here), and writes report.md.
Intervals: Student-t over passages (``selfedit.training.stats.mean_ci``); differences:
paired bootstrap over the same passages (``paired_bootstrap``, 10,000 resamples). Run from
the repository root:

    python results/operators_cpu_comparison/report.py
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from selfedit.training.stats import mean_ci, paired_bootstrap

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent
SINGLE = RESULTS / "operators_cpu__0__20261201-135534"
POOLED = RESULTS / "cpt_cpu__0__20261201-141237"
AGENTS = ("passage-lora", "passage-full", "passage-svd")
# Trainable tensors per update on SmolLM2-135M (30 blocks, 7 target projections per block):
# LoRA r=32 on q,k,v,o,gate,up,down; every parameter; one scale per singular value.
TRAINED = {"passage-lora": "9.8M (LoRA r=32)", "passage-full": "134.5M (all)",
           "passage-svd": "0.098M (one z per singular value)"}


READING = """## Reading (written for the committed runs)

- **Full fine-tuning** matched LoRA on one passage (0.249 vs 0.214, paired difference +0.035,
  interval [-0.078, +0.159]: within noise on 8 passages) at about twice the time per
  evaluation (training all 134.5M parameters: AdamW over float32 master weights) and 2.5x
  LoRA's extra memory (2.8 GB: gradients, AdamW state, float32 masters, the host restore
  copy). The copy out and back costs 0.1 s each way for the whole model and restores it
  bit-identically. It answers faster than LoRA (no adapter hooks in the forward pass), and it
  did not fit the passage text as tightly (final loss 0.16 vs 0.05).
- **Singular-value scales** (Transformer²) trained 100x fewer numbers than LoRA and fitted
  the passage text as tightly (final loss 0.03), yet answered far worse (0.045, -0.169
  against LoRA, interval [-0.216, -0.121]). Our reading, not tested further: rescaling the
  model's existing singular directions fits the passage's wording without making its facts
  retrievable by a question; the answers stay fluent and on topic but mix up the facts
  (steps.jsonl: "drain the rivers Sillow and Sillow Creek" for "River Sillow"). On this
  task it buys the smallest
  update (0.4 MB of z per adapter) at the price of accuracy; the projections in the hooks
  make answering ~1.5x slower than LoRA's. Its one-off cost is the SVD (37 s for the 135M
  model, 1.9 s from the disk cache); its loaded RSS includes the float32 factors read from
  disk, freed after conversion to bf16 but kept by the allocator.
- **Pooling 4 passages into one update** (SEAL's continued-pretraining setting) lost most of
  the single-passage accuracy for LoRA (-0.157) and full fine-tuning (-0.159); full
  fine-tuning stayed ahead (0.090 vs 0.057, within noise on 8 passages). With the
  template's 10 epochs and micro-batches of 4, a pooled update takes the same 10 optimizer
  steps as a single-passage one, 2.5 per passage: the pooled setting asks more of the same
  budget (more epochs or smaller micro-batches are the next thing to try). A pooled step
  costs ~4x a single passage's training.
"""


def steps(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]


def per_passage(run: Path, agent: str) -> dict[str, dict]:
    """passage id -> accuracy, questions, F1 and the step's timings / update."""
    out = {}
    for record in steps(run):
        if record["agent"] != agent:
            continue
        for r in record["results"]:
            out[r["passage_id"]] = {"accuracy": r["accuracy"], "f1": r["metrics"]["f1"],
                                    "questions": len(r["questions"]), "update": r["update"],
                                    "step": record}
    return out


def fmt(ci) -> str:
    return f"{ci.mean:.3f} [{ci.low:.3f}, {ci.high:.3f}]"


def main() -> None:
    single = {a: per_passage(SINGLE, a) for a in AGENTS}
    pooled = {a: per_passage(POOLED, a) for a in AGENTS}
    ids = sorted(single[AGENTS[0]])
    lines = ["# Update operators on the CPU: LoRA vs full fine-tuning vs singular values",
             "",
             "Embedded SmolLM2-135M-Instruct (bf16 on this CPU, `dtype: auto`), embedded"
             f" passages {ids[0]}..{ids[-1]} ({len(ids)} passages,"
             f" {sum(single[AGENTS[0]][p]['questions'] for p in ids)} questions), one template"
             " (train on the passage itself), `contains` grader, each operator with its"
             " default hyperparameters (LoRA r=32, alpha 64, lr 1e-3, 10 epochs; full lr 1e-4,"
             " 10 epochs; svd lr 2e-2, 10 epochs). OMP_NUM_THREADS=1 on a 2-core machine"
             " shared with other jobs (load ~5): seconds are noisy, accuracies are not"
             " (steps are deterministic for a seed).",
             "",
             "## One passage per update (`configs/operators_cpu.yaml`)",
             "",
             "| operator | accuracy [95% CI over passages] | F1 | vs LoRA (paired bootstrap)"
             " | train s | answer s | s/evaluation | final loss | trained tensors |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    base = [single["passage-lora"][p]["accuracy"] for p in ids]
    for agent in AGENTS:
        rows = [single[agent][p] for p in ids]
        acc = [r["accuracy"] for r in rows]
        vs = "-" if agent == "passage-lora" else (
            lambda b: f"{b.mean_diff:+.3f} [{b.low:+.3f}, {b.high:+.3f}], p={b.p_value:.2f}")(
            paired_bootstrap(acc, base))
        timing = [r["step"]["timings"] for r in rows]
        lines.append(
            f"| {agent.split('-')[1]} | {fmt(mean_ci(acc))} |"
            f" {statistics.mean(r['f1'] for r in rows):.3f} | {vs} |"
            f" {statistics.median(t['train_s'] for t in timing):.1f} |"
            f" {statistics.median(t['answer_s'] for t in timing):.1f} |"
            f" {statistics.median(t['step_s'] for t in timing):.1f} |"
            f" {statistics.mean(r['update']['loss_last'] for r in rows):.3f} |"
            f" {TRAINED[agent]} |")
    lines += ["",
              "Seconds are medians over the 8 steps (the first svd step also computed the"
              " model's SVDs once; they are cached on disk after it).",
              "",
              "## Four passages pooled into one update (`configs/cpt_cpu.yaml`)",
              "",
              "The same template and passages; each step's 4 passages train one update, which"
              " answers all their questions (2 updates per operator). Per-passage accuracy under"
              " the pooled update, next to the same passage's accuracy with its own update:",
              "",
              "| operator | single passage [95% CI] | pooled n=4 [95% CI] | pooled - single"
              " (paired bootstrap) | reward per pooled step | s per pooled step | optimizer"
              " steps per passage: single / pooled |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for agent in AGENTS:
        one = [single[agent][p]["accuracy"] for p in ids]
        four = [pooled[agent][p]["accuracy"] for p in ids]
        diff = paired_bootstrap(four, one)
        records = [r for r in steps(POOLED) if r["agent"] == agent]
        rewards = ", ".join(f"{r['reward']:.3f}" for r in records)
        seconds = statistics.mean(r["timings"]["step_s"] for r in records)
        opt_single = statistics.mean(single[agent][p]["update"]["optimizer_steps"] for p in ids)
        opt_pooled = statistics.mean(r["results"][0]["update"]["optimizer_steps"]
                                     for r in records)
        lines.append(f"| {agent.split('-')[1]} | {fmt(mean_ci(one))} | {fmt(mean_ci(four))} |"
                     f" {diff.mean_diff:+.3f} [{diff.low:+.3f}, {diff.high:+.3f}],"
                     f" p={diff.p_value:.2f} | {rewards} | {seconds:.0f} |"
                     f" {opt_single:.0f} / {opt_pooled / 4:.1f} |")
    memory = HERE / "memory.json"
    if memory.exists():
        lines += ["", "## Memory and time of one evaluation (`measure.py`)", "",
                  (HERE / "memory.md").read_text().rstrip()]
    lines += ["", READING]
    (HERE / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
