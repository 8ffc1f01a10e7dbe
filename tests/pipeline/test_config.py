from pathlib import Path

import pytest

from pipeline.config import Params, Workspace, load_params, parse_params
from pipeline.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_repo_params_file_is_valid_and_matches_defaults():
    params = load_params(REPO / "params.yaml")
    # but for the colour: `auto` in the project's file; the library default stays explicit (gray) for
    # programs that build Params themselves and decide nothing from data
    assert params.preprocess.color == "auto"
    assert params.model_copy(update={"preprocess": params.preprocess.model_copy(update={"color": "gray"})}) == Params()


def test_unknown_key_is_rejected_by_name():
    with pytest.raises(ConfigError, match=r"unknown key 'train.epoch'"):
        parse_params({"train": {"epoch": 3}})
    with pytest.raises(ConfigError, match=r"unknown key 'trian'"):
        parse_params({"trian": {}})


def test_invalid_value_names_key():
    with pytest.raises(ConfigError, match=r"invalid value for 'balance.strategy'"):
        parse_params({"balance": {"strategy": "smote"}})
    with pytest.raises(ConfigError, match="sum to 1"):
        parse_params({"preprocess": {"split": {"train": 0.9, "val": 0.2, "test": 0.1}}})


def test_overrides_apply_dotted_keys_with_yaml_types(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text())
    params = load_params(path, {"train.epochs": "3", "balance.strategy": "class_weight"})
    assert params.train.epochs == 3
    assert params.balance.strategy == "class_weight"
    assert params.md5() != Params().md5()


def test_missing_and_broken_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(tmp_path / "bad.yaml")


def test_workspace_resolves_against_params_folder(tmp_path):
    ws = Workspace.create(Params(), tmp_path / "params.yaml")
    assert ws.data_root == (tmp_path / "data").resolve()
    assert ws.out == tmp_path.resolve() / "outputs"
    assert Workspace.create(Params(), tmp_path / "params.yaml", tmp_path / "x").data_root == (tmp_path / "x")


@pytest.mark.parametrize(
    ("overrides", "blamed", "reason"),
    [
        ({"train.epochs": "abc"}, "--set train.epochs", "invalid value for 'train.epochs'"),
        ({"train.epochz": "3"}, "--set train.epochz", "unknown key 'train.epochz'"),
        ({"train": "3", "train.epochs": "2"}, "--set train.epochs", "'train' is a value"),
        ({"train.epochs.x": "1"}, "--set train.epochs.x", "'train.epochs' is a value"),
        ({"train.epochs": "[1"}, "--set train.epochs", "not valid YAML"),
        ({".x": "1"}, "--set .x", "empty part"),
        ({"train..epochs": "1"}, "--set train..epochs", "empty part"),
        ({"preprocess.split.train": "0.9"}, "--set preprocess.split.train", "sum to 1"),
    ],
)
def test_bad_overrides_blame_the_set_flag(tmp_path, overrides, blamed, reason):
    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text())
    with pytest.raises(ConfigError, match=reason) as caught:
        load_params(path, overrides)
    assert caught.value.file == blamed
    assert "\n" not in str(caught.value)


def test_errors_outside_the_overrides_still_blame_the_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  epochs: abc\n")
    with pytest.raises(ConfigError, match="invalid value for 'train.epochs'") as caught:
        load_params(path, {"train.batch_size": "8", "evaluate": "{}"})
    assert caught.value.file == str(path)


def test_override_into_an_empty_section(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n")
    assert load_params(path, {"train.epochs": "4"}).train.epochs == 4


def test_labels_accept_a_comma_list_on_the_command_line(tmp_path):
    from pipeline.config import load_params

    (tmp_path / "params.yaml").write_text("{}\n")
    assert load_params(tmp_path / "params.yaml", {"validate.labels": "benign, malignant"}).validate_.labels == [
        "benign",
        "malignant",
    ]
