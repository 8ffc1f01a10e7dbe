"""pipeline.register: what a new version's description says (the version itself: tests/flows, tests/faults)."""

from pipeline.config import Params
from pipeline.register import describe


def test_the_description_carries_the_test_metrics_and_the_input_recipe():
    params = Params.model_validate({"preprocess": {"size": 48, "color": "rgb"}})
    tags = {
        "medpipe.test_accuracy": "0.9100",
        "medpipe.test_roc_auc": "0.9700",
        "medpipe.data_md5": "abc.dir",
        "medpipe.git_commit": "0123456789abcdef",
    }
    text = describe(params, ["normal", "nodule"], tags)
    assert "classifying normal, nodule" in text
    assert "rgb, 48x48" in text
    assert "Test: accuracy 0.9100, roc_auc 0.9700." in text
    assert "Data md5 abc.dir, git 0123456789ab." in text


def test_without_test_metrics_the_description_says_so():
    assert "Test: n/a." in describe(Params(), ["a", "b"], {})
