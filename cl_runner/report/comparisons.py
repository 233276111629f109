"""Paired comparisons: each level of a factor against its first level, within every combination of the other
factors, over the seeds both ran (common random numbers make the pairs)."""
from __future__ import annotations

from dataclasses import dataclass

from cl_runner.intervals import Interval, paired_difference, unpaired_difference
from cl_runner.report.jobs import HEADLINE, Job, factor_columns, values


@dataclass
class Contrast:
    """One paired comparison: `level` minus `reference` of `factor`, within the scenario `context`."""

    factor: str
    reference: str
    level: str
    context: dict[str, str]
    paired: dict[tuple[str, str], Interval]
    unpaired: dict[tuple[str, str], Interval]


def default_factors(jobs: list[Job]) -> list[str]:
    """Every factor that varies, except the data set (accuracies on different data sets do not compare) and a
    factor that only follows one already compared (the pairing a loss brings)."""
    done = [j for j in jobs if j.completed]
    varying = [c for c in factor_columns(done) if c != "dataset" and len({j.factors.get(c) for j in done}) > 1]
    chosen: list[str] = []
    for factor in sorted(varying, key=lambda c: c != "loss"):  # the loss first: it chooses its pairing
        if not any(factor in following_factors(done, earlier) for earlier in chosen):
            chosen.append(factor)
    return chosen


def contrasts(jobs: list[Job], factor: str, metrics=HEADLINE) -> list[Contrast]:
    """Each level of `factor` against its first level (in sweep order), within every combination of the other
    factors, over the seeds both ran: the mean paired difference with its interval, and the unpaired (Welch)
    interval of the same difference for comparison."""
    done = [j for j in jobs if j.completed and factor in j.factors]
    levels = list(dict.fromkeys(j.factors[factor] for j in done))
    following = following_factors(done, factor)
    contexts: dict[tuple, dict[str, dict[int, Job]]] = {}
    for job in done:
        context = tuple(sorted((k, v) for k, v in job.factors.items() if k != factor and k not in following))
        contexts.setdefault(context, {}).setdefault(job.factors[factor], {})[job.seed] = job
    found = []
    for context, by_level in contexts.items():
        reference = by_level.get(levels[0]) if levels else None
        if reference is None:
            continue
        for level in levels[1:]:
            other = by_level.get(level)
            if other is None:
                continue
            seeds = sorted(set(reference) & set(other))
            paired, unpaired = {}, {}
            for protocol, name in metrics:
                a = [reference[s].value("", protocol, name) for s in seeds]
                b = [other[s].value("", protocol, name) for s in seeds]
                if None in a or None in b:
                    continue
                paired[protocol, name] = paired_difference(a, b)
                unpaired[protocol, name] = unpaired_difference(values(list(reference.values()), "", protocol, name),
                                                               values(list(other.values()), "", protocol, name))
            found.append(Contrast(factor, levels[0], level, dict(context), paired, unpaired))
    return found


def following_factors(jobs: list[Job], factor: str) -> set[str]:
    """The other factors that change with `factor` and only with it in this sweep (loss=triplet brings
    pairing=triplet): part of the difference compared, not of its context."""
    following = set()
    for other in {k for j in jobs for k in j.factors} - {factor}:
        per_level: dict[str, set] = {}
        for job in jobs:
            per_level.setdefault(job.factors.get(factor), set()).add(job.factors.get(other))
        if all(len(v) == 1 for v in per_level.values()) and len(set().union(*per_level.values())) > 1:
            following.add(other)
    return following


