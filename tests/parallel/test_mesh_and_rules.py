"""The device mesh and the logical-axis rules, on 1 device and on 8 fake CPUs.

XLA_FLAGS must be set before JAX initialises, so the 8-device checks run once
in a subprocess (`MULTI_DEVICE_SCRIPT`) that prints its results as JSON.
"""

import json
import logging
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import AbstractMesh
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

from attractor_jax import parallel
from attractor_jax.nn import blocks

SPEC = blocks.BlockSpec(dim=16, num_heads=4, mlp_dim=32, gate_max=1.0,
                        out_init_scale=1.0)
# Expected mesh specs of the Block's parameters under DEFAULT_RULES.
EXPECTED = {
    "attn/wq": ["fsdp", "tensor", None],
    "attn/wk": ["fsdp", "tensor", None],
    "attn/wv": ["fsdp", "tensor", None],
    "attn/wo": ["tensor", None, "fsdp"],
    "mlp/w_in": ["fsdp", "tensor"],
    "mlp/w_out": ["tensor", "fsdp"],
    "attn_norm/scale": ["fsdp"],
    "mlp_norm/scale": ["fsdp"],
    "attn_gate/raw": ["fsdp"],
    "mlp_gate/raw": ["fsdp"],
}


def abstract_mesh(data=2, fsdp=2, tensor=2):
  return AbstractMesh((data, fsdp, tensor), parallel.MESH_AXES,
                      axis_types=(AxisType.Auto,) * 3)


def as_json(spec):
  """A PartitionSpec as JSON (tuples become lists)."""
  return [list(e) if isinstance(e, tuple) else e for e in spec]


