from pipeline.config import PromoteParams
from pipeline.promote import decide

PP = PromoteParams(metric="roc_auc", margin=0.01, guards={"sensitivity": 0.05}, floors={"roc_auc": 0.7})


def test_first_model_needs_the_floors():
    assert decide({"roc_auc": 0.8, "sensitivity": 0.5}, None, PP)[0]
    ok, reasons = decide({"roc_auc": 0.65, "sensitivity": 0.5}, None, PP)
    assert not ok and "roc_auc 0.650 < floor 0.7" in reasons[0]


def test_better_by_margin_with_guards():
    champ = {"roc_auc": 0.80, "sensitivity": 0.70}
    assert decide({"roc_auc": 0.82, "sensitivity": 0.68}, champ, PP)[0]
    assert not decide({"roc_auc": 0.805, "sensitivity": 0.70}, champ, PP)[0]  # under the margin
    ok, reasons = decide({"roc_auc": 0.90, "sensitivity": 0.60}, champ, PP)
    assert not ok and "guard sensitivity drops 0.1000 > tolerance 0.05" in reasons


def test_a_tie_does_not_beat_the_champion():
    champ = {"roc_auc": 0.8, "sensitivity": 0.7}
    assert not decide(dict(champ), champ, PromoteParams(margin=0.0, guards={}, floors={}))[0]
