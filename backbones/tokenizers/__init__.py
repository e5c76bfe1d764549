"""VQ tokenizers: the contract every tokenizer meets (``base``), the suite's own VQ-VAE
(``vqvae``), pretrained VQ tokenizers read from their checkpoints (``pretrained``, with the
taming-transformers network in ``taming``), and the loader that reads those checkpoints without
executing code from them (``safe_pickle``)."""
