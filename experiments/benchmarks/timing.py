"""The benchmarks' clock: median wall time of a jitted call."""

import statistics
import time

import jax


def median_seconds(fn, *args, repeats: int) -> float:
  """Median wall seconds of fn(*args) over `repeats` calls after a warm-up."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)
