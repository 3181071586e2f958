"""An encoder for short items given as sets of tokens: learned token embeddings and attention pooling.

A subject line, a title or a list of tags is a handful of tokens whose order carries little; the encoder embeds
each token and pools them with one learned query (pooling by attention, as the single-seed PMA block of the
Set Transformer, Lee et al., 2019, arXiv:1810.00825), so the result does not depend on the order of the
tokens nor on how much padding follows them (a permutation-invariant set function, Zaheer et al., 2017, Deep
Sets, arXiv:1703.06114).
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._atomic import atomic_write
from .._validation import Described, check_range, check_type, message
from ..data.vocabulary import PAD_ID, UNK_ID, PaddedItems, Vocabulary, pad_items
from ..errors import CorruptFileError

__all__ = ["SetEncoder", "attention_pool"]

_OWNER = "SetEncoder"
_KIND = "dmlkit.set_encoder"
_FORMAT_VERSION = 1


def attention_pool(
    embeddings: Tensor, mask: Tensor, query: Tensor, key_weight: Tensor, key_bias: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Pool each row's unmasked embeddings with one query by scaled dot-product attention.

    For row ``b``: keys ``k_l = W x_l + c``, scores ``s_l = <q, k_l> / sqrt(K)`` (Vaswani et al., 2017,
    arXiv:1706.03762), ``-inf`` where ``mask`` is False, weights ``a = softmax(s)`` and the pooled vector
    ``sum_l a_l x_l``. Masked positions get weight exactly 0. Every row needs at least one unmasked position
    (an all-masked row gives NaN; :class:`SetEncoder` rejects it first).

    Args:
        embeddings: ``(B, L, D)`` token embeddings (the values).
        mask: ``(B, L)`` bool, True on the positions to attend to.
        query: ``(K,)`` the learned query.
        key_weight: ``(K, D)`` the key projection ``W``.
        key_bias: ``(K,)`` its offset ``c``, or None.

    Returns:
        ``(pooled, weights)``: ``(B, D)`` and ``(B, L)`` (each row of ``weights`` sums to 1).

    Example:
        >>> x = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])
        >>> pooled, weights = attention_pool(x, torch.tensor([[True, True, False]]), torch.zeros(2), torch.eye(2))
        >>> pooled.tolist(), weights.tolist()
        ([[0.5, 0.5]], [[0.5, 0.5, 0.0]])
    """
    keys = F.linear(embeddings, key_weight, key_bias)
    scores = (keys @ query) / math.sqrt(query.shape[0])
    weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=1)
    pooled = torch.bmm(weights.unsqueeze(1), embeddings).squeeze(1)
    return pooled, weights