def specs_by_path(tree):
  """{"attn/wq": spec as JSON, ...} for a tree of NamedShardings."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(str(k.key) for k in path
                   if isinstance(k, jax.tree_util.DictKey)): as_json(s.spec)
          for path, s in leaves}


# Mesh shapes.

def test_resolve_mesh_shape():
  assert parallel.resolve_mesh_shape((-1, 1, 1), 8) == (8, 1, 1)
  assert parallel.resolve_mesh_shape((2, -1, 2), 8) == (2, 2, 2)
  assert parallel.resolve_mesh_shape((2, 2, 2), 8) == (2, 2, 2)
  with pytest.raises(ValueError, match=r"\(3, 3, 1\) \(product 9\).*8"):
    parallel.resolve_mesh_shape((3, 3, 1), 8)
  with pytest.raises(ValueError, match="product 3.*8"):
    parallel.resolve_mesh_shape((-1, 3, 1), 8)
  with pytest.raises(ValueError, match="At most one"):
    parallel.resolve_mesh_shape((-1, -1, 1), 8)
  with pytest.raises(ValueError, match="use 2 of the 8"):
    parallel.resolve_mesh_shape((2, 1, 1), 8)
  with pytest.raises(ValueError, match="positive"):
    parallel.resolve_mesh_shape((0, 1, 1), 8)


def test_make_mesh_single_device_is_auto():
  mesh = parallel.make_mesh(devices=jax.devices()[:1])
  assert dict(mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 1}
  assert all(t == AxisType.Auto for t in mesh.axis_types)


def test_process_batch_slice():
  assert parallel.process_batch_slice(32, 1, 4) == slice(8, 16)
  assert parallel.process_batch_slice(32) == slice(0, 32)   # one process
  with pytest.raises(ValueError, match="30.*number of processes, 4"):
    parallel.process_batch_slice(30, 0, 4)
  with pytest.raises(ValueError, match="outside"):
    parallel.process_batch_slice(32, 4, 4)


# Rules.

def test_logical_to_mesh_spec():
  spec = parallel.logical_to_mesh_spec
  assert spec(("vocab", "embed")) == P("tensor", "fsdp")
  assert spec(("embed", "heads", "head_dim")) == P("fsdp", "tensor", None)
  assert spec(("heads", "head_dim", "embed")) == P("tensor", None, "fsdp")
  assert spec(("embed", "mlp")) == P("fsdp", "tensor")
  assert spec(("batch", "length")) == P(("data", "fsdp"), None)
  assert spec((None, "embed")) == P(None, "fsdp")
  assert spec(P("head_dim")) == P(None)


def test_logical_to_mesh_spec_drops_a_reused_mesh_axis():
  # "embed" -> "fsdp", already taken by "batch": the later use is dropped.
  assert parallel.logical_to_mesh_spec(("batch", "length", "embed")) == P(
      ("data", "fsdp"), None, None)
  rules = (("a", ("data", "tensor")), ("b", ("tensor", "fsdp")))
  assert parallel.logical_to_mesh_spec(("a", "b"), rules) == P(
      ("data", "tensor"), "fsdp")
  assert parallel.logical_to_mesh_spec((("a", "b"),), rules) == P(
      ("data", "tensor", "fsdp"))


def test_logical_to_mesh_spec_errors():
  with pytest.raises(ValueError, match=r"'kv'.*know \['batch', 'embed'"):
    parallel.logical_to_mesh_spec(("embed", "kv"))
  with pytest.raises(ValueError, match="two rules"):
    parallel.rules_table((("a", None), ("a", "data")))
  with pytest.raises(ValueError, match="A rule is"):
    parallel.rules_table((("a", 3),))


def test_fit_spec_to_shape_falls_back(caplog):
  mesh, fit = abstract_mesh(), parallel.fit_spec_to_shape
  assert fit(P("fsdp", "tensor"), (16, 32, 3), mesh) == P("fsdp", "tensor",
                                                          None)
  with caplog.at_level(logging.WARNING):
    assert fit(P("fsdp", "tensor"), (6, 3), mesh, "w") == P("fsdp", None)
  assert "w: dimension 1 (size 3)" in caplog.text
  # A tuple of axes loses axes from the end until the size divides.
  assert fit(P(("data", "fsdp")), (2,), mesh) == P("data")
  assert fit(P(("data", "fsdp")), (3,), mesh) == P(None)
  with pytest.raises(ValueError, match="not in the mesh"):
    fit(P("model"), (4,), mesh)
  with pytest.raises(ValueError, match="more entries"):
    fit(P("fsdp", None), (4,), mesh)


def test_logical_and_batch_sharding():
  mesh = parallel.make_mesh(devices=jax.devices()[:1])
  assert parallel.batch_sharding(mesh).spec == P(("data", "fsdp"), None)
  sharding = parallel.logical_sharding(mesh, ("embed",), shape=(5,))
  assert sharding.spec == P("fsdp")          # every size divides by 1


# States.

def test_state_shardings_of_a_block():
  mesh = parallel.make_mesh(devices=jax.devices()[:1])
  abstract = nnx.eval_shape(lambda: blocks.Block(SPEC, rngs=nnx.Rngs(0)))
  shardings = parallel.state_shardings(nnx.state(abstract), mesh)
  assert specs_by_path(shardings) == EXPECTED
  assert specs_by_path(parallel.state_shardings(abstract, mesh)) == EXPECTED


def test_state_shardings_replicates_leaves_without_names():
  mesh = parallel.make_mesh(devices=jax.devices()[:1])
  tree = {"w": jnp.zeros((4, 2)), "b": nnx.Param(jnp.zeros(3))}
  shardings = parallel.state_shardings(tree, mesh)
  assert shardings["w"].spec == P()
  assert shardings["b"].get_value().spec == P()
  bad = {"w": nnx.Param(jnp.zeros(3), out_sharding=("kv",),
                          eager_sharding=False)}
  with pytest.raises(ValueError, match="w: Unknown logical axis name 'kv'"):
    parallel.state_shardings(bad, mesh)


def test_shard_like_params_mirrors_optax_moments():
  mesh = parallel.make_mesh(devices=jax.devices()[:1])
  model = nnx.eval_shape(lambda: blocks.Block(SPEC, rngs=nnx.Rngs(0)))
  params = nnx.state(model, nnx.Param)
  param_shardings = parallel.state_shardings(params, mesh)
  pure = nnx.to_pure_dict(params)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
  for state in (jax.eval_shape(tx.init, params),
                jax.eval_shape(tx.init, pure)):
    shardings = parallel.shard_like_params(state, param_shardings, params)
    adam = shardings[1][0]
    assert adam.count.spec == P()
    assert specs_by_path(adam.mu) == EXPECTED
    assert specs_by_path(adam.nu) == EXPECTED
  # multi_transform: each inner state holds MaskedNodes for others' params.
  labels = jax.tree.map(lambda p: "m" if p.ndim > 1 else "v", pure)
  tx = optax.multi_transform(
      {"m": optax.adam(1e-3), "v": optax.sgd(1e-3, momentum=0.9)}, labels)
  shardings = parallel.shard_like_params(jax.eval_shape(tx.init, pure),
                                         param_shardings, params)
  matrices = shardings.inner_states["m"].inner_state[0].mu
  assert matrices["attn"]["wo"].spec == P("tensor", None, "fsdp")
  vectors = shardings.inner_states["v"].inner_state[0].trace
  assert vectors["mlp_norm"]["scale"].spec == P("fsdp")
  # Without `params`, a sharding is kept only where it fits the leaf.
  odd = {"mu": {"attn": {"wq": jnp.zeros((3,))}}}
  shardings = parallel.shard_like_params(odd, param_shardings)
  assert shardings["mu"]["attn"]["wq"].spec == P()
  with pytest.raises(ValueError, match="no NamedSharding"):
    parallel.shard_like_params(odd, {})


def test_parallel_package_imports_no_model_code():
  code = ("import sys, attractor_jax.parallel; "
          "bad = sorted(m for m in sys.modules if m.startswith("
          "('attractor_jax.models', 'attractor_jax.nn', "
          "'attractor_jax.training', 'attractor_jax.data'))); "
          "print(bad); sys.exit(1 if bad else 0)")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0, result.stdout + result.stderr


# Eight fake CPU devices.

MULTI_DEVICE_SCRIPT = r'''
import json
import jax, jax.numpy as jnp, numpy as np, optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
from attractor_jax import parallel
from attractor_jax.nn import blocks
import importlib.util, sys
_spec = importlib.util.spec_from_file_location("this_test", sys.argv[1])
_test = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_test)
SPEC, as_json, specs_by_path = _test.SPEC, _test.as_json, _test.specs_by_path

out = {"devices": jax.device_count()}
out["mesh_default"] = dict(parallel.make_mesh().shape)
mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
out["mesh_222"] = dict(mesh.shape)
try:
  parallel.make_mesh(data=3, fsdp=3)
except ValueError as e:
  out["error_3x3"] = str(e)

def sharded_init(spec, mesh):
  make = lambda: blocks.Block(spec, rngs=nnx.Rngs(0))
  graphdef, abstract_state = nnx.split(nnx.eval_shape(make))
  shardings = parallel.state_shardings(abstract_state, mesh)
  state = jax.jit(lambda: nnx.state(make()), out_shardings=shardings)()
  return graphdef, state, shardings

graphdef, state, shardings = sharded_init(SPEC, mesh)
out["planned"] = specs_by_path(shardings)
out["actual"] = specs_by_path(jax.tree.map(lambda a: a.sharding, state))
wq = state["attn"]["wq"].get_value()
out["wq_shards"] = [len(wq.addressable_shards),
                    list(wq.addressable_shards[0].data.shape)]
out["w_out_shard"] = list(
    state["mlp"]["w_out"].get_value().addressable_shards[0].data.shape)

# A jitted SGD step with in/out shardings from the rules, against 1 device.
x = np.random.default_rng(0).normal(size=(8, 6, 16)).astype(np.float32)
x_sharding = parallel.logical_sharding(mesh, ("batch", "length", "embed"))
out["x_spec"] = as_json(x_sharding.spec)

def step(state, x):
  def loss_fn(state):
    return jnp.mean(nnx.merge(graphdef, state)(x) ** 2)
  loss, grads = jax.value_and_grad(loss_fn)(state)
  return jax.tree.map(lambda p, g: p - 0.1 * g, state, grads), loss

replicated = NamedSharding(mesh, P())
sharded_step = jax.jit(step, in_shardings=(shardings, x_sharding),
                       out_shardings=(shardings, replicated))
new_state, loss = sharded_step(state, jax.device_put(x, x_sharding))
out["step_specs"] = specs_by_path(jax.tree.map(lambda a: a.sharding,
                                               new_state))
local = jax.device_put(state, jax.devices()[0])
ref_state, ref_loss = jax.jit(step)(local, x)
out["loss"] = [float(loss), float(ref_loss)]
out["max_param_diff"] = max(jax.tree.leaves(jax.tree.map(
    lambda a, b: float(jnp.max(jnp.abs(np.asarray(a) - np.asarray(b)))),
    new_state, ref_state)))

# Optimizer states: nnx.Optimizer metadata, and a raw optax state.
model = nnx.merge(graphdef, state)
optimizer = nnx.Optimizer(model, optax.adamw(1e-3), wrt=nnx.Param)
opt_shardings = parallel.state_shardings(nnx.state(optimizer), mesh)
out["nnx_mu_wq"] = as_json(
    opt_shardings["opt_state"][0]["mu"]["attn"]["wq"].get_value().spec)
params = nnx.state(model, nnx.Param)
raw = optax.adamw(1e-3).init(params)
raw_shardings = parallel.shard_like_params(raw, shardings, params)
raw = jax.device_put(raw, raw_shardings)
out["raw_mu_wo"] = as_json(raw[0].mu["attn"]["wo"].get_value().sharding.spec)
out["raw_count"] = as_json(raw[0].count.sharding.spec)

# Sizes that do not divide: replicated on that dimension.
odd_mesh = parallel.make_mesh(data=1, fsdp=4, tensor=2)
odd_spec = blocks.BlockSpec(dim=6, num_heads=3, mlp_dim=30)
_, odd_state, odd_shardings = sharded_init(odd_spec, odd_mesh)
out["odd"] = specs_by_path(jax.tree.map(lambda a: a.sharding, odd_state))

# Batches: this host's rows -> global sharded arrays.
rows = parallel.process_batch_slice(8)
tokens = np.arange(8 * 5, dtype=np.int32).reshape(8, 5)[rows]
batch = parallel.shard_batch({"inputs": tokens}, mesh)["inputs"]
out["batch"] = [as_json(batch.sharding.spec),
                list(batch.addressable_shards[0].data.shape),
                bool((np.asarray(batch) == tokens).all())]
try:
  parallel.shard_batch({"inputs": tokens[:6]}, mesh)
except ValueError as e:
  out["batch_error"] = str(e)
print("RESULT" + json.dumps(out))
'''


def run_on_eight_devices(script: str, *args: str) -> dict:
  """Runs `script` on 8 fake CPU devices; returns the JSON it printed after
  "RESULT" (XLA_FLAGS must be set before JAX starts: a subprocess)."""
  root = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=root,
             XLA_FLAGS="--xla_force_host_platform_device_count=8")
  result = subprocess.run([sys.executable, "-c", script, *args],
                          capture_output=True, text=True, timeout=300,
                          env=env, cwd=root)
  assert result.returncode == 0, result.stdout + result.stderr
  line = [l for l in result.stdout.splitlines() if l.startswith("RESULT")]
  return json.loads(line[-1][len("RESULT"):])


@pytest.fixture(scope="module")
def eight_devices():
  """The multi-device script's results (one subprocess for all tests)."""
  return run_on_eight_devices(MULTI_DEVICE_SCRIPT, os.path.abspath(__file__))


