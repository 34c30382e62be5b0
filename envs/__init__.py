"""Gymnasium environments of amc: ``amc/Pruning-v0`` is AMC's per-unit pruning environment.

Example:
    >>> import gymnasium, envs
    >>> env = gymnasium.make(
    ...     "amc/Pruning-v0", model=model, example_inputs=x, target="flops=0.5", scorer=score
    ... )
"""

from __future__ import annotations

from gymnasium.envs.registration import register, registry

from envs.pruning_env import FEATURES, PruningEnv, ResetNeededError

ENV_ID = "amc/Pruning-v0"

if ENV_ID not in registry:
    register(id=ENV_ID, entry_point="envs.pruning_env:PruningEnv")

__all__ = ["ENV_ID", "FEATURES", "PruningEnv", "ResetNeededError"]
