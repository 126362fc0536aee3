"""LLM template writers: a meta-prompt sampler, an archive-conditioned searcher, and a
novelty-seeking archive (beyond the papers).

All three ask a language model (the env's own model in self mode) to write a template from a
meta-prompt that explains the task, parse its reply, and retry a bounded number of times
when the reply is not a valid template. Replies that stay invalid are handed to the env
as they are, so the env's penalty counts them: a searcher cannot hide its failures.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from selfedit.agents.base import Action, BaseAgent
from selfedit.agents.fixed import HUMAN_BASELINES
from selfedit.envs import prompts
from selfedit.envs.templates import Template, TemplateError, parse_template

__all__ = ["ArchiveAgent", "ArchiveRecord", "MetaPromptAgent", "NoveltyArchiveAgent",
           "parse_reply"]

# Starting the reply inside the JSON object steers small models into the format; the
# parser still accepts anything a larger model writes instead.
JSON_PREFIX = '{"data_creation_instruction": "'


def _repairs(text: str) -> list[str]:
    """The reply, then the same reply with the closers a truncated JSON object lacks."""
    return [text, text + "}", text + "}}", text + '"}', text + '"}}']


def parse_reply(reply: str) -> Template | None:
    """A model's reply as a template, closing a truncated JSON object; None if invalid.

    >>> parse_reply('{"data_creation_instruction": "List facts').data_creation_instruction
    'List facts'
    >>> parse_reply("no json") is None
    True
    """
    for candidate in _repairs(reply):
        try:
            template, _ = parse_template(candidate)
            return template
        except TemplateError:
            continue
    return None


class MetaPromptAgent(BaseAgent):
    """Samples templates from a meta-prompt, with exploit and explore sampling settings.

    Args:
        backend: anything with ``generate(prompts, max_new_tokens=, temperature=, seed=,
            response_prefix=)`` (the env's backend in self mode).
        explore_ratio: share of proposals sampled with ``explore_temperature`` (the rest use
            ``exploit_temperature``).
        max_retries: extra attempts when a reply is not a valid template.
        prefix_json: start the reply with ``{"data_creation_instruction": "``.
    """

    def __init__(
        self,
        backend: Any,
        *,
        name: str = "metaprompt",
        explore_ratio: float = 0.5,
        exploit_temperature: float = 0.7,
        explore_temperature: float = 1.1,
        max_retries: int = 3,
        max_new_tokens: int = 256,
        prefix_json: bool = True,
        seed: int = 0,
    ) -> None:
        if not 0.0 <= explore_ratio <= 1.0:
            raise ValueError(f"explore_ratio must be between 0 and 1, got {explore_ratio}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.backend = backend
        self.name = name
        self.explore_ratio = explore_ratio
        self.temperatures = (exploit_temperature, explore_temperature)
        self.max_retries = max_retries
        self.max_new_tokens = max_new_tokens
        self.prefix = JSON_PREFIX if prefix_json else ""
        self.rng = np.random.default_rng(seed)
        self.counts = {"proposals": 0, "attempts": 0, "invalid_outputs": 0, "gave_up": 0}

    # -- what the model is shown, and how its reply is read ----------------------------
    def parse(self, reply: str) -> Any:
        """The action a reply stands for, or None when it is not a valid one (the template
        parser here; subclasses for other action kinds, such as ARC recipes, override it)."""
        return parse_reply(reply)

    def prompt(self, observation: dict[str, Any]) -> str:
        """The observation's prompt: the meta-prompt (plus an archive under ArchiveObservation)."""
        return observation["prompt"]

    # -- proposing --------------------------------------------------------------------
    def act(self, observation: dict[str, Any], info: dict[str, Any]) -> Action:
        return self.act_batch([observation], [info])[0]

    def act_batch(
        self, observations: Sequence[dict[str, Any]], infos: Sequence[dict[str, Any]]
    ) -> list[Action]:
        texts = [self.prompt(o) for o in observations]
        explore = self.rng.random(len(texts)) < self.explore_ratio
        temps = [self.temperatures[int(e)] for e in explore]
        results: list[Action | None] = [None] * len(texts)
        last: list[str] = [""] * len(texts)
        for _attempt in range(1 + self.max_retries):
            todo = [i for i, r in enumerate(results) if r is None]
            if not todo:
                break
            for temp in sorted({temps[i] for i in todo}):  # one batched call per setting
                group = [i for i in todo if temps[i] == temp]
                replies = self.backend.generate(
                    [texts[i] for i in group],
                    max_new_tokens=self.max_new_tokens,
                    temperature=temp,
                    seed=int(self.rng.integers(2**31 - 1)),
                    response_prefix=self.prefix,
                )
                for i, reply in zip(group, replies, strict=True):
                    self.counts["attempts"] += 1
                    last[i] = reply
                    template = self.parse(reply)
                    if template is None:
                        self.counts["invalid_outputs"] += 1
                    else:
                        results[i] = template
        self.counts["proposals"] += len(texts)
        self.replies = last  # the batch's raw replies (ReST-EM trains on them)
        out: list[Action] = []
        for i, r in enumerate(results):
            if r is None:
                self.counts["gave_up"] += 1
                out.append(last[i])  # the env penalises it; the failure is on the record
            else:
                out.append(r)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "counts": dict(self.counts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.counts = dict(state["counts"])


@dataclass
class ArchiveRecord:
    """An evaluated template with its running means."""

    template: dict[str, Any]
    evaluations: int = 0
    accuracy: float = 0.0
    normalized_gain: float = 0.0

    def add(self, accuracy: float, normalized_gain: float) -> None:
        self.evaluations += 1
        self.accuracy += (accuracy - self.accuracy) / self.evaluations
        self.normalized_gain += (normalized_gain - self.normalized_gain) / self.evaluations

    def stats(self) -> dict[str, float]:
        return {"accuracy": self.accuracy, "normalized_gain": self.normalized_gain,
                "evaluations": self.evaluations}


def _key(template: dict[str, Any]) -> str:
    body = {k: template[k] for k in ("data_creation_instruction", "hyperparameters",
                                     "include_passage") if k in template}
    return json.dumps(body, sort_keys=True)


class ArchiveAgent(MetaPromptAgent):
    """Conditions the template writer on an archive of evaluated templates and their scores.

    The meta-prompt shows the ``show`` best and ``show`` worst templates with their mean
    accuracy, normalized gain and number of evaluations, and asks for improvements on the
    winners (arXiv 2601.14532). Before writing its own, the agent proposes the human
    baselines named in ``seed_baselines`` so the archive starts from scores measured in the
    same run, never from numbers copied from a paper.
    """

    def __init__(
        self,
        backend: Any,
        *,
        name: str = "archive",
        show: int = 2,
        seed_baselines: Sequence[str] = ("implications", "rewrite", "self_qa", "passage"),
        **kwargs: Any,
    ) -> None:
        super().__init__(backend, name=name, **kwargs)
        unknown = [b for b in seed_baselines if b not in HUMAN_BASELINES]
        if unknown:
            raise ValueError(f"unknown seed baselines {unknown}; use {list(HUMAN_BASELINES)}")
        self.show = show
        self.seed_baselines = list(seed_baselines)
        self.archive: dict[str, ArchiveRecord] = {}

    # -- archive ------------------------------------------------------------------------
    def observe(self, action: Action, reward: float, info: dict[str, Any]) -> None:
        if info.get("error") or not info.get("template"):
            return  # invalid actions are counted by the env's penalty, not archived
        template = dict(info["template"])
        template.pop("name", None)
        record = self.archive.setdefault(_key(template), ArchiveRecord(template))
        record.add(float(info["accuracy"]), float(info["normalized_gain"]))

    def ranked(self) -> list[ArchiveRecord]:
        return sorted(self.archive.values(), key=lambda r: (r.accuracy, r.normalized_gain),
                      reverse=True)

    def elites(self) -> tuple[list[ArchiveRecord], list[ArchiveRecord]]:
        """(best, worst) shown in the prompt; disjoint."""
        ranked = self.ranked()
        best = ranked[: self.show]
        worst = [r for r in ranked[::-1][: self.show] if r not in best]
        return best, worst

    def prompt(self, observation: dict[str, Any]) -> str:
        """The env's meta-prompt (its operators and pooling included) plus the archive."""
        base = observation.get("prompt") or prompts.meta_prompt()
        best, worst = self.elites()
        if not best:
            return base
        section = prompts.archive_section(
            [(r.template, r.stats()) for r in best], [(r.template, r.stats()) for r in worst]
        )
        return base + "\n\n" + section

    def act_batch(
        self, observations: Sequence[dict[str, Any]], infos: Sequence[dict[str, Any]]
    ) -> list[Action]:
        out: list[Action | None] = []
        for _ in observations:
            out.append(HUMAN_BASELINES[self.seed_baselines.pop(0)] if self.seed_baselines
                       else None)
        need = [i for i, a in enumerate(out) if a is None]
        if need:
            written = super().act_batch([observations[i] for i in need],
                                        [infos[i] for i in need])
            for i, action in zip(need, written, strict=True):
                out[i] = action
        return [a for a in out if a is not None]

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "seed_baselines": list(self.seed_baselines),
            "archive": [asdict(r) for r in self.archive.values()],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.seed_baselines = list(state["seed_baselines"])
        self.archive = {}
        for raw in state["archive"]:
            record = ArchiveRecord(**raw)
            self.archive[_key(record.template)] = record


class NoveltyArchiveAgent(ArchiveAgent):
    """A quality-diversity archive: good *and* different templates are shown and chosen.

    The template-search paper saw its archive homogenise (hyperparameter similarity 0.93 ->
    1.00 in five iterations) and called for explicit novelty pressure. Here:

    - every template is embedded (instruction text + normalised hyperparameters);
    - its *novelty* is the mean distance to its ``k`` nearest neighbours in the archive;
    - the prompt shows elites picked greedily by ``accuracy + novelty_weight * novelty``
      where novelty is measured against the elites already picked (so two paraphrases are
      not both shown);
    - the model writes ``candidates`` templates per proposal, and the agent keeps the one
      with the best novelty against the archive (a near-duplicate loses to a new idea).
    """

    def __init__(
        self,
        backend: Any,
        *,
        name: str = "novelty",
        embedder: Any = None,
        novelty_weight: float = 0.5,
        k: int = 3,
        candidates: int = 3,
        **kwargs: Any,
    ) -> None:
        super().__init__(backend, name=name, **kwargs)
        if embedder is None:
            from selfedit.agents.embedding import TemplateEmbedder, TextEmbedder

            embedder = TemplateEmbedder(TextEmbedder())
        self.embedder = embedder
        self.novelty_weight = novelty_weight
        self.k = k
        self.candidates = max(1, candidates)

    def _vectors(self, templates: Sequence[dict[str, Any]]) -> np.ndarray:
        return np.asarray(self.embedder.embed(list(templates)), dtype=np.float64)

    def novelty(self, template: dict[str, Any], against: Sequence[dict[str, Any]]) -> float:
        """Mean distance to the ``k`` nearest templates in ``against`` (inf when empty)."""
        others = [t for t in against if _key(t) != _key(template)]
        if not others:
            return math.inf
        vecs = self._vectors([template, *others])
        dists = np.sort(np.linalg.norm(vecs[1:] - vecs[0], axis=1))
        return float(dists[: self.k].mean())

    def elites(self) -> tuple[list[ArchiveRecord], list[ArchiveRecord]]:
        records = list(self.archive.values())
        best: list[ArchiveRecord] = []
        while records and len(best) < self.show:
            def score(r: ArchiveRecord) -> float:
                nov = self.novelty(r.template, [b.template for b in best])
                return r.accuracy + self.novelty_weight * (1.0 if math.isinf(nov) else nov)

            pick = max(records, key=score)
            best.append(pick)
            records.remove(pick)
        worst = [r for r in self.ranked()[::-1][: self.show] if r not in best]
        return best, worst

    def choose(self, candidates: Sequence[Template]) -> Template:
        """The candidate most novel with respect to the archive."""
        archived = [r.template for r in self.archive.values()]
        return max(candidates, key=lambda t: self.novelty(_plain(t), archived))

    def act_batch(
        self, observations: Sequence[dict[str, Any]], infos: Sequence[dict[str, Any]]
    ) -> list[Action]:
        out: list[Action] = []
        for obs, info in zip(observations, infos, strict=True):
            if self.seed_baselines:
                out.append(HUMAN_BASELINES[self.seed_baselines.pop(0)])
                continue
            written = MetaPromptAgent.act_batch(self, [obs] * self.candidates,
                                                [info] * self.candidates)
            valid = [w for w in written if isinstance(w, Template)]
            out.append(self.choose(valid) if valid else written[0])
        return out


def _plain(template: Template) -> dict[str, Any]:
    out = template.to_dict()
    out.pop("name", None)
    return out
