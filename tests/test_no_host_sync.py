"""The training step (Trainer.train_step + the pre-training stage's compute_loss: masks on the
device, model, fused ops, masked MSE, backward, clipping, fused AdamW) makes no host sync.

On a GPU: torch.cuda.set_sync_debug_mode("error") around the step. On the CPU: the dispatch-level
stand-in of vmae2_fast.testing.host_sync, which raises on value reads, value-dependent shapes,
tensors built from host data and cross-device copies, inside the fused ops' kernels too. What
the CPU run cannot see (waits inside CUDA-only code) is listed in that module's docstring."""
import numpy as np
import pytest

import needs
import torch

from vmae2_fast import ops
from vmae2_fast.config import PretrainConfig
from vmae2_fast.data.batches import PretrainBatch
from vmae2_fast.ops import patch_embed
from vmae2_fast.stages.pretrain import PretrainStage, build_model
from vmae2_fast.testing.host_sync import HostSyncError, forbid_host_sync
from vmae2_fast.train.distributed import DistInfo
from vmae2_fast.train.loop import LoopSettings, Trainer
from vmae2_fast.train.optim import build_adamw


@pytest.fixture
def backend():
    before = ops.active_backend()
    yield ops.use_backend
    ops.use_backend(before)


def pretrain_trainer(tmp_path, device, precision="fp32", checkpointing="2", compile=False):
    """A pre-training Trainer on vit_micro (4 x 32^2 clips), two micro-batches per step, with
    clipping, drop path and activation checkpointing of every 2nd block; batches already on the
    device (as DALI delivers them)."""
    cfg = PretrainConfig(model="vit_micro", input_size=32, num_frames=4, output_dir=str(tmp_path),
                         activation_checkpointing=checkpointing, drop_path=0.1, mask_ratio=0.75)
    model = build_model(cfg, device).to(device)
    stage = PretrainStage(model, cfg, device, DistInfo())
    opt = build_adamw(model, 1e-4, 0.05)
    settings = LoopSettings(epochs=1, steps_per_epoch=4, accum_steps=2, clip_grad=1.0,
                            precision=precision, output_dir=str(tmp_path), progress=False)
    lr = np.full(4, 1e-4)
    wrapped = torch.compile(model) if compile else model
    trainer = Trainer(stage, wrapped, opt, None, lr, lr * 0.05, settings, device, DistInfo(), {})
    batches = [PretrainBatch(torch.randn(2, 3, 4, 32, 32, device=device)) for _ in range(2)]
    return trainer, batches


@pytest.fixture(autouse=True)
def the_device_normalisation(monkeypatch):
    """The CPU checks stand in for a GPU step, so the batch takes the normalisation a GPU runs:
    the CPU path (slab by slab into NumPy's memory, `pixels._on_host`) never runs on a GPU, and
    its host reads are the point of it."""
    from vmae2_fast.data import pixels
    monkeypatch.setattr(pixels, "_on_host", lambda video: False)


@pytest.mark.parametrize("kernels", ["cpp", "reference"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cpu_train_step_makes_no_host_sync(tmp_path, backend, kernels, precision):
    if kernels == "cpp":
        needs.cpp_ops()
    backend(kernels)
    trainer, batches = pretrain_trainer(tmp_path, torch.device("cpu"), precision)
    trainer.train_step(batches)                # warm-up: lazy optimiser state, cached buffers
    with forbid_host_sync("cpu"):
        loss, gnorm, clips = trainer.train_step(batches)
    assert torch.isfinite(loss) and torch.isfinite(gnorm) and clips == 4


def test_the_guard_sees_per_call_statistics(tmp_path, backend, monkeypatch):
    """Building the masked-MSE mean/std with torch.as_tensor on every call (instead of the cached
    `channel_stats`) is a host-to-device copy on a GPU; the CPU guard catches it inside the step."""
    from vmae2_fast.ops import masked_loss
    backend("reference")
    trainer, batches = pretrain_trainer(tmp_path, torch.device("cpu"))
    trainer.train_step(batches)
    monkeypatch.setattr(masked_loss, "channel_stats", lambda mean, std, dtype, device: (
        torch.as_tensor(mean, dtype=dtype, device=device), torch.as_tensor(std, dtype=dtype, device=device)))
    with pytest.raises(HostSyncError, match="host data"), forbid_host_sync("cpu"):
        trainer.train_step(batches)


def test_the_guard_looks_inside_the_custom_ops(tmp_path, backend, monkeypatch):
    """A value read inside a backend's kernel (behind the custom op) is caught as well."""
    needs.cpp_ops()
    backend("cpp")
    trainer, batches = pretrain_trainer(tmp_path, torch.device("cpu"))
    trainer.train_step(batches)
    forward = patch_embed._forward

    def reads_a_value(backend, video, *args):
        float(video.abs().max())               # what a careless kernel wrapper might do
        return forward(backend, video, *args)
    monkeypatch.setattr(patch_embed, "_forward", reads_a_value)
    with pytest.raises(HostSyncError, match="reads a tensor.s value"), forbid_host_sync("cpu"):
        trainer.train_step(batches)


@pytest.mark.parametrize("name, fn, words", [
    ("item", lambda x: x.sum().item(), "reads a tensor's value"),
    ("bool", lambda x: bool((x > 0).any()), "reads a tensor's value"),
    ("tolist", lambda x: x.tolist(), "tolist"),
    ("numpy", lambda x: x.numpy(), "numpy"),
    ("nonzero", lambda x: x.nonzero(), "depends on the values"),
    ("boolean indexing", lambda x: x[x > 0], "boolean mask"),
    ("masked_select", lambda x: x.masked_select(x > 0), "depends on the values"),
    ("host data", lambda x: torch.tensor([0.485, 0.456, 0.406]), "host data"),
    ("to another device", lambda x: x.to("meta"), "copy from cpu to meta"),
    ("copy_ across devices", lambda x: torch.empty(4, device="meta").copy_(x), "between devices"),
])
def test_the_guard_raises_on_each_kind_of_sync(name, fn, words):
    x = torch.randn(4)
    with pytest.raises(HostSyncError, match=words), forbid_host_sync("cpu"):
        fn(x)


def test_the_guard_lets_device_side_work_through():
    x = torch.randn(4)
    with forbid_host_sync("cpu"):
        y = torch.where(x > 0, x, 0.0) + x.masked_fill(x < 0, 1.0) + x[torch.arange(4).flip(0)]
        torch.zeros((), device=x.device).add_(y.sum())


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_gpu_train_step_makes_no_host_sync(tmp_path, backend, precision):
    """CUDA's own check (set_sync_debug_mode "error") plus the dispatch-level rules, Triton backend."""
    backend("auto")
    dev = torch.device("cuda")
    trainer, batches = pretrain_trainer(tmp_path, dev, precision)
    trainer.train_step(batches)
    with forbid_host_sync(dev):
        loss, _, _ = trainer.train_step(batches)
    assert torch.isfinite(loss).item()


@pytest.mark.gpu
def test_gpu_compiled_train_step_makes_no_host_sync(tmp_path, backend):
    """The compiled model in the step (CUDA's check only: compiled code does not run under a
    dispatch mode)."""
    backend("auto")
    dev = torch.device("cuda")
    trainer, batches = pretrain_trainer(tmp_path, dev, "bf16", compile=True)
    trainer.train_step(batches)
    trainer.train_step(batches)                # a second warm-up: recompiles settle
    with forbid_host_sync(dev, cpu_rules=False):
        loss, _, _ = trainer.train_step(batches)
    assert torch.isfinite(loss).item()
