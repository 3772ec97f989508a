"""Table 5 in miniature: the backward modes of the attractor head, compared.

Trains the embedded default (the tiny Attractor LM, built-in corpus, 300
steps) once per backward mode and seed, and writes a Markdown table, a JSON
file and a PNG: validation perplexity over the whole validation split (mean
and std over seeds, with the standard error of the mean), training step time
and compiled temporary memory of the training step, both relative to
`implicit`, measured on one machine in one run.

  python experiments/paper/table5_backward.py \\
      --out=experiments/paper/results/table5_backward   # .md, .json, .png

The paper's Table 5 (760M, 20B tokens): implicit 33.91 perplexity at 2.7x
the step time of onestep, phantom 34.24, onestep 34.05 (docs/design.md).
"""

import json
import math
import os
import pathlib
import sys

import jax

from attractor_jax.configs import lm
from attractor_jax.tasks.lm import checks as lm_checks

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

MODES = ("implicit", "phantom", "onestep")
PAPER = {"implicit": 33.91, "phantom": 34.24, "onestep": 34.05}


def step_memory(mode: str) -> int | None:
  """Compiled temporary bytes of the default model's loss-and-gradient."""
  config = lm.get_config()
  config.solve.backward = mode
  model_config = lm_checks.model_config_from(config,
                                              config.data.vocab_size)
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]
                         / "benchmarks"))
  import lm_step_benchmark  # pylint: disable=g-import-not-at-top
  args = lm_step_benchmark.parse_args(
      [f"--batch={config.batch_size}", f"--seq_len={config.data.seq_len}"])
  return lm_step_benchmark.compiled_temp_bytes(model_config, args)


def summarise(runs: list[dict], memory: dict) -> list[dict]:
  """`common.over_seeds` against implicit, with the memory ratio and the
  paper's perplexity."""
  rows = common.over_seeds(runs, MODES, baseline=MODES[0])
  for row in rows:
    row["temp_bytes"] = memory.get(row["mode"])
    base = memory.get(MODES[0])
    row["memory_ratio"] = (row["temp_bytes"] / base
                           if row["temp_bytes"] and base else math.nan)
    row["paper"] = PAPER[row["mode"]]
  return rows


def markdown(rows: list[dict], runs: list[dict], args) -> str:
  lines = [
      "# Table 5 in miniature: backward modes",
      "",
      f"Tiny Attractor LM (the embedded default), built-in corpus, "
      f"{args.steps} steps, seeds {', '.join(map(str, args.seeds))}; "
      f"perplexity over the whole validation split "
      f"(about {runs[0]['tokens']} tokens); mean ± std over seeds, and the "
      "standard error of the mean (sem). The seed also draws the "
      "train/validation split, so perplexities vary more across seeds than "
      "across modes: the paired difference to implicit (same seed) is the "
      "comparison that can rank the modes. Step time and compiled temporary "
      "memory relative to implicit, measured in this run on "
      f"{jax.devices()[0].device_kind} ({os.cpu_count()} cores).",
      "",
      "| backward | perplexity | sem | vs implicit (paired) | solver "
      "iterations | step time | temp memory | paper (760M) |",
      "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(
        common.perplexity_cells(r) +
        f"{r['iterations']:.1f} | {r['step_time_ratio']:.2f}x | "
        f"{r['memory_ratio']:.2f}x | {r['paper']:.2f} |")
  lines += ["", "Runs:", ""] + common.runs_table(runs)
  return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: str) -> None:
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(8, 3), layout="constrained")
  left, middle, right = fig.subplots(1, 3)
  names = [r["mode"] for r in rows]
  left.bar(names, [r["perplexity"] for r in rows],
           yerr=[r["std"] for r in rows], color="C0")
  low = min(r["perplexity"] - 2 * r["std"] for r in rows)
  left.set_ylim(low * 0.98, None)
  left.set_title("validation perplexity")
  middle.bar(names, [r["step_time_ratio"] for r in rows], color="C1")
  middle.set_title("step time / implicit")
  right.bar(names, [r["memory_ratio"] for r in rows], color="C2")
  right.set_title("temp memory / implicit")
  fig.savefig(path, dpi=100)


def main(argv=None):
  parser = common.argument_parser(__doc__, "table5_backward")
  parser.add_argument("--from_json", default=None,
                      help="rewrite the table from a previous OUT.json")
  args = parser.parse_args(argv)
  if args.from_json:
    with open(args.from_json, encoding="utf-8") as f:
      saved = json.load(f)
    runs = saved["runs"]
    memory = {r["mode"]: r["temp_bytes"] for r in saved["rows"]}
  else:
    runs = common.train_all({mode: {"solve.backward": mode} for mode in MODES},
                            args.seeds, args.steps, args.workdir_root)
    memory = {mode: step_memory(mode) for mode in MODES}
  rows = summarise(runs, memory)
  common.write_outputs(args.out, markdown(rows, runs, args),
                       {"rows": rows, "runs": runs, "steps": args.steps},
                       lambda path: plot(rows, path))
  return rows


if __name__ == "__main__":
  main()
