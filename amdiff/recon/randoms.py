"""Expected randoms per line of any PETSIRD scanner, from the list's delayed coincidences.

Randoms between detection bins i and j arrive at 2 tau s_i s_j (singles rates s), so their
expectation is a product over the two bins. The delayeds measure the same randoms; their fan
sums f_i (delayeds that involve bin i) are proportional to s_i (sum_j s_j over i's partners),
and r_ij = c f_i f_j, with c such that the lines of the scanner hold all N delayeds, is the
fan-sum estimate (our choice, a one-step form of Casey's variance reduction): smooth per line
where the raw delayeds per line are a few counts or none. Without delayeds (``fans`` None) the
randoms are flat over the lines, ``total`` of them in all.
"""

from __future__ import annotations

import numpy as np


def delayed_fan_sums(delayeds: list, n_bins: list[int]) -> list[np.ndarray]:
    """Fan sums per module type of one block's delayeds (``delayeds[i][j]``: (n, >=2) bins,
    the first in a module of type i, the second of type j)."""
    fans = [np.zeros(n, dtype=np.float64) for n in n_bins]
    for i, row in enumerate(delayeds):
        for j, events in enumerate(row):
            if len(events) and max(i, j) < len(n_bins):
                fans[i] += np.bincount(events[:, 0].astype(np.int64), minlength=n_bins[i])[:n_bins[i]]
                fans[j] += np.bincount(events[:, 1].astype(np.int64), minlength=n_bins[j])[:n_bins[j]]
    return fans


class RandomsModel:
    """``add_lines`` over every line of the scanner once, then ``per_line`` gives each line's
    expected randoms (over all its TOF bins); they sum to ``total`` over the scanner's lines."""

    def __init__(self, total: float, fans: list[np.ndarray] | None = None):
        self.total = float(total)
        self.fans = fans
        self.norm = 0.0

    def _weights(self, pair, bins: np.ndarray) -> np.ndarray:
        if self.fans is None:
            return np.ones(len(bins))
        return self.fans[pair[0]][bins[:, 0]] * self.fans[pair[1]][bins[:, 1]]

    def add_lines(self, pair, bins: np.ndarray) -> None:
        self.norm += float(self._weights(pair, bins).sum())

    def per_line(self, pair, bins: np.ndarray) -> np.ndarray:
        if self.norm <= 0:
            return np.zeros(len(bins))
        return self.total * self._weights(pair, bins) / self.norm
