"""Storage: atomic writes and locks, the content-addressed cache, the run folder's layout
(``run_dir``), results rows and run manifests."""
