"""The template policy being trained: sampling templates from the meta-prompt.

The policy is a language model (an :class:`~selfedit.envs.backend.HFBackend`; in self mode
the env's own) that writes templates exactly as :class:`~selfedit.agents.llm.MetaPromptAgent`
does: the env's meta-prompt, the reply opened inside the JSON object, the same parser. After
an update its fingerprint (the key of every cache) must follow the new weights:
:func:`after_update`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from selfedit.agents.llm import JSON_PREFIX, MetaPromptAgent, parse_reply
from selfedit.envs import prompts
from selfedit.envs.backend import HFBackend
from selfedit.envs.selfedit_env import SelfEditEnv
from selfedit.envs.templates import Template

__all__ = ["Sample", "TemplatePolicy", "after_update", "canonical_json", "load_policy",
           "parse_policy_reply"]


@dataclass(frozen=True)
class Sample:
    """One template the policy wrote: its JSON (canonical) or, if invalid, the raw reply."""

    text: str
    template: Template | None

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
    """The template writer being trained.

    Args:
        backend: the policy's model (an :class:`HFBackend`; in self mode the env's backend).
        temperature, max_new_tokens, max_retries, prefix_json: how templates are sampled
            (through :class:`~selfedit.agents.llm.MetaPromptAgent`).
    """

    def __init__(self, backend: Any, *, temperature: float = 1.0, max_new_tokens: int = 256,
                 max_retries: int = 2, prefix_json: bool = True) -> None:
        self.backend = backend
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens
        self.max_retries = max_retries
        self.prefix_json = prefix_json

    @property
    def prompt(self) -> str:
        """The meta-prompt: the env's observation for a template writer (no archive)."""
        return prompts.meta_prompt()

    @property
    def response_prefix(self) -> str:
        return JSON_PREFIX if self.prefix_json else ""

    def sample(self, n: int, *, seed: int, greedy: bool = False) -> list[Sample]:
        """``n`` templates; seeded, so a resumed run samples exactly what the killed one did."""
        agent = MetaPromptAgent(
            self.backend, explore_ratio=0.0,
            exploit_temperature=0.0 if greedy else self.temperature,
            max_retries=0 if greedy else self.max_retries,  # greedy: a retry repeats itself
            max_new_tokens=self.max_new_tokens, prefix_json=self.prefix_json, seed=seed,
        )
        out = []
        for action in agent.act_batch([{"prompt": self.prompt}] * n, [{}] * n):
            if isinstance(action, Template):
                out.append(Sample(canonical_json(action), action))
            else:
                out.append(Sample(str(action), None))
        return out


def load_policy(cfg: Any, env: SelfEditEnv, policy_backend: Any = None) -> Any:
    """Self mode: the env's own backend. Separate mode: ``policy_model`` loaded on its own."""
    if cfg.mode == "self":
        return env.backend
    return policy_backend or HFBackend(cfg.policy_model, dtype=cfg.policy_dtype,
                                       device=cfg.env.device)


def after_update(cfg: Any, env: SelfEditEnv, policy: Any) -> str:
    """New weights were merged into the policy: the fingerprints (cache keys) must follow."""
    if cfg.mode == "self":
        return env.rebase()  # the env's base model *is* the policy
    return policy.refresh()
