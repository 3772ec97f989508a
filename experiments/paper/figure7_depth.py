"""Figure 7 in miniature: perplexity vs test-time iterations T.

Trains the tiny looped model and the tiny Attractor LM (the embedded
default's recipe and batches, over seeds), then evaluates each on the whole
validation split at every T from 0 to `--max_depth`: for the Attractor
exactly T plain applications of the head's map from c (T = 0 decodes the
proposal itself), for the looped model T loop steps. Writes a Markdown
table, JSON and a PNG (mean ± std over seeds per T).

  python experiments/paper/figure7_depth.py \\
      --out=experiments/paper/results/figure7_depth     # .md, .json, .png

The paper's Figure 7: the Attractor's perplexity is flat in T, nearly as
good at T = 0 as at its fixed point (equilibrium internalization), while
the looped model is good only near the depth it was trained at.
"""

import os
import statistics
import sys

from attractor_jax.tasks.lm import data as lm_data
from attractor_jax.tasks.lm import evaluation
from attractor_jax.training import trainer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

VARIANTS = {"looped": {"model.preset": "looped-tiny"},
            "attractor": {"model.preset": "attractor-tiny"}}


def sweep(workdir: str, depths) -> list[dict]:
  """Exact-depth perplexities of the model trained in `workdir`."""
  trained, tokenizer, config = trainer.load_trained(workdir)
  batches = lm_data.prepare_validation(config, workdir, tokenizer)
  return evaluation.depth_sweep(trained.model, batches, depths, exact=True)


def summarise(sweeps: dict) -> dict[str, list[dict]]:
  """Per model and T: perplexity mean and std over seeds."""
  curves = {}
  for name, per_seed in sweeps.items():
    by_t = {}
    for rows in per_seed.values():
      for row in rows:
        by_t.setdefault(row["T"], []).append(row["perplexity"])
    curves[name] = [{"T": t, "perplexity": statistics.mean(v),
                     "std": statistics.stdev(v) if len(v) > 1 else 0.0}
                    for t, v in sorted(by_t.items())]
  return curves


def markdown(curves: dict, runs: list[dict], args) -> str:
  depths = [row["T"] for row in curves["attractor"]]
  lines = ["# Figure 7 in miniature: perplexity vs test-time iterations",
           "", f"Tiny presets on the built-in corpus, {args.steps} steps of "
           "the embedded default's batches, seeds "
           f"{', '.join(map(str, args.seeds))}. Attractor: exactly T plain "
           "applications of the head's map from c (T = 0 is the proposal); "
           "looped: T loop steps (trained at mean depth 4). Validation "
           "perplexity, mean ± std over seeds.",
           "", "| T | " + " | ".join(curves) + " |",
           "|---|" + "---|" * len(curves)]
  for i, t in enumerate(depths):
    cells = [f"{c[i]['perplexity']:.2f} ± {c[i]['std']:.2f}"
             for c in curves.values()]
    lines.append(f"| {t} | " + " | ".join(cells) + " |")
  lines += ["", "Runs (trained at the default depth, validation at it):",
            ""] + common.runs_table(runs)
  return "\n".join(lines) + "\n"


def plot(curves: dict, path: str) -> None:
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(5, 3.2), layout="constrained")
  axes = fig.subplots()
  for name, curve in curves.items():
    t = [row["T"] for row in curve]
    mean = [row["perplexity"] for row in curve]
    std = [row["std"] for row in curve]
    axes.errorbar(t, mean, yerr=std, marker="o", capsize=2, label=name)
  axes.set_xlabel("test-time iterations T")
  axes.set_ylabel("validation perplexity")
  axes.set_yscale("log")
  axes.legend()
  fig.savefig(path, dpi=100)


def main(argv=None):
  parser = common.argument_parser(__doc__, "figure7_depth")
  parser.add_argument("--max_depth", type=int, default=16)
  args = parser.parse_args(argv)
  runs = common.train_all(VARIANTS, args.seeds, args.steps, args.workdir_root)
  depths = list(range(args.max_depth + 1))
  sweeps = {name: {r["seed"]: sweep(r["workdir"], depths)
                   for r in runs if r["mode"] == name} for name in VARIANTS}
  curves = summarise(sweeps)
  common.write_outputs(args.out, markdown(curves, runs, args),
                       {"curves": curves, "sweeps": sweeps, "runs": runs,
                        "steps": args.steps},
                       lambda path: plot(curves, path))
  return curves


if __name__ == "__main__":
  main()
