"""Storage: atomic writes and locks, the content-addressed cache, the run folder's layout, results rows and run manifests."""
