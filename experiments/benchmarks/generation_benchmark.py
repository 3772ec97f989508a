"""Tokens/s of cached vs uncached decoding of an Attractor LM at a 256 context.

Cached decoding keeps backbone and head keys/values and solves each new
position alone against the cached fixed point; uncached decoding re-runs the
model and re-solves the whole prefix per token. Both are compiled and warmed
up first, then timed in alternation so machine noise hits both alike.

  python experiments/benchmarks/generation_benchmark.py          # ~1 min
  python experiments/benchmarks/generation_benchmark.py --quick  # smoke
"""

import argparse
import time

import jax
import numpy as np
from flax import nnx

from attractor_jax.models.attractor_lm import AttractorLM
from attractor_jax.models.config import ModelConfig
from attractor_jax.nn.attractor_head import SolveConfig
from attractor_jax.training import generation


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--context", type=int, default=256)
  parser.add_argument("--new_tokens", type=int, default=32)
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--dim", type=int, default=128)
  parser.add_argument("--layers", type=int, default=2)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--quick", action="store_true")
  if parser.parse_args(argv).quick:
    parser.set_defaults(context=48, new_tokens=8, dim=32, layers=1, rounds=1)
  return parser.parse_args(argv)


def main(argv=None):
  """Prints and returns tokens/s of both decoders and their ratio."""
  args = parse_args(argv)
  config = ModelConfig(vocab_size=512, dim=args.dim, num_heads=4,
                       mlp_dim=4 * args.dim, num_layers=args.layers,
                       head_layers=1, gate_init=0.2, out_init_scale=1.0,
                       solve=SolveConfig(max_iter=32, tol=1e-4))
  model = AttractorLM(config, rngs=nnx.Rngs(0))
  prompt_len = args.context - args.new_tokens
  prompt = jax.random.randint(jax.random.PRNGKey(0), (args.batch, prompt_len),
                              0, config.vocab_size)
  runs = {"cached": True, "uncached": False}
  outputs, seconds = {}, {name: [] for name in runs}
  for name, cached in runs.items():      # compile and warm up
    outputs[name] = generation.generate(
        model, prompt, args.new_tokens, key=jax.random.PRNGKey(1),
        temperature=0.0, cached=cached).block_until_ready()
  for _ in range(args.rounds):
    for name, cached in runs.items():
      start = time.perf_counter()
      generation.generate(model, prompt, args.new_tokens,
                          key=jax.random.PRNGKey(1), temperature=0.0,
                          cached=cached).block_until_ready()
      seconds[name].append(time.perf_counter() - start)
  tokens = args.batch * args.new_tokens
  rates = {name: tokens / float(np.median(s)) for name, s in seconds.items()}
  same = bool(np.array_equal(np.asarray(outputs["cached"]),
                             np.asarray(outputs["uncached"])))
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}; context "
        f"{args.context} ({prompt_len} prompt + {args.new_tokens} new), "
        f"batch {args.batch}, dim {args.dim}, {args.layers} backbone + 1 "
        "head block")
  for name, rate in rates.items():
    print(f"{name:>9}: {rate:9.1f} tokens/s")
  speedup = rates["cached"] / rates["uncached"]
  print(f"  speed-up: {speedup:.1f}x (greedy tokens identical: {same})")
  return {"tokens_per_second": rates, "speedup": speedup, "identical": same}


if __name__ == "__main__":
  main()
