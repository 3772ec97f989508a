"""Compiled (numba) kernels of the Maze-Hard generator and checker.

Grids are flat `uint8[900]` arrays, row-major over 30x30, with 1 for an open
cell and 0 for a wall. All randomness comes from numba's `np.random.random`
after `np.random.seed(seed)` in `sample_maze`: numba's generator is MT19937,
the same stream as NumPy's legacy `RandomState`, so a seed gives the same maze
on every machine.

The public, documented entry points are in `maze.py`.
"""

import numba
import numpy as np

SIZE = 30
NUM_CELLS = SIZE * SIZE
LATTICE = SIZE // 2  # 15x15 lattice cells, one every other grid row/column.
UNREACHED = -1


_jit = numba.njit(cache=True)


@_jit
def _randint(n):
  """Uniform integer in [0, n), from one `random()` draw."""
  k = int(np.random.random() * n)
  return min(k, n - 1)


@_jit
def bfs(open_cells, source):
  """Breadth-first search over 4-neighbours from `source`.

  Args:
    open_cells: uint8[900], 1 where a cell can be entered.
    source: flat index of the start cell.

  Returns:
    (dist, count): int32[900] step counts (-1 where unreachable) and
    int8[900] numbers of distinct shortest paths, capped at 2.
  """
  dist = np.full(NUM_CELLS, UNREACHED, np.int32)
  count = np.zeros(NUM_CELLS, np.int8)
  queue = np.empty(NUM_CELLS, np.int32)
  dist[source] = 0
  count[source] = 1
  queue[0] = source
  head, tail = 0, 1
  while head < tail:
    u = queue[head]
    head += 1
    r, c = u // SIZE, u % SIZE
    for d in range(4):
      if d == 0:
        if r == 0:
          continue
        v = u - SIZE
      elif d == 1:
        if r == SIZE - 1:
          continue
        v = u + SIZE
      elif d == 2:
        if c == 0:
          continue
        v = u - 1
      else:
        if c == SIZE - 1:
          continue
        v = u + 1
      if open_cells[v] == 0:
        continue
      if dist[v] == UNREACHED:
        dist[v] = dist[u] + 1
        count[v] = count[u]
        queue[tail] = v
        tail += 1
      elif dist[v] == dist[u] + 1:
        count[v] = min(2, count[v] + count[u])
  return dist, count


@_jit
def _spanning_tree(parent):
  """Uniform spanning tree of the 15x15 lattice (Wilson's algorithm).

  Writes `parent[u]`, the next node from `u` towards the root (-1 at the root).
  Loop-erased random walks make the tree uniform over all spanning trees, so
  corridors have no preferred direction or length.
  """
  n = LATTICE * LATTICE
  in_tree = np.zeros(n, np.bool_)
  nbrs = np.empty(4, np.int32)
  parent[:] = -1
  in_tree[_randint(n)] = True
  order = np.arange(n)
  for i in range(n - 1, 0, -1):
    j = _randint(i + 1)
    order[i], order[j] = order[j], order[i]
  for start in order:
    u = start
    while not in_tree[u]:
      i, j = u // LATTICE, u % LATTICE
      m = 0
      if i > 0:
        nbrs[m] = u - LATTICE
        m += 1
      if i < LATTICE - 1:
        nbrs[m] = u + LATTICE
        m += 1
      if j > 0:
        nbrs[m] = u - 1
        m += 1
      if j < LATTICE - 1:
        nbrs[m] = u + 1
        m += 1
      parent[u] = nbrs[_randint(m)]
      u = parent[u]
    u = start
    while not in_tree[u]:
      in_tree[u] = True
      u = parent[u]


