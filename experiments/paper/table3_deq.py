"""Table 3 in miniature: DEQ vs DEQ with tied unembedding vs Attractor.

Trains the tiny DEQ (gated core solved from zero, Jacobian penalty, untied
output head), the same DEQ with its unembedding tied to the embedding (at
the DEQ's depth, and with one more core block, which gives it the
Attractor's parameter count), and the tiny Attractor LM (tied, as the
paper's, and untied, as the DEQ's head), on the built-in corpus with the
embedded default's recipe, over seeds; writes a Markdown table, JSON and a
PNG: validation perplexity over the whole split, the paired difference to
the Attractor, held-out last-word accuracy, parameters, solver iterations
to the tolerance and the converged fraction (all solve with Anderson,
max_iter 16, tol 1e-3).

  python experiments/paper/table3_deq.py \\
      --out=experiments/paper/results/table3_deq     # .md, .json, .png

The paper's Table 3 (60M): DEQ 42.18, DEQ + tied unembedding 38.74,
Attractor 34.05 perplexity, the Attractor reaching the tolerance in 1.7x
fewer iterations (docs/design.md).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

VARIANTS = {
    "deq": {"model.preset": "deq-tiny"},
    "deq_tied": {"model.preset": "deq-tiny", "model.tie_embeddings": True},
    "deq_tied_3": {"model.preset": "deq-tiny", "model.tie_embeddings": True,
                   "model.num_layers": 3},
    "attractor": {"model.preset": "attractor-tiny"},
    "attractor_untied": {"model.preset": "attractor-tiny",
                         "model.tie_embeddings": False},
}
PAPER = {"deq": 42.18, "deq_tied": 38.74, "attractor": 34.05}


def main(argv=None):
  parser = common.argument_parser(__doc__, "table3_deq")
  args = parser.parse_args(argv)
  return common.run_ablation(
      "Table 3 in miniature: DEQ, DEQ + tied unembedding, Attractor",
      VARIANTS, "attractor", PAPER, args)


if __name__ == "__main__":
  main()
