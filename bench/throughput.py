"""Pre-training throughput report: every implementation's step, side by side in one run.

For each implementation it reports clips/s, tokens/s (clips/s x the clip's N cubes), achieved
TFLOP/s, MFU and HFU, the step's peak memory per clip, and the ratio to `official` measured in
the same run. Every implementation runs a full training step (forward, loss, backward, optimiser
update) from the SAME initial weights on the same clips (`implementations.py`, one function each):

- `official`: the baseline. With `--official-repo PATH`, the user's checkout of
  OpenGVLab/VideoMAEv2 as it runs (`official_code.py`; baseline `official-code`), the
  re-statement timed beside it as `re-statement`; without, the re-statement
  `vmae2_fast.testing.baseline` (baseline `re-statement`: same operations, dtypes and order);
- `fast`: vmae2_fast as a run trains, one row per combination of the values given to
  `--attention`, `--compile off on`, `--activation-checkpointing none full K` and
  `--parallelism none ddp fsdp` (the wrapping of `train/parallelize.py`, in a process group of
  one), so that one run shows what each option buys;
- `hf`: transformers' VideoMAEForPreTraining (when installed; encoder masking only).

    python bench/throughput.py                                     # CPU: ViT-S, 2 clips of 16x224^2
    python bench/throughput.py --official-repo ~/src/VideoMAEv2    # baseline: the real official code
    python bench/throughput.py --model vit_micro --size 64 --frames 8 --compile off on \\
        --activation-checkpointing none full                       # CPU, small: what each option buys
    python bench/throughput.py --device cuda --model vit_b --precision bf16 --sweep
    python bench/throughput.py --device cuda --model vit_g --precision bf16 --batch 8 \\
        --compile off on --activation-checkpointing none full --official-checkpointing full

Timing: `--schedule interleaved` (the CPU default) holds every implementation at once and runs
one step of each in turn, the order rotating every round, so that a machine whose speed drifts
slows them alike; `sequential` (the GPU default) builds, times and frees one at a time, so that
each has the device's memory to itself (ViT-g's weights and AdamW state are 16 GB per copy).
`--sweep` repeats the run at batch 1, 2, 4, ... (`--batches`) until every implementation has run
out of memory (or `--time-budget` is spent) and reports each one's best batch as well as every
batch. FLOPs (vmae2_fast.flops): MFU counts the model's useful work (6 x its multiply-adds, the
same for every dual-masking implementation; hf's VideoMAE V1 decoding counts its larger decoder),
HFU what the implementation computes (the official code embeds every cube and recomputes whole
checkpointed blocks). The peak is the GPU's dense peak for the precision (flops.peak_flops;
`--peak-tflops` for other devices; none on a CPU unless given: MFU is then left blank).

Writes bench/results/throughput-<machine>-<model>-<precision>[-<frames>x<size>-b<batch>].json
(the run: device, Python, torch, CUDA/cuDNN/driver versions, and one record per implementation
and batch), .md (the tables) and .png (bars of clips/s and MFU).
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report_main  # noqa: E402
from implementations import fast_impls, grid_of, hf_impl, official_impls, row_names  # noqa: E402
from step_common import add_step_flags, autocast_for, environment, sync  # noqa: E402
from throughput_report import write  # noqa: E402

from vmae2_fast import ops  # noqa: E402
from vmae2_fast.flops import peak_flops, train_flops  # noqa: E402
from vmae2_fast.masking import num_tokens  # noqa: E402
from vmae2_fast.models import build_pretrain_model, count_parameters  # noqa: E402
from vmae2_fast.models.vit import checkpoint_policy  # noqa: E402

IMPLS = ("official", "fast", "hf")
SWEEP_BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _free(device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _timed_step(step, device) -> tuple[float, float | None]:
    """(seconds, GiB the step allocates above what was resident when it started, or None on a CPU)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        resident = torch.cuda.memory_allocated(device)   # every model and optimiser state held
    t0 = time.perf_counter()
    step()
    sync(device)
    seconds = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated(device) - resident) / 2 ** 30 if device.type == "cuda" else None
    return seconds, peak


