"""Philox-4x32-10, the counter-based generator of cuRAND, PyTorch and JAX (Salmon,
Moraes, Dror and Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC 2011), in
Array API integer arithmetic: the same bits on every backend and device.

A block of four 32-bit words is a pure function of a 128-bit counter and a 64-bit
key; no state is carried from one block to the next, so any block can be computed
on its own (a rank draws only its rows) and a stream's whole state is the key and
the next counter, a few integers.

Words are held in 64-bit integer arrays with values in [0, 2^32). `wide` chooses how
the 32 x 32 -> 64-bit products are formed: in uint64 (NumPy, array-api-strict, CuPy),
or in int64 from 16-bit halves of the multiplier, every partial product below 2^49
(torch, whose uint64 arithmetic lacks shifts and comparisons). Both give the same
words; neither relies on integer overflow, whose behaviour the standard leaves open.
"""
from __future__ import annotations

import math
import sys

__all__ = ["philox4x32", "bernoulli_mask", "keep_threshold", "GENERATOR"]

GENERATOR = "philox4x32-10"
ROUNDS = 10
M0, M1 = 0xD2511F53, 0xCD9E8D57  # round multipliers
W0, W1 = 0x9E3779B9, 0xBB67AE85  # key increments (Weyl sequence)
MASK = 0xFFFFFFFF


def _mulhilo(x, m: int, wide: bool):
    """(high, low) 32-bit halves of x * m, for x words in [0, 2^32) and a constant m."""
    if isinstance(x, int):
        p = x * m
        return p >> 32, p & MASK
    if wide:
        p = x * m
        return p >> 32, p & MASK
    p_lo = x * (m & 0xFFFF)  # < 2^48
    p_hi = x * (m >> 16)  # < 2^48
    t = p_lo + ((p_hi & 0xFFFF) << 16)  # x * m = (p_hi >> 16) * 2^32 + t
    return (p_hi >> 16) + (t >> 32), t & MASK


def philox4x32(counter, key, *, wide: bool = True, rounds: int = ROUNDS):
    """The four output words of Philox-4x32 for `counter` (four words: Python ints
    or integer arrays of one dtype, broadcast together) under `key` (two Python ints).

    Words are 32-bit values in uint64 arrays (`wide`) or int64 arrays; Python ints
    where every input word is one. Shape: the broadcast shape of the counter words.
    """
    c0, c1, c2, c3 = counter
    k0, k1 = key[0] & MASK, key[1] & MASK
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + W0) & MASK, (k1 + W1) & MASK
        hi0, lo0 = _mulhilo(c0, M0, wide)
        hi1, lo1 = _mulhilo(c2, M1, wide)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def keep_threshold(p_keep: float) -> int:
    """T such that a 16-bit draw u in [0, 2^16) is kept when u < T, i.e. exactly
    when u / 2^16 < p_keep: P(keep) = T / 2^16, within 2^-16 of p_keep."""
    return min(1 << 16, max(0, math.ceil(p_keep * 65536.0)))


