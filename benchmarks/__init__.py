"""The benchmark pipeline: library floors, lowest first, under the command-line entry points.

    core/        the typed config (YAML files in configs/), stage logs, the device, the
                 distributed environment (DDP ranks, preemption), the registry base
    storage/     atomic writes and locks, the cache, results rows, manifests, the run folder's
                 layout (run_dir.py)
    data/        data sets and tokenizers (registries), images, code shards, the latent space
    training/    the matched-budget trainer; FLOP and utilisation accounting
    evaluation/  sampling checkpoints into images; feature extractors and metrics (registries);
                 the evaluator
    launching/   local and SLURM launchers, one job's pipeline, the dry-run plan, preflight
                 checks, TensorBoard event files

Each floor imports only the floors below it (a test checks). The command-line modules here
(``python -m benchmarks.<name>``) are the roof, the only modules that may import ``reports``:
``run`` (train and evaluate), ``sample`` (a checkpoint's samples as an ADM ``.npz`` or PNGs),
``score`` (metrics of any samples against a run's reference), ``export_weights`` (a run's EMA
weights without its training state), ``encode`` (images to code shards),
``tokenizer`` (inspect a pretrained tokenizer), ``gpu_check`` (the one-GPU readiness check).
"""
