"""Run every docstring example in the package, imported the way users import it."""

import doctest
import importlib

import pytest

MODULES = [
    "selfedit.envs.templates",
    "selfedit.envs.parsing",
    "selfedit.envs.corpus",
    "selfedit.envs.config",
    "selfedit.envs.selfedit_env",
    "selfedit.envs.backend",
    "selfedit.envs.prompts",
    "selfedit.agents.registry",
    "selfedit.agents.embedding",
    "selfedit.agents.bandits",
    "selfedit.training.collapse",
    "selfedit.training.config",
    "selfedit.training.run",
    "selfedit.training.stats",
    "selfedit.training.grpo",
    "selfedit.training.checkpoint",
    "selfedit.agents.llm",
    "selfedit.envs.grading",
    "selfedit.training.innerloop",
]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no doctest"
    assert result.failed == 0
