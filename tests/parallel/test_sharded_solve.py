"""The solver's per-example reductions across shards: a sharded solve equals
the one-device solve.

On 8 fake CPU devices (a subprocess, as XLA_FLAGS must be set before JAX
starts), mesh data 2 x fsdp 2 x tensor 2: the batch split over data x fsdp,
the state's channels over tensor, so every per-example norm, Anderson's Gram
matrix and its small solve, and the convergence test reduce across devices.
"""

import numpy as np
import pytest
from test_mesh_and_rules import run_on_eight_devices

# The heavy tier (.ci/run): a subprocess with eight host devices.
pytestmark = pytest.mark.heavy

SCRIPT = r'''
import json
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
import attractor_jax
from attractor_jax import parallel
from attractor_jax.models import build_model
from attractor_jax.models.config import AttractorLMConfig
from attractor_jax.nn.attractor_head import SolveConfig

out = {"devices": jax.device_count()}
mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
rng = np.random.default_rng(0)
w = jnp.asarray(0.9 * rng.normal(size=(32, 32)) / np.sqrt(32), jnp.float32)
c = jnp.asarray(rng.normal(size=(8, 16, 32)), jnp.float32)
# Examples of different difficulty: scaled so they need different counts.
c = c * jnp.linspace(0.2, 3.0, 8)[:, None, None]

def f(w, y, c):
  return jnp.tanh(y @ w + c)

def solve(w, c, solver):
  y, stats = attractor_jax.fixed_point(f, w, c, c, solver=solver,
                                       max_iter=60, tol=1e-5)
  return y, stats.iterations, stats.converged, stats.residual

def loss(w, c, solver):
  y = attractor_jax.fixed_point(f, w, c, c, solver=solver, max_iter=60,
                                tol=1e-5, backward="implicit")[0]
  return jnp.sum(jnp.sin(y))

state_sharding = NamedSharding(mesh, P(("data", "fsdp"), None, "tensor"))
w_sharding = NamedSharding(mesh, P(None, "tensor"))
for solver in ("anderson", "picard"):
  local = jax.jit(solve, static_argnums=2)(w, c, solver)
  sharded_fn = jax.jit(solve, static_argnums=2,
                       in_shardings=(w_sharding, state_sharding))
  sharded = sharded_fn(jax.device_put(w, w_sharding),
                       jax.device_put(c, state_sharding), solver)
  out[solver] = {
      "y_spec": [list(a) if isinstance(a, tuple) else a
                 for a in sharded[0].sharding.spec],
      "max_y_diff": float(jnp.max(jnp.abs(sharded[0] - local[0]))),
      "iterations": [np.asarray(sharded[1]).tolist(),
                     np.asarray(local[1]).tolist()],
      "converged": [np.asarray(sharded[2]).tolist(),
                    np.asarray(local[2]).tolist()],
      "max_residual_rel_diff": float(jnp.max(
          jnp.abs(sharded[3] - local[3]) / local[3])),
  }
  grad_local = jax.jit(jax.grad(loss), static_argnums=2)(w, c, solver)
  grad_sharded = jax.jit(jax.grad(loss), static_argnums=2,
                         in_shardings=(w_sharding, state_sharding))(
      jax.device_put(w, w_sharding), jax.device_put(c, state_sharding), solver)
  out[solver]["grad_rel_diff"] = float(
      jnp.linalg.norm(grad_sharded - grad_local) / jnp.linalg.norm(grad_local))

# An attractor LM sharded by the logical-axis rules, against one device.
config = AttractorLMConfig(vocab_size=64, dim=32, num_heads=4, mlp_dim=64,
                           num_layers=1, head_layers=1, gate_init=0.3,
                           solve=SolveConfig(max_iter=30, tol=1e-4))
make = lambda: build_model(config, rngs=nnx.Rngs(0))
graphdef, abstract = nnx.split(nnx.eval_shape(make))
shardings = parallel.state_shardings(abstract, mesh)
state = jax.jit(lambda: nnx.split(make())[1], out_shardings=shardings)()
tokens = np.asarray(rng.integers(0, 64, size=(8, 24)), np.int32)

def forward(state, tokens):
  o = nnx.merge(graphdef, state)(tokens)
  return o.logits, o.stats.iterations

batch = parallel.shard_batch({"t": tokens}, mesh)["t"]
logits, iterations = jax.jit(forward)(state, batch)
ref_logits, ref_iterations = jax.jit(forward)(
    jax.device_put(state, jax.devices()[0]), tokens)
logits, ref_logits = np.asarray(logits), np.asarray(ref_logits)
out["lm"] = {"max_logit_diff": float(np.max(np.abs(logits - ref_logits))),
             "iterations": [np.asarray(iterations).tolist(),
                            np.asarray(ref_iterations).tolist()],
             "wq_spec": [a for a in state["head"]["blocks"][0]["attn"]["wq"]
                         .get_value().sharding.spec]}
# The trainer's state, initialised inside jit straight into its shardings.
from attractor_jax.training import optimizers, trainer
opt_config = optimizers.OptimizerConfig(total_steps=10)
sharded_state = trainer.create_train_state(config, opt_config, 0, mesh)
plain_state = trainer.create_train_state(config, opt_config, 0)
pairs = list(zip(jax.tree.leaves(nnx.state(sharded_state.model, nnx.Param)),
                 jax.tree.leaves(nnx.state(plain_state.model, nnx.Param))))
mu = sharded_state.optimizer.opt_state
out["train_state"] = {
    "equal": all(bool(np.array_equal(np.asarray(a), np.asarray(b)))
                 for a, b in pairs),
    "wq_spec": list(sharded_state.model.head.blocks[0].attn.wq.get_value()
                    .sharding.spec),
    "sharded_moments": sum(
        1 for x in jax.tree.leaves(nnx.state(sharded_state.optimizer))
        if hasattr(x, "sharding") and not x.sharding.is_fully_replicated)}
print("RESULT" + json.dumps(out))
'''


@pytest.fixture(scope="module")
def results():
  return run_on_eight_devices(SCRIPT)


@pytest.mark.parametrize("solver", ["anderson", "picard"])
def test_sharded_solve_equals_the_one_device_solve(results, solver):
  assert results["devices"] == 8
  row = results[solver]
  assert row["y_spec"][0] == ["data", "fsdp"]     # the batch stays split
  sharded_iterations, local_iterations = row["iterations"]
  assert sharded_iterations == local_iterations
  assert len(set(local_iterations)) > 1      # examples stop at their own step
  assert row["converged"][0] == row["converged"][1]
  assert sum(row["converged"][1]) >= 6
  assert row["max_y_diff"] < 1e-5
  assert row["max_residual_rel_diff"] < 1e-2   # near-cancelling differences
  assert row["grad_rel_diff"] < 1e-5


def test_sharded_attractor_lm_equals_one_device(results):
  lm = results["lm"]
  assert lm["wq_spec"] == ["fsdp", "tensor", None]
  assert lm["iterations"][0] == lm["iterations"][1]
  assert lm["max_logit_diff"] < 1e-4
  assert np.isfinite(lm["max_logit_diff"])


def test_train_state_is_created_sharded_and_equal(results):
  state = results["train_state"]
  assert state["equal"]
  assert state["wq_spec"] == ["fsdp", "tensor", None]
  assert state["sharded_moments"] > 0     # Adam's moments follow the params
