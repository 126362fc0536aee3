"""Test-time self-improvement (TT-SI) and test-time distillation (TT-D) as self-edit agents.

"Self-Improving LLM Agents at Test-Time" (Acikgoz et al., 2025) improves a model on the test
instances it is unsure of: *self-awareness* picks the uncertain ones, *self-augmentation*
writes similar training examples for them, and a short fine-tune on those few examples
follows; TT-D lets a stronger model write the examples instead. Its claim: a few well-chosen
samples teach as much as many generic ones. Here the test instance is a passage the model must
learn (issue 17), so in the env's self-edit mode (``action_mode: self_edit``: the observation
shows the passage, the action is the training data) the agent

1. writes candidate question-answer pairs about the passage with the self model (sampled;
   answers that are not mostly words of the passage are dropped, ``grounded``; the pool is
   filled up to ``candidates`` with sentence-completion items cut from the passage,
   ``source: cloze``);
2. measures, closed-book, how unsure the self model is of each answer: by default the mean
   negative log-likelihood of the answer's tokens after the env's own answer prompt
   (``uncertainty: likelihood``, one no-grad forward pass), or the disagreement among
   sampled answers (``uncertainty: disagreement``: 1 - the share of the most common one);
3. keeps the ``keep`` items it is least sure of;
4. has the writer (the self model for TT-SI, a separate ``teacher`` model for TT-D) write
   ``variants`` similar question-answer pairs for each kept item;
5. returns those items and variants (plus the passage when ``include_passage``) as the
   self-edit, with SEAL's hyperparameters unless others are given.

:class:`TemplateSelfEditAgent` runs a human template in self-edit mode (the agent completes the
instruction with the self model, as the env does in template mode), so the human baselines
and TT-SI/TT-D are compared in one benchmark on the same passages and seeds.

What each proposal did is in ``agent.counts`` (the runner writes it to every step record as
``agent_counts``): cumulative totals, and under ``trace`` the candidates with their
uncertainty, which were kept and how many variants each got, for the latest ``act`` call.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from selfedit.agents.base import Action, BaseAgent
from selfedit.envs import prompts
from selfedit.envs.grading import normalize_answer
from selfedit.envs.library import human_baseline
from selfedit.envs.parsing import parse_sequences
from selfedit.envs.templates import Hyperparameters, Template, TemplateError, extract_json

__all__ = ["QAItem", "TTSI_KEYS", "TTSIAgent", "TemplateSelfEditAgent", "answer_loglik",
           "cloze_items", "parse_passages", "parse_qa_pairs"]

# What the self model is asked for (step 1) and what the writer is asked for (step 4).
CANDIDATE_PROMPT = (
    "Write {n} question and answer pairs about the passage below. Each question names the"
    " passage's subject and asks for one fact; each answer is a few words copied from the"
    " passage. Put each pair on its own line as 'Question: ... Answer: ...'.\n\n"
    "Title: {title}\nPassage: {context}"
)
VARIANT_PROMPT = (
    "Here is a passage and a question about it with its answer. Write {n} different questions"
    " that ask for the same fact in other words, each with the same answer. Put each pair on"
    " its own line as 'Question: ... Answer: ...'.\n\n"
    "Title: {title}\nPassage: {context}\n\nQuestion: {question}\nAnswer: {answer}"
)
UNCERTAINTY = ("likelihood", "disagreement")
REPLY_PREFIX = "Question:"
MAX_ANSWER_WORDS = 16  # an answer longer than this is a recital, not an answer: cut it


@dataclass
class QAItem:
    """A question-answer pair the agent may train on, with the self model's uncertainty."""

    question: str
    answer: str
    source: str  # "model", "cloze", "variant" or "restated" (a variant the writer failed)
    uncertainty: float = math.nan

    def text(self) -> str:
        """The training sequence: the pair in self_qa's format."""
        return f"Question: {self.question}\nAnswer: {self.answer}"


# --- reading the observation and the model's replies ------------------------------------
_BLOCK = re.compile(r"(?:^|\n\n)Title: (?P<title>[^\n]*)\nPassage: ")


def parse_passages(prompt: str) -> list[tuple[str, str]]:
    """The (title, context) of every passage a self-edit observation shows.

    >>> parse_passages("Write training data ...\\n\\nTitle: Ada\\nPassage: Ada was born.")
    [('Ada', 'Ada was born.')]
    >>> parse_passages("a template-mode meta-prompt")
    []
    """
    starts = list(_BLOCK.finditer(prompt))
    out = []
    for i, match in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(prompt)
        out.append((match["title"].strip(), prompt[match.end():end].strip()))
    return out


