"""Writes the tutorial notebooks of experiments/notebooks/ and runs them.

    python experiments/notebooks/build_notebooks.py            # write, no run
    python experiments/notebooks/build_notebooks.py --execute  # full size run
    python experiments/notebooks/build_notebooks.py --execute --size small \
        --only attractor_lm
    python experiments/notebooks/build_notebooks.py --refresh_headers  # badge,
        # install cell (after attractor_jax/project.py changed), outputs kept

The cells live here as plain strings, so a change is a diff of Python, and
the committed .ipynb files are the executed output (pictures included) of
`--execute` at the full size. tests/test_notebooks.py runs each notebook with
ATTRACTOR_NOTEBOOK_SIZE=small.

Why one module of ~600 lines: it holds every notebook's cells as text;
each notebook's cells stay together.
"""

import argparse
import os
import pathlib
import sys
import time

import nbformat
from nbformat import v4

from attractor_jax import project

HERE = pathlib.Path(__file__).resolve().parent

INSTALL_MD = """\
**In Colab:** run the install cell below first. Where `attractor_jax` is
already importable (a `pip install -e ".[test]"` checkout, or CI) it does
nothing."""

# The install cell; {repository} is attractor_jax/project.py's REPOSITORY.
INSTALL = """\
REPOSITORY = "{repository}"  # attractor_jax/project.py
try:
    import attractor_jax  # noqa: F401  (already installed: nothing to do)
except ImportError:
    if not REPOSITORY:
        raise SystemExit(
            "Set REPOSITORY in this cell to the git address of attractor_jax "
            "(https://github.com/OWNER/attractor_jax), then run it again.")
    %pip install -q "attractor_jax @ git+{{REPOSITORY}}"
    import attractor_jax  # noqa: F401"""


def colab_badge(name: str, repository: str = project.REPOSITORY) -> str:
  """The "Open in Colab" line of notebook `name`, derived from REPOSITORY."""
  url = project.colab_url(f"experiments/notebooks/{name}.ipynb", repository)
  if not url:
    return ("*Open in Colab: the repository's address is not set yet "
            "(`attractor_jax/project.py`).*")
  return ("[![Open In Colab](https://colab.research.google.com/assets/"
          f"colab-badge.svg)]({url})")


def install_cell(repository: str = project.REPOSITORY) -> str:
  return INSTALL.format(repository=repository)


SIZE_CELL = """\
import os
# "full": the committed run (a few minutes on a 2-core CPU);
# "small": what CI runs, every step a few seconds.
SIZE = os.environ.get("ATTRACTOR_NOTEBOOK_SIZE", "full")
assert SIZE in ("small", "full"), SIZE
SMALL = SIZE == "small"
print("size:", SIZE)"""


def _header(title, intro):
  return [("md", f"# {title}\n\n{intro}"), ("md", INSTALL_MD),
          ("code", install_cell()), ("code", SIZE_CELL)]


# --------------------------------------------------------------------------
# 1. Bring your own model
# --------------------------------------------------------------------------

