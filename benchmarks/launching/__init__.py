"""The top floor, launching: the local, submitit-local and SLURM launchers, one job's pipeline
(train, then evaluate), the dry-run cost plan, the preflight checks and TensorBoard event files."""