def _layout(shape):
    """(shape, rows, row width, blocks per row) of a mask: eight entries a block."""
    shape = tuple(int(s) for s in shape)
    rows = shape[0] if shape else 1
    width = math.prod(shape[1:])
    return shape, rows, width, -(-width // ENTRIES)


ENTRIES = 8  # mask entries per Philox block: two 16-bit halves of each word


def bernoulli_mask(xp, seed: int, draw, p_keep: float, shape, dtype, *, device=None,
                   first_row: int = 0, stream: int = 0, wide: bool = True):
    """A 0/1 mask of `shape` in `dtype` with P(1) = `keep_threshold(p_keep)` / 2^16.

    Entry (i, j) of the mask, j indexing the flattened trailing axes, is the 16-bit
    half j % 2 (0: low) of word (j % 8) // 2 of the Philox block at counter
    (j // 8, first_row + i, draw, stream) under the key `seed` (64 bits), kept (1)
    when that half is below the threshold. Sixteen bits an entry halve the work of
    32; they put P(keep) within 2^-16 of `p_keep`.

    `draw` is a Python int or a 0-d integer array on the device (the stream's draw
    counter; its low 32 bits count). Rows do not depend on the mask's height, so
    rows [a, b) of a tall mask are the mask drawn with first_row=a and b - a rows.
    A 0-d shape is one row of one entry; a 1-d shape (n,) is n rows of one entry.
    """
    shape, rows, width, blocks = _layout(shape)
    if rows == 0 or width == 0:
        return xp.zeros(shape, dtype=dtype, device=device)
    itype = xp.uint64 if wide else xp.int64
    c2 = draw & MASK if isinstance(draw, int) else xp.astype(draw, itype) & MASK
    c0 = xp.reshape(xp.arange(blocks, dtype=itype, device=device), (1, blocks))
    c1 = xp.reshape(xp.arange(first_row, first_row + rows, dtype=itype, device=device),
                    (rows, 1))
    words = philox4x32((c0, c1, c2, stream & MASK), (seed & MASK, (seed >> 32) & MASK),
                       wide=wide)
    threshold = keep_threshold(p_keep)
    halves = []
    for w in words:
        halves += [(w & 0xFFFF) < threshold, (w >> 16) < threshold]
    keep = xp.reshape(xp.stack(halves, axis=-1), (rows, ENTRIES * blocks))
    if ENTRIES * blocks != width:
        keep = keep[:, :width]
    return xp.reshape(xp.astype(keep, dtype), shape)


def bernoulli_mask_numpy(np, seed: int, draw: int, p_keep: float, shape, dtype, *,
                         first_row: int = 0, stream: int = 0):
    """`bernoulli_mask` for NumPy, the same bits in fewer passes: words in uint32,
    each product formed by one uint32 x uint32 -> uint64 multiply whose halves are
    read as uint32 views (no shift or mask pass). `draw` is a Python int (NumPy
    reads its counter for free). Little-endian hosts (the views' half order)."""
    if sys.byteorder != "little":
        return bernoulli_mask(np, seed, draw, p_keep, shape, dtype, first_row=first_row,
                              stream=stream)
    shape, rows, width, blocks = _layout(shape)
    if rows == 0 or width == 0:
        return np.zeros(shape, dtype=dtype)
    u32 = np.uint32
    c0 = np.arange(blocks, dtype=u32).reshape(1, blocks)
    c1 = np.arange(first_row, first_row + rows, dtype=u32).reshape(rows, 1)
    c2, c3 = draw & MASK, stream & MASK
    k0, k1 = seed & MASK, (seed >> 32) & MASK
    for r in range(ROUNDS):
        if r:
            k0, k1 = (k0 + W0) & MASK, (k1 + W1) & MASK
        hi0, lo0 = _mulhilo_u32(np, c0, M0)
        hi1, lo1 = _mulhilo_u32(np, c2, M1)
        c0, c1, c2, c3 = _xor3(np, hi1, c1, k0), lo1, _xor3(np, hi0, c3, k1), lo0
    threshold = keep_threshold(p_keep)
    keep = np.empty((rows, blocks, ENTRIES), dtype=bool)
    for k, w in enumerate((c0, c1, c2, c3)):
        np.less(np.bitwise_and(w, u32(0xFFFF)), threshold, out=keep[:, :, 2 * k])
        np.less(np.right_shift(w, u32(16)), threshold, out=keep[:, :, 2 * k + 1])
    keep = keep.reshape(rows, ENTRIES * blocks)[:, :width]
    return keep.astype(dtype).reshape(shape)


def _mulhilo_u32(np, x, m: int):
    if isinstance(x, int):
        p = x * m
        return p >> 32, p & MASK
    p = np.multiply(x, m, dtype=np.uint64)
    halves = p.view(np.uint32)  # little-endian: (low, high) pairs along the last axis
    return halves[..., 1::2], halves[..., 0::2]


def _xor3(np, a, b, k: int):
    if isinstance(a, int) and isinstance(b, int):
        return a ^ b ^ k
    out = np.bitwise_xor(a, b)
    out ^= np.uint32(k)
    return out