_QA = re.compile(
    r"(?:^|\n|\s)(?:\d{1,3}[.)]\s*)?(?:Question|Q)\s*\d*\s*[:.)-]\s*(?P<q>.+?)\s*"
    r"(?:\n\s*|\s)(?:Answer|A)\s*\d*\s*[:.)-]\s*(?P<a>[^\n]+)",
    re.IGNORECASE | re.DOTALL,
)


def _clip_answer(answer: str) -> str:
    answer = re.split(r"(?:Question|Q)\s*\d*\s*[:.)-]", answer, maxsplit=1)[0]
    words = answer.strip().strip('"').split()
    return " ".join(words[:MAX_ANSWER_WORDS]).rstrip(" ,;")


def parse_qa_pairs(text: str, *, source: str = "model") -> list[QAItem]:
    """Question-answer pairs in a model's reply: ``Question: ... Answer: ...`` lines (also
    ``Q:``/``A:`` and numbered forms) or a JSON list of ``{"question", "answer"}`` objects.

    A pair needs a question of at least 3 words and a non-empty answer that is not the
    question; answers are cut to 16 words.

    >>> [(p.question, p.answer) for p in parse_qa_pairs(
    ...     "Question: Who built the bridge? Answer: Ada Voss.\\nQ: When did it open?\\nA: 1901")]
    [('Who built the bridge?', 'Ada Voss.'), ('When did it open?', '1901')]
    """
    pairs: list[tuple[str, str]] = []
    if "[" in text and "question" in text.lower():
        try:
            items = extract_json(text, want=list)
        except TemplateError:
            items = []
        for item in items or []:
            if isinstance(item, dict):
                keys = {str(k).lower(): v for k, v in item.items()}
                if "question" in keys and "answer" in keys:
                    pairs.append((str(keys["question"]), str(keys["answer"])))
    if not pairs:
        pairs = [(m["q"], m["a"]) for m in _QA.finditer(text)]
    out = []
    seen: set[str] = set()
    for question, answer in pairs:
        question = " ".join(question.split())
        answer = _clip_answer(answer)
        key = normalize_answer(question)
        if (len(question.split()) < 3 or not answer or key in seen
                or normalize_answer(answer) in ("", key)):
            continue
        seen.add(key)
        out.append(QAItem(question, answer, source))
    return out


_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'])")


def cloze_items(title: str, context: str, *, limit: int, answer_words: int = 3) -> list[QAItem]:
    """Sentence-completion items cut from the passage: the sentence's start is the question,
    its last words the answer (a fallback when the model writes too few pairs).

    >>> [(c.question, c.answer) for c in cloze_items(
    ...     "Kell", "The Kell bridge was built by Ada Voss. It opened in the spring of 1901.",
    ...     limit=5)]  # doctest: +NORMALIZE_WHITESPACE
    [('Complete the sentence about Kell: The Kell bridge was built ...', 'by Ada Voss'),
     ('Complete the sentence about Kell: It opened in the ...', 'spring of 1901')]
    """
    out = []
    for sentence in _SENTENCE.split(context.strip()):
        words = sentence.strip().rstrip(".!?").split()
        if len(words) < answer_words + 3:
            continue
        stem, answer = words[:-answer_words], " ".join(words[-answer_words:])
        question = f"Complete the sentence about {title}: {' '.join(stem)} ..."
        out.append(QAItem(question, answer, "cloze"))
        if len(out) >= limit:
            break
    return out


def grounded(answer: str, context: str, *, share: float = 0.5) -> bool:
    """Whether most of the answer's words occur in the passage (SQuAD normalisation).

    The model's least likely answers include its hallucinations ("Answer: 2"): training on
    those teaches wrong facts, so an answer must be mostly words of the passage.

    >>> grounded("Ada Voss", "The bridge was built by Ada Voss."), grounded("2", "It is red.")
    (True, False)
    """
    words = normalize_answer(answer).split()
    known = set(normalize_answer(context).split())
    return bool(words) and sum(w in known for w in words) >= share * len(words)


