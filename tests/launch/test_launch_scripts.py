"""launch/tpu_vm.py and launch/slurm_gpu.py: dry runs, real runs, bad input.

Every launcher runs as a subprocess, as a user runs it, with fake `gcloud`,
`git`, `sbatch` and `tail` first on PATH: each records its arguments in a
file. A dry run must print the commands and call none of them; a real run
must call exactly the commands the dry run printed. The remote shell
scripts (the TPU workers' start and stream scripts, the sbatch script) are
run here with bash, against fake `python3`, `srun` and `scontrol`, to check
their quoting and exit statuses.
"""

import os
import pathlib
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))
from launch import slurm_gpu  # pylint: disable=g-import-not-at-top
from launch import tpu_vm  # pylint: disable=g-import-not-at-top

TPU = str(ROOT / "launch" / "tpu_vm.py")
SLURM = str(ROOT / "launch" / "slurm_gpu.py")
SEP = "\x1f"

# Records "NAME<SEP>ARG<SEP>ARG...<SEP>" as one line; then acts per name.
FAKE = """#!/bin/sh
printf '%s\\037' "$(basename "$0")" "$@" >> "$LAUNCH_FAKE_LOG"
printf '\\n' >> "$LAUNCH_FAKE_LOG"
if [ -n "$LAUNCH_FAKE_FAIL" ]; then
  case "$*" in *"$LAUNCH_FAKE_FAIL"*) exit 3;; esac
fi
case "$(basename "$0")" in
  sbatch) echo '4242;cluster-a';;
  scontrol) printf 'node-a\\nnode-b\\n';;
  srun) exec "$@";;
  python3) echo "JAX_LOCAL_DEVICE_IDS=$JAX_LOCAL_DEVICE_IDS"; echo step 1;
           exit "${LAUNCH_FAKE_STATUS:-0}";;
esac
"""


LAUNCHER_FAKES = ("gcloud", "git", "sbatch", "tail")


