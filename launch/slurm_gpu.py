#!/usr/bin/env python3
"""Train on a SLURM GPU cluster: write an sbatch script, submit it, follow
its log.

    launch/slurm_gpu.py --dry-run                   # print the script, commands
    launch/slurm_gpu.py --nodes=4 --gpus-per-node=8 --partition=gpu \\
        --setup='source .venv/bin/activate' -- --config.optimizer.lr=3e-4

The script runs `srun python3 -m attractor_jax.train ...` from --code-dir (a
checkout with the package installed, on a filesystem every node mounts; the
default is this checkout). `jax.distributed.initialize()` detects SLURM from
the variables srun sets (SLURM_JOB_ID, SLURM_NTASKS, SLURM_PROCID,
SLURM_LOCALID, SLURM_STEP_NODELIST), so the train command needs no multi-host
flags; --explicit-flags passes them anyway: the coordinator is the first
host of `scontrol show hostnames $SLURM_JOB_NODELIST`.

--processes-per=node (default) starts one process per node that drives all
its GPUs (JAX_LOCAL_DEVICE_IDS lists them: JAX's SLURM detection would give
each process only GPU $SLURM_LOCALID); --processes-per=gpu starts one per GPU,
the layout JAX's detection assumes. After `sbatch`, the launcher runs
`tail -F` on the job's log (Ctrl-C stops following; the job keeps running).
Bad input exits with status 2, a failed command with 1 (docs/launching.md).
"""

from __future__ import annotations

import argparse
import pathlib
import re
import shlex
import sys
from typing import Optional, Sequence

_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
  sys.path.insert(0, str(_ROOT))
from launch import common  # pylint: disable=g-import-not-at-top

JOB_ID_VARIABLE = "JOBID"
_TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")
_JOB_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")


def build_parser() -> argparse.ArgumentParser:
  """The launcher's flags (train flags come after `--`, not here)."""
  parser = argparse.ArgumentParser(
      prog="launch/slurm_gpu.py", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog="Train flags go after `--`. See docs/launching.md.")
  common.add_common_flags(parser)
  parser.add_argument("--nodes", type=int, default=2,
                      help="nodes (default: %(default)s)")
  parser.add_argument("--gpus-per-node", type=int, default=8,
                      help="GPUs per node (default: %(default)s)")
  parser.add_argument("--processes-per", choices=("node", "gpu"),
                      default="node",
                      help="one process per node or per GPU "
                      "(default: %(default)s)")
  parser.add_argument("--partition", default=None, help="sbatch --partition")
  parser.add_argument("--account", default=None, help="sbatch --account")
  parser.add_argument("--time", default="24:00:00",
                      help="time limit (default: %(default)s)")
  parser.add_argument("--cpus-per-task", type=int, default=None,
                      help="sbatch --cpus-per-task")
  parser.add_argument("--job-name", default="attractor",
                      help="job name, also the log's (default: %(default)s)")
  parser.add_argument("--code-dir", default=str(common.REPO_ROOT),
                      help="checkout the job runs in, on a shared filesystem "
                      "(default: this one)")
  parser.add_argument("--workdir", default=None,
                      help="train --workdir, shared by all nodes (default: "
                      "runs/VARIANT under --code-dir)")
  parser.add_argument("--setup", action="append", default=[],
                      help="a shell line run before srun, e.g. "
                      "'module load cuda' or 'source .venv/bin/activate' "
                      "(repeatable)")
  parser.add_argument("--explicit-flags", action="store_true",
                      help="pass --coordinator_address, --num_processes, "
                      "--process_id instead of relying on JAX's detection")
  parser.add_argument("--port", type=int, default=12345,
                      help="coordinator port with --explicit-flags "
                      "(default: %(default)s)")
  parser.add_argument("--script", default="attractor-slurm.sbatch",
                      help="where to write the sbatch script "
                      "(default: %(default)s)")
  parser.add_argument("--no-follow", action="store_true",
                      help="submit and return, without tail -F of the log")
  return parser


def check_args(args: argparse.Namespace) -> None:
  """Raises common.UsageError for input sbatch or the run would reject."""
  for flag, value in (("--nodes", args.nodes),
                      ("--gpus-per-node", args.gpus_per_node)):
    if value < 1:
      raise common.UsageError(f"{flag}={value}: must be at least 1")
  if args.cpus_per_task is not None and args.cpus_per_task < 1:
    raise common.UsageError(
        f"--cpus-per-task={args.cpus_per_task}: must be at least 1")
  if not 1 <= args.port <= 65535:
    raise common.UsageError(f"--port={args.port}: must lie in 1..65535")
  if not _TIME.match(args.time):
    raise common.UsageError(
        f"--time={args.time!r}: write MINUTES, HH:MM:SS or DAYS-HH:MM:SS")
  if not _JOB_NAME.match(args.job_name):
    raise common.UsageError(
        f"--job-name={args.job_name!r}: use letters, digits and ._+-")


