"""bench/workers.py (issue 20 item 4): what the `workers` set reports as a layout's best
many-documents throughput — the highest delivered rate whose p99 stays within 100 ms with every
document converged — and the ratio of two workers to one in the rendered table."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import workers


def _run(delivered: int, p99: float, converged: bool = True) -> dict[str, Any]:
    return {"delivered_per_s": delivered, "latency_ms": {"p50": 1.0, "p99": p99},
            "all_converged": converged, "converged_docs": 200, "params": {"docs": 200}}


def _by_tag() -> dict[str, dict[str, dict[str, Any]]]:
    rates = workers.MANY_RATES
    return {
        f"workers-many-{400 * rates[0]}": {"w1-pin": _run(800, 20), "w2-a": _run(800, 30)},
        f"workers-many-{400 * rates[1]}": {"w1-pin": _run(2000, 90), "w2-a": _run(2000, 150)},
        f"workers-many-{400 * rates[2]}": {"w1-pin": _run(4000, 99, converged=False),
                                           "w2-a": _run(4000, 40)},
    }


def test_best_throughput_is_the_highest_converged_level_within_the_p99_bound() -> None:
    by_tag = _by_tag()
    assert workers.best_throughput(by_tag, "w1-pin", "") == 2000
    assert workers.best_throughput(by_tag, "w2-a", "") == 4000
    assert workers.best_throughput(by_tag, "w2-noaff", "") is None


def test_the_table_gives_two_workers_over_one_per_repeat() -> None:
    lines = workers.render_workers(_by_tag())
    assert "| r1 | 2000 | – | 4000 | – | 2.00× | – |" in lines


def test_every_repeat_runs_each_layout_at_each_level_and_the_fanout() -> None:
    runs = workers.matrix(("", "-r2"))
    tags = [tag for tag, _, _ in runs]
    assert tags.count("workers-fanout-2000-r2") == 1
    assert len(tags) == 2 * (len(workers.MANY_RATES) + 1)
    assert all(set(layouts) == set(workers.LAYOUTS) for tag, layouts, _ in runs
               if tag.startswith("workers-many"))
