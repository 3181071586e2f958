from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from dmlkit.data import TextPair, TextPairDataset, load_sts_benchmark, read_text_pairs

from ._shared import shared_folder


def _naive_groups(pairs: list[tuple[str, str, float]], threshold: float) -> list[int]:
    """Union-find over the distinct texts, labels numbered by first appearance (the oracle)."""
    order: list[str] = []
    seen: set[str] = set()
    for a, b, _ in pairs:
        for t in (a, b):
            if t not in seen:
                seen.add(t)
                order.append(t)
    parent = {t: t for t in order}

    def find(t: str) -> str:
        while parent[t] != t:
            t = parent[t]
        return t

    for a, b, score in pairs:
        if score >= threshold:
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[rb] = ra
    roots: dict[str, int] = {}
    return [roots.setdefault(find(t), len(roots)) for t in order]


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- TextPairDataset ----------------------------------------------------------------------------------------------


def test_labelled_groups_match_union_find_on_small_graphs() -> None:
    chain = [("a", "b", 5.0), ("c", "d", 1.0), ("b", "c", 4.0), ("e", "f", 4.5), ("d", "g", 4.2), ("h", "a", 3.9)]
    data = TextPairDataset(chain)
    texts, labels = data.labelled_groups(4.0)
    assert texts == ["a", "b", "c", "d", "e", "f", "g", "h"]
    assert labels.tolist() == _naive_groups(chain, 4.0) == [0, 0, 0, 1, 2, 2, 1, 3]
    assert labels.dtype == torch.int64
    texts, labels = data.labelled_groups(4.0, min_size=2)
    assert texts == ["a", "b", "c", "d", "e", "f", "g"] and labels.tolist() == [0, 0, 0, 1, 2, 2, 1]
    texts, labels = data.labelled_groups(10.0)
    assert labels.tolist() == list(range(8))
    texts, labels = data.labelled_groups(10.0, min_size=2)
    assert texts == [] and labels.shape == (0,) and labels.dtype == torch.int64
    # a long path needs many propagation rounds: nodes 0-1, 1-2, ... listed in reverse
    path = [(str(i), str(i + 1), 5.0) for i in reversed(range(40))]
    assert TextPairDataset(path).labelled_groups(5.0)[1].tolist() == [0] * 41


def test_labelled_groups_match_union_find_on_random_graphs() -> None:
    rng = torch.Generator().manual_seed(0)
    for _ in range(5):
        ends = torch.randint(0, 30, (40, 2), generator=rng).tolist()
        scores = (torch.rand(40, generator=rng) * 5).tolist()
        pairs = [(f"t{a}", f"t{b}", s) for (a, b), s in zip(ends, scores, strict=True)]
        assert TextPairDataset(pairs).labelled_groups(3.0)[1].tolist() == _naive_groups(pairs, 3.0)


