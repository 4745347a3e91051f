"""Training: the one loop (loop.py) and the files it keeps (checkpoint.py); its
tasks (deepid2.py, landmarks.py, cascade.py) with their commands and data; the
data-parallel hook of MPI runs (dist.py)."""
