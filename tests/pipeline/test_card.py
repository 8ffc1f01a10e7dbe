"""pipeline.card: a model card per version with the sections of Mitchell et al. (2019), in Chromium too."""

import cv2
import numpy as np
import pandas as pd
import pytest

from pipeline.card import CardFacts, card_markdown, counts_table, label_lines, limitations, start_lines
from pipeline.config import CardParams
from pipeline.htmldoc import markdown_html
from pipeline.metrics import subgroup_metrics
from pipeline.promote import Decision
from pipeline.validate import Check, ValidationReport
from tests.helpers import CHROMIUM, NO_CHROMIUM, chromium_images

SECTIONS = ("## Intended use", "## Out of scope", "## Data", "## Performance on the test split", "## Calibration",
            "## Subgroups (test)", "## Explanations (Grad-CAM)", "## Limitations", "## Promotion decision")  # fmt: skip


def _facts(figures: list[str]) -> CardFacts:
    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 12)
    proba = np.clip(np.stack([1 - y, y], axis=1) * 0.6 + rng.random((24, 2)) * 0.4, 0, None)
    proba /= proba.sum(axis=1, keepdims=True)
    sex = np.array(["F", "M", "M"] * 7 + ["X"] * 3)
    splits = pd.DataFrame(
        {"label": ["benign", "malignant"] * 30, "split": ["train"] * 30 + ["val"] * 6 + ["test"] * 24}
    )
    metrics = {f"{s}_{k}": 0.8 for s in ("val", "test") for k in
               ("accuracy", "balanced_accuracy", "roc_auc", "pr_auc", "sensitivity", "specificity", "ece", "brier",
                "log_loss")}  # fmt: skip
    metrics.update(test_roc_auc_ci_low=0.61, test_roc_auc_ci_high=0.93, test_balanced_accuracy_ci_low=0.6,
                   test_balanced_accuracy_ci_high=0.9, threshold=0.42, test_sensitivity_at_threshold=0.9,
                   test_specificity_at_threshold=0.7)  # fmt: skip
    metrics.update(
        {f"test_{k}_{c}": 0.8 for k in ("precision", "recall", "f1", "support") for c in ("benign", "malignant")}
    )
    decision = Decision(3, False, ["roc_auc 0.800 vs champion 0.850: no gain"], {"roc_auc": 0.8}, {"roc_auc": 0.85}, 2)
    report = ValidationReport(True, [Check("blank images", True), Check("colour kept", False, ["3 of 60"], "warning")],
                              60, {"benign": 30, "malignant": 30}, near_duplicates={"enabled": True, "n_groups": 2,
                              "n_cross_split": 1, "n_dropped": 0, "action": "warn"}, color="gray")  # fmt: skip
    return CardFacts("medpipe-classifier", 3, "abc123", "breast", "seed_cnn", 64, decision,
                     {"medpipe.data_md5": "d" * 32, "medpipe.git_commit": "f" * 40, "medpipe.git_dirty": "true"},
                     report, splits, metrics, subgroup_metrics(y, proba, {"sex": sex}), figures,
                     CardParams(limitations="Only one scanner.").model_dump())  # fmt: skip


def test_the_card_has_every_section_in_order():
    text = card_markdown(_facts([]))
    positions = [text.index(heading) for heading in SECTIONS[:5] + SECTIONS[5:6] + SECTIONS[7:]]
    assert positions == sorted(positions)


def test_the_subgroup_table_has_a_row_per_group_with_its_size():
    text = card_markdown(_facts([]))
    assert "| sex | F | 7 |" in text
    assert "| sex | M | 14 |" in text
    assert "| sex | X | 3 |" in text


def test_limitations_name_the_authors_words_small_groups_leaks_warnings_and_dirty_code():
    said = " ".join(limitations(_facts([])))
    assert said.startswith("Only one scanner.")
    assert "fewer than 10 test images, too few to judge: sex=F (7), sex=X (3)" in said
    assert "1 near-duplicate group(s) cross splits" in said
    assert "Validation warned: colour kept" in said
    assert "uncommitted code" in said