BYOM = _header(
    "The attractor head inside your own Flax model",
    "An attractor head takes a proposal `c` from any backbone and returns the "
    "fixed point `y* = c + R(y* + c)` of a few weight-tied, gated blocks `R`. "
    "The forward pass is a fixed-point solve (Anderson by default); the "
    "backward pass differentiates the fixed point implicitly, so memory does "
    "not grow with the number of solver steps.\n\n"
    "This notebook (1) puts the head in a small NNX model and trains it on a "
    "set task, (2) does the same in Linen, and (3) compares the backward "
    "modes of `fixed_point` on a small contracting map.") + [
    ("md", "## 1. An NNX model\n\n"
     "The task: every item of a set of 5 points in 3-D should output the "
     "mean of the first coordinate over the set. Each item alone cannot know "
     "it; the head's attention (no causal mask, no rotary positions: a set "
     "has no order) mixes the items inside the fixed-point map."),
    ("code", """\
import time
import jax, jax.numpy as jnp, numpy as np, optax
from flax import nnx
from attractor_jax import AttractorHead, SolveConfig, fixed_point

STEPS = 8 if SMALL else 60

class SetModel(nnx.Module):
    def __init__(self, rngs):
        self.embed = nnx.Linear(3, 32, rngs=rngs)
        self.head = AttractorHead.create(
            dim=32, num_heads=4, mlp_dim=64, num_blocks=1, causal=False,
            rope_theta=None, solve_config=SolveConfig(max_iter=20), rngs=rngs)
        self.out = nnx.Linear(32, 1, rngs=rngs)

    def __call__(self, x):                      # x: [batch, items, 3]
        y, stats = self.head(self.embed(x))     # y*: [batch, items, 32]
        return self.out(y), stats

def make_batch(key, batch=32):
    x = jax.random.normal(key, (batch, 5, 3))
    target = jnp.broadcast_to(x[..., :1].mean(axis=1, keepdims=True), (batch, 5, 1))
    return x, target

model = SetModel(nnx.Rngs(0))
optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

@nnx.jit     # jit the whole step: an eager call would re-trace the solver
def train_step(model, optimizer, x, target):
    def loss_fn(model):
        out, stats = model(x)
        return jnp.mean((out - target) ** 2), stats
    (loss, stats), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    return loss, stats

nnx_losses = []
start = time.perf_counter()
for step in range(STEPS):
    x, target = make_batch(jax.random.key(step))
    loss, stats = train_step(model, optimizer, x, target)
    nnx_losses.append(float(loss))
    if step % max(1, STEPS // 6) == 0 or step == STEPS - 1:
        print(f"step {step:3d}  loss {float(loss):.4f}  "
              f"iterations mean {float(stats.iterations.mean()):.1f}  "
              f"converged {float(stats.converged.mean()):.2f}  "
              f"residual max {float(stats.residual.max()):.1e}")
print(f"{STEPS} steps in {time.perf_counter() - start:.1f} s (first one compiles)")"""),
    ("md", "`stats` is per example: solver steps taken, the final relative "
     "residual `||f(y) - y|| / scale`, and whether the solve converged. "
     "A healthy head converges in a handful of steps throughout training."),
    ("md", "## 2. The same head in Linen\n\n"
     "`attractor_jax.linen` wraps the NNX head through `flax.nnx.bridge`. "
     "`init` only needs shapes, so it skips the solve; `apply` solves."),
    ("code", """\
from flax import linen as nn
from attractor_jax import linen as attractor_linen

class LinenSetModel(nn.Module):
    @nn.compact
    def __call__(self, x):
        y, stats = attractor_linen.attractor_head(
            dim=32, num_heads=4, mlp_dim=64, causal=False, rope_theta=None,
            solve_config=SolveConfig(max_iter=20), name="head")(nn.Dense(32)(x))
        return nn.Dense(1)(y), stats

linen_model = LinenSetModel()
x, target = make_batch(jax.random.key(0))
params = jax.jit(linen_model.init)(jax.random.key(0), x)["params"]
tx = optax.adam(3e-3)
opt_state = tx.init(params)

@jax.jit
def linen_step(params, opt_state, x, target):
    def loss_fn(params):
        out, stats = linen_model.apply({"params": params}, x)
        return jnp.mean((out - target) ** 2), stats
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, stats

linen_losses = []
for step in range(STEPS):
    x, target = make_batch(jax.random.key(step))
    params, opt_state, loss, stats = linen_step(params, opt_state, x, target)
    linen_losses.append(float(loss))
print(f"Linen: loss {linen_losses[0]:.4f} -> {linen_losses[-1]:.4f}, "
      f"iterations mean {float(stats.iterations.mean()):.1f}, "
      f"converged {float(stats.converged.mean()):.2f}")
print(f"NNX:   loss {nnx_losses[0]:.4f} -> {nnx_losses[-1]:.4f}")"""),
    ("md", "## 3. Backward modes of `fixed_point`\n\n"
     "`fixed_point(f, params, c, y0, backward=...)` solves `y = f(params, y, c)` "
     "and offers five ways to differentiate `y*`:\n\n"
     "- `implicit`: solves the adjoint fixed point `u = J^T u + v`: the exact "
     "gradient at `y*`, up to the backward tolerance;\n"
     "- `onestep`: backpropagates through one extra application of `f` at "
     "`y*` (the Jacobian-free / one-step gradient used to train the LMs);\n"
     "- `jfb`: Jacobian-free backprop, the same idea (treats `(I - J)^-1` as "
     "`I`);\n"
     "- `phantom`: a few damped unrolled steps from `y*`;\n"
     "- `unrolled`: backpropagates through every solver step (Picard only).\n\n"
     "The map below is `f(W, y, c) = tanh(y W + c)` with `||W|| = 0.8`, so "
     "it contracts. The reference gradient is exact: it solves `(I - J)^T u "
     "= v` with a dense Jacobian per example."),
    ("code", """\
BATCH, DIM = (8, 32) if SMALL else (16, 128)
key_w, key_c, key_v = jax.random.split(jax.random.key(42), 3)
W = jax.random.normal(key_w, (DIM, DIM))
W = 0.8 * W / jnp.linalg.norm(W, 2)          # spectral norm 0.8: a contraction
c = jax.random.normal(key_c, (BATCH, DIM))
probe = jax.random.normal(key_v, (BATCH, DIM))

def f(W, y, c):
    return jnp.tanh(y @ W + c)

def loss_with(backward):
    solver = "picard" if backward == "unrolled" else "anderson"
    def loss(W, c):
        y, _ = fixed_point(f, W, c, jnp.zeros_like(c), solver=solver,
                           backward=backward, max_iter=100, tol=1e-6)
        return jnp.sum(y * probe)
    return loss

# Exact gradient: y* by a long Picard run, then (I - J)^T u = probe per
# example with J = tanh'(.) W^T, and dL/dW = vjp of f at y* with u.
y_star = jnp.zeros_like(c)
for _ in range(300):
    y_star = f(W, y_star, c)
def exact_grads(W, c):
    s = 1 - jnp.tanh(y_star @ W + c) ** 2                      # [B, D]
    J = s[:, :, None] * W.T[None]                              # dy_i/dy_j
    A = jnp.eye(DIM)[None] - jnp.swapaxes(J, 1, 2)             # (I - J)^T
    u = jnp.linalg.solve(A, probe[..., None])[..., 0]
    _, vjp = jax.vjp(lambda W, c: f(W, y_star, c), W, c)
    return vjp(u)
exact_W, exact_c = exact_grads(W, c)

MODES = ["implicit", "onestep", "jfb", "phantom", "unrolled"]
REPEATS = 5 if SMALL else 30
rows = []
for mode in MODES:
    grad_fn = jax.jit(jax.grad(loss_with(mode), argnums=(0, 1)))
    compiled = grad_fn.lower(W, c).compile()
    memory = compiled.memory_analysis()
    temp_kib = memory.temp_size_in_bytes / 1024 if memory is not None else float("nan")
    gW, gc = jax.block_until_ready(grad_fn(W, c))     # warm-up
    start = time.perf_counter()
    for _ in range(REPEATS):
        jax.block_until_ready(grad_fn(W, c))
    ms = (time.perf_counter() - start) / REPEATS * 1e3
    err = float(jnp.linalg.norm(gW - exact_W) / jnp.linalg.norm(exact_W))
    rows.append((mode, err, ms, temp_kib))
    print(f"{mode:9s} rel. grad error {err:9.2e}   {ms:7.2f} ms/grad   "
          f"temp memory {temp_kib:8.1f} KiB")"""),
    ("code", """\
import matplotlib.pyplot as plt
%matplotlib inline

names = [r[0] for r in rows]
fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
colors = ["C0", "C1", "C2", "C3", "C4"]
axes[0].bar(names, [max(r[1], 1e-9) for r in rows], color=colors)
axes[0].set_yscale("log"); axes[0].set_title("relative gradient error vs exact")
axes[1].bar(names, [r[2] for r in rows], color=colors)
axes[1].set_title("time per jitted gradient (ms)")
axes[2].bar(names, [r[3] for r in rows], color=colors)
axes[2].set_title("compiled temp memory (KiB)")
for ax in axes:
    ax.tick_params(axis="x", rotation=30)
fig.suptitle(f"Backward modes of fixed_point: tanh map, batch {BATCH}, width {DIM}")
fig.tight_layout()
plt.show()"""),
    ("md", "How to read it: `implicit` is the only mode whose gradient "
     "matches the exact one (to the solver tolerance), and `unrolled` gets "
     "close too, at the price of memory that grows with the number of "
     "Picard steps it stores. `onestep`, `jfb` and `phantom` are cheap "
     "approximations: their gradient is biased (here by about 8 to 30 percent), "
     "which training tolerates when the map contracts fast. Times on a "
     "shared CPU are rough."),
]

