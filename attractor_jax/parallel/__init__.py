"""Parallelism: the device mesh and the rules from logical axes to mesh axes.

Knows nothing of models (no `attractor_jax.models` imports); it reads the
logical axis names every parameter carries as nnx metadata. A typical run:

    # multi-host: jax.distributed.initialize() first (the caller's job)
    mesh = make_mesh(data=-1, fsdp=4, tensor=2)
    abstract = nnx.eval_shape(lambda: make_model(rngs=nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(abstract)
    shardings = state_shardings(abstract_state, mesh)      # DEFAULT_RULES
    state = jax.jit(lambda: nnx.state(make_model(rngs=nnx.Rngs(0))),
                    out_shardings=shardings)()
    rows = process_batch_slice(global_batch)               # this host's rows
    batch = shard_batch(local_batch, mesh)                 # global arrays
    step = jax.jit(train_step, in_shardings=(shardings, batch_sharding(mesh)),
                   out_shardings=shardings)
"""

from attractor_jax.parallel.mesh import make_mesh
from attractor_jax.parallel.mesh import MESH_AXES
from attractor_jax.parallel.mesh import process_batch_slice
from attractor_jax.parallel.mesh import resolve_mesh_shape
from attractor_jax.parallel.rules import batch_sharding
from attractor_jax.parallel.rules import DEFAULT_RULES
from attractor_jax.parallel.rules import fit_spec_to_shape
from attractor_jax.parallel.rules import logical_sharding
from attractor_jax.parallel.rules import logical_to_mesh_spec
from attractor_jax.parallel.rules import Rules
from attractor_jax.parallel.rules import rules_table
from attractor_jax.parallel.rules import shard_batch
from attractor_jax.parallel.state import global_batch
from attractor_jax.parallel.state import shard_like_params
from attractor_jax.parallel.state import state_shardings
