"""The bfloat16 head's residual floor (docs/precision.md's table).

The 140M preset's head and solver settings (Anderson, max_iter 64, tol 3e-4)
at width 256 with 2 backbone blocks, at initialisation: converged fraction,
mean iterations and residual, and the head's contribution ||y* - c|| / ||c||,
for a float32 model, a bfloat16 model with a float32 head, and an all-bfloat16
model (its iterates are float32 too; they were bfloat16 before).

  python experiments/benchmarks/head_precision_benchmark.py
"""

import jax
import jax.numpy as jnp
from flax import nnx

from attractor_jax.models import build_model
from attractor_jax.models import presets

POLICIES = {"float32": dict(dtype="float32"),
            "bfloat16, float32 head": dict(dtype="bfloat16",
                                           head_dtype="float32"),
            "bfloat16": dict(dtype="bfloat16")}


def main():
  base = presets.get_preset("attractor-140m").replace(
      dim=256, num_heads=4, mlp_dim=1024, num_layers=2, vocab_size=512)
  tokens = jax.random.randint(jax.random.PRNGKey(0), (4, 128), 0,
                              base.vocab_size)
  print(f"tol {base.solve.tol}, max_iter {base.solve.max_iter}")
  print(f"{'policy':<24}{'converged':>10}{'iterations':>11}{'residual':>10}"
        f"{'contribution':>13}")
  results = {}
  for name, fields in POLICIES.items():
    model = build_model(base.replace(**fields), rngs=nnx.Rngs(0))
    out = nnx.jit(lambda m, t: m(t))(model, tokens)
    row = {"converged": float(jnp.mean(out.stats.converged)),
           "iterations": float(jnp.mean(out.stats.iterations)),
           "residual": float(jnp.mean(out.stats.residual)),
           "contribution": float(jnp.mean(out.head_contribution))}
    results[name] = row
    print(f"{name:<24}{row['converged']:>10.2f}{row['iterations']:>11.1f}"
          f"{row['residual']:>10.1e}{row['contribution']:>13.3f}")
  return results


if __name__ == "__main__":
  main()
