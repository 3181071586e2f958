"""The ``dmlkit tldr`` command: learn a TLDR dimensionality reduction and apply it to saved vectors.

* ``dmlkit tldr fit EMB OUT.model --components D [--neighbors K] [--encoder linear|mlp] [--epochs E] ...``: fit
  :class:`~dmlkit.apps.tldr.TLDR` on the ``(N, D)`` array in EMB (``.npy`` or ``.pt``) and write the model.
* ``dmlkit tldr transform OUT.model EMB OUT.npy [--l2-norm]``: the ``(N, d)`` codes of EMB, written to a
  ``.npy`` file atomically.

TLDR: Kalantidis, Lassance, Almazan and Larlus, 2022, arXiv:2110.09455.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["add_command"]

_NAME = "tldr"


def add_command(subparsers: Any) -> None:
    """Add ``tldr`` (with the actions ``fit`` and ``transform``) to the ``dmlkit`` sub-commands.

    Example:
        >>> import argparse
        >>> parser = argparse.ArgumentParser(prog="dmlkit")
        >>> add_command(parser.add_subparsers(dest="command"))
        >>> parser.parse_args(["tldr", "fit", "x.npy", "m.model", "--components", "16"]).components
        16
    """
    tldr = subparsers.add_parser(
        _NAME,
        help="learn a dimensionality reduction that keeps nearest neighbours (TLDR) and apply it",
        description=(
            "TLDR (Kalantidis et al., 2022, arXiv:2110.09455): an encoder trained with the Barlow Twins loss on "
            "pairs of nearest neighbours, so that neighbourhoods of the input space are kept in the output space."
        ),
    )
    actions = tldr.add_subparsers(dest="tldr_command", metavar="ACTION", required=True)
    fit = actions.add_parser(
        "fit",
        help="fit a TLDR model on saved vectors and write it",
        description=(
            "Fit TLDR on the (N, D) array in EMB (.npy or .pt) and write the model to OUT (a .npz archive, "
            "written atomically; the projector is not kept)."
        ),
    )
    fit.add_argument("embeddings", metavar="EMB", help="(N, D) training vectors, .npy or .pt")
    fit.add_argument("out", metavar="OUT", help="the model file to write")
    fit.add_argument("--components", type=int, required=True, metavar="D", help="output dimension")
    fit.add_argument("--neighbors", type=int, default=5, metavar="K", help="neighbours per vector (default 5)")
    fit.add_argument("--encoder", default="linear", choices=["linear", "mlp"], help="encoder (default linear)")
    fit.add_argument(
        "--encoder-hidden", type=int, nargs="+", default=[512], metavar="W", help="mlp encoder hidden widths"
    )
    fit.add_argument(
        "--projector-hidden", type=int, nargs="*", default=[512], metavar="W", help="projector hidden widths"
    )
    fit.add_argument("--projector-out", type=int, default=512, metavar="W", help="projector output width")
    fit.add_argument("--epochs", type=int, default=100, help="training epochs (default 100)")
    fit.add_argument("--batch-size", type=int, default=1024, help="pairs per step (default 1024)")
    fit.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    fit.add_argument("--lambd", type=float, default=5e-3, help="Barlow Twins off-diagonal weight (default 5e-3)")
    fit.add_argument(
        "--index-backend",
        default="exact",
        choices=["exact", "faiss", "faiss-ivf", "faiss-hnsw"],
        help="nearest-neighbour search (default exact)",
    )
    fit.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    fit.add_argument("--device", default="cpu", help="torch device (default cpu)")
    fit.add_argument("--quiet", action="store_true", help="do not print the loss of each epoch")
    fit.set_defaults(handler=_run)

    transform = actions.add_parser(
        "transform",
        help="reduce saved vectors with a fitted model",
        description="Write the (N, d) codes of the vectors in EMB to OUT (.npy, written atomically).",
    )
    transform.add_argument("model", metavar="MODEL", help="a model file written by 'dmlkit tldr fit'")
    transform.add_argument("embeddings", metavar="EMB", help="(N, D) vectors, .npy or .pt")
    transform.add_argument("out", metavar="OUT", help="the .npy file to write")
    transform.add_argument("--l2-norm", action="store_true", help="scale every code to unit length")
    transform.add_argument("--device", default="cpu", help="torch device (default cpu)")
    transform.set_defaults(handler=_run)


def _error(text: str, action: str) -> int:
    print(f"dmlkit {_NAME} {action}: error: {text}", file=sys.stderr)
    return 2


def _run(args: argparse.Namespace) -> int:
    import numpy as np

    from .._atomic import atomic_write
    from ..errors import CorruptFileError, MissingDependencyError, NotFittedError
    from ..training.cli import load_array
    from .tldr import TLDR

    action = args.tldr_command
    try:
        if action == "fit":
            model = TLDR(
                n_components=args.components,
                n_neighbors=args.neighbors,
                encoder=args.encoder,
                encoder_hidden=args.encoder_hidden,
                projector_hidden=args.projector_hidden,
                projector_out=args.projector_out,
                epochs=args.epochs,
                batch_size=args.batch_size,
                lr=args.lr,
                lambd=args.lambd,
                index_backend=args.index_backend,
                device=args.device,
                random_state=args.seed,
                verbose=not args.quiet,
            )
            data = load_array(args.embeddings)
            model.fit(data)
            model.save(args.out)
            print(
                f"Wrote {args.out}: TLDR {model.n_features_in_} -> {model.n_components} dimensions, fitted on "
                f"{data.shape[0]} vectors; final loss {model.loss_history_[-1]:.4f}."
            )
            return 0
        if not args.out.lower().endswith(".npy"):
            raise ValueError(f"{args.out}: the output file must end in .npy.")
        model = TLDR.load(args.model, device=args.device)
        codes = model.transform(load_array(args.embeddings).cpu().numpy(), l2_norm=args.l2_norm)
        atomic_write(args.out, lambda file: np.save(file, codes, allow_pickle=False))
    except (OSError, ValueError, TypeError, CorruptFileError, MissingDependencyError, NotFittedError) as exc:
        return _error(str(exc), action)
    print(f"Wrote {args.out}: {codes.shape[0]} codes of dimension {codes.shape[1]}.")
    return 0
