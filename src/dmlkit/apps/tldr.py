"""Learned dimensionality reduction with nearest-neighbour pairs and Barlow Twins: TLDR (Kalantidis et al., 2022).

TLDR (Kalantidis, Lassance, Almazan and Larlus, 2022, "TLDR: Twin Learning for Dimensionality Reduction",
TMLR, arXiv:2110.09455) learns an encoder ``f: R^D -> R^d`` so that each training vector and one of its ``k``
nearest neighbours in the input space get similar codes. The codes go through an auxiliary projector ``g``
(an MLP to a high dimension) and the pair is scored with the Barlow Twins loss (Zbontar et al., 2021,
arXiv:2103.03230) on ``(g(f(x)), g(f(y)))``, which needs no negative pairs. After training the projector is
dropped and ``transform`` applies the encoder only: a linear map by default, so it is as cheap as PCA at test
time, but it preserves local neighbourhoods rather than global variance.
"""

from __future__ import annotations

import enum
import math
import os
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from .._validation import Described, check_choice, check_range, message
from ..errors import CorruptFileError, NotFittedError
from ._archive import read_archive, write_archive

__all__ = ["TLDR", "TLDREncoder", "TLDRIndexBackend"]

_OWNER = "TLDR"
_FORMAT = "dmlkit.TLDR"
_VERSION = 1
#: rows per block when encoding in :meth:`TLDR.transform`
_TRANSFORM_BLOCK = 8192
#: constructor arguments stored in a saved model (``device`` is chosen when loading)
_PARAMS = (
    "n_components",
    "n_neighbors",
    "encoder",
    "encoder_hidden",
    "projector_hidden",
    "projector_out",
    "epochs",
    "batch_size",
    "lr",
    "lambd",
    "index_backend",
    "random_state",
)

ArrayT = TypeVar("ArrayT", np.ndarray, Tensor)


class TLDREncoder(str, enum.Enum):
    """The encoder ``f``: ``"linear"`` (one linear layer, the paper's main setting) or ``"mlp"`` (hidden layers
    with batch normalisation and ReLU, then a linear layer)."""

    LINEAR = "linear"
    MLP = "mlp"


