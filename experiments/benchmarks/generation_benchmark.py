"""Tokens/s of cached vs uncached decoding of an Attractor LM at a 256 context.

Cached decoding keeps backbone and head keys/values and solves each new
position alone against the cached fixed point; uncached decoding re-runs the
model and re-solves the whole prefix per token. Both are compiled and warmed
up first, then timed in alternation so machine noise hits both alike.
End-to-end rates include the prompt's prefill (one full forward either way);
decode-only rates time the tokens after the first (t(N tokens) - t(1)).

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
from attractor_jax.tasks.lm import generation


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
  lengths = (1, args.new_tokens)   # decode-only time = t(new_tokens) - t(1)
  outputs, seconds = {}, {(name, n): [] for name in runs for n in lengths}

  def run(cached, n):
    return generation.generate(model, prompt, n, key=jax.random.PRNGKey(1),
                               temperature=0.0, cached=cached)

  for name, cached in runs.items():      # compile and warm up
    for n in lengths:
      outputs[name] = run(cached, n).block_until_ready()
  for _ in range(args.rounds):           # alternate, so noise hits all alike
    for (name, n) in seconds:
      start = time.perf_counter()
      run(runs[name], n).block_until_ready()
      seconds[(name, n)].append(time.perf_counter() - start)
  median = {key: float(np.median(s)) for key, s in seconds.items()}
  end_to_end = {name: args.batch * args.new_tokens / median[(name, lengths[1])]
                for name in runs}
  decode = {name: args.batch * (args.new_tokens - 1)
            / max(median[(name, lengths[1])] - median[(name, 1)], 1e-9)
            for name in runs}
  same = bool(np.array_equal(np.asarray(outputs["cached"]),
                             np.asarray(outputs["uncached"])))
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}; context "
        f"{args.context} ({prompt_len} prompt + {args.new_tokens} new), "
        f"batch {args.batch}, dim {args.dim}, {args.layers} backbone + 1 "
        "head block")
  print(f"{'':>9}  {'end-to-end tok/s':>16}  {'decode-only tok/s':>17}")
  for name in runs:
    print(f"{name:>9}  {end_to_end[name]:16.1f}  {decode[name]:17.1f}")
  speedup = end_to_end["cached"] / end_to_end["uncached"]
  decode_speedup = decode["cached"] / decode["uncached"]
  print(f"  speed-up: {speedup:.1f}x end to end (prefill included), "
        f"{decode_speedup:.1f}x per decoded token; greedy tokens identical: "
        f"{same}")
  return {"end_to_end": end_to_end, "decode": decode, "speedup": speedup,
          "decode_speedup": decode_speedup, "identical": same}


if __name__ == "__main__":
  main()
