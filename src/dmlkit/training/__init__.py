"""Training pipeline (layer 5): configuration, embedding models, the training loop, run folders and the CLI.

``dmlkit train`` runs :func:`train` on the embedded :class:`TrainConfig` default and writes a run folder.
"""

from __future__ import annotations

from .components import OPTIMIZERS, build_component
from .config import FORMAT_VERSION, ComponentConfig, TrainConfig, parse_override, parse_value
from .models import MLP

__all__ = [
    "FORMAT_VERSION",
    "OPTIMIZERS",
    "MLP",
    "ComponentConfig",
    "TrainConfig",
    "build_component",
    "parse_override",
    "parse_value",
]
