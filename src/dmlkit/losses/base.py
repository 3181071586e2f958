"""The loss family's base: validation, reference sets, regularisation and reduction in one place."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .._validation import Described, check_embeddings, check_labels, check_range, check_reference, message
from ..distances import BaseDistance, LpDistance
from ..indices import check_indices_tuple, convert_to_pairs, convert_to_triplets, list_label_pairs
from ..reducers import BaseReducer, MeanReducer
from ..reducers.base import zero_loss
from ..regularizers import BaseRegularizer
from ..types import LabelPairs, Pairs, TermKind, Terms, Triplets, empty_index
from .functional import check_two_views

__all__ = ["BaseMetricLossFunction", "BaseTwoViewLoss"]


class BaseMetricLossFunction(nn.Module):
    """Base of every metric loss.

    ``loss(embeddings, labels=None, indices_tuple=None, ref_emb=None, ref_labels=None)`` validates its
    inputs, calls :meth:`compute_terms` (the one method a subclass implements), adds the embedding
    regularizer's penalty, and reduces every group of terms with ``reducer``. A loss whose groups are all
    empty (no valid pair or triplet) returns 0 and back-propagates zero gradients.

    With ``ref_emb``/``ref_labels``, anchors come from ``embeddings`` and positives/negatives from the
    reference set; without them the batch is its own reference and self-pairs are excluded.

    Args:
        distance: how embeddings are compared; defaults to the class's ``default_distance``.
        reducer: how un-reduced terms become a scalar; defaults to the class's ``default_reducer``.
        embedding_regularizer: an optional penalty on ``embeddings``.
        embedding_reg_weight: the penalty's weight, ``>= 0``.
        collect_stats: accepted for compatibility; statistics are not collected.
    """

    default_distance: ClassVar[Callable[[], BaseDistance]] = LpDistance
    default_reducer: ClassVar[Callable[[], BaseReducer]] = MeanReducer
    #: whether the loss accepts a reference set distinct from the batch (CrossBatchMemory needs it).
    supports_ref_emb: ClassVar[bool] = True
    #: whether the loss needs labels (or an indices_tuple) to know who is similar to whom.
    requires_labels: ClassVar[bool] = True
    #: whether :meth:`compute_terms` takes a :class:`~dmlkit.types.LabelPairs` as it is (forming the pairs by
    #: tiles); otherwise the pairs are listed before it is called.
    accepts_label_pairs: ClassVar[bool] = False
    #: the distance class the loss is defined for, when it is defined for one only (checked at construction).
    required_distance: ClassVar[type[BaseDistance] | None] = None

    def __init__(
        self,
        distance: BaseDistance | None = None,
        reducer: BaseReducer | None = None,
        embedding_regularizer: BaseRegularizer | None = None,
        embedding_reg_weight: float = 1,
        collect_stats: bool = False,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if distance is not None and not isinstance(distance, BaseDistance):
            raise TypeError(message(name, "distance", "a dmlkit distance (e.g. LpDistance())", type(distance).__name__))
        if reducer is not None and not isinstance(reducer, BaseReducer):
            raise TypeError(message(name, "reducer", "a dmlkit reducer (e.g. MeanReducer())", type(reducer).__name__))
        check_range(name, "embedding_reg_weight", embedding_reg_weight, low=0)
        self.distance = distance if distance is not None else self.get_default_distance()
        required = type(self).required_distance
        if required is not None and not isinstance(self.distance, required):
            raise TypeError(message(name, "distance", f"a {required.__name__}", type(self.distance).__name__))
        self.reducer = reducer if reducer is not None else self.get_default_reducer()
        self.embedding_regularizer = embedding_regularizer
        self.embedding_reg_weight = embedding_reg_weight
        self.collect_stats = collect_stats

    def get_default_distance(self) -> BaseDistance:
        return type(self).default_distance()

    def get_default_reducer(self) -> BaseReducer:
        return type(self).default_reducer()

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor | None = None,
        indices_tuple: Sequence[Tensor] | None = None,
        ref_emb: Tensor | None = None,
        ref_labels: Tensor | None = None,
    ) -> Tensor:
        name = type(self).__name__
        check_embeddings(name, embeddings)
        if labels is not None:
            check_labels(name, labels, embeddings.shape[0])
            labels = labels.to(embeddings.device)
        if ref_labels is not None:
            ref_labels = ref_labels.to(embeddings.device)
        check_reference(name, embeddings, labels, ref_emb, ref_labels)
        if self.requires_labels and labels is None and indices_tuple is None:
            raise ValueError(message(name, "labels", "given (or an `indices_tuple` from a miner)", None))
        if ref_emb is not None and not self.supports_ref_emb:
            raise ValueError(message(name, "ref_emb", "None: this loss does not support a reference set", "a tensor"))
        if ref_emb is None:
            ref_emb, ref_labels = embeddings, labels
        checked: tuple[Tensor, ...] | None
        if isinstance(indices_tuple, LabelPairs):
            checked = self._label_pairs(indices_tuple, labels, ref_labels, ref_emb.shape[0])
        else:
            checked = check_indices_tuple(name, indices_tuple, embeddings.shape[0], ref_emb.shape[0], embeddings.device)
        if embeddings.shape[0] == 0:
            # an empty batch compares nothing: 0, connected to the inputs and to the loss's own parameters
            return sum((p.sum() * 0 for p in self.parameters()), zero_loss(embeddings))
        self._warn_if_single_class(labels, ref_labels, checked)
        groups = dict(self.compute_terms(embeddings, labels, checked, ref_emb, ref_labels))
        groups.update(self.regularization_terms(embeddings))
        return self.reducer(groups, embeddings, labels)

    def _label_pairs(
        self, pairs: LabelPairs, labels: Tensor | None, ref_labels: Tensor | None, num_ref: int
    ) -> LabelPairs | Pairs:
        """Check a :class:`LabelPairs`; pass it on when the loss forms the pairs itself, else list them."""
        name = type(self).__name__
        if labels is None or ref_labels is None:
            raise ValueError(message(name, "labels", "given with a LabelPairs indices_tuple", None))
        excluded = pairs.excluded_ref
        if not isinstance(excluded, Tensor) or excluded.shape != labels.shape or excluded.is_floating_point():
            rule = f"LabelPairs(excluded_ref) with one integer reference index per query ({labels.shape[0]})"
            raise ValueError(message(name, "indices_tuple", rule, pairs))
        excluded = excluded.to(labels.device)
        if excluded.numel() and (int(excluded.min()) < 0 or int(excluded.max()) >= num_ref):
            raise ValueError(message(name, "indices_tuple", f"LabelPairs indices in [0, {num_ref})", pairs))
        pairs = LabelPairs(excluded)
        return pairs if self.accepts_label_pairs else list_label_pairs(labels, ref_labels, pairs)

    def regularization_terms(self, embeddings: Tensor) -> dict[str, Terms]:
        """Already-reduced penalties added to the loss: here the embedding regularizer's, if any."""
        if self.embedding_regularizer is None or self.embedding_reg_weight == 0:
            return {}
        penalty = self.embedding_regularizer(embeddings) * self.embedding_reg_weight
        return {"embedding_reg_loss": Terms.reduced(penalty)}

    def compute_terms(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices_tuple: tuple[Tensor, ...] | None,
        ref_emb: Tensor,
        ref_labels: Tensor | None,
    ) -> Mapping[str, Terms]:
        """Named groups of un-reduced terms. The default adapts a pytorch-metric-learning style
        ``compute_loss`` returning ``{name: {"losses", "indices", "reduction_type"}}``."""
        if type(self).compute_loss is BaseMetricLossFunction.compute_loss:
            raise NotImplementedError(f"{type(self).__name__} must implement compute_terms().")
        loss_dict = self.compute_loss(embeddings, labels, indices_tuple, ref_emb, ref_labels)
        return {key: _terms_from_loss_info(info, embeddings) for key, info in loss_dict.items()}

    def compute_loss(
        self, embeddings: Tensor, labels: Tensor | None, indices_tuple: Any, ref_emb: Tensor, ref_labels: Any
    ) -> dict[str, dict[str, Any]]:
        """Override either this (pytorch-metric-learning style) or :meth:`compute_terms`."""
        raise NotImplementedError

    # Helpers shared by concrete losses -------------------------------------------------------------

    def triplets(
        self,
        labels: Tensor | None,
        indices_tuple: tuple[Tensor, ...] | None,
        ref_labels: Tensor | None,
        t_per_anchor: int | str = "all",
        generator: torch.Generator | None = None,
    ) -> Triplets:
        """The triplets to score: the given ones, those formed from given pairs, or all from labels."""
        return convert_to_triplets(indices_tuple, labels, ref_labels, t_per_anchor, generator)  # type: ignore[arg-type]

    def pairs(
        self, labels: Tensor | None, indices_tuple: tuple[Tensor, ...] | None, ref_labels: Tensor | None
    ) -> Pairs:
        """The pairs to score: the given ones, those of given triplets, or all from labels."""
        return convert_to_pairs(indices_tuple, labels, ref_labels)  # type: ignore[arg-type]

    def _warn_if_single_class(
        self, labels: Tensor | None, ref_labels: Tensor | None, indices_tuple: tuple[Tensor, ...] | None
    ) -> None:
        if not self.requires_labels or indices_tuple is not None or labels is None or labels.numel() == 0:
            return
        pool = labels if ref_labels is None or ref_labels is labels else torch.cat([labels, ref_labels])
        if bool((pool == pool[0]).all()):
            warnings.warn(
                f"{type(self).__name__}: every label in the batch is {int(pool[0])}, so there are no "
                "negative pairs and every term that needs one is empty. Sample several classes per batch "
                "(e.g. MPerClassSampler).",
                stacklevel=5,
            )


