from pathlib import Path

import numpy as np
import pytest

from pipeline.config import ModelParams, PreprocessParams
from pipeline.label import entropy, image_files, suggest
from pipeline.model import build_model


def test_entropy():
    assert entropy(np.array([[1.0, 0.0]]))[0] == pytest.approx(0.0, abs=1e-9)
    assert entropy(np.array([[0.5, 0.5]]))[0] == pytest.approx(np.log(2))


def test_suggestions_are_a_review_queue(tmp_path, tiny_data):
    files = image_files(tiny_data)[:6]
    (tmp_path / "broken.png").write_text("x")
    model = build_model(ModelParams(), (32, 32, 1), 3)
    table = suggest(
        model,
        ["normal", "nodule", "effusion"],
        [*files, tmp_path / "broken.png"],
        tmp_path.parent,
        tmp_path / "cams",
        PreprocessParams(size=64),
    )
    assert table["error"].iloc[0] == "not a decodable image (corrupt, truncated or not an image file)"
    readable = table.iloc[1:]
    assert readable["entropy"].is_monotonic_decreasing
    assert set(readable["suggested_label"]) <= {"normal", "nodule", "effusion"}
    assert all((tmp_path / "cams").joinpath(p.split("/")[-1]).exists() for p in readable["gradcam"])


def test_the_ranking_is_grad_cams_prediction_and_only_the_head_of_the_queue_gets_thumbnails(tmp_path, tiny_data):
    from pipeline.explain import grad_cam
    from pipeline.preprocess import load_image

    files = image_files(tiny_data)[:70]  # more than one forward batch
    model = build_model(ModelParams(), (32, 32, 1), 3)
    classes = ["normal", "nodule", "effusion"]
    table = suggest(model, classes, files, tiny_data, tmp_path / "cams", PreprocessParams(size=32), top=3)
    assert table["gradcam"].ne("").tolist() == [True] * 3 + [False] * (len(files) - 3)
    assert sorted(p.name for p in (tmp_path / "cams").iterdir()) == sorted(Path(p).name for p in table["gradcam"][:3])
    for row in table.itertuples():  # batched passes rank as the per-image Grad-CAM pass would
        proba = grad_cam(model, load_image(tiny_data / row.path, PreprocessParams(size=32))).probabilities
        assert row.suggested_label == classes[int(proba.argmax())]
        assert row.entropy == pytest.approx(float(entropy(proba[None])[0]), abs=1e-5)


def test_review_order_spreads_near_copies_over_rounds():
    from pipeline.label import review_order

    uncertainty = np.array([0.9, 0.8, 0.7, 0.1, np.nan, 0.5])
    group = np.array([0, 0, 0, 3, 4, 5])  # rows 0-2: near copies of one hard case
    assert review_order(uncertainty, group).tolist() == [4, 0, 5, 3, 1, 2]  # unreadable, round 1, then copies
    assert review_order(uncertainty, np.arange(6)).tolist() == [4, 0, 1, 2, 5, 3]  # no copies: by entropy


def test_suggestions_put_one_of_each_group_of_copies_first(tmp_path, tiny_data):
    import shutil

    from pipeline.config import NearDuplicateParams

    files = image_files(tiny_data)[:5]
    for k in range(3):  # three copies of the first image
        shutil.copy(files[0], tmp_path / f"copy{k}.png")
    pool = [*files, *(tmp_path / f"copy{k}.png" for k in range(3))]
    model = build_model(ModelParams(), (32, 32, 1), 3)
    table = suggest(
        model,
        ["normal", "nodule", "effusion"],
        pool,
        tmp_path.parent,
        None,
        PreprocessParams(size=64),
        NearDuplicateParams(),
    )
    copies = table["copies"] != ""
    assert copies.sum() == 4 and table.loc[copies, "copies"].nunique() == 1
    groups = table["copies"].where(copies, table["path"])
    first = groups.drop_duplicates().index
    assert first.tolist() == list(range(len(first)))  # one of each group before any second copy
    assert table.loc[first, "entropy"].is_monotonic_decreasing
    assert (table["label"] == "").all()


def _pool(root, with_manifest=True):
    """A data root with 4 labelled images and 3 unlabelled ones (manifest rows without a label, or unlabelled/)."""
    import cv2
    import pandas as pd

    rows = []
    for k in range(7):
        label = ("normal", "nodule")[k % 2] if k < 4 else ""
        rel = f"{label or 'unlabelled'}/img{k}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / rel), np.full((8, 8), 30 * k, np.uint8))
        rows.append((rel, label, f"P{k}"))
    if with_manifest:
        pd.DataFrame(rows, columns=["path", "label", "patient_id"]).to_csv(root / "manifest.csv", index=False)
    return root


def _reviewed(path, rows, columns=("path", "label")):
    import pandas as pd

    pd.DataFrame(rows, columns=list(columns)).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("with_manifest", [True, False])
