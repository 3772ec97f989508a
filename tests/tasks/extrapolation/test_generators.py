"""The extrapolation generators: deterministic, and right."""

import collections

import numpy as np
import pytest

from attractor_jax.tasks.extrapolation import generators


def test_prefix_sums_are_running_parities_and_reproducible():
  inputs, targets = generators.prefix_sums(50, 40, seed=3)
  assert inputs.shape == (50, 40, 1) and targets.shape == (50, 40)
  assert set(np.unique(inputs)) == {-1.0, 1.0}
  bits = (inputs[..., 0] > 0).astype(int)
  np.testing.assert_array_equal(targets, np.cumsum(bits, axis=1) % 2)
  again = generators.prefix_sums(50, 40, seed=3)
  np.testing.assert_array_equal(inputs, again.inputs)
  assert not np.array_equal(inputs, generators.prefix_sums(50, 40, 4).inputs)


def _open_neighbours(grid, r, c):
  size = grid.shape[0]
  for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
    rr, cc = r + dr, c + dc
    if 0 <= rr < size and 0 <= cc < size and grid[rr, cc]:
      yield rr, cc


def _shortest_paths(grid, source, target):
  """(distance, number of shortest paths) by BFS, counts capped at 2."""
  dist, count = {source: 0}, {source: 1}
  queue = collections.deque([source])
  while queue:
    u = queue.popleft()
    for v in _open_neighbours(grid, *u):
      if v not in dist:
        dist[v], count[v] = dist[u] + 1, count[u]
        queue.append(v)
      elif dist[v] == dist[u] + 1:
        count[v] = min(count[v] + count[u], 2)
  return dist.get(target), count.get(target, 0)


@pytest.mark.parametrize("cells", [2, 5, 9])
def test_every_maze_path_is_the_unique_shortest_path_from_s_to_g(cells):
  inputs, targets = generators.mazes(20, cells, seed=1)
  size = 2 * cells + 1
  assert inputs.shape == (20, size, size, 3)
  for grid, start, goal, path in zip(inputs[..., 0], inputs[..., 1],
                                     inputs[..., 2], targets):
    assert start.sum() == 1 and goal.sum() == 1
    source = tuple(np.argwhere(start)[0])
    target = tuple(np.argwhere(goal)[0])
    assert source != target and path[source] and path[target]
    assert not np.any(path & (grid == 0))          # only open pixels
    # A perfect maze: every open pixel reached, open = 2 cells^2 - 1 pixels.
    assert grid.sum() == 2 * cells * cells - 1
    distance, count = _shortest_paths(grid, source, target)
    assert count == 1 and path.sum() == distance + 1
    # The marked pixels form a chain: ends have one marked neighbour.
    ends = sum(sum(1 for v in _open_neighbours(path, *u)) == 1
               for u in map(tuple, np.argwhere(path)))
    assert ends == 2


def test_mazes_and_test_sets_are_reproducible_and_prefix_stable():
  a = generators.test_set("mazes", 4, 10)
  b = generators.test_set("mazes", 4, 10)
  np.testing.assert_array_equal(a.inputs, b.inputs)
  bigger = generators.test_set("mazes", 4, 15)
  np.testing.assert_array_equal(a.targets, bigger.targets[:10])
  other = generators.test_set("mazes", 5, 10)
  assert other.inputs.shape[1] == 11
  bits = generators.test_set("prefix_sums", 16, 8)
  np.testing.assert_array_equal(
      bits.inputs, generators.test_set("prefix_sums", 16, 20).inputs[:8])


def test_train_stream_resumes_where_it_stopped():
  stream = generators.TrainStream("prefix_sums", 12, 4, seed=0)
  batches = [next(stream) for _ in range(3)]
  assert not np.array_equal(batches[0]["inputs"], batches[1]["inputs"])
  resumed = generators.TrainStream("prefix_sums", 12, 4, seed=0)
  resumed.set_state(stream.get_state())
  stream.set_state({"position": 1})
  np.testing.assert_array_equal(next(stream)["targets"],
                                batches[1]["targets"])
  assert resumed.get_state() == {"position": 3}
  other_seed = next(generators.TrainStream("prefix_sums", 12, 4, seed=1))
  assert not np.array_equal(other_seed["inputs"], batches[0]["inputs"])


def test_unknown_problems_and_tiny_mazes_are_refused():
  with pytest.raises(ValueError, match="Unknown problem"):
    generators.generate("sudoku", 1, 4, 0)
  with pytest.raises(ValueError, match="2x2"):
    generators.mazes(1, 1, 0)
