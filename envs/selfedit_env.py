"""``selfedit/SQuAD-v0``: a self-edit template in, the adapted model's accuracy out.

One machinery serves the single env and the vector env (:mod:`selfedit.envs.vector`): a
step evaluates a batch of *slots* (one action each, on its own passages) in one pass --
every completion in one batched ``generate``, every adapter trained together through the
update operator's ``adapted_many``, every adapted model answering in one batched
``generate`` with per-row adapters (issue 11). ``SelfEditEnv.step`` is the batch of one.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from selfedit.envs import grading, prompts
from selfedit.envs.backend import make_backend, weights_checksum
from selfedit.envs.baseline_cache import BaselineCache, BaselineEntry
from selfedit.envs.config import ConfigError, EnvConfig
from selfedit.envs.corpus import Corpus, Passage, load_corpus
from selfedit.envs.operators import OPERATOR_LABELS, make_operator
from selfedit.envs.parsing import parse_self_edit, parse_sequences
from selfedit.envs.templates import (
    OperatorHyperparameters,
    Template,
    TemplateError,
    extract_json,
    hyperparameters_class,
    operator_name,
    parse_template,
)
from selfedit.envs.update import AdapterRequest, UpdateOperator, UpdateStats

__all__ = ["CHARSET", "PassageResult", "Seconds", "SelfEditEnv", "SlotRequest", "cfg_prompt",
           "load_env_corpus", "normalized_gain", "select_passages"]

# Text spaces check every character against a charset: declare all printable characters of
# the Basic Multilingual Plane (SQuAD has accents, dashes, CJK) plus newline and tab.
CHARSET = "\n\t" + "".join(
    chr(c) for c in (*range(0x20, 0xD800), *range(0xE000, 0xFFFE)) if chr(c).isprintable()
)
_CHARSET_SET = frozenset(CHARSET)
MAX_TEXT = 32_768
# An endpoint judge grades after training: it gets what is left of the step's budget plus
# this grace, so a step that trained to its budget can still be graded, and a judge that
# never answers holds it at most max_step_seconds + JUDGE_GRACE_S (issue 13 item 6).
JUDGE_GRACE_S = 60.0


class Seconds(float):
    """A measured duration: a plain float in JSON and arithmetic, equal to any other.

    Time is a measurement of the machine, not part of the env's transition: two steps are
    equivalent when they timed the same phases, whatever the clock said. Gymnasium's
    ``check_env`` compares infos for determinism, so durations compare equal to each other
    (and like floats to anything else); ``json.dumps`` writes them as numbers.

    >>> Seconds(1.5) == Seconds(2.0), Seconds(1.5) == 1.5, Seconds(1.5) + 1
    (True, True, 2.5)
    """

    def __eq__(self, other: object) -> bool:
        return True if isinstance(other, Seconds) else float(self) == other

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return 0  # equal objects must hash alike: every Seconds equals every other

    def __repr__(self) -> str:
        return f"{float(self):.3f}"


def _timings(**values: float) -> dict[str, float]:
    return {k: Seconds(v) for k, v in values.items()}


def _in_charset(text: str) -> str:
    return "".join(c if c in _CHARSET_SET else "?" for c in text)[:MAX_TEXT]


@dataclass
class PassageResult:
    """One (passage, completion) evaluation inside a step."""

    passage_id: str
    title: str
    completion: str
    sequences: list[str]
    questions: list[str]
    golds: list[list[str]]
    answers: list[str]
    base_answers: list[str]
    metrics: dict[str, float]  # mean per grader, adapted model
    base_metrics: dict[str, float]  # mean per grader, base model
    verdicts: dict[str, list[float]]  # per question per grader, adapted model
    accuracy: float
    base_accuracy: float
    update: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    completion_tokens: int = 0
    error: str | None = None
    # With answer_samples R > 1 (answers sampled at answer_temperature): every repeat's
    # answers, and the reward grader's accuracy of each repeat (the evaluation noise of one
    # adapter; arXiv 2601.14532). ``answers`` is then the first repeat.
    answer_samples: list[list[str]] | None = None
    repeat_accuracy: list[float] | None = None

    @property
    def gain(self) -> float:
        return self.accuracy - self.base_accuracy

    @property
    def normalized_gain(self) -> float:
        return normalized_gain(self.accuracy, self.base_accuracy)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["gain"] = self.gain
        out["normalized_gain"] = self.normalized_gain
        return out


def normalized_gain(accuracy: float, base: float) -> float:
    """``(acc - base) / (1 - base)``: the share of what was left to learn that was learned.

    >>> normalized_gain(0.6, 0.2)
    0.5
    >>> normalized_gain(1.0, 1.0)  # nothing left to learn
    0.0
    """
    return 0.0 if base >= 1.0 else round((accuracy - base) / (1.0 - base), 10)


def step_figures(results: Sequence[Mapping[str, Any]], *, pooled: bool) -> dict[str, Any]:
    """A step's accuracy, base accuracy, gains and per-grader metrics from its results.

    Each result maps ``accuracy``, ``base_accuracy``, ``metrics``, ``base_metrics`` (grader
    -> score) and ``questions`` (the question texts). Pooled (SEAL's continued
    pretraining), one update answers every question of the pool, so each figure is the mean
    over all those questions; else the mean over the (passage, completion) evaluations.
    The env computes a step's figures with it, and ``selfedit regrade`` recomputes them the
    same way.

    >>> r = [{"accuracy": 1.0, "base_accuracy": 0.0, "metrics": {"f1": 1.0},
    ...       "base_metrics": {"f1": 0.0}, "questions": ["Who?", "When?", "Where?"]},
    ...      {"accuracy": 0.0, "base_accuracy": 0.0, "metrics": {"f1": 0.5},
    ...       "base_metrics": {"f1": 0.0}, "questions": ["Why?"]}]
    >>> step_figures(r, pooled=False)["accuracy"], step_figures(r, pooled=True)["accuracy"]
    (0.5, 0.75)
    """
    weights = [len(r["questions"]) for r in results] if pooled else None

    def mean(values: list[float]) -> float:
        return float(np.average(values, weights=weights)) if pooled else float(np.mean(values))

    accuracy = mean([r["accuracy"] for r in results])
    base = mean([r["base_accuracy"] for r in results])
    return {
        "accuracy": accuracy,
        "base_accuracy": base,
        "gain": accuracy - base,
        "normalized_gain": normalized_gain(accuracy, base),
        **{key: {g: mean([r[key][g] for r in results]) for g in results[0][key]}
           for key in ("metrics", "base_metrics")},
    }


@dataclass(frozen=True)
class SlotRequest:
    """One action to evaluate: on which passages, with which seed, received when."""

    action: Any
    passage_idx: tuple[int, ...]  # indices into the env's corpus
    seed: int  # the step seed: completion and adapter seeds derive from it
    start: float  # time.perf_counter() when the step received the action (its budget's 0)


@dataclass
class _Pair:
    """One (passage, completion) evaluation of a slot."""

    passage: Passage
    index: int  # j-th evaluation of the slot
    seed: int
    completion: str = ""
    sequences: list[Any] = field(default_factory=list)
    adapter: int | None = None  # index in the joint adapter batch; None: no training
    skipped: bool = False  # the step budget was spent before this pair could start
    stats: UpdateStats = field(default_factory=UpdateStats)
    answers: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    operator: str = "lora"  # the update operator that trains this pair (issue 16)
    # Pooled (CPT) steps: one update per completion index trains on the sequences of every
    # passage's pair; the first pair leads (it trains), the others answer with its update.
    pool: list[_Pair] = field(default_factory=list)  # on a lead: every member, lead first
    lead: _Pair | None = None  # on a member: the pair whose update it answers with

    @property
    def members(self) -> list[_Pair]:
        """The pairs answering with this pair's update (itself alone unless pooled)."""
        return self.pool or [self]

    def training_data(self) -> list[Any]:
        """What this pair's update trains on: its sequences, or its pool's."""
        return [s for member in self.members for s in member.sequences]


