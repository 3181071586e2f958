from __future__ import annotations

import pytest
import torch

from dmlkit.distances import CosineSimilarity, LpDistance
from dmlkit.losses import LOSSES, TripletMarginLoss
from dmlkit.miners import MINERS, TripletMarginMiner
from dmlkit.training.components import OPTIMIZERS, accepted_params, build_component, check_component


def test_accepted_params_follow_kwargs_to_the_base_class() -> None:
    params = accepted_params(TripletMarginLoss)
    assert params[:4] == ["margin", "swap", "smooth_loss", "triplets_per_anchor"]
    assert {"distance", "reducer", "embedding_regularizer", "embedding_reg_weight"} <= set(params)
    assert "generator" not in params and "kwargs" not in params
    assert accepted_params(torch.optim.SGD)[:2] == ["lr", "momentum"]
    assert "params" not in accepted_params(torch.optim.Adam)


def test_build_component_with_nested_distance() -> None:
    loss = build_component(LOSSES, "triplet_margin", {"margin": 0.3, "distance": {"name": "lp", "p": 1}}, "loss")
    assert isinstance(loss, TripletMarginLoss) and loss.margin == 0.3
    assert isinstance(loss.distance, LpDistance) and loss.distance.p == 1
    miner = build_component(MINERS, "triplet_margin", {"type_of_triplets": "hard", "distance": "cosine"}, "miner")
    assert isinstance(miner, TripletMarginMiner) and miner.type_of_triplets == "hard"
    assert isinstance(miner.distance, CosineSimilarity)


def test_build_optimizer_with_parameters() -> None:
    weight = torch.nn.Parameter(torch.ones(2))
    optimizer = build_component(OPTIMIZERS, "sgd", {"lr": 0.5}, "optimizer", params=[weight])
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.param_groups[0]["lr"] == 0.5


def test_errors_name_the_config_key() -> None:
    with pytest.raises(KeyError, match=r"Unknown config key 'loss\.swapp'\. Did you mean 'loss\.swap'\?"):
        check_component(LOSSES, "triplet_margin", {"swapp": True}, "loss")
    with pytest.raises(KeyError, match=r"Config key 'loss\.distance\.name': Unknown distance 'l2'"):
        check_component(LOSSES, "triplet_margin", {"distance": "l2"}, "loss")
    with pytest.raises(TypeError, match=r"`loss\.distance` must be a registry key or a"):
        check_component(LOSSES, "triplet_margin", {"distance": 3}, "loss")
    # Values are checked by the class itself, with its own message.
    with pytest.raises(ValueError, match=r"TripletMarginMiner: `type_of_triplets` must be one of"):
        build_component(MINERS, "triplet_margin", {"type_of_triplets": "semi-hard"}, "miner")
