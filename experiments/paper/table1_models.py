"""Table 1 in miniature: GPT vs looped vs Attractor at equal size and tokens.

Trains the tiny presets (gpt-tiny 164k, looped-tiny 165k, attractor-tiny 165k
parameters) on the built-in corpus with the embedded default's recipe, the
same batches and steps, over seeds; writes a Markdown table, JSON and a PNG:
validation perplexity over the whole validation split (mean ± std, sem, the
paired difference to GPT), training FLOPs per token (every solver iteration
and loop step counted, `attractor_jax/models/flops.py`) and step time.

  python experiments/paper/table1_models.py \\
      --out=experiments/paper/results/table1_models     # .md, .json, .png

The paper's Table 1 (140M to 770M, perplexity): the Attractor LM beats GPT
and the looped model at every size (docs/design.md).
"""

import argparse
import os
import sys

from attractor_jax.models import flops
from attractor_jax.training import experiment

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

VARIANTS = {"gpt": {"model.preset": "gpt-tiny"},
            "looped": {"model.preset": "looped-tiny"},
            "attractor": {"model.preset": "attractor-tiny"}}


def flops_per_token(name: str, iterations: float) -> float:
  config = common.config_with(VARIANTS[name], seed=0, steps=1)
  model_config = experiment.model_config_from(config, config.data.vocab_size)
  solver_iterations = iterations if iterations == iterations else None
  return flops.train_flops_per_token(model_config, config.data.seq_len,
                                     solver_iterations)


def summarise(runs: list[dict]) -> list[dict]:
  rows = common.over_seeds(runs, VARIANTS, baseline="gpt")
  for row in rows:
    row["train_flops_per_token"] = flops_per_token(row["mode"],
                                                   row["iterations"])
  return rows


def markdown(rows: list[dict], runs: list[dict], args) -> str:
  lines = [
      "# Table 1 in miniature: GPT, looped, Attractor",
      "",
      f"Tiny presets on the built-in corpus, {args.steps} steps of the "
      f"embedded default's batches, seeds {', '.join(map(str, args.seeds))};"
      f" perplexity over the whole validation split (about "
      f"{runs[0]['tokens']} tokens): mean ± std over seeds, the standard "
      "error of the mean (sem), and the paired difference to GPT (same seed:"
      " same split, batches and data order). Training FLOPs per token count "
      "every solver iteration and loop step.",
      "",
      "| model | perplexity | sem | vs GPT (paired) | solver iterations | "
      "train MFLOP / token | step time |",
      "|---|---|---|---|---|---|---|"]
  for r in rows:
    iterations = ("-" if r["iterations"] != r["iterations"]
                  else f"{r['iterations']:.1f}")
    lines.append(
        f"| {r['mode']} | {r['perplexity']:.2f} ± {r['std']:.2f} | "
        f"{r['sem']:.2f} | {r['diff']:+.2f} ± {r['diff_sem']:.2f} | "
        f"{iterations} | {r['train_flops_per_token'] / 1e6:.1f} | "
        f"{r['step_time_ratio']:.2f}x |")
  lines += ["", "Runs:", ""] + common.runs_table(runs)
  return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: str) -> None:
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(6, 3), layout="constrained")
  left, right = fig.subplots(1, 2)
  names = [r["mode"] for r in rows]
  left.bar(names, [r["perplexity"] for r in rows],
           yerr=[r["std"] for r in rows], color="C0")
  left.set_title("validation perplexity")
  right.bar(names, [r["diff"] for r in rows],
            yerr=[r["diff_sem"] for r in rows], color="C1")
  right.axhline(0.0, color="black", linewidth=0.8)
  right.set_title("paired difference to GPT")
  fig.savefig(path, dpi=100)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--workdir_root", default="/tmp/table1_models")
  parser.add_argument("--out", default="experiments/paper/results/"
                      "table1_models")
  args = parser.parse_args(argv)
  runs = common.train_all(VARIANTS, args.seeds, args.steps, args.workdir_root)
  rows = summarise(runs)
  common.write_outputs(args.out, markdown(rows, runs, args),
                       {"rows": rows, "runs": runs, "steps": args.steps},
                       lambda path: plot(rows, path))
  return rows


if __name__ == "__main__":
  main()
