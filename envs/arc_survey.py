"""Deprecated location of the ARC survey: it is ``selfedit arc-survey`` now.

The survey is a runner (it builds agents, trains the policy, writes run directories), so it
lives in :mod:`selfedit.training.arc_survey` beside the other runners; the env package does
not import the training package. ``python -m selfedit.envs.arc_survey`` keeps working with a
deprecation warning, and the names below are forwarded on first use (so importing this
module loads nothing from ``training``).
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

_FORWARDED = ("Evaluation", "Survey", "SurveyConfig", "load_survey_config", "main",
              "run_survey")
_NEW = "selfedit.training.arc_survey"


def __getattr__(name: str) -> Any:
    if name in _FORWARDED:
        return getattr(importlib.import_module(_NEW), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    warnings.warn("python -m selfedit.envs.arc_survey is deprecated: run `selfedit arc-survey`",
                  DeprecationWarning, stacklevel=1)
    raise SystemExit(importlib.import_module(_NEW).main(prog="python -m selfedit.envs.arc_survey"))
