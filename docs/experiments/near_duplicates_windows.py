"""Near-duplicate fingerprints that survive crops and shifts: measure candidate schemes.

An exploration, not part of medpipe (docs/benchmarks.md, "Near duplicates": what it found). It ran against
pipeline.near_duplicates as of commit 49e2f65; the fingerprint has changed since (bits in a shuffled order,
large images halved first), so running it on later code no longer reproduces its .txt, and its mix of
pipeline.fingerprint with its own unshuffled window bits makes whole/window distances meaningless there: check
out 49e2f65 to rerun it. Run from the repo:
  nice -n 19 .venv/bin/python docs/experiments/near_duplicates_windows.py > docs/experiments/near_duplicates_windows.txt
  nice -n 19 .venv/bin/python docs/experiments/near_duplicates_windows.py --addendum >> docs/experiments/near_duplicates_windows.txt
Reads the pipeline code and ../shared/datasets; writes nothing else.

Every scheme stores, per image, a set of 256-bit hashes = the current fingerprint of some windows of
the decoded luminance (the full image is always one of them, so the current hash is kept as is).
Distance of a pair = min over the allowed (hash of A, hash of B) combinations:
  'all': every stored hash of A against every stored hash of B (one Hamming index over all hashes);
  'vb' : every variant of one against the base of the other (and base vs base), the brief's (b).
Window = fractional margins (left, right, top, bottom) of the image: > 0 crops, < 0 pads (replicate),
so a replicate-padded window is exactly the image shifted (cv2.warpAffine, BORDER_REPLICATE).
"""

import os
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # threaded BLAS on tiny products is several times slower under load
import functools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from pipeline import configure_offline  # noqa: E402

configure_offline()
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pipeline.imageio import read_image, to_gray  # noqa: E402
from pipeline.near_duplicates import close_pairs, fingerprint, to_words  # noqa: E402

DS = Path(__file__).resolve().parents[3] / "shared" / "datasets"
THRESHOLDS = (16, 20, 24, 30)
T0 = time.perf_counter()


def log(*a):
    print(*a, flush=True)


# ---------------------------------------------------------------- windows and the (a) normalisations
def window(gray, ax, bx, ay, by):
    h, w = gray.shape
    l, r, t, b = round(ax * w), round(bx * w), round(ay * h), round(by * h)
    sub = gray[max(t, 0): h - max(b, 0), max(l, 0): w - max(r, 0)]
    if min(l, r, t, b) < 0:
        sub = cv2.copyMakeBorder(sub, max(-t, 0), max(-b, 0), max(-l, 0), max(-r, 0), cv2.BORDER_REPLICATE)
    return sub


def corner(c, g):  # the image with a g-fraction strip removed on two sides (the corner named goes)
    return {"TL": (g, 0, g, 0), "BR": (0, g, 0, g), "TR": (0, g, g, 0), "BL": (g, 0, 0, g)}[c]


def shiftw(sx, sy, g):  # the image shifted by (sx*g, sy*g) of its size, replicate border
    ax, bx = (-g, g) if sx > 0 else (g, -g)
    ay, by = (-g, g) if sy > 0 else (g, -g)
    return (ax, bx, ay, by)


CORNER_G = (1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5)
SHIFT_G = (1, 2, 2.5, 3, 4, 5)
WINDOWS = {"base": (0, 0, 0, 0)}
for _c in ("TL", "BR", "TR", "BL"):
    for _g in CORNER_G:
        WINDOWS[f"c{_c}{_g}"] = corner(_c, _g / 100)
for _sx in (1, -1):
    for _sy in (1, -1):
        for _g in SHIFT_G:
            WINDOWS[f"s{'+' if _sx > 0 else '-'}{'+' if _sy > 0 else '-'}{_g}"] = shiftw(_sx, _sy, _g / 100)


