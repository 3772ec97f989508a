"""Starting JAX's multi-controller runtime: one process per host (or GPU).

The commands (train, evaluate, generate) take

    --coordinator_address=HOST:PORT --num_processes=N --process_id=I

and pass them to `jax.distributed.initialize` before any other JAX call. With
none of them given, a cluster that JAX recognises (a multi-host Cloud TPU
VM, a SLURM or Open MPI job, Kubernetes) is detected and initialised by JAX
itself; anywhere else the command runs as a single process. Afterwards
`jax.devices()` lists every process's devices, the mesh spans them all, and
each process loads only its rows of every batch (docs/launching.md).

Two processes on one machine, with CPU collectives (gloo), are a complete
multi-host run:

    python -m attractor_jax.train --workdir=W --coordinator_address=\\
        127.0.0.1:12345 --num_processes=2 --process_id=0 &
    python -m attractor_jax.train --workdir=W --coordinator_address=\\
        127.0.0.1:12345 --num_processes=2 --process_id=1
"""

from __future__ import annotations

from typing import Optional

import jax
from absl import flags
from absl import logging

from attractor_jax import errors

_FLAG_NAMES = ("coordinator_address", "num_processes", "process_id")


def define_flags() -> None:
  """Defines the three flags (once; the commands call this at import, so a
  library user's own absl program gets no extra flags)."""
  if _FLAG_NAMES[0] in flags.FLAGS:
    return
  flags.DEFINE_string(
      "coordinator_address", None,
      "HOST:PORT of process 0, for a run over several processes (hosts). "
      "Leave unset on a TPU VM or a SLURM/MPI/Kubernetes job (detected), or "
      "on a single machine (one process).")
  flags.DEFINE_integer(
      "num_processes", None, "How many processes take part (with "
      "--coordinator_address and --process_id).")
  flags.DEFINE_integer(
      "process_id", None, "This process's index in [0, --num_processes).")


def detected_cluster() -> Optional[str]:
  """The name of the cluster environment JAX would initialise, or None.

  Uses JAX's own detection (the same one `jax.distributed.initialize()`
  without arguments runs); None if that is unavailable in this JAX.
  """
  try:
    from jax._src import clusters  # pylint: disable=g-import-not-at-top
    kinds = clusters.ClusterEnv._cluster_types  # pylint: disable=protected-access
  except (ImportError, AttributeError):
    return None
  for kind in kinds:
    try:
      if not kind.opt_in_only_method and kind.is_env_present():
        return kind.__name__
    except Exception:  # pylint: disable=broad-except
      continue          # a probe that fails means: not this environment
  return None


def initialize(coordinator_address: Optional[str] = None,
               num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> int:
  """Starts the multi-process runtime if asked or detected; returns the
  number of processes.

  Args:
    coordinator_address: "host:port" of process 0.
    num_processes: how many processes; 1 (alone) means a single process.
    process_id: this process's index.

  Raises:
    errors.ConfigError: some but not all three given, or values out of range.
  """
  given = {"coordinator_address": coordinator_address,
           "num_processes": num_processes, "process_id": process_id}
  if num_processes == 1 and coordinator_address is None and process_id in (
      None, 0):
    return 1
  if all(v is None for v in given.values()):
    cluster = detected_cluster()
    if cluster is None:
      return 1
    logging.info("Detected %s: initialising jax.distributed.", cluster)
    jax.distributed.initialize()
    return jax.process_count()
  missing = [f"--{name}" for name, value in given.items() if value is None]
  if missing:
    raise errors.ConfigError(
        f"{', '.join(missing)} not given: a run over several processes needs "
        "--coordinator_address, --num_processes and --process_id together.\n"
        "Give all three, or none (a TPU VM or SLURM job is detected; a single "
        "machine runs as one process).")
  if num_processes < 1 or not 0 <= process_id < num_processes:
    raise errors.ConfigError(
        f"--process_id={process_id} must lie in [0, --num_processes="
        f"{num_processes}).\nNumber the processes 0, 1, ..., N-1.")
  if ":" not in coordinator_address:
    raise errors.ConfigError(
        f"--coordinator_address={coordinator_address!r} has no port.\nWrite "
        "it as HOST:PORT, the address of process 0 (e.g. 10.0.0.2:1234).")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes,
                             process_id=process_id)
  return jax.process_count()


def initialize_from_flags() -> int:
  """`initialize` with the flags of `define_flags` (unset if never defined);
  returns the process count."""
  values = [flags.FLAGS[name].value if name in flags.FLAGS else None
            for name in _FLAG_NAMES]
  return initialize(*values)


def is_main_process() -> bool:
  """True on process 0, the one that writes metrics, samples and plots."""
  return jax.process_index() == 0
