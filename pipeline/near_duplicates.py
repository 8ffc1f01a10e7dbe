"""Near-duplicate images: a perceptual fingerprint per image and groups of near-copies, without all pairs.

The fingerprint is a 256-bit DCT perceptual hash (pHash) of the image's luminance, made from the
pixels the scan already decoded: halved by 2x2 means while at least 128 px a side, area-resize to 32x32,
2-D DCT, the 16x16 lowest frequencies (DC swapped for the next coefficient) compared with their median,
as bits in a fixed shuffled order (BIT_ORDER). 64 bits (the usual 8x8 pHash) cannot
tell apart different patients' chest X-rays, 256 can (benchmarks/near_duplicates.py). Luminance
makes gray and RGB copies alike; the median makes it blind to brightness and contrast; the low
frequencies survive resizing, JPEG and small crops (benchmarks/near_duplicates.py measures it).

Grouping finds every pair within a Hamming distance `threshold` with multi-index hashing: the 256
bits are cut into 16 bands of 16; two hashes within `threshold` agree in at least one band up to
`threshold // 16` bits (pigeonhole), so per band the hashes meet those whose band key differs by at most that
radius, in a merge join of both sides sorted by key (`close_pairs`: compiled with numba, one thread per band
up to the CPUs). Only those candidates are verified. Pairs become groups by union-find (transitive).

Crops and shifts of a few percent move a global hash farther than another patient's image, so each image
also keeps the fingerprints of 40 windows (`window_fingerprints`), each hashed as `fingerprint` hashes, from an
area-reduced copy of at most 64 px through three matrix products: 20 corner windows, with strips of 1, 2, 3, 4
and 5 % of the height and width cut off at two sides (top+left, bottom+right, top+right, bottom+left), and 20
edge windows, with a strip of those sizes cut off at one side (top, bottom, left, right). A crop of B from A
(at a corner or from one side) is A's window against B's whole image. A diagonal shift by d is A's window
without one corner's strips against B's window without the opposite corner's, of the same size: the rest of
both is the same pixels. A shift along one axis is the same with opposite edges (without the left strip
against without the right one). Two images are near when the closest of those combinations
(`combined_distance`) is within the threshold. Window combinations are searched by exact band matches
(radius 0): every combination within 15 bits is found, a farther one when one of its 16 bands agrees (with
the bits shuffled, 0.9994 of those within 20; measured in benchmarks/near_duplicates.py).

Images under 32 px a side (28 px MedMNIST) are upsampled for the hash and have fewer real frequencies than
its 16x16, so a resized copy of one lies farther off: a pair with such an image counts within
`small_threshold` (`small_images`, `near_pairs`).
"""

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations
from typing import NamedTuple

import cv2
import numpy as np

log = logging.getLogger(__name__)

HASH_BITS = 256
WORDS = HASH_BITS // 64
BAND_BITS = 16
BANDS = HASH_BITS // BAND_BITS
MAX_THRESHOLD = BANDS * 4 - 1  # radius 3 per band (697 probes); beyond that the index stops paying


