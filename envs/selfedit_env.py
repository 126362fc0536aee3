"""``selfedit/SQuAD-v0``: a self-edit template in, the adapted model's accuracy out."""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from selfedit.envs import grading, prompts
from selfedit.envs.backend import cache_root, make_backend, weights_checksum
from selfedit.envs.config import ConfigError, EnvConfig
from selfedit.envs.corpus import Corpus, Passage, load_corpus
from selfedit.envs.parsing import parse_self_edit, parse_sequences
from selfedit.envs.templates import Hyperparameters, Template, TemplateError, parse_template
from selfedit.envs.update import LoRAUpdate, UpdateOperator, UpdateStats

__all__ = ["CHARSET", "PassageResult", "SelfEditEnv", "load_env_corpus", "select_passages"]

# Text spaces check every character against a charset: declare all printable characters of
# the Basic Multilingual Plane (SQuAD has accents, dashes, CJK) plus newline and tab.
CHARSET = "\n\t" + "".join(
    chr(c) for c in (*range(0x20, 0xD800), *range(0xE000, 0xFFFE)) if chr(c).isprintable()
)
_CHARSET_SET = frozenset(CHARSET)
MAX_TEXT = 32_768


class Timings(Mapping[str, float]):
    """Wall-clock seconds per phase of a step.

    Time is a measurement of the machine, not part of the env's transition: two steps are
    equivalent when they timed the same phases, whatever the clock said. Comparing by keys
    keeps ``info`` deterministic for a seed (gymnasium's ``check_env`` compares infos).
    """

    def __init__(self, values: Mapping[str, float] | None = None, **kw: float) -> None:
        self._values = {**(values or {}), **kw}

    def __getitem__(self, key: str) -> float:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __setitem__(self, key: str, value: float) -> None:
        self._values[key] = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Timings) and self._values.keys() == other._values.keys()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return "Timings(" + ", ".join(f"{k}={v:.3f}" for k, v in self._values.items()) + ")"


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
    timings: Timings = field(default_factory=Timings)
    completion_tokens: int = 0
    error: str | None = None

    @property
    def gain(self) -> float:
        return self.accuracy - self.base_accuracy

    @property
    def normalized_gain(self) -> float:
        return normalized_gain(self.accuracy, self.base_accuracy)


