"""The inner-loop benchmark's report: tables, ratios and the issue's targets, met or missed.

Built from ``report.json`` alone (``selfedit bench inner-loop --report-only DIR``), so a
report can be re-rendered without a model.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["BATCH_TARGET", "RATIO_TARGET", "report_markdown"]

BATCH_TARGET = 1.6  # issue 11: K=8 at >= 1.6x the sequential evaluations per hour
BATCH_TARGET_K = 8
RATIO_TARGET = 20.0  # issues 6 and 11: the inner loop >= 20x faster than the reference


def _flop_fraction(tokens_per_s: float, params: int, peak: float) -> float:
    return 4 * params * tokens_per_s / 1e9 / peak


def report_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: the headline tables first, then levers and targets."""
    m = report["machine"]
    dtype = report["dtype"]["dtype"]
    peaks = report["matmul_gflops"]
    peak = peaks.get(dtype, peaks["float32"])
    params = report["base_parameters"]
    work = report["work"]
    lines = [
        "# Inner-loop benchmark",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {m.get('cpu', '?')}, {m.get('cpus')} cores, {report['threads']} torch"
        f" threads; torch {m.get('torch', '?')}; CPU capability {m.get('cpu_capability')};"
        f" flags: {', '.join(m.get('cpu_flags', [])) or '?'}  ",
        f"Precision: **{dtype}** ({report['dtype']['reason']})  ",
        "Matmul peak (the higher of a reading at the start and one at the end): "
        + ", ".join(f"{d} {g:.0f} GFLOP/s" for d, g in peaks.items()),
        "",
        f"Work: {work['pairs']} (template, passage) evaluations: templates"
        f" {', '.join(work['templates'])} on passages {', '.join(work['passages'])};"
        f" base model {params / 1e6:.1f} M parameters.",
        "",
        "## (a) Env evaluations per hour, K per batched call",
        "",
        "Each evaluation completes the template on the passage, trains a fresh LoRA, answers"
        " the passage's questions closed-book and grades them (baselines cached). K=1 is the"
        " sequential lean loop; K>1 is the vector env's step (one generate for the"
        " completions, the adapters trained together, one generate for the answers).",
        "",
        "| K | seconds | evaluations / hour | speedup vs K=1 | mean reward |"
        " reward - K=1 (mean, 95% CI) | identical rewards |",
        "|---:|---:|---:|---:|---:|---|---:|",
    ]
    for row in report["evaluations"]:
        d = row["vs_sequential"]
        lines.append(
            f"| {row['k']} | {row['seconds']:.1f} | {row['evaluations_per_hour']:.0f} |"
            f" {row['speedup']:.2f}x | {np.mean(row['rewards']):.3f} |"
            f" {d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] |"
            f" {d['identical']}/{d['pairs']} |")
    if all("phases" in row for row in report["evaluations"]):
        lines += [
            "",
            "Where the time went (seconds over the 'seconds' column's work; training is each"
            " call's joint pass; training tokens differ between rows when sampled completions"
            " do):",
            "",
            "| K | completion s | training s | answering s | other s | training tokens |"
            " training tokens / s |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in report["evaluations"]:
            ph = row["phases"]
            other = row["seconds"] - ph["complete_s"] - ph["train_s"] - ph["answer_s"]
            lines.append(
                f"| {row['k']} | {ph['complete_s']:.1f} | {ph['train_s']:.1f} |"
                f" {ph['answer_s']:.1f} | {other:.1f} | {row['train_tokens']:,} |"
                f" {row['train_tokens'] / max(ph['train_s'], 1e-9):.0f} |")
    inner = report["inner_loop"]
    lines += [
        "",
        "## (b) The inner loop on fixed sequences, and a SEAL-style reference",
        "",
        "Train, answer, grade on the sequences of (a)'s K=1 evaluations. The reference builds"
        " a PEFT model and a transformers Trainer per request, pads every sequence to"
        f" {report['config']['pad_to']} tokens and answers the baseline again every time.",
        "",
        "| loop | requests | s / request | train tokens/s | FLOP fraction | accuracy |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    loops = [("lean, K=1", inner["lean"]), (f"lean, K={inner['batched']['k']} (batched)",
                                             inner["batched"])]
    if "seal_style" in inner:
        loops.append(("SEAL-style", inner["seal_style"]))
    for name, loop in loops:
        lines.append(
            f"| {name} | {loop['requests']} | {loop['mean_seconds']:.2f} |"
            f" {loop['train_tokens_per_s']:.0f} |"
            f" {_flop_fraction(loop['train_tokens_per_s'], params, peak):.2f} |"
            f" {np.mean(loop['accuracy']):.3f} |")
    ratios = _ratios(inner)
    if ratios:
        lines += ["", f"Ratio SEAL-style / lean on the same {inner['reference_requests']}"
                  f" request(s): **{ratios['lean']:.1f}x** at K=1,"
                  f" **{ratios['batched']:.1f}x** amortised at K={inner['batched']['k']}."
                  " Reference stages (s): " + ", ".join(
                      f"{k[:-2]} {v:.1f}" for k, v in inner["seal_style"]["stages"].items())]
    g = report.get("generation")
    if g:
        lines += ["", "## (c) Generation", "",
                  f"Template completion, {g['prompts']} prompts: batched"
                  f" **{g['batched_tokens_per_s']:.1f} tokens/s** ({g['batched_s']:.1f} s),"
                  f" one by one {g['one_by_one_tokens_per_s']:.1f} tokens/s"
                  f" ({g['one_by_one_s']:.1f} s): {g['one_by_one_s'] / g['batched_s']:.1f}x."]
    for prof in report.get("profile", []):
        share = ", ".join(f"{k} {v:.0%}" for k, v in prof["share"].items())
        lines += ["", f"Where one epoch of training {prof['adapters']} adapter(s) together"
                  f" spends its time (torch profiler, self time): {share}. Inside the matmuls"
                  f" the rate is {prof['matmul_gflops']:.0f} GFLOP/s"
                  f" ({prof['matmul_gflops'] / peak:.0%} of the {peak:.0f} GFLOP/s peak)."]
    lines += ["", f"Peak resident memory: {report['peak_rss_mib']:.0f} MiB (the reference,"
              " with its padded activations, included)."]
    lines += _targets(report, ratios)
    lines += ["", "Training tokens/s: real (unpadded) tokens over the wall time of training"
              " (for K adapters trained together, their tokens over the joint time). FLOP"
              " fraction = 4 x base parameters x training tokens/s / matmul peak of the"
              " precision. Rewards and accuracy: the env's reward grader.", ""]
    return "\n".join(lines)


