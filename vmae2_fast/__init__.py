"""vmae2_fast: a fast, official-parity training engine for VideoMAE V2."""
__version__ = "0.1.0"
