"""Near-duplicate images: fingerprints, the pair index, and what validation and evaluation do with them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from pipeline.config import NearDuplicateParams, Params, Workspace, parse_params
from pipeline.errors import ConfigError
from pipeline.near_duplicates import (
    N_WINDOWS,
    PAIRINGS,
    close_pairs,
    combined_distance,
    find_groups,
    fingerprint,
    hamming,
    near_pairs,
    small_images,
    to_words,
    window_fingerprints,
    window_words,
)
from pipeline.scan import duplicate_pairs

LABELS = ["a", "b"]


def _texture(seed: int, size: int = 48) -> np.ndarray:
    """A distinct smooth gray image (uint8), one per seed."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(16, 16)).astype(np.float32)
    return np.clip(cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC), 0, 255).astype(np.uint8)


def _near_copy(image: np.ndarray) -> bytes:
    """A re-export: smaller, brighter, JPEG quality 70."""
    small = cv2.resize(image, (40, 40), interpolation=cv2.INTER_AREA)
    brighter = np.clip(small.astype(np.float32) * 1.05 + 5, 0, 255).astype(np.uint8)
    return cv2.imencode(".jpg", brighter, [cv2.IMWRITE_JPEG_QUALITY, 70])[1].tobytes()


def _data(root: Path, splits: bool, plant: bool = True) -> Path:
    """16 distinct images (8 per label, one patient each) and, when planted, a near copy of the first
    train image as another patient's test image."""
    rows = []
    for k in range(16):
        rel = f"{LABELS[k % 2]}/img{k:02d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / rel), _texture(k))
        rows.append((rel, LABELS[k % 2], f"P{k}", "train" if k < 10 else "val" if k < 13 else "test"))
    if plant:
        (root / "a/copy.jpg").write_bytes(_near_copy(_texture(0)))
        rows.append(("a/copy.jpg", "a", "P99", "test"))
    frame = pd.DataFrame(rows, columns=["path", "label", "patient_id", "split"])
    (frame if splits else frame.drop(columns="split")).to_csv(root / "manifest.csv", index=False)
    return root


def _params(**near) -> Params:
    return Params.model_validate({"validate": {"labels": LABELS, "min_per_class": 1, "near_duplicates": near}})


def _validate(tmp_path: Path, root: Path, params: Params):
    from pipeline.validate import run_step

    ws = Workspace(base=tmp_path, data_root=root, out=tmp_path / "outputs")
    return run_step(params, ws), ws


def test_fingerprint_survives_re_export_and_tells_images_apart():
    image = _texture(0, 96)
    copy = cv2.imdecode(np.frombuffer(_near_copy(image), np.uint8), cv2.IMREAD_GRAYSCALE)
    rgb = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    gray = lambda im: cv2.cvtColor(im, cv2.COLOR_RGB2GRAY) if im.ndim == 3 else im  # noqa: E731
    fps = to_words([fingerprint(gray(im).astype(np.float32)) for im in (image, copy, rgb, _texture(1, 96))])
    assert hamming(fps[0], fps[1]) <= 30
    assert hamming(fps[0], fps[2]) == 0
    assert hamming(fps[0], fps[3]) > 60
    assert fingerprint(np.zeros((0, 0), np.float32)) == ""


def _flip(rng: np.random.Generator, words: np.ndarray, bits: int) -> np.ndarray:
    """A copy of one (4,) uint64 fingerprint with `bits` distinct bits flipped."""
    row = np.unpackbits(words.astype(">u8").view(np.uint8))
    row[rng.choice(256, bits, replace=False)] ^= 1
    return np.packbits(row).view(">u8").astype(np.uint64)


def test_index_finds_exactly_the_close_pairs():
    rng = np.random.default_rng(0)
    words = rng.integers(0, 2**63, size=(600, 4), dtype=np.int64).astype(np.uint64)
    flips = np.uint64(1) << rng.integers(0, 63, size=(100, 4)).astype(np.uint64)
    words[300:400] = words[:100] ^ flips  # planted: 1-4 bits away
    for k in range(100):  # and 17-40 bits away: found by the probes of radius 1 (threshold 30) and 2 (40)
        words[400 + k] = _flip(rng, words[100 + k], 17 + k % 24)
    brute = hamming(words[:, None], words[None])
    for threshold in (0, 4, 30, 40):
        i, j, d = close_pairs(words, threshold)
        expected = set(zip(*np.nonzero(np.triu(brute <= threshold, 1))))
        assert set(zip(i.tolist(), j.tolist())) == expected
        assert (d == brute[i, j]).all()
        assert len(i) == len(expected)  # each pair once, though it may agree in several bands
        one_thread = close_pairs(words, threshold, threads=1)
        assert all((a == b).all() for a, b in zip(one_thread, (i, j, d)))  # the same, in the same order
    i, j, _ = close_pairs(words[300:400], 4, others=words[:100])
    assert len(i) >= 100
    assert (i == j).sum() == 100
    groups = find_groups([""] + [w.astype(">u8").tobytes().hex() for w in words[:2]] * 2, 0)
    assert groups.group.tolist() == [-1, 1, 2, 1, 2]  # transitive ids; "" takes part in none


