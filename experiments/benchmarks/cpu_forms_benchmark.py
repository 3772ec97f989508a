"""Slow and fast forms of the same computation on XLA:CPU, side by side.

    python experiments/benchmarks/cpu_forms_benchmark.py

Each row times a form the package avoids beside the one it uses, on the
shapes of the `public-cpu` model (by default 8 x 256 tokens; width 256, 4
heads of 64, MLP 1024, vocabulary 2048), forward + backward unless the name says
otherwise: median of --repeats calls after one warm-up, each form jitted on
its own. The two forms of a row compute the same values (checked before
timing). The first row is a plain matmul's FLOP rate, the ceiling for the
dense layers.
"""

import argparse
import os
import sys

import jax
import jax.numpy as jnp

from attractor_jax.models import lm_common
from attractor_jax.nn import attention
from attractor_jax.nn.dense import dense

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import timing  # pylint: disable=g-import-not-at-top,wrong-import-position

DIM, HEADS, MLP, VOCAB = 256, 4, 1024, 2048


def median_ms(fn, *args, repeats: int) -> float:
  return 1e3 * timing.median_seconds(fn, *args, repeats=repeats)


def normal(seed, shape, scale=1.0):
  return scale * jax.random.normal(jax.random.key(seed), shape)


def forward_backward(fn, num_args: int):
  """jit(grad) of sum(fn(*args) * a fixed random cotangent)."""
  def loss(*args):
    out = fn(*args)
    return jnp.sum(out * normal(99, out.shape))
  return jax.jit(jax.grad(loss, argnums=tuple(range(num_args))))


def rows(batch: int, seq: int):
  """(name, slow form, fast form, arguments)."""
  x = normal(0, (batch, seq, DIM))
  w_in = normal(1, (DIM, MLP), 0.05)
  q, k, v = (normal(s, (batch, seq, HEADS, DIM // HEADS)) for s in (2, 3, 4))
  weights = jax.nn.softmax(normal(5, (batch, HEADS, seq, seq)), axis=-1)
  embedding = normal(6, (VOCAB, DIM), 0.05)
  targets = jax.random.randint(jax.random.key(7), (batch, seq), 0, VOCAB)
  mask = attention.attention_mask(seq, seq, causal=True)

  def old_cross_entropy(y, e):
    log_probs = jax.nn.log_softmax(dense(y, e.T), axis=-1)
    return -jnp.mean(jnp.take_along_axis(log_probs, targets[..., None],
                                         axis=-1))

  def cross_entropy(y, e):
    return lm_common.cross_entropy(dense(y, e.T), targets, -100)

  def in_halves(q, k, v):
    half = seq // 2
    first = attention.attend(q[:, :half], k[:, :half], v[:, :half],
                             attention.attention_mask(half, half, causal=True))
    second = attention.attend(q[:, half:], k, v, attention.attention_mask(
        half, seq, causal=True))
    return jnp.concatenate([first, second], axis=1)

  return [
      ("dense: einsum vs 2-D matmul",
       forward_backward(lambda x, w: jnp.einsum("btd,df->btf", x, w), 2),
       forward_backward(dense, 2), (x, w_in)),
      ("attention scores (forward): bqnh vs bnqh",
       jax.jit(lambda q, k: jnp.einsum("bqnh,bknh->bnqk", q, k)),
       jax.jit(lambda q, k: jnp.einsum(
           "bnqh,bnkh->bnqk", jnp.swapaxes(q, 1, 2), jnp.swapaxes(k, 1, 2))),
       (q, k)),
      ("weights x values (forward): bknh vs bnkh",
       jax.jit(lambda w, v: jnp.einsum("bnqk,bknh->bqnh", w, v)),
       jax.jit(lambda w, v: jnp.swapaxes(jnp.einsum(
           "bnqk,bnkh->bnqh", w, jnp.swapaxes(v, 1, 2)), 1, 2)),
       (weights, v)),
      ("causal attention: two halves vs query blocks",
       forward_backward(in_halves, 3),
       forward_backward(attention.causal_self_attend, 3), (q, k, v)),
      ("causal attention: whole matrix vs query blocks",
       forward_backward(lambda q, k, v: attention.attend(q, k, v, mask), 3),
       forward_backward(attention.causal_self_attend, 3), (q, k, v)),
      ("LM loss: take_along_axis vs one-hot pick",
       forward_backward(old_cross_entropy, 2),
       forward_backward(cross_entropy, 2), (x, embedding)),
  ]


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--seq_len", type=int, default=256)
  args = parser.parse_args(argv)
  tokens = args.batch * args.seq_len
  x, w = normal(0, (tokens, DIM)), normal(1, (DIM, MLP))
  matmul_ms = median_ms(jax.jit(jnp.matmul), x, w, repeats=args.repeats)
  gflops = 2 * tokens * DIM * MLP / matmul_ms / 1e6
  print(f"matmul [{tokens}, {DIM}] x [{DIM}, {MLP}]: {matmul_ms:.2f} ms, "
        f"{gflops:.0f} GFLOP/s")
  result = {"matmul_gflops": gflops}
  for name, slow, fast, fn_args in rows(args.batch, args.seq_len):
    for a, b in zip(jax.tree.leaves(slow(*fn_args)),
                    jax.tree.leaves(fast(*fn_args))):
      if not jnp.allclose(a, b, rtol=1e-4, atol=1e-4):
        raise AssertionError(f"{name}: the two forms differ.")
    times = (median_ms(slow, *fn_args, repeats=args.repeats),
             median_ms(fast, *fn_args, repeats=args.repeats))
    result[name] = times
    print(f"{name:48s} {times[0]:7.2f} ms -> {times[1]:7.2f} ms "
          f"({times[1] / times[0]:.2f}x)")
  return result


if __name__ == "__main__":
  main()