# --- how unsure the self model is ---------------------------------------------------------
@torch.no_grad()
def answer_loglik(backend: Any, questions: Sequence[str], answers: Sequence[str], *,
                  batch_size: int = 8) -> list[float]:
    """Mean log-probability per token of each answer, given the env's closed-book answer
    prompt for its question (chat template applied as the env does), under the backend's
    current model. One no-grad forward pass per batch; the model's mode is restored.

    Low values mean the model does not expect the answer: it does not know the fact.
    """
    model, tok = backend.model, backend.tokenizer
    chat = getattr(backend, "chat", False)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rows = []
    for question, answer in zip(questions, answers, strict=True):
        prompt = backend.format_prompt(prompts.ANSWER_PROMPT.format(question=question))
        p_ids = tok(prompt, add_special_tokens=not chat)["input_ids"]
        a_ids = tok(answer, add_special_tokens=False)["input_ids"] or [tok.eos_token_id]
        rows.append((p_ids[-(1024 - len(a_ids)):], a_ids))  # the answer always fits
    out: list[float] = []
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        length = max(len(p) + len(a) for p, a in batch)
        ids = torch.full((len(batch), length), pad, dtype=torch.long)  # (B, T), right-padded
        mask = torch.zeros((len(batch), length), dtype=torch.long)
        for i, (p, a) in enumerate(batch):
            seq = p + a
            ids[i, :len(seq)] = torch.tensor(seq)
            mask[i, :len(seq)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        for i, (p, a) in enumerate(batch):
            # Token t is predicted at position t - 1: the answer's tokens from its logits.
            span = logits[i, len(p) - 1:len(p) + len(a) - 1].float()  # (A, V)
            logp = torch.log_softmax(span, dim=-1)
            target = torch.tensor(a, device=span.device)
            out.append(float(logp.gather(1, target[:, None]).mean()))
    model.train(was_training)
    return out


def answer_disagreement(backend: Any, questions: Sequence[str], *, samples: int,
                        temperature: float, max_new_tokens: int, seed: int) -> list[float]:
    """1 - the share of the most common (normalised) answer among ``samples`` sampled
    closed-book answers per question: 0 when every sample agrees."""
    texts = [prompts.ANSWER_PROMPT.format(question=q) for q in questions for _ in range(samples)]
    answers = backend.generate(texts, max_new_tokens=max_new_tokens, temperature=temperature,
                               seed=seed)
    out = []
    for i in range(len(questions)):
        group = [normalize_answer(a) for a in answers[i * samples:(i + 1) * samples]]
        out.append(1.0 - Counter(group).most_common(1)[0][1] / samples)
    return out


# --- the agents ---------------------------------------------------------------------------
def _self_edit(sequences: list[str], hyperparameters: Hyperparameters) -> str:
    return json.dumps({"sequences": sequences, "hyperparameters": hyperparameters.to_dict()},
                      ensure_ascii=False)


def _passages(observation: dict[str, Any], agent: str) -> list[tuple[str, str]]:
    shown = parse_passages(str(observation.get("prompt", "")))
    if not shown:
        raise ValueError(f"agent {agent} writes the training data itself and needs to see the "
                         "passage: set env.action_mode: self_edit")
    return shown


class TTSIAgent(BaseAgent):
    """Test-time self-improvement on a passage (TT-SI), or distillation (TT-D) with a writer.

    Args:
        backend: the self model (the env's backend): writes the candidates and measures its
            own uncertainty (it is the model the self-edit trains).
        name: the agent's name.
        writer: the backend that writes the variants; None = ``backend`` (TT-SI), another
            model = TT-D.
        candidates: size of the pool that is scored: the model's pairs, filled up with
            sentence-completion items from the passage.
        samples: sampled replies of the self model asking for candidates.
        keep: the most uncertain candidates that are trained on.
        variants: similar pairs the writer adds per kept candidate.
        uncertainty: ``likelihood`` (mean negative log-likelihood of the answer) or
            ``disagreement`` (among ``disagreement_samples`` sampled answers).
        include_passage: also train on the passage itself (as the synthetic human baselines).
        grounded: drop candidates and variants whose answer is not mostly words of the
            passage (the small model's least likely answers are often its inventions).
        hyperparameters: LoRA hyperparameters of the self-edit (default: SEAL's).
        temperature: sampling temperature of candidates and variants.
        max_new_tokens: tokens per candidate reply (variants get half).
        seed: seeds every sampled call (the agent's state carries the generator).
    """

    def __init__(
        self,
        backend: Any,
        *,
        name: str = "ttsi",
        writer: Any = None,
        candidates: int = 12,
        samples: int = 2,
        keep: int = 4,
        variants: int = 3,
        uncertainty: str = "likelihood",
        disagreement_samples: int = 4,
        include_passage: bool = True,
        grounded: bool = True,
        hyperparameters: Hyperparameters | dict[str, Any] | None = None,
        temperature: float = 0.7,
        max_new_tokens: int = 160,
        answer_max_tokens: int = 24,
        seed: int = 0,
    ) -> None:
        for key, value, low in (("candidates", candidates, 1), ("samples", samples, 1),
                                ("keep", keep, 1), ("variants", variants, 0),
                                ("disagreement_samples", disagreement_samples, 2),
                                ("max_new_tokens", max_new_tokens, 8)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{key} must be a whole number >= {low}, got {value!r}")
        if keep > candidates:
            raise ValueError(f"keep ({keep}) cannot exceed candidates ({candidates})")
        if uncertainty not in UNCERTAINTY:
            raise ValueError(f"uncertainty must be one of {', '.join(UNCERTAINTY)}, got "
                             f"{uncertainty!r}")
        if not 0.0 < temperature <= 2.0:
            raise ValueError(f"temperature must be in (0, 2], got {temperature}")
        if not isinstance(hyperparameters, Hyperparameters):
            try:
                hyperparameters, report = Hyperparameters.from_dict(hyperparameters)
            except TemplateError as err:
                raise ValueError(f"hyperparameters: {err}") from None
            if report["ignored_keys"]:
                raise ValueError(f"hyperparameters: unknown keys {report['ignored_keys']}")
        if hyperparameters.num_epochs < 1:
            raise ValueError("hyperparameters: a self-edit must train (num_epochs >= 1)")
        self.backend = backend
        self.writer = writer if writer is not None else backend
        self.name = name
        self.n_candidates, self.samples, self.keep, self.variants = (
            candidates, samples, keep, variants)
        self.uncertainty = uncertainty
        self.disagreement_samples = disagreement_samples
        self.include_passage = include_passage
        self.grounded = grounded
        self.hyperparameters = hyperparameters
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens
        self.answer_max_tokens = answer_max_tokens
        self.rng = np.random.default_rng(seed)
        self.counts: dict[str, Any] = {
            "proposals": 0, "candidates_model": 0, "candidates_ungrounded": 0,
            "candidates_cloze": 0, "kept": 0,
            "variants_written": 0, "variants_restated": 0, "sequences": 0, "trace": []}

    def _seed(self) -> int:
        return int(self.rng.integers(2**31 - 1))

    # -- the four steps, for every passage of a batch at once ----------------------------
    def candidates(self, passages: list[tuple[str, str]]) -> list[list[QAItem]]:
        """Step 1: candidate pairs per passage, from sampled replies of the self model."""
        texts = [CANDIDATE_PROMPT.format(n=self.n_candidates, title=t, context=c)
                 for t, c in passages for _ in range(self.samples)]
        # Starting the reply with the format steers a small model into it (as the meta-prompt
        # agents start theirs inside the JSON); a larger model's reply parses either way.
        replies = self.backend.generate(texts, max_new_tokens=self.max_new_tokens,
                                        temperature=self.temperature, seed=self._seed(),
                                        response_prefix=REPLY_PREFIX)
        out = []
        for i, (title, context) in enumerate(passages):
            items: list[QAItem] = []
            seen: set[str] = set()
            for reply in replies[i * self.samples:(i + 1) * self.samples]:
                for item in parse_qa_pairs(reply):
                    key = normalize_answer(item.question)
                    if self.grounded and not grounded(item.answer, context):
                        self.counts["candidates_ungrounded"] += 1
                        continue
                    if key not in seen and len(items) < self.n_candidates:
                        seen.add(key)
                        items.append(item)
            if len(items) < self.n_candidates:  # a pool to choose from: fill from the passage
                items += cloze_items(title, context, limit=self.n_candidates - len(items))
            out.append(items)
        return out

    def score(self, items: list[QAItem]) -> None:
        """Step 2: the self model's closed-book uncertainty on each item (higher = less sure)."""
        if not items:
            return
        questions = [it.question for it in items]
        if self.uncertainty == "likelihood":
            values = [-v for v in answer_loglik(self.backend, questions,
                                                [it.answer for it in items])]
        else:
            values = answer_disagreement(self.backend, questions,
                                         samples=self.disagreement_samples,
                                         temperature=self.temperature,
                                         max_new_tokens=self.answer_max_tokens,
                                         seed=self._seed())
        for item, value in zip(items, values, strict=True):
            item.uncertainty = float(value)

    def select(self, items: list[QAItem]) -> list[QAItem]:
        """Step 3: the ``keep`` items the model is least sure of (stable on ties)."""
        order = sorted(range(len(items)), key=lambda i: -items[i].uncertainty)
        return [items[i] for i in sorted(order[:self.keep])]

    def augment(self, passages: list[tuple[str, str]],
                kept: list[list[QAItem]]) -> list[list[list[QAItem]]]:
        """Step 4: ``variants`` similar pairs per kept item, written by the writer; an item
        the writer gives none for is restated as a statement instead."""
        if not self.variants:
            return [[[] for _ in items] for items in kept]
        jobs = [(p, it) for p, items in enumerate(kept) for it in items]
        texts = [VARIANT_PROMPT.format(n=self.variants, title=passages[p][0],
                                       context=passages[p][1], question=it.question,
                                       answer=it.answer) for p, it in jobs]
        replies = self.writer.generate(texts, max_new_tokens=max(self.max_new_tokens // 2, 8),
                                       temperature=self.temperature, seed=self._seed(),
                                       response_prefix=REPLY_PREFIX)
        out: list[list[list[QAItem]]] = [[] for _ in kept]
        for (p, item), reply in zip(jobs, replies, strict=True):
            same = normalize_answer(item.question)
            found = [v for v in parse_qa_pairs(reply, source="variant")
                     if normalize_answer(v.question) != same
                     and (not self.grounded or grounded(v.answer, passages[p][1]))]
            found = found[:self.variants]
            if not found:
                found = [QAItem(item.question.rstrip(" ?."), item.answer, "restated")]
            out[p].append(found)
        return out

    # -- the protocol ------------------------------------------------------------------
    def act(self, observation: dict[str, Any], info: dict[str, Any]) -> Action:
        return self.act_batch([observation], [info])[0]

    def act_batch(self, observations: Sequence[dict[str, Any]],
                  infos: Sequence[dict[str, Any]]) -> list[Action]:
        shown = [_passages(o, self.name) for o in observations]
        flat = [p for ps in shown for p in ps]  # pooled observations show several passages
        candidates = self.candidates(flat)
        self.score([it for items in candidates for it in items])
        kept = [self.select(items) for items in candidates]
        variants = self.augment(flat, kept)
        traces, per_passage = [], []
        for (title, context), items, chosen, extra in zip(flat, candidates, kept, variants,
                                                          strict=True):
            sequences = [f"{title}\n{context}"] if self.include_passage else []
            for item, more in zip(chosen, extra, strict=True):
                sequences += [item.text()] + [v.text() if v.source == "variant"
                                              else f"{v.question}: {v.answer}." for v in more]
            per_passage.append(sequences)
            self.counts["candidates_model"] += sum(it.source == "model" for it in items)
            self.counts["candidates_cloze"] += sum(it.source == "cloze" for it in items)
            self.counts["kept"] += len(chosen)
            self.counts["variants_written"] += sum(v.source == "variant" for m in extra
                                                   for v in m)
            self.counts["variants_restated"] += sum(v.source == "restated" for m in extra
                                                    for v in m)
            traces.append({
                "title": title,
                "candidates": [asdict(it) for it in items],
                "kept": [items.index(it) for it in chosen],
                "variants": [len(m) for m in extra],
                "sequences": len(sequences),
            })
        out: list[Action] = []
        at = 0
        for passages in shown:
            sequences = [s for seqs in per_passage[at:at + len(passages)] for s in seqs]
            at += len(passages)
            self.counts["sequences"] += len(sequences)
            out.append(_self_edit(sequences, self.hyperparameters))
        self.counts["proposals"] += len(observations)
        self.counts["trace"] = traces
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "counts": dict(self.counts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.counts = dict(state["counts"])


class TemplateSelfEditAgent(BaseAgent):
    """A human template applied by the agent in self-edit mode: the self model completes the
    template's instruction on the shown passage (the env's completion prompt, parser,
    ``max_sequences``, temperature and length), and the sequences (plus the passage when the
    template includes it) are the self-edit, with the template's hyperparameters.

    What the env does in template mode, moved to the agent, so that human baselines run in a
    self-edit-mode benchmark beside TT-SI/TT-D on the same passages and seeds. The sampling
    seeds are the agent's own, so completions differ from a template-mode run's draws.
    """

    def __init__(self, backend: Any, template: Template, *, name: str | None = None,
                 temperature: float = 0.7, max_new_tokens: int = 256,
                 max_sequences: int = 64, seed: int = 0) -> None:
        if not template.trains:
            raise ValueError(f"template {template.name!r} does not train; a self-edit must")
        self.backend = backend
        self.template = template
        self.name = name or template.name or "template"
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens
        self.max_sequences = max_sequences
        self.rng = np.random.default_rng(seed)

    def act(self, observation: dict[str, Any], info: dict[str, Any]) -> Action:
        return self.act_batch([observation], [info])[0]

    def act_batch(self, observations: Sequence[dict[str, Any]],
                  infos: Sequence[dict[str, Any]]) -> list[Action]:
        shown = [_passages(o, self.name) for o in observations]
        flat = [p for ps in shown for p in ps]
        instruction = self.template.data_creation_instruction.strip()
        completions = [""] * len(flat)
        if instruction:
            texts = [prompts.COMPLETION_PROMPT.format(instruction=instruction, title=t,
                                                      context=c) for t, c in flat]
            completions = self.backend.generate(
                texts, max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                seed=int(self.rng.integers(2**31 - 1)))
        out: list[Action] = []
        at = 0
        for passages in shown:
            sequences: list[str] = []
            for (title, context), completion in zip(passages, completions[at:], strict=False):
                if self.template.include_passage:
                    sequences.append(f"{title}\n{context}")
                sequences += parse_sequences(completion, max_sequences=self.max_sequences)
            at += len(passages)
            out.append(_self_edit(sequences, self.template.hyperparameters))  # type: ignore[arg-type]
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]


# --- config entries (agents/registry.py registers these) ----------------------------------
TTSI_KEYS = {"candidates", "samples", "keep", "variants", "uncertainty", "disagreement_samples",
             "include_passage", "grounded", "hyperparameters", "temperature", "max_new_tokens",
             "seed"}


def _env_settings(env: Any) -> dict[str, Any]:
    cfg = getattr(env, "config", None)
    return {} if cfg is None else {"answer_max_tokens": cfg.answer_max_tokens}


def ttsi_from_spec(spec: dict[str, Any], env: Any) -> TTSIAgent:
    """``{type: ttsi, ...}``: the env's own model writes, scores and augments (self mode)."""
    if env is None:
        raise ValueError("a ttsi agent measures the env model's uncertainty: it needs the env")
    kwargs = {k: v for k, v in spec.items() if k in TTSI_KEYS}
    return TTSIAgent(env.backend, name=spec.get("name", "ttsi"), **kwargs, **_env_settings(env))


def ttd_from_spec(spec: dict[str, Any], env: Any) -> TTSIAgent:
    """``{type: ttd, teacher: <model>, ...}``: a separate (stronger) model writes the variants;
    the env's model still writes the candidates and measures its own uncertainty."""
    from selfedit.envs.backend import HFBackend

    if env is None:
        raise ValueError("a ttd agent measures the env model's uncertainty: it needs the env")
    teacher = spec.get("teacher")
    if not isinstance(teacher, str) or not teacher:
        raise ValueError("a ttd agent needs 'teacher': a hub id, a local model directory, a "
                         ".gguf file or 'embedded' (the model that writes the variants)")
    cfg = env.config
    writer = HFBackend(teacher, dtype=spec.get("teacher_dtype", cfg.dtype), device=cfg.device)
    kwargs = {k: v for k, v in spec.items() if k in TTSI_KEYS}
    return TTSIAgent(env.backend, name=spec.get("name", "ttd"), writer=writer, **kwargs,
                     **_env_settings(env))


def template_self_edit_from_spec(spec: dict[str, Any], env: Any) -> TemplateSelfEditAgent:
    """``{type: self_edit_template, baseline: implications}`` (or ``template: {...}``)."""
    if env is None:
        raise ValueError("a self_edit_template agent completes its template with the env's "
                         "model: it needs the env")
    try:
        if "template" in spec:
            template, _ = Template.from_dict(spec["template"])
        else:
            template = human_baseline(str(spec.get("baseline", "")),
                                      **spec.get("hyperparameters", {}))
    except (TemplateError, KeyError) as err:
        raise ValueError(str(err)) from None
    cfg = env.config
    return TemplateSelfEditAgent(env.backend, template, name=spec.get("name"),
                                 temperature=cfg.completion_temperature,
                                 max_new_tokens=cfg.completion_max_tokens,
                                 max_sequences=cfg.max_sequences, seed=spec.get("seed", 0))
