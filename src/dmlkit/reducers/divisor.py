from __future__ import annotations

import torch
from torch import Tensor

from .._validation import message
from ..types import Terms
from .base import BaseReducer, zero_loss

__all__ = ["DivisorReducer"]


class DivisorReducer(BaseReducer):
    """The sum of the values divided by the group's ``divisor`` (set by the loss); 0 when the divisor is 0.

    Example:
        >>> from dmlkit.types import Terms
        >>> DivisorReducer()(Terms(torch.tensor([1.0, 2.0, 3.0]), torch.arange(3), divisor=4), torch.zeros(3, 2))
        tensor(1.5000)
    """

    def reduce(self, terms: Terms, embeddings: Tensor, labels: Tensor | None) -> Tensor:
        if terms.divisor is None:
            raise ValueError(message("DivisorReducer", "divisor", "set by the loss for this group of terms", None))
        if float(terms.divisor) == 0:
            return zero_loss(embeddings)
        values = terms.values
        out = values.sum() / terms.divisor
        if values.dtype in (torch.float16, torch.bfloat16) and not bool(out.isfinite()):
            # The half-precision sum overflowed: sum and divide in float32, then cast the (smaller) result back.
            out = (values.float().sum() / terms.divisor).to(values.dtype)
        return out
