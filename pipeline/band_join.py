"""The compiled inner loop of the near-duplicate index (pipeline.near_duplicates.close_pairs): one band's merge
join of two sets of 256-bit hashes sorted by their 16-bit band key. numba compiles it on first use and caches
the machine code beside this file (or in NUMBA_CACHE_DIR); it is imported only when a search runs, so serving a
model does not need numba."""

import numpy as np
from numba import njit, types
from numba.extending import intrinsic

BAND_BITS = 16  # pipeline.near_duplicates.BAND_BITS


@intrinsic
def _popcount(typingctx, x):
    """The CPU's population count of a uint64 (LLVM ctpop), inside compiled code."""

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return types.uint64(types.uint64), codegen


@njit(cache=True, nogil=True)
def band_join(queries, qkeys, qstarts, qorder, table, starts, order, masks, band, radius, threshold, self_join, per):
    """One band of the multi-index search: a merge join of queries and table, both sorted by their band key.

    Each query bucket meets the table bucket of its key XOR each mask; pairs are verified on all four words and
    kept only in the first band where they agree within `radius` (so a pair found in several bands comes once).

    Args:
        queries: (N, 4) uint64 hashes sorted by key; row r is query qorder[r].
        qkeys: The keys that queries have, ascending.
        qstarts: (65537,) int64, where each key's queries start.
        qorder: (N,) int64, the original index of each sorted query.
        table: (M, 4) uint64 hashes sorted by key; row p is table row order[p].
        starts: (65537,) int64, where each key's table rows start.
        order: (M,) int64, the original index of each sorted table row.
        masks: int64 masks XORed onto a key (all with at most `radius` bits).
        band: This band's number (0..15): bits 16 * (band % 4) of word band // 4.
        radius: The bits probed per band.
        threshold: The largest distance kept.
        self_join: Queries and table are the same set: keep only pairs with query < table row.
        per: When > 0, query q belongs to table row q // per (an image's windows against the images, or
            per = 1: one image's two windows), and that pair is skipped.

    Returns:
        (k, 3) int64 rows: query index, table index, distance.
    """
    cap = 1024
    out = np.empty((cap, 3), np.int64)
    k = 0
    for m in masks:
        for key in qkeys:
            lo, hi = starts[key ^ m], starts[(key ^ m) + 1]
            if lo == hi:
                continue
            for r in range(qstarts[key], qstarts[key + 1]):
                q0, q1, q2, q3 = queries[r, 0], queries[r, 1], queries[r, 2], queries[r, 3]
                for p in range(lo, hi):
                    if self_join and order[p] <= qorder[r]:  # each pair once, and half the work
                        continue
                    d = _popcount(q0 ^ table[p, 0]) + _popcount(q1 ^ table[p, 1])
                    if d > threshold:  # most unrelated rows are out after two words
                        continue
                    d += _popcount(q2 ^ table[p, 2]) + _popcount(q3 ^ table[p, 3])
                    if d > threshold:
                        continue
                    q, j = qorder[r], order[p]
                    if per and q // per == j:
                        continue
                    first = True
                    for b in range(band):  # an earlier band within the radius has it already
                        shift = np.uint64(BAND_BITS * (b % 4))
                        diff = (queries[r, b // 4] ^ table[p, b // 4]) >> shift
                        if _popcount(diff & np.uint64(0xFFFF)) <= radius:
                            first = False
                            break
                    if not first:
                        continue
                    if k == cap:
                        cap *= 2
                        grown = np.empty((cap, 3), np.int64)
                        grown[:k] = out[:k]
                        out = grown
                    out[k, 0] = q
                    out[k, 1] = j
                    out[k, 2] = d
                    k += 1
    return out[:k]
