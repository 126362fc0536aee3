"""selfedit-gym: a Gymnasium environment for self-edits.

Importing this package registers ``selfedit/SQuAD-v0`` with Gymnasium.
"""

__version__ = "0.1.0"

from selfedit.envs import register_envs as _register_envs

_register_envs()
