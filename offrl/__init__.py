"""offrl: offline RL for robots, with the workflow that says whether to trust the policy.

Implements Kumar, Singh, Tian, Finn, Levine, "A Workflow for Offline Model-Free Robotic Reinforcement
Learning" (CoRL 2021): conservative offline RL (CQL) plus the metrics, diagnosis and checkpoint selection that
work without running the robot.
"""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("offrl")
except _metadata.PackageNotFoundError:  # a source tree that was not installed
    __version__ = "0+unknown"
