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