@_jit
def _growing_tree(parent, p_newest):
  """Spanning tree by the growing-tree method.

  Grows from a random cell; each step extends from the newest active cell
  with probability `p_newest` (depth-first, long winding corridors) or else
  from a uniform active cell (Prim-like, short branches).
  """
  n = LATTICE * LATTICE
  visited = np.zeros(n, np.bool_)
  active = np.empty(n, np.int32)
  nbrs = np.empty(4, np.int32)
  parent[:] = -1
  root = _randint(n)
  visited[root] = True
  active[0] = root
  size = 1
  while size > 0:
    if np.random.random() < p_newest:
      k = size - 1
    else:
      k = _randint(size)
    u = active[k]
    i, j = u // LATTICE, u % LATTICE
    m = 0
    if i > 0 and not visited[u - LATTICE]:
      nbrs[m] = u - LATTICE
      m += 1
    if i < LATTICE - 1 and not visited[u + LATTICE]:
      nbrs[m] = u + LATTICE
      m += 1
    if j > 0 and not visited[u - 1]:
      nbrs[m] = u - 1
      m += 1
    if j < LATTICE - 1 and not visited[u + 1]:
      nbrs[m] = u + 1
      m += 1
    if m == 0:
      active[k] = active[size - 1]
      size -= 1
      continue
    v = nbrs[_randint(m)]
    parent[v] = u
    visited[v] = True
    active[size] = v
    size += 1


@_jit
def carve(p_newest, loops):
  """A 30x30 maze: a spanning tree of the 15x15 lattice plus extra openings.

  Lattice cell (i, j) sits at grid (r0 + 2i, c0 + 2j), with the offsets r0, c0
  drawn from {0, 1}; 15 lattice cells fill 29 grid rows, so the 30th is a solid
  wall row on the side the offset picks.

  Args:
    p_newest: growing-tree parameter in [0, 1], or negative for a uniform
      spanning tree (Wilson).
    loops: how many closed walls between lattice neighbours to knock out,
      each one closing a loop.

  Returns:
    uint8[900] open-cell grid.
  """
  r0 = _randint(2)
  c0 = _randint(2)
  grid = np.zeros(NUM_CELLS, np.uint8)
  parent = np.empty(LATTICE * LATTICE, np.int32)
  if p_newest < 0:
    _spanning_tree(parent)
  else:
    _growing_tree(parent, p_newest)
  for u in range(LATTICE * LATTICE):
    i, j = u // LATTICE, u % LATTICE
    grid[(r0 + 2 * i) * SIZE + c0 + 2 * j] = 1
    v = parent[u]
    if v >= 0:
      vi, vj = v // LATTICE, v % LATTICE
      grid[(r0 + i + vi) * SIZE + c0 + j + vj] = 1
  # Closed walls between lattice neighbours, as grid indices of the wall.
  closed = np.empty(2 * LATTICE * (LATTICE - 1), np.int32)
  m = 0
  for i in range(LATTICE):
    for j in range(LATTICE):
      if j < LATTICE - 1:
        w = (r0 + 2 * i) * SIZE + c0 + 2 * j + 1
        if grid[w] == 0:
          closed[m] = w
          m += 1
      if i < LATTICE - 1:
        w = (r0 + 2 * i + 1) * SIZE + c0 + 2 * j
        if grid[w] == 0:
          closed[m] = w
          m += 1
  for k in range(min(loops, m)):
    pick = k + _randint(m - k)
    closed[k], closed[pick] = closed[pick], closed[k]
    grid[closed[k]] = 1
  return grid


@_jit
def pick_endpoints(grid, min_steps, tries):
  """Draws a start and a goal joined by one shortest path of >= min_steps.

  The start is a uniform open cell; the goal is uniform among the cells whose
  shortest path from it is unique and at least `min_steps` long. A start with
  no such goal is redrawn, up to `tries` times.

  Returns:
    (start, goal) flat indices, or (-1, -1) when every try failed.
  """
  cells = np.flatnonzero(grid)
  goals = np.empty(NUM_CELLS, np.int32)
  for _ in range(tries):
    start = cells[_randint(cells.size)]
    dist, count = bfs(grid, start)
    m = 0
    for v in range(NUM_CELLS):
      if dist[v] >= min_steps and count[v] == 1:
        goals[m] = v
        m += 1
    if m > 0:
      return start, goals[_randint(m)]
  return -1, -1


@_jit
def sample_maze(seed, p_newest, loops, min_steps, tries):
  """One candidate: `carve(p_newest, loops)`, then `pick_endpoints`.

  Args:
    seed: uint32 seed of the MT19937 stream.
    p_newest: see `carve`.
    loops: see `carve`.
    min_steps: least number of steps of the start-to-goal shortest path.
    tries: starts to draw before giving up on the grid.

  Returns:
    (grid, start, goal); start and goal are -1 when the grid was rejected.
  """
  np.random.seed(seed)
  grid = carve(p_newest, loops)
  start, goal = pick_endpoints(grid, min_steps, tries)
  return grid, start, goal
