"""The reasoning table on a CPU: three puzzle models, one budget, one table.

Trains each model with `python -m attractor_jax.train` on the committed
puzzle set for the same number of steps, lets the trainer evaluate the
whole test set (every puzzle, the maximum number of segments), and writes a
Markdown table of exact accuracy per tier, cell accuracies and wall time:

  python experiments/reasoning/cpu_table.py --puzzle=sudoku --steps=2000 \
      --out=experiments/reasoning/results/sudoku_cpu.md

Each run's workdir is kept under --workdir_root (evaluate it again with
`python -m attractor_jax.evaluate --workdir=...`). The results also go to
OUT.json; a later call with --models=... reruns only those models and keeps
the others' rows.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

MODELS = ("tiny", "trm-tiny", "transformer-tiny")
# The tiers of attractor_jax.puzzles.sudoku.TIERS and
# attractor_jax.tasks.puzzles.data.MAZE_TIERS, easiest first.
TIERS = {"sudoku": ["easy", "medium", "hard", "extreme"],
         "maze": ["111-120", "121-140", "141+"]}
NAMES = {"tiny": "Attractor reasoner", "trm-tiny": "TRM",
         "transformer-tiny": "Transformer"}


def run(puzzle: str, variant: str, steps: int, workdir: str,
        extra: list[str]) -> dict:
  """Trains one variant from scratch; its puzzle_eval.json and wall time."""
  shutil.rmtree(workdir, ignore_errors=True)
  command = [sys.executable, "-m", "attractor_jax.train",
             f"--workdir={workdir}",
             f"--config=attractor_jax/configs/{puzzle}.py:{variant}",
             f"--config.total_steps={steps}"] + extra
  print(" ".join(command), flush=True)
  start = time.perf_counter()
  subprocess.run(command, check=True)
  seconds = time.perf_counter() - start
  with open(os.path.join(workdir, "eval", "puzzle_eval.json")) as f:
    result = json.load(f)
  result["wall_seconds"] = seconds
  result["command"] = " ".join(command[1:])
  return result


def table(results: dict, tiers: list[str]) -> str:
  head = (["model", "steps", "wall"] + [f"exact {t}" for t in tiers]
          + ["exact all", "cells", "blank cells", "halting exact"])
  lines = ["| " + " | ".join(head) + " |",
           "|" + "---|" * len(head)]
  for variant, r in results.items():
    cells = [NAMES.get(variant, variant), str(r["step"]),
             f"{r['wall_seconds'] / 60:.1f} min"]
    cells += [f"{100 * r.get(f'tier/{t}/exact_accuracy', 0):.1f}%"
              for t in tiers]
    cells += [f"{100 * r['exact_accuracy']:.1f}%",
              f"{100 * r['cell_accuracy']:.1f}%",
              f"{100 * r['blank_cell_accuracy']:.1f}%",
              f"{100 * r['halting/exact_accuracy']:.1f}%"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--puzzle", default="sudoku", choices=("sudoku",
                                                             "maze"))
  parser.add_argument("--steps", type=int, default=2000)
  parser.add_argument("--models", default=",".join(MODELS))
  parser.add_argument("--workdir_root", default="/tmp/reasoning-cpu")
  parser.add_argument("--out", required=True)
  parser.add_argument("extra", nargs="*",
                      help="more --config.* overrides for every run")
  args = parser.parse_args()
  # Runs of other models from an earlier call stay in the table.
  results = {}
  if os.path.exists(args.out + ".json"):
    with open(args.out + ".json") as f:
      results = json.load(f)
  for variant in args.models.split(","):
    workdir = os.path.join(args.workdir_root, f"{args.puzzle}-{variant}")
    results[variant] = run(args.puzzle, variant, args.steps, workdir,
                           args.extra)
    with open(args.out + ".json", "w") as f:
      json.dump(results, f, indent=2, sort_keys=True)
  tiers = TIERS[args.puzzle]
  text = table({v: results[v] for v in MODELS if v in results}, tiers)
  with open(args.out, "w") as f:
    f.write(text + "\n")
  print(text)


if __name__ == "__main__":
  main()