def _ratios(inner: dict[str, Any]) -> dict[str, float]:
    if "seal_style" not in inner:
        return {}
    n = inner["reference_requests"]
    ref = float(np.mean(inner["seal_style"]["seconds"]))
    return {"lean": ref / float(np.mean(inner["lean"]["seconds"][:n])),
            "batched": ref / float(np.mean(inner["batched"]["seconds"][:n]))}


def _targets(report: dict[str, Any], ratios: dict[str, float]) -> list[str]:
    """The issue's targets, met or missed, with the measured reasons."""
    lines = ["", "## Targets"]
    rows = {r["k"]: r for r in report["evaluations"]}
    k = BATCH_TARGET_K if BATCH_TARGET_K in rows else max(rows)
    row = rows[k]
    d = row["vs_sequential"]
    equal = d["low"] <= 0 <= d["high"]
    met = row["speedup"] >= BATCH_TARGET and equal
    prof = report.get("profile", [])
    why = ""
    if len(prof) == 2:
        one, many = prof
        peak = float(report.get("matmul_gflops", {}).get(report["dtype"]["dtype"], 0.0))
        at_peak = f" ({many['matmul_gflops'] / peak:.0%} of the peak)" if peak else ""
        why = (f" Measured: in training the matmuls take {one['share']['matmul']:.0%} of the"
               f" time at K=1 and {many['share']['matmul']:.0%} at K={many['adapters']},"
               f" running at {one['matmul_gflops']:.0f} and {many['matmul_gflops']:.0f}"
               f" GFLOP/s{at_peak}; the rest of the training time is attention, casts,"
               " the loss and other per-op work, which batching shares only in part. Where"
               " each row's time went (completion, training, answering) is section (a)'s"
               " second table when the run recorded it.")
    lines += ["", f"- K={k} batched >= {BATCH_TARGET}x the sequential evaluations/hour with"
              f" equal rewards: **{'met' if met else 'missed'}** ({row['speedup']:.2f}x;"
              f" rewards {d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] vs K=1,"
              f" {d['identical']}/{d['pairs']} identical)." + why]
    if ratios:
        verdict = "met" if max(ratios.values()) >= RATIO_TARGET else "missed"
        lines += ["", f"- Lean loop >= {RATIO_TARGET:.0f}x faster than the SEAL-style"
                  f" reference on the same requests: **{verdict}**"
                  f" ({ratios['lean']:.1f}x at K=1, {ratios['batched']:.1f}x batched)."]
    return lines
