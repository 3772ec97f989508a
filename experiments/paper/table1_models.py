"""Table 1 in miniature: GPT vs looped vs Attractor at equal size and tokens.

Trains the tiny presets (gpt-tiny 164k, looped-tiny 165k, attractor-tiny 165k
parameters) on the built-in corpus with the embedded default's recipe, the
same batches and steps, over seeds; writes a Markdown table, JSON and a PNG:
validation perplexity over the whole validation split (mean ± std, sem, the
paired difference to GPT), held-out last-word perplexity and accuracy
(LAMBADA-style),
training FLOPs per token (every solver iteration and loop step counted,
`attractor_jax/models/flops.py`) and step time.

  python experiments/paper/table1_models.py \\
      --out=experiments/paper/results/table1_models     # .md, .json, .png

The paper's Table 1 (140M to 770M, perplexity): the Attractor LM beats GPT
and the looped model at every size (docs/design.md).
"""

import os
import sys

from attractor_jax.models import flops
from attractor_jax.tasks.lm import checks as lm_checks

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

VARIANTS = {"gpt": {"model.preset": "gpt-tiny"},
            "looped": {"model.preset": "looped-tiny"},
            "attractor": {"model.preset": "attractor-tiny"}}


def flops_per_token(name: str, iterations: float) -> float:
  config = common.config_with(VARIANTS[name], seed=0, steps=1)
  model_config = lm_checks.model_config_from(config, config.data.vocab_size)
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
      "", common.setup_line(runs, args, "gpt") + " Training FLOPs per token "
      "count every solver iteration and loop step.", "",
      "| model | perplexity | sem | vs GPT (paired) | last-word ppl | "
      "vs GPT (paired) | last-word acc. | solver iterations | "
      "train MFLOP / token | step time |",
      "|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(
        common.perplexity_cells(r) +
        f"{common.last_word_ppl(r)} | "
        f"{r['last_word_ppl_diff'] / 1e3:+.1f}k ± "
        f"{r['last_word_ppl_diff_sem'] / 1e3:.1f}k | "
        f"{100 * r['last_word_mean']:.1f}% | "
        f"{common.number(r['iterations'])} | "
        f"{r['train_flops_per_token'] / 1e6:.1f} | "
        f"{r['step_time_ratio']:.2f}x |")
  lines += ["", "Runs:", ""] + common.runs_table(runs)
  return "\n".join(lines) + "\n"


def main(argv=None):
  parser = common.argument_parser(__doc__, "table1_models")
  args = parser.parse_args(argv)
  runs = common.train_all(VARIANTS, args.seeds, args.steps, args.workdir_root)
  rows = summarise(runs)
  common.write_outputs(args.out, markdown(rows, runs, args),
                       {"rows": rows, "runs": runs, "steps": args.steps},
                       lambda path: common.plot_perplexity(rows, path, "gpt"))
  return rows


if __name__ == "__main__":
  main()
