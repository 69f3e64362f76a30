"""The CPU data path: PyAV (FFmpeg) decoding and map-style datasets run in DataLoader workers."""
