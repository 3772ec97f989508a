"""Solver and backward-mode benchmark on a transformer-block-sized map (CPU).

The map is the attractor head f(params, y, c) = c + R(y + c), where R is the
residual branch of one gated pre-norm transformer block: RMSNorm, causal
multi-head attention (manual softmax: it compiles faster on CPU than
jax.nn.dot_product_attention) and a ReLU^2 MLP, both outputs scaled per
channel by a gate.
The state y is [batch, seq, width]; each batch row is one example.

Table 1: forward solves to tolerance with picard, anderson and broyden, on a
  fast-contracting map (small gate) and a slowly contracting one (larger
  gate): map evaluations, mean iterations, converged and diverged fractions,
  the largest final residual (relative to max(||y0||, ||f(y0)||), see
  `LoopOptions`) and the median wall time of the jitted solve.
Table 2: one jitted gradient step (loss = mean(y*^2), gradient w.r.t. params
  and c) for backward in (implicit, onestep, unrolled) and max_iter in
  (4, 16, 64), every solve forced to run exactly max_iter steps (tol = 0,
  forward and backward). The solver is Anderson, except for unrolled, which
  `fixed_point` allows with Picard only. Times are measured round-robin over
  configurations; ratios are relative to implicit at max_iter 4, measured in
  the same run.
Table 3: the cost of one solver step on a small state, --cost_batch examples
  of 64 numbers each (--cost_seq x --cost_width): the median wall time of a
  jitted forward solve forced to run exactly --cost_steps steps (tol = 0),
  divided by the steps, for picard, anderson and broyden side by side
  (round-robin), and each relative to picard's. Two maps: the block above
  (the head's map) and a dense tanh layer, tanh(y W + c) with W 64 x 64, so
  cheap that the step is almost all solver overhead (the worst case).

Run from the repository root:

  python experiments/benchmarks/solver_benchmark.py          # ~2-3 min, 2 CPUs
  python experiments/benchmarks/solver_benchmark.py --quick  # smoke, <30 s
  python experiments/benchmarks/solver_benchmark.py --tables 3  # step cost only

--quick shrinks the sizes, runs only the slow map in Table 1, max_iter 2 in
Table 2 (compilation dominates at that size) and fewer steps in Table 3;
explicit flags override it.
"""

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import attractor_jax
from attractor_jax.solvers import probe as probe_lib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import timing  # pylint: disable=g-import-not-at-top,wrong-import-position

SOLVERS = ("picard", "anderson", "broyden")
BACKWARDS = ("implicit", "onestep", "unrolled")
# fixed_point refuses to differentiate Anderson's steps (see
# fixed_point.check_unrolled_solver), so unrolled runs with Picard.
FORWARD_SOLVER = {"implicit": "anderson", "onestep": "anderson",
                  "unrolled": "picard"}


def init_params(key, width, mlp, gate):
  """Weights of one pre-norm block; `gate` scales attention and MLP outputs."""
  keys = jax.random.split(key, 6)
  def dense(k, n_in, n_out):
    return jax.random.normal(k, (n_in, n_out), jnp.float32) / np.sqrt(n_in)
  return {
      "norm1": jnp.ones((width,)), "norm2": jnp.ones((width,)),
      "wq": dense(keys[0], width, width), "wk": dense(keys[1], width, width),
      "wv": dense(keys[2], width, width), "wo": dense(keys[3], width, width),
      "w_up": dense(keys[4], width, mlp), "w_down": dense(keys[5], mlp, width),
      "gate_attn": jnp.full((width,), gate),
      "gate_mlp": jnp.full((width,), gate),
  }


def rms_norm(x, scale, eps=1e-5):
  """RMSNorm over the last axis."""
  return x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + eps) * scale


def make_map(heads):
  """f(params, y, c) = c + R(y + c) with R the block's residual branch."""
  def attention(p, x):
    b, n, d = x.shape
    split = lambda w: (x @ w).reshape(b, n, heads, d // heads)
    q, k, v = split(p["wq"]), split(p["wk"]), split(p["wv"])
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(d // heads)
    scores = jnp.where(jnp.tril(jnp.ones((n, n), bool)), scores, -1e30)
    out = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, -1), v)
    return out.reshape(b, n, d) @ p["wo"]

  def residual_branch(p, x):
    a = p["gate_attn"] * attention(p, rms_norm(x, p["norm1"]))
    h = rms_norm(x + a, p["norm2"]) @ p["w_up"]
    m = p["gate_mlp"] * (jnp.square(jax.nn.relu(h)) @ p["w_down"])
    return a + m

  def f(params, y, c):
    return c + residual_branch(params, y + c)
  return f


def timed(fn, args, repeats):
  """Median wall seconds of fn(*args) after one warm-up call."""
  return timing.median_seconds(fn, *args, repeats=repeats)


