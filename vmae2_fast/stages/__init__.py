"""The stages: stage 1 (pre-training, `pretrain.py`), stages 2 and 3 and distillation
(`classify.py`), multi-view evaluation (`evaluate.py`) and feature extraction (`features.py`), on
the one set-up they share (`build.py`). The `python -m vmae2_fast.<command>` modules are their
command lines."""
