"""The policy being trained: sampling actions (templates, or ARC recipes) from prompts.

The policy is a language model (an :class:`~selfedit.envs.backend.HFBackend`; in self mode
the env's own) that writes actions exactly as the env's writer agent does: for SQuAD
:class:`~selfedit.agents.llm.MetaPromptAgent` (the meta-prompt, the reply opened inside the
JSON object, the same parser), for ARC :class:`~selfedit.agents.arc.RecipeWriterAgent` (the
task's observation, the recipe parser). What it writes is an
:class:`~selfedit.training.env_kinds.ActionFormat`. After an update its fingerprint (the key
of every cache) must follow the new weights: :func:`after_update`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from selfedit.agents.llm import JSON_PREFIX, MetaPromptAgent, parse_reply
from selfedit.envs import prompts
from selfedit.envs.backend import HFBackend
from selfedit.envs.templates import Template

if TYPE_CHECKING:
    from selfedit.training.env_kinds import ActionFormat

__all__ = ["Sample", "TemplatePolicy", "after_update", "canonical_json", "load_policy",
           "parse_policy_reply"]


@dataclass(frozen=True)
class Sample:
    """One action the policy wrote: its JSON (canonical) or, if invalid, the raw reply.

    ``template`` is the parsed action (a :class:`Template`; an ARC recipe for ARC), None if
    the reply was not a valid one.
    """

    text: str
    template: Any

    @property
    def valid(self) -> bool:
        return self.template is not None


def canonical_json(template: Template) -> str:
    """The template as SFT target and cache key: its JSON without a display name."""
    body = template.to_dict()
    body.pop("name", None)
    return json.dumps(body, ensure_ascii=False)


# The policy's replies are parsed exactly as the LLM agents parse theirs.
parse_policy_reply = parse_reply


class TemplatePolicy:
    """The template (or recipe) writer being trained.

    Args:
        backend: the policy's model (an :class:`HFBackend`; in self mode the env's backend).
        temperature, max_new_tokens, max_retries, prefix_json: how actions are sampled
            (through the format's writer agent, :class:`~selfedit.agents.llm.MetaPromptAgent`
            for templates).
        action_format: what the policy writes (the env kind's
            :meth:`~selfedit.training.env_kinds.EnvKind.action_format`); None = templates.
    """

    def __init__(self, backend: Any, *, temperature: float = 1.0, max_new_tokens: int = 256,
                 max_retries: int = 2, prefix_json: bool = True,
                 action_format: ActionFormat | None = None) -> None:
        self.backend = backend
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens
        self.max_retries = max_retries
        self.prefix_json = prefix_json
        self.action_format = action_format

    @property
    def prompt(self) -> str:
        """The meta-prompt: the env's observation for a template writer (no archive). An
        ARC policy writes from each task's own observation instead (``sample(prompt=)``)."""
        return prompts.meta_prompt()

    @property
    def response_prefix(self) -> str:
        if not self.prefix_json:
            return ""
        return JSON_PREFIX if self.action_format is None else self.action_format.prefix

    def sample(self, n: int, *, seed: int, greedy: bool = False,
               prompt: str | None = None) -> list[Sample]:
        """``n`` actions written from ``prompt`` (default :attr:`prompt`); seeded, so a
        resumed run samples exactly what the killed one did."""
        return self.sample_prompts([self.prompt if prompt is None else prompt] * n, seed=seed,
                                   greedy=greedy)

    def sample_prompts(self, texts: Sequence[str], *, seed: int,
                       greedy: bool = False) -> list[Sample]:
        """One action per prompt of ``texts``, written in one batched call (and retries)."""
        writer = MetaPromptAgent if self.action_format is None else self.action_format.writer
        canonical = canonical_json if self.action_format is None else self.action_format.canonical
        agent = writer(
            self.backend, explore_ratio=0.0,
            exploit_temperature=0.0 if greedy else self.temperature,
            max_retries=0 if greedy else self.max_retries,  # greedy: a retry repeats itself
            max_new_tokens=self.max_new_tokens, prefix_json=self.prefix_json, seed=seed,
        )
        out = []
        for action in agent.act_batch([{"prompt": t} for t in texts], [{}] * len(texts)):
            if isinstance(action, str):  # the writer gave up: the raw reply
                out.append(Sample(action, None))
            else:
                out.append(Sample(canonical(action), action))
        return out


def load_policy(cfg: Any, env: Any, policy_backend: Any = None) -> Any:
    """Self mode: the env's own backend. Separate mode: ``policy_model`` loaded on its own."""
    if cfg.mode == "self":
        return env.backend
    return policy_backend or HFBackend(cfg.policy_model, dtype=cfg.policy_dtype,
                                       device=cfg.env.device)


def after_update(cfg: Any, env: Any, policy: Any) -> str:
    """New weights were merged into the policy: the fingerprints (cache keys) must follow."""
    if cfg.mode == "self":
        return env.rebase()  # the env's base model *is* the policy
    return policy.refresh()
