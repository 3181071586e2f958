"""The ``dmlkit`` command line.

* ``dmlkit train [CONFIG] [--set key=value ...] [--out DIR] [--name NAME] [--resume RUN_FOLDER] [--quiet]``
* ``dmlkit embed CHECKPOINT OUT [--data NAME] [--split test] [--classes ...]``: embeddings (and labels) of a
  data set by a trained model, as ``.npy`` files.
* ``dmlkit index build EMBEDDINGS OUT.index ...`` and ``dmlkit index query OUT.index QUERIES --k K``: a saved,
  searchable :class:`~dmlkit.index.EmbeddingIndex`.
* ``dmlkit eval QUERY QUERY_LABELS [--reference R --reference-labels RL] [--k K] [--json OUT] ...``: the
  :class:`~dmlkit.evaluation.AccuracyCalculator` metrics of saved embeddings (``.npy`` or ``.pt``).

Under ``torchrun --nproc_per_node N -m dmlkit train CONFIG`` (``WORLD_SIZE`` > 1 in the environment), ``dmlkit
train`` initialises ``torch.distributed`` from torchrun's variables (NCCL when ``device`` is ``cuda``, gloo
otherwise), trains on all processes, and only rank 0 prints, writes the run folder and the report.

Without a configuration file, ``dmlkit train`` runs the embedded default (:class:`~dmlkit.training.TrainConfig`):
a small MLP trained with a triplet loss plus an instance-discrimination term on the digits 0-4 of scikit-learn,
evaluated on the unseen digits 5-9 (and, for reference, the raw pixels on the same retrieval task).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import CorruptFileError, MissingDependencyError
from .config import TrainConfig, read_mapping_file

__all__ = ["CommandAdder", "build_parser", "load_config_file", "load_array", "main"]

_PROG = "dmlkit"


#: adds one sub-command to the parser's sub-parsers; the sub-parser sets ``handler`` (``args -> exit status``).
CommandAdder = Callable[[Any], None]


def build_parser(extra_commands: Sequence[CommandAdder] = ()) -> argparse.ArgumentParser:
    """The argument parser of the ``dmlkit`` command, with ``extra_commands`` added after the built-in ones.

    Each extra command's sub-parser must ``set_defaults(handler=...)``: :func:`main` calls it with the parsed
    arguments and returns what it returns.
    """
    parser = argparse.ArgumentParser(prog=_PROG, description="Deep metric learning for PyTorch.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    train = commands.add_parser(
        "train",
        help="train an embedding model and report retrieval on unseen classes",
        description=(
            "Train an embedding model, report precision@1, R-precision and MAP@R on the unseen test classes "
            "before and after training, and write config.json, metrics.json and checkpoint.pt to a run folder. "
            "Without CONFIG the built-in default runs: digits 0-4 for training, 5-9 for testing."
        ),
    )
    train.add_argument("config", nargs="?", metavar="CONFIG", help="a .json (or .yaml/.yml) configuration file")
    train.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one value, e.g. --set loss.margin=0.2 --set epochs=5 (repeatable)",
    )
    train.add_argument("--out", metavar="DIR", help="parent folder of the run folder (default: runs)")
    train.add_argument("--name", metavar="NAME", help="run folder name (default: the current time)")
    train.add_argument(
        "--resume",
        metavar="RUN_FOLDER",
        help="continue an interrupted run from RUN_FOLDER/last.pt with RUN_FOLDER/config.json (and --set overrides)",
    )
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_eval_parser(commands)
    _add_embed_parser(commands)
    _add_index_parser(commands)
    for add_command in extra_commands:
        add_command(commands)
    return parser


def _add_eval_parser(commands: Any) -> None:
    evaluate = commands.add_parser(
        "eval",
        help="retrieval and clustering metrics of saved embeddings",
        description=(
            "Compute AccuracyCalculator metrics (precision@1, R-precision, MAP@R, MAP, MRR, NMI, AMI, and "
            "precision/recall@k with --at-k) of saved embeddings and labels (.npy or .pt files holding one "
            "array each). Without --reference the queries are searched against each other, own rows excluded. "
            "Prints a table; --json also writes the values to a file."
        ),
    )
    evaluate.add_argument("query", metavar="QUERY", help="(N, d) query embeddings, .npy or .pt")
    evaluate.add_argument("query_labels", metavar="QUERY_LABELS", help="(N,) query labels, .npy or .pt")
    evaluate.add_argument("--reference", metavar="R", help="(M, d) reference embeddings, .npy or .pt")
    evaluate.add_argument("--reference-labels", metavar="RL", help="(M,) reference labels, .npy or .pt")
    evaluate.add_argument(
        "--ref-includes-query",
        action="store_true",
        help="the reference file starts with the queries; each query's own row is excluded",
    )
    evaluate.add_argument(
        "--k",
        default=None,
        metavar="K",
        help="neighbours the metrics read: an integer, max_bin_count, or all (default)",
    )
    evaluate.add_argument("--at-k", type=int, nargs="+", default=[], metavar="K", help="precision/recall@K sizes")
    evaluate.add_argument("--include", nargs="+", default=[], metavar="METRIC", help="compute only these metrics")
    evaluate.add_argument("--exclude", nargs="+", default=[], metavar="METRIC", help="skip these metrics")
    evaluate.add_argument(
        "--distance", default="euclidean", choices=["euclidean", "cosine", "inner_product"], help="k-nn measure"
    )
    evaluate.add_argument(
        "--knn",
        default="exact",
        choices=["exact", "faiss-flat", "faiss-ivf", "faiss-hnsw"],
        help="neighbour search: exact streamed torch search (default) or faiss",
    )
    evaluate.add_argument("--avg-of-avgs", action="store_true", help="average per class, then over classes")
    evaluate.add_argument("--device", default=None, help="torch device, e.g. cuda (default: cpu)")
    evaluate.add_argument("--json", metavar="OUT", help="also write the metrics to this JSON file (atomically)")


def _add_embed_parser(commands: Any) -> None:
    embed = commands.add_parser(
        "embed",
        help="embed a data set with a trained model",
        description=(
            "Embed a data set with the model of a run folder's checkpoint.pt and write OUT.npy (embeddings) "
            "and OUT.labels.npy (labels). The data set defaults to the one the run trained on."
        ),
    )
    embed.add_argument("checkpoint", metavar="CHECKPOINT", help="a run folder's checkpoint.pt")
    embed.add_argument("out", metavar="OUT", help="output path prefix, e.g. emb (writes emb.npy, emb.labels.npy)")
    embed.add_argument("--data", metavar="NAME", help="data set name (default: the run's)")
    embed.add_argument("--root", metavar="DIR", help="data folder for file-based data sets")
    embed.add_argument("--split", default=None, help="train or test, for data sets with official splits")
    embed.add_argument("--classes", type=int, nargs="+", default=None, metavar="C", help="only these classes")
    embed.add_argument("--batch-size", type=int, default=1024, help="embedding batch size")


def load_config_file(path: str | Path) -> TrainConfig:
    """Read a configuration from ``.json``, or ``.yaml``/``.yml`` when PyYAML is installed.

    Raises:
        FileNotFoundError: no such file.
        CorruptFileError: the file cannot be parsed.
        MissingDependencyError: a YAML file without PyYAML.
        KeyError, TypeError, ValueError: invalid configuration contents.
    """
    return TrainConfig.from_dict(read_mapping_file(path))


def main(argv: Sequence[str] | None = None, extra_commands: Sequence[CommandAdder] = ()) -> int:
    """Run the ``dmlkit`` command; return the exit status (2 for invalid arguments or configuration)."""
    args = build_parser(extra_commands).parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is not None:
        return int(handler(args))
    if args.command == "train":
        return _train(args)
    if args.command == "eval":
        return _eval(args)
    if args.command == "embed":
        return _embed(args)
    if args.command == "index":
        return _index(args)
    raise AssertionError(f"unhandled command {args.command!r}")  # pragma: no cover - argparse rejects others


def _error(text: str, command: str = "train") -> int:
    print(f"{_PROG} {command}: error: {text}", file=sys.stderr)
    return 2


def _train(args: argparse.Namespace) -> int:
    from .run_folder import load_json

    resume = Path(args.resume) if args.resume is not None else None
    try:
        if resume is not None:
            if args.config is not None:
                raise ValueError("--resume reads RUN_FOLDER/config.json; give no CONFIG (use --set to change values).")
            saved = load_json(resume / "config.json")
            config = TrainConfig.from_dict(saved)
        else:
            config = TrainConfig() if args.config is None else load_config_file(args.config)
        extra = [f"out_dir={json.dumps(args.out)}"] if args.out is not None else []
        extra += [f"run_name={json.dumps(args.name)}"] if args.name is not None else []
        config = config.apply_overrides([*args.overrides, *extra])
    except KeyError as exc:
        return _error(str(exc.args[0]) if exc.args else "unknown key")
    except (OSError, ValueError, TypeError, MissingDependencyError) as exc:
        return _error(str(exc))

    try:
        started = _start_process_group(config)
    except (RuntimeError, ValueError) as exc:
        return _error(str(exc))
    try:
        return _run_training(args, config, resume)
    finally:
        if started:
            import torch.distributed as dist

            dist.destroy_process_group()


def _start_process_group(config: TrainConfig) -> bool:
    """Under torchrun (``WORLD_SIZE`` > 1), initialise the default process group from its environment variables;
    True when this call did (and the caller destroys it)."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    import torch
    import torch.distributed as dist

    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch has no torch.distributed.")
    if dist.is_initialized():
        return False
    cuda = torch.device(config.device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    return True


def _run_training(args: argparse.Namespace, config: TrainConfig, resume: Path | None) -> int:
    from ..wrappers.distributed import rank_and_world_size
    from .loop import train
    from .report import format_raw_input, format_report
    from .run_folder import create_run_folder, save_run, write_json

    rank, world = rank_and_world_size()
    if not args.quiet and rank == 0:
        data = config.data
        print(
            f"Training on {data.name} classes {_classes(data.train_classes)}; "
            f"testing on the unseen classes {_classes(data.test_classes)}."
        )
    problem = None
    folder = resume
    if rank == 0:
        try:
            folder = resume if resume is not None else create_run_folder(config.out_dir, config.run_name)
            write_json(folder / "config.json", config.to_dict())
        except OSError as exc:
            problem = str(exc)
    if world > 1:
        # every process needs rank 0's folder (its name holds the time) and the news of a failure
        import torch.distributed as dist

        shared = [None if folder is None else str(folder), problem]
        dist.broadcast_object_list(shared, src=0)
        folder, problem = (None if shared[0] is None else Path(shared[0])), shared[1]
    if problem is not None:
        return _error(problem)
    assert folder is not None
    try:
        result = train(config, progress=not args.quiet, run_folder=folder, resume=resume is not None)
    except (OSError, ValueError, CorruptFileError) as exc:
        return _error(str(exc))
    if rank != 0:
        return 0
    save_run(folder, config, result)
    if config.output.report:
        _write_report(folder, config, result)
    title = (
        f"Retrieval on the unseen classes {_classes(config.data.test_classes)} "
        f"({result.num_test} samples; {result.seconds:.1f} s):"
    )
    print(format_report(result.before, result.after, title=title))
    print(format_raw_input(result.raw_input))
    print(f"Run folder: {folder}")
    return 0


def _write_report(folder: Path, config: TrainConfig, result: Any) -> None:
    """Write report.html into the run folder; a missing plotting library only skips it, with a note."""
    from .html_report import write_html_report
    from .loop import IMAGE_SHAPES

    parts = result.data
    assert parts is not None  # train() keeps the run's data
    shape = IMAGE_SHAPES.get(config.data.name)
    images = parts.x_test.reshape(-1, *shape) if shape is not None else None
    if images is None and parts.x_test.ndim >= 3:
        images = parts.x_test
    trainer = result.trainer
    summary = {
        "before": result.before,
        "after": result.after,
        "raw input": result.raw_input,
        "data": config.data.name,
        "loss": config.loss.name,
        "miner": None if config.miner is None else config.miner.name,
        "epochs": trainer.epoch if trainer is not None else config.epochs,
        "best epoch": None if trainer is None else trainer.best_epoch,
        "seconds": round(result.seconds, 1),
    }
    try:
        write_html_report(
            folder / "report.html",
            train_records=[] if trainer is None else trainer.history,
            eval_records=[] if trainer is None else trainer.eval_history,
            embeddings=result.test_embeddings,
            labels=parts.y_test,
            images=images,
            title=f"dmlkit run {folder.name}",
            summary=summary,
            seed=config.seed,
        )
    except MissingDependencyError as exc:
        print(f"No report.html: {exc}", file=sys.stderr)


def _embed(args: argparse.Namespace) -> int:
    import torch

    from ..data import load_dataset, split_by_classes
    from .loop import embed
    from .run_folder import load_checkpoint, model_from_checkpoint

    try:
        checkpoint = load_checkpoint(args.checkpoint)
        config = TrainConfig.from_dict(checkpoint["config"])
        name = args.data or config.data.name
        root = args.root if args.root is not None else config.data.root
        features, labels = load_dataset(name, root=root, split=args.split)
        if args.classes is not None:
            (idx,) = split_by_classes(labels, [args.classes])
            features, labels = features[idx], labels[idx]
        model = model_from_checkpoint(checkpoint)
        embeddings = embed(model, features, batch_size=args.batch_size)
    except KeyError as exc:
        return _error(str(exc.args[0]) if exc.args else "unknown key", "embed")
    except (OSError, ValueError, TypeError, RuntimeError, CorruptFileError, MissingDependencyError) as exc:
        return _error(str(exc), "embed")
    from .._atomic import atomic_write

    prefix = str(args.out).removesuffix(".npy")
    for path, array in ((f"{prefix}.npy", embeddings), (f"{prefix}.labels.npy", labels)):
        values = torch.as_tensor(array).numpy()
        atomic_write(path, functools.partial(_save_npy, values))
    print(f"Wrote {prefix}.npy {tuple(embeddings.shape)} and {prefix}.labels.npy ({len(labels)} labels).")
    return 0


def _save_npy(array: Any, file: Any) -> None:
    import numpy as np

    np.save(file, array)


def _classes(classes: Sequence[int]) -> str:
    return ", ".join(str(c) for c in classes)


def load_array(path: str | Path) -> Any:
    """One array from a ``.npy`` file (no pickles) or a ``.pt`` file holding a single tensor (weights only).

    Raises:
        FileNotFoundError: no such file.
        ValueError: another file extension.
        CorruptFileError: the file cannot be read as one array.
    """
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix not in (".npy", ".pt"):
        raise ValueError(f"{file}: an array file must end in .npy or .pt.")
    if not file.exists():
        raise FileNotFoundError(f"{file}: no such file.")
    import torch

    if suffix == ".npy":
        import numpy as np

        try:
            array = np.load(file, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise CorruptFileError(f"{file}: not a readable .npy array (truncated or corrupt): {exc}") from None
        if array.dtype.kind not in "biuf":
            raise CorruptFileError(f"{file}: expected a numeric array, got dtype {array.dtype}.")
        return torch.from_numpy(array)
    try:
        value = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types (RuntimeError, UnpicklingError, EOFError) for bad files
        raise CorruptFileError(f"{file}: not a readable .pt tensor file (truncated or corrupt): {exc}") from None
    if not isinstance(value, torch.Tensor):
        raise CorruptFileError(f"{file}: expected a single tensor, got {type(value).__name__}.")
    return value


def _labels(path: str) -> Any:
    """A label file as a 1-D array; (N, 1) is flattened."""
    labels = load_array(path)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise ValueError(f"{path}: labels must be 1-D (or of shape (N, 1)), got shape {tuple(labels.shape)}.")
    return labels


def _parse_k(text: str | None) -> int | str | None:
    if text is None or text == "all":
        return None
    if text == "max_bin_count":
        return text
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"--k must be an integer, max_bin_count or all, got {text!r}.") from None


def _eval(args: argparse.Namespace) -> int:
    from ..evaluation import AccuracyCalculator, ExactKNN, FaissKNN

    try:
        if (args.reference is None) != (args.reference_labels is None):
            raise ValueError("--reference and --reference-labels must be given together.")
        query, query_labels = load_array(args.query), _labels(args.query_labels)
        reference = load_array(args.reference) if args.reference is not None else None
        reference_labels = _labels(args.reference_labels) if args.reference_labels is not None else None
        if args.knn == "exact":
            knn_func: Any = ExactKNN(distance=args.distance)
        else:
            if args.distance == "cosine":
                raise ValueError("--distance cosine needs --knn exact (faiss searches l2 or inner_product).")
            metric = "l2" if args.distance == "euclidean" else "inner_product"
            knn_func = FaissKNN(index=args.knn.removeprefix("faiss-"), metric=metric)
        calculator = AccuracyCalculator(
            include=tuple(args.include),
            exclude=tuple(args.exclude),
            avg_of_avgs=args.avg_of_avgs,
            k=_parse_k(args.k),
            device=args.device,
            knn_func=knn_func,
            at_k=tuple(args.at_k),
        )
        metrics = calculator.get_accuracy(
            query, query_labels, reference, reference_labels, ref_includes_query=args.ref_includes_query
        )
    except (OSError, ValueError, TypeError, NotImplementedError, MissingDependencyError) as exc:
        return _error(str(exc), "eval")
    num_ref = query.shape[0] if reference is None else reference.shape[0]
    print(f"{query.shape[0]} queries, {num_ref} references, embedding size {query.shape[1]}:")
    width = max(len(name) for name in metrics) if metrics else 6
    print(f"{'metric':<{width}}  value")
    for name, value in metrics.items():
        shown = f"{value:.6f}" if isinstance(value, float) else ", ".join(f"{v:.6f}" for v in value)
        print(f"{name:<{width}}  {shown}")
    if args.json:
        from .run_folder import write_json

        body = {
            "metrics": {name: _json_value(value) for name, value in metrics.items()},
            "num_queries": int(query.shape[0]),
            "num_references": int(num_ref),
            "k": args.k if args.k is not None else "all",
            "knn": args.knn,
            "distance": args.distance,
        }
        try:
            write_json(args.json, body)
        except OSError as exc:
            return _error(str(exc), "eval")
        print(f"Wrote {args.json}")
    return 0


def _json_value(value: Any) -> Any:
    """NaN (no query with a relevant reference) becomes null: JSON has no NaN."""
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    return None if value != value else value


def _add_index_parser(commands: Any) -> None:
    index = commands.add_parser(
        "index",
        help="build and query an embedding index",
        description="Build an EmbeddingIndex file from saved embeddings, or search one with saved queries.",
    )
    actions = index.add_subparsers(dest="index_command", metavar="ACTION", required=True)
    build = actions.add_parser(
        "build",
        help="write an index file from (N, d) embeddings",
        description=(
            "Store (N, d) embeddings (.npy or .pt) with their ids in one index file, written atomically with a "
            "format version and a SHA-256 checksum. Ids default to 0..N-1."
        ),
    )
    build.add_argument("embeddings", metavar="EMBEDDINGS", help="(N, d) embeddings, .npy or .pt")
    build.add_argument("out", metavar="OUT", help="the index file to write")
    build.add_argument("--ids", metavar="IDS", help="(N,) distinct integer ids >= 0, .npy or .pt")
    build.add_argument("--metric", default="cosine", choices=["cosine", "inner_product", "l2"], help="similarity")
    build.add_argument(
        "--backend",
        default="exact",
        choices=["exact", "faiss-flat", "faiss-ivf", "faiss-hnsw"],
        help="exact torch search (default) or faiss",
    )
    build.add_argument("--nlist", type=int, default=100, help="IVF cells (faiss-ivf; needs at least this many rows)")
    query = actions.add_parser(
        "query",
        help="search an index file with (M, d) queries",
        description=(
            "Print the K nearest ids of each query with their distances (l2) or scores (cosine, inner_product); "
            "--json also writes them to a file."
        ),
    )
    query.add_argument("index", metavar="INDEX", help="an index file written by dmlkit index build")
    query.add_argument("queries", metavar="QUERIES", help="(M, d) query embeddings, .npy or .pt")
    query.add_argument("--k", type=int, default=5, help="neighbours per query (default 5)")
    query.add_argument("--json", metavar="OUT", help="also write ids and distances to this JSON file (atomically)")


def _index(args: argparse.Namespace) -> int:
    from ..index import EmbeddingIndex

    command = f"index {args.index_command}"
    try:
        if args.index_command == "build":
            embeddings = load_array(args.embeddings)
            ids = load_array(args.ids) if args.ids is not None else None
            if ids is not None and ids.ndim == 2 and ids.shape[1] == 1:
                ids = ids[:, 0]
            built = EmbeddingIndex(metric=args.metric, backend=args.backend, nlist=args.nlist)
            built.add(embeddings, ids=ids)
            built.save(args.out)
            print(f"Wrote {args.out}: {len(built)} embeddings of dimension {built.dim}, {args.metric}, {args.backend}.")
            return 0
        found_index = EmbeddingIndex.load(args.index)
        queries = load_array(args.queries)
        found = found_index.search(queries, args.k)
    except (OSError, ValueError, TypeError, KeyError, MissingDependencyError) as exc:
        return _error(str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc), command)
    kind = "score" if found_index.higher_is_closer else "distance"
    print(f"{queries.shape[0]} queries, k={args.k}, {found_index.metric.value} ({kind}):")
    for row, (ids_row, values_row) in enumerate(zip(found.ids.tolist(), found.distances.tolist(), strict=True)):
        shown = ", ".join(f"{i} ({v:.6f})" for i, v in zip(ids_row, values_row, strict=True) if i >= 0)
        print(f"query {row}: {shown}")
    if args.json:
        from .run_folder import write_json

        # missing neighbours (infinite values) become null: JSON has no infinity
        finite = [[v if abs(v) != float("inf") else None for v in row] for row in found.distances.tolist()]
        body = {"metric": found_index.metric.value, "k": args.k, "ids": found.ids.tolist(), kind + "s": finite}
        try:
            write_json(args.json, body)
        except OSError as exc:
            return _error(str(exc), command)
        print(f"Wrote {args.json}")
    return 0
