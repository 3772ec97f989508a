"""Table 2 in miniature: the reasoning models on CPU Sudoku, over seeds.

Trains the Attractor reasoner, TRM and the plain Transformer (the `tiny`
variants of attractor_jax/configs/sudoku.py, ~0.6M parameters each) on the
committed puzzle set for the same steps, once per seed, lets the trainer
evaluate the whole test set, and writes a Markdown table, JSON and a PNG:
exact-puzzle and blank-cell accuracy, mean ± std over seeds, and the paired
difference to the Transformer (same seed: same initialisation stream and
batch order). Finished runs are kept in OUT.json; a rerun skips them, so an
interrupted table resumes.

  python experiments/paper/table2_reasoning.py \\
      --out=experiments/paper/results/table2_reasoning   # .md, .json, .png

The paper's Table 2 (27M parameters, ~1000 examples, GPU-days): Attractor
91.4% exact on Sudoku-Extreme, TRM 0.0% at 27M (74.7% at 7M), Transformer
0.0% (docs/design.md). A CPU budget of minutes reaches no exact solves; the
blank-cell accuracy is what can still rank the models.
"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, os.pardir, "reasoning"))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position
import cpu_table  # pylint: disable=g-import-not-at-top,wrong-import-position

MODELS = {"attractor": "tiny", "trm": "trm-tiny",
          "transformer": "transformer-tiny"}
METRICS = ("exact_accuracy", "blank_cell_accuracy", "cell_accuracy")


def run_row(name: str, seed: int, result: dict) -> dict:
  """One run's table row from its puzzle_eval.json contents."""
  row = {"mode": name, "seed": seed, "wall_s": result["wall_seconds"],
         "command": result["command"],
         "segments": result.get("halting/segments_mean", 1.0)}
  row.update({m: result[m] for m in METRICS})
  return row


def summarise(runs: list[dict]) -> list[dict]:
  rows = []
  for name in MODELS:
    row = {"mode": name}
    for metric in METRICS:
      stats = common.paired_stats(runs, name, "transformer", metric)
      row.update({f"{metric}/{k}": v for k, v in stats.items()})
    row["seeds"] = stats["seeds"]
    rows.append(row)
  return rows


def markdown(rows: list[dict], runs: list[dict], args) -> str:
  lines = [
      "# Table 2 in miniature: reasoning on CPU Sudoku",
      "",
      f"The tiny puzzle presets, {args.steps} training steps each on the "
      f"committed puzzle set, seeds {', '.join(map(str, args.seeds))}; "
      "accuracies over the whole test set (5000 puzzles, every difficulty "
      "tier): mean ± std over seeds, and the paired difference to the "
      "Transformer (same seed) with its standard error, in points.",
      "",
      "| model | exact puzzles | blank cells | vs Transformer (paired) | "
      "all cells |",
      "|---|---|---|---|---|"]
  for r in rows:
    pct = lambda m, k: 100 * r[f"{m}/{k}"]  # pylint: disable=cell-var-from-loop
    lines.append(
        f"| {r['mode']} | {pct('exact_accuracy', 'mean'):.1f}% | "
        f"{pct('blank_cell_accuracy', 'mean'):.1f} ± "
        f"{pct('blank_cell_accuracy', 'std'):.1f}% | "
        f"{pct('blank_cell_accuracy', 'diff'):+.1f} ± "
        f"{pct('blank_cell_accuracy', 'diff_sem'):.1f} | "
        f"{pct('cell_accuracy', 'mean'):.1f}% |")
  lines += ["", "Runs:", "",
            "| model | seed | exact | blank cells | wall min |",
            "|---|---|---|---|---|"]
  for r in runs:
    lines.append(f"| {r['mode']} | {r['seed']} | "
                 f"{100 * r['exact_accuracy']:.1f}% | "
                 f"{100 * r['blank_cell_accuracy']:.1f}% | "
                 f"{r['wall_s'] / 60:.1f} |")
  return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: str) -> None:
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(4, 3), layout="constrained")
  axes = fig.subplots()
  axes.bar([r["mode"] for r in rows],
           [100 * r["blank_cell_accuracy/mean"] for r in rows],
           yerr=[100 * r["blank_cell_accuracy/std"] for r in rows])
  axes.set_ylabel("blank-cell accuracy (%)")
  axes.set_title("CPU Sudoku, mean ± std over seeds")
  fig.savefig(path, dpi=100)


def main(argv=None):
  parser = common.argument_parser(__doc__, "table2_reasoning", steps=1000)
  args = parser.parse_args(argv)
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  runs = []
  if os.path.exists(args.out + ".json"):
    with open(args.out + ".json", encoding="utf-8") as f:
      previous = json.load(f)
    if previous["steps"] == args.steps:
      runs = previous["runs"]
  for seed in args.seeds:
    for name, variant in MODELS.items():
      if any(r["mode"] == name and r["seed"] == seed for r in runs):
        continue
      workdir = os.path.join(args.workdir_root, f"{name}-{seed}")
      result = cpu_table.run("sudoku", variant, args.steps, workdir,
                             [f"--config.seed={seed}"])
      runs.append(run_row(name, seed, result))
      with open(args.out + ".json", "w", encoding="utf-8") as f:
        json.dump({"runs": runs, "steps": args.steps}, f, indent=2)
  runs = [r for r in runs if r["seed"] in args.seeds]
  rows = summarise(runs)
  common.write_outputs(args.out, markdown(rows, runs, args),
                       {"rows": rows, "runs": runs, "steps": args.steps},
                       lambda path: plot(rows, path))
  return rows


if __name__ == "__main__":
  main()
