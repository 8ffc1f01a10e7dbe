"""Near-duplicate detection: recall on planted near-copies of real images, false positives on distinct
images, the fingerprint's share of the scan, and grouping 100,000 fingerprints (whole images and windows).

Prints one JSON object per line (see docs/benchmarks.md). Needs /work/shared/datasets (or --datasets).
Usage: python benchmarks/near_duplicates.py [--every 10] [--n 100000]
"""

from pipeline import configure_offline

configure_offline()  # medpipe's offline defaults, before Prefect, MLflow, DVC, GX, TF or OpenCV load

import argparse
import json
import resource
import time
from multiprocessing import Pool
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from pipeline.imageio import read_image, to_gray
from pipeline.near_duplicates import (
    N_WINDOWS,
    PAIRINGS,
    combined_distance,
    find_groups,
    fingerprint,
    fingerprints,
    hamming,
    near_pairs,
    small_images,
    to_words,
    window_fingerprints,
    window_words,
)
from pipeline.scan import scan_file

THRESHOLDS = (14, 20, 24, 30, 36, 40, 46)
DEFAULT = 20  # validate.near_duplicates.threshold
SMALL = 36  # validate.near_duplicates.small_threshold: a pair with an image under 32 px a side


def _encode(image: np.ndarray, kind: str, quality: int = 95) -> tuple[str, bytes]:
    if kind == "jpg":
        return "x.jpg", cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()
    return "x.png", cv2.imencode(".png", image)[1].tobytes()


def variants(image: np.ndarray, rng: np.random.Generator) -> dict[str, tuple[str, bytes]]:
    """One near copy per family, random parameters in the issue's ranges (image: uint8, gray or BGR)."""
    h, w = image.shape[:2]
    s = rng.uniform(0.5, 1.5)
    resized = cv2.resize(
        image, (max(8, round(w * s)), max(8, round(h * s))), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    )
    c = rng.uniform(0.01, 0.05)
    dx, dy = max(1, round(c * w)), max(1, round(c * h))
    crop = image[dy:, dx:] if rng.uniform() < 0.5 else image[: h - dy, : w - dx]
    move = np.float32([[1, 0, rng.choice([-1, 1]) * dx], [0, 1, rng.choice([-1, 1]) * dy]])
    shifted = cv2.warpAffine(image, move, (w, h), borderMode=cv2.BORDER_REPLICATE)
    bright = np.clip(image * 1.0 + rng.uniform(-0.1, 0.1) * 255, 0, 255).astype(np.uint8)
    contrast = np.clip((image - image.mean()) * rng.uniform(0.9, 1.1) + image.mean(), 0, 255).astype(np.uint8)
    other = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    return {
        "jpeg": _encode(image, "jpg", int(rng.integers(60, 96))),
        "resize": _encode(resized, "png"),
        "resize_back": _encode(cv2.resize(resized, (w, h)), "png"),
        "crop": _encode(crop, "png"),
        "shift": _encode(shifted, "png"),
        "brightness": _encode(bright, "png"),
        "contrast": _encode(contrast, "png"),
        "png_jpeg": _encode(image, "jpg", 90),
        "gray_rgb": _encode(other, "png"),
    }


def extra_variants(image: np.ndarray, rng: np.random.Generator) -> dict[str, tuple[str, bytes]]:
    """A crop from one side only and a shift along one axis only (1-5 %), drawn from their own stream so the
    other families' draws stay as they were before these two were added."""
    h, w = image.shape[:2]
    c = rng.uniform(0.01, 0.05)
    dx, dy = max(1, round(c * w)), max(1, round(c * h))
    side = int(rng.integers(0, 4))
    crop = (image[dy:], image[: h - dy], image[:, dx:], image[:, : w - dx])[side]
    step = rng.choice([-1, 1])
    move = np.float32([[1, 0, step * dx], [0, 1, 0]] if side < 2 else [[1, 0, 0], [0, 1, step * dy]])
    shifted = cv2.warpAffine(image, move, (w, h), borderMode=cv2.BORDER_REPLICATE)
    return {"crop_one_side": _encode(crop, "png"), "shift_one_axis": _encode(shifted, "png")}