class TLDRIndexBackend(str, enum.Enum):
    """How the ``k`` nearest neighbours of the training vectors are found (Euclidean distance), through
    :class:`~dmlkit.index.EmbeddingIndex`: ``"exact"`` (torch, no extra dependency), ``"faiss"`` (exhaustive
    faiss search), ``"faiss-ivf"`` or ``"faiss-hnsw"`` (approximate faiss search, for large training sets)."""

    EXACT = "exact"
    FAISS = "faiss"
    FAISS_IVF = "faiss-ivf"
    FAISS_HNSW = "faiss-hnsw"


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers between consecutive ``sizes``, each but the last followed by BatchNorm1d and ReLU."""
    layers: list[nn.Module] = []
    for i, (width_in, width_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(width_in, width_out))
        if i < len(sizes) - 2:
            layers += [nn.BatchNorm1d(width_out), nn.ReLU()]
    return nn.Sequential(*layers)


def _widths(arg: str, value: Any, allow_empty: bool) -> tuple[int, ...]:
    """A tuple of layer widths (each an integer >= 1) from an int or a sequence of ints."""
    items = (value,) if isinstance(value, int) and not isinstance(value, bool) else value
    rule = "a sequence of integers >= 1" + ("" if allow_empty else " (at least one)")
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise TypeError(message(_OWNER, arg, rule, value))
    if (not items and not allow_empty) or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in items):
        raise ValueError(message(_OWNER, arg, rule, value))
    return tuple(int(w) for w in items)


class TLDR:
    """TLDR: Twin Learning for Dimensionality Reduction (Kalantidis, Lassance, Almazan and Larlus, 2022, TMLR,
    arXiv:2110.09455), with a scikit-learn style ``fit`` / ``transform`` / ``fit_transform``.

    Training: the input is centred (the training mean is subtracted, as in the paper); the ``n_neighbors``
    nearest neighbours of every training vector are found with :class:`~dmlkit.index.EmbeddingIndex`
    (Euclidean, the vector itself excluded); every epoch visits the training vectors in a random order, in
    batches, each paired with one of its neighbours drawn uniformly; both go through the encoder and the
    projector, and the Barlow Twins loss (:class:`~dmlkit.losses.BarlowTwinsLoss`, summed over dimensions as in
    the paper) of the two projected batches is minimised with Adam, the learning rate following a cosine decay
    to 0 over the epochs. A last batch of a single row is skipped (the loss standardises over the batch).

    Defaults are chosen to train in minutes on a CPU: the paper's projector has 2 hidden layers of 2048 (or
    8192) units and an output of the same width, trained with LARS for 100 epochs on GPUs; here one hidden
    layer of 512 and an output of 512, with Adam (``lr`` 1e-3). ``projector_hidden=(2048, 2048),
    projector_out=2048`` is the paper's setting.

    Fitted attributes: ``mean_`` (the training mean, ``(n_features,)``), ``encoder_`` (the trained
    ``nn.Module``, in eval mode), ``n_features_in_``, ``neighbors_`` (the ``(n_samples, n_neighbors)``
    neighbour indices used for training) and ``loss_history_`` (mean loss per epoch). The projector is
    discarded after training, as in the paper.

    Args:
        n_components: output dimension ``d``, ``>= 1`` (at most the number of input features).
        n_neighbors: neighbours per training vector ``k``, ``>= 1`` (fewer than the training vectors).
        encoder: ``"linear"`` (default) or ``"mlp"``.
        encoder_hidden: hidden layer widths of the ``"mlp"`` encoder (ignored by ``"linear"``).
        projector_hidden: hidden layer widths of the projector (may be empty: one linear layer).
        projector_out: the projector's output width, where the loss is computed, ``>= 1``.
        epochs: passes over the training vectors, ``>= 1``.
        batch_size: pairs per step, ``>= 2``.
        lr: Adam's initial learning rate, ``> 0``.
        lambd: the Barlow Twins weight of the off-diagonal terms, ``>= 0`` (5e-3, as in both papers).
        index_backend: ``"exact"`` (default), ``"faiss"``, ``"faiss-ivf"`` or ``"faiss-hnsw"``.
        device: torch device of the training and the encoding.
        random_state: seed of the initialisation, the visiting order and the neighbour draws; None for a fresh
            seed. With a seed, two fits on the same data, machine and thread count give the same model.
        verbose: print the mean loss of each epoch to stderr.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(200, 3)) @ rng.normal(size=(3, 20))  # a 3-D subspace of R^20
        >>> tldr = TLDR(n_components=3, epochs=5, batch_size=64, random_state=0,
        ...             projector_hidden=(64,), projector_out=64)  # small sizes for a quick example
        >>> tldr.fit_transform(x).shape
        (200, 3)
        >>> tldr.transform(torch.from_numpy(x[:5])).shape  # tensors in, tensors out
        torch.Size([5, 3])
    """

    def __init__(
        self,
        n_components: int = 32,
        n_neighbors: int = 5,
        encoder: TLDREncoder | str = "linear",
        encoder_hidden: Sequence[int] = (512,),
        projector_hidden: Sequence[int] = (512,),
        projector_out: int = 512,
        epochs: int = 100,
        batch_size: int = 1024,
        lr: float = 1e-3,
        lambd: float = 5e-3,
        index_backend: TLDRIndexBackend | str = "exact",
        device: str | torch.device = "cpu",
        random_state: int | None = None,
        verbose: bool = False,
    ) -> None:
        check_range(_OWNER, "n_components", n_components, low=1, integer=True)
        check_range(_OWNER, "n_neighbors", n_neighbors, low=1, integer=True)
        self.encoder = check_choice(_OWNER, "encoder", encoder, TLDREncoder).value
        self.encoder_hidden = _widths("encoder_hidden", encoder_hidden, allow_empty=False)
        self.projector_hidden = _widths("projector_hidden", projector_hidden, allow_empty=True)
        check_range(_OWNER, "projector_out", projector_out, low=1, integer=True)
        check_range(_OWNER, "epochs", epochs, low=1, integer=True)
        check_range(_OWNER, "batch_size", batch_size, low=2, integer=True)
        check_range(_OWNER, "lr", lr, low=0, low_inclusive=False)
        check_range(_OWNER, "lambd", lambd, low=0)
        self.index_backend = check_choice(_OWNER, "index_backend", index_backend, TLDRIndexBackend).value
        if random_state is not None:
            check_range(_OWNER, "random_state", random_state, low=0, integer=True)
        self.n_components = n_components
        self.n_neighbors = n_neighbors
        self.projector_out = projector_out
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.lambd = lambd
        self.device = torch.device(device)
        self.random_state = random_state
        self.verbose = bool(verbose)
        self.mean_: Tensor | None = None
        self.encoder_: nn.Module | None = None
        self.n_features_in_: int | None = None
        self.neighbors_: np.ndarray | None = None
        self.loss_history_: list[float] = []

    def __repr__(self) -> str:
        return (
            f"TLDR(n_components={self.n_components}, n_neighbors={self.n_neighbors}, encoder={self.encoder!r}, "
            f"epochs={self.epochs}, batch_size={self.batch_size}, random_state={self.random_state})"
        )

    # ------------------------------------------------------------------------------------------- input

    def _as_matrix(self, x: Any, arg: str = "X") -> Tensor:
        """``x`` (numpy or torch, real numbers) as a finite float32 ``(n, D)`` tensor on ``device``."""
        if isinstance(x, np.ndarray):
            if x.dtype.kind not in "biuf":
                raise TypeError(message(_OWNER, arg, "an array of real numbers", Described(f"dtype {x.dtype}")))
            t = torch.from_numpy(np.ascontiguousarray(x))
        elif isinstance(x, Tensor):
            if x.is_complex():
                raise TypeError(message(_OWNER, arg, "an array of real numbers", Described(f"dtype {x.dtype}")))
            t = x.detach()
        else:
            raise TypeError(message(_OWNER, arg, "a numpy array or a torch.Tensor", Described(type(x).__name__)))
        if t.ndim != 2:
            shape = Described(f"shape {tuple(t.shape)}")
            raise ValueError(message(_OWNER, arg, "a 2-D array of shape (n_samples, n_features)", shape))
        t = t.to(device=self.device, dtype=torch.float32)
        bad = ~torch.isfinite(t).all(dim=1)
        if bool(bad.any()):
            got = Described(f"{int(bad.sum())} row(s) containing NaN or Inf")
            raise ValueError(message(_OWNER, arg, "finite (no NaN or Inf)", got))
        return t

    def _fitted(self) -> tuple[Tensor, nn.Module]:
        if self.mean_ is None or self.encoder_ is None:
            raise NotFittedError(f"{_OWNER} is not fitted yet; call fit(X) first.")
        return self.mean_, self.encoder_

    # ------------------------------------------------------------------------------------------- fitting

    def _seed(self) -> int:
        return self.random_state if self.random_state is not None else secrets.randbits(62)

    def _build(self, n_features: int) -> nn.Module:
        if self.encoder == TLDREncoder.LINEAR.value:
            return nn.Linear(n_features, self.n_components)
        return _mlp([n_features, *self.encoder_hidden, self.n_components])

    def find_neighbors(self, x: Tensor | np.ndarray) -> np.ndarray:
        """The ``n_neighbors`` nearest training rows of each row of ``x`` (Euclidean; a row is not its own
        neighbour), as an ``(n, n_neighbors)`` int64 array, nearest first; what :meth:`fit` pairs rows with."""
        data = self._as_matrix(x)
        self._check_neighbors_count(data.shape[0])
        from ..index import EmbeddingIndex

        backend = "faiss-flat" if self.index_backend == TLDRIndexBackend.FAISS.value else self.index_backend
        nlist = max(1, min(100, int(math.sqrt(data.shape[0]))))
        index = EmbeddingIndex(metric="l2", backend=backend, nlist=nlist, nprobe=min(nlist, 16), device=self.device)
        index.add(data)
        found = index.search(data, self.n_neighbors + 1).ids
        own = torch.arange(data.shape[0], device=found.device).unsqueeze(1)
        keep = found != own
        # duplicates can put the row itself after an equal row, or an approximate search can miss it:
        # drop the row itself where it was found, else the farthest neighbour
        missing_self = keep.all(dim=1)
        keep[missing_self, -1] = False
        neighbors = found[keep].view(data.shape[0], self.n_neighbors)
        if bool((neighbors < 0).any()):
            raise ValueError(
                f"{_OWNER}: the {self.index_backend!r} index found fewer than n_neighbors = {self.n_neighbors} "
                "neighbours for some rows; use index_backend='exact' or 'faiss'."
            )
        return neighbors.cpu().numpy()

    def _check_neighbors_count(self, n_samples: int) -> None:
        if self.n_neighbors >= n_samples:
            rule = f"< the number of samples of X ({n_samples})"
            raise ValueError(message(_OWNER, "n_neighbors", rule, self.n_neighbors))

    def fit(self, X: Tensor | np.ndarray, neighbors: np.ndarray | Tensor | None = None) -> TLDR:
        """Learn the encoder on the rows of ``X`` (``(n_samples, n_features)``, numpy or torch); return ``self``.

        Args:
            X: the training vectors.
            neighbors: optional precomputed ``(n_samples, m)`` neighbour indices (e.g. from
                :meth:`find_neighbors` or another graph); each row is paired with one of its ``m`` listed rows.
                None finds the ``n_neighbors`` nearest ones.

        Raises:
            ValueError: ``n_components`` larger than the number of features, ``n_neighbors`` not smaller than the
                number of samples, non-finite values, not 2-D, bad ``neighbors``.
            TypeError: not an array of real numbers.
        """
        x = self._as_matrix(X)
        n, n_features = x.shape
        if self.n_components > n_features:
            rule = f"<= the number of features of X ({n_features})"
            raise ValueError(message(_OWNER, "n_components", rule, self.n_components))
        mean = x.mean(dim=0)
        centred = x - mean
        if neighbors is None:
            self._check_neighbors_count(n)
            graph = torch.from_numpy(self.find_neighbors(centred))
        else:
            graph = self._check_graph(neighbors, n)
        seed = self._seed()
        generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            encoder = self._build(n_features).to(self.device)
            projector = _mlp([self.n_components, *self.projector_hidden, self.projector_out]).to(self.device)
        self.loss_history_ = self._train(centred, graph, encoder, projector, generator)
        encoder.eval()
        for p in encoder.parameters():
            p.requires_grad_(False)
        self.mean_, self.encoder_, self.n_features_in_ = mean, encoder, n_features
        self.neighbors_ = graph.numpy()
        return self

    def _check_graph(self, neighbors: np.ndarray | Tensor, n: int) -> Tensor:
        graph = neighbors.detach().cpu() if isinstance(neighbors, Tensor) else torch.from_numpy(np.asarray(neighbors))
        rule = f"an (n_samples, m) array of integer row indices in [0, {n}) with m >= 1"
        if graph.is_floating_point() or graph.is_complex() or graph.dtype == torch.bool:
            raise TypeError(message(_OWNER, "neighbors", rule, Described(f"dtype {graph.dtype}")))
        if graph.ndim != 2 or graph.shape[0] != n or graph.shape[1] < 1:
            raise ValueError(message(_OWNER, "neighbors", rule, Described(f"shape {tuple(graph.shape)}")))
        graph = graph.long()
        if bool(((graph < 0) | (graph >= n)).any()):
            raise ValueError(message(_OWNER, "neighbors", rule, Described("an index out of range")))
        return graph

    def _train(
        self, x: Tensor, graph: Tensor, encoder: nn.Module, projector: nn.Module, generator: torch.Generator
    ) -> list[float]:
        from ..losses import BarlowTwinsLoss

        loss_fn = BarlowTwinsLoss(lambd=self.lambd)
        params = [*encoder.parameters(), *projector.parameters()]
        optimizer = torch.optim.Adam(params, lr=self.lr)
        n = x.shape[0]
        batches = [b for b in torch.arange(n).split(self.batch_size) if b.numel() >= 2]
        total_steps = self.epochs * len(batches)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
        )
        encoder.train()
        projector.train()
        history = []
        for epoch in range(self.epochs):
            order = torch.randperm(n, generator=generator)
            losses = []
            for positions in batches:
                rows = order[positions]
                choice = torch.randint(0, graph.shape[1], (rows.numel(),), generator=generator)
                pairs = graph[rows, choice]
                rows, pairs = rows.to(self.device), pairs.to(self.device)
                loss = loss_fn(projector(encoder(x[rows])), ref_emb=projector(encoder(x[pairs])))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                losses.append(float(loss.detach()))
            history.append(sum(losses) / len(losses))
            if self.verbose:
                print(f"TLDR epoch {epoch + 1}/{self.epochs}: loss {history[-1]:.4f}", file=sys.stderr)
        return history

    # ------------------------------------------------------------------------------------------- encoding

    def transform(self, X: ArrayT, l2_norm: bool = False) -> ArrayT:
        """The ``(n, n_components)`` codes of the rows of ``X``: the encoder applied to the centred input.

        A numpy array gives a float32 numpy array; a tensor gives a float32 tensor on ``device``.
        ``l2_norm=True`` scales each code to unit length (as the authors' ``transform``).

        Raises:
            NotFittedError: before :meth:`fit`.
            ValueError: another number of features than in :meth:`fit`, non-finite values, not 2-D.
        """
        mean, encoder = self._fitted()
        x = self._as_matrix(X)
        if x.shape[1] != self.n_features_in_:
            rule = f"an array with {self.n_features_in_} features (as in fit)"
            raise ValueError(message(_OWNER, "X", rule, Described(f"{x.shape[1]} features")))
        with torch.no_grad():
            blocks = [encoder(block - mean) for block in x.split(_TRANSFORM_BLOCK)]
            codes = torch.cat(blocks) if blocks else x.new_zeros(0, self.n_components)
            if l2_norm:
                codes = nn.functional.normalize(codes, dim=1)
        if isinstance(X, Tensor):
            return codes
        return codes.cpu().numpy()

    def fit_transform(self, X: ArrayT, neighbors: np.ndarray | Tensor | None = None) -> ArrayT:
        """:meth:`fit` on ``X``, then :meth:`transform` of ``X``."""
        return self.fit(X, neighbors).transform(X)

    # ------------------------------------------------------------------------------------------- files

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the fitted encoder, the training mean and the settings to one file, atomically.

        The file is a NumPy ``.npz`` archive (no pickled objects; zip checksums catch damaged bytes) with a
        format name and version. The projector and the neighbour graph are not stored.

        Example:
            >>> import tempfile, os, numpy as np
            >>> x = np.random.default_rng(0).normal(size=(100, 6))
            >>> tldr = TLDR(n_components=2, epochs=2, batch_size=50, projector_out=16, random_state=0).fit(x)
            >>> file = os.path.join(tempfile.mkdtemp(), "tldr.model")
            >>> _ = tldr.save(file)
            >>> bool(np.array_equal(TLDR.load(file).transform(x), tldr.transform(x)))
            True
        """
        mean, encoder = self._fitted()
        arrays: dict[str, np.ndarray] = {"mean_": mean.cpu().numpy()}
        for name, value in encoder.state_dict().items():
            arrays[f"encoder.{name}"] = value.detach().cpu().numpy()
        params = {name: getattr(self, name) for name in _PARAMS}
        header = {
            "params": {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()},
            "n_features_in_": self.n_features_in_,
            "loss_history_": self.loss_history_,
        }
        return write_archive(path, _FORMAT, _VERSION, header, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | torch.device = "cpu") -> TLDR:
        """Read a model written by :meth:`save` (see its example), ready to :meth:`transform` on ``device``.

        Raises:
            FileNotFoundError: no such file.
            CorruptFileError: a truncated or corrupt file, another kind of file, or another format version.
        """
        file = Path(path)
        header, arrays = read_archive(file, _FORMAT, _VERSION, f"{_OWNER} model file")
        try:
            model = cls(**header["params"], device=device)
            model._restore(arrays, int(header["n_features_in_"]), [float(v) for v in header["loss_history_"]])
        except (KeyError, ValueError, TypeError, RuntimeError, UnicodeDecodeError) as exc:
            raise CorruptFileError(f"{file}: corrupt {_OWNER} model file ({type(exc).__name__}: {exc}).") from None
        return model

    def _restore(self, arrays: dict[str, np.ndarray], n_features: int, history: list[float]) -> None:
        mean = torch.from_numpy(arrays.pop("mean_")).to(self.device)
        if mean.shape != (n_features,) or mean.dtype != torch.float32:
            raise ValueError(f"the mean has shape {tuple(mean.shape)} and dtype {mean.dtype}")
        encoder = self._build(n_features)
        prefix = "encoder."
        state = {name[len(prefix) :]: torch.from_numpy(v) for name, v in arrays.items() if name.startswith(prefix)}
        encoder.load_state_dict(state, strict=True)  # RuntimeError on missing, extra or mis-shaped weights
        encoder.to(self.device).eval()
        for p in encoder.parameters():
            p.requires_grad_(False)
        self.mean_, self.encoder_, self.n_features_in_, self.loss_history_ = mean, encoder, n_features, history
