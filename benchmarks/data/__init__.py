"""Stage 1, data and latents: image datasets, the code-shard format, and the latent space
(tokenizer + code shards) that every method of a run trains on. Data sets and tokenizers are
registries (``benchmarks.data.datasets``, ``benchmarks.data.tokenizers``)."""