class SetEncoder(nn.Module):
    """Embed variable-length items of token ids into fixed-length vectors, independent of token order.

    Each token id gets a learned embedding (``nn.Embedding``; the padding id's row stays zero); one learned
    query attends over an item's token embeddings through a key projection (:func:`attention_pool`, the
    single-seed pooling by multihead attention of Lee et al., 2019, arXiv:1810.00825, with one head), padding
    masked out; an optional linear projection maps the pooled vector to ``output_dim``. There are no
    positional encodings, so reordering an item's tokens or padding it further leaves its embedding unchanged
    (up to floating-point rounding). Items are multisets: a repeated token counts more. The query starts at
    zero, so an untrained encoder averages the token embeddings.

    The unknown id (:data:`~dmlkit.data.UNK_ID`, 1) is an ordinary learned token: an item made only of
    unknown tokens gets the (pooled, projected) unknown embedding. An item without any token is an error
    (ValueError naming its position in the batch).

    ``forward`` takes the batch in any of these forms:

    * ``model(token_ids)``: a ``(B, L)`` int64 tensor padded with ``padding_idx`` (the mask is
      ``token_ids != padding_idx``);
    * ``model(token_ids, mask)`` with a ``(B, L)`` bool mask, True on real tokens (it decides alone: a masked-in
      padding id is attended to), or ``model(token_ids, lengths=lengths)`` with ``(B,)`` item lengths;
    * ``model(pad_items(batch))``: the output of :func:`~dmlkit.data.pad_items` (or the first part of
      :func:`~dmlkit.data.pad_labeled_items`'s), a ``(token_ids, mask)`` pair;
    * ``model([[4, 2], [3]])``: a list of token-id lists (padded here).

    Args:
        num_embeddings: the number of token ids, ``len(vocabulary)``, ``>= 2``.
        embedding_dim: the token embedding size, ``>= 1``.
        output_dim: the output size of a final linear projection, ``>= 1``; None: no projection, the output is
            the pooled token embedding (size ``embedding_dim``).
        key_dim: the size of the keys and the query, ``>= 1``; None: ``embedding_dim``.
        padding_idx: the id used for padding, in ``[0, num_embeddings)``; its embedding is zero and untrained.
        dropout: dropout probability on the token embeddings during training, in ``[0, 1)``.
        normalize: scale each output to unit L2 norm.

    Example:
        >>> from dmlkit.data import Vocabulary, pad_items
        >>> vocabulary = Vocabulary.build(["fast red cars", "slow blue bikes"])
        >>> model = SetEncoder(len(vocabulary), embedding_dim=8, output_dim=4)
        >>> batch = pad_items([vocabulary.encode("red fast cars"), vocabulary.encode("cars red fast")])
        >>> out, weights = model(batch, return_attention=True)
        >>> tuple(out.shape), bool(torch.allclose(out[0], out[1], atol=1e-6))
        ((2, 4), True)
        >>> model([[2, 3], [4]], return_attention=True)[1][1].tolist()
        [1.0, 0.0]
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int = 128,
        output_dim: int | None = None,
        *,
        key_dim: int | None = None,
        padding_idx: int = PAD_ID,
        dropout: float = 0.0,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        check_range(_OWNER, "num_embeddings", num_embeddings, low=2, integer=True)
        check_range(_OWNER, "embedding_dim", embedding_dim, low=1, integer=True)
        if output_dim is not None:
            check_range(_OWNER, "output_dim", output_dim, low=1, integer=True)
        if key_dim is not None:
            check_range(_OWNER, "key_dim", key_dim, low=1, integer=True)
        check_range(_OWNER, "padding_idx", padding_idx, low=0, high=num_embeddings - 1, integer=True)
        check_range(_OWNER, "dropout", dropout, low=0, high=1, high_inclusive=False)
        check_type(_OWNER, "normalize", normalize, bool, "a bool")
        self.num_embeddings, self.embedding_dim, self.output_dim = num_embeddings, embedding_dim, output_dim
        self.key_dim = embedding_dim if key_dim is None else key_dim
        self.padding_idx, self.normalize = padding_idx, normalize
        self.embedding = nn.Embedding(num_embeddings, embedding_dim, padding_idx=padding_idx)
        self.key = nn.Linear(embedding_dim, self.key_dim)
        self.query = nn.Parameter(torch.zeros(self.key_dim))
        self.dropout = nn.Dropout(dropout)
        self.projection = nn.Linear(embedding_dim, output_dim) if output_dim is not None else None

    @property
    def out_features(self) -> int:
        """The size of the output embeddings."""
        return self.embedding_dim if self.output_dim is None else self.output_dim

    def _config(self) -> dict[str, Any]:
        return {
            "num_embeddings": self.num_embeddings,
            "embedding_dim": self.embedding_dim,
            "output_dim": self.output_dim,
            "key_dim": self.key_dim,
            "padding_idx": self.padding_idx,
            "dropout": self.dropout.p,
            "normalize": self.normalize,
        }

    def extra_repr(self) -> str:
        return f"normalize={self.normalize}"

    # --------------------------------------------------------------------------------------------- input

    def _inputs(self, token_ids: Any, mask: Tensor | None, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
        """The ``(token_ids, mask)`` of any accepted batch form, validated."""
        if not isinstance(token_ids, Tensor):
            is_pair = isinstance(token_ids, (tuple, list)) and len(token_ids) == 2
            if isinstance(token_ids, PaddedItems) or (
                is_pair and isinstance(token_ids[0], Tensor) and token_ids[0].ndim == 2
            ):
                if mask is not None or lengths is not None:
                    rule = "None when `token_ids` is a (token_ids, mask) pair"
                    raise ValueError(message(_OWNER, "mask", rule, Described("a second mask")))
                token_ids, mask = token_ids
            elif isinstance(token_ids, Sequence) and not isinstance(token_ids, (str, bytes)):
                if mask is not None or lengths is not None:
                    rule = "None when `token_ids` is a list of items"
                    raise ValueError(message(_OWNER, "mask", rule, Described("a mask")))
                token_ids, mask = pad_items(token_ids)
                token_ids, mask = token_ids.to(self.query.device), mask.to(self.query.device)
            else:
                rule = "a (B, L) tensor of token ids, a (token_ids, mask) pair or a list of token-id lists"
                raise TypeError(message(_OWNER, "token_ids", rule, Described(type(token_ids).__name__)))
        assert isinstance(token_ids, Tensor)
        if (
            token_ids.ndim != 2
            or token_ids.is_floating_point()
            or token_ids.is_complex()
            or token_ids.dtype == torch.bool
        ):
            shown = Described(f"tensor of shape {tuple(token_ids.shape)} and dtype {token_ids.dtype}")
            raise ValueError(message(_OWNER, "token_ids", "a 2-D integer tensor of shape (B, L)", shown))
        if token_ids.numel() and (int(token_ids.min()) < 0 or int(token_ids.max()) >= self.num_embeddings):
            bad = int(token_ids.min()) if int(token_ids.min()) < 0 else int(token_ids.max())
            rule = f"ids in [0, {self.num_embeddings}) (num_embeddings must be len(vocabulary))"
            raise ValueError(message(_OWNER, "token_ids", rule, bad))
        if mask is not None and lengths is not None:
            raise ValueError(message(_OWNER, "lengths", "None when `mask` is given", Described("both")))
        if lengths is not None:
            mask = self._lengths_mask(lengths, token_ids)
        elif mask is None:
            mask = token_ids != self.padding_idx
        elif not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != token_ids.shape:
            shown = Described(f"{type(mask).__name__} {getattr(mask, 'dtype', '')} {tuple(getattr(mask, 'shape', ()))}")
            rule = f"a bool tensor of the shape of `token_ids` {tuple(token_ids.shape)}"
            raise ValueError(message(_OWNER, "mask", rule, shown))
        empty = ~mask.any(dim=1)
        if bool(empty.any()):
            row = int(torch.nonzero(empty)[0, 0])
            rule = f"a non-empty item (encode an item with no known token as [{UNK_ID}], the unknown id, or drop it)"
            raise ValueError(message(_OWNER, f"token_ids[{row}]", rule, Described("an empty item")))
        return token_ids, mask

    @staticmethod
    def _lengths_mask(lengths: Tensor, token_ids: Tensor) -> Tensor:
        if not isinstance(lengths, Tensor) or lengths.ndim != 1 or lengths.is_floating_point():
            raise ValueError(message(_OWNER, "lengths", "a 1-D integer tensor", Described(type(lengths).__name__)))
        if lengths.shape[0] != token_ids.shape[0] or (lengths.numel() and int(lengths.max()) > token_ids.shape[1]):
            rule = f"{token_ids.shape[0]} lengths, each <= {token_ids.shape[1]} (the shape of `token_ids`)"
            raise ValueError(message(_OWNER, "lengths", rule, lengths.tolist()))
        positions = torch.arange(token_ids.shape[1], device=token_ids.device)
        return positions < lengths.to(token_ids.device)[:, None]

    # ------------------------------------------------------------------------------------------- forward

    def forward(
        self,
        token_ids: Tensor | PaddedItems | Sequence[Sequence[int]],
        mask: Tensor | None = None,
        *,
        lengths: Tensor | None = None,
        return_attention: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Embed a batch of items.

        Args:
            token_ids: ``(B, L)`` padded token ids, a ``(token_ids, mask)`` pair (:func:`~dmlkit.data.pad_items`)
                or a list of token-id lists.
            mask: ``(B, L)`` bool, True on real tokens; None: ``lengths`` or ``token_ids != padding_idx``.
            lengths: ``(B,)`` item lengths (the first ``lengths[b]`` positions are real), instead of ``mask``.
            return_attention: also return the ``(B, L)`` attention weights (exactly 0 on masked positions).

        Returns:
            ``(B, out_features)`` embeddings, or ``(embeddings, weights)`` with ``return_attention``.

        Raises:
            ValueError: an empty item (naming its row), ids outside ``[0, num_embeddings)``, a mask or lengths
                of the wrong shape, or both given.
            TypeError: an unsupported batch form.
        """
        ids, real = self._inputs(token_ids, mask, lengths)
        tokens = self.dropout(self.embedding(ids))
        pooled, weights = attention_pool(tokens, real, self.query, self.key.weight, self.key.bias)
        out = self.projection(pooled) if self.projection is not None else pooled
        if self.normalize:
            out = F.normalize(out, dim=1)
        return (out, weights) if return_attention else out

    def embed_items(self, items: Sequence[Sequence[int]], batch_size: int = 1024) -> Tensor:
        """The embeddings of encoded items, in eval mode and without gradients (the mode is restored).

        Args:
            items: token-id lists (e.g. :meth:`~dmlkit.data.Vocabulary.encode_many`'s output).
            batch_size: items embedded at once, ``>= 1``.
        """
        check_range(f"{_OWNER}.embed_items", "batch_size", batch_size, low=1, integer=True)
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                parts = [self(pad_items(items[i : i + batch_size])) for i in range(0, len(items), batch_size)]
        finally:
            self.train(was_training)
        if not parts:
            return torch.empty(0, self.out_features, device=self.query.device, dtype=self.query.dtype)
        return torch.cat([p for p in parts if isinstance(p, Tensor)])

    # ---------------------------------------------------------------------------------------------- files

    def save(self, path: str | os.PathLike[str], vocabulary: Vocabulary | None = None) -> Path:
        """Write the configuration, the weights and (when given) the vocabulary to one file, atomically.

        Args:
            path: the file to write.
            vocabulary: the vocabulary whose ids the model was trained on (``len(vocabulary)`` must equal
                ``num_embeddings``). Without it, :meth:`load` needs the vocabulary passed in.
        """
        if vocabulary is not None:
            check_type(f"{_OWNER}.save", "vocabulary", vocabulary, Vocabulary, "a Vocabulary or None")
            if len(vocabulary) != self.num_embeddings:
                rule = f"of size num_embeddings ({self.num_embeddings}), the vocabulary the model was trained with"
                raise ValueError(message(f"{_OWNER}.save", "vocabulary", rule, Described(f"size {len(vocabulary)}")))
        state = {
            "format": _KIND,
            "format_version": _FORMAT_VERSION,
            "config": self._config(),
            "state_dict": {name: value.detach().cpu() for name, value in self.state_dict().items()},
            "vocabulary": vocabulary.to_dict() if vocabulary is not None else None,
        }
        return atomic_write(path, lambda f: torch.save(state, f))

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        vocabulary: Vocabulary | None = None,
        map_location: str | torch.device = "cpu",
    ) -> tuple[SetEncoder, Vocabulary]:
        """Read a model written by :meth:`save`: ``(model, vocabulary)``.

        Args:
            path: the file.
            vocabulary: the vocabulary, for a file saved without one; for a file with one it must be equal.
            map_location: where to put the weights.

        Raises:
            FileNotFoundError: no such file.
            CorruptFileError: not a saved SetEncoder, truncated, or another format version.
            ValueError: no vocabulary in the file and none given (the message says how to give it), or a given
                vocabulary that does not match.

        Example:
            >>> import tempfile, os
            >>> from dmlkit.data import Vocabulary
            >>> vocabulary = Vocabulary(["red", "blue"])
            >>> file = os.path.join(tempfile.mkdtemp(), "encoder.pt")
            >>> _ = SetEncoder(len(vocabulary), 8).save(file, vocabulary)
            >>> model, loaded = SetEncoder.load(file)
            >>> loaded == vocabulary, model.out_features
            (True, 8)
        """
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"{_OWNER}.load: the file {str(file)!r} does not exist.")
        raw = file.read_bytes()
        try:
            state = torch.load(io.BytesIO(raw), map_location=map_location, weights_only=True)
        except Exception as exc:  # torch.load raises many exception types for malformed bytes
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CorruptFileError(f"{file}: not a readable SetEncoder file (truncated or corrupt): {detail}") from None
        if not isinstance(state, dict) or state.get("format") != _KIND:
            raise CorruptFileError(f"{file}: not a SetEncoder file (written by SetEncoder.save).")
        if state.get("format_version") != _FORMAT_VERSION:
            raise CorruptFileError(
                f"{file}: SetEncoder format version {state.get('format_version')!r} is not supported "
                f"(this dmlkit reads version {_FORMAT_VERSION})."
            )
        try:
            model = cls(**state["config"])
            model.load_state_dict(state["state_dict"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CorruptFileError(f"{file}: corrupt SetEncoder file ({exc}).") from None
        saved = state.get("vocabulary")
        if saved is None and vocabulary is None:
            raise ValueError(
                f"{_OWNER}.load: {file} was saved without its vocabulary. Pass the Vocabulary the model was "
                "trained with: SetEncoder.load(path, vocabulary=Vocabulary.load(...)), or save the model with "
                "SetEncoder.save(path, vocabulary)."
            )
        stored = Vocabulary.from_dict(saved, str(file)) if saved is not None else None
        if stored is not None and len(stored) != model.num_embeddings:
            raise CorruptFileError(
                f"{file}: corrupt SetEncoder file (a vocabulary of {len(stored)} tokens for "
                f"{model.num_embeddings} embeddings)."
            )
        if vocabulary is not None:
            check_type(f"{_OWNER}.load", "vocabulary", vocabulary, Vocabulary, "a Vocabulary or None")
            if stored is not None and stored != vocabulary:
                rule = f"equal to the vocabulary saved in {file} (or None)"
                raise ValueError(message(f"{_OWNER}.load", "vocabulary", rule, vocabulary))
            if len(vocabulary) != model.num_embeddings:
                rule = f"of size num_embeddings ({model.num_embeddings}), the vocabulary the model was trained with"
                raise ValueError(message(f"{_OWNER}.load", "vocabulary", rule, Described(f"size {len(vocabulary)}")))
        result = stored if stored is not None else vocabulary
        assert result is not None
        return model.to(map_location), result
