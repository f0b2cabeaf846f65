"""Deterministic train/eval split: grouped by prompt, stratified by label.

A prompt is the unit (one prompt never sits on both sides). Prompts fall in three strata — only
desirable rows, only undesirable, both — and inside each stratum they are ordered by a seeded hash of
the prompt; the first ones, until the stratum's eval share reaches `eval_fraction` of its rows, go to
eval. Same rows + seed -> same split, whatever the file order; a prompt keeps its side when unrelated
new data arrives unless the cut-off moves past it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

_M1, _M2, _GOLDEN = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray, seed: int) -> np.ndarray:
    """splitmix64 finalizer of (x + seed * golden): a seeded, well-spread order for prompt ids."""
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64) + np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def assign_eval(prompt_ids: np.ndarray, labels: np.ndarray, eval_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask: True where the row goes to eval."""
    n = len(prompt_ids)
    out = np.zeros(n, dtype=bool)
    if n == 0 or eval_fraction <= 0:
        return out
    inverse, uniq = pd.factorize(prompt_ids)  # hash-based, O(n); the order comes from the hash below
    size = np.bincount(inverse, minlength=len(uniq))
    n_des = np.bincount(inverse, weights=labels.astype(np.float64), minlength=len(uniq)).astype(np.int64)
    stratum = (n_des > 0).astype(np.uint64) + 2 * (size - n_des > 0).astype(np.uint64)
    # one sort key: the stratum in the top 2 bits, the seeded hash below
    order = np.argsort((stratum << np.uint64(62)) | (_mix(np.asarray(uniq), seed) >> np.uint64(2)), kind="stable")
    to_eval = np.zeros(len(uniq), dtype=bool)
    for s in (1, 2, 3):
        groups = order[stratum[order] == s]
        if not len(groups):
            continue
        target = round(eval_fraction * size[groups].sum())
        before = np.cumsum(size[groups]) - size[groups]
        to_eval[groups] = before < target
    return to_eval[inverse]
