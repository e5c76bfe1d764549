"""The benchmark pipeline, one subpackage per stage, and its command-line entry points.

    data/        images, code shards, the latent space (tokenizer + shards)
    training/    the matched-budget trainer; FLOP and utilisation accounting
    evaluation/  sampling checkpoints into images; feature extractors; torch-fidelity metrics
    launching/   local and SLURM launchers, one job's pipeline, DDP and preemption, dry-run plan
    storage/     atomic writes and locks, the cache, results rows, run manifests
    config.py    the typed config (YAML files in configs/)

CLIs (``python -m benchmarks.<name>``): ``run`` (train and evaluate), ``encode`` (images to code
shards), ``tokenizer`` (inspect a pretrained tokenizer).
"""
