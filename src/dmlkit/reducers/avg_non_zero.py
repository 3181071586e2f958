from __future__ import annotations

from .threshold import ThresholdReducer

__all__ = ["AvgNonZeroReducer"]


class AvgNonZeroReducer(ThresholdReducer):
    """The mean of the positive values only (values ``> 0``); 0 when none is positive.

    Hinge losses use it so that satisfied constraints do not dilute the loss.

    Example:
        >>> from dmlkit.types import Terms
        >>> AvgNonZeroReducer()(Terms(torch.tensor([0.0, 1.0, 3.0]), torch.arange(3)), torch.zeros(3, 2))
        tensor(2.)
    """

    def __init__(self, collect_stats: bool = False) -> None:
        super().__init__(low=0, collect_stats=collect_stats)
