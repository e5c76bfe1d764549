"""Stage 4, launching and distribution: the local and SLURM launchers, one job's pipeline, the
distributed environment (DDP ranks, preemption) and the dry-run cost plan."""