def solver_table(f, params, c, args):
  """Table 1: forward solves to tolerance for each solver."""
  rows = {}
  for solver in SOLVERS:
    solve = jax.jit(lambda p, cc, s=solver: attractor_jax.fixed_point(
        f, p, cc, cc, solver=s, max_iter=args.max_iter, tol=args.tol))
    _, stats = solve(params, c)
    rows[solver] = {
        "f_evals": int(stats.num_f_evals),
        "iterations": float(jnp.mean(stats.iterations)),
        "converged": float(jnp.mean(stats.converged)),
        "diverged": float(jnp.mean(stats.diverged)),
        "residual": float(jnp.max(stats.residual)),
        "seconds": timed(solve, (params, c), args.repeats),
    }
  return rows


def make_grad_step(f, backward, max_iter):
  """jit(grad) of mean(y*^2) w.r.t. (params, c, probe); aux: fwd iterations."""
  def loss(params, c, probe):
    y, stats = attractor_jax.fixed_point(
        f, params, c, c, solver=FORWARD_SOLVER[backward], backward=backward,
        max_iter=max_iter, tol=0.0, backward_tol=0.0,
        on_backward_failure="ignore", backward_probe=probe)
    return jnp.mean(jnp.square(y)), stats.iterations
  return jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))


def backward_table(f, params, c, args):
  """Table 2: gradient step time and temp memory per backward mode/max_iter."""
  probe = attractor_jax.backward_probe()
  steps, rows = {}, {}
  for backward in BACKWARDS:
    for max_iter in args.grad_iters:
      key = (backward, max_iter)
      step = make_grad_step(f, backward, max_iter)
      memory = step.lower(params, c, probe).compile().memory_analysis()
      grads, fwd_its = jax.block_until_ready(step(params, c, probe))  # warm up
      bwd = probe_lib.backward_stats(grads[2])
      steps[key] = step
      rows[key] = {
          "temp_bytes": None if memory is None else memory.temp_size_in_bytes,
          "fwd_iterations": float(jnp.mean(fwd_its)),
          "bwd_iterations": float(bwd.mean_iterations), "times": []}
  for _ in range(args.repeats):  # round-robin, so drift hits every row alike
    for key, step in steps.items():
      start = time.perf_counter()
      jax.block_until_ready(step(params, c, probe))
      rows[key]["times"].append(time.perf_counter() - start)
  for row in rows.values():
    row["seconds"] = float(np.median(row.pop("times")))
  return rows


def tanh_layer(w, y, c):
  """The dense DEQ layer tanh(y W + c) on a [batch, seq, width] state."""
  flat = y.reshape(y.shape[0], -1)
  return jnp.tanh(flat @ w + c.reshape(flat.shape)).reshape(y.shape)


