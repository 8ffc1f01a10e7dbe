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
    # `auto` (the data's classes, as in params.yaml) stays a word, not a one-class list
    assert load_params(tmp_path / "params.yaml", {"validate.labels": "auto"}).validate_.labels == "auto"


def test_a_step_reads_only_the_params_it_declares():
    from pipeline.config import UndeclaredParams, step_params

    params = Params()
    seen = step_params(params, ("train", "preprocess.normalize", "validate.labels"), "train")
    assert seen.train == params.train
    assert seen.preprocess.normalize == params.preprocess.normalize
    with pytest.raises(UndeclaredParams, match="step 'train' reads params 'promote'"):
        _ = seen.promote
    with pytest.raises(UndeclaredParams, match=r"reads params preprocess\.size"):
        _ = seen.preprocess.size


def test_a_section_property_is_checked_against_the_fields_it_reads():
    from pipeline.config import UndeclaredParams, step_params

    params = parse_params({"validate": {"labels": ["a", "b"]}})
    assert step_params(params, ("validate.labels",), "preprocess").validate_.classes == ["a", "b"]
    with pytest.raises(UndeclaredParams, match=r"validate\.labels"):
        _ = step_params(params, ("validate.near_duplicates",), "evaluate").validate_.classes


def test_the_view_keeps_the_whole_params_as_lineage():
    from pipeline.config import step_params

    params = parse_params({"promote": {"margin": 0.5}})
    seen = step_params(params, ("train",), "train")
    assert seen.md5() == params.md5()  # hashed and logged whole by the training run
    assert seen.model_dump(by_alias=True) == params.model_dump(by_alias=True)


def test_the_view_survives_pickling_for_a_worker_process():
    import pickle

    from pipeline.config import UndeclaredParams, step_params

    seen = pickle.loads(pickle.dumps(step_params(Params(), ("preprocess.size", "balance"), "preprocess")))
    assert seen.preprocess.size == Params().preprocess.size
    assert seen.balance == Params().balance
    with pytest.raises(UndeclaredParams):
        _ = seen.preprocess.fit
    section = pickle.loads(pickle.dumps(seen.preprocess))
    with pytest.raises(UndeclaredParams):
        _ = section.fit