# --------------------------------------------------------------------------
# 2. The tiny Attractor LM
# --------------------------------------------------------------------------

LM = _header(
    "Train a tiny Attractor LM",
    "The Attractor LM is a transformer backbone that proposes output "
    "embeddings `c`, followed by a weight-tied attractor head solved to its "
    "fixed point. This notebook trains the tiny preset on the built-in "
    "corpus, sweeps the test-time depth (the head's solver step limit `T`), "
    "and decodes text with and without key/value caches.") + [
    ("md", "## 1. Train\n\n"
     "`lm.get_config()` is the tiny preset (1024-token SentencePiece "
     "vocabulary trained on the corpus, sequences of 128). "
     "`trainer.train_and_evaluate` trains, checkpoints into `workdir`, "
     "evaluates, runs the depth sweep and samples a little text."),
    ("code", """\
import tempfile, time
import jax, jax.numpy as jnp, numpy as np
from attractor_jax.configs import lm
from attractor_jax.training import trainer

config = lm.get_config()
if SMALL:
    config.total_steps = 10
    config.log_every = 5
    config.eval_every = 10
    config.checkpoint_every = 10
    config.optimizer.warmup_steps = 2
    config.eval_batches = 1
    config.sample.num_tokens = 16
config.depth_sweep = True
workdir = tempfile.mkdtemp(prefix="attractor_lm_")
start = time.perf_counter()
summary = trainer.train_and_evaluate(config, workdir)
print(f"trained {config.total_steps} steps in {time.perf_counter() - start:.0f} s")
print("keys of the summary:", sorted(summary))"""),
    ("md", "## 2. The depth sweep\n\n"
     "The model was trained with the head solved to a tolerance. At test "
     "time we may cap the solver at `T` steps. `T = 0` skips the head and "
     "decodes the backbone's proposal `c` directly. If the loss at `T = 0` "
     "is close to the loss at the fixed point, the backbone has "
     "*internalized* the equilibrium: it proposes nearly the fixed point "
     "itself, and the head only refines it. (A short training run shows "
     "less of this than a long one.)"),
    ("code", """\
import matplotlib.pyplot as plt
%matplotlib inline

rows = summary["depth_sweep"]
for r in rows:
    print(f"T={r['T']:3d}  loss {r['loss']:.4f}  perplexity {r['perplexity']:8.2f}  "
          f"iterations {r['iterations']:.1f}")
T = [r["T"] for r in rows]
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
ax1.plot(T, [r["perplexity"] for r in rows], "o-")
ax1.set_xscale("symlog", linthresh=1); ax1.set_xlabel("test-time depth T (solver step limit)")
ax1.set_ylabel("validation perplexity"); ax1.set_title("depth sweep: T=0 decodes the proposal c")
ax2.plot(T, [r["iterations"] for r in rows], "o-", color="C1")
ax2.set_xscale("symlog", linthresh=1); ax2.set_xlabel("T")
ax2.set_ylabel("mean solver steps used")
ax2.set_title("steps actually taken (stops at tolerance)")
fig.tight_layout()
plt.show()"""),
    ("md", "## 3. Cached and uncached decoding\n\n"
     "`trainer.load_trained(workdir)` restores the last checkpoint with its "
     "tokenizer. `generate(..., cached=True)` keeps key/value caches: each "
     "new token solves the head for one position only. `cached=False` "
     "re-runs the whole sequence for every token. With greedy decoding "
     "(`temperature=0`) both must give the same tokens; the cached one is "
     "faster (the first call of each includes compilation, so we time a "
     "second call)."),
    ("code", """\
from attractor_jax.tasks.lm import generation

trained, tokenizer, loaded_config = trainer.load_trained(workdir)
print("restored step", trained.step)
N_NEW = 16 if SMALL else 64
prompt = jnp.asarray([tokenizer.encode("ROMEO:")], dtype=jnp.int32)

def decode(cached):
    return generation.generate(trained.model, prompt, N_NEW, key=jax.random.key(0),
                               temperature=0.0, cached=cached)

times = {}
outputs = {}
for cached in (True, False):
    jax.block_until_ready(decode(cached))          # compile
    start = time.perf_counter()
    outputs[cached] = np.asarray(jax.block_until_ready(decode(cached)))
    times[cached] = time.perf_counter() - start
    print(f"cached={cached!s:5}: {times[cached]:.2f} s for {N_NEW} tokens")
print("cached == uncached:", bool(np.array_equal(outputs[True], outputs[False])))
print("speed-up of caching: %.1fx" % (times[False] / times[True]))
print()
print(tokenizer.decode(outputs[True][0].tolist()))"""),
    ("md", "The sample the trainer drew at the end of training (temperature "
     "0.8, top-k 40):"),
    ("code", """print(summary.get("sample", "(no sample)"))"""),
]

