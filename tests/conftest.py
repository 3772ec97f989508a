"""Shared test set-up.

This folder is on sys.path (pytest puts a root conftest's folder there), so
test modules in any subfolder import the shared helpers (`tiny_configs`,
`command_modules`) by name.

Tiers: the README's test command runs everything not marked `heavy` or
`slow` (a few minutes on 2 cores); `.ci/run` then runs the `heavy` tier
(multi-process runs, whole-split evaluations, longer trainings, the
notebooks). `slow` tests run only when asked for (`-m slow`).
"""

import pytest

# The README's first tier, and its promise, shown before the first test runs.
FIRST_TIER = "not slow and not heavy"
FIRST_TIER_MINUTES = 5

_announced = False


def _announce(config, count: int) -> None:
  global _announced
  if _announced:
    return
  _announced = True
  markers = config.getoption("markexpr") or "all"
  line = f"{count} tests selected (-m {markers!r})"
  if markers == FIRST_TIER:
    line += (f"; expect at most {FIRST_TIER_MINUTES} minutes on 2 idle "
             "cores. The heavy tier: -m \"heavy and not slow\"")
  reporter = config.pluginmanager.get_plugin("terminalreporter")
  if reporter is not None:
    reporter.write_line(line)


def pytest_collection_finish(session):
  """Without xdist: the count, once collection is done."""
  if not hasattr(session.config, "workerinput"):
    _announce(session.config, len(session.items))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
  """With xdist: the count the first worker collected."""
  _announce(node.config, len(ids))