@dataclass
class _Slot:
    """One action's evaluation while a (batched) step runs."""

    request: SlotRequest
    info: dict[str, Any]
    budget: list[str]
    template: Template | None = None
    fixed: list[str] | None = None  # self-edit mode: the sequences given by the action
    pairs: list[_Pair] = field(default_factory=list)
    error: str | None = None
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def live(self) -> bool:
        return self.error is None


class SelfEditEnv(gym.Env):
    """Teach a language model a passage with a self-edit; reward its accuracy on questions.

    ## Description
    A *self-edit* is the training data a model writes to teach itself a new passage, plus the
    LoRA hyperparameters to train on it (SEAL, arXiv 2506.10943). In this env the action is a
    self-edit *template* (arXiv 2601.14532): a passage-agnostic data-creation instruction
    plus hyperparameters. Each step, for every passage drawn at reset, the self model
    completes the instruction on the passage into training sequences, a fresh LoRA adapter
    is trained on them with next-token prediction, and the adapted model answers the
    passage's questions *without seeing the passage*. The adapter is then discarded; the
    base weights are bit-identical to before the step. ``gymnasium.make_vec(...,
    num_envs=K)`` gives :class:`~selfedit.envs.vector.SelfEditVectorEnv`, which evaluates K
    templates per step in one pass over one model.

    ## Action Space
    ``Text`` (declared charset: printable BMP characters, newline, tab): a JSON template
    ``{"data_creation_instruction": str, "hyperparameters": {lora_rank, lora_alpha,
    lora_dropout, learning_rate, num_epochs, gradient_accumulation_steps},
    "include_passage": bool}``. Code fences, ``<think>`` blocks and prose around the JSON are
    tolerated; a :class:`~selfedit.envs.templates.Template` or a dict is accepted too (and
    validated the same way). The declared space samples texts of up to 32,768 characters;
    ``step`` reads actions of up to ``MAX_ACTION_CHARS`` (1,000,000) and refuses longer ones
    in ``info["error"]`` without scanning them. With ``action_mode="self_edit"`` the action
    is the self-edit itself: a JSON list of training sequences or ``{"sequences": [...],
    "hyperparameters": {...}}``. Either form may name its update operator (issue 16):
    ``"update_operator": "lora" | "full" | "svd"`` with that operator's hyperparameters
    (:mod:`selfedit.envs.templates`); ``operators`` lists the allowed ones (a template naming
    another is invalid), ``default_operator`` serves a template that names none.

    ## Observation Space
    ``Dict(prompt=Text, passage_ids=Box(int64))``: ``prompt`` is what a template-writing
    policy is shown (the meta-prompt; :class:`~selfedit.envs.wrappers.ArchiveObservation`
    adds the best and worst templates so far); in self-edit mode it shows the passage (all
    of the step's passages when they are pooled). ``passage_ids`` are the indices of the
    step's passages in the env's corpus.

    ## Rewards
    Mean accuracy over the step's (passage, completion) evaluations under ``reward_grader``.
    With ``pool_passages`` (SEAL's continued-pretraining setting; ``selfedit/SQuAD-CPT-v0``)
    the sequences of every passage (per completion index) train one update that answers the
    questions of all of them, and the reward is the accuracy over all their questions.
    An action that cannot be evaluated gets ``invalid_reward`` (default -0.1) and
    ``info["error"]``. ``max_step_seconds`` counts from the moment ``step`` receives the
    action: training stops when it is spent (``info["budget"]`` lists every budget or cap
    that cut the step short). ``info`` also carries base accuracy, gain, normalized gain,
    every cheap grader's metric, answers, verdicts, training sequences, token counts and
    timings; it is plain JSON-serialisable data.

    ## Starting State
    ``reset`` draws ``passages_per_step`` distinct passages with ``self.np_random``, or takes
    ``options={"passage_ids": [...]}``.

    ## Episode End
    Single-step episodes: every step terminates.

    ## Arguments
    Any field of :class:`~selfedit.envs.config.EnvConfig` as a keyword, or ``config=``;
    ``backend=``, ``update=`` and ``grader=`` take objects to swap the model engine, the
    update operator and the reward grader. ``update=`` is the implementation of
    ``default_operator``, or a mapping ``{operator name: object}`` for several.

    ## Version History
    * v0: initial version; the observation no longer carries an archive (issue 14: one env
      shared by several agents showed one agent's templates to another).
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        config: EnvConfig | None = None,
        *,
        backend: Any = None,
        update: UpdateOperator | Mapping[str, UpdateOperator] | None = None,
        grader: grading.Grader | None = None,
        corpus: Corpus | str | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__()
        base = {f.name: getattr(config, f.name) for f in fields(config)} if config else {}
        if corpus is not None and not isinstance(corpus, Corpus):
            overrides["corpus"] = corpus
        base.update(overrides)
        self.config = cfg = EnvConfig.from_dict(base)
        full = corpus if isinstance(corpus, Corpus) else load_env_corpus(cfg.corpus)
        self.corpus = select_passages(full, cfg.passages)
        if cfg.passages_per_step > len(self.corpus):
            raise ConfigError(
                f"passages_per_step={cfg.passages_per_step} but the corpus selection has only"
                f" {len(self.corpus)} passages"
            )
        # The cache directory is checked before the model loads: a bad one fails in seconds.
        self.baselines = BaselineCache.from_setting(cfg.baseline_cache)
        self.backend = backend or make_backend(cfg)  # cfg.engine: transformers or vLLM
        # self.update is the default operator (continual mode wraps it in place); the
        # other allowed operators live in self.operators (issue 16).
        given = dict(update) if isinstance(update, Mapping) else {}
        if not isinstance(update, Mapping) and update is not None:
            given[cfg.default_operator] = update
        self.update = given.pop(cfg.default_operator, None) or make_operator(
            cfg.default_operator, cfg)
        self.operators: dict[str, UpdateOperator] = {
            name: given.pop(name, None) or make_operator(name, cfg)
            for name in cfg.operators if name != cfg.default_operator}
        if given:
            raise ConfigError(f"update= names operators {sorted(given)} that env.operators"
                              f" ({cfg.operators}) does not allow")
        self._check_operators_fit()
        self.grader_name = cfg.reward_grader
        self.grader = grader or self._make_grader()
        self._passage_idx: list[int] | None = None
        self._steps = 0
        self._base_checksum = weights_checksum(self.backend.model) if cfg.verify_base_every else ""

        self.action_space = spaces.Text(max_length=MAX_TEXT, min_length=0, charset=CHARSET)
        self.observation_space = spaces.Dict(
            {
                "prompt": spaces.Text(max_length=MAX_TEXT, min_length=0, charset=CHARSET),
                "passage_ids": spaces.Box(
                    low=0,
                    high=len(self.corpus) - 1,
                    shape=(cfg.passages_per_step,),
                    dtype=np.int64,
                ),
            }
        )

    # -- set-up helpers ---------------------------------------------------------------
    def operator(self, name: str) -> UpdateOperator:
        """The update operator a template naming ``name`` is trained with."""
        if name == self.config.default_operator:
            return self.update
        if name not in self.operators:
            raise TemplateError(
                f"update_operator {name!r} is not allowed in this env; allowed:"
                f" {', '.join(self.config.operators)} (env.operators)")
        return self.operators[name]

    def _check_operators_fit(self) -> None:
        """Refuse at construction an operator the machine cannot hold (full fine-tuning)."""
        for name in self.config.operators:
            check = getattr(self.operator(name), "check_fits", None)
            if check is None:
                continue
            try:
                check(self.backend.model)
            except (MemoryError, ValueError) as err:
                raise ConfigError(f"env.operators includes {name!r}: {err}") from None

    def _make_grader(self) -> grading.Grader:
        cfg = self.config
        if cfg.reward_grader != "judge":
            return grading.GRADERS[cfg.reward_grader]
        from selfedit.envs.judge import judge_from

        where: Any = cfg.judge
        if cfg.judge == "local":
            backend = self.backend

            def generate(texts: list[str], max_new_tokens: int) -> list[str]:
                return backend.generate(texts, max_new_tokens=max_new_tokens)

            where = generate
        return judge_from(where, model=cfg.judge_model, prompt=cfg.judge_prompt,
                          api_key_env=cfg.judge_api_key_env)

    # -- gymnasium API ----------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        super().reset(seed=seed)
        self._passage_idx = self.draw_passages(self.np_random, options)
        return self.observation(self._passage_idx), self.passage_info(self._passage_idx)

    def draw_passages(self, rng: np.random.Generator,
                      options: Mapping[str, Any] | None = None) -> list[int]:
        """The passages of an episode: ``options["passage_ids"]``, or drawn with ``rng``."""
        options = options or {}
        k = self.config.passages_per_step
        if "passage_ids" in options:
            idx = [int(i) for i in options["passage_ids"]]
            if len(idx) != k or any(not 0 <= i < len(self.corpus) for i in idx):
                raise ValueError(
                    f"options['passage_ids'] must be {k} indices in [0, {len(self.corpus)})"
                    f", got {idx}"
                )
            return idx
        return sorted(int(i) for i in rng.choice(len(self.corpus), k, replace=False))

    def passage_info(self, idx: Sequence[int]) -> dict[str, Any]:
        passages = [self.corpus[i] for i in idx]
        return {"passage_ids": [p.id for p in passages], "titles": [p.title for p in passages]}

    def observation(self, idx: Sequence[int]) -> dict[str, Any]:
        """What a policy sees for an episode on the passages ``idx``."""
        cfg = self.config
        # LoRA alone: the prompts of earlier versions, word for word (no operator choice).
        operators = None if cfg.operators == ["lora"] else cfg.operators
        if cfg.action_mode == "self_edit":
            shown = idx if cfg.pool_passages else idx[:1]
            text = prompts.self_edit_prompt_many(
                [(self.corpus[i].title, self.corpus[i].context) for i in shown],
                operators=operators, default_operator=cfg.default_operator)
        else:
            text = self.meta_prompt()
        return {"prompt": _in_charset(text), "passage_ids": np.asarray(idx, dtype=np.int64)}

    def meta_prompt(self, archive: str = "") -> str:
        """The meta-prompt of this env's settings (its operators, pooling) plus ``archive``.

        What the template-mode observation shows; a wrapper or agent that adds an archive
        section should build its prompt here, so the operator choice and the pooled setting
        stay explained (issue 16).
        """
        cfg = self.config
        # LoRA alone: the prompt of earlier versions, word for word (no operator choice).
        operators = None if cfg.operators == ["lora"] else cfg.operators
        pooled = cfg.passages_per_step if cfg.pool_passages and cfg.passages_per_step > 1 else 0
        return prompts.meta_prompt(archive, operators=operators,
                                   default_operator=cfg.default_operator, pooled=pooled)

    def step(self, action: Any) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        start = time.perf_counter()  # the step budget counts from here (issue 13)
        if self._passage_idx is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        seed = int(self.np_random.integers(2**31 - 1))
        request = SlotRequest(action, tuple(self._passage_idx), seed, start)
        try:
            ((reward, info),) = self.evaluate([request])
        finally:
            self._after_step()
        return self.observation(self._passage_idx), reward, True, False, info

    # -- the work of a step (K slots in one pass) ---------------------------------------
    def evaluate(self, requests: Sequence[SlotRequest]) -> list[tuple[float, dict[str, Any]]]:
        """Evaluate several actions in one pass over the model; ``(reward, info)`` each.

        What ``step`` does, for K actions at once: one batched completion call, one joint
        training of every adapter (when the update operator has ``adapted_many``), one
        batched answer call. An action's failure is its own: its slot gets ``info["error"]``
        and ``invalid_reward``, the others are evaluated as if it were absent.
        """
        slots = [self._open(r) for r in requests]
        try:
            self._complete(slots)
            self._build_pairs(slots)
            self._train_answer_grade(slots)
        except Exception as err:  # noqa: BLE001 - any action must end in a defined outcome
            detail = traceback.format_exception_only(type(err), err)[-1].strip()
            for slot in slots:
                if slot.live:
                    slot.error = f"evaluation failed: {detail}"
        return [self._close(slot) for slot in slots]

    def _open(self, request: SlotRequest) -> _Slot:
        budget: list[str] = []  # budgets and caps that cut the step short, in words
        info: dict[str, Any] = {
            "passage_ids": [self.corpus[i].id for i in request.passage_idx],
            "budget": budget,
        }
        slot = _Slot(request, info, budget)
        try:
            slot.template, slot.fixed, report = self._parse_action(request.action, budget)
            info["template"] = slot.template.to_dict()
            info["validation"] = report
            budget.extend(f"action: {note}" for note in report.get("truncated", []))
        except TemplateError as err:
            slot.error = str(err)
            return slot
        except Exception as err:  # noqa: BLE001 - a hostile action must not escape step
            detail = traceback.format_exception_only(type(err), err)[-1].strip()
            slot.error = f"the action could not be read: {detail}"
            return slot
        cfg = self.config
        n = cfg.completions_per_passage if slot.fixed is None else 1
        passages = [self.corpus[i] for i in request.passage_idx]
        operator = slot.template.update_operator or cfg.default_operator
        slot.pairs = [_Pair(p, j, request.seed + 7919 * j, operator=operator)
                      for j, p in enumerate(p for p in passages for _ in range(n))]
        if cfg.pool_passages:
            # One update per completion index c over every passage's c-th pair (pairs are
            # passage-major: j = passage * n + c); the first passage's pair leads.
            for c in range(n):
                members = slot.pairs[c::n]
                members[0].pool = members
                for member in members[1:]:
                    member.lead = members[0]
        return slot

    def _parse_action(
        self, action: Any, budget: list[str]
    ) -> tuple[Template, list[str] | None, dict[str, Any]]:
        cfg = self.config
        policy = cfg.hyperparameter_policy
        if cfg.action_mode == "template":
            template, report = parse_template(action, policy=policy,  # type: ignore[arg-type]
                                              default_operator=cfg.default_operator)
            self.operator(template.update_operator or cfg.default_operator)  # allowed?
            return template, None, report
        if isinstance(action, str):  # parsed here once: the operator sits beside the data
            action = extract_json(action, want=(dict, list))
        named = action.get("update_operator") if isinstance(action, Mapping) else None
        sequences, hp_raw = parse_self_edit(action)
        name = operator_name(named) or cfg.default_operator
        self.operator(name)  # allowed?
        hp, report = hyperparameters_class(name).from_dict(
            hp_raw, policy=policy)  # type: ignore[arg-type]
        if hp.num_epochs == 0:
            raise TemplateError("a self-edit must train: num_epochs must be >= 1")
        # The action is the data itself; the template only carries its hyperparameters.
        template = Template("(self-edit given by the agent)", hp, name="self-edit",
                            update_operator=name)
        if len(sequences) > cfg.max_sequences:
            budget.append(f"the self-edit has {len(sequences)} sequences; kept the first"
                          f" {cfg.max_sequences} (max_sequences)")
            sequences = sequences[: cfg.max_sequences]
        # Characters are cut before tokenizing: a megabyte "word" is slow to tokenize, and
        # max_seq_tokens would cut it anyway (no token is longer than ~16 characters).
        max_chars = 16 * cfg.max_seq_tokens
        if any(len(s) > max_chars for s in sequences):
            budget.append(f"self-edit sequences longer than {max_chars} characters were cut"
                          " (16 x max_seq_tokens)")
            sequences = [s[:max_chars] for s in sequences]
        return template, sequences, report

    def _deadline(self, slot: _Slot) -> float:
        return slot.request.start + self.config.max_step_seconds

    def _complete(self, slots: list[_Slot]) -> None:
        """Every slot's completions of its instruction, in one batched generate call."""
        cfg = self.config
        todo = [(slot, pair) for slot in slots if slot.live and slot.fixed is None
                and slot.template is not None and slot.template.trains
                and slot.template.data_creation_instruction.strip()
                for pair in slot.pairs]
        if not todo:
            return
        t0 = time.perf_counter()
        texts = [cfg_prompt(slot.template.data_creation_instruction, pair.passage)  # type: ignore[union-attr]
                 for slot, pair in todo]
        completions = self.backend.generate(
            texts,
            max_new_tokens=cfg.completion_max_tokens,
            temperature=cfg.completion_temperature,
            seed=[pair.seed for _, pair in todo],
        )
        share = (time.perf_counter() - t0) / len(todo)  # amortised over the batch
        for (slot, pair), completion in zip(todo, completions, strict=True):
            pair.completion = completion
            pair.timings["complete_s"] = Seconds(share)
            slot.phases["complete_s"] = slot.phases.get("complete_s", 0.0) + share

    def _build_pairs(self, slots: list[_Slot]) -> None:
        """Training sequences of every pair; a slot whose budget is spent is cut here."""
        cfg = self.config
        now = time.perf_counter()
        for slot in slots:
            if not slot.live:
                continue
            template = slot.template
            assert template is not None
            if template.trains and now >= self._deadline(slot):
                slot.error = (
                    f"step time budget max_step_seconds={cfg.max_step_seconds:g} was spent"
                    " before any (passage, completion) pair could be trained; raise"
                    " max_step_seconds or lower completion_max_tokens"
                )
                continue
            for pair in slot.pairs:
                if slot.fixed is not None:
                    # Pooled: the self-edit is the pool's data, given once (to the lead).
                    pair.sequences = list(slot.fixed) if pair.lead is None else []
                else:
                    pair.sequences = parse_sequences(pair.completion,
                                                     max_sequences=cfg.max_sequences)
                    if template.include_passage:
                        passage = pair.passage
                        pair.sequences = [f"{passage.title}\n{passage.context}", *pair.sequences]
            for pair in slot.pairs:
                if template.trains and pair.lead is None and not pair.training_data():
                    slot.error = (
                        "the completion gave no training sequence (each item needs 3+ words);"
                        " ask for one fact per line or set include_passage"
                    )
                    break

    def _train_answer_grade(self, slots: list[_Slot]) -> None:
        """Train every live pair's adapter, answer with all of them, grade, fill results."""
        live = [slot for slot in slots if slot.live]
        if not live:
            return
        # Baselines: cached per passage, else answered by the base model in the same batch.
        passages = {pair.passage.id: pair.passage for slot in live for pair in slot.pairs}
        baselines: dict[str, BaselineEntry | None] = {
            pid: self._cached_baseline(p) for pid, p in passages.items()}
        # One update per training pair (a pooled step: per lead), grouped by operator
        # (issue 16): an operator with adapted_many trains its group in one joint pass, the
        # others one pair at a time; groups run one after another, baselines answered once.
        training = [(slot, pair) for slot in live if slot.template and slot.template.trains
                    for pair in slot.pairs if pair.lead is None]
        groups: dict[str, list[tuple[_Slot, _Pair]]] = {}
        for slot, pair in training:
            groups.setdefault(pair.operator, []).append((slot, pair))
        t0 = time.perf_counter()
        for name, group in groups.items():
            operator = self.operator(name)
            for k, (_, pair) in enumerate(group):
                for member in pair.members:
                    member.adapter = k
            if hasattr(operator, "adapted_many"):
                self._train_and_answer_together(operator, group, baselines, passages)
            else:
                self._train_and_answer_in_turn(operator, group, baselines, passages)
        self._fill_baselines(baselines, passages)  # a step where no template trains
        for slot in live:
            slot.phases["train_answer_s"] = time.perf_counter() - t0
        for slot, pair in training:
            if pair.stats.error and slot.live:
                label = OPERATOR_LABELS.get(pair.operator, pair.operator)
                slot.error = f"{label} update failed: {pair.stats.error}"
            slot.budget.extend(f"{pair.passage.id}: {note}" for note in pair.stats.notes)

    def _questions(self, passage: Passage) -> list[str]:
        return [prompts.ANSWER_PROMPT.format(question=q.question) for q in passage.questions]

    def _answer_prompts(self, passage: Passage, seed: int) -> tuple[list[str], list[int]]:
        """The passage's answer prompts, ``answer_samples`` times over, and a sampling seed
        for each (used only when answers are sampled): repeat r of question i draws from
        ``seed + 104729 r + i``, whatever shares its batch."""
        qs = self._questions(passage)
        repeats = self.config.answer_samples
        return qs * repeats, [seed + 104_729 * r + i for r in range(repeats)
                              for i in range(len(qs))]

    def _generate_answers(self, texts: list[str], seeds: list[int],
                          adapters: list[int | None] | None = None) -> list[str]:
        """Answers: greedy (the default), or sampled at ``answer_temperature``."""
        if not texts:
            return []
        cfg = self.config
        sampled = cfg.answer_temperature > 0
        return self.backend.generate(texts, max_new_tokens=cfg.answer_max_tokens,
                                     temperature=cfg.answer_temperature,
                                     seed=seeds if sampled else None, adapters=adapters)

    @staticmethod
    def _base_seed(passage: Passage) -> int:
        return int(passage.fingerprint[:8], 16)  # the base model's answers: fixed per passage

    def _train_and_answer_together(self, operator: Any, training: list[tuple[_Slot, _Pair]],
                                   baselines: dict[str, BaselineEntry | None],
                                   passages: dict[str, Passage]) -> None:
        requests = [AdapterRequest(pair.training_data(),
                                   slot.template.hyperparameters,  # type: ignore[union-attr]
                                   pair.seed, self._deadline(slot))
                    for slot, pair in training]
        t0 = time.perf_counter()
        with operator.adapted_many(self.backend, requests) as stats:
            t1 = time.perf_counter()
            texts: list[str] = []
            seeds: list[int] = []
            route: list[int | None] = []
            spans: list[tuple[Any, int, int]] = []
            for pid, entry in baselines.items():
                if entry is None:  # the base answers, in the same batch (adapter None)
                    qs, ss = self._answer_prompts(passages[pid], self._base_seed(passages[pid]))
                    spans.append((pid, len(texts), len(texts) + len(qs)))
                    texts += qs
                    seeds += ss
                    route += [None] * len(qs)
            for _, pair in training:
                for member in pair.members:  # a pooled update answers its whole pool
                    qs, ss = self._answer_prompts(member.passage, member.seed)
                    spans.append((member, len(texts), len(texts) + len(qs)))
                    texts += qs
                    seeds += ss
                    route += [pair.adapter] * len(qs)
            answers = self._generate_answers(texts, seeds, route)
            t2 = time.perf_counter()
        for pair_stats, (_, pair) in zip(stats, training, strict=True):
            for member in pair.members:
                member.stats = pair_stats
        share = (t2 - t1) / max(sum(len(pair.members) for _, pair in training), 1)
        for owner, a, b in spans:
            if isinstance(owner, str):
                self._store_baseline(passages[owner], answers[a:b], baselines)
            else:
                owner.answers = answers[a:b]
                owner.timings.update(train_s=Seconds(owner.stats.seconds),
                                     train_loop_s=Seconds(owner.stats.seconds),
                                     answer_s=Seconds(share),
                                     setup_s=Seconds((t1 - t0) - owner.stats.seconds))
        self._fill_baselines(baselines, passages)

    def _train_and_answer_in_turn(self, operator: Any, training: list[tuple[_Slot, _Pair]],
                                  baselines: dict[str, BaselineEntry | None],
                                  passages: dict[str, Passage]) -> None:
        """Operators without ``adapted_many``: one ``adapted`` block per pair (per lead).

        Pairs not started when their slot's budget is spent are skipped (and reported); the
        slot's reward is the mean over the pairs evaluated.
        """
        self._fill_baselines(baselines, passages)
        done: dict[int, int] = {}
        for slot, pair in training:
            remaining = self._deadline(slot) - time.perf_counter()
            if remaining <= 0 and done.get(id(slot), 0) > 0:
                for member in pair.members:
                    member.skipped = True
                continue
            done[id(slot)] = done.get(id(slot), 0) + 1
            t0 = time.perf_counter()
            with operator.adapted(self.backend, pair.training_data(),
                                  slot.template.hyperparameters,  # type: ignore[union-attr]
                                  seed=pair.seed, max_seconds=max(remaining, 0.0)) as st:
                t1 = time.perf_counter()
                if not st.error:  # a pooled update answers its whole pool, in one batch
                    texts, seeds, sizes = [], [], []
                    for member in pair.members:
                        qs, ss = self._answer_prompts(member.passage, member.seed)
                        texts += qs
                        seeds += ss
                        sizes.append(len(qs))
                    answers = self._generate_answers(texts, seeds)
                    at = 0
                    for member, n in zip(pair.members, sizes, strict=True):
                        member.answers = answers[at : at + n]
                        at += n
                t2 = time.perf_counter()
            for member in pair.members:
                member.stats = st
                member.timings.update(train_s=Seconds(t1 - t0),
                                      train_loop_s=Seconds(st.seconds),
                                      answer_s=Seconds((t2 - t1) / len(pair.members)))

    def _fill_baselines(self, baselines: dict[str, BaselineEntry | None],
                        passages: dict[str, Passage]) -> None:
        missing = [pid for pid, entry in baselines.items() if entry is None]
        if not missing:
            return
        texts: list[str] = []
        seeds: list[int] = []
        for pid in missing:
            qs, ss = self._answer_prompts(passages[pid], self._base_seed(passages[pid]))
            texts += qs
            seeds += ss
        answers = self._generate_answers(texts, seeds)
        at = 0
        for pid in missing:
            n = len(passages[pid].questions) * self.config.answer_samples
            self._store_baseline(passages[pid], answers[at : at + n], baselines)
            at += n

    # -- public building blocks (benchmarks and trainers use them) ----------------------
    def answer(self, questions: Sequence[str],
               adapters: Sequence[int | None] | None = None) -> list[str]:
        """The current model's closed-book answers (short, greedy) to ``questions``."""
        texts = [prompts.ANSWER_PROMPT.format(question=q) for q in questions]
        return self.backend.generate(texts, max_new_tokens=self.config.answer_max_tokens,
                                     adapters=adapters) if texts else []

    def grade(self, answers: list[str], passage: Passage, *,
              time_budget_s: float | None = None) -> dict[str, list[float]]:
        """Every cheap grader's verdicts, plus the reward grader's when it is not one of them.

        Graders get what they may need about the passage as keyword arguments (the Grader
        protocol): ``questions``, ``title``, ``context`` and ``passage_golds``.
        """
        verdicts = passage.grade_all(answers)
        if self.grader_name not in verdicts:
            context = passage.grader_keywords()
            extra = {} if time_budget_s is None else {"time_budget_s": time_budget_s}
            verdicts[self.grader_name] = [float(v) for v in self.grader(
                answers, context["passage_golds"], **context, **extra)]
        return verdicts

    def baseline(self, passage: Passage) -> BaselineEntry:
        """The base model's answers and metrics on ``passage`` (cached per model/passage)."""
        baselines = {passage.id: self._cached_baseline(passage)}
        self._fill_baselines(baselines, {passage.id: passage})
        entry = baselines[passage.id]
        assert entry is not None
        return entry

    def rebase(self, tag: str | None = None) -> str:
        """Treat the model's current weights as the base (after a deliberate in-place change:
        a policy update in self mode, a merged adapter); return the new fingerprint.

        The baseline cache is keyed by the fingerprint, and ``verify_base_every`` compares
        against a checksum: both must follow, or stale baselines are served.
        """
        fingerprint = self.backend.refresh(tag)
        if self.config.verify_base_every:
            self._base_checksum = self.base_checksum()
        return fingerprint

    def evaluate_sequences(
        self, passage: Passage, hyperparameters: OperatorHyperparameters, sequences: list[Any],
        *,
        seed: int,
    ) -> PassageResult:
        """The inner loop alone: train on ``sequences``, answer ``passage``'s questions, grade.

        What a step does per (passage, completion) once the training data exists, with the
        baseline from the env's cache; ``selfedit bench inner-loop`` times this.
        """
        return self.evaluate_many([(passage, hyperparameters, sequences, seed)])[0]

    def evaluate_many(
        self, items: Sequence[tuple[Passage, OperatorHyperparameters, list[Any], int]]
    ) -> list[PassageResult]:
        """The inner loop for K (passage, hyperparameters, sequences, seed) at once: the
        adapters trained together, answering in one batch (the batched path of a step).

        The hyperparameters' class picks the operator (``Hyperparameters``: LoRA), which
        must be one of the env's ``operators``."""
        slots = []
        start = time.perf_counter()
        for passage, hp, sequences, seed in items:
            template = Template("(sequences given)", hp, name="sequences",
                                update_operator=hp.OPERATOR)
            slot = _Slot(SlotRequest(None, (), seed, start), {}, [], template=template,
                         fixed=list(sequences))
            slot.pairs = [_Pair(passage, 0, seed, sequences=list(sequences),
                                operator=hp.OPERATOR)]
            slots.append(slot)
        self._train_answer_grade(slots)
        out = []
        for slot in slots:
            if not slot.live:
                raise TemplateError(slot.error or "evaluation failed")
            out.append(self._result(slot.pairs[0]))
        return out

    # -- baselines ----------------------------------------------------------------------
    def _baseline_key(self, passage: Passage) -> str:
        return "-".join([
            self.backend.fingerprint,
            passage.fingerprint,
            self.grader_name,
            # A judge's verdicts are its model's and its prompt's.
            *([_short_hash(f"{self.config.judge}|{self.config.judge_model}|"
                           f"{self.config.judge_prompt}")]
              if self.grader_name == "judge" else []),
            f"g{grading.GRADING_VERSION}",  # stored metrics are the graders' of that version
            str(self.config.answer_max_tokens),
            _short_hash(prompts.ANSWER_PROMPT),
            *([f"T{self.config.answer_temperature:g}x{self.config.answer_samples}"]
              if self.config.answer_temperature > 0 else []),
        ])

    def _graders(self) -> set[str]:
        return {*grading.GRADERS, self.grader_name}

    def _cached_baseline(self, passage: Passage) -> BaselineEntry | None:
        return self.baselines.get(self._baseline_key(passage),
                                  n_answers=len(passage.questions) * self.config.answer_samples,
                                  graders=self._graders())

    def _store_baseline(self, passage: Passage, answers: list[str],
                        baselines: dict[str, BaselineEntry | None]) -> None:
        verdicts, _ = self._grade_repeats(answers, passage)
        entry = BaselineEntry(tuple(answers),
                              {k: float(np.mean(v)) for k, v in verdicts.items()})
        baselines[passage.id] = self.baselines.put(self._baseline_key(passage), entry)

    def _grade_repeats(self, answers: list[str], passage: Passage, *,
                       time_budget_s: float | None = None,
                       ) -> tuple[dict[str, list[float]], list[float]]:
        """Grade R repeats of a passage's answers: each question's verdict is its mean over
        the repeats; also the reward grader's accuracy of each repeat."""
        n = len(passage.questions)
        repeats = [answers[r * n : (r + 1) * n] for r in range(max(len(answers) // n, 1))]
        graded = [self.grade(list(a), passage, time_budget_s=time_budget_s) for a in repeats]
        verdicts = {k: [float(np.mean([g[k][i] for g in graded])) for i in range(n)]
                    for k in graded[0]}
        return verdicts, [float(np.mean(g[self.grader_name])) for g in graded]

    # -- results ----------------------------------------------------------------------
    def _result(self, pair: _Pair, deadline: float | None = None) -> PassageResult:
        passage = pair.passage
        base = self._cached_baseline(passage)
        assert base is not None, "baselines are filled before results are built"
        trained = pair.adapter is not None or bool(pair.answers)
        answers = pair.answers if trained else list(base.answers)
        t0 = time.perf_counter()
        budget = None if deadline is None else max(deadline - t0, 0.0) + JUDGE_GRACE_S
        verdicts, repeat_accuracy = self._grade_repeats(answers, passage, time_budget_s=budget)
        pair.timings["grade_s"] = Seconds(time.perf_counter() - t0)
        n = len(passage.questions)
        samples = ([answers[r * n : (r + 1) * n] for r in range(len(answers) // n)]
                   if self.config.answer_samples > 1 else None)
        for key in ("complete_s", "train_s", "train_loop_s", "answer_s"):
            pair.timings.setdefault(key, Seconds(0.0))
        metrics = {k: float(np.mean(v)) for k, v in verdicts.items()}
        return PassageResult(
            passage_id=passage.id,
            title=passage.title,
            completion=pair.completion,
            sequences=[s if isinstance(s, str) else list(s) for s in pair.sequences],
            questions=[q.question for q in passage.questions],
            golds=[list(q.answers) for q in passage.questions],
            answers=list(answers[:n]),
            base_answers=list(base.answers[:n]),
            metrics=metrics,
            base_metrics=dict(base.metrics),
            verdicts=verdicts,
            accuracy=metrics[self.grader_name],
            base_accuracy=base.metrics[self.grader_name],
            update=self._update_record(pair),
            timings=dict(pair.timings),
            completion_tokens=self.backend.count_tokens(pair.completion) if pair.completion
            else 0,
            answer_samples=samples,
            repeat_accuracy=repeat_accuracy if samples else None,
        )

    @staticmethod
    def _update_record(pair: _Pair) -> dict[str, Any]:
        """``results[i]["update"]``: what the update did and which operator did it."""
        record = {**pair.stats.to_dict(), "operator": pair.operator}
        lead = pair.lead or pair
        if lead.pool:  # pooled (CPT): the passages whose sequences trained this update
            record["pool"] = [member.passage.id for member in lead.pool]
        return record

    def _close(self, slot: _Slot) -> tuple[float, dict[str, Any]]:
        info = slot.info
        start = slot.request.start
        if not slot.live:
            return self._invalid(slot.error or "evaluation failed", info, start)
        skipped = sum(pair.skipped for pair in slot.pairs)
        if skipped:
            slot.budget.append(
                f"step time budget: max_step_seconds={self.config.max_step_seconds:g} spent"
                f" after {len(slot.pairs) - skipped} of {len(slot.pairs)} (passage, completion)"
                " evaluations; the rest were skipped")
        try:
            deadline = self._deadline(slot)
            results = [self._result(pair, deadline) for pair in slot.pairs if not pair.skipped]
        except Exception as err:  # noqa: BLE001 - e.g. a grader that crashed
            detail = traceback.format_exception_only(type(err), err)[-1].strip()
            return self._invalid(f"evaluation failed: {detail}", info, start)
        # Pooled (SEAL's continued pretraining): one update answers every question of the
        # pool, so the reward is the accuracy over all those questions; else the mean over
        # (passage, completion) evaluations.
        pooled = self.config.pool_passages
        figures = step_figures([r.to_dict() for r in results], pooled=pooled)
        accuracy = figures["accuracy"]
        updates = [pair for pair in slot.pairs if pair.lead is None and not pair.skipped]
        if pooled:
            info["pool"] = {"passages": len(slot.request.passage_idx), "updates": len(updates),
                            "questions": sum(len(r.questions) for r in results)}
        info.update(
            error=None,
            **figures,
            tokens={
                "completion": sum(r.completion_tokens for r in results),
                "train": sum(pair.stats.train_tokens for pair in updates),
            },
            # Adapters of one pass train together: the step's training time is the longest
            # of its adapters', not their sum; completion and answer times are the step's
            # shares of batched generate calls.
            timings=_timings(
                step_s=time.perf_counter() - start,
                complete_s=sum(r.timings["complete_s"] for r in results),
                train_s=max(r.timings["train_s"] for r in results),
                answer_s=sum(r.timings["answer_s"] for r in results),
            ),
            results=[r.to_dict() for r in results],
        )
        return accuracy, info

    def _invalid(self, message: str, info: dict[str, Any],
                 start: float) -> tuple[float, dict[str, Any]]:
        # Messages quote the action: keep them writable to a UTF-8 log (lone surrogates).
        message = message.encode("utf-8", "backslashreplace").decode("utf-8")
        # A judge endpoint may echo the API key in an error body; info is logged, the key never.
        key = os.environ.get(self.config.judge_api_key_env, "")
        if len(key) >= 4:
            message = message.replace(key, "[judge API key redacted]")
        info.update(error=message, timings=_timings(step_s=time.perf_counter() - start))
        info.setdefault("template", None)
        return float(self.config.invalid_reward), info

    def _after_step(self) -> None:
        self._steps += 1
        every = self.config.verify_base_every
        if every and self._steps % every == 0:
            now = weights_checksum(self.backend.model)
            if now != self._base_checksum:
                raise RuntimeError(
                    "base weights changed during a step: the update operator leaked changes"
                )

    def base_checksum(self) -> str:
        """Checksum of the base weights (tests compare it before and after steps)."""
        return weights_checksum(self.backend.model)


def load_env_corpus(source: str) -> Corpus:
    """:func:`load_corpus`, with a malformed source reported as a ``ConfigError`` on env.corpus.

    A missing file stays a ``FileNotFoundError`` (its message names the path).
    """
    try:
        return load_corpus(source)
    except FileNotFoundError:
        raise
    except (ValueError, OSError) as err:
        raise ConfigError(f"env.corpus={source!r} cannot be used: {err}") from None


def select_passages(corpus: Corpus, passages: str | list[int] | None) -> Corpus:
    """``corpus.select(passages)``, with a bad selection reported as a ``ConfigError``."""
    try:
        return corpus.select(passages)
    except (IndexError, ValueError, TypeError) as err:
        raise ConfigError(f"env.passages={passages!r}: {err}") from None


def cfg_prompt(instruction: str, passage: Passage) -> str:
    return prompts.COMPLETION_PROMPT.format(
        instruction=instruction.strip(), title=passage.title, context=passage.context
    )


def _short_hash(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:8]
