from __future__ import annotations

import json

import pytest

from dmlkit.training import FORMAT_VERSION, ComponentConfig, TrainConfig, parse_override, parse_value


def test_defaults_are_the_demo() -> None:
    config = TrainConfig()
    assert config.data.name == "digits"
    assert config.data.train_classes == [0, 1, 2, 3, 4] and config.data.test_classes == [5, 6, 7, 8, 9]
    assert config.loss.name == "triplet_margin" and config.miner is not None
    assert config.miner.name == "triplet_margin" and config.miner.params["type_of_triplets"] == "semihard"
    assert config.sampler.batch_size % config.sampler.m == 0
    assert config.sampler.batch_size <= config.sampler.m * len(config.data.train_classes)
    assert config.device == "cpu" and config.out_dir == "runs"
    assert config.instance.weight > 0 and config.instance.temperature > 0 and config.instance.noise > 0
    config.validate()


def test_defaults_are_not_shared_between_instances() -> None:
    a, b = TrainConfig(), TrainConfig()
    a.loss.params["margin"] = 0.5
    a.data.train_classes.append(9)
    assert b.loss.params["margin"] == TrainConfig().loss.params["margin"]
    assert b.data.train_classes == [0, 1, 2, 3, 4]


def test_round_trip_through_dict_and_json() -> None:
    config = TrainConfig().apply_overrides(
        ["loss.margin=0.3", "loss.distance.p=1", "miner=null", "optimizer.name=sgd", "optimizer.lr=0.05", "seed=7"]
    )
    data = config.to_dict()
    assert data["format_version"] == FORMAT_VERSION == 1
    assert data["loss"] == {"name": "triplet_margin", "margin": 0.3, "distance": {"name": "lp", "p": 1}}
    assert data["miner"] is None and data["optimizer"] == {"name": "sgd", "lr": 0.05}
    assert TrainConfig.from_dict(data) == config
    assert TrainConfig.from_dict(json.loads(json.dumps(data))) == config
    assert TrainConfig.from_dict(TrainConfig().to_dict()) == TrainConfig()


def test_from_dict_keeps_defaults_for_missing_fields_and_replaces_components() -> None:
    config = TrainConfig.from_dict({"epochs": 3, "sampler": {"batch_size": 48}, "loss": {"name": "triplet_margin"}})
    assert config.epochs == 3 and config.sampler.batch_size == 48 and config.sampler.m == TrainConfig().sampler.m
    assert config.model == TrainConfig().model
    # A component is written in full: arguments left out take the class's defaults, not the demo's.
    assert config.loss == ComponentConfig("triplet_margin", {})


def test_from_dict_rejects_other_format_versions_and_non_mappings() -> None:
    with pytest.raises(ValueError, match=r"^TrainConfig: `format_version` must be 1, got 2\.$"):
        TrainConfig.from_dict({"format_version": 2})
    with pytest.raises(TypeError, match=r"`config` must be a mapping"):
        TrainConfig.from_dict([1, 2])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^TrainConfig: `sampler` must be a mapping \(a JSON object\), got 8\.$"):
        TrainConfig.from_dict({"sampler": 8})
    with pytest.raises(TypeError, match=r"`loss` must be a registry key or a \{\"name\": \.\.\., \.\.\.\} dictionary"):
        TrainConfig.from_dict({"loss": {"margin": 0.2}})


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("3", 3),
        ("0.25", 0.25),
        ("1e-3", 0.001),
        ("true", True),
        ("False", False),
        ("null", None),
        ("None", None),
        ("[0, 1, 2]", [0, 1, 2]),
        ("(0, 1)", [0, 1]),
        ('{"name": "lp", "p": 1}', {"name": "lp", "p": 1}),
        ("semihard", "semihard"),
        ("'quoted'", "quoted"),
        ("runs/my run", "runs/my run"),
    ],
)
def test_parse_value(text: str, value: object) -> None:
    assert parse_value(text) == value
    assert type(parse_value(text)) is type(value)


def test_parse_override_splits_at_the_first_equals_sign() -> None:
    assert parse_override("run_name=a=b") == ("run_name", "a=b")
    assert parse_override(" epochs = 4 ") == ("epochs", 4)
    with pytest.raises(ValueError, match=r"^TrainConfig: `override` must be of the form key=value .*, got 'epochs'\.$"):
        parse_override("epochs")
    with pytest.raises(ValueError, match=r"`override` must be of the form key=value"):
        parse_override("=3")


