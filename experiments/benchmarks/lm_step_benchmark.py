"""Training-step time, tokens/s and model FLOPs utilisation of a language model.

    python experiments/benchmarks/lm_step_benchmark.py --model=public-cpu
    python experiments/benchmarks/lm_step_benchmark.py --model=public-cpu \\
        --forced_iters=12                  # exactly 12 solver iterations
    python experiments/benchmarks/lm_step_benchmark.py --model=public-cpu \\
        --forced_evals=12                  # exactly 12 map evaluations
    python experiments/benchmarks/lm_step_benchmark.py --model=attractor-140m \\
        --batch=16 --seq_len=2048 --dtype=bfloat16 --memory_depths=4,8,16

`public-cpu` is the public PyTorch code's CPU comparison model: width 256, 4
heads, MLP 1024 (ReLU^2), 4 backbone blocks and 1 head block, vocabulary
2048, batch 8 x 256, Anderson max_iter 12 / min_iter 4 / tol 1e-3, onestep
backward, float32, AdamW (4.46M parameters). Any preset name works too.
A solve of N iterations evaluates the head's map N + 1 times (the start,
then once per iteration); the public code's `max_iter` counts evaluations
(its Anderson evaluates f(z0) and f(f(z0)) as its first two of max_iter), so
to time both at equal work, run its `max_iter=N` beside `--forced_evals=N`.
`--reference_ms` takes the other implementation's median step time, timed
beside this run on the same machine, and prints the ratio.

The step is the trainer's own `train_step` (forward, backward, optimizer,
health checks, metrics), called as the trainer's loop calls it
(`trainer.cached_train_step`): 3 warm-up steps, then the median of 10 timed ones.
FLOPs are counted from the model's shapes (matmuls and attention;
`attractor_jax/models/flops.py`), every solver iteration included, so MFU
does not depend on what XLA reports for a while loop. `--memory_depths` prints the
compiled temporary memory of the step for implicit (onestep) vs unrolled
backward at several solver depths: flat vs growing.
"""

import argparse
import dataclasses
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from attractor_jax import models
from attractor_jax.models import flops as flops_lib
from attractor_jax.models import presets
from attractor_jax.models import registry
from attractor_jax.models.config import AttractorLMConfig
from attractor_jax.nn.attractor_head import SolveConfig
from attractor_jax.tasks.lm import LMTask
from attractor_jax.training import optimizers
from attractor_jax.training import trainer

PUBLIC_CPU = "public-cpu"
# Dense peak FLOP/s by device kind (bfloat16; float32 on CPU is unknown).
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12,
              "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12,
              "TPU v5p": 459e12, "TPU v6 lite": 918e12}


def public_cpu_config() -> AttractorLMConfig:
  """The public code's CPU comparison model (module docstring)."""
  return AttractorLMConfig(
      vocab_size=2048, dim=256, num_heads=4, mlp_dim=1024, mlp="relu2",
      num_layers=4, head_layers=1, qk_norm=True, tie_embeddings=True,
      solve=SolveConfig(solver="anderson", history=5, max_iter=12,
                        min_iter=4, tol=1e-3, backward="onestep"))


def model_config(args):
  config = (public_cpu_config() if args.model == PUBLIC_CPU
            else presets.get_preset(args.model))
  changes = {}
  if args.dtype:
    changes["dtype"] = args.dtype
  forced = (args.forced_iters if args.forced_evals is None
            else args.forced_evals - 1)
  if forced is not None and config.solve is not None:
    # A tolerance no example reaches: exactly N iterations.
    changes["solve"] = dataclasses.replace(
        config.solve, max_iter=forced,
        min_iter=min(forced, config.solve.min_iter), tol=1e-30)
  return config.replace(**changes) if changes else config


def make_batch(config, batch: int, seq_len: int, seed: int = 0) -> dict:
  tokens = np.random.default_rng(seed).integers(
      0, config.vocab_size, (batch, seq_len + 1)).astype(np.int32)
  positions = np.broadcast_to(np.arange(seq_len, dtype=np.int32),
                              (batch, seq_len))
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
          "positions": np.array(positions),
          "segment_ids": np.ones((batch, seq_len), np.int32)}


def time_steps(config, args) -> dict:
  """Median seconds of the trainer's train_step, and its solver iterations."""
  optimizer_config = optimizers.OptimizerConfig(name="adamw", lr=1e-4,
                                                total_steps=1000)
  state = trainer.create_train_state(config, optimizer_config, seed=0)
  task = LMTask()
  batch = {k: jnp.asarray(v) for k, v in
           make_batch(config, args.batch, args.seq_len).items()}
  cached_train_step = trainer.cached_train_step(state)
  times, iterations = [], []
  for i in range(args.warmup + args.steps):
    start = time.perf_counter()
    scalars = cached_train_step(batch, task=task)
    jax.block_until_ready(scalars["loss"])
    if i >= args.warmup:
      times.append(time.perf_counter() - start)
      iterations.append(float(scalars.get("solver/iterations_mean", 0.0)))
  return {"seconds": statistics.median(times), "min": min(times),
          "iterations": float(np.mean(iterations)),
          "loss": float(scalars["loss"])}


