"""The networks: forward and backward of each, on any backend; no training here."""
