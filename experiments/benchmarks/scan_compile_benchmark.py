"""Compile time and compiled memory vs depth: looped vs scanned layers.

    python experiments/benchmarks/scan_compile_benchmark.py
    python experiments/benchmarks/scan_compile_benchmark.py --model=attractor \\
        --depths=2,4,8,16,32 --dim=128

For each depth, the training step's loss and gradient (`jax.jit` of
`jax.value_and_grad` of the model's loss) is traced and lowered, then
compiled, for three layouts of the same model (GPT by default, the layers
that `model.scan_layers` stacks):

  loop              an nnx.List of Blocks in a Python loop (the default)
  scan              the blocks' parameters stacked, one `nnx.scan`
  scan+remat=full   the same, each layer rematerialised in the backward pass

It prints the seconds to trace+lower and to compile, XLA's compiled memory
(`memory_analysis()`: temporaries and arguments, where the backend reports
them) and the median time of a few steps of the compiled function.
"""

import argparse
import statistics
import time

import jax
from flax import nnx

from attractor_jax import models
from attractor_jax.models.config import AttractorLMConfig
from attractor_jax.models.config import GPTConfig
from attractor_jax.nn.attractor_head import SolveConfig

LAYOUTS = {"loop": dict(scan_layers=False, remat="none"),
           "scan": dict(scan_layers=True, remat="none"),
           "scan+remat=full": dict(scan_layers=True, remat="full")}
MIB = 2.0 ** 20


def model_config(args, depth: int, layout: str):
  shared = dict(vocab_size=args.vocab, dim=args.dim, num_heads=args.heads,
                mlp_dim=4 * args.dim, num_layers=depth, out_init_scale=1.0,
                **LAYOUTS[layout])
  if args.model == "gpt":
    return GPTConfig(**shared)
  # A fixed number of head iterations, so only the backbone varies.
  return AttractorLMConfig(**shared, solve=SolveConfig(
      solver="picard", max_iter=4, min_iter=4, tol=1e-30,
      backward="onestep"))


def measure(args, depth: int, layout: str) -> dict:
  """Lower, compile and time one layout's loss-and-gradient step."""
  model = models.build_model(model_config(args, depth, layout),
                             rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  tokens = jax.random.randint(jax.random.key(0), (args.batch, args.seq_len),
                              0, args.vocab)

  def loss(state, tokens):
    return nnx.merge(graphdef, state)(tokens, targets=tokens).loss

  step = jax.jit(jax.value_and_grad(loss))
  start = time.perf_counter()
  lowered = step.lower(state, tokens)
  lower_s = time.perf_counter() - start
  start = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  analysis = compiled.memory_analysis()
  temp = getattr(analysis, "temp_size_in_bytes", None)
  argument = getattr(analysis, "argument_size_in_bytes", None)
  jax.block_until_ready(compiled(state, tokens))
  times = []
  for _ in range(args.steps):
    start = time.perf_counter()
    jax.block_until_ready(compiled(state, tokens))
    times.append(time.perf_counter() - start)
  return dict(depth=depth, layout=layout, lower_s=lower_s,
              compile_s=compile_s, temp_bytes=temp, argument_bytes=argument,
              step_ms=1e3 * statistics.median(times))


def _mib(value) -> str:
  return "n/a" if value is None else f"{value / MIB:.2f}"


def print_table(rows: list[dict]) -> None:
  print(f"{'depth':>5}  {'layout':<16} {'lower s':>8} {'compile s':>9} "
        f"{'temp MiB':>9} {'args MiB':>9} {'step ms':>8}")
  for row in rows:
    print(f"{row['depth']:>5}  {row['layout']:<16} {row['lower_s']:>8.2f} "
          f"{row['compile_s']:>9.2f} {_mib(row['temp_bytes']):>9} "
          f"{_mib(row['argument_bytes']):>9} {row['step_ms']:>8.1f}")


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", choices=("gpt", "attractor"), default="gpt")
  parser.add_argument("--depths", default="2,4,8,16",
                      help="comma-separated numbers of layers")
  parser.add_argument("--dim", type=int, default=64)
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--vocab", type=int, default=256)
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--seq_len", type=int, default=64)
  parser.add_argument("--steps", type=int, default=3,
                      help="timed steps per layout (median)")
  return parser.parse_args(argv)


def main(argv=None) -> list[dict]:
  args = parse_args(argv)
  depths = [int(d) for d in args.depths.split(",")]
  print(f"{args.model}, width {args.dim}, batch {args.batch} x "
        f"{args.seq_len}, {jax.devices()[0].platform}")
  rows = [measure(args, depth, layout)
          for depth in depths for layout in LAYOUTS]
  print_table(rows)
  loop = {r["depth"]: r for r in rows if r["layout"] == "loop"}
  scan = {r["depth"]: r for r in rows if r["layout"] == "scan"}
  ratios = [loop[d]["compile_s"] / scan[d]["compile_s"] for d in depths]
  print("loop / scan compile time: "
        + ", ".join(f"{d} layers {r:.1f}x" for d, r in zip(depths, ratios)))
  return rows


if __name__ == "__main__":
  main()
