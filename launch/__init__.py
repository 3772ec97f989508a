"""Launchers that move a training run to a TPU VM or a SLURM GPU cluster.

    python launch/tpu_vm.py --dry-run      # gcloud create, setup, run, delete
    python launch/slurm_gpu.py --dry-run   # sbatch script, sbatch, tail

docs/launching.md explains both; standard library only, nothing imported here.
"""
