"""Run every docstring example in the package, imported the way users import it.

Modules are discovered, not listed, so a new module's examples run without anyone
remembering to add it; ``OPTIONAL`` names modules that need an extra (vllm, ray).
"""

import doctest
import importlib
import pkgutil

import pytest

import selfedit.agents
import selfedit.envs
import selfedit.training

OPTIONAL = {"selfedit.envs.vllm_backend"}


def _modules() -> list[str]:
    names = ["selfedit"]
    for package in (selfedit.envs, selfedit.agents, selfedit.training):
        names.append(package.__name__)
        for info in pkgutil.walk_packages(package.__path__, prefix=package.__name__ + "."):
            if info.name not in OPTIONAL:
                names.append(info.name)
    return sorted(names)


@pytest.mark.parametrize("name", _modules())
def test_doctests(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
