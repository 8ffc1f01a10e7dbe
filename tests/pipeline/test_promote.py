import json

import pytest

from pipeline.config import PromoteParams, load_params
from pipeline.errors import ConfigError
from pipeline.promote import decide

PP = PromoteParams(metric="roc_auc", margin=0.01, guards={"sensitivity": 0.05}, floors={"roc_auc": 0.7})


def test_first_model_needs_the_floors():
    assert decide({"roc_auc": 0.8, "sensitivity": 0.5}, None, PP) == (
        True,
        ["first model: clears the floors (roc_auc 0.800 >= 0.7)"],
    )  # readable, not a dict repr
    assert decide({"ece": 0.02}, None, PromoteParams(floors={"ece": 0.05})) == (
        True,
        ["first model: clears the floors (ece 0.020 <= 0.05)"],
    )
    unset = decide({"roc_auc": 0.5}, None, PromoteParams(floors={}))
    assert unset[1] == ["first model: no floors set (promote.floors)"]
    ok, reasons = decide({"roc_auc": 0.65, "sensitivity": 0.5}, None, PP)
    assert not ok
    assert "roc_auc 0.650 misses the floor 0.7" in reasons[0]


def test_better_by_margin_with_guards():
    champ = {"roc_auc": 0.80, "sensitivity": 0.70}
    assert decide({"roc_auc": 0.82, "sensitivity": 0.68}, champ, PP)[0]
    assert not decide({"roc_auc": 0.805, "sensitivity": 0.70}, champ, PP)[0]  # under the margin
    ok, reasons = decide({"roc_auc": 0.90, "sensitivity": 0.60}, champ, PP)
    assert not ok
    assert "guard sensitivity worse by 0.1000 > tolerance 0.05" in reasons


def test_a_tie_does_not_beat_the_champion():
    champ = {"roc_auc": 0.8, "sensitivity": 0.7}
    assert not decide(dict(champ), champ, PromoteParams(margin=0.0, guards={}, floors={}))[0]


def test_lower_is_better_metrics_are_gated_the_right_way_round():
    pp = PromoteParams(metric="log_loss", guards={"ece": 0.01}, floors={"log_loss": 1.0})
    champ = {"log_loss": 0.50, "ece": 0.05}
    assert decide({"log_loss": 0.40, "ece": 0.05}, champ, pp)[0]
    assert not decide({"log_loss": 0.60, "ece": 0.05}, champ, pp)[0]
    assert not decide({"log_loss": 0.40, "ece": 0.08}, champ, pp)[0]  # calibration guard
    assert decide({"log_loss": 0.9, "ece": 0.1}, None, pp)[0]
    assert not decide({"log_loss": 1.2, "ece": 0}, None, pp)[0]


@pytest.mark.parametrize(
    "key,value", [("promote.metric", "auc"), ("promote.guards", "{sens: 0.1}"), ("promote.floors", "{roc: 0.5}")]
)
def test_unknown_gate_metrics_are_refused_before_any_work(tmp_path, key, value):
    (tmp_path / "params.yaml").write_text("{}\n")
    with pytest.raises(ConfigError, match="unknown metric"):
        load_params(tmp_path / "params.yaml", {key: value})


def _registry(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path}/m.db"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("m")
    for _ in range(3):
        client.create_model_version("m", "file:///nowhere", tags={"medpipe.promotion": "challenger"})
    return client


def test_an_interrupted_alias_change_is_finished_and_tags_follow_aliases(tmp_path):
    from pipeline.promote import JOURNAL, aliases_of, apply_plan, recover

    client = _registry(tmp_path)
    apply_plan(client, "m", {"set": {"champion": 1}, "delete": [], "tags": {}})
    assert aliases_of(client, "m") == {"champion": 1}
    assert JOURNAL not in client.get_registered_model("m").tags
    # what a process killed after its first alias write leaves: the journal and half the change
    plan = {"set": {"previous": 1, "champion": 3}, "delete": [], "tags": {"3": {"medpipe.promotion": "promoted"}}}
    client.set_registered_model_tag("m", JOURNAL, json.dumps(plan))
    client.set_registered_model_alias("m", "previous", "1")
    said = []
    assert recover(client, "m", say=said.append)
    assert said
    assert aliases_of(client, "m") == {"champion": 3, "previous": 1}
    tags = {v: client.get_model_version("m", str(v)).tags for v in (1, 2, 3)}
    assert (tags[1]["medpipe.aliases"], tags[3]["medpipe.aliases"]) == ("previous", "champion")
    assert tags[3]["medpipe.promotion"] == "promoted"
    assert not recover(client, "m")
