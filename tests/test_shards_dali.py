"""DALI decoding shard records from memory (the GPU path's decoder, run here on DALI's CPU backend,
which decodes the tiny set's VP9): the same pixels as DALI decoding the files, the streaming
order, and exact resume."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import needs
from vmae2_fast.cli import config_for
from vmae2_fast.data.loaders import eval_loader, finetune_loader, load_list, pretrain_loader
from vmae2_fast.data.shard_loader import epoch_sequence
from vmae2_fast.data.tools.shards import write_shards
from vmae2_fast.train.distributed import DistInfo

CPU = torch.device("cpu")
CLIP = ["--model", "vit_micro", "--input-size", "32", "--num-frames", "4", "--sampling-rate", "2",
        "--num-workers", "2", "--decoder", "dali", "--batch-size", "2", "--seed", "4"]


@pytest.fixture(scope="module", autouse=True)
def dali():
    return needs.dali()


@pytest.fixture(scope="module")
def sets(tiny_synthetic, tmp_path_factory):
    out = tmp_path_factory.mktemp("dali_shards")
    for name, lst in (("pre", tiny_synthetic.pretrain_list), ("train", tiny_synthetic.train_list),
                      ("val", tiny_synthetic.val_list)):
        write_shards(lst, tiny_synthetic.root, str(out / name), shard_size="12KB", progress=False)
    return out


def _files(ds, lst, labels, tmp_path):
    """The list's DALI loader input, its index built beside a copy of the list: an index beside
    the session's shared list would change what later tests of that list see."""
    import shutil
    copy = tmp_path / Path(lst).name
    shutil.copy(lst, copy)
    return load_list(str(copy), ds.root, decoder="dali", labels=labels, build=True)


def test_validation_batches_equal_dali_decoding_the_files(tiny_synthetic, sets, tmp_path):
    cfg = config_for("finetune", CLIP)
    e1, i1 = _files(tiny_synthetic, tiny_synthetic.val_list, True, tmp_path)
    e2, i2 = load_list(str(sets / "val"), "", decoder="dali", labels=True)
    a = list(eval_loader(e1, i1, cfg, DistInfo(), CPU, "dali", batch_size=4, mode="val")(0))
    b = list(eval_loader(e2, i2, cfg, DistInfo(), CPU, "dali", batch_size=4, mode="val")(0))
    assert len(a) == len(b) == 2
    for x, y in zip(a, b):
        assert torch.equal(x.video, y.video) and torch.equal(x.labels, y.labels)
        assert [p.split(tiny_synthetic.root + "/")[-1] for p in x.paths] == y.paths


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_training_batches_are_the_files_in_the_streaming_order(tiny_synthetic, sets, monkeypatch, stage,
                                                               tmp_path):
    """DALI from shards = DALI from the files when both are handed the same sample order (the
    shard stream's: shards and their samples permuted per epoch); and a resume gives the rest."""
    # no RandAugment: DALI draws its op choice from the pipeline's own generator, which a resume
    # does not restore (as with files; see dali/pipeline.py)
    cfg = config_for(stage, CLIP + ([] if stage == "pretrain" else ["--aa", "none"]))
    make = pretrain_loader if stage == "pretrain" else finetune_loader
    lst, name = ((tiny_synthetic.pretrain_list, "pre") if stage == "pretrain"
                 else (tiny_synthetic.train_list, "train"))
    e2, i2 = load_list(str(sets / name), "", decoder="dali", labels=stage != "pretrain")
    shard_loader = make(e2, i2, cfg, DistInfo(), CPU, "dali")
    streamed = list(shard_loader(1))
    seq = epoch_sequence(i2, 4, 1).tolist()
    order = [seq[j:j + 2] for j in range(0, 12, 2)]
    e1, i1 = _files(tiny_synthetic, lst, stage != "pretrain", tmp_path)
    file_loader = make(e1, i1, cfg, DistInfo(), CPU, "dali")
    monkeypatch.setattr(file_loader, "batch_indices", lambda epoch, skip: iter(order[skip:]))
    from_files = list(file_loader(1))
    assert len(streamed) == len(from_files) == 6
    for x, y in zip(streamed, from_files):
        assert torch.equal(x.video, y.video)
    resumed = list(shard_loader(1, 4))
    assert len(resumed) == 2 and all(torch.equal(x.video, y.video) for x, y in zip(resumed, streamed[4:]))


def test_pretraining_from_shards_with_dali_runs(tiny_synthetic, sets, tmp_path):
    from cli_runs import micro_flags, train_records
    from vmae2_fast.stages.pretrain import run
    out = tmp_path / "run"
    run(config_for("pretrain", micro_flags(tiny_synthetic, out, data=str(sets / "pre"), decoder="dali",
                                           epochs=1, no_progress=True)))
    assert [r["global_step"] for r in train_records(out)] == [1, 2, 3]
