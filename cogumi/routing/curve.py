"""The cost-quality curve of escalation, RouteLLM's metrics on it, and the operating point.

A query is escalated when ``p_wrong >= threshold``: its answer is then the teacher's,
otherwise the system's own. Sweeping the threshold over every distinct ``p_wrong`` (from
above the largest, where nothing is escalated, down to the smallest, where everything is)
gives one point per threshold: the share of queries sent to the teacher, the verified
accuracy of system + escalation, and the teacher's dollars.

RouteLLM (Ong et al. 2024) with weak = the system without escalation and strong = the
teacher: PGR(point) = (quality - weak) / (strong - weak), the share of the gap recovered;
APGR = the area under PGR against the share of strong calls over [0, 1] (trapezoids
between points; within a group of tied ``p_wrong`` the queries escalate together, and the
straight line between two points is what a random order inside the group gives on
average); CPT(x) = the smallest share of strong calls at which PGR >= x. A random
escalation policy recovers on average the share of the gap it escalates: PGR(c) = c, so
its APGR is 0.5 and its CPT(x) is x. PGR is undefined when the teacher is not better than
the system (strong <= weak): then no metric on the gap exists and escalation only costs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

#: A threshold above every probability: escalate nothing.
NEVER = math.nextafter(1.0, 2.0)


@dataclass(frozen=True)
class Point:
    threshold: float
    escalated: int
    escalated_share: float
    quality: float
    usd: float
    pgr: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def gap(local_correct: Sequence[bool], teacher_correct: Sequence[bool]) -> tuple[float, float]:
    """(weak, strong): accuracy of the system alone and of the teacher alone."""
    return float(np.mean(local_correct)), float(np.mean(teacher_correct))


def pgr(quality: float, weak: float, strong: float) -> float | None:
    return None if strong <= weak else (quality - weak) / (strong - weak)


def sweep(p_wrong: Sequence[float], local_correct: Sequence[bool],
          teacher_correct: Sequence[bool], teacher_usd: Sequence[float] | None = None
          ) -> list[Point]:
    """Every point of the curve, from nothing escalated to everything escalated."""
    p = np.asarray(p_wrong, dtype=np.float64)
    local = np.asarray(local_correct, dtype=bool)
    teacher = np.asarray(teacher_correct, dtype=bool)
    usd = np.zeros(len(p)) if teacher_usd is None else np.asarray(teacher_usd, dtype=float)
    n = len(p)
    if not n or len(local) != n or len(teacher) != n or len(usd) != n:
        raise ValueError(f"sweep: {len(p)} probabilities, {len(local)} system verdicts, "
                         f"{len(teacher)} teacher verdicts, {len(usd)} costs")
    weak, strong = gap(local, teacher)
    # Escalating in order of decreasing p_wrong, a query adds (teacher - system) to the
    # number right and its teacher cost; a threshold escalates a whole group of ties.
    order = np.argsort(-p, kind="stable")
    ps = p[order]
    gain = np.cumsum(teacher[order].astype(int) - local[order].astype(int))
    spent = np.cumsum(usd[order])
    ends = np.flatnonzero(np.r_[ps[1:] != ps[:-1], True])  # last index of each tie group
    points = [Point(NEVER, 0, 0.0, weak, 0.0, pgr(weak, weak, strong))]
    for e in ends:
        q = weak + float(gain[e]) / n
        points.append(Point(float(ps[e]), int(e + 1), float((e + 1) / n), q, float(spent[e]),
                            pgr(q, weak, strong)))
    return points


def apgr(points: Sequence[Point]) -> float | None:
    """Area under PGR over the share of strong calls, [0, 1] (trapezoids)."""
    if not points or points[0].pgr is None:
        return None
    xs = [pt.escalated_share for pt in points]
    ys = [pt.pgr for pt in points]
    if xs[0] != 0.0 or xs[-1] != 1.0:
        raise ValueError("apgr: the curve must run from nothing to everything escalated")
    return float(sum((xs[i + 1] - xs[i]) * (ys[i] + ys[i + 1]) / 2 for i in range(len(xs) - 1)))


def area_over_random(points: Sequence[Point]) -> float:
    """The area between the curve and random escalation's line (from no escalation to
    always-teacher), in verified-accuracy units over the share of strong calls: how much
    accuracy escalation by p_wrong buys over escalating at random, averaged over every cost.
    Equal to (strong - weak) x (APGR - 0.5), and defined even where PGR is not (no gap)."""
    weak, strong = points[0].quality, points[-1].quality
    xs = [pt.escalated_share for pt in points]
    ys = [pt.quality - (weak + x * (strong - weak)) for pt, x in zip(points, xs, strict=True)]
    return float(sum((xs[i + 1] - xs[i]) * (ys[i] + ys[i + 1]) / 2 for i in range(len(xs) - 1)))


def cpt(points: Sequence[Point], target: float) -> float | None:
    """Smallest share of strong calls whose PGR reaches ``target`` (None: no gap)."""
    if not points or points[0].pgr is None:
        return None
    reached = [pt.escalated_share for pt in points if pt.pgr >= target - 1e-12]
    return min(reached) if reached else None


def random_policy(weak: float, strong: float, shares: Sequence[float]) -> list[float]:
    """Expected quality of escalating a random share c of queries: weak + c (strong - weak)."""
    return [weak + c * (strong - weak) for c in shares]


@dataclass(frozen=True)
class Objective:
    """The operating point: the cheapest threshold (fewest strong calls) whose PGR on the
    fit split reaches ``target_pgr``; among equally cheap ones the highest threshold. When
    the teacher is not better than the system on the fit split, nothing is escalated."""
    target_pgr: float

    def describe(self) -> str:
        return (f"the fewest teacher calls that recover at least {self.target_pgr:.0%} of the "
                f"quality gap between the system and the teacher (PGR >= {self.target_pgr:g}) "
                f"on the fit split, i.e. the CPT({self.target_pgr:.0%}) point")

    def choose(self, points: Sequence[Point]) -> Point:
        if not points:
            raise ValueError("choose: empty curve")
        if points[0].pgr is None:
            return points[0]  # no gap to recover: escalation buys nothing
        ok = [pt for pt in points if pt.pgr >= self.target_pgr - 1e-12]
        return min(ok, key=lambda pt: (pt.escalated_share, -pt.threshold))


def at_threshold(threshold: float, p_wrong: Sequence[float], local_correct: Sequence[bool],
                 teacher_correct: Sequence[bool] | None = None,
                 teacher_usd: Sequence[float] | None = None) -> dict:
    """What one threshold does on a set of queries: detection (share of the system's wrong
    answers escalated), false escalations (share of its right answers escalated), the share
    escalated, and with the teacher's verdicts the quality, PGR and dollars."""
    p = np.asarray(p_wrong, dtype=float)
    local = np.asarray(local_correct, dtype=bool)
    esc = p >= threshold
    wrong = ~local
    out = {"threshold": float(threshold), "queries": int(len(p)),
           "escalated": int(esc.sum()), "escalated_share": float(esc.mean()) if len(p) else 0.0,
           "wrong": int(wrong.sum()), "right": int(local.sum()),
           "detection": float(esc[wrong].mean()) if wrong.any() else None,
           "false_escalation_rate": float(esc[local].mean()) if local.any() else None}
    if teacher_correct is not None:
        teacher = np.asarray(teacher_correct, dtype=bool)
        weak, strong = gap(local, teacher)
        q = float(np.where(esc, teacher, local).mean())
        usd = np.zeros(len(p)) if teacher_usd is None else np.asarray(teacher_usd, dtype=float)
        out.update(quality=q, weak=weak, strong=strong, pgr=pgr(q, weak, strong),
                   usd=float(usd[esc].sum()))
    return out
