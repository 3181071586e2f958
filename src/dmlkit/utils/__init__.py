"""pytorch-metric-learning compatible import paths, and nothing else.

Each module here re-exports, under pytorch-metric-learning's module and function names, what dmlkit
implements elsewhere, so ``from pytorch_metric_learning.utils import loss_and_miner_utils as lmu`` becomes
``from dmlkit.utils import loss_and_miner_utils as lmu``. New code should import from the owning package
(for example :mod:`dmlkit.indices`). Submodules are imported on demand.
"""

from __future__ import annotations

__all__: list[str] = []