def step_cost_table(args):
  """Table 3: seconds per solver step on a small state, per map and solver."""
  key_p, key_c, key_w = jax.random.split(jax.random.PRNGKey(args.seed + 1), 3)
  dim = args.cost_seq * args.cost_width
  c = jax.random.normal(key_c, (args.cost_batch, args.cost_seq,
                                args.cost_width), jnp.float32)
  w = 0.5 * jax.random.normal(key_w, (dim, dim), jnp.float32) / np.sqrt(dim)
  heads = max(1, args.cost_width // 8)
  maps = {
      "block": (make_map(heads),
                init_params(key_p, args.cost_width, 4 * args.cost_width,
                            args.gate)),
      "tanh layer": (tanh_layer, w),
  }
  rows = {}
  for name, (f, params) in maps.items():
    solves = {}
    for solver in SOLVERS:
      solve = jax.jit(lambda p, cc, f=f, s=solver: attractor_jax.fixed_point(
          f, p, cc, cc, solver=s, max_iter=args.cost_steps, tol=0.0,
          divergence_factor=None)[1].num_f_evals)
      evals = int(solve(params, c))  # warm-up
      assert evals == args.cost_steps + 1, (name, solver, evals)
      solves[solver] = solve
    times = {solver: [] for solver in solves}
    for _ in range(args.repeats):  # round-robin, so drift hits every row alike
      for solver, solve in solves.items():
        start = time.perf_counter()
        jax.block_until_ready(solve(params, c))
        times[solver].append(time.perf_counter() - start)
    per_step = {s: float(np.median(t)) / args.cost_steps
                for s, t in times.items()}
    rows[name] = {s: {"seconds_per_step": t,
                      "vs_picard": t / per_step["picard"]}
                  for s, t in per_step.items()}
  return rows


def print_step_cost_table(rows, args):
  """Prints Table 3: microseconds per step and the ratio to Picard."""
  print(f"\nTable 3: cost of one solver step, {args.cost_batch} examples x "
        f"{args.cost_seq * args.cost_width} numbers, exactly "
        f"{args.cost_steps} steps (tol 0)")
  print(f"{'map':<12}" + "".join(f"{s + ' us':>13}" for s in SOLVERS)
        + "".join(f"{s + '/picard':>17}" for s in SOLVERS[1:]))
  for name, row in rows.items():
    print(f"{name:<12}"
          + "".join(f"{1e6 * row[s]['seconds_per_step']:>13.2f}"
                    for s in SOLVERS)
          + "".join(f"{row[s]['vs_picard']:>17.2f}" for s in SOLVERS[1:]))


def print_solver_table(name, rows, args):
  """Prints Table 1 for one map."""
  print(f"\nTable 1 ({name} map): solve to tol {args.tol:g}, "
        f"max_iter {args.max_iter}")
  print(f"{'solver':<10}{'f_evals':>9}{'mean it':>9}{'conv':>7}{'div':>6}"
        f"{'max resid':>11}{'time ms':>10}")
  for solver, r in rows.items():
    print(f"{solver:<10}{r['f_evals']:>9d}{r['iterations']:>9.1f}"
          f"{r['converged']:>7.2f}{r['diverged']:>6.2f}{r['residual']:>11.2e}"
          f"{1e3 * r['seconds']:>10.1f}")


def print_backward_table(rows, args):
  """Prints Table 2 with ratios to implicit at the smallest max_iter."""
  base = rows[("implicit", args.grad_iters[0])]
  print(f"\nTable 2: jit(grad) step, solver anderson (picard for unrolled), "
        f"exactly max_iter steps; ratios vs implicit@{args.grad_iters[0]}")
  print(f"{'backward':<10}{'max_iter':>9}{'fwd it':>8}{'bwd it':>8}"
        f"{'time ms':>10}"
        f"{'x time':>8}{'temp MiB':>10}{'x mem':>8}")
  for (backward, max_iter), r in rows.items():
    bwd_it = f"{r['bwd_iterations']:.0f}" if backward == "implicit" else "-"
    if r["temp_bytes"] is None or not base["temp_bytes"]:
      mem, mem_ratio = "n/a", "n/a"
    else:
      mem = f"{r['temp_bytes'] / 2**20:.2f}"
      mem_ratio = f"{r['temp_bytes'] / base['temp_bytes']:.2f}"
    print(f"{backward:<10}{max_iter:>9d}{r['fwd_iterations']:>8.0f}{bwd_it:>8}"
          f"{1e3 * r['seconds']:>10.1f}"
          f"{r['seconds'] / base['seconds']:>8.2f}{mem:>10}{mem_ratio:>8}")


def parse_args(argv):
  """Command-line flags; --quick shrinks everything for a smoke test."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--seq", type=int, default=64)
  parser.add_argument("--width", type=int, default=128)
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--mlp", type=int, default=512)
  parser.add_argument("--gate", type=float, default=0.1)
  parser.add_argument("--slow_gate", type=float, default=2.0)
  parser.add_argument("--maps", nargs="+", default=["fast", "slow"],
                      choices=["fast", "slow"])
  parser.add_argument("--tol", type=float, default=1e-4)
  parser.add_argument("--max_iter", type=int, default=200)
  parser.add_argument("--grad_iters", type=int, nargs="+", default=[4, 16, 64])
  parser.add_argument("--cost_batch", type=int, default=16)
  parser.add_argument("--cost_seq", type=int, default=4)
  parser.add_argument("--cost_width", type=int, default=16)
  parser.add_argument("--cost_steps", type=int, default=200)
  parser.add_argument("--tables", nargs="+", type=int, default=[1, 2, 3],
                      choices=[1, 2, 3])
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--quick", action="store_true")
  if parser.parse_args(argv).quick:  # new defaults; explicit flags still win
    parser.set_defaults(batch=2, seq=16, width=32, heads=2, mlp=64,
                        max_iter=50, maps=["slow"], grad_iters=[2], repeats=2,
                        cost_steps=20)
  return parser.parse_args(argv)


def main(argv=None):
  """Runs both benchmarks, prints the tables and returns the numbers."""
  args = parse_args(argv)
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}; "
        f"batch {args.batch}, seq {args.seq}, width {args.width}, "
        f"heads {args.heads}, mlp {args.mlp}")
  f = make_map(args.heads)
  key_p, key_c = jax.random.split(jax.random.PRNGKey(args.seed))
  c = jax.random.normal(key_c, (args.batch, args.seq, args.width), jnp.float32)
  results = {"args": vars(args), "solvers": {}}
  if 1 in args.tables:
    for name in args.maps:
      gate = args.gate if name == "fast" else args.slow_gate
      params = init_params(key_p, args.width, args.mlp, gate)
      rows = solver_table(f, params, c, args)
      print_solver_table(f"{name}, gate {gate:g}", rows, args)
      results["solvers"][name] = rows
  if 2 in args.tables:
    params = init_params(key_p, args.width, args.mlp, args.gate)
    results["backward"] = backward_table(f, params, c, args)
    print_backward_table(results["backward"], args)
  if 3 in args.tables:
    results["step_cost"] = step_cost_table(args)
    print_step_cost_table(results["step_cost"], args)
  return results


if __name__ == "__main__":
  main()