def test_overrides_set_typed_values() -> None:
    config = TrainConfig().apply_overrides(
        [
            "epochs=2",
            "model.hidden=[64, 32]",
            "model.normalize=false",
            "data.train_classes=[0, 1, 2]",
            "data.test_classes=[7, 8]",
            "sampler.m=4",
            "sampler.batch_size=12",
            "miner.type_of_triplets=hard",
            "iterations_per_epoch=3",
            "run_name=demo",
        ]
    )
    assert config.epochs == 2 and config.model.hidden == [64, 32] and config.model.normalize is False
    assert config.data.train_classes == [0, 1, 2] and config.data.test_classes == [7, 8]
    assert (config.sampler.m, config.sampler.batch_size, config.iterations_per_epoch) == (4, 12, 3)
    assert config.miner is not None and config.miner.params["type_of_triplets"] == "hard"
    assert config.run_name == "demo"


def test_overrides_do_not_modify_the_original() -> None:
    base = TrainConfig()
    base.apply_overrides(["loss.margin=0.9", "data.train_classes=[4, 3, 2, 1, 0]", "miner=null"])
    assert base == TrainConfig()


def test_unknown_key_suggests_the_close_match() -> None:
    with pytest.raises(KeyError, match=r"^\"Unknown config key 'loss\.margn'\. Did you mean 'loss\.margin'\? Known: "):
        TrainConfig().apply_overrides(["loss.margn=0.2"])
    with pytest.raises(KeyError, match=r"Unknown config key 'los\.margin'\. Did you mean 'loss\.margin'\?"):
        TrainConfig().apply_overrides(["los.margin=0.2"])
    with pytest.raises(KeyError, match=r"Unknown config key 'sampler\.mm'\. Did you mean 'sampler\.m'\?"):
        TrainConfig().apply_overrides(["sampler.mm=4"])
    with pytest.raises(KeyError, match=r"Unknown config key 'loss\.distance\.pp'\. Did you mean 'loss\.distance\.p'\?"):
        TrainConfig().apply_overrides(["loss.distance.pp=1"])
    with pytest.raises(KeyError, match=r"Unknown config key 'zzz'\. Known: data, model, loss"):
        TrainConfig().apply_overrides(["zzz=1"])
    with pytest.raises(KeyError, match=r"Unknown config key 'seed\.x': `seed` is a value, not a section\."):
        TrainConfig().apply_overrides(["seed.x=1"])


def test_unknown_keys_in_files_are_rejected_the_same_way() -> None:
    expected = r"Unknown config key 'model\.embeding_size'\. Did you mean 'model\.embedding_size'\?"
    with pytest.raises(KeyError, match=expected):
        TrainConfig.from_dict({"model": {"embeding_size": 8}})
    with pytest.raises(KeyError, match=r"Unknown config key 'loss\.margn'\. Did you mean 'loss\.margin'\?"):
        TrainConfig.from_dict({"loss": {"name": "triplet_margin", "margn": 0.1}})


def test_unknown_component_names_suggest_registered_ones() -> None:
    expected = r"Config key 'loss\.name': Unknown loss 'triplet_margn'\. Did you mean 'triplet_margin'[,?]"
    with pytest.raises(KeyError, match=expected):
        TrainConfig().apply_overrides(["loss.name=triplet_margn"])
    with pytest.raises(KeyError, match=r"Config key 'optimizer\.name': Unknown optimizer 'adan'\. Did you mean 'adam'"):
        TrainConfig().apply_overrides(["optimizer.name=adan"])
    with pytest.raises(KeyError, match=r"Config key 'data\.name': Unknown dataset 'digit'\. Did you mean 'digits'\?"):
        TrainConfig().apply_overrides(["data.name=digit"])


def test_switching_component_class_drops_the_old_arguments() -> None:
    config = TrainConfig().apply_overrides(["optimizer.name=sgd", "optimizer.momentum=0.9"])
    assert config.optimizer == ComponentConfig("sgd", {"momentum": 0.9})
    same = TrainConfig().apply_overrides(["loss.name=triplet_margin"])
    assert same.loss == TrainConfig().loss
    with pytest.raises(KeyError, match=r"Unknown config key 'optimizer\.momentum'"):
        TrainConfig().apply_overrides(["optimizer.momentum=0.9"])  # Adam has no momentum argument


