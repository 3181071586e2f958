"""Images from a CSV of (path, label) with torch augmentations, trained with PML's trainer API.

The Oxford-IIIT Pet sample (``$DMLKIT_DATA/oxford-iiit-pet-sample`` or ``../shared/data/...``: 10 photos of each
of 37 breeds, listed in ``labels.csv``) is split by breed: breeds 1-25 for training, the unseen 26-37 for
testing. Training images get a random resized crop, a horizontal flip and colour jitter; both splits are
normalised. A small CNN is trained with ``MultiSimilarityLoss`` and its miner on class-balanced batches, and
``GlobalEmbeddingSpaceTester`` measures retrieval on the unseen breeds before and after training.

Usage: ``python examples/pet_images.py [--epochs 5] [--size 64]``. With 370 photos this shows the moving
parts, not a competitive pet retriever.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.utils.data import Subset

from dmlkit import losses, miners
from dmlkit.data import ImageCSVDataset, resolve_data_root
from dmlkit.data.transforms import ColorJitter, Compose, Normalize, RandomHorizontalFlip, RandomResizedCrop, Resize
from dmlkit.evaluation import AccuracyCalculator
from dmlkit.samplers import MPerClassSampler
from dmlkit.testers import GlobalEmbeddingSpaceTester
from dmlkit.trainers import MetricLossOnly

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet channel statistics
METRICS = ("precision_at_1", "r_precision", "mean_average_precision_at_r")


def small_cnn(embedding_size: int = 64) -> nn.Module:
    """Four conv blocks (stride-2 pooling) and global average pooling, for RGB images of any size."""
    layers: list[nn.Module] = []
    width = 3
    for out in (16, 32, 64, 128):
        layers += [nn.Conv2d(width, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(), nn.MaxPool2d(2)]
        width = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, embedding_size))


def datasets(size: int, seed: int) -> tuple[Subset, Subset]:
    folder = resolve_data_root() / "oxford-iiit-pet-sample"
    generator = torch.Generator().manual_seed(seed)
    train_transform = Compose(
        [
            Resize(size),
            RandomResizedCrop(size, scale=(0.5, 1.0), generator=generator),
            RandomHorizontalFlip(generator=generator),
            ColorJitter(0.3, 0.3, 0.3, 0.05, generator=generator),
            Normalize(MEAN, STD),
        ]
    )
    test_transform = Compose([Resize((size, size)), Normalize(MEAN, STD)])
    options = {"path_column": "filename", "label_column": "class_id", "root": folder / "images"}
    train_all = ImageCSVDataset(folder / "labels.csv", transform=train_transform, **options)
    test_all = ImageCSVDataset(folder / "labels.csv", transform=test_transform, **options)
    labels = train_all.labels
    train_idx = torch.nonzero(labels <= 25).flatten().tolist()
    test_idx = torch.nonzero(labels > 25).flatten().tolist()
    return Subset(train_all, train_idx), Subset(test_all, test_idx)


def main(epochs: int = 5, size: int = 64, seed: int = 0, progress: bool = True) -> dict[str, dict[str, float]]:
    torch.manual_seed(seed)
    train_set, test_set = datasets(size, seed)
    train_labels = train_set.dataset.labels[train_set.indices]  # type: ignore[attr-defined]
    trunk = small_cnn()
    calculator = AccuracyCalculator(include=METRICS, k="max_bin_count")
    tester = GlobalEmbeddingSpaceTester(batch_size=64, dataloader_num_workers=0, accuracy_calculator=calculator)
    metrics = {"before": _retrieval(tester, test_set, trunk)}
    trainer = MetricLossOnly(
        models={"trunk": trunk},
        optimizers={"trunk_optimizer": torch.optim.Adam(trunk.parameters(), lr=1e-3)},
        batch_size=40,
        loss_funcs={"metric_loss": losses.MultiSimilarityLoss()},
        mining_funcs={"tuple_miner": miners.MultiSimilarityMiner(epsilon=0.1)},
        dataset=train_set,
        sampler=MPerClassSampler(train_labels, m=4, batch_size=40, length_before_new_iter=len(train_set), seed=seed),
        seed=seed,
        progress=progress,
    )
    trainer.train(num_epochs=epochs)
    metrics["after"] = _retrieval(tester, test_set, trunk)
    return metrics


def _retrieval(tester: GlobalEmbeddingSpaceTester, test_set: Subset, trunk: nn.Module) -> dict[str, float]:
    accuracies = tester.test({"test": test_set}, 0, trunk)["test"]
    return {m: float(accuracies[f"{m}_level0"]) for m in METRICS}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    results = main(args.epochs, args.size, args.seed)
    print("unseen breeds 26-37 (120 photos)   " + "   ".join(f"{m:>28}" for m in METRICS))
    for when, values in results.items():
        print(f"{when:<34}" + "   ".join(f"{values[m]:>28.3f}" for m in METRICS))