def normalized_gain(accuracy: float, base: float) -> float:
    """``(acc - base) / (1 - base)``: the share of what was left to learn that was learned.

    >>> normalized_gain(0.6, 0.2)
    0.5
    >>> normalized_gain(1.0, 1.0)  # nothing left to learn
    0.0
    """
    return 0.0 if base >= 1.0 else round((accuracy - base) / (1.0 - base), 10)


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
    base weights are bit-identical to before the step.

    ## Action Space
    ``Text`` (declared charset: printable BMP characters, newline, tab): a JSON template
    ``{"data_creation_instruction": str, "hyperparameters": {lora_rank, lora_alpha,
    lora_dropout, learning_rate, num_epochs, gradient_accumulation_steps},
    "include_passage": bool}``. Code fences, ``<think>`` blocks and prose around the JSON are
    tolerated; a :class:`~selfedit.envs.templates.Template` or a dict is accepted too. With
    ``action_mode="self_edit"`` the action is the self-edit itself: a JSON list of training
    sequences or ``{"sequences": [...], "hyperparameters": {...}}``.

    ## Observation Space
    ``Dict(prompt=Text, passage_ids=Box(int64))``: ``prompt`` is what a template-writing
    policy is shown (the meta-prompt, plus the best and worst templates so far when
    ``archive_show > 0``); in self-edit mode it shows the passage. ``passage_ids`` are the
    indices of the step's passages in the env's corpus.

    ## Rewards
    Mean accuracy over the step's (passage, completion) evaluations under ``reward_grader``
    (default ``contains``: a gold answer inside the first sentence of a short answer). An
    action that cannot be evaluated gets ``invalid_reward`` (default -0.1) and
    ``info["error"]``. When ``max_step_seconds`` is spent, the pairs not yet started are
    skipped and the reward is the mean over those evaluated; ``info["budget"]`` lists every
    budget or cap that cut the step short. ``info`` also carries base accuracy, gain,
    normalized gain, every cheap grader's metric, answers, verdicts, training sequences,
    token counts and timings.

    ## Starting State
    ``reset`` draws ``passages_per_step`` distinct passages with ``self.np_random``, or takes
    ``options={"passage_ids": [...]}``.

    ## Episode End
    Single-step episodes: every step terminates.

    ## Arguments
    Any field of :class:`~selfedit.envs.config.EnvConfig` as a keyword, or ``config=``;
    ``backend=``, ``update=`` and ``grader=`` take objects to swap the model engine, the
    update operator and the reward grader.

    ## Version History
    * v0: initial version.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        config: EnvConfig | None = None,
        *,
        backend: Any = None,
        update: UpdateOperator | None = None,
        grader: grading.Grader | None = None,
        corpus: Corpus | str | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__()
        base = asdict(config) if config is not None else {}
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
        self.backend = backend or make_backend(cfg)  # cfg.engine: transformers or vLLM
        kwargs: dict[str, Any] = {
            "micro_batch_size": cfg.micro_batch_size,
            "max_seq_tokens": cfg.max_seq_tokens,
            "max_train_tokens": cfg.max_train_tokens,
            "max_seconds": cfg.max_train_seconds,
        }
        if cfg.target_modules:
            kwargs["target_modules"] = cfg.target_modules
        self.update = update or LoRAUpdate(**kwargs)
        self.grader_name = cfg.reward_grader
        self.grader = grader or self._make_grader()
        self._baselines: dict[str, dict[str, Any]] = {}
        self._baseline_dir = self._resolve_cache_dir()
        self._archive: list[tuple[dict[str, Any], float]] = []
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
    def _make_grader(self) -> grading.Grader:
        cfg = self.config
        if cfg.reward_grader != "judge":
            return grading.GRADERS[cfg.reward_grader]
        if cfg.judge == "local":
            backend = self.backend

            def generate(texts: list[str], max_new_tokens: int) -> list[str]:
                return backend.generate(texts, max_new_tokens=max_new_tokens)

            return grading.LLMJudge(generate=generate)
        return grading.LLMJudge(
            base_url=cfg.judge, model=cfg.judge_model, api_key_env=cfg.judge_api_key_env
        )

    def _resolve_cache_dir(self) -> Path | None:
        where = self.config.baseline_cache
        if where is None:
            return None
        path = cache_root() / "baselines" if where == "auto" else Path(where)
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- gymnasium API ----------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        super().reset(seed=seed)
        options = options or {}
        k = self.config.passages_per_step
        if "passage_ids" in options:
            idx = [int(i) for i in options["passage_ids"]]
            if len(idx) != k or any(not 0 <= i < len(self.corpus) for i in idx):
                raise ValueError(
                    f"options['passage_ids'] must be {k} indices in [0, {len(self.corpus)})"
                    f", got {idx}"
                )
        else:
            idx = sorted(int(i) for i in self.np_random.choice(len(self.corpus), k, replace=False))
        if options.get("clear_archive"):
            self._archive.clear()
        self._passage_idx = idx
        passages = [self.corpus[i] for i in idx]
        return self._observation(), {
            "passage_ids": [p.id for p in passages],
            "titles": [p.title for p in passages],
        }

    def _observation(self) -> dict[str, Any]:
        assert self._passage_idx is not None
        if self.config.action_mode == "self_edit":
            passage = self.corpus[self._passage_idx[0]]
            text = prompts.self_edit_prompt(passage.title, passage.context)
        else:
            text = prompts.meta_prompt(self._archive_text())
        return {
            "prompt": _in_charset(text),
            "passage_ids": np.asarray(self._passage_idx, dtype=np.int64),
        }

    def _archive_text(self) -> str:
        n = self.config.archive_show
        if not n or not self._archive:
            return ""
        ranked = sorted(self._archive, key=lambda item: item[1], reverse=True)
        best = ranked[:n]
        worst = [x for x in ranked[::-1][:n] if x not in best]
        return prompts.archive_section(
            [(t, {"accuracy": a}) for t, a in best], [(t, {"accuracy": a}) for t, a in worst]
        )

    def step(self, action: Any) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        if self._passage_idx is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        start = time.perf_counter()
        step_seed = int(self.np_random.integers(2**31 - 1))
        budget: list[str] = []  # budgets and caps that cut the step short, in words
        info: dict[str, Any] = {
            "passage_ids": [self.corpus[i].id for i in self._passage_idx],
            "budget": budget,
        }
        try:
            template, sequences, report = self._parse_action(action, budget)
            info["template"] = template.to_dict() if template else None
            info["validation"] = report
            results = self._evaluate(template, sequences, step_seed, start, budget)
        except TemplateError as err:
            return self._invalid(str(err), info, start)
        except Exception as err:  # noqa: BLE001 - any action must end in a defined outcome
            detail = traceback.format_exception_only(type(err), err)[-1].strip()
            return self._invalid(f"evaluation failed: {detail}", info, start)
        finally:
            self._after_step()
        return self._finish(template, results, info, start)

    def _parse_action(
        self, action: Any, budget: list[str]
    ) -> tuple[Template | None, list[str] | None, dict[str, Any]]:
        cfg = self.config
        policy = cfg.hyperparameter_policy
        if cfg.action_mode == "template":
            template, report = parse_template(action, policy=policy)  # type: ignore[arg-type]
            return template, None, report
        sequences, hp_raw = parse_self_edit(action)
        hp, report = Hyperparameters.from_dict(hp_raw, policy=policy)  # type: ignore[arg-type]
        if hp.num_epochs == 0:
            raise TemplateError("a self-edit must train: num_epochs must be >= 1")
        # The action is the data itself; the template only carries its hyperparameters.
        template = Template("(self-edit given by the agent)", hp, name="self-edit")
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

    # -- the work of a step -----------------------------------------------------------
    def _evaluate(
        self,
        template: Template | None,
        fixed: list[str] | None,
        step_seed: int,
        start: float,
        budget: list[str],
    ) -> list[PassageResult]:
        assert template is not None and self._passage_idx is not None
        cfg = self.config
        deadline = start + cfg.max_step_seconds
        passages = [self.corpus[i] for i in self._passage_idx]
        n = cfg.completions_per_passage if fixed is None else 1
        # All completions of the step in one batched generate call.
        completions: list[str] = [""] * (len(passages) * n)
        complete_s = 0.0
        if fixed is None and template.trains and template.data_creation_instruction.strip():
            t0 = time.perf_counter()
            texts = [
                cfg_prompt(template.data_creation_instruction, p)
                for p in passages
                for _ in range(n)
            ]
            completions = self.backend.generate(
                texts,
                max_new_tokens=cfg.completion_max_tokens,
                temperature=cfg.completion_temperature,
                seed=step_seed,
            )
            complete_s = (time.perf_counter() - t0) / len(texts)
        results: list[PassageResult] = []
        for j, completion in enumerate(completions):
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                # One template must not stall a run: pairs not started are skipped, and the
                # reward is the mean over those evaluated (issue 7).
                budget.append(
                    f"step time budget: max_step_seconds={cfg.max_step_seconds:g} spent after"
                    f" {len(results)} of {len(completions)} (passage, completion) evaluations;"
                    " the rest were skipped"
                )
                break
            passage = passages[j // n]
            if fixed is not None:
                sequences = list(fixed)
            else:
                sequences = parse_sequences(completion, max_sequences=cfg.max_sequences)
                if template.include_passage:
                    sequences = [f"{passage.title}\n{passage.context}", *sequences]
            if template.trains and not sequences:
                raise TemplateError(
                    "the completion gave no training sequence (each item needs 3+ words);"
                    " ask for one fact per line or set include_passage"
                )
            result = self._evaluate_passage(
                passage, template.hyperparameters, sequences, step_seed + 7919 * j, remaining
            )
            budget.extend(f"{passage.id}: {note}" for note in result.update["notes"])
            result.completion = completion
            result.completion_tokens = self.backend.count_tokens(completion) if completion else 0
            result.timings["complete_s"] = complete_s
            results.append(result)
        if not results:
            raise TemplateError(
                f"step time budget max_step_seconds={cfg.max_step_seconds:g} was spent before"
                " any (passage, completion) pair could be evaluated; raise max_step_seconds or"
                " lower completion_max_tokens"
            )
        return results

    def _evaluate_passage(
        self,
        passage: Passage,
        hp: Hyperparameters,
        sequences: list[str],
        seed: int,
        max_seconds: float | None = None,
    ) -> PassageResult:
        base = self._baseline(passage)
        questions = [q.question for q in passage.questions]
        golds = [list(q.answers) for q in passage.questions]
        t0 = time.perf_counter()
        stats: UpdateStats
        with self.update.adapted(
            self.backend, sequences, hp, seed=seed, max_seconds=max_seconds
        ) as stats:
            train_s = time.perf_counter() - t0
            if stats.error:
                raise TemplateError(f"LoRA update failed: {stats.error}")
            t1 = time.perf_counter()
            answers = self._answer(questions) if hp.num_epochs else list(base["answers"])
            answer_s = time.perf_counter() - t1
        # Grade after the adapter is gone: a local judge must be the base model.
        t2 = time.perf_counter()
        verdicts = self._grade(answers, passage)
        grade_s = time.perf_counter() - t2
        metrics = {k: float(np.mean(v)) for k, v in verdicts.items()}
        return PassageResult(
            passage_id=passage.id,
            title=passage.title,
            completion="",
            sequences=sequences,
            questions=questions,
            golds=golds,
            answers=answers,
            base_answers=list(base["answers"]),
            metrics=metrics,
            base_metrics=dict(base["metrics"]),
            verdicts=verdicts,
            accuracy=metrics[self.grader_name],
            base_accuracy=base["metrics"][self.grader_name],
            update=stats.to_dict(),
            # train_loop_s: the optimizer loop alone (train_s adds adapter set-up/teardown)
            timings=Timings(train_s=train_s, train_loop_s=stats.seconds, answer_s=answer_s,
                            grade_s=grade_s),
        )

    def evaluate_sequences(
        self, passage: Passage, hyperparameters: Hyperparameters, sequences: list[str], *,
        seed: int,
    ) -> PassageResult:
        """The inner loop alone: train on ``sequences``, answer ``passage``'s questions, grade.

        What a step does per (passage, completion) once the training data exists, with the
        baseline from the env's cache; ``selfedit bench inner-loop`` times this.
        """
        return self._evaluate_passage(passage, hyperparameters, sequences, seed)

    def _answer(self, questions: list[str]) -> list[str]:
        texts = [prompts.ANSWER_PROMPT.format(question=q) for q in questions]
        return self.backend.generate(texts, max_new_tokens=self.config.answer_max_tokens)

    def _grade(self, answers: list[str], passage: Passage) -> dict[str, list[float]]:
        """Every cheap grader's verdicts, plus the reward grader's when it is not one of them.

        Graders get what they may need about the passage as keyword arguments (the Grader
        protocol): ``questions``, ``title``, ``context`` and ``passage_golds``.
        """
        golds = [list(q.answers) for q in passage.questions]
        context = {
            "questions": [q.question for q in passage.questions],
            "title": passage.title,
            "context": passage.context,
            "passage_golds": golds,
        }
        verdicts = grading.grade_all(answers, golds, **context)
        if self.grader_name not in verdicts:
            verdicts[self.grader_name] = [
                float(v) for v in self.grader(answers, golds, **context)
            ]
        return verdicts

    def _baseline(self, passage: Passage) -> dict[str, Any]:
        """No-adapter answers and metrics, computed once per (model, passage, grader)."""
        key = "-".join(
            [
                self.backend.fingerprint,
                passage.fingerprint,
                self.grader_name,
                str(self.config.answer_max_tokens),
                _short_hash(prompts.ANSWER_PROMPT),
            ]
        )
        if key in self._baselines:
            return self._baselines[key]
        path = self._baseline_dir / f"{key}.json" if self._baseline_dir else None
        if path is not None and path.is_file():
            try:
                cached = json.loads(path.read_text())
                self._baselines[key] = cached
                return cached
            except (OSError, json.JSONDecodeError):
                pass  # a corrupt cache entry is recomputed, never trusted
        questions = [q.question for q in passage.questions]
        answers = self._answer(questions)
        verdicts = self._grade(answers, passage)
        entry = {
            "answers": answers,
            "metrics": {k: float(np.mean(v)) for k, v in verdicts.items()},
        }
        self._baselines[key] = entry
        if path is not None:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(entry))
            tmp.replace(path)  # atomic: readers never see half a file
        return entry

    # -- results ----------------------------------------------------------------------
    def _finish(
        self,
        template: Template | None,
        results: list[PassageResult],
        info: dict[str, Any],
        start: float,
    ) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        accuracy = float(np.mean([r.accuracy for r in results]))
        base = float(np.mean([r.base_accuracy for r in results]))
        graders = results[0].metrics.keys()
        info.update(
            error=None,
            accuracy=accuracy,
            base_accuracy=base,
            gain=accuracy - base,
            normalized_gain=normalized_gain(accuracy, base),
            metrics={g: float(np.mean([r.metrics[g] for r in results])) for g in graders},
            base_metrics={g: float(np.mean([r.base_metrics[g] for r in results])) for g in graders},
            tokens={
                "completion": sum(r.completion_tokens for r in results),
                "train": sum(r.update["train_tokens"] for r in results),
            },
            timings=Timings(
                step_s=time.perf_counter() - start,
                complete_s=sum(r.timings["complete_s"] for r in results),
                train_s=sum(r.timings["train_s"] for r in results),
                answer_s=sum(r.timings["answer_s"] for r in results),
            ),
            results=[_result_dict(r) for r in results],
        )
        if template is not None:
            self.record(template.to_dict(), accuracy)
        return self._observation(), accuracy, True, False, info

    def record(self, template: dict[str, Any], accuracy: float) -> None:
        """Add an evaluated template to the archive that observations show.

        ``step`` records its own template; a step evaluated elsewhere (a Ray worker's env,
        issue 6) is recorded here, so the observations of this env are those of the env
        that would have run every step itself. Self-edit mode keeps no archive.
        """
        if self.config.action_mode == "template":
            self._archive.append((template, float(accuracy)))

    def _invalid(
        self, message: str, info: dict[str, Any], start: float
    ) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        # Messages quote the action: keep them writable to a UTF-8 log (lone surrogates).
        message = message.encode("utf-8", "backslashreplace").decode("utf-8")
        # A judge endpoint may echo the API key in an error body; info is logged, the key never.
        key = os.environ.get(self.config.judge_api_key_env, "")
        if len(key) >= 4:
            message = message.replace(key, "[judge API key redacted]")
        info.update(error=message, timings=Timings(step_s=time.perf_counter() - start))
        info.setdefault("template", None)
        return self._observation(), float(self.config.invalid_reward), True, False, info

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


def _result_dict(result: PassageResult) -> dict[str, Any]:
    out = {f.name: getattr(result, f.name) for f in fields(result)}
    out["gain"] = result.gain
    out["normalized_gain"] = result.normalized_gain
    return out


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
