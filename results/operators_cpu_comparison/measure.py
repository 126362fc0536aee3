"""Peak memory and time of one evaluation per update operator (issue 16), embedded model.

Each operator runs in its own process (memory a process freed is not always returned to the
OS, so one process per operator keeps the numbers apart). In each: load the env (embedded
model, dtype auto), prepare the operator (the SVDs from the disk cache for svd), then train on
one passage with the operator's default hyperparameters and answer its questions, while a
thread samples the resident set size every 5 ms. Run from the repository root:

    OMP_NUM_THREADS=1 python results/operators_cpu_comparison/measure.py

It writes memory.json and memory.md beside this file.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OPERATORS = ("lora", "full", "svd")
PASSAGE = 0


def _gb(n: float) -> float:
    return round(n / 2**30, 3)


def one(operator: str) -> dict:
    import psutil
    import torch

    from selfedit.envs.selfedit_env import SelfEditEnv
    from selfedit.envs.templates import hyperparameters_class

    torch.set_num_threads(1)
    proc = psutil.Process()
    env = SelfEditEnv(model="embedded", dtype="auto", operators=list(OPERATORS),
                      baseline_cache=None)
    op = env.operator(operator)
    extra: dict = {"dtype": env.backend.precision.dtype}
    if operator == "svd":
        factors = op.prepare(env.backend)
        extra["svd_source"] = factors.source
        extra["svd_seconds"] = round(factors.seconds, 2)
        held = sum(t.numel() * t.element_size() for d in (factors.u, factors.s, factors.vh)
                   for t in d.values())
        extra["svd_factor_gb"] = _gb(held)
    passage = env.corpus[PASSAGE]
    env.baseline(passage)  # the base model's answers, outside the measured window
    hp = hyperparameters_class(operator)()
    sequences = [f"{passage.title}\n{passage.context}"]
    loaded = proc.memory_info().rss
    peak = [loaded]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    result = env.evaluate_sequences(passage, hp, sequences, seed=0)
    seconds = time.perf_counter() - start
    stop.set()
    thread.join()
    if operator == "full":  # the host copy out and back, timed by the operator itself
        before = env.base_checksum()
        with op.adapted(env.backend, sequences, hp, seed=0) as stats:
            pass
        extra.update(snapshot_s=round(stats.snapshot_s, 3), restore_s=round(stats.restore_s, 3),
                     trained_parameters=stats.trained_parameters,
                     base_bit_identical=env.base_checksum() == before)
    return {
        "operator": operator,
        "hyperparameters": hp.to_dict(),
        "rss_loaded_gb": _gb(loaded),
        "rss_peak_gb": _gb(peak[0]),
        "extra_gb": _gb(peak[0] - loaded),
        "evaluation_s": round(seconds, 1),
        "train_s": round(float(result.timings["train_s"]), 1),
        "answer_s": round(float(result.timings["answer_s"]), 1),
        "accuracy": result.accuracy,
        "loss_first": result.update["loss_first"],
        "loss_last": result.update["loss_last"],
        **extra,
    }


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        print("RESULT " + json.dumps(one(sys.argv[2])), flush=True)
        return
    rows = []
    for operator in OPERATORS:
        out = subprocess.run([sys.executable, __file__, "--one", operator], check=True,
                             capture_output=True, text=True).stdout
        line = next(x for x in out.splitlines() if x.startswith("RESULT "))
        rows.append(json.loads(line[len("RESULT "):]))
        print(rows[-1], flush=True)
    (HERE / "memory.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["| operator | RSS loaded (GB) | peak RSS in the evaluation (GB) | extra (GB) |"
             " evaluation s | train s | answer s | notes |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        notes = []
        if r["operator"] == "full":
            notes.append(f"{r['trained_parameters'] / 1e6:.1f}M parameters trained; host copy"
                         f" {r['snapshot_s']} s out, {r['restore_s']} s back; base"
                         f" bit-identical: {r['base_bit_identical']}")
        if r["operator"] == "svd":
            notes.append(f"SVD factors {r['svd_factor_gb']} GB held ({r['svd_source']},"
                         f" {r['svd_seconds']} s, outside the evaluation)")
        lines.append(f"| {r['operator']} | {r['rss_loaded_gb']} | {r['rss_peak_gb']} |"
                     f" {r['extra_gb']} | {r['evaluation_s']} | {r['train_s']} |"
                     f" {r['answer_s']} | {'; '.join(notes)} |")
    (HERE / "memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
