"""selfedit-gym: a Gymnasium environment for self-edits.

Importing this package registers ``selfedit/SQuAD-v0`` and ``selfedit/ARC-v0`` with Gymnasium.
"""

__version__ = "0.1.0"

from selfedit.envs import register_envs as _register_envs

_register_envs()

# SEAL's second domain, few-shot ARC (issue 15): a training recipe in, 1 if the task is solved.
import gymnasium as _gym  # noqa: E402 - registration follows the SQuAD env's

if "selfedit/ARC-v0" not in _gym.registry:
    _gym.register(id="selfedit/ARC-v0", entry_point="selfedit.envs.arc:ArcEnv")
