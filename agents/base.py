"""The agent protocol every template-writing policy implements.

An agent proposes actions for observations (one at a time or in batches, for vector envs),
observes the outcome of each step, and saves/loads its state so runs can resume. The runner
only talks to this protocol: which agent runs is one config key.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from selfedit.envs.templates import Template

__all__ = ["Action", "Agent", "BaseAgent"]

Action = str | Template


@runtime_checkable
class Agent(Protocol):
    name: str

    def act(self, observation: dict[str, Any], info: dict[str, Any]) -> Action: ...

    def act_batch(
        self, observations: Sequence[dict[str, Any]], infos: Sequence[dict[str, Any]]
    ) -> list[Action]: ...

    def observe(self, action: Action, reward: float, info: dict[str, Any]) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class BaseAgent:
    """Defaults for the protocol: batches map ``act``; stateless agents save nothing."""

    name: str = "agent"

    def act(self, observation: dict[str, Any], info: dict[str, Any]) -> Action:
        raise NotImplementedError

    def act_batch(
        self, observations: Sequence[dict[str, Any]], infos: Sequence[dict[str, Any]]
    ) -> list[Action]:
        return [self.act(o, i) for o, i in zip(observations, infos, strict=True)]

    def observe(self, action: Action, reward: float, info: dict[str, Any]) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None
