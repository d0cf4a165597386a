"""Shared by the benchmarks: timing (medians of interleaved runs), percentiles,
tables, the machine's description, and writing a result section into
docs/benchmarks.md. Each benchmark owns one section, delimited by markers
``<!-- bench:NAME -->`` ... ``<!-- /bench:NAME -->``; rerunning replaces it. What is
outside the markers (the readings) is written by hand and left alone."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

__all__ = ["interleaved_medians", "machine", "percentile", "table", "write_section"]

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
_HEADER = "# Benchmarks\n\nEvery figure here is written by a script in `bench/`; the command is given with each section.\n"


def machine() -> str:
    """One line: CPU, cores, Python, torch and thread count, date."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), {time.strftime('%Y-%m-%d')}"
    )


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation."""
    s = sorted(values)
    if not s:
        raise ValueError("no values")
    k = (len(s) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def interleaved_timings(
    fns: Mapping[str, Callable[[], object]],
    repeats: int,
    *,
    warmup: int = 2,
    before: Mapping[str, Callable[[], object]] | None = None,
    sync: Callable[[], object] | None = None,
) -> dict[str, list[float]]:
    """Wall time in seconds of each ``fns[name]()`` in each of ``repeats`` timed
    rounds after ``warmup`` untimed ones. Rounds are interleaved (round robin, the
    order rotating each round) so that every function sees the same machine load;
    ``before[name]()``, when given, runs untimed before each call of ``fns[name]``;
    ``sync()`` (e.g. ``torch.cuda.synchronize``) runs before and after each timed call."""
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(warmup + repeats):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            if before and name in before:
                before[name]()
            if sync is not None:
                sync()
            t = time.perf_counter()
            fns[name]()
            if sync is not None:
                sync()
            if i >= warmup:
                times[name].append(time.perf_counter() - t)
    return times


def interleaved_medians(
    fns: Mapping[str, Callable[[], object]],
    repeats: int,
    *,
    warmup: int = 2,
    before: Mapping[str, Callable[[], object]] | None = None,
    sync: Callable[[], object] | None = None,
) -> dict[str, float]:
    """Median seconds of each function over ``interleaved_timings``' rounds."""
    times = interleaved_timings(fns, repeats, warmup=warmup, before=before, sync=sync)
    return {n: statistics.median(v) for n, v in times.items()}


def paired_ratios(times: Mapping[str, Sequence[float]], base: str) -> dict[str, float]:
    """Median over rounds of each function's time divided by ``base``'s in the same
    round: robust to a machine whose speed drifts between rounds."""
    return {
        n: statistics.median(t / b for t, b in zip(v, times[base], strict=True))
        for n, v in times.items()
    }


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def write_section(name: str, title: str, body: str, command: str, path: Path = DOCS) -> None:
    """Replace (or append) section ``name`` of docs/benchmarks.md and echo it."""
    section = (
        f"<!-- bench:{name} -->\n## {title}\n\nCommand: `{command}`  \nMachine: {machine()}\n\n{body.strip()}\n"
        f"<!-- /bench:{name} -->"
    )
    text = path.read_text() if path.exists() else _HEADER
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        after = rest.split(end, 1)[1]
        text = before + section + after
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(section, file=sys.stdout)