def test_near_copy_across_fixed_splits_is_an_error(tmp_path):
    report, ws = _validate(tmp_path, _data(tmp_path / "data", splits=True), _params())
    assert not report.success
    failed = [c for c in report.failed if c.name.startswith("each near-duplicate group")]
    assert failed
    assert "a/copy.jpg" in failed[0].unexpected[0]
    near = report.near_duplicates
    assert near["n_cross_split"] == 1
    assert near["split_pairs"] == {"train-test": 1}
    html = (ws.out / "validate/report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3
    assert "a/copy.jpg" in html
    assert "http" not in html


def test_warning_action_records_only(tmp_path):
    report, _ = _validate(tmp_path, _data(tmp_path / "data", splits=True), _params(action="warning"))
    assert report.success
    assert any(c.name.startswith("each near-duplicate group") for c in report.warnings)


def test_drop_action_removes_the_test_copy_and_records_it(tmp_path):
    from pipeline.train import dropped_count
    from pipeline.validate import DROPPED_CSV

    root = _data(tmp_path / "data", splits=True)
    kept, ws = _validate(tmp_path, root, _params())  # error first: the split table as it would be
    report, ws = _validate(tmp_path, root, _params(action="drop"))
    assert report.success
    assert report.n_images == 16
    splits = pd.read_csv(ws.out / "validate/splits.csv", keep_default_na=False)
    assert "a/copy.jpg" not in set(splits["path"])
    assert "a/img00.png" in set(splits["path"])
    assert (splits["split"] == "train").sum() == 10  # train intact
    dropped = pd.read_csv(ws.out / "validate" / DROPPED_CSV)
    assert dropped.to_dict("records") == [
        {"path": "a/copy.jpg", "label": "a", "split": "test", "kind": "near", "kept": "a/img00.png"}
    ]
    saved = json.loads((ws.out / "validate/report.json").read_text())
    assert dropped_count(saved["near_duplicates"]) == dropped_count(report.near_duplicates) == 1
    assert "a/copy.jpg" in (ws.out / "validate/report.md").read_text()


def test_exact_duplicates_drop_option(tmp_path):
    root = _data(tmp_path / "data", splits=True, plant=False)
    manifest = pd.read_csv(root / "manifest.csv")
    (root / "a/same.png").write_bytes((root / "a/img00.png").read_bytes())
    manifest.loc[len(manifest)] = ["a/same.png", "a", "P98", "val"]
    manifest.to_csv(root / "manifest.csv", index=False)
    off = {"enabled": False}
    assert not _validate(tmp_path, root, _params(**off))[0].success
    params = Params.model_validate(
        {"validate": {"labels": LABELS, "min_per_class": 1, "exact_duplicates": "drop", "near_duplicates": off}}
    )
    report, ws = _validate(tmp_path, root, params)
    assert report.success
    assert report.near_duplicates["dropped"][0]["kind"] == "exact"


def test_medpipe_split_keeps_near_copies_together(tmp_path):
    from pipeline.validate import validate_data

    root = _data(tmp_path / "data", splits=False)
    params = _params().model_copy(update={"preprocess": Params().preprocess})
    for seed in range(4):
        p = Params.model_validate({**params.model_dump(by_alias=True), "preprocess": {"seed": seed}})
        report, images, _ = validate_data(root, p, tmp_path / "outputs/validate", tmp_path)
        split = images.set_index("path")["split"]
        assert report.success
        assert split["a/copy.jpg"] == split["a/img00.png"]


def test_distinct_images_pass(tmp_path):
    report, _ = _validate(tmp_path, _data(tmp_path / "data", splits=True, plant=False), _params())
    assert report.success
    assert report.near_duplicates["n_groups"] == 0
    assert not report.warnings


def test_conflicting_labels_are_a_warning(tmp_path):
    root = _data(tmp_path / "data", splits=True)
    manifest = pd.read_csv(root / "manifest.csv")
    manifest.loc[manifest["path"] == "a/copy.jpg", ["label", "split"]] = ["b", "train"]
    manifest.to_csv(root / "manifest.csv", index=False)
    report, _ = _validate(tmp_path, root, _params())
    assert report.success
    assert [c.name for c in report.warnings] == [
        "one label per near-duplicate group (else probable label errors, warning)"
    ]


@pytest.mark.parametrize(
    "near, message",
    [
        ({"threshold": 64}, "validate.near_duplicates.threshold"),
        ({"threshold": -1}, "validate.near_duplicates.threshold"),
        ({"action": "ignore"}, "validate.near_duplicates.action"),
        ({"windows": "sometimes"}, "validate.near_duplicates.windows"),
        ({"threshold": 20, "clean_threshold": 10}, "clean_threshold \\(10\\) must be at least threshold \\(20\\)"),
        ({"small_threshold": 64}, "validate.near_duplicates.small_threshold"),
        ({"treshold": 3}, "unknown key 'validate.near_duplicates.treshold'"),
    ],
)
def test_params_are_validated(near, message):
    with pytest.raises(ConfigError, match=message):
        parse_params({"validate": {"near_duplicates": near}})
    with pytest.raises(ConfigError, match="validate.exact_duplicates"):
        parse_params({"validate": {"exact_duplicates": "warning"}})
    assert Params().validate_.near_duplicates.clean == 30  # 1.5 x the default 20


def test_the_small_threshold_is_never_tighter_than_the_threshold():
    default = Params().validate_.near_duplicates
    assert (default.small, default.clean, default.clean_small) == (36, 30, 46)
    loose = parse_params({"validate": {"near_duplicates": {"threshold": 40}}}).validate_.near_duplicates
    assert (loose.small, loose.clean, loose.clean_small) == (40, 60, 60)  # a threshold above 36 is accepted


def test_clean_test_subset():
    from pipeline.evaluate import clean_metrics, clean_test_mask
    from pipeline.validate import near_train

    fps = [fingerprint(_texture(k).astype(np.float32)) for k in range(6)]
    copy = fingerprint(cv2.imdecode(np.frombuffer(_near_copy(_texture(0)), np.uint8), 0).astype(np.float32))
    splits = pd.DataFrame({"split": ["train"] * 3 + ["test"] * 4, "fingerprint": fps[:3] + [copy, *fps[3:]]})
    splits["width"] = splits["height"] = 64
    near = NearDuplicateParams(threshold=30, clean_threshold=45, windows=False)
    splits["near_train"] = near_train(splits, near).near_train
    assert splits["near_train"].tolist() == [False] * 3 + [True] + [False] * 3
    clean = clean_test_mask(splits.astype(str))  # as read back from splits.csv
    assert clean.tolist() == [False, True, True, True]
    y, p = np.array([0, 1, 0, 1]), np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    m = clean_metrics(y, p, clean, 10)
    assert m["test_clean_n"] == 3
    assert m["test_clean_accuracy"] == 1.0
    assert "test_clean_roc_auc" in m
    assert clean_metrics(y, p, np.zeros(4, bool), 10) == {"test_clean_n": 0.0}


def test_data_duplicates_command(tmp_path):
    root = _data(tmp_path / "data", splits=True)
    out = tmp_path / "pairs.csv"
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("medpipe")),
            "data",
            "duplicates",
            str(root),
            "--out",
            str(out),
            "--cache",
            str(tmp_path / "scan.csv"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "1 near-duplicate group(s), 1 pair(s)" in done.stdout
    pairs = pd.read_csv(out)
    assert pairs[["path_a", "path_b"]].values.tolist() == [["a/img00.png", "a/copy.jpg"]]
    assert 0 < pairs["distance"][0] <= 30
    bad = subprocess.run(
        [str(Path(sys.executable).with_name("medpipe")), "data", "duplicates", str(root), "--threshold", "99"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr


def test_old_scan_cache_without_fingerprints_is_rescanned(tmp_path):
    from pipeline.scan import COLUMNS, scan

    root = _data(tmp_path / "data", splits=True, plant=False)
    rels = pd.read_csv(root / "manifest.csv")["path"].tolist()
    cache = tmp_path / "scan.csv"
    first = scan(root, rels, cache=cache, workers=1)
    assert list(first.columns) == COLUMNS
    assert (first["fingerprint"].str.len() == 64).all()
    first.drop(columns="fingerprint").to_csv(cache, index=False)  # what an older medpipe wrote
    again = scan(root, rels, cache=cache, workers=1)
    assert again["fingerprint"].tolist() == first["fingerprint"].tolist()


def _cropped(image: np.ndarray) -> bytes:
    """A crop: 4 % of the height and width cut off at the top and left (a PNG)."""
    h, w = image.shape
    return cv2.imencode(".png", image[round(0.04 * h) :, round(0.04 * w) :])[1].tobytes()


def _cropped_one_side(image: np.ndarray, side: int) -> bytes:
    """A crop from one side only: 4 % cut off at the top, bottom, left or right (side 0..3; a PNG)."""
    h, w = image.shape
    dy, dx = round(0.04 * h), round(0.04 * w)
    return cv2.imencode(".png", (image[dy:], image[: h - dy], image[:, dx:], image[:, : w - dx])[side])[1].tobytes()


def _shifted(image: np.ndarray, down: bool = True) -> bytes:
    """A shift by 3 % right and down (or right only), the border replicated (a PNG)."""
    h, w = image.shape
    move = np.float32([[1, 0, round(0.03 * w)], [0, 1, round(0.03 * h) if down else 0]])
    return cv2.imencode(".png", cv2.warpAffine(image, move, (w, h), borderMode=cv2.BORDER_REPLICATE))[1].tobytes()


def _hashes(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gray = image.astype(np.float32)
    return to_words([fingerprint(gray)])[0], window_words([window_fingerprints(gray)])[0]


def test_windows_tell_crops_and_shifts_from_other_images():
    image = _texture(0, 96)
    base, wins = _hashes(image)
    assert len(window_fingerprints(image.astype(np.float32))) == 64 * N_WINDOWS
    assert window_fingerprints(np.zeros((0, 0), np.float32)) == ""
    copies = [_cropped(image), *(_cropped_one_side(image, side) for side in range(4))]
    for copy in (*copies, _shifted(image), _shifted(image, down=False)):
        b, w = _hashes(cv2.imdecode(np.frombuffer(copy, np.uint8), cv2.IMREAD_GRAYSCALE))
        assert hamming(base, b) > 20  # the whole images alone miss it ...
        assert combined_distance(base, wins, b, w) <= 20  # ... their windows find it, either way round
        assert combined_distance(b, w, base, wins) == combined_distance(base, wins, b, w)
    other_base, other_wins = _hashes(_texture(1, 96))
    assert combined_distance(base, wins, other_base, other_wins) > 60


def test_window_index_finds_every_combination_within_15_bits():
    rng = np.random.default_rng(1)
    n = 300

    def random(*shape):
        return rng.integers(0, 2**63, size=shape, dtype=np.int64).astype(np.uint64) | (
            rng.integers(0, 2, size=shape).astype(np.uint64) << np.uint64(63)
        )

    def flip(words, bits):
        row = np.unpackbits(words.astype(">u8").view(np.uint8))
        row[rng.choice(256, bits, replace=False)] ^= 1
        return np.packbits(row).view(">u8").astype(np.uint64)

    base, wins = random(n, 4), random(n, N_WINDOWS, 4)
    for k in range(60):  # crops (a whole against a window), shifts (a window against a partner), whole copies
        w, bits = int(rng.integers(0, N_WINDOWS)), int(rng.integers(0, 21))
        if k % 3 == 0:
            base[100 + k] = flip(wins[k, w], bits)
        elif k % 3 == 1:
            a, b = PAIRINGS[int(rng.integers(0, len(PAIRINGS)))][:: 1 if k % 2 else -1]  # either way round
            wins[100 + k, a] = flip(wins[k, b], bits)
        else:
            base[100 + k] = flip(base[k], bits)
    brute = combined_distance(base[:, None], wins[:, None], base[None], wins[None])
    i, j, d = near_pairs(base, 20, wins)
    found = set(zip(i.tolist(), j.tolist()))
    assert (d == brute[i, j]).all()
    assert (d <= 20).all()
    assert found >= set(zip(*np.nonzero(np.triu(brute <= 15, 1))))  # within 15 bits: always found
    assert len(found) >= 55  # farther: when a band agrees exactly (most)
    assert near_pairs(base, 20).left.size < len(found)  # whole images alone find only the whole copies


def test_pairs_with_a_small_image_have_the_small_threshold():
    rng = np.random.default_rng(3)
    words = rng.integers(0, 2**63, size=(40, 4), dtype=np.int64).astype(np.uint64)

    def flip(row, bits):
        out = np.unpackbits(row.astype(">u8").view(np.uint8))
        out[rng.choice(256, bits, replace=False)] ^= 1
        return np.packbits(out).view(">u8").astype(np.uint64)

    for k in range(10):  # rows 20..29: copies of rows 0..9, 30 bits off
        words[20 + k] = flip(words[k], 30)
    small = np.zeros(40, bool)
    small[[0, 1, 2, 23, 24]] = True  # pairs 0-20, 1-21, 2-22, 3-23 and 4-24 have a small image
    i, j, d = near_pairs(words, 20, small=small, small_threshold=36)
    assert set(zip(i.tolist(), j.tolist())) == {(k, 20 + k) for k in range(5)}
    assert (d == 30).all()
    assert near_pairs(words, 20).left.size == 0  # the default threshold alone: none
    assert near_pairs(words, 20, small=small, small_threshold=10).left.size == 0  # never tighter than threshold
    assert small_images([28, 64, 40, 0], [28, 64, 31, 0]).tolist() == [True, False, True, False]  # 0: unreadable


def test_small_and_normal_images_with_windows():
    rng = np.random.default_rng(4)
    n = 120
    base = rng.integers(0, 2**63, size=(n, 4), dtype=np.int64).astype(np.uint64)
    wins = rng.integers(0, 2**63, size=(n, N_WINDOWS, 4), dtype=np.int64).astype(np.uint64)
    small = np.zeros(n, bool)
    small[::3] = True
    for k in range(0, 30, 2):  # whole copies 15-40 bits off: small pairs count to 36, the others to 20
        base[60 + k] = _flip(rng, base[k], 15 + k)
    for k in range(1, 30, 2):  # crops: another image's window within 15 bits of a whole
        wins[60 + k, k % N_WINDOWS] = _flip(rng, base[k], k // 2)
    limit = np.where(small[:, None] | small[None], 36, 20)
    brute = combined_distance(base[:, None], wins[:, None], base[None], wins[None])
    i, j, d = near_pairs(base, 20, wins, small, 36)
    assert (d == brute[i, j]).all() and (d <= limit[i, j]).all()
    found = set(zip(i.tolist(), j.tolist()))
    whole = hamming(base[:, None], base[None])
    assert found >= set(zip(*np.nonzero(np.triu((whole <= limit) | (brute <= 15), 1))))
    assert {(k, 60 + k) for k in range(1, 30, 2)} <= found
    assert {(k, 60 + k) for k in range(0, 30, 2)} & found == {
        (k, 60 + k) for k in range(0, 30, 2) if 15 + k <= (36 if small[k] or small[60 + k] else 20)
    }


def test_an_images_own_windows_are_skipped():
    rng = np.random.default_rng(5)
    base = rng.integers(0, 2**63, size=(10, 4), dtype=np.int64).astype(np.uint64)
    wins = rng.integers(0, 2**63, size=(10, N_WINDOWS, 4), dtype=np.int64).astype(np.uint64)
    wins[:, 3] = base  # each image's window 3 is its whole (a uniform border): not a copy of itself
    wins[7, 5] = base[2]  # image 7 holds image 2: a crop
    flat = wins.reshape(-1, 4)
    t, a, _ = close_pairs(flat, 0, base, radius=0, per=N_WINDOWS)
    assert list(zip((t // N_WINDOWS).tolist(), a.tolist())) == [(7, 2)]
    t, a, _ = close_pairs(flat, 0, base, radius=0)
    assert len(t) == 11  # without `per` the own windows match too


def test_a_half_size_copy_of_a_28_px_image_is_found_at_the_small_threshold(tmp_path):
    image = _texture(5, 28)
    half = cv2.resize(image, (14, 14), interpolation=cv2.INTER_AREA)
    a, b = (to_words([fingerprint(x.astype(np.float32))])[0] for x in (image, half))
    assert 20 < hamming(a, b) <= 36  # farther than the default threshold: a 14 px copy lacks the top frequencies
    root = tmp_path / "data"
    for rel, pixels in (("a/img.png", image), ("a/half.png", half), ("b/other.png", _texture(6, 28))):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / rel), pixels)
    pairs = duplicate_pairs(root, 20, small_threshold=36)
    assert sorted(pairs[["path_a", "path_b"]].iloc[0]) == ["a/half.png", "a/img.png"]
    assert len(pairs) == 1
    assert pairs["small"].tolist() == [True]  # the small threshold applied
    assert duplicate_pairs(root, 20).empty  # without the small-image threshold it is missed


def _crop_data(root: Path, splits: bool) -> Path:
    """16 distinct 96 px images (8 per label), and a crop and a shift of the first train image as other
    patients' test images."""
    rows = []
    for k in range(16):
        rel = f"{LABELS[k % 2]}/img{k:02d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / rel), _texture(k, 96))
        rows.append((rel, LABELS[k % 2], f"P{k}", "train" if k < 10 else "val" if k < 13 else "test"))
    (root / "a/crop.png").write_bytes(_cropped(_texture(0, 96)))
    (root / "a/shift.png").write_bytes(_shifted(_texture(0, 96)))
    rows += [("a/crop.png", "a", "P98", "test"), ("a/shift.png", "a", "P99", "test")]
    frame = pd.DataFrame(rows, columns=["path", "label", "patient_id", "split"])
    (frame if splits else frame.drop(columns="split")).to_csv(root / "manifest.csv", index=False)
    return root


def test_crops_and_shifts_across_fixed_splits_are_errors_found_by_windows(tmp_path):
    from pipeline.evaluate import clean_test_mask

    root = _crop_data(tmp_path / "data", splits=True)
    report, ws = _validate(tmp_path, root, _params())
    assert not report.success
    failed = [c for c in report.failed if c.name.startswith("each near-duplicate group")]
    assert "a/crop.png" in failed[0].unexpected[0]
    assert "a/shift.png" in failed[0].unexpected[0]
    group = report.near_duplicates["cross_split_groups"][0]
    assert {m["path"] for m in group} == {"a/img00.png", "a/crop.png", "a/shift.png"}
    assert all(m["distance"] <= 20 for m in group)
    splits = pd.read_csv(ws.out / "validate/splits.csv", dtype=str, keep_default_na=False)
    clean = clean_test_mask(splits)  # evaluate's clean subset leaves them out too
    test_paths = splits.loc[splits["split"] == "test", "path"].tolist()
    assert {p for p, c in zip(test_paths, clean) if not c} == {"a/crop.png", "a/shift.png"}
    off, ws = _validate(tmp_path, root, _params(windows=False, action="warning"))
    assert off.success
    assert not off.warnings  # whole images alone: neither is found ...
    splits = pd.read_csv(ws.out / "validate/splits.csv", dtype=str, keep_default_na=False)
    assert clean_test_mask(splits).all()  # ... nor left out of the clean subset


def test_medpipe_split_keeps_crops_and_shifts_with_their_original(tmp_path):
    from pipeline.validate import validate_data

    root = _crop_data(tmp_path / "data", splits=False)
    for seed in range(3):
        p = Params.model_validate({**_params().model_dump(by_alias=True), "preprocess": {"seed": seed}})
        report, images, _ = validate_data(root, p, tmp_path / "outputs/validate", tmp_path)
        split = images.set_index("path")["split"]
        assert report.success
        assert split["a/crop.png"] == split["a/shift.png"] == split["a/img00.png"]


def test_the_report_shows_the_small_threshold_for_28_px_images(tmp_path):
    root = tmp_path / "data"
    rows = []
    for k in range(8):
        rel = f"{LABELS[k % 2]}/img{k}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / rel), _texture(k + 5, 28))
        rows.append((rel, LABELS[k % 2], f"P{k}", "train" if k < 4 else "val" if k < 6 else "test"))
    cv2.imwrite(str(root / "a/half.png"), cv2.resize(_texture(5, 28), (14, 14), interpolation=cv2.INTER_AREA))
    rows.append(("a/half.png", "a", "P9", "test"))  # another patient's test image: a 14 px copy of a train one
    pd.DataFrame(rows, columns=["path", "label", "patient_id", "split"]).to_csv(root / "manifest.csv", index=False)
    report, ws = _validate(tmp_path, root, _params(action="warning", windows=False))
    near = report.near_duplicates
    assert (near["n_cross_split"], near["small_threshold"], near["n_small"]) == (1, 36, 9)
    assert near["nn_radius"] == 46  # the clean search looked as far as the small threshold, loosened
    assert len(near["nn_histogram"]) == 48 and sum(near["nn_histogram"][21:47]) >= 2  # the pair, beyond 20
    html = (ws.out / "validate/report.html").read_text()
    assert "&le; 36 for a pair with one of the 9 image(s) under 32 px a side" in html
    assert "left of the dotted line" in html
