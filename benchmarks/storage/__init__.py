"""Storage: atomic writes and locks, the content-addressed cache, results rows and run manifests."""
