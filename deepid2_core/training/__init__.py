"""Training: the one loop (loop.py), its tasks and the data-parallel hook."""
