from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dmlkit.data import ImageCSVDataset, ImageFolderDataset, load_image
from dmlkit.data.transforms import Compose, Normalize, Resize
from dmlkit.errors import CorruptFileError, MissingDependencyError

from ._shared import shared_folder

Image = pytest.importorskip("PIL.Image", reason="Pillow is needed to write and read test images")


def _save(path: Path, pixels: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode=mode).save(path) if mode else Image.fromarray(pixels).save(path)
    return path


def _pixels(seed: int, h: int = 3, w: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


# --- load_image ---------------------------------------------------------------------------------------------------


def test_load_image_is_rgb_float_in_unit_range(tmp_path: Path) -> None:
    pixels = _pixels(0, 5, 7)
    out = load_image(_save(tmp_path / "a.png", pixels))
    assert out.shape == (3, 5, 7) and out.dtype == torch.float32
    np.testing.assert_array_equal(out.numpy(), pixels.transpose(2, 0, 1).astype(np.float32) / np.float32(255))


def test_load_image_converts_other_modes_to_rgb(tmp_path: Path) -> None:
    gray = np.array([[0, 51], [204, 255]], dtype=np.uint8)
    out = load_image(_save(tmp_path / "g.png", gray))
    assert out.shape == (3, 2, 2)
    for c in range(3):
        np.testing.assert_array_equal(out[c].numpy(), gray / np.float32(255))
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 7  # red, nearly transparent: the alpha channel is dropped
    assert load_image(_save(tmp_path / "t.png", rgba)).tolist() == [[[1.0] * 2] * 2, [[0.0] * 2] * 2, [[0.0] * 2] * 2]
    palette = Image.fromarray(_pixels(1)).convert("P")
    palette.save(tmp_path / "p.png")
    expected = np.asarray(palette.convert("RGB")).transpose(2, 0, 1) / np.float32(255)
    np.testing.assert_array_equal(load_image(tmp_path / "p.png").numpy(), expected)


def test_missing_and_unreadable_images_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.png"
    with pytest.raises(FileNotFoundError, match=f"^load_image: the image file {re.escape(str(missing))} does not"):
        load_image(missing)
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not an image")
    with pytest.raises(CorruptFileError, match=f"^load_image: cannot read the image {re.escape(str(garbage))}: "):
        load_image(garbage)
    whole = tmp_path / "whole.jpg"
    Image.fromarray(_pixels(2, 64, 64)).save(whole, quality=90)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole.read_bytes()[:300])
    with pytest.raises(CorruptFileError, match=f"(?i)cannot read the image {re.escape(str(cut))}: .*truncated"):
        load_image(cut)