def default_workdir(config: str) -> str:
  """runs/VARIANT for --config=FILE:VARIANT (relative to --code-dir)."""
  variant = config.split(":", 1)[1] if ":" in config else "default"
  return f"runs/{variant}"


def log_path(args, job_id: str) -> str:
  """The job's log: JOB_NAME-JOB_ID.out in --code-dir (sbatch's %x-%j)."""
  return str(pathlib.Path(args.code_dir) / f"{args.job_name}-{job_id}.out")


def sbatch_script(args, extra: Sequence[str]) -> str:
  """The full text of the sbatch script."""
  tasks = 1 if args.processes_per == "node" else args.gpus_per_node
  lines = [
      "#!/bin/bash",
      "# Written by launch/slurm_gpu.py (docs/launching.md).",
      f"#SBATCH --job-name={args.job_name}",
      f"#SBATCH --nodes={args.nodes}",
      f"#SBATCH --ntasks-per-node={tasks}",
      f"#SBATCH --gpus-per-node={args.gpus_per_node}",
      f"#SBATCH --time={args.time}",
      f"#SBATCH --output={pathlib.Path(args.code_dir) / '%x-%j.out'}",
      "# SIGTERM 2 minutes before the time limit: train saves a checkpoint",
      "# and exits 75; submitting again resumes (docs/reliability.md).",
      "#SBATCH --signal=TERM@120",
  ]
  if args.partition:
    lines.append(f"#SBATCH --partition={args.partition}")
  if args.account:
    lines.append(f"#SBATCH --account={args.account}")
  if args.cpus_per_task:
    lines.append(f"#SBATCH --cpus-per-task={args.cpus_per_task}")
  lines += ["", "set -eo pipefail", f"cd {shlex.quote(args.code_dir)}"]
  lines += args.setup
  if args.processes_per == "node":
    devices = ",".join(str(i) for i in range(args.gpus_per_node))
    lines += [
        "# One process per node drives all its GPUs (JAX's SLURM detection",
        "# would give each process only GPU $SLURM_LOCALID).",
        f"export JAX_LOCAL_DEVICE_IDS={devices}",
    ]
  train = common.train_command(args.config, args.workdir, extra, args.python)
  if args.explicit_flags:
    lines += [
        "# Process 0 runs on the first node; every task gets its own",
        "# --process_id from srun.",
        "COORDINATOR=\"$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | "
        f"head -n 1):{args.port}\"",
        "export COORDINATOR",
        "srun bash -c " + shlex.quote(
            "exec " + " ".join(common.shell_word(word) for word in train) +
            ' --coordinator_address="$COORDINATOR"'
            ' --num_processes="$SLURM_NTASKS" --process_id="$SLURM_PROCID"'),
    ]
  else:
    lines += [
        "# jax.distributed.initialize() detects SLURM: no multi-host flags.",
        "srun " + shlex.join(train),
    ]
  return "\n".join(lines) + "\n"


def run(argv: Sequence[str]) -> int:
  """The launcher on `argv` (without the program name); an exit status."""
  own, extra = common.split_passthrough(argv)
  args = build_parser().parse_args(own)
  check_args(args)
  if args.workdir is None:
    args.workdir = default_workdir(args.config)
  runner = common.Runner(args.dry_run)
  runner.write(args.script, sbatch_script(args, extra))
  submit = ["sbatch", "--parsable", args.script]
  output = runner.capture(submit, JOB_ID_VARIABLE)
  if args.dry_run:
    job_id = "${" + JOB_ID_VARIABLE + "%%;*}"
  else:
    job_id = output.split(";")[0].strip()   # JOBID[;CLUSTER]
    if not job_id:
      raise common.CommandFailed(submit, "sbatch printed no job id")
    print(f"Submitted job {job_id}; log: {log_path(args, job_id)}",
          file=sys.stderr)
  if args.no_follow:
    return common.EXIT_OK
  if args.dry_run:
    before, after = log_path(args, "@").split("@")
    runner.echo(f"tail -F {shlex.quote(before)}\"{job_id}\""
                f"{shlex.quote(after)}")
    return common.EXIT_OK
  try:
    runner.run(["tail", "-F", log_path(args, job_id)])
  except KeyboardInterrupt:
    print(f"\nStopped following; job {job_id} keeps running "
          f"(scancel {job_id} stops it).", file=sys.stderr)
  return common.EXIT_OK


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Entry point: `run` with usage errors as exit 2, failures as 1."""
  return common.main(run, argv)


if __name__ == "__main__":
  sys.exit(main())
