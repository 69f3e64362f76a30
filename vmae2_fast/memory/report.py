"""`python -m vmae2_fast.plan`: the plan as a table, or one JSON object (`--json`)."""
from __future__ import annotations

import json
import time

from ..flops import gpu_memory_bytes, peak_flops, train_flops
from .plan import (REPORTED_POLICIES, least_recompute, max_batch, plan_memory,
                   recomputed_blocks, setup_from_config)

GIB = 2 ** 30


def device_memory(cfg) -> tuple[int | None, str]:
    """(bytes, where the number comes from) of the device the plan is for, or (None, why not)."""
    if cfg.memory_gib is not None:
        return int(cfg.memory_gib * GIB), f"--memory-gib {cfg.memory_gib:g}"
    if cfg.gpu:
        return gpu_memory_bytes(cfg.gpu), cfg.gpu
    if cfg.device == "cuda":
        import torch
        if torch.cuda.is_available():
            name = torch.cuda.get_device_name()
            return torch.cuda.get_device_properties(0).total_memory, name
    return None, "no device memory given (--gpu NAME or --memory-gib N)"


def _estimate(cfg, setup, policy: str) -> dict | None:
    """Clips/s and seconds per optimiser step per GPU at an assumed MFU: an estimate."""
    if not cfg.gpu:
        return None
    dtype = {"bf16": "bf16", "fp16": "fp16"}.get(setup.spec.precision, "fp32")
    peak = peak_flops(cfg.gpu, dtype)
    per_clip = train_flops(cfg.model, cfg.mask_ratio, cfg.decoder_mask_ratio, cfg.num_frames,
                           cfg.input_size, checkpointing=policy, num_classes=cfg.num_classes).hardware
    clips_per_s = peak * cfg.assumed_mfu / per_clip
    return {"clips_per_s": clips_per_s, "step_s": setup.clips * setup.accum_steps / clips_per_s,
            "hardware_tflop_per_clip": per_clip / 1e12}


def build_report(cfg) -> dict:
    setup = setup_from_config(cfg, cfg.device, cfg.num_gpus, cfg.num_classes)
    memory, where = device_memory(cfg)
    budget = None if memory is None else memory * (1 - cfg.headroom)
    policy, auto = cfg.activation_checkpointing, None
    if policy == "auto":
        if budget is None:
            policy = "none"
        else:
            auto, _ = least_recompute(setup, budget)
            policy = auto or "full"
    plan = plan_memory(setup, policy)
    rows = {}
    for p in dict.fromkeys([*REPORTED_POLICIES, policy]):
        row = {"peak_bytes": plan_memory(setup, p).peak_bytes,
               "recomputed_blocks": recomputed_blocks(setup, p)[0]}
        if budget is not None:
            row["max_batch"] = max_batch(setup, p, budget)
        estimate = _estimate(cfg, setup, p)
        if estimate:
            row["estimate"] = estimate
        rows[p] = row
    out = {"model": cfg.model, "stage": "pretrain" if cfg.num_classes is None else "finetune",
           "device": cfg.device, "precision": setup.spec.precision, "parallelism": setup.parallelism,
           "num_gpus": setup.world_size, "batch_size": setup.batch_size, "num_sample": setup.num_sample,
           "clips": setup.clips, "accum_steps": setup.accum_steps, **plan.to_dict(),
           "blocks": recomputed_blocks(setup, policy)[1],
           "device_memory_bytes": memory, "device_memory_from": where,
           "budget_bytes": None if budget is None else int(budget), "headroom": cfg.headroom,
           "fits": None if budget is None else plan.peak_bytes <= budget,
           "asked": cfg.activation_checkpointing,
           # the policy auto chose; null when nothing fits (then planned at full) or no memory given
           "auto": auto,
           "policies": rows, "assumed_mfu": cfg.assumed_mfu}
    if budget is not None:
        out["max_batch"] = {p: r["max_batch"] for p, r in rows.items()}
    return out


def _size(n) -> str:
    return f"{n / GIB:8.2f} GiB" if n >= GIB else f"{n / 2 ** 20:8.1f} MiB"


def render(r: dict) -> str:
    what = ("pre-training" if r["stage"] == "pretrain" else "classifier") + f", {r['precision']}"
    par = {"none": "one process", "ddp": f"DDP over {r['num_gpus']} GPUs",
           "fsdp": f"FSDP2 over {r['num_gpus']} GPUs"}[r["parallelism"]]
    lines = [f"{r['model']} {what}, {par}, on {r['device']}: --batch-size {r['batch_size']} x "
             f"{r['num_sample']} views = {r['clips']} clips per GPU per micro-batch"
             + (f", {r['accum_steps']} micro-batches per step" if r["accum_steps"] > 1 else "")]
    how = r["checkpointing"]
    if r["asked"] == "auto":
        how += (" (auto: the least recompute that fits)" if r["auto"] else
                " (auto: nothing fits, planned at full)" if r["device_memory_bytes"] is not None else
                " (auto needs --gpu or --memory-gib: planned without checkpointing)")
    lines.append(f"memory per GPU, activation checkpointing {how}:")
    parts = [("parameters", "params_bytes"), ("gradients", "grads_bytes"),
             ("AdamW state", "optimizer_bytes")]
    if r["buffers_bytes"]:
        parts.append(("DDP buckets" if r["parallelism"] == "ddp" else "FSDP gathers", "buffers_bytes"))
    parts += [("clip batch", "input_bytes"), ("activations", "activation_bytes"),
              ("largest transient", "transient_bytes"), ("peak", "peak_bytes")]
    for label, key in parts:
        lines.append(f"  {label:<18}{_size(r[key])}")
    if r["device_memory_bytes"] is not None:
        verdict = "fits" if r["fits"] else "does NOT fit"
        lines.append(f"  {verdict} {r['device_memory_from']} ({r['device_memory_bytes'] / GIB:.1f} GiB, "
                     f"{100 * r['headroom']:.0f} % kept free: {r['budget_bytes'] / GIB:.1f} GiB for tensors)")
    else:
        lines.append(f"  ({r['device_memory_from']}: no largest batch, no auto choice)")
    header = f"  {'policy':<8}{'recomputed':>14}{'peak':>14}"
    if r["device_memory_bytes"] is not None:
        header += f"{'max batch':>11}"
    estimated = any("estimate" in row for row in r["policies"].values())
    if estimated:
        header += f"{'clips/s':>10}{'s/step':>9}"
    lines += ["per checkpointing policy, at this batch:", header]
    for p, row in r["policies"].items():
        line = f"  {p:<8}{row['recomputed_blocks']:>7} of {r['blocks']:<4}{_size(row['peak_bytes']):>14}"
        if "max_batch" in row:
            line += f"{row['max_batch']:>11}"
        if "estimate" in row:
            line += f"{row['estimate']['clips_per_s']:>10.1f}{row['estimate']['step_s']:>9.2f}"
        lines.append(line)
    if estimated:
        lines.append(f"  clips/s and s/step per GPU are ESTIMATES: the FLOP model (vmae2_fast.flops, "
                     f"recompute included) at {100 * r['assumed_mfu']:.0f} % of the GPU's peak")
    lines.append("  exact for the eager step as traced; not traced: kernel workspaces beyond those "
                 "listed in vmae2_fast/memory/trace.py, torch.compile's savings")
    return "\n".join(lines)


def run(cfg) -> dict:
    t0 = time.perf_counter()
    r = build_report(cfg)
    if cfg.json:
        print(json.dumps(r))
    else:
        print(render(r))
        print(f"  (planned in {time.perf_counter() - t0:.1f} s)")
    return r
