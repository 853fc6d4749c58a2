"""Shared pieces of the benchmark scripts: timing, tables, JSON."""

import json
import os
import platform
import statistics
import time

import numpy as np


def interleaved_medians(candidates, reps, warmup=3):
    """Median seconds of each zero-argument callable, repetitions interleaved.

    Interleaving (A B C A B C ...) spreads the machine's drift over all
    candidates, so ratios taken from one run are fair even on a noisy host.
    """
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    samples = {name: [] for name in candidates}
    for _ in range(reps):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(times) for name, times in samples.items()}


def markdown_table(headers, rows):
    """A markdown table as one string."""
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


def print_table(headers, rows):
    print(markdown_table(headers, rows))


def machine_info():
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
    }


def write_json(path, payload):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=float)
    print(f"wrote {path}")


def random_array(shape, seed):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")