def test_missing_pillow_raises_missing_dependency(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = _save(tmp_path / "a.png", _pixels(3))
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(MissingDependencyError, match=r'Reading images needs the optional package `Pillow`.*'
                                                     r'pip install "dmlkit\[images\]"'):  # fmt: skip
        load_image(path)


# --- ImageFolderDataset -------------------------------------------------------------------------------------------


def test_folder_dataset_classes_labels_and_items(tmp_path: Path) -> None:
    images = {}
    for i, rel in enumerate(["zebra/1.png", "ant/b.PNG", "ant/a.png", "ant/deep/c.png", "moth/x.bmp"]):
        images[rel] = _pixels(i)
        _save(tmp_path / rel, images[rel])
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    (tmp_path / "ant" / ".hidden.png").write_bytes(b"")
    (tmp_path / "loose.png").write_bytes(b"")  # files directly in root are not samples
    (tmp_path / ".cache").mkdir()
    data = ImageFolderDataset(tmp_path)
    assert data.classes == ["ant", "moth", "zebra"] and data.class_to_idx == {"ant": 0, "moth": 1, "zebra": 2}
    order = ["ant/a.png", "ant/b.PNG", "ant/deep/c.png", "moth/x.bmp", "zebra/1.png"]
    assert [p.relative_to(tmp_path).as_posix() for p, _ in data.samples] == order
    assert data.labels.tolist() == [0, 0, 0, 1, 2] and data.targets == [0, 0, 0, 1, 2] and len(data) == 5
    image, label = data[3]
    assert label == 1
    np.testing.assert_array_equal(image.numpy(), images["moth/x.bmp"].transpose(2, 0, 1) / np.float32(255))
    assert repr(data) == "ImageFolderDataset(5 images, 3 classes)"


def test_folder_dataset_transform_and_loader(tmp_path: Path) -> None:
    for i in range(4):
        _save(tmp_path / f"c{i % 2}" / f"{i}.png", _pixels(i, 6, 10))
    transform = Compose([Resize((4, 4)), Normalize([0.5] * 3, [0.5] * 3)])
    data = ImageFolderDataset(tmp_path, transform=transform)
    raw = ImageFolderDataset(tmp_path)
    torch.testing.assert_close(data[0][0], transform(raw[0][0]))
    batch, labels = next(iter(torch.utils.data.DataLoader(data, batch_size=4)))
    assert batch.shape == (4, 3, 4, 4) and labels.tolist() == [0, 0, 1, 1] and labels.dtype == torch.int64


def test_folder_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError, match=r"^ImageFolderDataset: the image folder .*absent does not exist"):
        ImageFolderDataset(tmp_path / "absent")
    with pytest.raises(ValueError, match=r"^ImageFolderDataset: the folder .* holds no class folder"):
        ImageFolderDataset(tmp_path)
    _save(tmp_path / "b" / "1.png", _pixels(0))
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match=r"the class folder\(s\) a in .* hold no image \(file endings read: \.jpg, "):
        ImageFolderDataset(tmp_path)
    with pytest.raises(ValueError, match=r"^ImageFolderDataset: `extensions` must be a non-empty sequence of endings"):
        ImageFolderDataset(tmp_path, extensions="png")
    with pytest.raises(TypeError, match=r"^ImageFolderDataset: `transform` must be a callable or None, got int\.$"):
        ImageFolderDataset(tmp_path, extensions=[".png"], transform=3)  # type: ignore[arg-type]
    data = ImageFolderDataset(tmp_path, extensions=[".png", ".txt"])
    with pytest.raises(CorruptFileError, match=r"cannot read the image .*a/readme\.txt"):
        data[0]
    (tmp_path / "b" / "1.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"the image file .*b/1\.png does not exist"):
        data[1]


# --- ImageCSVDataset ----------------------------------------------------------------------------------------------


def _write_csv(path: Path, rows: list[list[str]], delimiter: str = ",", bom: bool = False) -> Path:
    with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as file:
        csv.writer(file, delimiter=delimiter).writerows(rows)
    return path


def test_csv_dataset_header_detection_and_string_labels(tmp_path: Path) -> None:
    for i in range(3):
        _save(tmp_path / "img" / f"{i}.png", _pixels(i))
    rows = [["img/0.png", "tabby"], ["img/1.png", "siamese"], ["img/2.png", "tabby"]]
    plain = ImageCSVDataset(_write_csv(tmp_path / "plain.csv", rows))  # no header: the first path is an image
    headed = ImageCSVDataset(_write_csv(tmp_path / "headed.csv", [["path", "breed"], *rows]))
    named = ImageCSVDataset(tmp_path / "headed.csv", "path", "breed")
    for data in (plain, headed, named):
        assert data.classes == ["siamese", "tabby"] and data.labels.tolist() == [1, 0, 1]
        assert [p for p, _ in data.samples] == [tmp_path / "img" / f"{i}.png" for i in range(3)]
    np.testing.assert_array_equal(named[1][0].numpy(), _pixels(1).transpose(2, 0, 1) / np.float32(255))
    assert named[1][1] == 0
    forced = ImageCSVDataset(tmp_path / "plain.csv", header=True)
    assert len(forced) == 2


def test_csv_dataset_integer_labels_tsv_bom_root_and_absolute_paths(tmp_path: Path) -> None:
    absolute = _save(tmp_path / "elsewhere" / "abs.png", _pixels(5))
    _save(tmp_path / "pics" / "rel.png", _pixels(6))
    rows = [["id", "file", "class"], ["1", "rel.png", " 17 "], ["2", str(absolute), "3"], [], ["3", "rel.png", "17"]]
    path = _write_csv(tmp_path / "list.tsv", rows, delimiter="\t", bom=True)
    data = ImageCSVDataset(path, 1, 2, delimiter="\t", root=tmp_path / "pics")
    assert data.labels.tolist() == [17, 3, 17]
    assert data.classes == ["3", "17"] and data.class_to_idx == {"3": 3, "17": 17}
    assert [p for p, _ in data.samples] == [tmp_path / "pics" / "rel.png", absolute, tmp_path / "pics" / "rel.png"]
    assert data[1][1] == 3 and data[1][0].shape == (3, 3, 4)


def test_csv_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"^ImageCSVDataset: the CSV file .*none\.csv does not exist\.$"):
        ImageCSVDataset(tmp_path / "none.csv")
    empty = _write_csv(tmp_path / "empty.csv", [["path", "label"]])
    with pytest.raises(ValueError, match=r"^ImageCSVDataset: the CSV file .*empty\.csv holds no data row\.$"):
        ImageCSVDataset(empty)
    short = _write_csv(tmp_path / "short.csv", [["path", "label"], ["a.png", "x"], ["b.png"]])
    with pytest.raises(ValueError, match=r"^ImageCSVDataset: line 3 of .*short\.csv has 1 field\(s\); columns 0 and "):
        ImageCSVDataset(short)
    blank = _write_csv(tmp_path / "blank.csv", [["a.png", "x"], ["b.png", " "]])
    with pytest.raises(ValueError, match=r"^ImageCSVDataset: line 2 of .*blank\.csv has an empty label\.$"):
        ImageCSVDataset(blank)
    with pytest.raises(ValueError, match=r"^ImageCSVDataset: `label_column` must be a column of the header \(path, "
                                         r"label\), got 'lable'\.$"):  # fmt: skip
        ImageCSVDataset(short, "path", "lable")
    with pytest.raises(ValueError, match=r"^ImageCSVDataset: `header` must be True or None when a column is given"):
        ImageCSVDataset(short, "path", header=False)
    with pytest.raises(ValueError, match=r"^ImageCSVDataset: `path_column` must be a column index >= 0"):
        ImageCSVDataset(short, -1)
    with pytest.raises(ValueError, match=r"^ImageCSVDataset: `delimiter` must be a single character, got ', '\.$"):
        ImageCSVDataset(short, delimiter=", ")
    data = ImageCSVDataset(_write_csv(tmp_path / "ok.csv", [["gone.png", "x"]]))
    with pytest.raises(FileNotFoundError, match=r"the image file .*gone\.png does not exist"):
        data[0]