def _dct_rows(n: int, rows: int) -> np.ndarray:
    """The first `rows` rows of the orthonormal DCT-II matrix of size n (cv2.dct's scaling)."""
    k, x = np.mgrid[0:rows, 0:n]
    basis = np.cos(np.pi * (2 * x + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    basis[0] /= np.sqrt(2.0)
    return basis.astype(np.float32)


_DCT17 = _dct_rows(32, 17)

WINDOW_LEVELS = (0.01, 0.02, 0.03, 0.04, 0.05)  # strips cut off, as fractions of the height and width
SMALL_SIDE = 32  # images under this many px a side have fewer real frequencies than the hash's 16x16 (upsampled)
WINDOW_SIDE = 64  # windows are taken from an area-reduced copy of at most this many pixels a side
CORNERS = ("TL", "BR", "TR", "BL")  # the corner whose two strips a window cuts off; BR is TL's opposite
EDGES = ("T", "B", "L", "R")  # the side whose one strip an edge window cuts off (a crop from one side)
N_CORNER_WINDOWS = len(CORNERS) * len(WINDOW_LEVELS)  # windows 0..19: level k // 4, corner CORNERS[k % 4]
N_WINDOWS = N_CORNER_WINDOWS + len(EDGES) * len(WINDOW_LEVELS)  # 20..39: level (k - 20) // 4, EDGES[k % 4]
# The hash's bits are the coefficients in this fixed shuffled order: the bits a shift changes touch every row
# of frequencies, and shuffled they fall into the 16 index bands at random, so an exact band match finds a
# window combination within 20 bits with probability 0.9994 (within 15: always). Written out (it was drawn
# once with np.random.default_rng(256).permutation(256)): a generator's stream may change between NumPy
# versions, and hashes of another order would silently stop matching cached ones.
BIT_ORDER = np.frombuffer(
    bytes.fromhex(
        "b66e0d7b2e5ffa70b9d06458a7cc530e14c631f8e485cbf1e52f490ca8ebf6fb631a3cc837ce398e748830f2354b199f61215ab486b7a06965"
        "2cd27fdc47547898e32446262310acaa4391ec83091b183327dbbe50d984f7ee8a284da1e7b105086c724e447781ef2dc05e4a0abc800f93b0c5"
        "8f349ae9d4abd76a1c114f25df75c73aa336e6d6221713e2ca8c6f04126829da3876b8ff5b520bfcd55187425cc9c4027a20ad01d396cd326716"
        "f5a560485979cf719c0340733f061595c2c38d622ba655edba99e89bc13b66bd3edd6d7dfe2aaf9d41a400bb8b9e5db2a256aee094d1f9a9e189"
        "978245b507eafd7c57f33ddeb36b92bf7e1f1df4d8f04c901e"
    ),
    np.uint8,
).astype(np.intp)
# Where hash bit k comes from in a DCT block of 17x16 (row-major): the 16x16 lowest frequencies in BIT_ORDER, the
# DC swapped for (16, 0) (the DC only says how bright the image is, the median already takes that out)
_BLOCK_BITS = np.r_[16 * 16, np.arange(1, 16 * 16)][BIT_ORDER]
VERSION = 3  # of the fingerprints: a scan cache of another version is scanned again
# Window pairs compared between two images, per level: opposite corners (a diagonal shift leaves the same
# pixels in one image's window without the top-left strips and the other's without the bottom-right ones) and
# opposite edges (a shift along one axis: without the left strip against without the right one). Each pair is
# compared both ways round.
PAIRINGS = [
    (base + 4 * level + a, base + 4 * level + b)
    for level in range(len(WINDOW_LEVELS))
    for base in (0, N_CORNER_WINDOWS)
    for a, b in ((0, 1), (2, 3))  # TL-BR, TR-BL; T-B, L-R
]
_FIRST = np.array([a for a, b in PAIRINGS] + [b for a, b in PAIRINGS])
_SECOND = np.array([b for a, b in PAIRINGS] + [a for a, b in PAIRINGS])


def _area_rows(n: int, lo: float, hi: float, out: int = 32) -> np.ndarray:
    """(out, n) weights averaging `out` equal bins over the fractions [lo, hi) of n pixels (INTER_AREA's)."""
    edges = np.linspace(lo * n, hi * n, out + 1)
    p = np.arange(n + 1, dtype=np.float64)
    overlap = np.minimum(edges[1:, None], p[None, 1:]) - np.maximum(edges[:-1, None], p[None, :-1])
    return (np.clip(overlap, 0, None) / np.diff(edges)[:, None]).astype(np.float32)


@lru_cache(maxsize=16)
def _window_mats(h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The operators of every window (area average to 32 bins, then the low DCT) and where window k's block is.

    Spans 0..4 cut a strip of each level at the start (top or left), 5..9 at the end, 10 is the whole side.
    Returns the row operators of all 11 spans, (11 * 17, h); per cut row span its three column spans side by
    side (the same cut, the other end's, the whole width), (10, w, 48); the ten cut column spans side by side
    (for the whole height), (w, 160); and the 40 windows' indexes into the blocks the two products give.
    """
    n = len(WINDOW_LEVELS)
    spans = [(g, 1.0) for g in WINDOW_LEVELS] + [(0.0, 1.0 - g) for g in WINDOW_LEVELS] + [(0.0, 1.0)]
    rows = np.concatenate([_DCT17 @ _area_rows(h, lo, hi) for lo, hi in spans])
    cols = [(_DCT17[:16] @ _area_rows(w, lo, hi)).T for lo, hi in spans]
    triples = np.stack([np.concatenate([cols[i], cols[(i + n) % (2 * n)], cols[2 * n]], axis=1) for i in range(2 * n)])
    full_height = np.concatenate(cols[: 2 * n], axis=1)
    # block 3 r + s: row span r with its same-end (s 0), other-end (1) or whole (2) columns; 30 + c: whole height
    corners = [[3 * i, 3 * (n + i), 3 * i + 1, 3 * (n + i) + 1] for i in range(n)]  # TL, BR, TR, BL
    edges = [[3 * i + 2, 3 * (n + i) + 2, 6 * n + i, 7 * n + i] for i in range(n)]  # T, B, L, R
    return rows, triples, full_height, np.array(corners + edges).ravel()


def _reduced(gray: np.ndarray) -> np.ndarray:
    """The image halved by area averaging while its short side is >= 128 px: the cheap first step of the area
    reductions below (OpenCV's area resize by an exact factor of 2 is several times faster than by others; an
    odd side is averaged the slower way, not cropped: a crop of one pixel moved hashes by up to 26 bits)."""
    small: np.ndarray = np.asarray(gray, np.float32)
    while min(small.shape) >= 2 * WINDOW_SIDE:
        h, w = small.shape
        small = cv2.resize(small, ((w + 1) // 2, (h + 1) // 2), interpolation=cv2.INTER_AREA)
    return small


def _whole(small: np.ndarray) -> str:
    """The fingerprint of a (reduced) image: area average to 32x32, DCT, the lowest 16x16 against their median."""
    small = cv2.resize(small, (32, 32), interpolation=cv2.INTER_AREA)
    block = _DCT17 @ small @ _DCT17[:16].T  # the 2-D DCT's 17x16 lowest frequencies (as cv2.dct, 3x faster)
    return _bits(block.reshape(1, -1))


def _windows(small: np.ndarray) -> str:
    """The window fingerprints of a (reduced) image, from an area copy of at most WINDOW_SIDE px a side."""
    h, w = small.shape
    size = (min(w, WINDOW_SIDE), min(h, WINDOW_SIDE))
    small = small if size == (w, h) else cv2.resize(small, size, interpolation=cv2.INTER_AREA)
    rows, triples, full_height, at = _window_mats(size[1], size[0])
    spans = rows @ small  # (11 * 17, w): each row span, area averaged and DCT'd down the columns
    cut = np.matmul(spans[:-17].reshape(len(triples), 17, size[0]), triples)  # (10, 17, 3 x 16)
    whole = spans[-17:] @ full_height  # (17, 10 x 16)
    blocks = np.concatenate(
        [
            cut.reshape(-1, 17, 3, 16).transpose(0, 2, 1, 3).reshape(-1, 17, 16),
            whole.reshape(17, -1, 16).transpose(1, 0, 2),
        ]
    )
    return _bits(blocks[at].reshape(N_WINDOWS, -1))


def _bits(blocks: np.ndarray) -> str:
    """The hashes of (n, 17 x 16) DCT blocks, as hex: each coefficient of the 16x16 block (DC swapped for (16, 0))
    against the block's median, in BIT_ORDER."""
    low = blocks[:, _BLOCK_BITS]
    mid = np.sort(low, axis=1)  # faster than np.partition for 256 values
    return np.packbits(low > (mid[:, 127:128] + mid[:, 128:129]) / 2, axis=1).tobytes().hex()


def fingerprints(gray: np.ndarray) -> tuple[str, str]:
    """The image's fingerprint and its windows' (see the module's docstring), from one reduction.

    Args:
        gray: (H, W) luminance, any scale (the scan passes float32 on 0-255).

    Returns:
        (fingerprint: 64 hex digits, windows: N_WINDOWS (40) x 64 hex digits, window k at [64 k, 64 k + 64):
        k < 20 level k // 4, corner CORNERS[k % 4]; k >= 20 level (k - 20) // 4, edge EDGES[k % 4]);
        ("", "") when the image is empty.
    """
    if gray.size == 0:
        return "", ""
    small = _reduced(gray)
    return _whole(small), _windows(small)


def fingerprint(gray: np.ndarray) -> str:
    """The 256-bit perceptual hash of a luminance image, as 64 hex digits.

    Args:
        gray: (H, W) luminance, any scale (the scan passes float32 on 0-255).

    Returns:
        64 lowercase hex digits; "" when the image is empty.
    """
    return _whole(_reduced(gray)) if gray.size else ""


def window_fingerprints(gray: np.ndarray) -> str:
    """The fingerprints of the image's 20 corner and 20 edge windows, as one hex string (fingerprints' second half).

    Args:
        gray: (H, W) luminance, any scale.

    Returns:
        N_WINDOWS (40) x 64 lowercase hex digits; "" when the image is empty.
    """
    return _windows(_reduced(gray)) if gray.size else ""


def to_words(hashes: "list[str] | np.ndarray") -> np.ndarray:
    """Hex fingerprints as an (N, 4) uint64 array (callers drop empty ones first).

    Args:
        hashes: 64-hex-digit fingerprints, none empty.

    Returns:
        (N, 4) uint64, big-endian words of each hash.
    """
    raw = b"".join(bytes.fromhex(h) for h in hashes)
    return np.frombuffer(raw, dtype=">u8").astype(np.uint64).reshape(len(hashes), WORDS)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances between rows of (N, 4) uint64 arrays (broadcasting).

    Args:
        a: (..., 4) uint64 fingerprints.
        b: (..., 4) uint64 fingerprints, broadcast against `a`.

    Returns:
        int64 bit counts over the last axis.
    """
    return np.bitwise_count(np.bitwise_xor(a, b)).sum(axis=-1).astype(np.int64)


def _probe_masks(radius: int) -> np.ndarray:
    """All 16-bit masks with at most `radius` bits set."""
    masks = [0]
    for r in range(1, radius + 1):
        masks += [sum(1 << b for b in bits) for bits in combinations(range(BAND_BITS), r)]
    return np.array(masks, dtype=np.int64)


def _band(words: np.ndarray, band: int) -> np.ndarray:
    word, part = divmod(band, 64 // BAND_BITS)
    return ((words[:, word] >> np.uint64(part * BAND_BITS)) & np.uint64(0xFFFF)).astype(np.int64)


class Pairs(NamedTuple):
    """Pairs of rows within a distance (Hamming, or combined with windows): row indexes on either side and their
    distances (int64)."""

    left: np.ndarray
    right: np.ndarray
    distance: np.ndarray


def search_threads() -> int:
    """Threads the band searches run on: the CPUs this process may use by affinity (at most one per band; a
    container's CPU quota is not read)."""
    return max(1, min(BANDS, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def close_pairs(
    hashes: np.ndarray,
    threshold: int,
    others: np.ndarray | None = None,
    radius: int | None = None,
    threads: int | None = None,
    per: int = 0,
) -> Pairs:
    """Every pair of fingerprints within `threshold` bits, by multi-index hashing (never all pairs).

    The bands are searched in parallel threads by a compiled kernel (numba). Memory: each running thread
    holds its band's sorted copies of the queries and the table (32 bytes a fingerprint, 8 more for the row
    order), so about 80 bytes x N x threads for a self-join, plus the pairs found; candidates looked at are
    never stored.

    Args:
        hashes: (N, 4) uint64 fingerprints (the queries).
        threshold: the largest Hamming distance that counts (0 .. MAX_THRESHOLD when `radius` is None).
        others: (M, 4) uint64 fingerprints to search; None: `hashes` against itself (pairs i < j).
        radius: bits probed per band; None: threshold // 16, which finds every pair (smaller finds those
            with a band that close, faster).
        threads: threads to search with; None: search_threads().
        per: when > 0, query q belongs to row q // per of `others`, and that pair is left out (an image's own
            windows against the images).

    Returns:
        (left, right, distance): left indexes `hashes`, right `others` (or `hashes`), each pair once, sorted.

    Raises:
        ValueError: `threshold` is outside 0 .. MAX_THRESHOLD (radius None).
    """
    if radius is None:
        if not 0 <= threshold <= MAX_THRESHOLD:
            raise ValueError(f"threshold must be 0..{MAX_THRESHOLD}, got {threshold}")
        radius = threshold // BANDS
    self_join = others is None
    queries = np.ascontiguousarray(hashes, dtype=np.uint64)
    table = queries if self_join else np.ascontiguousarray(others, dtype=np.uint64)
    empty = np.zeros(0, np.int64)
    if len(queries) == 0 or len(table) == 0:
        return Pairs(empty, empty, empty)
    from pipeline.band_join import band_join  # numba, loaded when a search runs (serving never does)

    masks = _probe_masks(radius)

    def search(band: int) -> np.ndarray:
        sorted_rows = []
        for rows in (queries, table):
            keys = _band(rows, band)
            order = np.argsort(keys.astype(np.uint16), kind="stable")  # a radix sort for 16-bit keys
            starts = np.zeros((1 << BAND_BITS) + 1, np.int64)
            np.cumsum(np.bincount(keys, minlength=1 << BAND_BITS), out=starts[1:])
            sorted_rows.append((np.take(rows, order, axis=0), starts, order))  # take: 4x faster than rows[order]
        (q, qstarts, qorder), (t, starts, order) = sorted_rows
        qkeys = np.flatnonzero(np.diff(qstarts))
        return band_join(q, qkeys, qstarts, qorder, t, starts, order, masks, band, radius, threshold, self_join, per)

    with ThreadPoolExecutor(threads or search_threads()) as pool:
        found = np.concatenate(list(pool.map(search, range(BANDS))))
    found = found[np.lexsort((found[:, 1], found[:, 0]))]
    return Pairs(found[:, 0], found[:, 1], found[:, 2])


def union_find(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected components of n items joined by the pairs (i, j): a group number per item (its smallest
    member's index).

    Args:
        n: The number of items.
        i: One end of each pair (item indexes).
        j: The other end of each pair.

    Returns:
        int64 component id per item: the smallest index in its component.
    """
    parent = np.arange(n)

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    for a, b in zip(i.tolist(), j.tolist()):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([find(x) for x in range(n)], dtype=np.int64)


def window_words(windows: "list[str] | np.ndarray") -> np.ndarray:
    """Hex window fingerprints (window_fingerprints) as an (N, N_WINDOWS, 4) uint64 array (none empty).

    Args:
        windows: one window_fingerprints string per image.

    Returns:
        (N, N_WINDOWS, 4) uint64.
    """
    raw = bytes.fromhex("".join(windows))
    return np.frombuffer(raw, dtype=">u8").astype(np.uint64).reshape(len(windows), N_WINDOWS, WORDS)


def combined_distance(base_a: np.ndarray, wins_a: np.ndarray, base_b: np.ndarray, wins_b: np.ndarray) -> np.ndarray:
    """The distance of two images: the closest of whole against whole, whole against any window (either way),
    and each window against its partners of the same level (PAIRINGS, either way; see the module's docstring).

    Args:
        base_a: (..., 4) uint64 fingerprints.
        wins_a: (..., N_WINDOWS, 4) their window fingerprints.
        base_b: (..., 4) the other images' fingerprints (broadcast against a's).
        wins_b: (..., N_WINDOWS, 4) their window fingerprints.

    Returns:
        int64 distances.
    """
    d = hamming(base_a, base_b)
    d = np.minimum(d, hamming(base_a[..., None, :], wins_b).min(axis=-1))
    d = np.minimum(d, hamming(wins_a, base_b[..., None, :]).min(axis=-1))
    return np.minimum(d, hamming(wins_a[..., _FIRST, :], wins_b[..., _SECOND, :]).min(axis=-1))


def _window_candidates(base: np.ndarray, wins: np.ndarray, threshold: int) -> tuple[np.ndarray, np.ndarray]:
    """Image pairs (i < j) with a whole-window or window-window combination that shares a band exactly and is
    within `threshold`: one search of every window against every whole image, and one per pairing (all images
    on both sides, so each pairing is searched both ways round)."""
    n = len(base)
    t, a, _ = close_pairs(wins.reshape(n * N_WINDOWS, WORDS), threshold, base, radius=0, per=N_WINDOWS)  # any window
    left, right = [a], [t // N_WINDOWS]  # ... against the whole of another image
    for first, second in PAIRINGS:
        i, j, _ = close_pairs(wins[:, first], threshold, wins[:, second], radius=0, per=1)
        left.append(i)
        right.append(j)
    i, j = np.concatenate(left), np.concatenate(right)
    i, j = np.minimum(i, j)[i != j], np.maximum(i, j)[i != j]
    key = np.unique(i * n + j)
    return key // n, key % n


def small_images(width: "np.ndarray | list[int]", height: "np.ndarray | list[int]") -> np.ndarray:
    """Which images are smaller than the hash's resolution (SMALL_SIDE px on their short side).

    Args:
        width: Image widths in pixels.
        height: Image heights in pixels (0 for an unreadable image, which is not counted).

    Returns:
        (N,) bool.
    """
    short = np.minimum(np.asarray(width, np.int64), np.asarray(height, np.int64))
    return (short > 0) & (short < SMALL_SIDE)


def near_pairs(
    hashes: np.ndarray,
    threshold: int,
    wins: np.ndarray | None = None,
    small: np.ndarray | None = None,
    small_threshold: int | None = None,
    block: int = 20_000,
) -> Pairs:
    """Image pairs (i < j) within `threshold`: by whole fingerprints (every such pair), and with windows by
    their combined distance (see the module's docstring); a pair with a small image within `small_threshold`.

    Args:
        hashes: (N, 4) uint64 fingerprints.
        threshold: the largest distance that counts (0 .. MAX_THRESHOLD).
        wins: (N, N_WINDOWS, 4) their window fingerprints, or None for whole images only.
        small: (N,) bool, the images under SMALL_SIDE px a side (small_images), or None.
        small_threshold: the largest distance of a pair with a small image (None or below `threshold`:
            `threshold`).
        block: pairs whose combined distance is computed at a time.

    Returns:
        (left, right, distance), each pair once, sorted; distance the combined one when windows are given.
    """
    n = len(hashes)
    is_small = np.zeros(n, bool) if small is None else np.asarray(small, bool)
    loose = small_threshold if is_small.any() and (small_threshold or 0) > threshold else None
    if loose is not None and is_small.all():  # every pair has a small image
        found = [close_pairs(hashes, loose)]
    else:
        found = [close_pairs(hashes, threshold)]
    if loose is not None and not is_small.all():  # each pair with a small image within the looser threshold
        rows = np.flatnonzero(is_small)
        a, b, d = close_pairs(hashes[rows], loose, others=hashes)  # the small ones as queries
        a = rows[a]
        found.append(Pairs(np.minimum(a, b)[a != b], np.maximum(a, b)[a != b], d[a != b]))
    if wins is not None and n > 1:
        found.append(Pairs(*_window_candidates(hashes, wins, loose or threshold), np.zeros(0, np.int64)))
    key, first = np.unique(np.concatenate([p.left * n + p.right for p in found]), return_index=True)
    i, j = key // n, key % n
    if wins is None or n < 2:
        return Pairs(i, j, np.concatenate([p.distance for p in found])[first])
    d = np.concatenate(
        [combined_distance(hashes[i[s]], wins[i[s]], hashes[j[s]], wins[j[s]]) for s in _slices(len(i), block)]
        or [np.zeros(0, np.int64)]
    )
    limit = threshold if loose is None else np.where(is_small[i] | is_small[j], loose, threshold)
    keep = d <= limit
    return Pairs(i[keep], j[keep], d[keep])


def _slices(n: int, block: int) -> list[slice]:
    return [slice(k, min(n, k + block)) for k in range(0, n, block)]


def parse(fingerprints: "list[str] | np.ndarray", windows: "list[str] | np.ndarray | None") -> tuple:
    """The rows that have a fingerprint, their words, and their windows' words (None, with a warning, when not
    all of those rows have them: then only whole images are compared).

    Args:
        fingerprints: one hex fingerprint per row ("" for unreadable images).
        windows: one window_fingerprints string per row, or None.

    Returns:
        (row indexes, (n, 4) words, (n, N_WINDOWS, 4) words or None).
    """
    fps = np.asarray(fingerprints, dtype=object)
    rows = np.flatnonzero(fps != "")
    hashes = to_words(list(fps[rows]))
    if windows is None:
        return rows, hashes, None
    wins = np.asarray(windows, dtype=object)[rows]
    missing = sum(not isinstance(w, str) or len(w) != 64 * N_WINDOWS for w in wins)
    if missing:
        log.warning("%d of %d images lack window fingerprints: crops and shifts not compared", missing, len(wins))
        return rows, hashes, None
    return rows, hashes, window_words(list(wins))


@dataclass(frozen=True)
class Groups:
    """Near-duplicate groups of a table's rows: a group id per row (-1: no near copy), and the pairs."""

    group: np.ndarray  # per row; -1 for rows without a near copy (or without a fingerprint)
    pairs: Pairs  # row i, row j, distance


def find_groups(
    fingerprints: "list[str] | np.ndarray",
    threshold: int,
    windows: "list[str] | np.ndarray | None" = None,
    small: "np.ndarray | None" = None,
    small_threshold: int | None = None,
) -> Groups:
    """Near-duplicate groups (transitive) among hex fingerprints; rows with "" take part in none.

    Args:
        fingerprints: one hex fingerprint per row ("" for unreadable images).
        threshold: the largest distance of a near copy.
        windows: one window_fingerprints string per row (crops and shifts are found too), or None.
        small: per row, whether the image is under SMALL_SIDE px a side (small_images), or None.
        small_threshold: the largest distance of a near copy when either image is small.

    Returns:
        The groups: the group id of each row is the index of its first row, -1 when alone.
    """
    rows, hashes, wins = parse(fingerprints, windows)
    i, j, d = near_pairs(
        hashes, threshold, wins, None if small is None else np.asarray(small, bool)[rows], small_threshold
    )
    comp = union_find(len(rows), i, j)
    sizes = np.bincount(comp, minlength=len(rows)) if len(rows) else np.zeros(0, np.int64)
    group = np.full(len(fingerprints), -1, dtype=np.int64)
    group[rows] = np.where(sizes[comp] > 1, rows[comp], -1) if len(rows) else []
    return Groups(group, Pairs(rows[i], rows[j], d))
