"""The ground floor: the typed config, stage logging, the compute device and the distributed
environment. Imports nothing else of ``benchmarks``; every other stage may import it."""
