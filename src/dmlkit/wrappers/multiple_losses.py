"""A weighted sum of several metric losses, each optionally fed by its own miner."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from .._validation import Described, is_real_number, message

__all__ = ["MultipleLosses"]

_NAME = "MultipleLosses"


class MultipleLosses(nn.Module):
    """The weighted sum ``sum_k weights[k] * losses[k](embeddings, labels, indices_k)`` of several losses.

    A convenience combination with no paper of its own: e.g. a triplet loss on mined triplets plus a
    contrastive loss on all pairs. Losses, miners and weights are given either as lists (matched by
    position) or as dicts (matched by name).

    Args:
        losses: a non-empty list or dict of losses (modules called as
            ``loss(embeddings, labels, indices_tuple)``).
        miners: optional miners, of the same kind as ``losses``: a list of the same length, or a dict whose
            keys are among the names of ``losses``; ``None`` (or a missing key) means the loss gets the
            ``indices_tuple`` passed to :meth:`forward`.
        weights: optional weights, of the same kind as ``losses``: a list of the same length or a dict with
            exactly the names of ``losses``; each weight a finite real number. Default: 1 for every loss.

    Example:
        >>> from dmlkit.losses import TripletMarginLoss
        >>> from dmlkit.miners import TripletMarginMiner
        >>> combined = MultipleLosses(
        ...     {"all": TripletMarginLoss(margin=0.1), "mined": TripletMarginLoss(margin=0.2)},
        ...     miners={"mined": TripletMarginMiner(margin=0.2)},
        ...     weights={"all": 1.0, "mined": 0.5},
        ... )
        >>> combined(torch.randn(8, 16), torch.arange(4).repeat(2)).ndim
        0
    """

    def __init__(
        self,
        losses: Sequence[nn.Module] | Mapping[str, nn.Module],
        miners: Sequence[nn.Module | None] | Mapping[str, nn.Module | None] | None = None,
        weights: Sequence[float] | Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.is_dict = isinstance(losses, Mapping)
        if not self.is_dict and not isinstance(losses, (list, tuple)):
            raise TypeError(message(_NAME, "losses", "a list or dict of losses", Described(type(losses).__name__)))
        if len(losses) == 0:
            raise ValueError(message(_NAME, "losses", "a non-empty list or dict of losses", losses))
        names = self._names(losses, "losses")
        for name, loss in self._entries(losses):
            if not isinstance(loss, nn.Module):
                raise TypeError(message(_NAME, f"losses[{name!r}]", "a loss module", Described(type(loss).__name__)))
        self.losses: nn.ModuleDict | nn.ModuleList = nn.ModuleDict(losses) if self.is_dict else nn.ModuleList(losses)  # type: ignore[arg-type]

        self.miners: nn.ModuleDict | nn.ModuleList | None = None
        if miners is not None:
            self._check_keys(miners, "miners", names, exact=False)
            for name, miner in self._entries(miners):
                if miner is not None and not isinstance(miner, nn.Module):
                    raise TypeError(
                        message(_NAME, f"miners[{name!r}]", "None or a miner module", Described(type(miner).__name__))
                    )
            self.miners = nn.ModuleDict(miners) if self.is_dict else nn.ModuleList(miners)  # type: ignore[arg-type]

        if weights is None:
            self.weights: list[float] | dict[str, float] = (
                {name: 1 for name in names} if self.is_dict else [1] * len(names)  # type: ignore[misc]
            )
        else:
            self._check_keys(weights, "weights", names, exact=True)
            for name, weight in self._entries(weights):
                if not is_real_number(weight):
                    raise TypeError(
                        message(_NAME, f"weights[{name!r}]", "a real number", Described(type(weight).__name__))
                    )
                if not math.isfinite(weight):
                    raise ValueError(message(_NAME, f"weights[{name!r}]", "finite", weight))
            self.weights = dict(weights) if self.is_dict else list(weights)  # type: ignore[arg-type]

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor,
        indices_tuple: Sequence[Tensor] | None = None,
        ref_emb: Tensor | None = None,
        ref_labels: Tensor | None = None,
    ) -> Tensor:
        """The weighted sum of the losses.

        Args:
            embeddings: ``(batch_size, embedding_size)``.
            labels: ``(batch_size,)`` integer labels.
            indices_tuple: pairs or triplets for every loss; not allowed when any miner is given (each loss
                with a miner takes that miner's output instead).
            ref_emb: optional reference set, passed to every miner and loss.
            ref_labels: the reference set's labels.
        """
        if indices_tuple is not None and self._has_miner():
            raise ValueError(
                message(
                    _NAME,
                    "indices_tuple",
                    "None when `miners` are given (each loss with a miner takes the miner's output)",
                    Described("an indices tuple"),
                )
            )
        reference = {} if ref_emb is None else {"ref_emb": ref_emb, "ref_labels": ref_labels}
        total: Tensor | None = None
        for name, loss in self._entries(self.losses):
            miner = self._miner(name)
            current = indices_tuple if miner is None else miner(embeddings, labels, **reference)
            value = loss(embeddings, labels, current, **reference) * self.weights[name]  # type: ignore[index]
            total = value if total is None else total + value
        assert total is not None  # `losses` is never empty
        return total

    def _miner(self, name: str | int) -> nn.Module | None:
        if self.miners is None:
            return None
        if isinstance(self.miners, nn.ModuleDict):
            # a ModuleDict has no .get(); a missing key means "no miner"
            return self.miners[name] if name in self.miners else None  # type: ignore[index, operator]  # noqa: SIM401
        return self.miners[name]  # type: ignore[index]

    def _has_miner(self) -> bool:
        return self.miners is not None and any(m is not None for _, m in self._entries(self.miners))

    def _entries(self, container: Any) -> Iterator[tuple[Any, Any]]:
        """``(name, value)`` pairs: dict keys, or list positions."""
        if isinstance(container, (Mapping, nn.ModuleDict)):
            return iter(container.items())
        return iter(enumerate(container))

    def _names(self, losses: Any, arg: str) -> list[Any]:
        if not self.is_dict:
            return list(range(len(losses)))
        for key in losses:
            if not isinstance(key, str):
                raise TypeError(message(_NAME, arg, "a dict with string keys", Described(f"key {key!r}")))
        return list(losses)

    def _check_keys(self, container: Any, arg: str, names: list[Any], exact: bool) -> None:
        if self.is_dict:
            if not isinstance(container, Mapping):
                raise TypeError(message(_NAME, arg, "a dict, like `losses`", Described(type(container).__name__)))
            unknown = [k for k in container if k not in names]
            missing = [k for k in names if k not in container] if exact else []
            if unknown or missing:
                rule = f"keyed by {'exactly ' if exact else ''}the names of `losses` {names}"
                got = ", ".join(
                    part
                    for part in (
                        f"unknown keys {unknown}" if unknown else "",
                        f"missing keys {missing}" if missing else "",
                    )
                    if part
                )
                raise ValueError(message(_NAME, arg, rule, Described(got)))
            return
        if not isinstance(container, (list, tuple)):
            raise TypeError(message(_NAME, arg, "a list, like `losses`", Described(type(container).__name__)))
        if len(container) != len(names):
            rule = f"of length {len(names)}, one entry per loss" + (" (None for no miner)" if arg == "miners" else "")
            raise ValueError(message(_NAME, arg, rule, Described(f"length {len(container)}")))