class Fakes:
  """Fake programs in tmp_path, and the calls they recorded."""

  def __init__(self, tmp_path):
    self.root = tmp_path / "fakes"
    self.root.mkdir()
    self.log = tmp_path / "calls.log"

  def env(self, names=LAUNCHER_FAKES, **extra):
    """os.environ with fakes of `names` first on PATH."""
    bin_dir = self.root / "-".join(names)
    if not bin_dir.exists():
      bin_dir.mkdir()
      for name in names:
        (bin_dir / name).write_text(FAKE)
        (bin_dir / name).chmod(0o755)
    return dict(os.environ, LAUNCH_FAKE_LOG=str(self.log),
                PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", **extra)

  def calls(self):
    """Each call as [program, arg, ...], in order."""
    if not self.log.exists():
      return []
    return [line.split(SEP)[:-1] for line in self.log.read_text().splitlines()]


@pytest.fixture(name="fakes")
def fakes_fixture(tmp_path):
  return Fakes(tmp_path)


def launch(script, *args, env, cwd=None):
  """Runs a launcher as a user does."""
  return subprocess.run([sys.executable, script, *args], env=env, cwd=cwd,
                        capture_output=True, text=True, timeout=60)


def commands(stdout):
  """The dry run's lines, each split as the shell would."""
  return [shlex.split(line) for line in stdout.splitlines()]


def remote_script(command):
  """The script of a `gcloud ... ssh ... --command SCRIPT`."""
  return command[command.index("--command") + 1]


# ------------------------------------------------------------ TPU dry runs


def test_tpu_dry_run_with_no_argument_prints_all_steps_and_runs_nothing(
    fakes):
  env, calls = fakes.env(), fakes.calls
  done = launch(TPU, "--dry-run", env=env)
  assert done.returncode == 0, done.stderr
  lines = commands(done.stdout)
  verbs = [line[4] if line[0] == "gcloud" else line[0] for line in lines]
  assert verbs == ["create", "git", "scp", "ssh", "ssh", "ssh", "delete"]
  create = lines[0]
  assert "--accelerator-type=v4-8" in create
  assert "--zone=us-central2-b" in create
  assert "--version=tpu-ubuntu2204-base" in create
  assert "--project=YOUR_PROJECT" in create
  assert all("--worker=all" in line for line in lines[2:5])
  setup = remote_script(lines[3])
  assert '"jax[tpu]"' in setup and 'pip install -e ".[gcs]"' in setup
  start = remote_script(lines[4])
  assert ("python3 -m attractor_jax.train "
          "--config=attractor_jax/configs/lm.py:attractor-140m "
          "--workdir=gs://YOUR_BUCKET/attractor-runs/attractor-140m") in start
  assert "--coordinator_address" not in start     # JAX detects the pod
  assert "--worker=0" in lines[5] and "tail" in remote_script(lines[5])
  assert lines[-1][-1] == "--quiet"
  assert calls() == []


@pytest.mark.parametrize("step,verbs", [
    ("create", ["create"]), ("setup", ["git", "scp", "ssh"]),
    ("run", ["ssh", "ssh"]), ("logs", ["ssh"]), ("delete", ["delete"])])
def test_tpu_dry_run_of_each_step(fakes, step, verbs):
  env, calls = fakes.env(), fakes.calls
  done = launch(TPU, step, "--dry-run", env=env)
  assert done.returncode == 0, done.stderr
  lines = commands(done.stdout)
  assert [line[4] if line[0] == "gcloud" else line[0]
          for line in lines] == verbs
  assert calls() == []


@pytest.mark.parametrize("accelerator,version,workers", [
    ("v4-32", "tpu-ubuntu2204-base", 4),
    ("v5litepod-64", "v2-alpha-tpuv5-lite", 16),
    ("v5p-16", "v2-alpha-tpuv5", 2)])
def test_tpu_pod_slice_runs_on_all_workers_with_a_gcs_workdir(
    fakes, accelerator, version, workers):
  env = fakes.env()
  done = launch(TPU, "--dry-run", f"--accelerator-type={accelerator}",
                "--workdir=gs://bucket/run", "--log-worker=all", env=env)
  assert done.returncode == 0, done.stderr
  lines = commands(done.stdout)
  assert f"--version={version}" in lines[0]
  start, stream = lines[4], lines[5]
  assert "--worker=all" in start and "--worker=all" in stream
  assert "--workdir=gs://bucket/run" in remote_script(start)
  assert tpu_vm.parse_accelerator(accelerator).hosts == workers


def test_tpu_train_flags_after_double_dash_pass_through(fakes):
  env = fakes.env()
  done = launch(TPU, "run", "--dry-run", "--git-url=https://x/y.git", "--",
                "--config.optimizer.lr=3e-4", "--config.sample.prompt=A B",
                env=env)
  assert done.returncode == 0, done.stderr
  script = remote_script(commands(done.stdout)[0])
  assert " --config.optimizer.lr=3e-4 " in script
  assert ' "--config.sample.prompt=A B";' in script   # run by the test below


def test_tpu_setup_from_a_git_url_clones_on_every_worker(fakes):
  env = fakes.env()
  done = launch(TPU, "setup", "--dry-run", "--git-url=https://x/y.git",
                "--git-ref=v1.0", env=env)
  (line,) = commands(done.stdout)
  script = remote_script(line)
  assert "--worker=all" in line
  assert "git clone --quiet https://x/y.git attractor-jax" in script
  assert "fetch --quiet origin v1.0" in script


# ----------------------------------------------------------- TPU real runs


def test_tpu_all_runs_the_printed_commands_in_order(fakes, tmp_path):
  env, calls = fakes.env(), fakes.calls
  args = ["--project=proj", "--workdir=gs://bucket/run", "--", "--x=1"]
  printed = commands(launch(TPU, "--dry-run", *args, env=env).stdout)
  done = launch(TPU, *args, env=env)
  assert done.returncode == 0, done.stderr
  assert calls() == printed
  assert "+ gcloud compute tpus tpu-vm delete" in done.stderr


def test_tpu_all_deletes_the_vm_after_a_failed_run(fakes):
  env, calls = fakes.env(), fakes.calls
  env["LAUNCH_FAKE_FAIL"] = "attractor_jax.train"     # the start command
  done = launch(TPU, "--project=proj", "--workdir=gs://bucket/run", env=env)
  assert done.returncode == 1
  assert "command failed with exit status 3: gcloud" in done.stderr
  assert "attractor_jax.train" in done.stderr
  verbs = [call[4] for call in calls() if call[0] == "gcloud"]
  assert verbs == ["create", "scp", "ssh", "ssh", "delete"]


def test_tpu_all_stops_at_a_failed_create_and_deletes_nothing(fakes):
  env, calls = fakes.env(), fakes.calls
  env["LAUNCH_FAKE_FAIL"] = "create"
  done = launch(TPU, "--project=proj", "--workdir=gs://bucket/run", env=env)
  assert done.returncode == 1
  assert "error: command failed" in done.stderr
  assert [call[4] for call in calls()] == ["create"]


def test_tpu_real_run_refuses_the_placeholders(fakes):
  env, calls = fakes.env(), fakes.calls
  done = launch(TPU, "create", env=env)
  assert done.returncode == 2 and "--project" in done.stderr
  done = launch(TPU, "run", "--project=proj", env=env)
  assert done.returncode == 2 and "YOUR_BUCKET" in done.stderr
  assert calls() == []


def test_tpu_start_and_stream_scripts_run_and_return_the_train_status(
    fakes, tmp_path):
  env = fakes.env(("python3",), LAUNCH_FAKE_STATUS="7")     # the real tail
  args = tpu_vm.build_parser().parse_args(["--workdir=gs://b/r"])
  home = tmp_path / "home"
  (home / args.remote_dir).mkdir(parents=True)
  start = tpu_vm.start_script(args, ["--config.sample.prompt=A B"])
  subprocess.run(["bash", "-c", start], cwd=home, env=env, check=True,
                 timeout=30)
  stream = subprocess.run(["bash", "-c", tpu_vm.stream_script(args)],
                          cwd=home, env=env, capture_output=True, text=True,
                          timeout=30)
  assert "step 1" in stream.stdout
  assert stream.returncode == 7
  (python_call,) = fakes.calls()
  assert python_call[-2:] == ["--workdir=gs://b/r",
                              "--config.sample.prompt=A B"]


# --------------------------------------------------------------- SLURM


def sbatch_text(stdout):
  """The script inside the dry run's heredoc."""
  lines = stdout.splitlines()
  start, end = lines.index(
      "cat > attractor-slurm.sbatch <<'LAUNCH_EOF'"), lines.index("LAUNCH_EOF")
  return "\n".join(lines[start + 1:end]) + "\n", lines[end + 1:]


def test_slurm_dry_run_with_no_argument_prints_the_script_and_commands(
    fakes, tmp_path):
  env, calls = fakes.env(), fakes.calls
  done = launch(SLURM, "--dry-run", env=env, cwd=tmp_path)
  assert done.returncode == 0, done.stderr
  script, rest = sbatch_text(done.stdout)
  assert "#SBATCH --nodes=2" in script
  assert "#SBATCH --ntasks-per-node=1" in script
  assert "#SBATCH --gpus-per-node=8" in script
  assert "export JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7" in script
  assert ("srun python3 -m attractor_jax.train "
          "--config=attractor_jax/configs/lm.py:attractor-140m") in script
  assert rest[0] == "JOBID=$(sbatch --parsable attractor-slurm.sbatch)"
  assert rest[1].startswith("tail -F ") and "${JOBID%%;*}" in rest[1]
  assert calls() == [] and not (tmp_path / "attractor-slurm.sbatch").exists()
  subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_slurm_one_process_per_gpu(fakes, tmp_path):
  env = fakes.env()
  done = launch(SLURM, "--dry-run", "--nodes=3", "--processes-per=gpu",
                "--gpus-per-node=4", "--partition=gpu", env=env, cwd=tmp_path)
  script, _ = sbatch_text(done.stdout)
  assert "#SBATCH --nodes=3" in script
  assert "#SBATCH --ntasks-per-node=4" in script
  assert "#SBATCH --partition=gpu" in script
  assert "JAX_LOCAL_DEVICE_IDS" not in script


def test_slurm_explicit_flags_script_runs_with_the_first_node_as_coordinator(
    fakes, tmp_path):
  done = launch(SLURM, "--dry-run", "--explicit-flags", "--port=2222",
                f"--code-dir={tmp_path}", "--", "--config.sample.prompt=A B",
                env=fakes.env(), cwd=tmp_path)
  script, _ = sbatch_text(done.stdout)
  assert 'scontrol show hostnames "$SLURM_JOB_NODELIST"' in script
  env = fakes.env(("srun", "scontrol", "python3"),
                  SLURM_JOB_NODELIST="node-[a-b]", SLURM_NTASKS="2",
                  SLURM_PROCID="1")
  run = subprocess.run(["bash", "-c", script], env=env, capture_output=True,
                       text=True, timeout=30)
  assert run.returncode == 0, run.stderr
  assert "JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7" in run.stdout
  python_call = [c for c in fakes.calls() if c[0] == "python3"][0]
  assert python_call[-4:] == [
      "--config.sample.prompt=A B", "--coordinator_address=node-a:2222",
      "--num_processes=2", "--process_id=1"]


def test_slurm_real_run_writes_submits_and_follows_the_log(fakes, tmp_path):
  env, calls = fakes.env(), fakes.calls
  done = launch(SLURM, "--nodes=4", f"--code-dir={tmp_path}", "--",
                "--config.optimizer.lr=3e-4", env=env, cwd=tmp_path)
  assert done.returncode == 0, done.stderr
  script = (tmp_path / "attractor-slurm.sbatch").read_text()
  assert "#SBATCH --nodes=4" in script
  assert "--config.optimizer.lr=3e-4" in script
  assert calls() == [["sbatch", "--parsable", "attractor-slurm.sbatch"],
                     ["tail", "-F", str(tmp_path / "attractor-4242.out")]]


def test_slurm_failed_sbatch_names_the_command(fakes, tmp_path):
  env = fakes.env()
  env["LAUNCH_FAKE_FAIL"] = "--parsable"
  done = launch(SLURM, env=env, cwd=tmp_path)
  assert done.returncode == 1
  assert done.stderr.strip().splitlines()[-1] == (
      "error: command failed with exit status 3: sbatch --parsable "
      "attractor-slurm.sbatch")


def test_slurm_unwritable_script_path_exits_2(fakes, tmp_path):
  done = launch(SLURM, f"--script={tmp_path}/missing/x.sbatch",
                env=fakes.env(), cwd=tmp_path)
  assert done.returncode == 2
  assert done.stderr.startswith("error: cannot write ")
  assert fakes.calls() == []


def test_slurm_script_is_the_same_in_process():
  args = slurm_gpu.build_parser().parse_args(["--workdir=w"])
  assert "srun python3 -m attractor_jax.train" in slurm_gpu.sbatch_script(
      args, [])


# ----------------------------------------------------------- bad input


@pytest.mark.parametrize("script,args,message", [
    (TPU, ["--accelerator-type=v9-8"], "unknown accelerator type"),
    (TPU, ["--accelerator-type=v4"], "unknown accelerator type"),
    (TPU, ["--accelerator-type=v4-12"], "multiple of 8"),
    (TPU, ["--accelerator-type=v4-32", "--workdir=/tmp/run", "run"],
     "gs://BUCKET/PATH"),
    (TPU, ["--workdir=runs/x", "all"], "deletes the TPU VM"),
    (TPU, ["--name=My_TPU"], "--name"),
    (TPU, ["--log-worker=4"], "--log-worker"),
    (TPU, ["--detach"], "--detach"),
    (TPU, ["launch"], "invalid choice"),
    (SLURM, ["--nodes=0"], "--nodes=0"),
    (SLURM, ["--gpus-per-node=0"], "--gpus-per-node=0"),
    (SLURM, ["--time=forever"], "--time"),
    (SLURM, ["--nodes=two"], "invalid int value"),
    (SLURM, ["--unknown-flag"], "unrecognized arguments"),
])
def test_bad_input_exits_2_with_a_clear_error(fakes, tmp_path, script, args,
                                              message):
  env, calls = fakes.env(), fakes.calls
  done = launch(script, "--dry-run", *args, env=env, cwd=tmp_path)
  assert done.returncode == 2
  assert "error: " in done.stderr and message in done.stderr
  assert done.stdout == "" and calls() == []
