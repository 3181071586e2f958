"""dmlkit: deep metric learning for PyTorch.

Composable distances, reducers, regularizers, losses, miners and samplers that drop into any training
loop, with the same names and signatures as pytorch-metric-learning, plus evaluation and a train/test
pipeline. Subpackages are imported on demand: ``from dmlkit import losses, miners``.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
