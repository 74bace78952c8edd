"""The zone rows of the placement MILP: flow per zone and layer, crossings bounded by links.

Sits inside milp.PlacementModel (milp.py): with more than one zone it calls **add_zone_rows**,
which adds, on the model's LinearModel, the rows of milp.py's docstring ("Zones"):

* a[zone, l] >= 0, the flow running layer l in the zone, sums to z at every layer and is at most
  the zone's clipped coverage of l (partial inference); without partial inference a flow f_r per
  rectangle, entering at 0 and leaving at L;
* t[pair, b] >= 0 moves flow from zone p to zone q at boundary b: at most the heights of p's
  rectangles ending at b and of q's rectangles that may receive there, at most (best p -> q link)
  x (node pairs, counted linearly on either side), and over all boundaries at most the summed
  capacity of the p -> q links (the zone-to-zone cut);
* the coordinator's best link to and from each zone bounds what enters at 0 and leaves at L.

Link figures come from node classes (classes.py), counted per (class, zone) piece: O(classes^2),
not O(nodes^2). Every row relaxes the node-level max-flow, so the model stays an upper bound.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import scipy.sparse as sp

from helix_jax.solver.classes import NodeClasses


def zone_links(groups, num_zones: int, classes: NodeClasses) -> tuple[dict, dict, list[int], list[float], list[float]]:
    """(best link p->q, summed capacity p->q, nodes per zone, best coordinator link into and out
    of each zone), all in tokens/s, from the (class, zone) pieces of `groups`."""
    pieces: dict[tuple[int, int], int] = defaultdict(int)  # (class, zone) -> nodes
    for g in groups:
        for node in g.nodes:
            pieces[(classes.index[node], g.zone)] += 1
    size = [0] * num_zones
    into, out = [0.0] * num_zones, [0.0] * num_zones
    for (c, zz), m in pieces.items():
        size[zz] += m
        into[zz] = max(into[zz], classes.coordinator_tokens_per_s(c, True))
        out[zz] = max(out[zz], classes.coordinator_tokens_per_s(c, False))
    best: dict[tuple[int, int], float] = defaultdict(float)
    total: dict[tuple[int, int], float] = defaultdict(float)
    for (a, p), m_a in pieces.items():
        for (b, q), m_b in pieces.items():
            if p == q:
                continue
            # pieces in two zones share no node (a class split by node-level zones included)
            link = classes.link_tokens_per_s(a, b)
            best[p, q] = max(best[p, q], link)
            total[p, q] += m_a * m_b * link
    return best, total, size, into, out


def add_zone_rows(model, num_zones: int, classes: NodeClasses) -> None:
    """Add the rows of the module docstring to `model` (a milp.PlacementModel)."""
    L, lp, n, z, sel, rects = model.L, model.lp, model.n, model.z, model.sel, model.rects
    best, total, size, into, out = zone_links(model.groups, num_zones, classes)
    zone_of = np.array([model.groups[r.group].zone for r in rects])
    in_zone = [sp.diags((zone_of == zz).astype(float)) for zz in range(num_zones)]
    pairs = [(p, q) for p in range(num_zones) for q in range(num_zones) if p != q]
    inner = L - 1  # boundaries 1..L-1; t at boundaries 0 and L is zero, so it is left out
    t = lp.var(len(pairs) * inner)  # t[i, b] at column i * inner + (b - 1)

    def t_sum(indices: list[int]) -> sp.csr_matrix:  # [L-1, T]: sum of t[i, :] over `indices`
        rows = np.tile(np.arange(inner), len(indices))
        cols = np.concatenate([i * inner + np.arange(inner) for i in indices]) if indices else rows
        return sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(inner, len(pairs) * inner))

    ones_l = np.ones((L, 1))
    if model.partial_inference:
        a = lp.var(num_zones * L)  # a[zone, l] at column zone * L + l
        lp.rows([(a, sp.hstack([sp.identity(L)] * num_zones)), (z, -ones_l)], 0.0, 0.0)
    else:
        f = lp.var(len(rects))
        eye = sp.identity(len(rects), format="csr")
        lp.rows([(f, eye), (n, model.scaled(-eye))], upper=0.0)
        lp.rows([(f, sp.vstack([sel.starts[0:1], sel.ends[L : L + 1]])), (z, -np.ones((2, 1)))], 0.0, 0.0)
    for zz in range(num_zones):
        t_out = t_sum([i for i, pq in enumerate(pairs) if pq[0] == zz])
        t_in = t_sum([i for i, pq in enumerate(pairs) if pq[1] == zz])
        ends_z, starts_z, acc_z = sel.ends @ in_zone[zz], sel.starts @ in_zone[zz], sel.covers @ in_zone[zz]
        if model.partial_inference:
            own = sp.csr_matrix((np.ones(L), (np.arange(L), zz * L + np.arange(L))), shape=(L, num_zones * L))
            lp.rows([(a, own), (n, model.scaled(-(sel.covers[:L] @ in_zone[zz])))], upper=0.0)
            step = own[1:] - own[:-1]  # a[zz, l] - a[zz, l-1] = t_in[l] - t_out[l]
            lp.rows([(a, step), (t, t_out - t_in)], 0.0, 0.0)
            lp.rows([(t, t_out), (n, model.scaled(-ends_z[1:L]))], upper=0.0)
            lp.rows([(t, t_in), (n, model.scaled(-acc_z[1:L]))], upper=0.0)
            lp.rows([(a, own[[0, L - 1]]), (n, sp.vstack([-into[zz] * starts_z[0:1], -out[zz] * ends_z[L : L + 1]]))], upper=0.0)
        else:
            lp.rows([(t, t_out), (f, -ends_z[1:L])], upper=0.0)
            lp.rows([(t, t_in), (f, -starts_z[1:L])], upper=0.0)
            lp.rows([(f, ends_z[1:L] - starts_z[1:L]), (t, t_in - t_out)], 0.0, 0.0)
            lp.rows(
                [
                    (f, sp.vstack([starts_z[0:1], ends_z[L : L + 1]])),
                    (n, sp.vstack([-into[zz] * starts_z[0:1], -out[zz] * ends_z[L : L + 1]])),
                ],
                upper=0.0,
            )
    receive = sel.covers if model.partial_inference else sel.starts
    for i, (p, q) in enumerate(pairs):
        own_t = t_sum([i])
        send = (sel.ends @ in_zone[p])[1:L]
        recv = (receive @ in_zone[q])[1:L]
        lp.rows([(t, own_t), (n, -best[p, q] * size[q] * send)], upper=0.0)
        lp.rows([(t, own_t), (n, -best[p, q] * size[p] * recv)], upper=0.0)
        # zone-to-zone cut: every crossing from p to q, at any boundary, uses a link p -> q
        lp.rows([(t, sp.csr_matrix(own_t.sum(axis=0)))], upper=total[p, q])