def test_import_labels_merges_with_provenance(tmp_path, with_manifest):
    import pandas as pd

    from pipeline.data import discover
    from pipeline.label import import_labels

    root = _pool(tmp_path / "data", with_manifest)
    assert len(discover(root).unlabelled) == 3 and len(discover(root).manifest) == 4
    assert discover(root).classes == ["nodule", "normal"]  # unlabelled is not a class
    reviewed = _reviewed(
        tmp_path / "queue.csv",
        [("unlabelled/img4.png", "nodule", ""), ("unlabelled/img5.png", "", ""), ("nodule/img1.png", "nodule", "dr b")],
        ("path", "label", "reviewed_by"),
    )
    merged = import_labels(reviewed, root, ["normal", "nodule"], "dr a", "2026-12-03T10:00:00+00:00")
    assert (merged.labelled, merged.confirmed) == (1, 1)
    manifest = pd.read_csv(root / "manifest.csv", dtype=str, keep_default_na=False).set_index("path")
    assert manifest.loc["unlabelled/img4.png", ["label", "label_source", "reviewed_by", "reviewed_at"]].tolist() == [
        "nodule",
        "expert",
        "dr a",
        "2026-12-03T10:00:00+00:00",
    ]
    assert manifest.loc["nodule/img1.png", ["label_source", "reviewed_by"]].tolist() == ["expert", "dr b"]
    assert manifest.loc["normal/img0.png", "label_source"] == ("data" if with_manifest else "folder")
    assert manifest.loc["unlabelled/img5.png", "label"] == ""  # not reviewed yet: still unlabelled
    found = discover(root)
    assert (len(found.manifest), len(found.unlabelled)) == (5, 2)


@pytest.mark.parametrize(
    "rows, reason",
    [
        ([("unlabelled/img4.png", "pneumonia")], "line 3: unlabelled/img4.png: unknown label 'pneumonia'"),
        ([("../outside.png", "normal")], "line 3: ../outside.png: path outside the data root"),
        ([("/etc/passwd", "normal")], "line 3: /etc/passwd: path outside the data root"),
        ([("unlabelled/img6.png", "nodule")], "line 3: unlabelled/img6.png: listed twice"),
        ([("unlabelled/img9.png", "normal")], "line 3: unlabelled/img9.png: not an image of this data set"),
        ([("normal/img0.png", "nodule")], "line 3: normal/img0.png: already labelled 'normal'"),
    ],
)
def test_bad_reviewed_rows_change_nothing(tmp_path, rows, reason):
    from pipeline.errors import DataError
    from pipeline.label import import_labels

    root = _pool(tmp_path / "data")
    before = (root / "manifest.csv").read_bytes()
    reviewed = _reviewed(tmp_path / "queue.csv", [("unlabelled/img6.png", "normal"), *rows])  # line 2 is valid
    with pytest.raises(DataError) as err:
        import_labels(reviewed, root, ["normal", "nodule"], "dr a", "now")
    assert str(err.value).startswith(f"{reviewed}: {reason}")
    assert "\n" not in str(err.value)
    assert (root / "manifest.csv").read_bytes() == before
    assert sorted(p.name for p in root.iterdir()) == ["manifest.csv", "nodule", "normal", "unlabelled"]  # no temp file


def test_errors_name_the_csv_line_also_after_rows_not_yet_reviewed(tmp_path):
    from pipeline.errors import DataError
    from pipeline.label import import_labels

    root = _pool(tmp_path / "data")
    reviewed = _reviewed(
        tmp_path / "queue.csv", [("unlabelled/img4.png", ""), ("unlabelled/img5.png", ""), ("unlabelled/img6.png", "x")]
    )
    with pytest.raises(DataError, match="line 4: unlabelled/img6.png: unknown label 'x'"):
        import_labels(reviewed, root, ["normal", "nodule"], "dr a", "now")


def test_a_reviewed_csv_without_its_columns_is_refused(tmp_path):
    from pipeline.errors import DataError
    from pipeline.label import import_labels

    root = _pool(tmp_path / "data")
    reviewed = _reviewed(tmp_path / "queue.csv", [("unlabelled/img4.png", "normal")], ("path", "suggested_label"))
    with pytest.raises(DataError, match="missing column\\(s\\) label"):
        import_labels(reviewed, root, ["normal", "nodule"], "dr a", "now")


def test_the_unlabelled_pool_stays_inside_the_data_root(tmp_path):
    from pipeline.errors import DataError
    from pipeline.label import unlabelled_files

    root = _pool(tmp_path / "data")
    assert [p.name for p in unlabelled_files(root)] == ["img4.png", "img5.png", "img6.png"]
    with open(root / "manifest.csv", "a") as f:
        f.write("../secret.png,,P9\n")
    with pytest.raises(DataError, match="manifest.csv: ../secret.png: path outside the data root"):
        unlabelled_files(root)
