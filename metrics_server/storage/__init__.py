"""Last/prev points per node and container, and the CPU-rate rules of SPEC §4."""