def test_disabling_and_re_enabling_the_miner() -> None:
    config = TrainConfig().apply_overrides(["miner=null"])
    assert config.miner is None
    with pytest.raises(KeyError, match=r"`miner` is null; set 'miner\.name' first\."):
        config.apply_overrides(["miner.margin=0.1"])
    again = config.apply_overrides(["miner.name=triplet_margin", "miner.margin=0.3"])
    assert again.miner == ComponentConfig("triplet_margin", {"margin": 0.3})
    with pytest.raises(TypeError, match=r"`loss` must be a loss name"):
        TrainConfig().apply_overrides(["loss=null"])


def test_whole_component_assignment() -> None:
    config = TrainConfig().apply_overrides(['loss={"name": "triplet_margin", "swap": true}', "loss.distance=cosine"])
    assert config.loss == ComponentConfig("triplet_margin", {"swap": True, "distance": "cosine"})
    nested = config.apply_overrides(["loss.distance.normalize_embeddings=false"])
    assert nested.loss.params["distance"] == {"name": "cosine", "normalize_embeddings": False}


def test_value_type_errors() -> None:
    with pytest.raises(TypeError, match=r"^TrainConfig: `epochs` must be an integer, got 'abc'\.$"):
        TrainConfig().apply_overrides(["epochs=abc"])
    with pytest.raises(TypeError, match=r"^TrainConfig: `epochs` must be an integer, got 2\.5\.$"):
        TrainConfig().apply_overrides(["epochs=2.5"])
    with pytest.raises(TypeError, match=r"^TrainConfig: `model\.normalize` must be true or false, got 1\.$"):
        TrainConfig().apply_overrides(["model.normalize=1"])
    with pytest.raises(TypeError, match=r"^TrainConfig: `model\.hidden` must be a list of int, got 64\.$"):
        TrainConfig().apply_overrides(["model.hidden=64"])
    with pytest.raises(TypeError, match=r"^TrainConfig: `device` must be a string, got 0\.$"):
        TrainConfig().apply_overrides(["device=0"])


def test_value_range_errors() -> None:
    with pytest.raises(
        ValueError, match=r"^TrainConfig: `sampler\.batch_size` must be a multiple of `sampler\.m` \(16\), got 70\.$"
    ):
        TrainConfig().apply_overrides(["sampler.batch_size=70"])
    with pytest.raises(
        ValueError,
        match=r"^TrainConfig: `sampler\.batch_size` must be <= `sampler\.m` \* number of training classes \(80\), "
        r"got 96\.$",
    ):
        TrainConfig().apply_overrides(["sampler.batch_size=96"])
    with pytest.raises(ValueError, match=r"^TrainConfig: `epochs` must be an integer >= 1, got 0\.$"):
        TrainConfig().apply_overrides(["epochs=0"])
    expected = r"`data\.test_classes` must be disjoint from `data\.train_classes` \(shared: \[4\]\)"
    with pytest.raises(ValueError, match=expected):
        TrainConfig().apply_overrides(["data.test_classes=[4, 5]"])
    with pytest.raises(ValueError, match=r"`data\.train_classes` must be a non-empty list of classes, got \[\]\."):
        TrainConfig().apply_overrides(["data.train_classes=[]"])


@pytest.mark.parametrize(
    ("override", "rule"),
    [
        ("instance.weight=-1", r"`instance\.weight` must be a number >= 0\.0, got -1\.0\."),
        ("instance.temperature=0", r"`instance\.temperature` must be a number > 0\.0, got 0\.0\."),
        ("instance.noise=-0.1", r"`instance\.noise` must be a number >= 0\.0, got -0\.1\."),
    ],
)
def test_instance_range_errors(override: str, rule: str) -> None:
    with pytest.raises(ValueError, match=rf"^TrainConfig: {rule}$"):
        TrainConfig().apply_overrides([override])


def test_instance_values_are_numbers_and_ints_become_floats() -> None:
    config = TrainConfig().apply_overrides(["instance.weight=0", "instance.noise=1"])
    assert config.instance.weight == 0.0 and isinstance(config.instance.weight, float)
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(TypeError, match=r"^TrainConfig: `instance\.weight` must be a number, got 'high'\.$"):
        TrainConfig().apply_overrides(["instance.weight=high"])
