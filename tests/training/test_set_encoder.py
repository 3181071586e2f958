"""SetEncoder: attention pooling against a naive oracle, invariances, masks, edge items, input forms, files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.func import functional_call
from torch.utils.data import DataLoader

from dmlkit.data import UNK_ID, Vocabulary, pad_items, pad_labeled_items
from dmlkit.errors import CorruptFileError
from dmlkit.training import SetEncoder, attention_pool
from tests.reference.set_encoder import attention_pool_reference


def _model(vocab_size: int = 12, dim: int = 6, out: int | None = 4, **kwargs: object) -> SetEncoder:
    torch.manual_seed(0)
    model = SetEncoder(vocab_size, dim, out, **kwargs).double()  # type: ignore[arg-type]
    with torch.no_grad():  # a non-zero query, so that the attention is not uniform
        model.query.copy_(torch.randn(model.key_dim, dtype=torch.float64))
    return model


ITEMS = [[2, 5, 7, 3], [4], [9, 9, 2], [11, 3, 6, 8, 10, 2, 5]]


# ---------------------------------------------------------------------------------------------- the oracle


def test_attention_pool_matches_the_naive_oracle() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 5, 4, generator=gen, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 1, 0, 1, 0]], dtype=torch.bool)
    query = torch.randn(3, generator=gen, dtype=torch.float64)
    weight = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    bias = torch.randn(3, generator=gen, dtype=torch.float64)
    pooled, weights = attention_pool(x, mask, query, weight, bias)
    for b in range(3):
        real = [x[b, i].tolist() for i in range(5) if mask[b, i]]
        want_pooled, want_weights = attention_pool_reference(real, query.tolist(), weight.tolist(), bias.tolist())
        assert pooled[b].tolist() == pytest.approx(want_pooled, abs=1e-12)
        assert weights[b][mask[b]].tolist() == pytest.approx(want_weights, abs=1e-12)
    assert (weights[~mask] == 0).all()


def test_forward_matches_the_oracle_through_the_projection() -> None:
    model = _model()
    out = model(ITEMS)
    p = {name: value.detach() for name, value in model.named_parameters()}
    for b, item in enumerate(ITEMS):
        tokens = p["embedding.weight"][item].tolist()
        pooled, _ = attention_pool_reference(
            tokens, p["query"].tolist(), p["key.weight"].tolist(), p["key.bias"].tolist()
        )
        want = p["projection.weight"] @ torch.tensor(pooled, dtype=torch.float64) + p["projection.bias"]
        assert torch.allclose(out[b], want, atol=1e-12)


def test_gradcheck_of_the_pooling() -> None:
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    query = torch.randn(2, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(2, generator=gen, dtype=torch.float64, requires_grad=True)

    def pooled(*args: torch.Tensor) -> torch.Tensor:
        return attention_pool(args[0], mask, *args[1:])[0]

    assert torch.autograd.gradcheck(pooled, (x, query, weight, bias))


def test_gradcheck_of_a_tiny_float64_module() -> None:
    model = _model(vocab_size=5, dim=3, out=2)
    names = ["embedding.weight", "query", "key.weight", "key.bias", "projection.weight"]
    params = tuple(dict(model.named_parameters())[n].detach().clone().requires_grad_(True) for n in names)
    batch = pad_items([[2, 3, 4], [1], [4, 2]])

    def forward(*values: torch.Tensor) -> torch.Tensor:
        return functional_call(model, dict(zip(names, values, strict=True)), (batch,))

    assert torch.autograd.gradcheck(forward, params)


# ---------------------------------------------------------------------------------------------- invariance


def test_output_does_not_depend_on_token_order() -> None:
    model = _model()
    gen = torch.Generator().manual_seed(3)
    shuffled = [[item[i] for i in torch.randperm(len(item), generator=gen).tolist()] for item in ITEMS]
    assert shuffled != ITEMS
    assert torch.allclose(model(ITEMS), model(shuffled), atol=1e-12, rtol=0)


def test_output_does_not_depend_on_padding_length() -> None:
    model = _model()
    token_ids, mask = pad_items(ITEMS)
    longer_ids = torch.cat([token_ids, torch.zeros(len(ITEMS), 9, dtype=torch.long)], dim=1)
    longer_mask = torch.cat([mask, torch.zeros(len(ITEMS), 9, dtype=torch.bool)], dim=1)
    short = model(token_ids, mask)
    assert torch.allclose(short, model(longer_ids, longer_mask), atol=1e-12, rtol=0)
    # and in float32, within rounding
    model32 = _model().float()
    assert torch.allclose(model32(token_ids, mask), model32(longer_ids, longer_mask), atol=1e-6, rtol=0)


def test_an_item_is_encoded_the_same_alone_or_in_any_batch() -> None:
    model = _model()
    together = model(ITEMS)
    for b, item in enumerate(ITEMS):
        assert torch.allclose(model([item]), together[b : b + 1], atol=1e-12, rtol=0)


def test_masked_positions_get_exactly_zero_attention() -> None:
    model = _model()
    token_ids, mask = pad_items(ITEMS)
    _, weights = model(token_ids, mask, return_attention=True)
    assert weights.shape == token_ids.shape
    assert (weights[~mask] == 0.0).all()
    assert (weights[mask] > 0).all()
    assert torch.allclose(weights.sum(1), torch.ones(len(ITEMS), dtype=torch.float64), atol=1e-12)


def test_mask_decides_even_over_real_ids() -> None:
    model = _model()
    ids = torch.tensor([[2, 5, 7]])
    _, weights = model(ids, torch.tensor([[True, False, True]]), return_attention=True)
    assert weights[0, 1] == 0.0
    assert torch.allclose(model(ids, torch.tensor([[True, False, True]])), model([[2, 7]]), atol=1e-12)


# ----------------------------------------------------------------------------------------------- edge items


def test_one_token_item_is_that_tokens_projected_embedding() -> None:
    model = _model()
    out, weights = model([[7]], return_attention=True)
    assert weights.tolist() == [[1.0]]
    want = model.projection(model.embedding.weight[7])  # type: ignore[misc]
    assert torch.allclose(out[0], want, atol=1e-12)


def test_maximum_length_item_without_padding() -> None:
    model = _model()
    longest = max(ITEMS, key=len)
    token_ids, mask = pad_items(ITEMS)
    row = ITEMS.index(longest)
    assert bool(mask[row].all()) and token_ids.shape[1] == len(longest)
    out, weights = model(token_ids, mask, return_attention=True)
    assert (weights[row] > 0).all()
    assert torch.allclose(out[row], model(torch.tensor([longest]))[0], atol=1e-12)


def test_unknown_only_items_get_the_learned_unknown_embedding() -> None:
    vocabulary = Vocabulary.build(["red cars", "blue bikes"])
    model = _model(vocab_size=len(vocabulary))
    unknown = vocabulary.encode("green planes and boats")
    assert unknown == [UNK_ID] * 4
    out = model([unknown, [UNK_ID]])
    want = model.projection(model.embedding.weight[UNK_ID])  # type: ignore[misc]
    assert torch.allclose(out[0], want, atol=1e-12) and torch.allclose(out[1], want, atol=1e-12)
    assert not torch.allclose(model.embedding.weight[UNK_ID], torch.zeros(6, dtype=torch.float64))


def test_empty_items_are_rejected_naming_their_row() -> None:
    model = _model()
    match = r"SetEncoder: `token_ids\[1\]` must be a non-empty item \(encode an item with no known token as \[1\]"
    with pytest.raises(ValueError, match=match):
        model(torch.tensor([[2, 3], [0, 0]]))
    with pytest.raises(ValueError, match=match):
        model(torch.tensor([[2, 3], [4, 5]]), torch.tensor([[True, False], [False, False]]))
    with pytest.raises(ValueError, match=match):
        model(torch.tensor([[2, 3], [4, 5]]), lengths=torch.tensor([1, 0]))
    with pytest.raises(ValueError, match=r"pad_items: `batch\[1\]` must be a non-empty item"):
        model([[2], []])


def test_padding_row_stays_zero_and_gets_no_gradient() -> None:
    model = _model()
    assert (model.embedding.weight[0] == 0).all()
    model(ITEMS).sum().backward()
    grad = model.embedding.weight.grad
    assert grad is not None and (grad[0] == 0).all() and (grad[2] != 0).any()


# ---------------------------------------------------------------------------------------------- input forms


def test_every_input_form_gives_the_same_embeddings() -> None:
    model = _model()
    padded = pad_items(ITEMS)
    lengths = torch.tensor([len(item) for item in ITEMS])
    want = model(padded.token_ids, padded.mask)
    assert torch.equal(model(padded), want)
    assert torch.equal(model(tuple(padded)), want)
    assert torch.equal(model(padded.token_ids), want)  # mask inferred from the padding id
    assert torch.equal(model(padded.token_ids, lengths=lengths), want)
    assert torch.equal(model(ITEMS), want)
    assert torch.equal(model([torch.tensor(item) for item in ITEMS]), want)


def test_collate_output_from_a_dataloader_goes_straight_in() -> None:
    model = _model()
    data = [(item, label) for item, label in zip(ITEMS, [0, 1, 0, 1], strict=True)]
    ((inputs, labels),) = list(DataLoader(data, batch_size=4, collate_fn=pad_labeled_items))
    assert torch.equal(model(inputs), model(ITEMS)) and labels.tolist() == [0, 1, 0, 1]


def test_embed_items_batches_without_gradients_and_restores_the_mode() -> None:
    model = _model(dropout=0.5)
    model.train()
    out = model.embed_items(ITEMS, batch_size=3)
    assert model.training and not out.requires_grad
    model.eval()
    assert torch.allclose(out, model(ITEMS), atol=1e-12)
    assert model.embed_items([]).shape == (0, 4)


def test_options_no_projection_key_dim_and_normalize() -> None:
    model = SetEncoder(10, 5, key_dim=3, normalize=True)
    out = model([[2, 3], [4]])
    assert out.shape == (2, 5) and model.out_features == 5 and model.key.weight.shape == (3, 5)
    assert torch.allclose(out.norm(dim=1), torch.ones(2))


def test_works_as_the_encoder_of_a_knn_classifier() -> None:
    from dmlkit.evaluation import KNNClassifier

    model = _model()
    clf = KNNClassifier(n_neighbors=1, encoder=model).fit(ITEMS, [0, 1, 2, 3])
    assert clf.predict([list(reversed(item)) for item in ITEMS]).tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda m: m(torch.tensor([[2, 12]])), ValueError, r"`token_ids` must be ids in \[0, 12\) .*, got 12\."),
        (lambda m: m(torch.tensor([[2, -1]])), ValueError, r"`token_ids` must be ids in \[0, 12\) .*, got -1\."),
        (lambda m: m(torch.tensor([2, 3])), ValueError, r"`token_ids` must be a 2-D integer tensor of shape \(B, L\)"),
        (lambda m: m(torch.tensor([[2.0]])), ValueError, r"`token_ids` must be a 2-D integer tensor"),
        (lambda m: m("red cars"), TypeError, r"SetEncoder: `token_ids` must be a \(B, L\) tensor of token ids"),
        (lambda m: m(torch.tensor([[2, 3]]), torch.tensor([[1, 1]])), ValueError, r"`mask` must be a bool tensor"),
        (lambda m: m(torch.tensor([[2, 3]]), torch.tensor([[True]])), ValueError, r"`mask` must be a bool tensor"),
        (
            lambda m: m(torch.tensor([[2, 3]]), torch.tensor([[True, True]]), lengths=torch.tensor([2])),
            ValueError,
            r"`lengths` must be None when `mask` is given",
        ),
        (lambda m: m(torch.tensor([[2, 3]]), lengths=torch.tensor([3])), ValueError, r"`lengths` must be 1 lengths"),
        (lambda m: m(pad_items([[2]]), torch.tensor([[True]])), ValueError, r"`mask` must be None when `token_ids`"),
        (lambda m: m([[2]], torch.tensor([[True]])), ValueError, r"`mask` must be None when `token_ids` is a list"),
    ],
)
def test_bad_inputs(call: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call(_model())  # type: ignore[operator]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_embeddings": 1}, r"SetEncoder: `num_embeddings` must be an integer >= 2, got 1\."),
        ({"embedding_dim": 0}, r"SetEncoder: `embedding_dim` must be an integer >= 1, got 0\."),
        ({"output_dim": 0}, r"SetEncoder: `output_dim` must be an integer >= 1, got 0\."),
        ({"padding_idx": 10}, r"SetEncoder: `padding_idx` must be an integer >= 0 and <= 9, got 10\."),
        ({"dropout": 1.0}, r"SetEncoder: `dropout` must be a number >= 0 and < 1, got 1.0\."),
    ],
)
def test_bad_constructor_arguments(kwargs: dict[str, object], match: str) -> None:
    arguments: dict[str, object] = {"num_embeddings": 10, **kwargs}
    with pytest.raises(ValueError, match=match):
        SetEncoder(**arguments)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------- files


def test_save_load_round_trip_with_the_vocabulary(tmp_path: Path) -> None:
    vocabulary = Vocabulary.build(["fast red cars", "slow blue bikes", "red bikes"])
    model = SetEncoder(len(vocabulary), 8, 3, key_dim=4, normalize=True)
    with torch.no_grad():
        model.query.normal_()
    file = model.save(tmp_path / "encoder.pt", vocabulary)
    loaded, loaded_vocabulary = SetEncoder.load(file)
    assert loaded_vocabulary == vocabulary and loaded._config() == model._config()
    items = vocabulary.encode_many(["red cars", "blue bikes and boats"])
    assert torch.equal(loaded(items), model(items))
    assert [p.name for p in tmp_path.iterdir()] == ["encoder.pt"]


def test_a_model_saved_without_vocabulary_needs_one_to_load(tmp_path: Path) -> None:
    vocabulary = Vocabulary(["a", "b", "c"])
    model = SetEncoder(len(vocabulary), 4)
    file = model.save(tmp_path / "encoder.pt")
    with pytest.raises(ValueError, match=r"saved without its vocabulary\. Pass the Vocabulary the model was trained"):
        SetEncoder.load(file)
    loaded, given = SetEncoder.load(file, vocabulary=vocabulary)
    assert given is vocabulary and torch.equal(loaded([[2, 3]]), model([[2, 3]]))
    with pytest.raises(ValueError, match=r"SetEncoder.load: `vocabulary` must be of size num_embeddings \(5\)"):
        SetEncoder.load(file, vocabulary=Vocabulary(["a"]))


def test_save_and_load_check_the_vocabulary(tmp_path: Path) -> None:
    model = SetEncoder(5, 4)
    with pytest.raises(ValueError, match=r"SetEncoder.save: `vocabulary` must be of size num_embeddings \(5\)"):
        model.save(tmp_path / "m.pt", Vocabulary(["a"]))
    with pytest.raises(TypeError, match=r"SetEncoder.save: `vocabulary` must be a Vocabulary or None, got list\."):
        model.save(tmp_path / "m.pt", ["a", "b", "c"])  # type: ignore[arg-type]
    assert not (tmp_path / "m.pt").exists()
    file = model.save(tmp_path / "m.pt", Vocabulary(["a", "b", "c"]))
    with pytest.raises(ValueError, match=r"`vocabulary` must be equal to the vocabulary saved in"):
        SetEncoder.load(file, vocabulary=Vocabulary(["x", "y", "z"]))


def test_load_rejects_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"SetEncoder.load: the file .*nothing.pt' does not exist\."):
        SetEncoder.load(tmp_path / "nothing.pt")
    good = SetEncoder(5, 4).save(tmp_path / "good.pt", Vocabulary(["a", "b", "c"]))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(CorruptFileError, match=r"not a readable SetEncoder file \(truncated or corrupt\)"):
        SetEncoder.load(truncated)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(CorruptFileError, match=r"not a SetEncoder file \(written by SetEncoder.save\)"):
        SetEncoder.load(other)
    state = torch.load(good, weights_only=True)
    state["format_version"] = 7
    torch.save(state, other)
    with pytest.raises(CorruptFileError, match=r"SetEncoder format version 7 is not supported"):
        SetEncoder.load(other)
    state["format_version"] = 1
    state["state_dict"].pop("query")
    torch.save(state, other)
    with pytest.raises(CorruptFileError, match=r"corrupt SetEncoder file"):
        SetEncoder.load(other)