def compiled_temp_bytes(config, args) -> int | None:
  """Temporary memory XLA reserves for one loss-and-gradient step."""
  model = nnx.eval_shape(
      lambda: models.build_model(config, rngs=nnx.Rngs(0)))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  batch = make_batch(config, args.batch, args.seq_len)

  def loss(params, batch):
    model = nnx.merge(graphdef, params, rest)
    return model(batch["inputs"], targets=batch["targets"]).loss

  compiled = jax.jit(jax.grad(loss)).lower(params, batch).compile()
  analysis = compiled.memory_analysis()
  return None if analysis is None else int(analysis.temp_size_in_bytes)


def memory_table(config, args) -> list[dict]:
  rows = []
  for depth in args.memory_depths:
    row = {"depth": depth}
    for name, backward, solver in (("onestep", "onestep", "anderson"),
                                   ("unrolled", "unrolled", "picard")):
      solve = dataclasses.replace(config.solve, max_iter=depth,
                                  min_iter=min(depth, config.solve.min_iter),
                                  tol=1e-30, backward=backward, solver=solver)
      row[name] = compiled_temp_bytes(config.replace(solve=solve), args)
    rows.append(row)
  return rows


def peak_flops(args) -> float | None:
  if args.peak_tflops:
    return args.peak_tflops * 1e12
  kind = jax.devices()[0].device_kind
  return next((v for k, v in PEAK_FLOPS.items() if k in kind), None)


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default=PUBLIC_CPU,
                      help=f"{PUBLIC_CPU} or a preset name")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--seq_len", type=int, default=256)
  parser.add_argument("--dtype", default=None, help="float32 / bfloat16")
  forced = parser.add_mutually_exclusive_group()
  forced.add_argument("--forced_iters", type=int, default=None,
                      help="exactly N solver iterations (N + 1 map "
                      "evaluations)")
  forced.add_argument("--forced_evals", type=int, default=None,
                      help="exactly N map evaluations per forward solve "
                      "(N - 1 iterations), the public code's max_iter")
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--peak_tflops", type=float, default=None)
  parser.add_argument("--memory_depths", default="",
                      help="comma-separated solver depths, e.g. 4,8,16")
  parser.add_argument("--reference_ms", type=float, default=None,
                      help="another implementation's median step time, "
                      "measured beside this run: prints ours / theirs")
  parser.add_argument("--quick", action="store_true", help="smoke test")
  args = parser.parse_args(argv)
  if args.forced_evals is not None and args.forced_evals < 1:
    parser.error(f"--forced_evals must be >= 1; got {args.forced_evals}.")
  if args.quick:
    args.batch, args.seq_len, args.warmup, args.steps = 2, 32, 1, 2
  args.memory_depths = [int(d) for d in args.memory_depths.split(",") if d]
  return args


def main(argv=None) -> dict:
  """Prints and returns the step time, tokens/s, FLOPs, MFU (and memory)."""
  args = parse_args(argv)
  config = model_config(args)
  result = time_steps(config, args)
  tokens = args.batch * args.seq_len
  flops = flops_lib.train_flops_per_token(config, args.seq_len,
                                          result["iterations"]) * tokens
  peak = peak_flops(args)
  result.update(tokens_per_s=tokens / result["seconds"],
                flops_per_step=flops,
                achieved_tflops=flops / result["seconds"] / 1e12,
                mfu=None if peak is None else flops / result["seconds"] / peak,
                params=models.parameter_count(config))
  device = jax.devices()[0]
  evaluations = (f" ({result['iterations'] + 1:.1f} map evaluations)"
                 if registry.supports(config.kind, registry.SOLVER_STATS)
                 else "")
  print(f"{args.model} ({result['params'] / 1e6:.2f}M parameters, "
        f"{config.dtype}) on {device.platform}:{device.device_kind}, batch "
        f"{args.batch} x {args.seq_len}")
  print(f"step {1e3 * result['seconds']:.1f} ms median of {args.steps} "
        f"(min {1e3 * result['min']:.1f}) after {args.warmup} warm-up; "
        f"solver iterations {result['iterations']:.1f}{evaluations}; loss "
        f"{result['loss']:.3f}")
  mfu = "n/a (pass --peak_tflops)" if result["mfu"] is None else (
      f"{100 * result['mfu']:.1f}%")
  print(f"{result['tokens_per_s']:.0f} tokens/s, "
        f"{flops / 1e9:.2f} GFLOP per step, "
        f"{result['achieved_tflops']:.3f} TFLOP/s, MFU {mfu}")
  if args.reference_ms:
    result["reference_ratio"] = 1e3 * result["seconds"] / args.reference_ms
    print(f"step time / reference ({args.reference_ms:.1f} ms): "
          f"{result['reference_ratio']:.2f}x")
  if args.memory_depths:
    rows = memory_table(config, args)
    print("compiled temporary memory (MiB) vs solver depth")
    print(f"{'depth':>6} {'onestep':>10} {'unrolled':>10}")
    for row in rows:
      cells = [("-" if row[k] is None else f"{row[k] / 2**20:.1f}")
               for k in ("onestep", "unrolled")]
      print(f"{row['depth']:>6} {cells[0]:>10} {cells[1]:>10}")
    result["memory"] = rows
  return result


if __name__ == "__main__":
  main()
