"""Run time and peak memory of the README's example configs, measured.

    python experiments/benchmarks/config_costs.py                 # all of them
    python experiments/benchmarks/config_costs.py --only lm-default
    python experiments/benchmarks/config_costs.py --steps 100     # shortened

Each config trains in a fresh process (`python -m attractor_jax.train`, a new
temporary workdir) exactly as the README runs it; the table gives the wall
time of the whole command (start-up, compilation, training, the final
evaluation) and its peak resident memory, read from the operating system's
accounting of that process (`os.wait4`). `--steps N` shortens every run to N
steps and says so in the table (the final evaluation still runs in full).
Run it on an otherwise idle machine: the README's figures are its output.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

# name -> the train command's flags, as the README gives them.
CONFIGS = {
    "lm-default": [],
    "sudoku-tiny": ["--config=attractor_jax/configs/sudoku.py:tiny"],
    "maze-tiny": ["--config=attractor_jax/configs/maze.py:tiny"],
    "prefix-sums": ["--config=attractor_jax/configs/extrapolation.py:"
                    "prefix-sums"],
}


def measure(flags: list[str], steps: int | None) -> dict:
  """Wall seconds, peak RSS (GiB) and exit status of one training command."""
  with tempfile.TemporaryDirectory(prefix="config-costs-") as workdir:
    command = [sys.executable, "-m", "attractor_jax.train",
               f"--workdir={workdir}", *flags]
    if steps:
      command.append(f"--config.total_steps={steps}")
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    stderr = process.stderr.read()
    process.stderr.close()
  return {"wall_s": wall, "peak_gib": usage.ru_maxrss / 2**20,
          "exit": os.waitstatus_to_exitcode(status),
          "error": stderr.strip().splitlines()[-2:] if status else []}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--only", choices=sorted(CONFIGS), action="append")
  parser.add_argument("--steps", type=int, default=None,
                      help="shorten every run to this many steps")
  args = parser.parse_args(argv)
  names = args.only or list(CONFIGS)
  steps = f"{args.steps} steps" if args.steps else "the config's steps"
  print(f"| config | run | wall time | peak memory |\n|---|---|---|---|")
  failed = 0
  for name in names:
    result = measure(CONFIGS[name], args.steps)
    failed += result["exit"] != 0
    note = "" if result["exit"] == 0 else f" (exit {result['exit']}: " \
        f"{' '.join(result['error'])})"
    print(f"| {name} | {steps} | {result['wall_s'] / 60:.1f} min | "
          f"{result['peak_gib']:.2f} GiB{note} |", flush=True)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