def _moment_box(m, k=1.6):
    """(a): window centred on the map's centroid, half sizes k * its standard deviations (fractions)."""
    h, w = m.shape
    y, x = (np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w
    s = m.sum() + 1e-9
    px, py = m.sum(0) / s, m.sum(1) / s
    cx, cy = (px * x).sum(), (py * y).sum()
    sx, sy = np.sqrt((px * (x - cx) ** 2).sum()), np.sqrt((py * (y - cy) ** 2).sum())
    return cx - k * sx, cx + k * sx, cy - k * sy, cy + k * sy


def _meanshift_box(m, sig=0.1, size=0.85, iters=30):
    """(a'): Gaussian-weighted centroid iterated to a fixed point (borders weigh little); fixed-size window."""
    x = (np.arange(m.shape[1]) + 0.5) / m.shape[1]
    y = (np.arange(m.shape[0]) + 0.5) / m.shape[0]
    c = np.array([0.5, 0.5])
    for _ in range(iters):
        wx, wy = np.exp(-0.5 * ((x - c[0]) / sig) ** 2), np.exp(-0.5 * ((y - c[1]) / sig) ** 2)
        W = m * wy[:, None] * wx[None, :]
        t = W.sum() + 1e-9
        c = np.array([(W.sum(0) * x).sum() / t, (W.sum(1) * y).sum() / t])
    return c[0] - size / 2, c[0] + size / 2, c[1] - size / 2, c[1] + size / 2


def aligned_hashes(gray):
    s = cv2.resize(np.asarray(gray, np.float32), (64, 64), interpolation=cv2.INTER_AREA)
    grad = np.sqrt(cv2.Sobel(s, cv2.CV_32F, 1, 0) ** 2 + cv2.Sobel(s, cv2.CV_32F, 0, 1) ** 2)
    out = {}
    for name, (x0, x1, y0, y1) in (
        ("a_int", _moment_box(s)),
        ("a_grad", _moment_box(grad)),
        ("a_ms", _meanshift_box(np.abs(s - s.mean()))),
    ):
        out[name] = fingerprint(window(gray, x0, 1 - x1, y0, 1 - y1))
    return out


def all_hashes(gray):
    gray = np.asarray(gray, np.float32)
    out = {n: fingerprint(window(gray, *m)) for n, m in WINDOWS.items()}
    out.update(aligned_hashes(gray))
    small = _shrink(gray)
    for g in (2.5, 4.5):  # the recommended corners, from a <= 256 px copy
        for c in ("TL", "BR", "TR", "BL"):
            out[f"r{c}{g}"] = fingerprint(window(small, *corner(c, g / 100)))
    for steps in ((2.5, 4.5), (1.5, 3, 4.5)):  # the matrix implementation (exact fractional windows)
        hs = fingerprints_fast(gray, tuple(g / 100 for g in steps))
        for i, (g, c) in enumerate((g, c) for g in steps for c in ("TL", "BR", "TR", "BL")):
            out[f"f{c}{g}" if steps == (2.5, 4.5) else f"F{c}{g}"] = hs[1 + i]
    return out


# ---------------------------------------------------------------- the recommended fingerprint set
def _shrink(gray, side=256):
    h, w = gray.shape
    f = side / max(h, w)
    if f >= 1:
        return gray
    return cv2.resize(gray, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)


def fingerprints(gray, steps=(0.025, 0.045), side=256):
    """The current fingerprint plus the fingerprints of 8 corner crops (4 corners x steps), 9 x 64 hex digits.

    Near copies: min Hamming distance over all 9 x 9 pairs of two images' hashes <= threshold (30).
    The crops come from a <= `side` px copy (area-resized) so the cost does not grow with the image.
    """
    gray = np.asarray(gray, np.float32)
    if gray.size == 0:
        return [""] * (1 + 4 * len(steps))
    small = _shrink(gray, side)
    h, w = small.shape
    out = [fingerprint(gray)]
    for g in steps:
        dx, dy = round(g * w), round(g * h)
        out += [fingerprint(small[dy:, dx:]), fingerprint(small[: h - dy, : w - dx]),
                fingerprint(small[dy:, : w - dx]), fingerprint(small[: h - dy, dx:])]
    return out


# ---------------------------------------------------------------- the same, cheaper: exact area matrices on a fixed-size copy
from pipeline.near_duplicates import _DCT17  # noqa: E402  (the pipeline's 17x32 DCT rows)


def _area_rows(n: int, lo: float, hi: float, out: int = 32) -> np.ndarray:
    """(out, n): the area averages of `out` equal bins over [lo, hi) (fractions) of n pixels (cv2 INTER_AREA's weights)."""
    edges = np.linspace(lo * n, hi * n, out + 1)
    p = np.arange(n + 1, dtype=np.float64)
    overlap = np.minimum(edges[1:, None], p[None, 1:]) - np.maximum(edges[:-1, None], p[None, :-1])
    return (np.clip(overlap, 0, None) / np.diff(edges)[:, None]).astype(np.float32)


@functools.lru_cache(maxsize=64)
def _crop_mats(h: int, w: int, steps: tuple) -> tuple:
    """DCT rows of every window [g, 1) and [0, 1 - g), as (rows (34 * len(steps), h), cols (w, 32 * len(steps)))."""
    spans = [(g, 1.0) for g in steps] + [(0.0, 1.0 - g) for g in steps]  # cut at the start (top/left), at the end
    rows = np.concatenate([_DCT17 @ _area_rows(h, lo, hi) for lo, hi in spans])
    cols = np.concatenate([(_DCT17[:16] @ _area_rows(w, lo, hi)).T for lo, hi in spans], axis=1)
    return rows, cols


def fingerprints_fast(gray, steps=(0.025, 0.045), max_side=512):
    """fingerprint(gray), then the fingerprints of its 4 corner crops per step (a strip of `step` of the height
    and width cut off at two sides: top+left, bottom+right, top+right, bottom+left), each as fingerprint()
    would hash the crop (area average to 32x32, DCT, bits above the median), but with exact fractional
    windows and two matrix products for all of them. Images over `max_side` are first area-reduced by an
    integer factor (OpenCV's fast path)."""
    gray = np.asarray(gray, np.float32)
    if gray.size == 0:
        return [""] * (1 + 4 * len(steps))
    small, (h, w) = gray, gray.shape
    k = -(-max(h, w) // max_side)
    if k > 1:
        small = cv2.resize(gray[: h - h % k, : w - w % k], (w // k, h // k), interpolation=cv2.INTER_AREA)
    rows, cols = _crop_mats(*small.shape, tuple(steps))
    y = rows @ (small @ cols)  # (34 n, 32 n): block (r, c) = 17 x 16 low DCT of window rows r x cols c
    n = len(steps)
    pick = [p for i in range(n) for p in ((i, i), (n + i, n + i), (i, n + i), (n + i, i))]  # TL, BR, TR, BL removed
    b = np.stack([y[17 * r: 17 * r + 17, 16 * c: 16 * c + 16] for r, c in pick])
    low = b[:, :16].reshape(len(pick), 256)
    low[:, 0] = b[:, 16, 0]  # the DC swapped for (16, 0), as fingerprint()
    mid = np.partition(low, (127, 128), axis=1)
    bits = np.packbits(low > (mid[:, 127:128] + mid[:, 128:129]) / 2, axis=1)
    return [fingerprint(gray)] + [row.tobytes().hex() for row in bits]


# ---------------------------------------------------------------- schemes
C4 = lambda g, p="c": [f"{p}{c}{g}" for c in ("TL", "BR", "TR", "BL")]  # noqa: E731
S4 = lambda g: [f"s{a}{b}{g}" for a in "+-" for b in "+-"]  # noqa: E731
SCHEMES = [
    ("base (current)", [], "all"),
    ("(a) intensity centroid+moments", ["a_int"], "all"),
    ("(a) gradient centroid+moments", ["a_grad"], "all"),
    ("(a') mean-shift |I-mean| centre", ["a_ms"], "all"),
    ("(a) all three", ["a_int", "a_grad", "a_ms"], "all"),
    ("(b) vb corners 2.5,5", C4(2.5) + C4(5), "vb"),
    ("(b) vb shifts 2.5,5 + corners 2.5,5", S4(2.5) + S4(5) + C4(2.5) + C4(5), "vb"),
    ("(b) vb shifts 1..5 + corners 1.5..5", sum((S4(g) for g in SHIFT_G), []) + sum((C4(g) for g in CORNER_G), []), "vb"),
    ("(b) all shifts 2.5,5 + corners 2.5,5", S4(2.5) + S4(5) + C4(2.5) + C4(5), "all"),
    ("(c) all corners 3.5", C4(3.5), "all"),
    ("(c) all TL/BR 2.5,4.5", ["cTL2.5", "cBR2.5", "cTL4.5", "cBR4.5"], "all"),
    ("(c) all shifts 2 (difference set)", S4(2), "all"),
    ("(c) all corners 2.5,5", C4(2.5) + C4(5), "all"),
    ("(c) all corners 2,4", C4(2) + C4(4), "all"),
    ("(c) all corners 2.5,4.5", C4(2.5) + C4(4.5), "all"),
    ("(c) all corners 2.5,4.5 @256 [rec]", C4(2.5, "r") + C4(4.5, "r"), "all"),
    ("(c) all corners 1.5,3,4.5", C4(1.5) + C4(3) + C4(4.5), "all"),
    ("(d) fast all corners 2.5,4.5", C4(2.5, "f") + C4(4.5, "f"), "all"),
    ("(d) fast opp+same corners 2.5,4.5", C4(2.5, "f") + C4(4.5, "f"), "opp+same"),
    ("(d) fast all corners 1.5,3,4.5", C4(1.5, "F") + C4(3, "F") + C4(4.5, "F"), "all"),
    ("(d) fast opp+same corners 1.5,3,4.5", C4(1.5, "F") + C4(3, "F") + C4(4.5, "F"), "opp+same"),
]
SCHEMES_BY_LABEL = {lab: keys for lab, keys, _ in SCHEMES}
OPP = {"TL": "BR", "BR": "TL", "TR": "BL", "BL": "TR"}


def bits_u8(hexes):
    raw = np.frombuffer(b"".join(bytes.fromhex(h) for h in hexes), np.uint8).reshape(len(hexes), 32)
    return np.unpackbits(raw, axis=1)


def combos(keys, mode):
    S = ["base"] + keys
    if mode == "all":
        return [(a, b) for a in S for b in S]
    if mode == "opp+same":  # base vs anything; a corner vs the same corner (other step) or the opposite corner
        return [(a, b) for a in S for b in S if "base" in (a, b) or a[1:3] == b[1:3] and a != b or OPP[a[1:3]] == b[1:3]]
    return [("base", "base")] + [("base", k) for k in keys] + [(k, "base") for k in keys]


# ---------------------------------------------------------------- planted copies (benchmarks/near_duplicates.py)
def _encode(image, kind, quality=95):
    if kind == "jpg":
        return "x.jpg", cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()
    return "x.png", cv2.imencode(".png", image)[1].tobytes()


def variants(image, rng):
    """As benchmarks/near_duplicates.py `variants` (same draws, same order)."""
    h, w = image.shape[:2]
    s = rng.uniform(0.5, 1.5)
    resized = cv2.resize(image, (max(8, round(w * s)), max(8, round(h * s))),
                         interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
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


def extra_variants(image, rng):
    """Not in the benchmark (for caveats): the other two corners, one-side crops, one-axis shifts."""
    h, w = image.shape[:2]
    c = rng.uniform(0.01, 0.05)
    dx, dy = max(1, round(c * w)), max(1, round(c * h))
    crop_other = image[dy:, : w - dx] if rng.uniform() < 0.5 else image[: h - dy, dx:]
    side = int(rng.integers(4))
    crop_side = [image[:, dx:], image[:, : w - dx], image[dy:], image[: h - dy]][side]
    sx = rng.choice([-1, 1]) * dx if rng.uniform() < 0.5 else 0
    sy = 0 if sx else rng.choice([-1, 1]) * dy
    shift_axis = cv2.warpAffine(image, np.float32([[1, 0, sx], [0, 1, sy]]), (w, h), borderMode=cv2.BORDER_REPLICATE)
    return {"crop_other_corner": _encode(crop_other, "png"), "crop_one_side": _encode(crop_side, "png"),
            "shift_one_axis": _encode(shift_axis, "png")}


def gray_of(name, data):  # the scan's decode path
    return to_gray(read_image(Path(name), data=data).pixels) * 255.0


# ---------------------------------------------------------------- main
def sample(dsname, n):
    root = DS / dsname
    paths = pd.read_csv(root / "manifest.csv")["path"].tolist()
    sel = np.random.default_rng(0).choice(len(paths), n, replace=False)
    dup = pd.read_csv(root / "duplicates.csv")
    sha = dict(zip(dup["path"], dup["sha256"]))
    return root, [paths[i] for i in sorted(sel)], sha


def evaluate(dsname, n, rng):
    root, rels, sha = sample(dsname, n)
    orig, copies = [], {}
    for rel in rels:
        image = cv2.imread(str(root / rel), cv2.IMREAD_UNCHANGED)
        orig.append(all_hashes(gray_of(*_encode(image, "png"))))
        fams = variants(image, rng)
        second = variants(image, rng)  # a second crop and shift draw per image
        fams["crop#2"], fams["shift#2"] = second["crop"], second["shift"]
        fams.update(extra_variants(image, rng))
        for fam, (fname, data) in fams.items():
            copies.setdefault(fam.split("#")[0], []).append((len(orig) - 1, all_hashes(gray_of(fname, data))))
    log(f"# {dsname}: {len(rels)} originals hashed with copies, {time.perf_counter() - T0:.0f} s")
    names = list(orig[0])
    Ob = np.stack([bits_u8([h[k] for k in names]) for h in orig])  # (N, W, 256) bits
    O = Ob.astype(np.float32) * 2 - 1
    cache = {}
    ix = {k: i for i, k in enumerate(names)}
    # distinct images: one of each byte-identical group
    keys = [sha.get(r, r) for r in rels]
    keep = ~pd.Series(keys).duplicated(keep="first").to_numpy()
    log(f"# {dsname}: distinct {keep.sum()} of {len(rels)} (byte-identical left out: {(~keep).sum()})")
    Ok = O[keep]
    Nk = len(Ok)
    iu = np.triu_indices(Nk, 1)
    rows = []
    for label, skeys, mode in SCHEMES:
        rec = {}
        for fam, lst in copies.items():
            oi = np.array([o for o, _ in lst])
            if fam not in cache:
                cache[fam] = np.stack([bits_u8([h[k] for k in names]) for _, h in lst])
            Cb = cache[fam]
            d = np.full(len(lst), 999)
            for a, b in combos(skeys, mode):
                d = np.minimum(d, (Ob[oi, ix[a]] != Cb[:, ix[b]]).sum(1))
            rec[fam] = d
        F = np.full((Nk, Nk), 999.0, np.float32)
        for a, b in combos(skeys, mode):
            F = np.minimum(F, (256 - Ok[:, ix[a]] @ Ok[:, ix[b]].T) / 2)
        F = np.minimum(F, F.T)
        np.fill_diagonal(F, 999)
        pair = F[iu]
        rows.append((label, len(skeys), mode, rec, float(pair.min()), float(np.quantile(pair, 0.001)),
                     {t: float((F.min(1) <= t).mean()) for t in THRESHOLDS}))
    return rows



def report(dsname, rows):
    fams = ["crop", "shift", "jpeg", "resize", "brightness", "resize_back", "contrast", "png_jpeg", "gray_rgb"]
    extra = ["crop_other_corner", "crop_one_side", "shift_one_axis"]
    log(f"\n## {dsname}: recall per family at thresholds {THRESHOLDS}; distinct pairs: min, 0.1 % quantile,"
        " share of images flagged")
    for label, k, mode, rec, dmin, q, flag in rows:
        log(f"\n{label}  [K={k} extra hashes, {mode}, {len(combos(SCHEMES_BY_LABEL[label], mode))} ordered hash pairs]  distinct min {dmin:.0f}  q0.1% {q:.1f}  flagged "
            + " ".join(f"@{t}:{flag[t]:.4f}" for t in THRESHOLDS))
        for fam in fams + extra:
            d = rec[fam]
            log(f"   {fam:18s} n={len(d):4d} " + " ".join(f"@{t}:{(d <= t).mean():.3f}" for t in THRESHOLDS)
                + f"  max {d.max():.0f}" + ("  (not in benchmark)" if fam in extra else ""))
    # compact table
    log(f"\n## {dsname} compact: K, mode, ordered hash pairs compared | recall crop/shift @16,20,24,30 | min recall of jpeg,resize,brightness @16..30 | distinct min | flagged @20,24,30")
    for label, k, mode, rec, dmin, q, flag in rows:
        cs = " ".join(f"{(rec['crop'] <= t).mean():.3f}/{(rec['shift'] <= t).mean():.3f}" for t in THRESHOLDS)
        other = " ".join(f"{min((rec[f] <= t).mean() for f in ('jpeg', 'resize', 'brightness')):.3f}" for t in THRESHOLDS)
        log(f"{label:40s} K={k:2d} {mode:8s} {len(combos(SCHEMES_BY_LABEL[label], mode)):3d} | {cs} | {other} | {dmin:3.0f} q{q:5.1f} | "
            + " ".join(f"{flag[t]:.4f}" for t in (20, 24, 30)))


def full_fp(fn=None, title="recommended 9 hashes"):
    """Recommended scheme vs base over every image of both data sets (the Hamming index, all 9x9 pairs)."""
    fn = fn or fingerprints
    log(f"\n## full data sets: nearest DISTINCT image, base vs {title} (one index over all hashes of every image)")
    for dsname in ("chest_xray_kermany224", "blood_cells_pbc"):
        root = DS / dsname
        rels = pd.read_csv(root / "manifest.csv")["path"].tolist()
        dup = pd.read_csv(root / "duplicates.csv")
        sha = dict(zip(dup["path"], dup["sha256"]))
        keys = [sha.get(r, r) for r in rels]
        keep = ~pd.Series(keys).duplicated(keep="first").to_numpy()
        rels = [r for r, k in zip(rels, keep) if k]
        H = [fn(to_gray(read_image(root / r).pixels) * 255.0) for r in rels]
        n, m = len(H), len(H[0])
        for label, cols in (("base", [0]), (title, list(range(m)))):
            words = to_words([h[c] for h in H for c in cols])
            owner = np.repeat(np.arange(n), len(cols))
            i, j, d = close_pairs(words, 40)
            a, b = owner[i], owner[j]
            other = a != b
            best = np.full(n, 41)
            np.minimum.at(best, a[other], d[other])
            np.minimum.at(best, b[other], d[other])
            close = sorted({(min(x, y), max(x, y), int(dd)) for x, y, dd in zip(a[other], b[other], d[other]) if dd <= 30},
                           key=lambda t: t[2])[:6]
            log(f"{dsname} {label}: images {n}, nearest distinct min {best.min()}, "
                + " ".join(f"flagged@{t}: {(best <= t).mean():.5f} ({(best <= t).sum()})" for t in THRESHOLDS)
                + (f"; closest: " + "; ".join(f"{rels[x]} ~ {rels[y]} {dd}" for x, y, dd in close) if close else ""))
    log(f"# full FP done, {time.perf_counter() - T0:.0f} s")


def timing():
    cv2.setNumThreads(1)
    log("\n## fingerprint time per image (perf_counter, nice 19, cv2 single thread, best of 3 rounds)")
    for dsname, n in (("chest_xray_kermany224", 600), ("blood_cells_pbc", 400)):
        root, rels, _ = sample(dsname, n)
        grays = [to_gray(read_image(root / r).pixels) * 255.0 for r in rels]
        big = [cv2.resize(g, (2048, 2048), interpolation=cv2.INTER_LINEAR) for g in grays[:20]]
        for label, fn in (("base fingerprint", fingerprint), ("fast K=8 (9 hashes)", fingerprints_fast),
                          ("fast K=12 (13 hashes)", lambda g: fingerprints_fast(g, (0.015, 0.03, 0.045))),
                          ("cv2 crops K=8 @256 (9 hashes)", fingerprints),
                          ("cv2 crops K=8 full res", lambda g: fingerprints(g, side=10 ** 9)),
                          ("decode (read_image+to_gray)", None)):
            for tag, imgs in (("", grays), (" [2048 px upscaled]", big)):
                best = 1e9
                for _ in range(3):
                    t = time.perf_counter()
                    if fn is None:
                        if tag:
                            continue
                        for r in rels:
                            to_gray(read_image(root / r).pixels)
                    else:
                        for g in imgs:
                            fn(g)
                    best = min(best, (time.perf_counter() - t) / len(imgs))
                if best < 1e9:
                    log(f"{dsname:22s} {label:30s}{tag:20s} {best * 1e3:7.3f} ms/image")
    cv2.setNumThreads(-1)


def main():
    log(__doc__)
    # sanity: the recommended function equals the experiment's @256 windows and the base is the current hash
    for dsname in ("chest_xray_kermany224", "blood_cells_pbc"):
        root, rels, _ = sample(dsname, 5)
        for r in rels:
            g = to_gray(read_image(root / r).pixels) * 255.0
            h = all_hashes(g)
            assert fingerprints(g) == [h["base"]] + [h[f"r{c}{s}"] for s in (2.5, 4.5) for c in ("TL", "BR", "TR", "BL")]
            assert h["base"] == fingerprint(g)
    log("# sanity: fingerprints() == the @256 windows; base == pipeline fingerprint")
    rng = np.random.default_rng(0)
    for dsname, n in (("chest_xray_kermany224", 600), ("blood_cells_pbc", 400)):
        report(dsname, evaluate(dsname, n, rng))
        log(f"# {time.perf_counter() - T0:.0f} s")
    full_fp(fingerprints_fast, "fast K=8 (corners 2.5 %, 4.5 %), all pairs")
    full_fp(lambda g: fingerprints_fast(g, (0.015, 0.03, 0.045)), "fast K=12 (corners 1.5 %, 3 %, 4.5 %), all pairs")
    timing()
    log(f"\n# total {time.perf_counter() - T0:.0f} s")


if __name__ == "__main__" and "--addendum" not in sys.argv:
    main()


# ---------------------------------------------------------------- addendum: cheaper crops (smaller intermediate copy)
def addendum():
    """Recall and cost of fingerprints() with the crops taken from a <= side px copy: side 128, 160, 256, full."""
    log("\n## addendum: fingerprints(gray, steps, side): crops from a <= side px area-resized copy (base always full res)")
    log("   families: crop, shift (benchmark draws), crop_other_corner, crop+resize (crop then 0.5-1.5x), crop+jpeg(q60-95)")
    configs = [(kind, steps, side) for steps in ((0.025, 0.045), (0.015, 0.03, 0.045))
               for kind, side in (("cv2", 256), ("fast", 512), ("fast", 128))]
    FN = {"cv2": fingerprints, "fast": fingerprints_fast}
    rng = np.random.default_rng(7)
    for dsname, n in (("chest_xray_kermany224", 600), ("blood_cells_pbc", 400)):
        root, rels, _ = sample(dsname, n)
        res = {cfg: {} for cfg in configs}
        for rel in rels:
            image = cv2.imread(str(root / rel), cv2.IMREAD_UNCHANGED)
            h, w = image.shape[:2]
            fams = {}
            for k in range(2):
                v = variants(image, rng)
                fams[f"crop#{k}"], fams[f"shift#{k}"] = v["crop"], v["shift"]
            fams["crop_other_corner"] = extra_variants(image, rng)["crop_other_corner"]
            c = rng.uniform(0.01, 0.05)
            dx, dy = max(1, round(c * w)), max(1, round(c * h))
            crop = image[dy:, dx:] if rng.uniform() < 0.5 else image[: h - dy, : w - dx]
            s = rng.uniform(0.5, 1.5)
            fams["crop+resize"] = _encode(cv2.resize(crop, (max(8, round(crop.shape[1] * s)), max(8, round(crop.shape[0] * s))),
                                                     interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR), "png")
            fams["crop+jpeg"] = _encode(crop, "jpg", int(rng.integers(60, 96)))
            g0 = gray_of(*_encode(image, "png"))
            grays = {f: gray_of(*d) for f, d in fams.items()}
            for kind, steps, side in configs:
                A = to_words(FN[kind](g0, steps, side))
                for f, g in grays.items():
                    B = to_words(FN[kind](g, steps, side))
                    d = int(np.bitwise_count(A[:, None, :] ^ B[None, :, :]).sum(-1).min())
                    res[(kind, steps, side)].setdefault(f.split("#")[0], []).append(d)
        for (kind, steps, side), r in res.items():
            log(f"{dsname:22s} {kind} steps {steps} side {side}: "
                + "  ".join(f"{f} " + "/".join(f"{(np.array(v) <= t).mean():.3f}" for t in THRESHOLDS) for f, v in r.items()))
        log(f"# {time.perf_counter() - T0:.0f} s")
    cv2.setNumThreads(1)
    for dsname, n in (("chest_xray_kermany224", 300), ("blood_cells_pbc", 200)):
        root, rels, _ = sample(dsname, n)
        grays = [to_gray(read_image(root / r).pixels) * 255.0 for r in rels]
        big = [cv2.resize(g, (2048, 2048), interpolation=cv2.INTER_LINEAR) for g in grays[:20]]
        for tag, imgs in (("native", grays), ("2048 px", big)):
            line = []
            for label, fn in [("base", fingerprint)] + [(f"{kd} K={4 * len(st)} side {sd}",
                                                          (lambda g, kd=kd, st=st, sd=sd: FN[kd](g, st, sd))) for kd, st, sd in configs]:
                best = 1e9
                for _ in range(3):
                    t = time.perf_counter()
                    for g in imgs:
                        fn(g)
                    best = min(best, (time.perf_counter() - t) / len(imgs))
                line.append(f"{label}: {best * 1e3:.3f}")
            log(f"{dsname:22s} {tag:7s} ms/image  " + "  ".join(line))
    log("(recall columns: @16/@20/@24/@30)")
    log(f"# addendum total {time.perf_counter() - T0:.0f} s")


if __name__ == "__main__" and "--addendum" in sys.argv:
    addendum()