def test_dataset_items_collate_and_errors() -> None:
    data = TextPairDataset([("x", "y", 1), ("u", "v", 2.5)], tags=["g1", "g2"])
    assert data[0] == TextPair("x", "y", 1.0) and len(data) == 2 and data.tags == ["g1", "g2"]
    batch = next(iter(torch.utils.data.DataLoader(data, batch_size=2)))
    assert list(batch.text_a) == ["x", "u"] and batch.score.tolist() == [1.0, 2.5]
    with pytest.raises(ValueError, match=r"^TextPairDataset: `pairs\[1\]` must be a triple with a finite numeric "):
        TextPairDataset([("x", "y", 1.0), ("u", "v", float("nan"))])
    with pytest.raises(TypeError, match=r"^TextPairDataset: `pairs\[0\]` must be a \(text_a, text_b, score\) triple"):
        TextPairDataset([("x", "y")])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"`pairs\[0\]` must be a pair of strings and a score"):
        TextPairDataset([("x", 3, 1.0)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"^TextPairDataset: `tags` must be one per pair \(2\), got '1 tags'\.$"):
        TextPairDataset([("x", "y", 1), ("u", "v", 2)], tags=["a"])
    with pytest.raises(ValueError, match=r"`threshold` must be finite, got inf\."):
        data.labelled_groups(float("inf"))
    with pytest.raises(ValueError, match=r"`min_size` must be an integer >= 1, got 0\."):
        data.labelled_groups(1.0, min_size=0)


# --- read_text_pairs ----------------------------------------------------------------------------------------------


def test_read_csv_with_quotes_header_detection_and_names(tmp_path: Path) -> None:
    path = tmp_path / "pairs.csv"
    with open(path, "w", newline="", encoding="utf-8-sig") as file:  # with a byte-order mark
        writer = csv.writer(file)
        writer.writerows([["left", "right", "sim"], ["a, b", 'say "hi"', "0.5"], [], ["  c ", "d", "4"]])
    expected = [TextPair("a, b", 'say "hi"', 0.5), TextPair("c", "d", 4.0)]
    assert read_text_pairs(path).pairs == expected  # header detected: 'sim' is not a number
    assert read_text_pairs(path, "left", "right", "sim").pairs == expected
    assert read_text_pairs(path, 1, 0, 2).pairs == [TextPair(b, a, s) for a, b, s in expected]
    headless = _write(tmp_path / "headless.csv", "p,q,1.5\nr,s,2\n")
    assert read_text_pairs(headless).pairs == [TextPair("p", "q", 1.5), TextPair("r", "s", 2.0)]
    assert len(read_text_pairs(headless, header=True)) == 1


def test_read_tsv_without_quoting(tmp_path: Path) -> None:
    text = 'id\tfirst\tsecond\tscore\textra\n1\tHe said "no\tShe said yes\t2.0\n2\t"x"\ty\t3\tmore\tfields\n'
    path = _write(tmp_path / "pairs.tsv", text)
    data = read_text_pairs(path, 1, 2, 3, quoting=False, tag_column=0)
    assert data.pairs == [TextPair('He said "no', "She said yes", 2.0), TextPair('"x"', "y", 3.0)]
    assert data.tags == ["1", "2"]
    same = read_text_pairs(_write(tmp_path / "pairs.txt", text), "first", "second", "score", delimiter="\t",
                           quoting=False)  # fmt: skip
    assert same.pairs == data.pairs


def test_read_errors_name_the_line(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"^read_text_pairs: the file .*none\.csv does not exist\."):
        read_text_pairs(tmp_path / "none.csv")
    with pytest.raises(ValueError, match=r"^read_text_pairs: the file .*empty\.csv holds no data row\.$"):
        read_text_pairs(_write(tmp_path / "empty.csv", "\n\n"))
    with pytest.raises(ValueError, match=r"holds no data row"):
        read_text_pairs(_write(tmp_path / "header_only.csv", "a,b,score\n"))
    with pytest.raises(ValueError, match=r"^read_text_pairs: line 3 of .*short\.csv has 2 field\(s\); 3 are needed\.$"):
        read_text_pairs(_write(tmp_path / "short.csv", "a,b,1\n\nc,d\n"))
    with pytest.raises(ValueError, match=r"^read_text_pairs: line 2 of .*blank\.csv has an empty text\.$"):
        read_text_pairs(_write(tmp_path / "blank.csv", "a,b,1\n ,d,2\n"))
    with pytest.raises(
        ValueError, match=r"^read_text_pairs: line 2 of .*score\.csv has the score 'high', not a finite"
    ):
        read_text_pairs(_write(tmp_path / "score.csv", "a,b,1\nc,d,high\n"))
    named = _write(tmp_path / "named.csv", "a,b,score\nc,d,1\n")
    with pytest.raises(ValueError, match=r"^read_text_pairs: `score_column` must be a column of the header \(a, b, "
                                         r"score\), got 'scroe'\.$"):  # fmt: skip
        read_text_pairs(named, "a", "b", "scroe")
    with pytest.raises(ValueError, match=r"`header` must be True or None when a column is given by name, got False"):
        read_text_pairs(named, "a", "b", "score", header=False)
    with pytest.raises(ValueError, match=r"`delimiter` must be a single character, got ';;'\."):
        read_text_pairs(named, delimiter=";;")
    with pytest.raises(ValueError, match=r"`text_a_column` must be a column index >= 0 or a header name, got -1\."):
        read_text_pairs(named, -1)


# --- the STS Benchmark --------------------------------------------------------------------------------------------

# From the data folder's README: pairs, genre counts (captions / forum / news), mean score (3 decimals).
STS = {
    "train": (5749, (2000, 450, 3299), 2.701),
    "dev": (1500, (625, 375, 500), 2.364),
    "test": (1379, (625, 254, 500), 2.608),
}


@pytest.mark.parametrize("split", sorted(STS))
def test_sts_benchmark_counts_scores_and_fields(split: str) -> None:
    folder = shared_folder("stsbenchmark")
    data = load_sts_benchmark(folder.parent, split)
    count, (captions, forum, news), mean = STS[split]
    assert len(data) == count
    assert data.tags is not None
    assert data.tags.count("main-captions") == captions and data.tags.count("main-news") == news
    assert data.tags.count("main-forum") + data.tags.count("main-forums") == forum
    assert abs(float(data.scores.double().mean()) - mean) <= 5e-4
    assert float(data.scores.min()) == 0.0 and float(data.scores.max()) == 5.0
    # every pair equals an independent split of the line on tabs
    lines = (folder / f"sts-{split}.csv").read_text(encoding="utf-8").splitlines()
    assert len(lines) == count
    for pair, line in zip(data.pairs, lines, strict=True):
        fields = line.split("\t")
        assert len(fields) in (7, 9)
        assert pair == (fields[5].strip(), fields[6].strip(), float(fields[4]))
        assert pair.text_a and pair.text_b


def test_sts_benchmark_quirks() -> None:
    data = load_sts_benchmark(shared_folder("stsbenchmark"), "test")  # the folder itself works too
    quoted = data[407]
    assert quoted == TextPair(
        'A young boy jumping into a pool that says "no diving".', "A boy jumps into a pool while lifeguards watch.", 3.2
    )
    assert data[642].text_b == 'My answer to your question is "Probably Not".'  # a 9-field line
    train = load_sts_benchmark(shared_folder("stsbenchmark").parent)
    texts, labels = train.labelled_groups(4.0)
    assert len(texts) == len(set(texts)) == 10536 and all(t == t.strip() for t in texts)
    assert labels.tolist() == _naive_groups(train.pairs, 4.0)


def test_sts_benchmark_missing_files_and_bad_split(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"^load_sts_benchmark: no file sts-dev\.csv found; tried .*sts-dev\.csv"
                                                r", .*stsbenchmark/sts-dev\.csv\. Pass `root` or set"):  # fmt: skip
        load_sts_benchmark(tmp_path, "dev")
    with pytest.raises(ValueError, match=r"^load_sts_benchmark: `split` must be one of 'train', 'dev', 'test', got "
                                         r"'valid'\.$"):  # fmt: skip
        load_sts_benchmark(tmp_path, "valid")
