"""Tables of examples, file paths, the preprocessing cache, encoded datasets and batching."""
