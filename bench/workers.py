"""The `workers` set of bench/run.py (issue 20, item 4): `captify-ws serve --workers 2 --broker
redis` against one worker on this 2-core machine.

Every run starts a fresh server with the SQLite store in a temporary folder (a second worker needs
a shared store; one worker uses the same store so that only the process count differs) and one
load generator (../shared/bench/loadgen.sh). Where each runs is a layout:

    w1-pin   one worker on CPU 0, the load generator on CPU 1 (the other sets' layout)
    w1-redis the same with the Redis broker: the hop's cost without a second process
    w2-a     two workers unpinned (CPUs 0-1), the load generator on CPU 1
    w2-noaff the same without document affinity (--worker-affinity-limit 0): the kernel's
             placement, so half the documents' clients are split between the workers

The server's CPU is summed over its workers (and Redis's over redis-server) from /proc, between
0.5 s after the load generator logged that its clients were connected (when it starts its own
window) and its exit: cost per edit or copy = that CPU ÷ edits sent or copies delivered.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from summary import ByTag, dig, fmt, ratio

CAPTIFY = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "captify-ws"
REDIS = "redis://127.0.0.1:6379/0"
#: many documents: 200 documents × 2 lean clients for 10 s, at these edits/s per client (the
#: offered load is 400 × rate edits/s)
MANY_RATES = (5, 10, 20, 40)
MANY = ["--scenario", "many-docs", "--docs", "200", "--duration", "10", "--settle", "20",
        "--client", "lean"]
#: fan-out: 1 writer, 2,000 lean readers (50 timed, the rest paused sinks), 500 edits at 100/s
FANOUT_2000 = ["--scenario", "fanout", "--readers", "2000", "--edits", "500", "--rate", "100",
               "--probes", "50", "--settle", "30", "--client", "lean", "--connect-timeout", "120"]
#: the load generator's line after which it starts measuring (+0.5 s)
CONNECTED = re.compile(r"readers connected:|connected \d+/\d+ clients")


@dataclass(frozen=True)
class Layout:
    """Where a run's processes go: workers (1 or 2) and taskset CPU lists."""

    workers: int
    server_cpus: str
    client_cpus: str
    #: the Redis broker with one worker too (two workers always use it)
    redis: bool = False
    #: document affinity between workers (transport/handoff.py)
    affinity: bool = True


LAYOUTS = {
    "w1-pin": Layout(1, "0", "1"),
    "w1-redis": Layout(1, "0", "1", redis=True),
    "w2-a": Layout(2, "0,1", "1"),
    "w2-noaff": Layout(2, "0,1", "1", affinity=False),
}


