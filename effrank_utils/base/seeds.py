"""One rule for deriving seeds: every random stream of a study is a function of a base seed and a few integers
(an epoch, a rank), so that it is reproducible and independent of what else ran before it."""

from __future__ import annotations

SEED_MULTIPLIER = 1_000_003  # a prime, larger than any epoch or rank


def derive_seed(seed: int, *parts: int) -> int:
    """A seed for the stream identified by ``(seed, *parts)``: ``seed * M + part`` folded part by part."""
    value = seed
    for part in parts:
        value = value * SEED_MULTIPLIER + part
    return value % (2 ** 63)
