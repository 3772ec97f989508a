"""Where the LM training step's time goes, piece by piece.

    python experiments/benchmarks/step_breakdown_benchmark.py \\
        --forced_iters=12

Times, each jitted on its own (median of --repeats after one warm-up call),
on the `public-cpu` model of lm_step_benchmark.py: the backbone forward and
forward + backward, the head's solve (forced to exactly --forced_iters
iterations) forward and forward + backward, one head-map application and
its vjp, the unembedding and loss, the whole model's loss and gradient, and
the trainer's train_step; then one backbone block's forward + backward with
and without QK-norm. The pieces overlap (they are not a partition); the
differences between them are what the numbers are for.
"""

import argparse
import os
import sys

import jax
import jax.numpy as jnp
from flax import nnx

from attractor_jax import models
from attractor_jax.models import lm_common
from attractor_jax.nn import blocks
from attractor_jax.tasks.lm import LMTask
from attractor_jax.training import optimizers
from attractor_jax.training import trainer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lm_step_benchmark  # pylint: disable=g-import-not-at-top,wrong-import-position
import timing  # pylint: disable=g-import-not-at-top,wrong-import-position


def median_ms(fn, *args, repeats: int) -> float:
  return 1e3 * timing.median_seconds(fn, *args, repeats=repeats)


def breakdown(args) -> dict[str, float]:
  config = lm_step_benchmark.model_config(lm_step_benchmark.parse_args(
      [f"--forced_iters={args.forced_iters}"]))
  model = models.build_model(config, rngs=nnx.Rngs(0))
  batch = {k: jnp.asarray(v) for k, v in lm_step_benchmark.make_batch(
      config, args.batch, args.seq_len).items()}
  tokens, targets, positions = (batch["inputs"], batch["targets"],
                                batch["positions"])
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  merged = lambda p: nnx.merge(graphdef, p, rest)
  propose = lambda p: merged(p).propose(tokens, positions=positions)
  c = jax.jit(propose)(params)
  probe = jax.random.normal(jax.random.key(1), c.shape)
  solve = lambda p, c: merged(p).head(c, positions=positions)[0]
  head_map = lambda p, y, c: merged(p).head.map(y, c, positions=positions)

  def unembed_loss(p, y):
    m = merged(p)
    return lm_common.cross_entropy(m.unembed(y, m.embed), targets,
                                   config.ignore_index)

  def model_loss(p):
    return merged(p)(tokens, targets=targets, positions=positions).loss

  state = trainer.create_train_state(
      config, optimizers.OptimizerConfig(name="adamw", lr=1e-4,
                                         total_steps=1000), seed=0)
  task = LMTask()
  cached_train_step = trainer.cached_train_step(state)
  pieces = {
      "backbone forward": (jax.jit(propose), params),
      "backbone forward + backward": (jax.jit(jax.grad(
          lambda p: jnp.sum(propose(p) * probe))), params),
      f"head solve forward ({args.forced_iters} iterations)": (
          jax.jit(solve), params, c),
      "head solve forward + backward": (jax.jit(jax.grad(
          lambda p, c: jnp.sum(solve(p, c) * probe), argnums=(0, 1))),
                                        params, c),
      "head map forward, once": (jax.jit(head_map), params, c, c),
      "head map forward + vjp, once": (jax.jit(jax.grad(
          lambda p, y, c: jnp.sum(head_map(p, y, c) * probe),
          argnums=(0, 1, 2))), params, c, c),
      "unembedding + loss, forward + backward": (jax.jit(jax.grad(
          unembed_loss, argnums=(0, 1))), params, c),
      "model loss, forward + backward": (jax.jit(jax.grad(model_loss)),
                                         params),
      "trainer train_step": (lambda: cached_train_step(
          batch, task=task)["loss"],),
  }
  for qk_norm in (True, False):
    spec = config.block_spec(qk_norm=qk_norm, out_init_scale=1.0)
    block = blocks.Block(spec, rngs=nnx.Rngs(0))
    block_def, block_state = nnx.split(block)
    block_grad = jax.jit(jax.grad(
        lambda s, x, block_def=block_def: jnp.sum(nnx.merge(block_def, s)(
            x, positions=positions) * probe), argnums=(0, 1)))
    name = "with" if qk_norm else "without"
    pieces[f"one block forward + backward, {name} QK-norm"] = (
        block_grad, block_state, c)
  return {name: median_ms(fn, *fn_args, repeats=args.repeats)
          for name, (fn, *fn_args) in pieces.items()}


def main(argv=None) -> dict[str, float]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--forced_iters", type=int, default=12)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--seq_len", type=int, default=256)
  parser.add_argument("--repeats", type=int, default=8)
  args = parser.parse_args(argv)
  result = breakdown(args)
  for name, ms in result.items():
    print(f"{name:48s} {ms:8.1f} ms")
  return result


if __name__ == "__main__":
  main()
