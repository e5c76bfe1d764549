"""Stage 2, training: the matched-budget trainer, and the FLOP and utilisation accounting that
lets results be compared per iteration, per FLOP and per second."""