def _hashes(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(4,) words of the whole image's fingerprint and (N_WINDOWS, 4) of its windows, as the scan makes them."""
    return to_words([fingerprint(gray)])[0], window_words([window_fingerprints(gray)])[0]


def _hashes_bytes(name: str, data: bytes) -> tuple[np.ndarray, np.ndarray, bool]:
    """The hashes of an encoded image, decoded as the scan decodes it, and whether it is small (under 32 px)."""
    gray = to_gray(read_image(Path(name), data=data).pixels) * 255.0
    return (*_hashes(gray), bool(small_images([gray.shape[1]], [gray.shape[0]])[0]))


def _images(datasets: Path, every: int) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Sampled originals per data set as uint8 arrays (as decoded), keyed by path."""
    out = {}
    for name in ("chest_xray_kermany224", "blood_cells_pbc"):
        root = datasets / name
        paths = pd.read_csv(root / "manifest.csv")["path"].tolist()[::every]
        out[name] = [(p, cv2.imread(str(root / p), cv2.IMREAD_UNCHANGED)) for p in paths]
    npz = np.load(datasets / "medmnist" / "pneumoniamnist_trainsubsampled.npz")
    out["pneumoniamnist"] = [(f"test/{i}", im) for i, im in enumerate(npz["test_images"][:: max(1, every // 2)])]
    return out


def recall(datasets: Path, every: int, seed: int = 0) -> list[dict]:
    """Each sampled original against its planted copies: recall per family and threshold by whole-image
    distance (windows off) and by combined distance (windows on), and what the index finds at the default."""
    rng, extra_rng = np.random.default_rng(seed), np.random.default_rng(seed + 1)
    rows = []
    for name, images in _images(datasets, every).items():
        whole: dict[str, list[int]] = {}
        combined: dict[str, list[int]] = {}
        base, wins, small, pairs = [], [], [], []
        for _, image in images:
            b0, w0, s0 = _hashes_bytes(*_encode(image, "png"))
            original = len(base)
            base.append(b0)
            wins.append(w0)
            small.append(s0)
            for family, (fname, data) in {**variants(image, rng), **extra_variants(image, extra_rng)}.items():
                b1, w1, s1 = _hashes_bytes(fname, data)
                small.append(s1)
                whole.setdefault(family, []).append(int(hamming(b0, b1)))
                combined.setdefault(family, []).append(int(combined_distance(b0, w0, b1, w1)))
                pairs.append((original, len(base), family))
                base.append(b1)
                wins.append(w1)
        i, j, _ = near_pairs(np.stack(base), DEFAULT, np.stack(wins), np.array(small), SMALL)  # as validation runs
        found = set(zip(i.tolist(), j.tolist()))
        by_index: dict[str, list[bool]] = {}
        for a, b, family in pairs:
            by_index.setdefault(family, []).append((a, b) in found)
        all_whole = np.concatenate([np.array(v) for v in whole.values()])
        all_comb = np.concatenate([np.array(v) for v in combined.values()])
        rows.append(
            {
                "bench": "near_duplicates",
                "what": "recall",
                "dataset": name,
                "originals": len(images),
                "planted": int(all_comb.size),
                **{f"recall_at_{t}": round(float((all_comb <= t).mean()), 4) for t in THRESHOLDS},
                "small_images": int(np.sum(small)),
                f"found_by_index_at_{DEFAULT}": round(float(np.mean([x for v in by_index.values() for x in v])), 4),
                f"found_by_index_at_{DEFAULT}_by_family": {f: round(float(np.mean(v)), 4) for f, v in by_index.items()},
                "max_distance": {f: int(max(v)) for f, v in combined.items()},
                f"windows_off_recall_at_{DEFAULT}": round(float((all_whole <= DEFAULT).mean()), 4),
                f"windows_off_recall_at_{DEFAULT}_by_family": {
                    f: round(float((np.array(v) <= DEFAULT).mean()), 3) for f, v in whole.items()
                },
            }
        )
    return rows


def false_positives(datasets: Path) -> list[dict]:
    """Share of distinct images with another distinct image within each threshold, windows on, through the
    index (byte-identical copies listed in duplicates.csv, or identical arrays, are true duplicates and not
    counted)."""
    rows = []
    for name in ("chest_xray_kermany224", "blood_cells_pbc", "pneumoniamnist"):
        if name == "pneumoniamnist":
            npz = np.load(datasets / "medmnist" / "pneumoniamnist_trainsubsampled.npz")
            arrays = np.concatenate([npz[f"{s}_images"] for s in ("train", "val", "test")])
            keys = [a.tobytes() for a in arrays]
            hashes = [_hashes(a.astype(np.float32)) for a in arrays]
            sizes = [a.shape for a in arrays]
        else:
            root = datasets / name
            paths = pd.read_csv(root / "manifest.csv")["path"].tolist()
            grays = (to_gray(read_image(root / p).pixels) for p in paths)
            hashes, sizes = zip(*((_hashes(g * 255.0), g.shape) for g in grays))
            dup = pd.read_csv(root / "duplicates.csv")
            sha = dict(zip(dup["path"], dup["sha256"]))
            keys = [sha.get(p, p) for p in paths]
        first = pd.Series(keys).duplicated(keep="first").to_numpy()  # keep one of each true duplicate group
        base = np.stack([h[0] for h, d in zip(hashes, first) if not d])
        wins = np.stack([h[1] for h, d in zip(hashes, first) if not d])
        shape = np.array([z for z, d in zip(sizes, first) if not d])
        small = small_images(shape[:, 1], shape[:, 0])
        flagged = {}
        for t in THRESHOLDS:
            i, j, _ = near_pairs(base, t, wins)
            flagged[f"flagged_at_{t}"] = round(len(np.union1d(i, j)) / len(base), 5)
        t = time.perf_counter()
        i, j, _ = near_pairs(base, DEFAULT, wins, small, SMALL)  # the default rule, as validation runs it
        seconds = time.perf_counter() - t
        flagged["flagged_by_default"] = round(len(np.union1d(i, j)) / len(base), 5)
        i, j, d = near_pairs(base, 46, wins)
        rows.append(
            {
                "bench": "near_duplicates",
                "what": "false_positives",
                "dataset": name,
                "images": len(hashes),
                "distinct": len(base),
                "true_duplicates_left_out": int(first.sum()),
                "small_images": int(small.sum()),
                **flagged,
                "closest_distinct_pair": int(d.min()) if len(d) else None,
                "near_pairs_by_default_s": round(seconds, 3),
            }
        )
    return rows


def scan_cost(datasets: Path, n: int) -> dict:
    """The same files scanned with and without the fingerprint and its windows, interleaved, best of 5 rounds."""
    root = datasets / "chest_xray_kermany224"
    rels = pd.read_csv(root / "manifest.csv")["path"].tolist()[:n]
    cv2.setNumThreads(1)
    for rel in rels[:50]:
        scan_file(root, rel, b"")  # warm the page cache and imports
    best = {True: float("inf"), False: float("inf")}
    for _ in range(5):
        for flag in (False, True):
            t = time.perf_counter()
            for rel in rels:
                scan_file(root, rel, b"", with_fingerprint=flag)
            best[flag] = min(best[flag], time.perf_counter() - t)
    return {
        "bench": "near_duplicates",
        "what": "scan_cost",
        "files": len(rels),
        "scan_s": round(best[False], 3),
        "scan_with_fingerprint_s": round(best[True], 3),
        "fingerprint_overhead": round(best[True] / best[False] - 1, 4),
        "scan_ratio": round(best[False] / best[True], 4),
    }


def _flip(rng: np.random.Generator, words: np.ndarray, bits: int) -> np.ndarray:
    row = np.unpackbits(words.astype(">u8").view(np.uint8))
    row[rng.choice(256, bits, replace=False)] ^= 1
    return np.packbits(row).view(">u8").astype(np.uint64)


def grouping(n: int, planted: int, threshold: int = DEFAULT, seed: int = 0) -> list[dict]:
    """Group n random images (a fingerprint and N_WINDOWS window fingerprints each) with `planted` near copies:
    a third whole-image copies, a third crops (a copy's whole = the original's window), a third shifts (a
    copy's window = a partner window of the original's, PAIRINGS), each 1 .. threshold bits off; windows off,
    then on. Timed after a warm-up call (numba's import and kernel load, reported apart); memory as the growth
    of this process's peak RSS (tracemalloc would slow the run by a half and miss numba's allocations)."""
    rng = np.random.default_rng(seed)

    def random(*shape: int) -> np.ndarray:
        low = rng.integers(0, 2**63, size=shape, dtype=np.int64).astype(np.uint64)
        return low | (rng.integers(0, 2, size=shape).astype(np.uint64) << np.uint64(63))

    base, wins = random(n, 4), random(n, N_WINDOWS, 4)
    src = rng.choice(n, planted, replace=False)
    dst = rng.choice(np.setdiff1d(np.arange(n), src), planted, replace=False)
    kind = np.arange(planted) % 3
    for s, d, k in zip(src, dst, kind):
        bits = int(rng.integers(1, threshold + 1))
        w = int(rng.integers(0, N_WINDOWS))
        if k == 0:
            base[d] = _flip(rng, base[s], bits)
        elif k == 1:
            base[d] = _flip(rng, wins[s, w], bits)
        else:
            a, b = PAIRINGS[w % len(PAIRINGS)]  # a partner window of the same level (a shift)
            wins[d, a] = _flip(rng, wins[s, b], bits)
    hexes = [b.astype(">u8").tobytes().hex() for b in base]
    windows = ["".join(x.astype(">u8").tobytes().hex() for x in row) for row in wins]
    t = time.perf_counter()
    find_groups(hexes[:100], threshold, windows[:100])  # numba imported, the cached kernel loaded (or compiled)
    warm_up = time.perf_counter() - t
    rows = []
    for with_windows in (False, True):
        rss0 = _reset_peak_rss()
        t = time.perf_counter()
        groups = find_groups(hexes, threshold, windows if with_windows else None)
        seconds = time.perf_counter() - t
        peak = (_peak_rss() - rss0) * 1024
        same = (groups.group[src] == groups.group[dst]) & (groups.group[src] >= 0)
        rows.append(
            {
                "bench": "near_duplicates",
                "what": "grouping",
                "windows": with_windows,
                "fingerprints": n,
                "planted": planted,
                "threshold": threshold,
                "seconds": round(seconds, 2),
                "first_call_warm_up_s": round(warm_up, 2),
                "peak_rss_growth_mb": round(peak / 2**20, 1),
                "planted_found": {
                    name: round(float(same[kind == k].mean()), 4) for k, name in enumerate(("whole", "crop", "shift"))
                },
                "pairs": int(len(groups.pairs[0])),
            }
        )
    return rows


def scaling(seed: int = 0) -> list[dict]:
    """How the search grows past 100,000: `near_pairs` on random fingerprints, whole images only at 100k, 1M
    and 3M, with windows at 100k, 200k and 400k (each once, after a warm-up; peak RSS growth per size)."""
    rng = np.random.default_rng(seed)
    rows = []
    for windows, sizes in ((False, (100_000, 1_000_000, 3_000_000)), (True, (100_000, 200_000, 400_000))):
        for n in sizes:
            base = rng.integers(0, 2**64 - 1, size=(n, 4), dtype=np.uint64, endpoint=True)
            wins = (
                rng.integers(0, 2**64 - 1, size=(n, N_WINDOWS, 4), dtype=np.uint64, endpoint=True) if windows else None
            )
            near_pairs(base[:100], DEFAULT, None if wins is None else wins[:100])
            rss0 = _reset_peak_rss()
            t = time.perf_counter()
            found = len(near_pairs(base, DEFAULT, wins).left)
            seconds = time.perf_counter() - t
            rows.append(
                {
                    "bench": "near_duplicates",
                    "what": "scaling",
                    "windows": windows,
                    "fingerprints": n,
                    "seconds": round(seconds, 2),
                    "peak_rss_growth_mb": round((_peak_rss() - rss0) / 1024, 1),
                    "pairs": found,
                }
            )
            del base, wins
    return rows


def real_grouping(datasets: Path) -> dict:
    """`near_pairs` on the first 1,500, 3,000 and all 5,840 chest X-rays (best of 3), windows on and off, and the
    fit a + b N^2 of the last two extrapolated to 100,000: real images concentrate band values, random
    fingerprints (`grouping`) do not. The fit takes all growth for N^2 (blend_grouping checks it at 100,000)."""
    root = datasets / "chest_xray_kermany224"
    hashes = [_hashes(to_gray(read_image(root / p).pixels) * 255.0) for p in pd.read_csv(root / "manifest.csv")["path"]]
    base, wins = np.stack([h[0] for h in hashes]), np.stack([h[1] for h in hashes])
    out: dict = {"bench": "near_duplicates", "what": "real_grouping", "dataset": root.name, "threshold": DEFAULT}
    out["candidates_per_random"] = round(_concentration(base, wins), 1)
    for with_windows in (True, False):
        seconds = _small_n_seconds(base, wins if with_windows else None)
        key = "windows" if with_windows else "windows_off"
        out[f"{key}_seconds"] = {str(n): round(v, 3) for n, v in seconds.items()}
        out[f"{key}_extrapolated_100000_s"] = _extrapolated(seconds)
    return out


def _small_n_seconds(base: np.ndarray, wins: np.ndarray | None) -> dict[int, float]:
    """`near_pairs` at the default on the first 1,500, 3,000 and 5,840 images, best of 3."""
    seconds = {}
    for n in (1500, 3000, 5840):
        runs = []
        for _ in range(3):
            t = time.perf_counter()
            near_pairs(base[:n], DEFAULT, None if wins is None else wins[:n])
            runs.append(time.perf_counter() - t)
        seconds[n] = min(runs)
    return seconds


def _extrapolated(seconds: dict[int, float]) -> float:
    """a + b N^2 through the last two points, at N = 100,000."""
    (n1, s1), (n2, s2) = list(seconds.items())[1:]
    return round(s2 + (s2 - s1) / (n2**2 - n1**2) * (100_000**2 - n2**2), 1)


_XRAYS: np.ndarray | None = None  # a blend worker's chest X-rays, 224 px gray


def _blend_init(root: str) -> None:
    global _XRAYS
    paths = pd.read_csv(Path(root) / "manifest.csv")["path"]
    _XRAYS = np.stack([cv2.resize(cv2.imread(str(Path(root) / p), cv2.IMREAD_GRAYSCALE), (224, 224)) for p in paths])


def _blend_hashes(span: tuple[int, int, int]) -> list[tuple[str, str]]:
    """Fingerprints of blends lo..hi (blend k: 3 X-rays, Dirichlet(2, 2, 2) weights, seeded by k), at `side` px."""
    assert _XRAYS is not None
    lo, hi, side = span
    out = []
    for k in range(lo, hi):
        rng = np.random.default_rng([7, k])
        pick = rng.choice(len(_XRAYS), 3, replace=False)
        image = np.tensordot(rng.dirichlet([2.0, 2.0, 2.0]), _XRAYS[pick].astype(np.float32), axes=1)
        if side != 224:
            image = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)
        out.append(fingerprints(image))
    return out


def blend_grouping(datasets: Path, n: int) -> list[dict]:
    """Grouping at scale on X-ray-like images: n blends of 3 of the 5,840 chest X-rays (seeded), fingerprinted at
    224 px and, as small images, at 28 px; `near_pairs` as validation runs it (windows on, the small-image
    threshold for the 28 px set) on n/4, n/2 and n of them, once each, and windows off on all n. The blends
    concentrate band values more than the real X-rays do (candidates per probe, printed), so this is the harder
    case. Peak memory: this process's peak RSS during the searches (reset before each side, Linux
    /proc/self/clear_refs) over its RSS before them (the blending runs in workers)."""
    root = datasets / "chest_xray_kermany224"
    rows = []
    for side in (224, 28):
        with Pool(2, initializer=_blend_init, initargs=(str(root),)) as pool:
            spans = [(k, min(n, k + 2000), side) for k in range(0, n, 2000)]
            hashes = [h for part in pool.map(_blend_hashes, spans) for h in part]
        base, wins = to_words([h[0] for h in hashes]), window_words([h[1] for h in hashes])
        small = np.full(n, side < 32)
        near_pairs(base[:100], DEFAULT, wins[:100], small[:100], SMALL)  # compiled kernels loaded
        rss0 = _reset_peak_rss()
        seconds, pairs = {}, {}
        for m in (n // 4, n // 2, n):
            t = time.perf_counter()
            pairs[m] = len(near_pairs(base[:m], DEFAULT, wins[:m], small[:m], SMALL).left)
            seconds[m] = time.perf_counter() - t
        t = time.perf_counter()
        off = len(near_pairs(base, DEFAULT, None, small, SMALL).left)
        off_s = time.perf_counter() - t
        rss1 = _peak_rss()
        check = {} if side < 32 else _small_n_seconds(base, wins)  # real_grouping's extrapolation, checked here
        rows.append(
            {
                "bench": "near_duplicates",
                "what": "blend_grouping",
                "side_px": side,
                "images": n,
                "threshold": SMALL if side < 32 else DEFAULT,
                "windows_seconds": {str(m): round(v, 2) for m, v in seconds.items()},
                "windows_pairs": {str(m): v for m, v in pairs.items()},
                "windows_off_s": round(off_s, 2),
                "windows_off_pairs": off,
                "peak_rss_growth_mb": round((rss1 - rss0) / 1024, 1),
                "candidates_per_random": round(_concentration(base[:5840], wins[:5840]), 1),
                **(
                    {
                        "small_n_seconds": {str(m): round(v, 3) for m, v in check.items()},
                        "extrapolated_from_small_n_100000_s": _extrapolated(check),
                    }
                    if check
                    else {}
                ),
            }
        )
    return rows


def _status_kb(field: str) -> int:
    """A field of /proc/self/status in kB (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _reset_peak_rss() -> int:
    """Reset this process's peak RSS to its current RSS (Linux; else the peak only rises); the RSS in kB."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return _status_kb("VmRSS") if Path("/proc/self/status").exists() else _max_rss()


def _peak_rss() -> int:
    """This process's peak RSS in kB since the last reset."""
    return _status_kb("VmHWM") if Path("/proc/self/status").exists() else _max_rss()


def _max_rss() -> int:
    """The peak RSS in kB since the process started (where /proc is missing)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _concentration(base: np.ndarray, wins: np.ndarray) -> float:
    """Candidates of the whole-against-window search (16 band joins) over what random hashes would give."""
    from pipeline.near_duplicates import _band

    flat = wins.reshape(-1, 4)
    total = sum(
        (
            np.bincount(_band(flat, b), minlength=1 << 16)
            * np.bincount(_band(base, b), minlength=1 << 16).astype(np.int64)
        ).sum()
        for b in range(16)
    )
    return float(total / (16 * len(flat) * len(base) / (1 << 16)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "datasets")
    ap.add_argument("--every", type=int, default=10, help="recall: every k-th image of each set is an original")
    ap.add_argument("--scan-files", type=int, default=1000)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument(
        "--only",
        choices=["recall", "false_positives", "scan_cost", "grouping", "scaling", "real_grouping", "blend_grouping"],
    )
    args = ap.parse_args()
    if not (args.datasets / "chest_xray_kermany224").is_dir():
        args.datasets = Path("/work/shared/datasets")
    parts = {
        "recall": lambda: recall(args.datasets, args.every),
        "false_positives": lambda: false_positives(args.datasets),
        "scan_cost": lambda: [scan_cost(args.datasets, args.scan_files)],
        "grouping": lambda: grouping(args.n, args.n // 20),
        "scaling": scaling,
        "real_grouping": lambda: [real_grouping(args.datasets)],
        "blend_grouping": lambda: blend_grouping(args.datasets, args.n),
    }
    for name, part in parts.items():
        if args.only in (None, name):
            for row in part():
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