@pytest.mark.heavy
def test_meshes_on_eight_devices(eight_devices):
  assert eight_devices["devices"] == 8
  assert eight_devices["mesh_default"] == {"data": 8, "fsdp": 1, "tensor": 1}
  assert eight_devices["mesh_222"] == {"data": 2, "fsdp": 2, "tensor": 2}
  assert "product 9" in eight_devices["error_3x3"]
  assert "8" in eight_devices["error_3x3"]


def test_parameters_are_sharded_on_eight_devices(eight_devices):
  assert eight_devices["planned"] == EXPECTED
  assert eight_devices["actual"] == EXPECTED
  # wq [16, 4, 4] over fsdp=2 x tensor=2; w_out [32, 16] over tensor x fsdp.
  assert eight_devices["wq_shards"] == [8, [8, 2, 4]]
  assert eight_devices["w_out_shard"] == [16, 8]


def test_sharded_step_matches_one_device(eight_devices):
  assert eight_devices["x_spec"] == [["data", "fsdp"], None, None]
  assert eight_devices["step_specs"] == EXPECTED
  loss, ref_loss = eight_devices["loss"]
  assert np.isfinite(loss) and abs(loss - ref_loss) < 1e-4 * abs(ref_loss)
  assert eight_devices["max_param_diff"] < 1e-5


def test_optimizer_states_on_eight_devices(eight_devices):
  assert eight_devices["nnx_mu_wq"] == ["fsdp", "tensor", None]
  assert eight_devices["raw_mu_wo"] == ["tensor", None, "fsdp"]
  assert eight_devices["raw_count"] == []


def test_non_divisible_dims_are_replicated(eight_devices):
  # dim 6 on fsdp=4 and 3 heads on tensor=2 do not divide; mlp 30 does.
  odd = eight_devices["odd"]
  assert odd["attn/wq"] == [None, None, None]
  assert odd["attn/wo"] == [None, None, None]
  assert odd["mlp/w_in"] == [None, "tensor"]
  assert odd["mlp/w_out"] == ["tensor", None]
  assert odd["attn_norm/scale"] == [None]


def test_shard_batch_on_eight_devices(eight_devices):
  assert eight_devices["batch"] == [[["data", "fsdp"], None], [2, 5], True]
  assert "global batch 6 does not divide" in eight_devices["batch_error"]