def time_interleaved(steps: dict, n_steps: int, warmup: int, device) -> dict:
    """{name: (step times, peak GiB or None) or "oom"}, one step of each in turn; the order
    rotates every round so that no implementation always runs first. One that runs out of
    memory leaves the rotation (and frees what it held)."""
    out = {}

    def run(name, fn):
        try:
            return fn()
        except RuntimeError as exc:
            if not _is_oom(exc):
                raise
        # freed after the except clause: until then its traceback holds the step's tensors
        out[name] = "oom"
        del steps[name]
        _free(device)

    for _ in range(warmup):
        for name in list(steps):
            run(name, steps[name])
    sync(device)
    times = {name: [] for name in steps}
    peaks = dict.fromkeys(steps, 0.0 if device.type == "cuda" else None)
    for r in range(n_steps):
        names = list(steps)
        k = r % max(len(names), 1)
        for name in names[k:] + names[:k]:
            if name not in steps:       # ran out of memory earlier in this round
                continue
            got = run(name, lambda: _timed_step(steps[name], device))
            if got is not None:
                times[name].append(got[0])
                if got[1] is not None:
                    peaks[name] = max(peaks[name], got[1])
    out.update({name: (times[name], peaks[name]) for name in steps})
    return out


def time_alone(build, n_steps: int, warmup: int, device):
    """Build one implementation, time it with the device to itself, free it: (times, peak) or "oom"."""
    step, got = None, None
    try:
        step = build()
        for _ in range(warmup):
            step()
        got = [_timed_step(step, device) for _ in range(n_steps)]
    except RuntimeError as exc:
        if not _is_oom(exc):
            raise
    # freed after the except clause (its traceback holds the step's tensors); compiled graphs
    # hold the parameters too, and the next implementation is built from scratch
    step = None
    torch._dynamo.reset()
    _free(device)
    if got is None:
        return "oom"
    peaks = [p for _, p in got if p is not None]
    return [t for t, _ in got], (max(peaks) if peaks else None)


def flops_of(args, counted: dict) -> tuple[float, float]:
    """(model, hardware) training FLOPs per clip of what an implementation computes."""
    kw = dict(encoder_mask_ratio=args.mask_ratio, frames=args.frames, img_size=args.size)
    useful = train_flops(args.model, decoder_mask_ratio=counted["decoder_mask_ratio"], **kw).model
    done = train_flops(args.model, decoder_mask_ratio=counted["decoder_mask_ratio"], count=counted["count"],
                       checkpointing=counted["checkpointing"], reentrant=counted["reentrant"], **kw).hardware
    return useful, done


def peak_of(args, device) -> tuple[float | None, str]:
    """The device's peak FLOP/s for the run's precision and where it came from."""
    if args.peak_tflops:
        return args.peak_tflops * 1e12, "--peak-tflops"
    if device.type != "cuda":
        return None, "none on a CPU (pass --peak-tflops for MFU)"
    dtype = args.precision if args.precision != "fp32" else \
        ("tf32" if torch.backends.cuda.matmul.allow_tf32 else "fp32")
    name = torch.cuda.get_device_name(device)
    try:
        return peak_flops(name, dtype), f"{name}, dense {dtype} (vmae2_fast.flops)"
    except ValueError:
        return None, f"{name} is not in the peak table: pass --peak-tflops for MFU"


def measure(args, batch: int, wanted: set, device) -> tuple[list[dict], dict]:
    """One batch size: every wanted implementation built from the same weights and timed.
    Returns its records and what the report says about the baseline."""
    a = argparse.Namespace(**{**vars(args), "batch": batch})
    torch.manual_seed(0)
    with torch.device(device):      # initialised where it runs: ViT-g's 1 B weights take long on a CPU
        init_state = build_pretrain_model(a.model, img_size=a.size, num_frames=a.frames).state_dict()
    video = torch.randn(batch, 3, a.frames, a.size, a.size).to(device)
    autocast = autocast_for(device, a.precision)
    n = a.steps + a.warmup
    impls, meta = [], {}
    if "official" in wanted or "re-statement" in wanted:
        base, meta = official_impls(a, init_state, video, device, autocast, n)
        impls += base
    impls += fast_impls(a, init_state, video, device, autocast)
    if "hf" in wanted:
        impls.append(hf_impl(a, video, device, autocast, n))
    impls = [i for i in impls if i.name in wanted]
    if args.schedule == "interleaved":
        steps, timed = {}, {}
        for impl in impls:
            try:
                steps[impl.name] = impl.build()
            except RuntimeError as exc:
                if not _is_oom(exc):
                    raise
                timed[impl.name] = "oom"
        timed.update(time_interleaved(steps, a.steps, a.warmup, device))
        steps.clear()
        _free(device)
    else:
        timed = {impl.name: time_alone(impl.build, a.steps, a.warmup, device) for impl in impls}
    records = [record(a, impl, timed[impl.name]) for impl in impls]
    _ratios(records, paired=args.schedule == "interleaved")
    return records, meta


