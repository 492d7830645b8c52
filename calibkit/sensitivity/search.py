"""Per-layer sensitivity and the fallback search over the switchable model.

A configuration is the set of layer units kept in float (``kept``, unit indices); everything
else is INT8. ``Evaluator`` runs configurations through an executor, each once: results are
memoised and journalled (a re-run after Ctrl-C skips what finished). Every decision below
depends only on results and a fixed order, never on the number of workers or the order
results arrive in, so the chosen layers are the same on one process, many, or Ray.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from calibkit.errors import CalibkitError
from calibkit.validate.results import DEFAULT_MAX_ACCURACY_DROP, DEFAULT_MIN_COSINE

Config = tuple[int, ...]


@dataclass(frozen=True)
class Target:
    min_cosine: float | None = None
    max_accuracy_drop: float | None = None  # percentage points of the task score

    def applied(self, has_task: bool) -> tuple[dict, bool]:
        given = {
            k: v
            for k, v in (("min_cosine", self.min_cosine), ("max_accuracy_drop", self.max_accuracy_drop))
            if v is not None
        }
        if given:
            if "max_accuracy_drop" in given and not has_task:
                raise CalibkitError("--max-accuracy-drop needs a task metric: pass --labels or --metric FILE.py:FN")
            return given, False
        default = {"min_cosine": DEFAULT_MIN_COSINE}
        if has_task:
            default["max_accuracy_drop"] = DEFAULT_MAX_ACCURACY_DROP
        return default, True


def drop(result: dict, ref_task: float | None) -> float | None:
    if ref_task is None or "task" not in result:
        return None
    return None if result["task"] is None else ref_task - result["task"]


def meets(result: dict, gates: dict, ref_task: float | None) -> bool:
    """Fail closed: a missing or NaN metric never meets a target."""
    if "min_cosine" in gates:
        c = result.get("min_cosine")
        if c is None or not c >= gates["min_cosine"]:
            return False
    if "max_accuracy_drop" in gates:
        d = drop(result, ref_task)
        if d is None or not d <= gates["max_accuracy_drop"]:
            return False
    return True


def loss(result: dict, ref_task: float | None) -> tuple[float, float]:
    """(task drop in points, 1 - worst output cosine); NaN/missing counts as the worst."""
    d = drop(result, ref_task)
    c = result.get("min_cosine")
    task = (math.inf if d is None else d) if ref_task is not None else 0.0
    return task, (math.inf if c is None else 1.0 - c)


class Evaluator:
    """Runs configurations once each. ``run_missing(configs, on_done)`` executes configs not yet
    known and calls ``on_done(config, result)`` as each finishes; ``known`` pre-fills results
    (from the journal of an interrupted run)."""

    def __init__(
        self,
        run_missing: Callable[[list[Config], Callable[[Config, dict], None]], None],
        known: dict[Config, dict] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ):
        self._run = run_missing
        self.results: dict[Config, dict] = dict(known or {})
        self.reused = 0  # results that came from an earlier run's journal
        self.ran = 0
        self.asked: list[Config] = []  # every distinct configuration the search used, in order
        self._progress = progress
        self._from_journal = set(self.results)
        self.first_done: float | None = None  # perf_counter of the first and last result this run
        self.last_done: float | None = None

    def __call__(self, configs: list[Config]) -> list[dict]:
        configs = [tuple(sorted(c)) for c in configs]
        for c in configs:
            if c not in self.asked:
                self.asked.append(c)
                if c in self._from_journal:
                    self.reused += 1
        todo = list(dict.fromkeys(c for c in configs if c not in self.results))
        if todo:
            total = self.ran + len(todo)  # the bar counts every evaluation this run makes

            def on_done(config: Config, result: dict) -> None:
                self.results[config] = result
                self.ran += 1
                self.last_done = time.perf_counter()
                self.first_done = self.first_done or self.last_done
                if self._progress:
                    self._progress(self.ran, total)

            self._run(todo, on_done)
        return [self.results[c] for c in configs]

    @property
    def spent(self) -> int:
        return len(self.asked)

    @property
    def steady_rate(self) -> float | None:
        """Evaluations per second between the first result and the last (worker start-up excluded)."""
        if self.ran < 2 or not self.last_done or self.last_done <= self.first_done:
            return None
        return (self.ran - 1) / (self.last_done - self.first_done)


@dataclass
class LayerScore:
    index: int
    only: dict  # only this unit quantized
    all_but: dict  # every unit quantized but this one
    score: tuple[float, float] = (0.0, 0.0)  # (task points, cosine); higher: more sensitive


@dataclass
class Sensitivity:
    all_int8: dict
    ranked: list[LayerScore]
    ref_task: float | None

    def order(self) -> list[int]:
        return [s.index for s in self.ranked]


def rank_layers(ev: Evaluator, n_units: int, ref_task: float | None, task_first: bool = False) -> Sensitivity:
    """Two evaluations per unit: it alone in INT8, and everything but it in INT8. Ranked by
    the output-cosine score, then the task score (``task_first``: the other way round, for a
    target on the task metric alone)."""
    everything = tuple(range(n_units))
    configs = [()] + [tuple(i for i in everything if i != u) for u in everything] + [(u,) for u in everything]
    res = ev(configs)
    base, only, all_but = res[0], res[1 : 1 + n_units], res[1 + n_units :]
    base_loss = loss(base, ref_task)
    scores = []
    for u in everything:
        lo, la = loss(only[u], ref_task), loss(all_but[u], ref_task)
        # harm it does alone + harm removed by keeping it in float (each in the metric's units)
        score = tuple(float(_sum(lo[k], _diff(base_loss[k], la[k]))) for k in range(2))
        scores.append(LayerScore(u, only[u], all_but[u], score))
    first, second = (0, 1) if task_first else (1, 0)
    scores.sort(key=lambda s: (-s.score[first], -s.score[second], s.index))
    return Sensitivity(base, scores, ref_task)


def _diff(a: float, b: float) -> float:
    if math.isinf(a) and math.isinf(b):
        return 0.0
    return a - b


def _sum(a: float, b: float) -> float:
    return a + b if not (math.isinf(a) or math.isinf(b)) else math.inf


@dataclass
class Fallback:
    kept: list[int]  # unit indices, in sensitivity order
    result: dict
    met: bool
    steps: list[dict] = field(default_factory=list)  # the search's trace, for the report


def search(ev: Evaluator, sens: Sensitivity, gates: dict) -> Fallback:
    """Smallest prefix of the ranking that meets the target (galloping, then bisection on its
    length), then prune: drop halves, quarters, ... of the kept set, least sensitive first,
    while the target still holds."""
    ref = sens.ref_task
    order = sens.order()
    steps: list[dict] = []

    def check(kept: list[int], why: str) -> bool:
        r = ev([tuple(kept)])[0]
        ok = meets(r, gates, ref)
        steps.append(
            {"step": why, "kept": len(kept), "meets": ok, "min_cosine": r.get("min_cosine"), "task": r.get("task")}
        )
        return ok

    if meets(sens.all_int8, gates, ref):
        return Fallback(
            [],
            sens.all_int8,
            True,
            [
                {
                    "step": "all layers INT8",
                    "kept": 0,
                    "meets": True,
                    "min_cosine": sens.all_int8.get("min_cosine"),
                    "task": sens.all_int8.get("task"),
                }
            ],
        )
    n = len(order)
    lo, hi, k = 0, None, 1  # lo: a prefix length known to fail
    while k <= n:
        if check(order[:k], f"keep top {k}"):
            hi = k
            break
        lo = k
        k = n if k < n and k * 2 > n else k * 2
    if hi is None:
        best = min(
            (tuple(sorted(order[:j])) for j in range(n + 1) if tuple(sorted(order[:j])) in ev.results),
            key=lambda c: loss(ev.results[c], ref),
        )
        return Fallback(sorted(best, key=order.index), ev.results[best], False, steps)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if check(order[:mid], f"keep top {mid}"):
            hi = mid
        else:
            lo = mid
    kept = order[:hi]
    size = max(1, len(kept) // 2)
    while size >= 1 and kept:
        changed = True
        while changed and len(kept) > 0:
            changed = False
            chunks = [kept[i : i + size] for i in range(0, len(kept), size)][::-1]  # least sensitive first
            trial = [[u for u in kept if u not in c] for c in chunks if len(c) < len(kept)]
            results = ev([tuple(t) for t in trial])
            for t, r in zip(trial, results):
                ok = meets(r, gates, ref)
                steps.append(
                    {
                        "step": f"prune {len(kept) - len(t)}",
                        "kept": len(t),
                        "meets": ok,
                        "min_cosine": r.get("min_cosine"),
                        "task": r.get("task"),
                    }
                )
                if ok:
                    kept = t
                    changed = True
                    break
        size //= 2
    if len(kept) == n:  # only the float model meets it: no INT8 left, not a fallback
        steps.append(
            {
                "step": "every layer kept in float: no INT8 left",
                "kept": n,
                "meets": False,
                "min_cosine": None,
                "task": None,
            }
        )
        return Fallback(kept, ev([tuple(kept)])[0], False, steps)
    return Fallback(kept, ev([tuple(kept)])[0], True, steps)
