"""Simulated environments; MetaWorld and gymnasium are optional and imported only when a function needs them.

`evaluate_policy` evaluates in MetaWorld; `evaluate_gym` in any gymnasium environment
(docs/evaluate-your-simulator.md).
"""

from offrl.envs.gym import evaluate_gym, metaworld_env
from offrl.envs.metaworld import (
    DEFAULT_HORIZON,
    DEFAULT_NOISE_SIGMA,
    MetaWorldEnv,
    MultiTaskEnv,
    available_tasks,
    make_env,
    task_list,
)
from offrl.envs.render import RenderConfig, Renderer
from offrl.envs.rollout import collect_episodes, evaluate_policy
from offrl.envs.scripted import scripted_policy

__all__ = [
    "DEFAULT_HORIZON",
    "DEFAULT_NOISE_SIGMA",
    "MetaWorldEnv",
    "MultiTaskEnv",
    "RenderConfig",
    "Renderer",
    "available_tasks",
    "collect_episodes",
    "evaluate_gym",
    "evaluate_policy",
    "make_env",
    "metaworld_env",
    "scripted_policy",
    "task_list",
]