def record(a, impl, timed) -> dict:
    rec = {"name": impl.name, "kind": impl.kind, "settings": impl.settings, "batch": a.batch}
    if timed == "oom":
        return {**rec, "status": "out of memory"}
    times, peak = timed
    med = statistics.median(times)
    model_flops, hw_flops = flops_of(a, impl.flops)
    clips = a.batch / med
    rec.update(status="ok", median_step_s=med, min_step_s=min(times), max_step_s=max(times), step_s=times,
               clips_per_s=clips, tokens_per_s=clips * num_tokens(grid_of(a)),
               model_tflop_per_clip=model_flops / 1e12, hardware_tflop_per_clip=hw_flops / 1e12,
               tflops=clips * model_flops / 1e12, hardware_tflops=clips * hw_flops / 1e12,
               peak_mem_gib=peak, peak_mem_per_clip_gib=None if peak is None else peak / a.batch)
    if a.peak is not None:
        rec.update(mfu=clips * model_flops / a.peak, hfu=clips * hw_flops / a.peak)
    else:
        rec.update(mfu=None, hfu=None)
    return rec


def _params(model: str) -> int:
    with torch.device("meta"):      # the count without allocating (ViT-g: 4 GB)
        return count_parameters(build_pretrain_model(model))


def _ratios(records: list[dict], paired: bool) -> None:
    """`vs_official`: official step time / this one's at the same batch (above 1: faster); with
    interleaved timing also the median of the per-round ratios (robust to drift)."""
    base = next((r for r in records if r["name"] == "official" and r["status"] == "ok"), None)
    for r in records:
        ok = base is not None and r["status"] == "ok"
        r["vs_official"] = base["median_step_s"] / r["median_step_s"] if ok else None
        r["paired_vs_official"] = (statistics.median(b / x for b, x in zip(base["step_s"], r["step_s"]))
                                   if ok and paired and len(base["step_s"]) == len(r["step_s"]) else None)


def run(args) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    load_before = os.getloadavg()[0]
    ops.use_backend(args.kernels)
    if args.schedule == "auto":
        args.schedule = "sequential" if device.type == "cuda" else "interleaved"
    args.peak, peak_source = peak_of(args, device)
    batches = (args.batches or SWEEP_BATCHES) if args.sweep else [args.batch]
    wanted = row_names(args)
    records, t0 = [], time.perf_counter()
    for b in batches:
        level, meta = measure(args, b, wanted, device)
        records += level
        wanted -= {r["name"] for r in level if r["status"] != "ok"}     # out of memory: not larger
        if not wanted or (args.time_budget and time.perf_counter() - t0 > args.time_budget):
            break
    best = {}
    for r in records:
        if r["status"] == "ok" and (r["name"] not in best or r["clips_per_s"] > best[r["name"]]["clips_per_s"]):
            best[r["name"]] = r
    first_fast = next((r["name"] for r in records if r["kind"] == "fast"), None)
    both = [r for r in records if r["name"] == first_fast and r["vs_official"] is not None]
    at = max(both, key=lambda r: r["batch"]) if both else None
    report = {
        **environment(device, load_before), **meta,
        "model": args.model, "params_m": round(_params(args.model) / 1e6, 3),
        "clip": f"{args.frames}x{args.size}x{args.size}", "tokens_per_clip": num_tokens(grid_of(args)),
        "batch": "sweep" if args.sweep else args.batch, "batches": sorted({r["batch"] for r in records}),
        "precision": args.precision, "mask_ratio": args.mask_ratio, "decoder_mask_ratio": args.decoder_mask_ratio,
        "fused_ops": ops.active_backend(), "official_checkpointing": args.official_checkpointing,
        "schedule": args.schedule, "tag": args.tag, "steps": args.steps, "warmup": args.warmup,
        "peak_tflops": None if args.peak is None else args.peak / 1e12, "peak_source": peak_source,
        "records": records, "results": best,
        # the first fast row against the baseline at the same batch (the largest both ran)
        "speedup": at["vs_official"] if at else None, "paired_speedup": at["paired_vs_official"] if at else None,
        "speedup_batch": at["batch"] if at else None,
    }
    rest = [r for r in records if r["name"] == "re-statement" and r["vs_official"]]
    if rest:
        report["restatement_over_official"] = 1 / rest[-1]["vs_official"]
        paired = rest[-1]["paired_vs_official"]
        report["paired_restatement_over_official"] = 1 / paired if paired else None
    return report