def matrix(repeats: tuple[str, ...]) -> list[tuple[str, list[str], list[str]]]:
    """The set's runs for bench/run.py: (tag, layouts, load generator args), interleaved."""
    runs: list[tuple[str, list[str], list[str]]] = []
    for sfx in repeats:
        for rate in MANY_RATES:
            runs.append((f"workers-many-{400 * rate}{sfx}", list(LAYOUTS),
                         [*MANY, "--rate", str(rate)]))
        runs.append((f"workers-fanout-2000{sfx}", ["w1-pin", "w2-a", "w2-noaff"], FANOUT_2000))
    return runs


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (0.0 once it has gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent on anything but idle and iowait since boot (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _pids(command: list[str]) -> list[int]:
    out = subprocess.run(command, capture_output=True, text=True, check=False).stdout
    return [int(x) for x in out.split()]


def _listeners(port: int) -> int:
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True,
                         check=False).stdout
    return len(out.splitlines())


def connections_per_worker(port: int, workers: list[int]) -> list[int]:
    """Established connections on `port` held by each worker (from `ss -p`)."""
    out = subprocess.run(["ss", "-Htnp", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True, check=False).stdout
    return [len(re.findall(rf"pid={pid},", out)) for pid in workers]


def _server_command(layout: Layout, port: int, db: Path) -> list[str]:
    command = ["taskset", "-c", layout.server_cpus, str(CAPTIFY), "serve", "--port", str(port),
               "--store", f"sqlite:///{db}", "--log-level", "warning",
               "--document-create-rate", "0"]
    if layout.workers > 1:
        command += ["--workers", str(layout.workers)]
        if not layout.affinity:
            command += ["--worker-affinity-limit", "0"]
    if layout.workers > 1 or layout.redis:
        command += ["--broker", REDIS, "--broker-prefix", f"bench-workers-{port}"]
    return command


def run(name: str, port: int, tag: str, args: list[str], workdir: Path, bench: Path
        ) -> dict[str, Any]:
    """One run of layout `name`; the load generator's JSON result with `workers_cpu` added:
    {"workers": [CPU s each], "cpu_s", "redis_cpu_s", "window_s", "cpu_pct_of_core"} and the
    cost per edit (many-docs) or per copy (fan-out) recomputed from the workers' sum."""
    layout = LAYOUTS[name]
    server = subprocess.Popen(_server_command(layout, port, workdir / f"w-{port}.db"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while _listeners(port) < layout.workers:
            if time.monotonic() > deadline or server.poll() is not None:
                return {"peer": name, "tag": tag, "error": "server did not start"}
            time.sleep(0.1)
        time.sleep(0.5)
        workers = [server.pid] if layout.workers == 1 else _pids(["pgrep", "-P",
                                                                  str(server.pid)])
        redis = _pids(["pgrep", "-x", "redis-server"])[:1]
        load = os.getloadavg()[0]
        result = _loadgen(bench, layout, port, name, args, workers, redis)
    finally:
        server.terminate()
        server.wait(30)
    lines = [line for line in result["stdout"].splitlines() if line.startswith("{")]
    data: dict[str, Any] = json.loads(lines[-1]) if lines else {
        "error": (result["stderr"] or "no output")[-500:]}
    data.update({"peer": name, "tag": tag, "layout": layout.__dict__, "loadavg_1m": load})
    start, end = result["start"], result["end"]
    if start is None:
        return data
    window = end[0] - start[0]
    per_worker = [round(b - a, 2) for a, b in zip(start[1], end[1], strict=True)]
    cpu = sum(end[1]) - sum(start[1])
    data["workers_cpu"] = {"workers": per_worker, "cpu_s": round(cpu, 2),
                           "connections": result["connections"],
                           "redis_cpu_s": round(end[2] - start[2], 2),
                           "window_s": round(window, 2),
                           "client_cpu_s": round(end[4] - start[4], 2),
                           # what the rest of the machine used meanwhile (other sessions)
                           "others_cpu_s": round(end[3] - start[3] - cpu - (end[2] - start[2])
                                                 - (end[4] - start[4]), 2),
                           "cpu_pct_of_core": round(100 * cpu / window, 1) if window else None}
    if data.get("scenario") == "many-docs" and data.get("edits_sent"):
        data["server_cpu_us_per_edit"] = round(cpu / data["edits_sent"] * 1e6, 2)
    elif data.get("deliveries"):
        copies = data["deliveries"] + (data.get("edits_sent") or 0)
        data["server_cpu_us_per_delivery"] = round(cpu / copies * 1e6, 2)
        data["redis_cpu_us_per_delivery"] = round((end[2] - start[2]) / copies * 1e6, 3)
    return data


def _loadgen(bench: Path, layout: Layout, port: int, label: str, args: list[str],
             workers: list[int], redis: list[int]) -> dict[str, Any]:
    """Run the load generator; snapshot (time, CPU s per worker, Redis's, the machine's busy
    CPU s, the load generator's) 0.5 s after it reports its clients connected, and again when
    it exits."""

    def snapshot(client: float) -> tuple[float, list[float], float, float, float]:
        return (time.monotonic(), [cpu_seconds(p) for p in workers],
                sum(cpu_seconds(p) for p in redis), machine_busy_seconds(), client)

    marks: dict[str, Any] = {"start": None}
    errors: list[str] = []
    proc = subprocess.Popen(
        [str(bench / "loadgen.sh"), "--url", f"ws://127.0.0.1:{port}/ws/fabric",
         "--server-pid", str(workers[0]), "--label", label, "--max-seconds", "240", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "CLIENT_CPU": layout.client_cpus})

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            errors.append(line)
            if marks["start"] is None and CONNECTED.search(line):
                time.sleep(0.5)
                marks["start"] = snapshot(cpu_seconds(proc.pid))
                marks["connections"] = connections_per_worker(port, workers)

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    assert proc.stdout is not None
    stdout = proc.stdout.read()  # the load generator ends itself (--max-seconds)
    # wait4: the load generator's own CPU to its end (loadgen.sh execs node: same pid)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    end = snapshot(usage.ru_utime + usage.ru_stime)
    reader.join(5)
    return {"stdout": stdout, "stderr": "".join(errors), "start": marks["start"], "end": end,
            "connections": marks.get("connections")}


#: many-docs throughput counts at a level only while p99 stays within this (issue 20: "at the
#: same p99")
P99_OK_MS = 100.0


def best_throughput(by_tag: ByTag, layout: str, sfx: str) -> float | None:
    """The highest delivered edits/s of `layout` over the many-docs levels of one repeat whose
    p99 ≤ P99_OK_MS with every document converged, or None if no level qualified."""
    best = None
    for rate in MANY_RATES:
        r = by_tag.get(f"workers-many-{400 * rate}{sfx}", {}).get(layout, {})
        p99 = (r.get("latency_ms") or {}).get("p99")
        if r.get("all_converged") and isinstance(p99, (int, float)) and p99 <= P99_OK_MS:
            best = max(best or 0.0, float(r.get("delivered_per_s") or 0))
    return best


def _client_cpu(result: dict[str, Any]) -> str:
    """The load generator's CPU (% of a core), marked ``sat`` when it was saturated."""
    client = result.get("client") or {}
    return fmt(client.get("cpu_pct_of_core")) + (" sat" if client.get("saturated") else "")


def render_workers(by_tag: ByTag) -> list[str]:
    """Markdown: the many-docs levels per layout, the best throughput at p99 ≤ 100 ms per
    repeat with the two-worker/one-worker ratios, and the 2,000-reader fan-out."""
    many = [t for t in by_tag if t.startswith("workers-many-")]
    lines: list[str] = []
    if many:
        lines += ["| run | layout | delivered/s | p50 ms | p99 ms | workers CPU % of a core "
                  "(each s) | µs/edit | Redis / others CPU s | client CPU % | converged |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for tag in many:
            for name, r in by_tag[tag].items():
                lat, cpu = r.get("latency_ms") or {}, r.get("workers_cpu") or {}
                lines.append("| " + " | ".join([
                    tag, name, fmt(r.get("delivered_per_s")), fmt(lat.get("p50")),
                    fmt(lat.get("p99")),
                    f"{fmt(cpu.get('cpu_pct_of_core'))} ({cpu.get('workers')})",
                    fmt(r.get("server_cpu_us_per_edit")),
                    f"{fmt(cpu.get('redis_cpu_s'), 2)} / {fmt(cpu.get('others_cpu_s'))}",
                    _client_cpu(r),
                    f"{r.get('converged_docs', '–')}/{(r.get('params') or {}).get('docs', '–')}",
                ]) + (f" {r['error'][:80]}" if r.get("error") else "") + " |")
        lines.append("")
        suffixes = sorted({re.sub(r"^workers-many-\d+", "", t) for t in many})
        lines += [f"Best delivered edits/s with p99 ≤ {P99_OK_MS:.0f} ms, per repeat:", "",
                  "| repeat | " + " | ".join(LAYOUTS) + " | w2-a / w1-pin | w2-noaff / w1-pin |",
                  "|---|" + "---|" * (len(LAYOUTS) + 2)]
        for sfx in suffixes:
            best = {name: best_throughput(by_tag, name, sfx) for name in LAYOUTS}
            lines.append("| " + " | ".join([
                sfx or "r1", *(fmt(best[name], 0) for name in LAYOUTS),
                ratio(best["w2-a"], best["w1-pin"]), ratio(best["w2-noaff"], best["w1-pin"]),
            ]) + " |")
        lines.append("")
    if many:
        lines += ["Medians over the repeats:", "", *render_medians(by_tag)]
    fanout = [t for t in by_tag if t.startswith("workers-fanout")]
    if fanout:
        lines += ["| run | layout | p50 ms | p99 ms | max ms | workers µs/copy | Redis µs/copy | "
                  "workers CPU s (each) | others CPU s | client CPU % | converged | server state |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for tag in fanout:
            for name, r in by_tag[tag].items():
                lat, cpu = r.get("latency_ms") or {}, r.get("workers_cpu") or {}
                lines.append("| " + " | ".join([
                    tag, name, fmt(lat.get("p50")), fmt(lat.get("p99")), fmt(lat.get("max")),
                    fmt(r.get("server_cpu_us_per_delivery"), 2),
                    fmt(r.get("redis_cpu_us_per_delivery"), 3),
                    f"{fmt(cpu.get('cpu_s'))} ({cpu.get('workers')})",
                    fmt(cpu.get("others_cpu_s")),
                    _client_cpu(r),
                    fmt(r.get("all_converged")), fmt(r.get("server_state_converged")),
                ]) + (f" {r['error'][:80]}" if r.get("error") else "") + " |")
        lines.append("")
    return lines


def _median_of(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [v for v in (dig(r, key) for r in runs) if isinstance(v, (int, float))]
    return float(statistics.median(values)) if values else None


def render_medians(by_tag: ByTag) -> list[str]:
    """Markdown: medians over the repeats per level and layout — delivered edits/s, p99, the
    workers' CPU µs per edit and the ceiling that cost allows with a core per worker
    (workers × 10⁶ ÷ µs per edit, edits/s) — then the fan-out's medians."""
    lines = ["| offered edits/s | layout | delivered/s | p99 ms | µs/edit | ceiling, a core "
             "per worker (edits/s) | runs |", "|---|---|---|---|---|---|---|"]
    for rate in MANY_RATES:
        prefix = f"workers-many-{400 * rate}"
        for name, layout in LAYOUTS.items():
            runs = [peers[name] for tag, peers in by_tag.items()
                    if re.fullmatch(re.escape(prefix) + r"(-r\d+)?", tag) and name in peers]
            if not runs:
                continue
            cost = _median_of(runs, "server_cpu_us_per_edit")
            lines.append("| " + " | ".join([
                str(400 * rate), name, fmt(_median_of(runs, "delivered_per_s"), 0),
                fmt(_median_of(runs, "latency_ms.p99")), fmt(cost),
                fmt(layout.workers * 1e6 / cost if cost else None, 0), str(len(runs)),
            ]) + " |")
    lines += ["", "| fan-out layout | p50 ms | p99 ms | workers µs/copy | Redis µs/copy | "
              "runs |", "|---|---|---|---|---|---|"]
    for name in LAYOUTS:
        runs = [peers[name] for tag, peers in by_tag.items()
                if tag.startswith("workers-fanout") and name in peers]
        if runs:
            lines.append("| " + " | ".join([
                name, fmt(_median_of(runs, "latency_ms.p50")),
                fmt(_median_of(runs, "latency_ms.p99")),
                fmt(_median_of(runs, "server_cpu_us_per_delivery"), 2),
                fmt(_median_of(runs, "redis_cpu_us_per_delivery"), 3), str(len(runs)),
            ]) + " |")
    return [*lines, ""]
