"""The benchmark pipeline, one subpackage per stage, and its command-line entry points.

    data/        images, code shards, the latent space (tokenizer + shards)
    training/    the matched-budget trainer; FLOP and utilisation accounting
    evaluation/  sampling checkpoints into images; feature extractors; torch-fidelity metrics
    launching/   local and SLURM launchers, one job's pipeline, DDP and preemption, dry-run plan
    storage/     atomic writes and locks, the cache, results rows, run manifests
    config.py    the typed config (YAML files in configs/)

    logs.py      stage lines; tensorboard_log.py: optional TensorBoard event files

CLIs (``python -m benchmarks.<name>``): ``run`` (train and evaluate), ``sample`` (a checkpoint's
samples as an ADM ``.npz`` or PNGs), ``score`` (metrics of any samples against a run's reference),
``encode`` (images to code shards), ``tokenizer`` (inspect a pretrained tokenizer), ``gpu_check``
(the one-GPU readiness check).
"""