# --- the Oxford-IIIT Pet sample ----------------------------------------------------------------------------------


def test_oxford_pet_sample_from_its_csv() -> None:
    folder = shared_folder("oxford-iiit-pet-sample")
    by_breed = ImageCSVDataset(folder / "labels.csv", "filename", "breed", root=folder / "images")
    by_id = ImageCSVDataset(folder / "labels.csv", 0, 2, root=folder / "images")  # header detected
    assert len(by_breed) == len(by_id) == 370
    assert len(by_breed.classes) == 37 and torch.bincount(by_breed.labels).tolist() == [10] * 37
    assert by_id.classes == [str(i) for i in range(1, 38)] and torch.bincount(by_id.labels)[1:].tolist() == [10] * 37
    # breed names and class ids correspond one to one; ids follow the case-insensitive alphabetical order
    pairs = {(by_breed.classes[a], b) for a, b in zip(by_breed.labels.tolist(), by_id.labels.tolist(), strict=True)}
    assert sorted(pairs, key=lambda p: p[1]) == [
        (n, i + 1) for i, n in enumerate(sorted(by_breed.classes, key=str.lower))
    ]
    assert all(path.is_file() for path, _ in by_breed.samples)
    smallest = sorted(range(370), key=lambda i: by_breed.samples[i][0].stat().st_size)[:3]
    for index in smallest:
        image, label = by_breed[index]
        path = by_breed.samples[index][0]
        with Image.open(path) as pil:
            expected = np.asarray(pil.convert("RGB")).transpose(2, 0, 1) / np.float32(255)
        assert image.dtype == torch.float32 and image.shape == expected.shape
        np.testing.assert_array_equal(image.numpy(), expected)
        assert by_breed.classes[label] == path.name.rsplit("_", 1)[0]


def test_oxford_pet_sample_as_class_folders(tmp_path: Path) -> None:
    folder = shared_folder("oxford-iiit-pet-sample")
    picked = ["Bengal_107", "Bengal_16", "pug_16"]
    for name in picked:
        breed = name.rsplit("_", 1)[0]
        (tmp_path / breed).mkdir(exist_ok=True)
        (tmp_path / breed / f"{name}.jpg").symlink_to(folder / "images" / f"{name}.jpg")
    data = ImageFolderDataset(tmp_path, transform=Resize((32, 32)))
    assert data.classes == ["Bengal", "pug"] and data.labels.tolist() == [0, 0, 1]
    batch = torch.stack([data[i][0] for i in range(3)])
    assert batch.shape == (3, 3, 32, 32) and float(batch.min()) >= 0.0 and float(batch.max()) <= 1.0