class BaseTwoViewLoss(BaseMetricLossFunction):
    """Base of the self-supervised losses on two views of the same samples, ``embeddings`` and ``ref_emb`` (row
    ``i`` of one pairing with row ``i`` of the other), compared coordinate-wise: no labels, no pairs and no
    ``distance``. ``batch_rule`` says why a batch needs at least two rows (it completes that error message).
    """

    requires_labels: ClassVar[bool] = False
    batch_rule: ClassVar[str] = "the statistics are over the batch"

    def __init__(self, **kwargs: Any) -> None:
        if kwargs.get("distance") is not None:
            got = Described(type(kwargs["distance"]).__name__)
            rule = "None: the two views are compared coordinate-wise"
            raise ValueError(message(type(self).__name__, "distance", rule, got))
        super().__init__(**kwargs)

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor | None = None,
        indices_tuple: Sequence[Tensor] | None = None,
        ref_emb: Tensor | None = None,
        ref_labels: Tensor | None = None,
    ) -> Tensor:
        """The loss of the two views ``embeddings`` and ``ref_emb``; ``labels``, ``indices_tuple`` and
        ``ref_labels`` must be left out."""
        name = type(self).__name__
        check_two_views(name, embeddings, labels, indices_tuple, ref_emb, ref_labels, self.batch_rule)
        return super().forward(embeddings, ref_emb=ref_emb)


_KINDS = {kind.value: kind for kind in TermKind}


def _terms_from_loss_info(info: Mapping[str, Any], embeddings: Tensor) -> Terms:
    losses = info["losses"]
    kind = _KINDS[info["reduction_type"]]
    if not isinstance(losses, Tensor):
        # PML's convention for "no loss": a plain number, usually 0. Keep the graph connected.
        if kind is TermKind.ALREADY_REDUCED:
            return Terms.reduced(zero_loss(embeddings) + float(losses))
        return Terms(embeddings.new_zeros(0), empty_index(embeddings.device), kind)
    if kind is TermKind.ALREADY_REDUCED:
        return Terms.reduced(losses)
    indices = info["indices"]
    anchors = indices if kind is TermKind.ELEMENT else indices[0]
    return Terms(losses, anchors, kind, info.get("divisor"))
