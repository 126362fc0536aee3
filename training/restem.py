"""ReST-EM on the template policy: sample -> score with the env -> keep the best -> SFT -> repeat.

``selfedit train --config configs/restem_cpu.yaml`` lands here. TRL has no ReST-EM trainer
(DESIGN.md); one iteration is (SEAL, arXiv 2506.10943, sec. 3.1; template search, arXiv
2601.14532):

1. **E-step, sample**: the policy writes K templates from the meta-prompt (the env's
   observation; the reply starts inside the JSON object, as :class:`MetaPromptAgent` does).
2. **E-step, score**: each template is one env step on every training passage, with M
   completions per passage (``env.completions_per_passage``); each (template, passage) gives
   the mean accuracy over its completions and each completion its own accuracy.
3. **Filter**: per passage the ``keep_per_passage`` best templates (only those with a
   positive gain over the no-adapter baseline when ``positive_gain_only``), and for each its
   ``completions_kept`` best completions.
4. **M-step**: TRL's ``SFTTrainer`` trains a LoRA on the policy with two kinds of
   prompt -> completion examples: (meta-prompt -> winning template JSON) and (completion
   prompt with the passage -> winning completion). The LoRA is saved, then **merged** into
   the policy weights, so the next iteration samples from (and, in self mode, completes
   with and adapts) the updated model, and the env's per-step LoRA goes on top of plain
   weights as before.

**Self mode** (``mode: self``, the papers' setting): the policy is the env's own model, so an
update changes the template writer, the completer and the adapted model at once; the env's
baseline cache key follows the new weights (``env.rebase()``).
**ARC** (``env_id: selfedit/ARC-v0``, SEAL sec. 4.1): the policy writes K *recipes* per
training task from that task's observation (its demonstrations), each is one env step on its
task (reward 1 if solved), the winners are the recipes that solved their task (with
``positive_gain_only``: that the model did not solve in context; ``min_reward: 1`` keeps
solves only), and the M-step trains (task prompt -> recipe). Held-out tasks get a greedy and
``heldout_samples`` sampled recipes each, next to the ARC baseline recipes.
**Separate mode** (``mode: separate`` + ``policy_model``): the policy is another model; the
env's model is never trained, so only (meta-prompt -> template) examples are used.

Every iteration ends with a held-out evaluation (one greedy and ``heldout_samples`` sampled
templates on passages disjoint from the training ones) next to the human baselines on the
same passages, and a checkpoint; ``--resume`` continues a killed run without repeating any
finished env evaluation. The shared parts live beside this file: the config fields of every
policy run (:mod:`~selfedit.training.policy_config`), sampling (:mod:`~selfedit.training
.policy`), scoring and its cache (:mod:`~selfedit.training.evaluation`) and the M-step
(:mod:`~selfedit.training.sft`).

Size (~510 lines): one ReST-EM iteration (sample, evaluate, filter, fine-tune, held-out
evaluation, resume) reads top to bottom; its config is in this file for the same reason.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from selfedit.envs.backend import check_model_source
from selfedit.envs.config import ConfigError
from selfedit.envs.corpus import Corpus
from selfedit.envs.selfedit_env import cfg_prompt
from selfedit.training.checkpoint import (
    apply_adapter,
    latest_checkpoint,
    rng_state,
    set_rng_state,
    write_checkpoint,
)
from selfedit.training.env_kinds import ARC_ENV_ID, SQUAD_ENV_ID
from selfedit.training.evaluation import (
    EvalCache,
    Evaluation,
    Evaluator,
    baseline_eval,
    heldout_eval,
    heldout_table,
    shorten,
)
from selfedit.training.experiment import param
from selfedit.training.policy import Sample, TemplatePolicy, after_update, load_policy
from selfedit.training.policy_config import (
    PolicyRunConfig,
    load_train_config,
    policy_items,
)
from selfedit.training.rundir import RunDir
from selfedit.training.sft import SFTExample, SFTSettings, sft_update

__all__ = ["RestemConfig", "load_train_config", "select_winners", "train_restem"]

TRAIN_ON = ("templates", "completions")


@dataclass
class RestemConfig(PolicyRunConfig):
    """A ReST-EM run on the template policy (``algorithm: restem``)."""

    where: ClassVar[str] = "restem"
    env_ids: ClassVar[tuple[str, ...]] = (SQUAD_ENV_ID, ARC_ENV_ID)

    algorithm: str = param("restem")
    name: str = param("restem")
    iterations: int = param(2, "ReST-EM iterations (sample, score, filter, SFT)")
    templates_per_iteration: int = param(4, "K: templates sampled from the policy per "
                                         "iteration")
    keep_per_passage: int = param(1, "templates kept per training passage (the best by "
                                  "reward)")
    completions_kept: int = param(1, "completions kept per kept (template, passage)")
    positive_gain_only: bool = param(True, "keep only templates (and completions) whose "
                                     "accuracy beats the passage's no-adapter baseline")
    min_reward: float | None = param(None, "keep only templates whose reward is at least "
                                     "this (ARC: 1.0 keeps the recipes that solved their "
                                     "task); null = no floor")
    train_on: list[str] | None = param(None, "example kinds for SFT: 'templates' (meta-prompt "
                                       "-> template JSON) and 'completions' (completion prompt "
                                       "-> completion, self mode only); null = both in self "
                                       "mode, templates in separate mode")
    baselines_every_iteration: bool = param(False, "re-evaluate the baselines after every "
                                            "iteration (in self mode their completer "
                                            "changes); false = once, with the initial model")
    eval_before_training: bool = param(True, "held-out evaluation of the initial policy "
                                       "(iteration 0)")
    max_retries: int = param(2, "extra attempts when a reply is not a valid template (a reply "
                             "that stays invalid scores env.invalid_reward)")
    sft: SFTSettings = param(factory=SFTSettings, help="SFT settings (the M-step)")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("iterations", "templates_per_iteration", "keep_per_passage",
                     "completions_kept"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_retries < 0:
            raise ConfigError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.heldout_passages is None:
            raise ConfigError("ReST-EM evaluates the policy on held-out passages after every "
                              "iteration: set heldout_passages (e.g. '4:8')")
        if self.train_on is not None:
            bad = [k for k in self.train_on if k not in TRAIN_ON]
            if bad or not self.train_on:
                raise ConfigError(f"train_on must list some of {list(TRAIN_ON)}, got "
                                  f"{self.train_on}")
            if self.mode == "separate" and "completions" in self.train_on:
                raise ConfigError("train_on 'completions' needs mode: self (in separate mode "
                                  "the env's model completes templates, and it is not trained)")
            allowed = self.env_kind.example_kinds
            if any(k not in allowed for k in self.train_on):
                raise ConfigError(f"train_on {self.train_on}: {self.env_id} trains on "
                                  f"{list(allowed)} only (a recipe has no completion step)")

    @property
    def example_kinds(self) -> list[str]:
        if self.train_on is not None:
            return list(self.train_on)
        kinds = list(TRAIN_ON) if self.mode == "self" else ["templates"]
        return [k for k in kinds if k in self.env_kind.example_kinds]


# --- the filter: per passage the best templates and their best completions -----------------
def select_winners(samples: list[Sample], scores: list[list[Evaluation | None]],
                   corpus: Corpus | None, *, keep: int, completions_kept: int,
                   positive_gain_only: bool, kinds: list[str], meta_prompt: str,
                   prompts: list[str] | None = None,
                   min_reward: float | None = None) -> tuple[list[SFTExample], list[dict]]:
    """ReST-EM's filter. ``scores[k][p]``: template k on training passage p (None where
    template k was not evaluated on p: on ARC each recipe is scored on its own task only).

    ``prompts[k]`` is the prompt template k was written from (default ``meta_prompt`` for
    all), the SFT prompt of its example. Returns the SFT examples and a record of what was
    kept (passage, template, reward). Ties keep the earlier template; invalid templates,
    failed steps and rewards under ``min_reward`` are never kept.
    """
    examples: list[SFTExample] = []
    kept: list[dict] = []
    for p in range(len(scores[0]) if scores else 0):
        ranked = sorted(
            (k for k in range(len(samples)) if samples[k].valid and scores[k][p] is not None
             and scores[k][p].error is None),
            key=lambda k: -scores[k][p].reward,
        )
        if positive_gain_only:
            ranked = [k for k in ranked if (scores[k][p].gain or 0.0) > 0]
        if min_reward is not None:
            ranked = [k for k in ranked if scores[k][p].reward >= min_reward]
        for k in ranked[:keep]:
            ev = scores[k][p]
            template = samples[k].template
            assert template is not None and ev is not None
            kept.append({"passage": ev.passage_id, "template": k, "reward": ev.reward,
                         "gain": ev.gain})
            if "templates" in kinds:
                prompt = meta_prompt if prompts is None else prompts[k]
                examples.append(SFTExample("templates", prompt, samples[k].text))
            if "completions" not in kinds or not template.data_creation_instruction.strip():
                continue
            assert corpus is not None, "completion examples need the passages"
            outs = sorted(ev.completions, key=lambda c: -c["accuracy"])
            if positive_gain_only:
                outs = [c for c in outs if c["gain"] > 0]
            passage = corpus[ev.passage_index]
            for c in outs[:completions_kept]:
                if c["completion"].strip():
                    examples.append(SFTExample(
                        "completions", cfg_prompt(template.data_creation_instruction, passage),
                        c["completion"]))
    return examples, kept


# --- one iteration -----------------------------------------------------------------------
def restem_iteration(cfg: RestemConfig, iteration: int, policy: TemplatePolicy,
                     env: Any, evaluator: Evaluator, train: list[int],
                     heldout: list[int], run_dir: Path) -> dict[str, Any]:
    """One ReST-EM iteration: sample, score, filter, SFT + merge, held-out evaluation.

    The policy writes K templates per prompt group of the env's kind: one group (the
    meta-prompt, every template scored on every training passage) on SQuAD, one per task
    (its observation, each recipe scored on its task) on ARC.
    """
    t0 = time.perf_counter()
    steps_before = evaluator.steps
    record: dict[str, Any] = {"iteration": iteration,
                              "policy_fingerprint": policy.backend.fingerprint}
    k_per = cfg.templates_per_iteration
    groups = evaluator.kind.prompt_groups(env, train, policy.prompt)
    print(f"iteration {iteration}: sampling {k_per * len(groups)} "
          f"{'templates' if len(groups) == 1 else f'{evaluator.kind.action_key}s'}", flush=True)

    # E-step: sample K templates per group, one batched call (seeded by the iteration: a
    # resumed run gets the same ones), each scored on its group's passages.
    samples = policy.sample_prompts([prompt for prompt, _ in groups for _ in range(k_per)],
                                    seed=cfg.seed * 1000 + iteration)  # (G * K,)
    prompts = [prompt for prompt, _ in groups for _ in range(k_per)]
    items = [g_items for _, g_items in groups for _ in range(k_per)]  # each sample's items
    flat = evaluator.evaluate_many([(s, p) for s, its in zip(samples, items, strict=True)
                                    for p in its])  # batched
    rows: list[list[Evaluation]] = []
    for its in items:
        rows.append(flat[:len(its)])
        flat = flat[len(its):]
    # The groups' items, in order, are the training passages: group g's sit at the
    # positions after the groups before it. scores[k][p]: None where k was not scored on p.
    scores: list[list[Evaluation | None]] = []  # (S, P)
    offset = 0
    for g, (_, g_items) in enumerate(groups):
        for k in range(g * k_per, (g + 1) * k_per):
            scores.append([None] * offset + list(rows[k])
                          + [None] * (len(train) - offset - len(g_items)))
        offset += len(g_items)
    rewards = np.array([[e.reward for e in row] for row in rows])  # (S, items per sample)
    record["templates"] = [
        {"index": k, "template": s.text, "valid": s.valid, "mean_reward": float(rewards[k].mean()),
         "rewards": {e.passage_id: e.reward for e in rows[k]}}
        for k, s in enumerate(samples)
    ]
    gains = [e.gain for row in rows for e in row if e.gain is not None]
    record.update({
        "reward/mean": float(rewards.mean()),
        "reward/max": float(rewards.max()),
        "reward/best_template": float(rewards.mean(axis=1).max()),
        "reward/invalid_templates": sum(not s.valid for s in samples),
        "reward/positive_gain": sum(g > 0 for g in gains),
        "rewards": rewards.tolist(),
    })
    valid = [s.template for s in samples if s.template is not None]
    if valid:
        from selfedit.training.collapse import distinct_configs, hyperparameter_similarity

        hps = [t.hyperparameters.to_dict() for t in valid]
        record["collapse/hyperparameter_similarity"] = hyperparameter_similarity(hps)
        record["collapse/distinct_configs"] = distinct_configs(hps)

    # Filter + M-step.
    examples, kept = select_winners(
        samples, scores, getattr(env, "corpus", None), keep=cfg.keep_per_passage,
        completions_kept=cfg.completions_kept, positive_gain_only=cfg.positive_gain_only,
        kinds=cfg.example_kinds, meta_prompt=policy.prompt, prompts=prompts,
        min_reward=cfg.min_reward)
    record["kept"] = kept
    if examples:
        work = run_dir / "sft" / f"iter_{iteration:03d}"
        print(f"iteration {iteration}: SFT on {len(examples)} examples "
              f"({sum(e.kind == 'templates' for e in examples)} template,"
              f" {sum(e.kind == 'completions' for e in examples)} completion)", flush=True)
        result = sft_update(policy.backend, examples, cfg.sft, seed=cfg.seed + iteration,
                            work_dir=work)
        record["sft"] = {"examples": result.examples, "losses": result.losses,
                         "loss_first": result.loss_first, "loss_last": result.loss_last,
                         "seconds": result.seconds, "adapter_dir": result.adapter_dir,
                         "template_examples": sum(e.kind == "templates" for e in examples),
                         "completion_examples": sum(e.kind == "completions" for e in examples)}
        record["policy_fingerprint_after"] = after_update(cfg, env, policy.backend)
    else:
        print(f"iteration {iteration}: no winners (no {evaluator.kind.action_key} beat the "
              "baseline); the policy is unchanged", flush=True)
        record["sft"] = None
        record["policy_fingerprint_after"] = policy.backend.fingerprint

    # Held-out evaluation of the updated policy, next to the baselines.
    record["heldout"] = heldout_eval(policy, evaluator, heldout, samples=cfg.heldout_samples,
                                     seed=cfg.seed + 7)
    if cfg.baselines_every_iteration:
        record["baselines"] = baseline_eval(evaluator, heldout, cfg.baselines)
    record["env_steps"] = evaluator.steps - steps_before
    record["time_s"] = time.perf_counter() - t0
    return record


# --- the run: passages, run directory, env, policy, loop, summary --------------------------
def train_restem(cfg: RestemConfig, *, resume: Path | None = None, env: Any = None,
                 policy_backend: Any = None, command: str | None = None) -> Path:
    """Run ReST-EM; return the run directory. ``env`` / ``policy_backend`` inject models."""
    # 1. Passages (ARC: tasks) and model files: a bad selection or a missing file fails
    #    before any weights load or a run directory is made.
    kind = cfg.env_kind
    items = policy_items(cfg, env)
    if cfg.mode == "separate" and policy_backend is None:
        check_model_source(cfg.policy_model)  # type: ignore[arg-type]

    # 2. Run directory, env, policy.
    rundir = (RunDir.resume(resume, cfg, command=command) if resume is not None
              else RunDir.create(cfg, command=command))
    try:
        env = env or kind.build(cfg.env, **items.prepared)
        items = policy_items(cfg, env)  # again on the env: ARC drops tasks too long for it
        train, heldout = items.train, items.heldout
        backend = load_policy(cfg, env, policy_backend)
        policy = TemplatePolicy(backend, temperature=cfg.temperature,
                                max_new_tokens=cfg.max_new_tokens, max_retries=cfg.max_retries,
                                prefix_json=cfg.prefix_json, action_format=kind.action_format())
        evaluator = Evaluator(env, EvalCache(rundir.log("evaluations.jsonl", key="key")),
                              seed=cfg.seed, progress=cfg.progress, kind=kind)

        # 3. Resume: merge the saved adapters in order, check the weights, restore RNGs.
        records, start = restore_run(rundir, cfg, env, backend)
        print(f"run directory: {rundir.path}  (mode {cfg.mode}, {len(train)} training and "
              f"{len(heldout)} held-out passages; starting at iteration {start}; "
              f"{len(evaluator.cache)} cached evaluations)", flush=True)

        # 4. Iteration 0: the initial policy and the baselines on the held-out passages.
        if start == 0:
            t0 = time.perf_counter()
            record: dict[str, Any] = {"iteration": 0,
                                      "policy_fingerprint": backend.fingerprint}
            if cfg.eval_before_training:
                record["heldout"] = heldout_eval(policy, evaluator, heldout,
                                                 samples=cfg.heldout_samples, seed=cfg.seed + 7)
            record["baselines"] = baseline_eval(evaluator, heldout, cfg.baselines)
            record["time_s"] = time.perf_counter() - t0
            records.append(finish_iteration(rundir, record, evaluator, adapter=None))
            start = 1

        # 5. The ReST-EM loop.
        for iteration in range(start, cfg.iterations + 1):
            record = restem_iteration(cfg, iteration, policy, env, evaluator, train, heldout,
                                      rundir.path)
            adapter = Path(record["sft"]["adapter_dir"]) if record.get("sft") else None
            records.append(finish_iteration(rundir, record, evaluator, adapter=adapter))

        # 6. Summary: held-out reward per iteration next to the baselines; HParams.
        table = heldout_table(records, cfg.baselines)
        rows = [_summary_row(r) for r in records]
        rundir.write_json("summary.json", {"iterations": rows, "baselines": cfg.baselines})
        rundir.write_text("heldout.md", table + "\n")
        last = rows[-1]
        rundir.add_hparams(cfg.hparams(), {
            "hparams/heldout_greedy": last["heldout_greedy"],
            "hparams/heldout_sampled_mean": last["heldout_sampled_mean"],
            "hparams/train_reward_mean": last["train_reward_mean"]}, step=last["iteration"])
    finally:
        rundir.close()
    print(table)
    print(f"\nrun directory: {rundir.path}")
    return rundir.path


def finish_iteration(rundir: RunDir, record: dict[str, Any], evaluator: Evaluator,
                     adapter: Path | None) -> dict[str, Any]:
    """Checkpoint first (with the record inside), then the JSONL line and TensorBoard.

    A kill between the two leaves the line missing; :func:`restore_run` writes it again
    from the checkpoint.
    """
    write_checkpoint(rundir.path, record["iteration"], {
        "record": record,
        "policy_fingerprint": record.get("policy_fingerprint_after",
                                         record["policy_fingerprint"]),
        "env_fingerprint": evaluator.env.backend.fingerprint,
        "evaluations": len(evaluator.cache),
        "rng": rng_state(),
    }, adapter=adapter)
    record = rundir.log("iterations.jsonl").append(record)
    log_iteration_tb(rundir.writer(), record)
    held = record.get("heldout") or {}
    line = f"iteration {record['iteration']} done"
    if "reward/mean" in record:
        line += f": train reward mean {record['reward/mean']:.3f} max {record['reward/max']:.3f}"
    if held:
        line += f"; held-out greedy {held['greedy']:.3f}"
        if held.get("sampled_mean") is not None:
            line += f", sampled {held['sampled_mean']:.3f}"
    if record.get("baselines"):
        line += "; baselines " + ", ".join(f"{k} {v:.3f}" for k, v in record["baselines"].items())
    print(line + f"  ({record.get('time_s', 0):.0f}s)", flush=True)
    return record


def restore_run(rundir: RunDir, cfg: PolicyRunConfig, env: Any,
                backend: Any) -> tuple[list[dict[str, Any]], int]:
    """Rebuild the policy of the last checkpoint; return its records and the next iteration.

    Iteration lines a kill kept out of ``iterations.jsonl`` are written again from the
    checkpoints, which hold each iteration's record.
    """
    run_dir = rundir.path
    last = latest_checkpoint(run_dir)
    if last is None:
        return [], 0
    state = json.loads((last / "state.json").read_text())
    done = state["iteration"]
    records = []
    for i in range(done + 1):
        ckpt = run_dir / "checkpoints" / f"iter_{i:03d}"
        if not (ckpt / "state.json").is_file():
            raise RuntimeError(f"checkpoint {ckpt} is missing; cannot resume {run_dir}")
        records.append(json.loads((ckpt / "state.json").read_text())["record"])
        if (ckpt / "adapter").is_dir():
            apply_adapter(backend.model, ckpt / "adapter")
    fingerprint = after_update(cfg, env, backend) if done else backend.fingerprint
    if fingerprint != state["policy_fingerprint"]:
        raise RuntimeError(
            f"resuming {run_dir}: the rebuilt policy's weights ({fingerprint}) differ from the "
            f"checkpoint's ({state['policy_fingerprint']}); was the model or dtype changed?"
        )
    set_rng_state(state["rng"])
    lines = rundir.log("iterations.jsonl")
    logged = {r.get("iteration") for r in lines}
    for record in records:
        if record["iteration"] not in logged:
            lines.append(record)
    return records, done + 1


# --- logging -------------------------------------------------------------------------------
def log_iteration_tb(writer: Any, record: dict[str, Any]) -> None:
    """Per iteration: reward distribution and stats, held-out and baseline rewards, SFT loss,
    hyperparameter histograms, the templates' text (nothing when ``writer`` is None)."""
    if writer is None:
        return
    step = record["iteration"]
    if "rewards" in record:
        writer.add_histogram("train/reward_distribution", np.asarray(record["rewards"]), step)
    for key, value in record.items():
        if "/" in key and isinstance(value, (int, float)):
            writer.add_scalar(key.replace("reward/", "train/reward_"), value, step)
    held = record.get("heldout")
    if held:
        writer.add_scalar("heldout/greedy", held["greedy"], step)
        if held.get("sampled_mean") is not None:
            writer.add_scalar("heldout/sampled_mean", held["sampled_mean"], step)
            writer.add_scalar("heldout/sampled_best", held["sampled_best"], step)
    for name, value in (record.get("baselines") or {}).items():
        writer.add_scalar(f"heldout/baseline_{name}", value, step)
    sft = record.get("sft")
    if sft:
        if sft["loss_last"] is not None:
            writer.add_scalar("sft/loss_first", sft["loss_first"], step)
            writer.add_scalar("sft/loss_last", sft["loss_last"], step)
            writer.add_histogram("sft/loss", np.asarray(sft["losses"]), step)
        writer.add_scalar("sft/examples", sft["examples"], step)
    templates = [t for t in record.get("templates", []) if t["valid"]]
    if templates:
        hps = [_hyperparameters(json.loads(t["template"])) for t in templates]
        for name in hps[0]:
            writer.add_histogram(f"hyperparameters/{name}",
                                 np.asarray([float(h[name]) for h in hps]), step)
    rows = ["| # | mean reward | template |", "|---:|---:|---|"]
    for t in record.get("templates", []):
        rows.append(f"| {t['index']} | {t['mean_reward']:.3f} | "
                    f"`{shorten(t['template'], 400).replace('|', '/')}` |")
    for t in (held or {}).get("templates", []):
        rows.append(f"| held-out {t['kind']} | {t['reward']:.3f} | "
                    f"`{shorten(t['template'], 400).replace('|', '/')}` |")
    if len(rows) > 2:
        writer.add_text("templates", "\n".join(rows), step)
    writer.flush()


def _hyperparameters(action: dict[str, Any]) -> dict[str, Any]:
    """A canonical action's hyperparameters: a template's ``hyperparameters``, or the
    hyperparameter keys of a (flat) ARC recipe."""
    from selfedit.envs.templates import HP_RANGES

    if "hyperparameters" in action:
        return action["hyperparameters"]
    return {k: action[k] for k in HP_RANGES if k in action}


def _summary_row(record: dict[str, Any]) -> dict[str, Any]:
    held = record.get("heldout") or {}
    return {
        "iteration": record["iteration"],
        "heldout_greedy": held.get("greedy"),
        "heldout_sampled_mean": held.get("sampled_mean"),
        "heldout_sampled_best": held.get("sampled_best"),
        "train_reward_mean": record.get("reward/mean"),
        "train_reward_max": record.get("reward/max"),
        "sft_examples": (record.get("sft") or {}).get("examples"),
        "sft_loss_last": (record.get("sft") or {}).get("loss_last"),
        "baselines": record.get("baselines"),
        "policy_fingerprint": record.get("policy_fingerprint_after",
                                         record.get("policy_fingerprint")),
    }
