"""Compiled (numba) Sudoku kernels: solver, rater, generator, canonical form.

Grids are int arrays of 81 cells in row-major order, 0 for a blank and 1..9
for a digit. Inside the solver a cell is a bit mask: bits 0..8 are the
candidate digits 1..9 and bit 9 (`PLACED`) marks a cell whose digit has
already been removed from its peers.

All randomness comes from `splitmix64` on a one-element uint64 array, so a
seed gives the same puzzles on every machine and numpy version.

The public, documented entry points are in `sudoku.py`; this module is the
engine behind them.

Why one module of ~580 lines: its numba kernels call one another and are
compiled (and cached) together.
"""

import numba as nb
import numpy as np

ALL = 0x1FF
PLACED = 0x200
# Depth of the search stack: every pending branch is a guess on the current
# path, and each guess fixes a different cell.
_MAX_DEPTH = 82


def _make_tables():
  """Units, peers, box-line intersections, popcounts and column orders."""
  units = np.zeros((27, 9), np.int64)
  for i in range(9):
    for j in range(9):
      units[i, j] = i * 9 + j
      units[9 + i, j] = j * 9 + i
      units[18 + i, j] = (i // 3 * 3 + j // 3) * 9 + i % 3 * 3 + j % 3
  peers = np.zeros((81, 20), np.int64)
  for c in range(81):
    others = set()
    for u in units:
      if c in u:
        others.update(int(x) for x in u)
    others.discard(c)
    peers[c] = sorted(others)
  # Each of the 54 box-line intersections (3 cells) with the rest of its box
  # and the rest of its line (6 cells each).
  inter = np.zeros((54, 3), np.int64)
  box_rest = np.zeros((54, 6), np.int64)
  line_rest = np.zeros((54, 6), np.int64)
  k = 0
  for b in range(9):
    box = set(int(x) for x in units[18 + b])
    for line in [units[b // 3 * 3 + i] for i in range(3)] + [
        units[9 + b % 3 * 3 + i] for i in range(3)]:
      line = set(int(x) for x in line)
      inter[k] = sorted(box & line)
      box_rest[k] = sorted(box - line)
      line_rest[k] = sorted(line - box)
      k += 1
  # For each intersection, the other two of its box in the same direction and
  # the other two of its line.
  seg_box_rest = np.zeros((54, 2), np.int64)
  seg_line_rest = np.zeros((54, 2), np.int64)
  for k in range(54):
    line = set(inter[k]) | set(line_rest[k])
    seg_box_rest[k] = [o for o in range(54) if o != k and o // 6 == k // 6
                       and (o % 6 < 3) == (k % 6 < 3)]
    seg_line_rest[k] = [o for o in range(54)
                        if o != k and set(inter[o]) <= line]
  popcount = np.array([bin(m).count("1") for m in range(512)], np.int64)
  lowdigit = np.array([(m & -m).bit_length() for m in range(512)], np.int64)
  # The 1296 orders of 9 lines that keep bands (stacks) together.
  perms3 = [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]
  orders = []
  for bands in perms3:
    for a in perms3:
      for b in perms3:
        for c in perms3:
          inner = (a, b, c)
          orders.append([bands[i] * 3 + inner[i][j]
                         for i in range(3) for j in range(3)])
  return (units, peers, inter, box_rest, line_rest, seg_box_rest,
          seg_line_rest, popcount, lowdigit, np.array(orders, np.int64))


(UNITS, PEERS, INTER, BOX_REST, LINE_REST, SEG_BOX_REST, SEG_LINE_REST,
 POPCOUNT, LOWDIGIT, LINE_ORDERS) = _make_tables()

# ------------------------------------------------------------------ random


@nb.njit(cache=True)
def rand_u64(state):
  """splitmix64: the next 64-bit value of the generator in `state[0]`."""
  state[0] += np.uint64(0x9E3779B97F4A7C15)
  z = state[0]
  z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return z ^ (z >> np.uint64(31))


@nb.njit(cache=True)
def rand_below(state, n):
  """A value in [0, n) (modulo bias below 2**-50 for n <= 81)."""
  return np.int64(rand_u64(state) % np.uint64(n))


@nb.njit(cache=True)
def _shuffle(state, a):
  for i in range(a.shape[0] - 1, 0, -1):
    j = rand_below(state, i + 1)
    a[i], a[j] = a[j], a[i]


# ------------------------------------------------------------------ solver


@nb.njit(cache=True)
def _eliminate(cand, cells, digits, queue, top):
  """Removes `digits` from the unplaced `cells`, queueing new singles.

  Returns the new queue top, or -1 if a cell lost its last candidate.
  """
  for j in range(cells.shape[0]):
    c = cells[j]
    m = cand[c]
    if (m & PLACED) == 0 and (m & digits) != 0:
      m &= ~digits
      if m == 0:
        return -1
      cand[c] = m
      if m & (m - 1) == 0:
        queue[top] = c
        top += 1
  return top


@nb.njit(cache=True)
def propagate(cand, queue, seg):
  """Naked singles, hidden singles, then locked candidates, to a fixpoint.

  The fixpoint does not depend on the order the rules are applied in. Returns
  False on a contradiction (a cell without candidates, a unit missing a
  digit, or one digit twice in a unit). `queue` (int [81]) and `seg`
  (int [54]) are scratch space.
  """
  top = 0
  for c in range(81):
    m = cand[c]
    if m & PLACED:
      continue
    if m == 0:
      return False
    if m & (m - 1) == 0:
      queue[top] = c
      top += 1
  while True:
    # Naked singles: place each queued single, removing it from its peers.
    while top > 0:
      top -= 1
      c = queue[top]
      m = cand[c]
      if m & PLACED:
        continue
      cand[c] = m | PLACED
      for k in range(20):
        p = PEERS[c, k]
        q = cand[p]
        if q & m:
          if q & PLACED:
            return False
          q &= ~m
          if q == 0:
            return False
          cand[p] = q
          if q & (q - 1) == 0:
            queue[top] = p
            top += 1
    # Hidden singles.
    for u in range(27):
      once = 0
      twice = 0
      for k in range(9):
        m = cand[UNITS[u, k]] & ALL
        twice |= once & m
        once |= m
      if once != ALL:
        return False
      hidden = once & ~twice
      if hidden:
        for k in range(9):
          c = UNITS[u, k]
          m = cand[c]
          if m & PLACED:
            continue
          h = m & hidden
          if h & (h - 1):
            return False
          if h and h != m:
            cand[c] = h
            queue[top] = c
            top += 1
    if top > 0:
      continue
    # Locked candidates: a digit confined to a box-line intersection within
    # the box (pointing) or within the line (claiming). Segment masks are
    # taken once per round; one made stale by this round's eliminations can
    # only miss an elimination or make one in an already contradictory grid.
    for s in range(54):
      seg[s] = (cand[INTER[s, 0]] | cand[INTER[s, 1]]
                | cand[INTER[s, 2]]) & ALL
    changed = False
    for s in range(54):
      i = seg[s]
      b = seg[SEG_BOX_REST[s, 0]] | seg[SEG_BOX_REST[s, 1]]
      ln = seg[SEG_LINE_REST[s, 0]] | seg[SEG_LINE_REST[s, 1]]
      pointing = i & ~b & ln
      if pointing:
        top = _eliminate(cand, LINE_REST[s], pointing, queue, top)
        if top < 0:
          return False
        changed = True
      claiming = i & ~ln & b
      if claiming:
        top = _eliminate(cand, BOX_REST[s], claiming, queue, top)
        if top < 0:
          return False
        changed = True
    if not changed:
      return True


@nb.njit(cache=True)
def init_candidates(grid):
  cand = np.empty(81, np.int32)
  for c in range(81):
    d = grid[c]
    cand[c] = ALL if d == 0 else (1 << (d - 1))
  return cand


@nb.njit(cache=True)
def search(cand, limit, sols, state, randomize):
  """Depth-first search with propagation and binary branching.

  At each branch point the unplaced cell with the fewest candidates (the
  first such cell in row-major order) is chosen, and its lowest candidate
  digit (a random one if `randomize`) is tried: that is one guess. If the
  guess fails, the digit is removed from the cell and propagation goes on;
  that is not a guess.

  Args:
    cand: int32 [81] candidate masks to start from (see `init_candidates`);
      used as the working state, so its content is lost.
    limit: stop after this many solutions.
    sols: int8 array [k, 81]; the first k solutions found are written here.
    state: uint64 [1] random state, used only if `randomize`.
    randomize: pick a random candidate digit instead of the lowest.

  Returns:
    (number of solutions found, at most `limit`; guesses made before the
    first solution was found, or -1 if there is none).
  """
  stack = np.empty((_MAX_DEPTH, 81), np.int32)
  queue = np.empty(81, np.int64)
  seg = np.empty(54, np.int64)
  depth = 0
  found = 0
  guesses = 0
  first = -1
  ok = propagate(cand, queue, seg)
  while True:
    if ok:
      best = -1
      fewest = 10
      for c in range(81):
        m = cand[c]
        if m & PLACED:
          continue
        n = POPCOUNT[m]
        if n < fewest:
          fewest = n
          best = c
          if n == 2:
            break
      if best < 0:
        if found < sols.shape[0]:
          for c in range(81):
            sols[found, c] = LOWDIGIT[cand[c] & ALL]
        found += 1
        if found == 1:
          first = guesses
        if found >= limit:
          break
        ok = False
        continue
      m = cand[best]
      if randomize:
        k = rand_below(state, POPCOUNT[m])
        d = m
        for _ in range(k):
          d &= d - 1
        d &= -d
      else:
        d = m & -m
      stack[depth, :] = cand
      stack[depth, best] = m & ~d
      depth += 1
      cand[best] = d
      guesses += 1
      ok = propagate(cand, queue, seg)
    else:
      if depth == 0:
        break
      depth -= 1
      cand[:] = stack[depth]
      ok = propagate(cand, queue, seg)
  return found, first


# ---------------------------------------------------------- rearrangements


@nb.njit(cache=True)
def random_rearrangement(state, rows, cols, digits):
  """Draws a validity-preserving rearrangement; returns the transpose flag.

  Fills `rows` and `cols` (int [9]: source line of each target line, bands
  and stacks kept together) and `digits` (int [10]: relabelling, 0 -> 0).
  """
  for lines in (rows, cols):
    order = np.arange(3)
    _shuffle(state, order)
    inner = np.arange(3)
    for i in range(3):
      _shuffle(state, inner)
      for j in range(3):
        lines[i * 3 + j] = order[i] * 3 + inner[j]
  perm = np.arange(1, 10)
  _shuffle(state, perm)
  digits[0] = 0
  for i in range(9):
    digits[i + 1] = perm[i]
  return rand_below(state, 2) == 1


@nb.njit(cache=True)
def rearrange(grid, rows, cols, digits, transpose, out):
  """out[r, c] = digits[grid[rows[r], cols[c]]], then transposed if asked."""
  for r in range(9):
    for c in range(9):
      v = digits[grid[rows[r] * 9 + cols[c]]]
      if transpose:
        out[c * 9 + r] = v
      else:
        out[r * 9 + c] = v


@nb.njit(cache=True)
def rate(grid, n_isomorphs, seed):
  """Mean guesses to the first solution over random rearrangements of `grid`.

  The caller checks that `grid` has exactly one solution.
  """
  state = np.full(1, seed, np.uint64)
  rows = np.empty(9, np.int64)
  cols = np.empty(9, np.int64)
  digits = np.empty(10, np.int64)
  moved = np.empty(81, np.int8)
  sols = np.empty((0, 81), np.int8)
  total = 0
  for _ in range(n_isomorphs):
    transpose = random_rearrangement(state, rows, cols, digits)
    rearrange(grid, rows, cols, digits, transpose, moved)
    _, guesses = search(init_candidates(moved), 1, sols, state, False)
    total += guesses
  return total / n_isomorphs


# ---------------------------------------------------------------- generator


@nb.njit(cache=True)
def random_grid(state):
  """A random complete valid grid (randomised search on the empty grid)."""
  sols = np.empty((1, 81), np.int8)
  search(init_candidates(np.zeros(81, np.int8)), 1, sols, state, True)
  return sols[0].copy()


@nb.njit(cache=True)
def minimise(puzzle, solution, state):
  """Removes clues in random order while `solution` stays the only solution.

  A clue can go if no solution has another digit in its cell, which is one
  search on a smaller tree than counting solutions up to two.
  """
  sols = np.empty((0, 81), np.int8)
  clues = np.flatnonzero(puzzle)
  _shuffle(state, clues)
  for c in clues:
    d = puzzle[c]
    puzzle[c] = 0
    cand = init_candidates(puzzle)
    cand[c] = ALL & ~(1 << (d - 1))
    found, _ = search(cand, 1, sols, state, False)
    if found:
      puzzle[c] = d


@nb.njit(cache=True)
def repair(puzzle, solution, state):
  """Adds clues of `solution` until it is the only solution of `puzzle`.

  Each added clue is a random cell where another solution differs from
  `solution`, so every step removes at least that other solution.
  """
  sols = np.empty((2, 81), np.int8)
  differ = np.empty(81, np.int64)
  while True:
    found, _ = search(init_candidates(puzzle), 2, sols, state, False)
    if found == 1:
      return
    other = 1 if (sols[0] == solution).all() else 0
    n = 0
    for c in range(81):
      if sols[other, c] != solution[c]:
        differ[n] = c
        n += 1
    c = differ[rand_below(state, n)]
    puzzle[c] = solution[c]


@nb.njit(cache=True)
def climb(seed, steps, n_isomorphs, stop_rating, stop_count, cut_step,
          puzzles, ratings, at_step):
  """Local search for hard puzzles from one random grid.

  Starts from a random minimal puzzle of a random grid and repeats up to
  `steps` times: remove one clue (two with probability 1/2), repair
  uniqueness with clues of the same grid, re-minimise, and rate the result
  over `n_isomorphs` fresh random rearrangements (a quarter of them first:
  below half the current rating it is dropped there). It replaces the
  current puzzle if that rating is not lower than the current puzzle's; it
  is then rated over 2 * `n_isomorphs` more rearrangements and its rating
  becomes the mean of all 3 * `n_isomorphs`, so that one lucky draw does not
  set the bar. Stops early once `stop_count` accepted puzzles rate at least
  `stop_rating`, or at step `cut_step` if none does yet.

  Writes the accepted puzzles, in order, to `puzzles` [steps + 1, 81], their
  ratings to `ratings` and the step that found each to `at_step`; returns
  (their number, the solution grid).
  """
  state = np.full(1, seed, np.uint64)
  grid = random_grid(state)
  puzzle = grid.copy()
  minimise(puzzle, grid, state)
  rating = rate(puzzle, 3 * n_isomorphs, rand_u64(state))
  puzzles[0] = puzzle
  ratings[0] = rating
  at_step[0] = 0
  n = 1
  hard = 1 if rating >= stop_rating else 0
  screen = max(1, n_isomorphs // 4)
  trial = np.empty(81, np.int8)
  for step in range(1, steps + 1):
    if hard >= stop_count or (step == cut_step and hard == 0):
      break
    trial[:] = puzzle
    for _ in range(1 + rand_below(state, 2)):
      clues = np.flatnonzero(trial)
      trial[clues[rand_below(state, clues.shape[0])]] = 0
    repair(trial, grid, state)
    minimise(trial, grid, state)
    if (trial == puzzle).all():
      continue
    r = rate(trial, screen, rand_u64(state))
    if r < 0.5 * rating:
      continue
    rest = rate(trial, n_isomorphs - screen, rand_u64(state))
    r = (screen * r + (n_isomorphs - screen) * rest) / n_isomorphs
    if r >= rating:
      more = rate(trial, 2 * n_isomorphs, rand_u64(state))
      puzzle[:] = trial
      rating = (r + 2 * more) / 3
      puzzles[n] = puzzle
      ratings[n] = rating
      at_step[n] = step
      n += 1
      if rating >= stop_rating:
        hard += 1
  return n, grid


# ------------------------------------------------------------ canonical form


@nb.njit(cache=True)
def canonical(grid):
  """The least relabelled grid over all row/column rearrangements.

  Over transpose x 1296 row orders x 1296 column orders (bands and stacks
  kept together), each image is read in row-major order with its digits
  relabelled 1, 2, ... by first appearance, and the lexicographically least
  is returned. Relabelling by first appearance makes the result the same for
  every digit permutation, so equivalent puzzles (under the whole
  2 * 6**8 * 9! group) get the same form. Rows are chosen one at a time and
  a branch is cut as soon as its prefix exceeds the best found so far.
  """
  best = np.full(81, 127, np.int8)
  g = np.empty(81, np.int64)
  cur = np.empty(81, np.int8)
  maps = np.zeros((10, 10), np.int64)
  nextlab = np.zeros(10, np.int64)
  choice = np.zeros(10, np.int64)
  used = np.zeros(10, np.int64)
  less = np.zeros(10, np.bool_)
  for t in range(2):
    for r in range(9):
      for c in range(9):
        g[r * 9 + c] = grid[c * 9 + r] if t else grid[r * 9 + c]
    for pi in range(LINE_ORDERS.shape[0]):
      cp = LINE_ORDERS[pi]
      level = 0
      choice[0] = -1
      used[0] = 0
      less[0] = False
      maps[0, :] = 0
      nextlab[0] = 1
      while level >= 0:
        # Next row for this level: a row of an unused band at a band start,
        # else an unused row of the current band.
        r = choice[level] + 1
        while r < 9:
          if ((used[level] >> r) & 1) == 0:
            if level % 3 == 0:
              if ((used[level] >> (r // 3 * 3)) & 7) == 0:
                break
            elif r // 3 == choice[level - 1] // 3:
              break
          r += 1
        if r >= 9:
          level -= 1
          continue
        choice[level] = r
        nl = nextlab[level]
        for d in range(10):
          maps[level + 1, d] = maps[level, d]
        is_less = less[level]
        pruned = False
        base = level * 9
        for j in range(9):
          v = g[r * 9 + cp[j]]
          if v:
            if maps[level + 1, v] == 0:
              maps[level + 1, v] = nl
              nl += 1
            v = maps[level + 1, v]
          cur[base + j] = v
          if not is_less:
            if v < best[base + j]:
              is_less = True
            elif v > best[base + j]:
              pruned = True
              break
        if pruned:
          continue
        if level == 8:
          if is_less:
            best[:] = cur
            # The current path now equals the best at every level.
            less[:] = False
          continue
        nextlab[level + 1] = nl
        used[level + 1] = used[level] | (1 << r)
        less[level + 1] = is_less
        level += 1
        choice[level] = -1
  return best
