"""Pareto fronts of search results, as plain functions: which trials are non-dominated, the fronts in order,
and the order in which a multi-objective rung promotes trials (MO-ASHA, Schmucker et al., 2021: non-dominated
sorting, then NSGA-II's crowding distance within a front, so a front's extremes, the smallest model among them,
go first).

Points are tuples of objective values, each to be maximised (negate a value to be minimised).
"""

from __future__ import annotations

import math


def dominates(a: tuple, b: tuple, margin: float = 0.0) -> bool:
    """``a`` is at least as good as ``b`` in every objective and better in one. With a ``margin``, ``a`` must
    also be better in the first objective by more than it: a lead within the margin (noise) dominates nothing."""
    if margin:
        return all(x >= y for x, y in zip(a, b)) and a[0] > b[0] + margin
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def fronts(points: list[tuple], margin: float = 0.0) -> list[list[int]]:
    """Indices of ``points`` by non-dominated front: the Pareto front first, then the front of what remains...
    (``margin``: as in ``dominates``)."""
    remaining, ordered = list(range(len(points))), []
    while remaining:
        front = [i for i in remaining
                 if not any(dominates(points[j], points[i], margin) for j in remaining if j != i)]
        ordered.append(front)
        remaining = [i for i in remaining if i not in front]
    return ordered


def pareto_front(points: list[tuple]) -> list[int]:
    """Indices of the non-dominated points (equal points are all kept)."""
    return fronts(points)[0] if points else []


def crowding(points: list[tuple], front: list[int]) -> dict[int, float]:
    """NSGA-II's crowding distance of each member of one front: the extremes of every objective are infinitely
    far; the others, the sum over objectives of the gap between their neighbours, relative to the front's range."""
    distance = {i: 0.0 for i in front}
    for objective in range(len(points[front[0]])):
        ordered = sorted(front, key=lambda i: points[i][objective])
        low, high = points[ordered[0]][objective], points[ordered[-1]][objective]
        distance[ordered[0]] = distance[ordered[-1]] = math.inf
        if high == low:
            continue
        for before, here, after in zip(ordered, ordered[1:], ordered[2:]):
            distance[here] += (points[after][objective] - points[before][objective]) / (high - low)
    return distance


def promotion_order(points: list[tuple], margin: float = 0.0) -> list[int]:
    """All indices, best first: by front (``margin``: as in ``dominates``), then by crowding distance within the
    front (larger first), then by the first objective."""
    return _in_order(points, fronts(points, margin))


def _in_order(points: list[tuple], sorted_fronts: list[list[int]]) -> list[int]:
    order = []
    for front in sorted_fronts:
        distance = crowding(points, front)
        order += sorted(front, key=lambda i: (-distance[i], -points[i][0], i))
    return order


def keeps(points: list[tuple], index: int, reduction_factor: float, margin: float = 0.0) -> bool:
    """At a rung holding ``points`` (``index`` the trial arriving now), whether that trial goes on: the first
    ``ceil(n / reduction_factor)`` of ``promotion_order`` do, as ASHA keeps its top 1/eta, and so do the ends of
    the rung's Pareto front whatever the places (the best F1 and the smallest model: a small model with a low F1
    is not stopped for its F1 alone). Any other trial outside those places stops, on the front or not. The
    fronts take ``margin`` (``dominates``): a trial is not ranked behind one that leads it in F1 by less."""
    sorted_fronts = fronts(points, margin)
    if index in _in_order(points, sorted_fronts)[:math.ceil(len(points) / reduction_factor)]:
        return True
    return index in sorted_fronts[0] and crowding(points, sorted_fronts[0])[index] == math.inf


# A front's hypervolume, as Klein et al. compare structural-pruning searches with Syne Tune: both objectives on
# [0, 1] (F1, and the model's parameters as a share of a reference size, the teacher's), the reference point the
# worst corner, F1 0 at the reference's full size.
HYPERVOLUME_REFERENCE = "F1 0 at a parameter share of 1 (the teacher's size)"


def hypervolume_slices(front: list[tuple[float, float]]) -> list[float]:
    """Per (parameter share, F1) point of a front, in the given order: the area it adds to the region the front
    dominates inside the reference box (share up to 1, F1 down to 0), walking from the smallest share up. A
    point dominated by an earlier one adds nothing. Their sum is the front's 2-D hypervolume."""
    order = sorted(range(len(front)), key=lambda i: (front[i][0], -front[i][1]))
    slices, best = [0.0] * len(front), 0.0
    for position, i in enumerate(order):
        share, f1 = min(max(front[i][0], 0.0), 1.0), max(front[i][1], 0.0)
        next_share = next((min(max(front[j][0], 0.0), 1.0) for j in order[position + 1:]
                           if front[j][1] > max(best, f1)), 1.0)
        if f1 > best:
            slices[i] = (next_share - share) * f1
            best = f1
    return slices


def hypervolume(front: list[tuple[float, float]]) -> float:
    """The area dominated by (parameter share, F1) points inside the box from share 1, F1 0 (see
    ``hypervolume_slices``)."""
    return sum(hypervolume_slices(front))
