"""Pre-training throughput report: every implementation's step, side by side in one run.

For each implementation it reports clips/s, tokens/s (clips/s x the clip's N cubes), achieved
TFLOP/s, MFU and HFU, the step's peak memory per clip, the first step's time (compilation
included) and the ratio to the baseline row measured in the same run (`official`, else
`re-statement`, else the first row). Every implementation runs a full training step (forward,
loss, backward, optimiser update) from the SAME initial weights on the same clips
(`implementations.py`, one function each):

- the baseline (`--impl official`): `re-statement`, our re-statement of the official computation
  (`vmae2_fast.testing.baseline`: same operations, dtypes and order; baseline `re-statement`),
  and with `--official-repo PATH` also `official`, the user's checkout of OpenGVLab/VideoMAEv2
  as it runs (`official_code.py`; baseline `official-code`);
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

The step fed by the real loader is bench/fed_step.py. Writes
bench/results/throughput-<machine>-<model>-<precision>[-<frames>x<size>-b<batch>][-<tag>].jsonl
(harness.Records: the run's environment, then one record per implementation and batch, each
written when it is measured), .md (the tables) and .png (bars of clips/s and MFU), both made by
render.py.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import harness
from harness import Records, environment, free, is_oom, result_stem, time_in_rounds
from implementations import baseline_impls, baseline_meta, fast_impls, grid_of, hf_impl, row_names
from official_code import load_official_code
from step_common import add_official_repo_flag, add_step_flags, autocast_for, step_name_parts

from vmae2_fast import ops
from vmae2_fast.flops import peak_flops, train_flops
from vmae2_fast.masking import num_tokens
from vmae2_fast.models import build_pretrain_model, count_parameters
from vmae2_fast.models.vit import checkpoint_policy

IMPLS = ("official", "fast", "hf")
SWEEP_BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]


def time_alone(impl, n_steps: int, warmup: int, device):
    """Build one implementation, time it with the device to itself, free it: its Timing, or None
    when it ran out of memory."""
    step, timing = None, None
    try:
        step = impl.build()
        timing = time_in_rounds({impl.name: step}, n_steps, warmup, device, leave_on=is_oom)[impl.name]
    except RuntimeError as exc:
        if not is_oom(exc):
            raise
    # freed after the except clause (its traceback holds the step's tensors); compiled graphs
    # hold the parameters too, and the next implementation is built from scratch
    step = None
    torch._dynamo.reset()
    free(device)
    return timing


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


def measure(args, code, batch: int, wanted: set, device, records: Records) -> list[dict]:
    """One batch size: every wanted implementation built from the same weights and timed, each
    row recorded when it is measured (interleaved: all at the end of the rounds)."""
    a = argparse.Namespace(**{**vars(args), "batch": batch})
    torch.manual_seed(0)
    with torch.device(device):      # initialised where it runs: ViT-g's 1 B weights take long on a CPU
        init_state = build_pretrain_model(a.model, img_size=a.size, num_frames=a.frames).state_dict()
    video = torch.randn(batch, 3, a.frames, a.size, a.size).to(device)
    autocast = autocast_for(device, a.precision)
    n = a.steps + a.warmup
    impls = []
    if wanted & {"official", "re-statement"}:
        impls += baseline_impls(a, code, init_state, video, device, autocast, n)
    impls += fast_impls(a, init_state, video, device, autocast)
    if "hf" in wanted:
        impls.append(hf_impl(a, video, device, autocast, n))
    impls = [i for i in impls if i.name in wanted]
    rows = []

    def add(impl, timing):
        rows.append(row(a, impl, timing))
        records.add(rows[-1])

    if args.schedule == "interleaved":
        steps, built = {}, []
        for impl in impls:
            try:
                steps[impl.name] = impl.build()
                built.append(impl)
            except RuntimeError as exc:
                if not is_oom(exc):
                    raise
                add(impl, None)
        timed = time_in_rounds(steps, a.steps, a.warmup, device, leave_on=is_oom)
        steps.clear()
        free(device)
        for impl in built:
            add(impl, timed[impl.name])
    else:
        for impl in impls:
            add(impl, time_alone(impl, a.steps, a.warmup, device))
    return rows


def row(a, impl, timing) -> dict:
    """One implementation at one batch: its step times and what follows from them (the ratios
    to the baseline are render.py's: they need the baseline's row)."""
    r = {"name": impl.name, "kind": impl.kind, "settings": impl.settings, "batch": a.batch}
    if timing is None:
        return {**r, "status": "out of memory"}
    times, peak = timing.seconds, timing.peak_gib
    med = statistics.median(times)
    model_flops, hw_flops = flops_of(a, impl.flops)
    clips = a.batch / med
    r.update(status="ok", median_step_s=med, min_step_s=min(times), max_step_s=max(times), step_s=times,
             first_step_s=timing.first_s, clips_per_s=clips, tokens_per_s=clips * num_tokens(grid_of(a)),
             model_tflop_per_clip=model_flops / 1e12, hardware_tflop_per_clip=hw_flops / 1e12,
             tflops=clips * model_flops / 1e12, hardware_tflops=clips * hw_flops / 1e12,
             peak_mem_gib=peak, peak_mem_per_clip_gib=None if peak is None else peak / a.batch)
    if a.peak is not None:
        r.update(mfu=clips * model_flops / a.peak, hfu=clips * hw_flops / a.peak)
    else:
        r.update(mfu=None, hfu=None)
    return r


def _params(model: str) -> int:
    with torch.device("meta"):      # the count without allocating (ViT-g: 4 GB)
        return count_parameters(build_pretrain_model(model))


def run(args):
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    env = environment(device)
    ops.use_backend(args.kernels)
    if args.schedule == "auto":
        args.schedule = "sequential" if device.type == "cuda" else "interleaved"
    args.peak, peak_source = peak_of(args, device)
    batches = (args.batches or SWEEP_BATCHES) if args.sweep else [args.batch]
    wanted = row_names(args)
    code = load_official_code(args.official_repo) if args.official_repo and "official" in wanted else None
    header = {
        **env, **(baseline_meta(code) if wanted & {"official", "re-statement"} else
                  {"baseline": None, "official_code": None}),
        "model": args.model, "params_m": round(_params(args.model) / 1e6, 3),
        "clip": f"{args.frames}x{args.size}x{args.size}", "tokens_per_clip": num_tokens(grid_of(args)),
        "batch": "sweep" if args.sweep else args.batch,
        "precision": args.precision, "mask_ratio": args.mask_ratio, "decoder_mask_ratio": args.decoder_mask_ratio,
        "fused_ops": ops.active_backend(), "official_checkpointing": args.official_checkpointing,
        "schedule": args.schedule, "tag": args.tag, "steps": args.steps, "warmup": args.warmup,
        "peak_tflops": None if args.peak is None else args.peak / 1e12, "peak_source": peak_source,
    }
    stem = result_stem(args.out, "throughput", env["machine"],
                       *step_name_parts(args, "sweep" if args.sweep else None, args.tag))
    with Records(stem, "throughput", header) as records:
        t0 = time.perf_counter()
        for b in batches:
            level = measure(args, code, b, wanted, device, records)
            wanted -= {r["name"] for r in level if r["status"] != "ok"}     # out of memory: not larger
            if not wanted or (args.time_budget and time.perf_counter() - t0 > args.time_budget):
                break
    return records.path


class _Values(argparse.Action):
    """A flag that takes several values (one fast row each); alone it means `const`."""

    def __init__(self, *a, convert=str, **kw):
        self.convert = convert
        super().__init__(*a, **kw)

    def __call__(self, parser, ns, values, option_string=None):
        try:
            values = [self.convert(v) for v in (values or [self.const])]
        except (argparse.ArgumentTypeError, ValueError) as exc:
            parser.error(f"{option_string}: {exc}")
        setattr(ns, self.dest, values)


def _on_off(v: str) -> bool:
    if v not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"takes on and/or off, got {v!r}")
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
    add_official_repo_flag(p)
    p.add_argument("--impl", nargs="+", choices=IMPLS, default=_default_impls(),
                   help="implementations to time: official (the baseline rows: re-statement, and official "
                        "with --official-repo), fast, hf (default: all; hf only when transformers is installed)")
    g = p.add_argument_group("fast: each flag takes several values, one row per combination")
    g.add_argument("--attention", nargs="+", default=["auto"], help="attention backends (--attention of a run)")
    g.add_argument("--compile", nargs="*", action=_Values, const="on", convert=_on_off, default=[False],
                   metavar="on|off", help="torch.compile (alone: on; 'off on': both)")
    g.add_argument("--activation-checkpointing", nargs="*", action=_Values, const="full", convert=checkpoint_policy,
                   dest="fast_checkpointing", default=["none"], metavar="none|full|K",
                   help="checkpointing policies (alone: full)")
    g.add_argument("--fp8", nargs="*", action=_Values, const="on", convert=_on_off, default=[False],
                   metavar="on|off", help="the encoder's linear layers in FP8 (torchao; sm_89+, emulated on a CPU)")
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
    return p


def main(argv=None) -> int:
    p = build_parser()
    if "--data" in (sys.argv[1:] if argv is None else argv):
        p.error("--data: the step fed by its loader is bench/fed_step.py (python bench/fed_step.py --data LIST ...)")
    return harness.main(p, run, argv)


if __name__ == "__main__":
    sys.exit(main())