# --------------------------------------------------------------------------
# 3. Sudoku in minutes
# --------------------------------------------------------------------------

SUDOKU = _header(
    "Sudoku in minutes: puzzles, ratings and a tiny attractor reasoner",
    "`attractor_jax.puzzles` makes and rates Sudoku puzzles (numba, no "
    "downloads); the committed Sudoku-Extreme style set is rated the same "
    "way. Then a tiny Attractor reasoner (TRM's protocol with its latent "
    "recursion solved as a fixed point) trains for a few minutes on a CPU. "
    "Expect a few correct cells, not solved puzzles: the real runs train for "
    "hours on an accelerator (docs/puzzle_training.md).") + [
    ("md", "## 1. Make and rate puzzles\n\n"
     "A random full grid, then clues removed while the solution stays "
     "unique, until no clue can go (a *minimal* puzzle). The rating is the "
     "mean number of guesses a propagate-and-search solver needs over random "
     "rearrangements of the puzzle; the tiers are cut on it. Random minimal "
     "puzzles are mostly easy: the `build-sudoku` command climbs to hard ones "
     "by local search (`python -m attractor_jax.puzzles build-sudoku --help`)."),
    ("code", """\
import time
import numpy as np
from attractor_jax.puzzles import sudoku, sudoku_core

def random_minimal_puzzle(seed):
    state = np.full(1, seed, np.uint64)
    solution = sudoku_core.random_grid(state)
    puzzle = solution.copy()
    sudoku_core.minimise(puzzle, solution, state)
    return puzzle, solution

start = time.perf_counter()
for seed in range(1, 4 if SMALL else 9):
    puzzle, solution = random_minimal_puzzle(seed)
    info = sudoku.describe(puzzle)
    print(f"{info['puzzle']}  clues {np.count_nonzero(puzzle):2d}  "
          f"solutions {info['solutions']}  rating {info['rating']:6.2f}  tier {info['tier']}")
print(f"({time.perf_counter() - start:.1f} s, numba compilation included)")

test = sudoku.load_split("test")
tiers = [sudoku.tier_of(r) for r in test.ratings]
print(f"\\ncommitted test split: {len(test.ratings)} puzzles,",
      {t: tiers.count(t) for t in sudoku.TIERS})"""),
    ("md", "## 2. Train a tiny reasoner\n\n"
     "`configs/sudoku.py:tiny` is the CPU size. We shorten the run, and "
     "evaluate on an even spread of the test split over its tiers "
     "(`config.test_examples`; 0, the default, reads all 5000 test puzzles)."),
    ("code", """\
import tempfile
from attractor_jax.configs import sudoku as sudoku_configs
from attractor_jax.training import trainer

config = sudoku_configs.get_config("tiny")
config.test_examples = 16 if SMALL else 200   # an even spread over the tiers
config.total_steps = 4 if SMALL else 400
config.batch_size = 4 if SMALL else 64
config.log_every = 2 if SMALL else 50
config.eval_every = 1000
config.eval_examples = 8 if SMALL else 64
config.eval_batch_size = 8 if SMALL else 100
config.checkpoint_every = config.total_steps
config.optimizer.warmup_steps = 0 if SMALL else 50
workdir = tempfile.mkdtemp(prefix="sudoku_tiny_")
start = time.perf_counter()
summary = trainer.train_and_evaluate(config, workdir)
print(f"trained {config.total_steps} steps in {time.perf_counter() - start:.0f} s")
test_result = summary["test"]
print(f"test puzzles {int(test_result['count'])}: cell accuracy {test_result.get('cell_accuracy', float('nan')):.3f}, "
      f"exact accuracy {test_result['exact_accuracy']:.3f}")"""),
    ("md", "## 3. The solver at work on one puzzle\n\n"
     "Each segment of the reasoner solves its latent fixed point "
     "`z* = net(z* + x + y)` with Anderson acceleration. We switch on the "
     "solver's `trace` (the relative residual `||f(z) - z|| / scale` after "
     "every step) and run the segments on one test puzzle. Later segments "
     "start from the previous `z*` (warm start), so they need fewer steps."),
    ("code", """\
import dataclasses
import jax, jax.numpy as jnp
import matplotlib.pyplot as plt
%matplotlib inline

trained, _, _ = trainer.load_trained(workdir)
model = trained.model
model.config = dataclasses.replace(
    model.config, solve=dataclasses.replace(model.config.solve, trace=True))
solve = model.config.solve
print(f"solver {solve.solver}, max_iter {solve.max_iter}, tol {solve.tol}, "
      f"segments {model.config.max_segments}")

puzzles, solutions = np.asarray(test.puzzles), np.asarray(test.solutions)
picked = np.linspace(0, len(puzzles) - 1, 6).astype(int)   # easy .. extreme
inputs = jnp.asarray(sudoku.to_tokens(puzzles[picked]))

from flax import nnx
segment = nnx.jit(lambda model, inputs, carry: model(inputs, carry))

carry = model.initial_carry(inputs.shape[0])
traces = []
for _ in range(model.config.max_segments):
    carry, out = segment(model, inputs, carry)
    traces.append(np.asarray(out.stats.trace[:, 0]))
answers = sudoku.from_tokens(np.asarray(jnp.argmax(out.logits, axis=-1)))

fig, ax = plt.subplots(figsize=(7, 3.8))
for i, tr in enumerate(traces):
    steps = np.flatnonzero(np.isfinite(tr))
    ax.semilogy(steps, tr[steps], "o-", ms=3, color=plt.cm.viridis(i / max(1, len(traces) - 1)),
                label=f"segment {i + 1}" if i in (0, len(traces) - 1) else None)
ax.axhline(solve.tol, color="gray", ls="--", label="tolerance")
ax.set_xlabel("solver step"); ax.set_ylabel("relative residual")
ax.set_title("residual per solver step, one puzzle, every segment")
ax.legend(); fig.tight_layout(); plt.show()"""),
    ("md", "## 4. The model's answers\n\n"
     "Clues in black, the model's digits in blue, and its wrong digits in red "
     "(the correct digit small in the corner)."),
    ("code", """\
def draw_grid(ax, puzzle, answer, solution, title):
    for k in range(10):
        lw = 2 if k % 3 == 0 else 0.5
        ax.plot([k, k], [0, 9], "k", lw=lw); ax.plot([0, 9], [k, k], "k", lw=lw)
    for cell in range(81):
        r, c = divmod(cell, 9)
        x, y = c + 0.5, 8.5 - r
        if puzzle[cell]:
            ax.text(x, y, str(puzzle[cell]), ha="center", va="center", fontsize=11, weight="bold")
        elif answer[cell] == solution[cell]:
            ax.text(x, y, str(answer[cell]), ha="center", va="center", fontsize=11, color="C0")
        else:
            ax.add_patch(plt.Rectangle((c, 8 - r), 1, 1, color="red", alpha=0.25))
            ax.text(x, y, str(answer[cell]) if answer[cell] else "?", ha="center",
                    va="center", fontsize=11, color="red")
            ax.text(c + 0.85, 8.8 - r, str(solution[cell]), fontsize=6, color="gray")
    ax.set_xlim(0, 9); ax.set_ylim(0, 9); ax.set_aspect("equal"); ax.axis("off")
    ax.set_title(title, fontsize=9)

fig, axes = plt.subplots(2, 3, figsize=(11, 7.6))
for ax, i, answer in zip(axes.flat, picked, answers):
    blanks = puzzles[i] == 0
    right = int(np.sum((answer == solutions[i]) & blanks))
    draw_grid(ax, puzzles[i], answer, solutions[i],
              f"{sudoku.tier_of(test.ratings[i])} (rating {test.ratings[i]:.1f}): "
              f"{right}/{int(blanks.sum())} blanks right")
fig.tight_layout(); plt.show()"""),
]