class _Values(argparse.Action):
    """A flag that takes several values (one fast row each); alone it means `const`. The first
    value also lands in `single` (bench/fed_step.py reads `args.activation_checkpointing`)."""

    def __init__(self, *a, convert=str, single=None, **kw):
        self.convert, self.single = convert, single
        super().__init__(*a, **kw)

    def __call__(self, parser, ns, values, option_string=None):
        try:
            values = [self.convert(v) for v in (values or [self.const])]
        except (argparse.ArgumentTypeError, ValueError) as exc:
            parser.error(f"{option_string}: {exc}")
        setattr(ns, self.dest, values)
        if self.single:
            setattr(ns, self.single, values[0] if values[0] not in ("none", False) else False)


def _on_off(v: str) -> bool:
    if v not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"--compile takes on and/or off, got {v!r}")
    return v == "on"


def _default_impls() -> list[str]:
    try:
        import importlib.util
        return list(IMPLS) if importlib.util.find_spec("transformers") else ["official", "fast"]
    except ValueError:
        return ["official", "fast"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_step_flags(p)
    p.add_argument("--impl", nargs="+", choices=IMPLS, default=_default_impls(),
                   help="implementations to time (default: all; hf only when transformers is installed)")
    g = p.add_argument_group("fast: each flag takes several values, one row per combination")
    g.add_argument("--attention", nargs="+", default=["auto"], help="attention backends (--attention of a run)")
    g.add_argument("--compile", nargs="*", action=_Values, const="on", convert=_on_off, default=[False],
                   metavar="on|off", help="torch.compile (alone: on; 'off on': both)")
    g.add_argument("--activation-checkpointing", nargs="*", action=_Values, const="full", convert=checkpoint_policy,
                   dest="fast_checkpointing", single="activation_checkpointing", default=["none"],
                   metavar="none|full|K", help="checkpointing policies (alone: full)")
    g.add_argument("--parallelism", nargs="+", choices=["none", "ddp", "fsdp"], default=["none"],
                   help="the run's wrapping (train/parallelize.py) in a process group of one")
    g.add_argument("--kernels", default="auto", help="fused-op backend: auto | triton | cpp | reference")
    p.add_argument("--official-checkpointing", choices=["none", "full"], default="none",
                   help="the official code's --with_checkpoint (every block, reentrant)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--schedule", choices=["auto", "interleaved", "sequential"], default="auto",
                   help="auto: interleaved on a CPU, sequential on a GPU")
    p.add_argument("--sweep", action="store_true", help="batch 1, 2, 4, ... until every implementation runs "
                                                        "out of memory; report each one's best")
    p.add_argument("--batches", type=int, nargs="+", help=f"the sweep's batch sizes (default {SWEEP_BATCHES})")
    p.add_argument("--time-budget", type=float, default=0.0, help="stop the sweep after this many seconds (0: none)")
    p.add_argument("--tag", default="", help="appended to the result files' names (runs of the same shape)")
    p.add_argument("--peak-tflops", type=float, help="the device's peak TFLOP/s for MFU (default: flops.peak_flops)")
    p.set_defaults(activation_checkpointing=False)
    return p


def _fed_step():
    """bench/fed_step.py (`--data LIST`: the step fed by its loader), or None where the data plane
    cannot load because PyAV is missing (the GPU machines have none): the step report needs no video."""
    try:
        import av  # noqa: F401  (the package itself imports PyAV only when it reads a video)
    except ModuleNotFoundError as exc:
        if exc.name != "av":
            raise
        return None
    import fed_step
    return fed_step


def _without_data(run_step):
    def run_or_refuse(args):
        if args.data:
            raise ValueError("--data (the fed step) needs PyAV, which is not installed: pip install av")
        return run_step(args)
    return run_or_refuse


def main(argv=None):
    p = build_parser()
    fed = _fed_step()
    if fed is None:
        p.add_argument("--data", metavar="LIST", help="the step fed by its loader (needs PyAV: not installed)")
        return report_main(p, _without_data(run), write, argv)
    fed.add_fed_step_flags(p)
    return report_main(p, *fed.fed_step_or(run, write), argv)


if __name__ == "__main__":
    sys.exit(main())
