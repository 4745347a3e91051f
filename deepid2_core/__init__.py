"""deepid2: DeepID2 face representation with hand-written CPU and GPU ops."""

__version__ = "0.1.0"
