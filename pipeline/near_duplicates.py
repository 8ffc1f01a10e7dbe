"""Near-duplicate images: a perceptual fingerprint per image and groups of near-copies, without all pairs.

The fingerprint is a 256-bit DCT perceptual hash (pHash) of the image's luminance, made from the
pixels the scan already decoded: area-resize to 32x32, 2-D DCT, the 16x16 lowest frequencies (DC
swapped for the next coefficient) compared with their median. 64 bits (the usual 8x8 pHash) cannot
tell apart different patients' chest X-rays, 256 can (benchmarks/near_duplicates.py). Luminance
makes gray and RGB copies alike; the median makes it blind to brightness and contrast; the low
frequencies survive resizing, JPEG and small crops (benchmarks/near_duplicates.py measures it).

Grouping finds every pair within a Hamming distance `threshold` with multi-index hashing: the 256
bits are cut into 16 bands of 16; two hashes within `threshold` agree in at least one band up to
`threshold // 16` bits (pigeonhole), so each band's neighbours within that radius are looked up in a
direct-address table of 65,536 buckets, and only those candidates are verified. Pairs become groups
by union-find (transitive).
"""

from dataclasses import dataclass
from itertools import combinations
from typing import NamedTuple, cast

import cv2
import numpy as np

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


def fingerprint(gray: np.ndarray) -> str:
    """The 256-bit perceptual hash of a luminance image, as 64 hex digits.

    Args:
        gray: (H, W) luminance, any scale (the scan passes float32 on 0-255).

    Returns:
        64 lowercase hex digits; "" when the image is empty.
    """
    if gray.size == 0:
        return ""
    small = cv2.resize(np.asarray(gray, np.float32), (32, 32), interpolation=cv2.INTER_AREA)
    block = _DCT17 @ small @ _DCT17[:16].T  # the 2-D DCT's 17x16 lowest frequencies (as cv2.dct, 3x faster)
    low = block[:16].ravel()
    low[0] = block[16, 0]  # the 16x16 block, DC swapped for (16, 0)
    mid = np.partition(low, (127, 128))  # the median, a third of np.median's time
    return np.packbits(low > (mid[127] + mid[128]) / 2).tobytes().hex()


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
    """Pairs of rows within a Hamming distance: row indexes on either side and their distances (int64)."""

    left: np.ndarray
    right: np.ndarray
    distance: np.ndarray


def close_pairs(hashes: np.ndarray, threshold: int, others: np.ndarray | None = None, block: int = 2_000_000) -> Pairs:
    """Every pair of fingerprints within `threshold` bits, by multi-index hashing (never all pairs).

    Args:
        hashes: (N, 4) uint64 fingerprints (the queries).
        threshold: the largest Hamming distance that counts (0 .. MAX_THRESHOLD).
        others: (M, 4) uint64 fingerprints to search; None: `hashes` against itself (pairs i < j).
        block: candidate pairs verified at a time (bounds the memory).

    Returns:
        (left, right, distance): left indexes `hashes`, right `others` (or `hashes`), each pair once.

    Raises:
        ValueError: `threshold` is outside 0 .. MAX_THRESHOLD.
    """
    if not 0 <= threshold <= MAX_THRESHOLD:
        raise ValueError(f"threshold must be 0..{MAX_THRESHOLD}, got {threshold}")
    self_join = others is None
    table = cast(np.ndarray, hashes if self_join else others)  # others is set unless self_join
    empty = np.zeros(0, np.int64)
    if len(hashes) == 0 or len(table) == 0:
        return Pairs(empty, empty, empty)
    masks = _probe_masks(threshold // BANDS)
    qcols = [np.ascontiguousarray(hashes[:, w]) for w in range(WORDS)]
    tcols = qcols if self_join else [np.ascontiguousarray(table[:, w]) for w in range(WORDS)]
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for band in range(BANDS):
        keys, qkeys = _band(table, band), _band(hashes, band)
        order = np.argsort(keys, kind="stable")
        counts = np.bincount(keys, minlength=1 << BAND_BITS)
        starts = np.cumsum(counts) - counts
        pending_i, pending_j, size = [], [], 0
        for mask in masks:
            probe = qkeys ^ mask
            n = counts[probe]
            hit = np.flatnonzero(n)
            if hit.size == 0:
                continue
            n_hit = n[hit]
            qi = np.repeat(hit, n_hit)
            offsets = np.arange(qi.size) - np.repeat(np.cumsum(n_hit) - n_hit, n_hit)
            tj = order[np.repeat(starts[probe[hit]], n_hit) + offsets]
            if self_join:
                keep = qi < tj
                qi, tj = qi[keep], tj[keep]
            pending_i.append(qi)
            pending_j.append(tj)
            size += qi.size
            if size >= block:
                found.append(_verify(pending_i, pending_j, qcols, tcols, threshold))
                pending_i, pending_j, size = [], [], 0
        found.append(_verify(pending_i, pending_j, qcols, tcols, threshold))
    i, j, d = (np.concatenate([f[k] for f in found]) for k in range(3))
    first = np.unique(i * len(table) + j, return_index=True)[1]  # a pair can match in several bands
    return Pairs(i[first], j[first], d[first])


def _verify(
    pi: list, pj: list, q: list[np.ndarray], table: list[np.ndarray], threshold: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidates within `threshold`, word by word: most unrelated pairs are out after two words."""
    if not pi:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    i, j = np.concatenate(pi), np.concatenate(pj)
    d = np.zeros(i.size, np.int64)
    for w in range(WORDS):
        d += np.bitwise_count(q[w][i] ^ table[w][j])
        if w % 2:
            keep = d <= threshold
            i, j, d = i[keep], j[keep], d[keep]
    return i, j, d


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


def nearest_distances(hashes: np.ndarray, radius: int = 47) -> np.ndarray:
    """Each fingerprint's distance to its nearest other one, capped at `radius` + 1 (for the histogram).

    Args:
        hashes: (N, 4) uint64 fingerprints.
        radius: search radius (larger is slower); farther neighbours show as radius + 1.

    Returns:
        int64 distances, one per fingerprint.
    """
    best = np.full(len(hashes), radius + 1, dtype=np.int64)
    i, j, d = close_pairs(hashes, radius)
    np.minimum.at(best, i, d)
    np.minimum.at(best, j, d)
    return best


@dataclass(frozen=True)
class Groups:
    """Near-duplicate groups of a table's rows: a group id per row (-1: no near copy), and the pairs."""

    group: np.ndarray  # per row; -1 for rows without a near copy (or without a fingerprint)
    pairs: Pairs  # row i, row j, distance


def find_groups(fingerprints: "list[str] | np.ndarray", threshold: int) -> Groups:
    """Near-duplicate groups (transitive) among hex fingerprints; rows with "" take part in none.

    Args:
        fingerprints: one hex fingerprint per row ("" for unreadable images).
        threshold: the largest Hamming distance of a near copy.

    Returns:
        The groups: the group id of each row is the index of its first row, -1 when alone.
    """
    fps = np.asarray(fingerprints, dtype=object)
    rows = np.flatnonzero(fps != "")
    hashes = to_words(list(fps[rows]))
    i, j, d = close_pairs(hashes, threshold)
    comp = union_find(len(rows), i, j)
    sizes = np.bincount(comp, minlength=len(rows)) if len(rows) else np.zeros(0, np.int64)
    group = np.full(len(fps), -1, dtype=np.int64)
    group[rows] = np.where(sizes[comp] > 1, rows[comp], -1) if len(rows) else []
    return Groups(group, Pairs(rows[i], rows[j], d))
