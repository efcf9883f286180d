"""The training loop, metrics and CPU-thread settings."""
