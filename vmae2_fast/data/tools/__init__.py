"""Offline tools, each a command run once over a dataset before training: the index
(`tools.index`), the re-encoder and its transcoder (`tools.reencode`, `tools.transcode`) and the
Kinetics-710 builder (`tools.k710`).

They read and write the files the runtime uses (lists, ``LIST.index.json``, label maps); the
runtime never imports them (tests/test_layout.py), so training loads none of their dependencies.
"""