def test_the_decision_compares_with_the_champion_on_the_same_metrics():
    text = card_markdown(_facts([]))
    assert "| roc_auc | 0.800 | 0.850 |" in text
    assert "@challenger" in text


def test_counts_per_class_and_split_add_up():
    lines = counts_table(_facts([]).splits)
    assert lines[0] == "| class | train | val | test | all |"
    assert lines[-1] == "| **all** | 30 | 6 | 24 | 60 |"


def test_the_card_says_where_labels_came_from_and_what_became_of_unlabelled_images():
    report = ValidationReport(True, [], 60, {}, n_unlabelled=40, pool={"n": 40, "usable": 37, "excluded": {"blank": 3}})
    lineage = {"medpipe.label_sources": "data=50,expert=10", "medpipe.semi": "pseudo_label: 30 of 37 pool images"}
    assert label_lines(lineage, report) == [
        "- Labels by source (manifest `label_source`): data: 50, expert: 10.",
        "- Unlabelled images: 40, 37 usable, in no split; pseudo-labelling: 30 of 37 pool images.",
    ]
    assert label_lines({}, report) == ["- Unlabelled images: 40, 37 usable, in no split; not learnt from."]
    pretrained = {"medpipe.pretrain": "simclr: 97 images"}
    assert label_lines(pretrained, report)[-1] == (
        "- Unlabelled images: 40, 37 usable, in no split; seen without labels by the encoder's self-supervised "
        "pre-training."
    )
    assert label_lines({**lineage, **pretrained}, report)[-1] == (
        "- Unlabelled images: 40, 37 usable, in no split; pseudo-labelling: 30 of 37 pool images; seen without "
        "labels by the encoder's self-supervised pre-training."
    )
    assert label_lines({}, ValidationReport(True, [], 60, {})) == []
    assert "- Unlabelled images" not in card_markdown(_facts([]))


def test_the_card_says_what_the_model_started_from():
    pretrain = "simclr: 26 images, 2 epochs, temperature 0.2, loss 3.463 -> 3.100; k-NN val accuracy 0.400 -> 0.500"
    lineage = {"medpipe.pretrain": pretrain, "medpipe.init_weights": "encoder.npz sha256:ab12"}
    assert start_lines(lineage) == [
        f"- Encoder pre-trained on unlabelled views before supervised training: {pretrain}.",
        "- Started from `model.weights`: encoder.npz sha256:ab12.",
    ]
    assert start_lines({}) == []
    assert "pre-trained" not in card_markdown(_facts([]))


@pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
def test_the_card_renders_with_every_figure_in_chromium(tmp_path):
    from pipeline import plots

    (tmp_path / "figures" / "gradcam").mkdir(parents=True)
    y, proba = np.array([0, 1, 0, 1]), np.array([[0.9, 0.1], [0.3, 0.7], [0.4, 0.6], [0.2, 0.8]])
    plots.roc_pr_curves(y, proba, ["benign", "malignant"], tmp_path / "figures" / "roc_pr.png")
    plots.reliability(y, proba, 10, tmp_path / "figures" / "reliability.png")
    cv2.imwrite(str(tmp_path / "figures" / "gradcam" / "benign_correct_a.png"), np.full((32, 48, 3), 90, np.uint8))
    figures = ["figures/roc_pr.png", "figures/reliability.png", "figures/gradcam/benign_correct_a.png"]
    page = tmp_path / "model_card.html"
    page.write_text(markdown_html(card_markdown(_facts(figures)), tmp_path, "card"))
    assert chromium_images(page) == (3, 0)


def test_the_card_names_how_the_unlabelled_images_were_learnt_from():
    from pipeline.card import semi_words

    assert semi_words("pseudo_label: 4 of 10 pool images at >= 0.95 (round 1)") == (
        "pseudo-labelling: 4 of 10 pool images at >= 0.95 (round 1)."
    )
    tag = "consistency: 10 pool images (weak and strong views, threshold 0.95, mu 2, weight 1.0); 4 of 10 sure after"
    assert semi_words(tag) == "consistency training: " + tag.removeprefix("consistency: ") + "."
