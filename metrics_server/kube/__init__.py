"""Kubernetes access: credentials (the only user of `kubernetes`), list/watch, caches."""
