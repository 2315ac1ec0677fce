"""Optimal assignment (the linear sum assignment problem) in numba, with scipy's algorithm and
tie-breaking, so that grouping decisions match the official decoders without scipy in the loop."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _lsap_wide(cost):
    """Shortest augmenting path (Crouse 2016) for nr <= nc; col4row. Tie-breaking as scipy's."""
    nr, nc = cost.shape
    u = np.zeros(nr)
    v = np.zeros(nc)
    spc = np.empty(nc)
    path = np.full(nc, -1, np.int64)
    col4row = np.full(nr, -1, np.int64)
    row4col = np.full(nc, -1, np.int64)
    sr = np.zeros(nr, np.bool_)
    sc = np.zeros(nc, np.bool_)
    remaining = np.empty(nc, np.int64)
    for cur in range(nr):
        for it in range(nc):
            remaining[it] = nc - it - 1
        sr[:] = False
        sc[:] = False
        spc[:] = np.inf
        n_rem = nc
        min_val = 0.0
        i = cur
        sink = -1
        while sink == -1:
            index = -1
            lowest = np.inf
            sr[i] = True
            for it in range(n_rem):
                j = remaining[it]
                r = min_val + cost[i, j] - u[i] - v[j]
                if r < spc[j]:
                    path[j] = i
                    spc[j] = r
                if spc[j] < lowest or (spc[j] == lowest and row4col[j] == -1):
                    lowest = spc[j]
                    index = it
            min_val = lowest
            if index < 0 or min_val == np.inf:
                return np.full(nr, -1, np.int64)  # unreachable for finite costs
            j = remaining[index]
            if row4col[j] == -1:
                sink = j
            else:
                i = row4col[j]
            sc[j] = True
            n_rem -= 1
            remaining[index] = remaining[n_rem]
        u[cur] += min_val
        for i in range(nr):
            if sr[i] and i != cur:
                u[i] += min_val - spc[col4row[i]]
        for j in range(nc):
            if sc[j]:
                v[j] -= min_val - spc[j]
        j = sink
        while True:
            i = path[j]
            row4col[j] = i
            col4row[i], j = j, col4row[i]
            if i == cur:
                break
    return col4row


@njit(cache=True, nogil=True)
def assign(cost):
    """Minimum-cost assignment of a (nr, nc) matrix: the column of each row, -1 for rows left out."""
    nr, nc = cost.shape
    if nr == 0 or nc == 0:
        return np.full(nr, -1, np.int64)
    if nc >= nr:
        return _lsap_wide(cost)
    row4col = _lsap_wide(np.ascontiguousarray(cost.T))
    col4row = np.full(nr, -1, np.int64)
    for c in range(nc):
        col4row[row4col[c]] = c
    return col4row