NOTEBOOKS = {
    "bring_your_own_model": BYOM,
    "attractor_lm": LM,
    "sudoku_in_minutes": SUDOKU,
}


def build(cells, name: str = "") -> nbformat.NotebookNode:
  if name:
    title, *rest = cells
    cells = [(title[0], title[1].replace("\n\n", f"\n\n{colab_badge(name)}"
                                         "\n\n", 1)), *rest]
  nb = v4.new_notebook()
  nb.cells = [v4.new_markdown_cell(src) if kind == "md" else
              v4.new_code_cell(src) for kind, src in cells]
  nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                               "language": "python"}
  nb.metadata["language_info"] = {"name": "python"}
  return nb


def execute(nb, size: str, cwd: str, timeout: int = 600):
  import nbclient  # pylint: disable=g-import-not-at-top
  os.environ["ATTRACTOR_NOTEBOOK_SIZE"] = size
  client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                   resources={"metadata": {"path": cwd}})
  client.execute()
  return nb


HEADER_CELLS = 3     # title (with the badge), install note, install cell


def refresh_headers(built: nbformat.NotebookNode, path: pathlib.Path) -> None:
  """Writes `built`'s header cells into the executed notebook at `path`."""
  nb = nbformat.read(str(path), as_version=4)
  for i in range(HEADER_CELLS):
    nb.cells[i].source = built.cells[i].source
  nbformat.write(nb, str(path))
  print("refreshed", path)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--execute", action="store_true")
  parser.add_argument("--size", default="full", choices=["small", "full"])
  parser.add_argument("--only", default=None, help="one notebook's name")
  parser.add_argument("--out", default=str(HERE))
  parser.add_argument("--refresh_headers", action="store_true",
                      help="rewrite only the title and install cells of the "
                      "committed notebooks (their outputs are kept)")
  args = parser.parse_args(argv)
  import tempfile  # pylint: disable=g-import-not-at-top
  for name, cells in NOTEBOOKS.items():
    if args.only and name != args.only:
      continue
    nb = build(cells, name)
    path = pathlib.Path(args.out) / f"{name}.ipynb"
    if args.refresh_headers:
      refresh_headers(nb, path)
      continue
    if args.execute:
      start = time.perf_counter()
      with tempfile.TemporaryDirectory() as cwd:
        execute(nb, args.size, cwd)
      print(f"{name}: executed ({args.size}) in "
            f"{time.perf_counter() - start:.0f} s")
    nbformat.write(nb, str(path))
    print("wrote", path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
