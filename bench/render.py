"""The one renderer of bench/: a run's records (records.Records, `<stem>.jsonl`) become its
Markdown report (`<stem>.md`) and, where the report has one, its bar chart (`<stem>.png`, drawn
with PIL, a dependency of the package).

    python bench/render.py bench/results/throughput-...-vit_s-fp32.jsonl     # one run: prints it
    python bench/render.py /tmp/suite                 # every records file whose report is missing or older

The records hold what was measured; what compares rows (ratios to the baseline row, each
implementation's best batch) is worked out here, so that the records of a run that was stopped
make a report of what it measured, which says that the run did not finish. Each benchmark's
layout is one function below, chosen by the run record's `bench`.
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

from records import read_records

from vmae2_fast.errors import DataError, UserError

__all__ = ["load", "render", "bar_chart", "LAYOUTS"]


def load(path) -> dict:
    """The run record's fields, `rows`, `complete`, `path`, and `load_avg_1m` as [at the start, at the end]."""
    header, rows, end = read_records(path)
    after = (end or {}).get("load_avg_1m", "n/a" if end is None else None)
    return {**header, "rows": rows, "complete": end is not None, "file": Path(path).stem, "path": str(path),
            "load_avg_1m": [header.get("load_avg_1m"), after]}


def render(path) -> Path:
    """Write the report (and chart) of the records at `path`; returns the Markdown's path."""
    path = Path(path)
    report = load(path)
    if report["bench"] not in LAYOUTS:
        raise DataError(f"{path}: no layout for bench {report['bench']!r} (known: {', '.join(LAYOUTS)})")
    markdown, chart = LAYOUTS[report["bench"]]
    md = markdown(report)
    if not report["complete"]:
        title, _, rest = md.partition("\n")
        md = (f"{title}\n\n**The run stopped before it finished**: this report holds the "
              f"{len(report['rows'])} measurement(s) it recorded.\n{rest}")
    out = path.with_suffix(".md")
    out.write_text(md)
    if chart is not None:
        chart(report, path.with_suffix(".png"))
    return out


# ---------------------------------------------------------------------------------------- helpers

def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def _fmt(x, spec: str, scale: float = 1.0, none: str = "") -> str:
    return none if x is None else format(x * scale, spec)


def _font(size: int):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)     # a scalable font (Pillow >= 10.1 with FreeType)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def bar_chart(path: Path, title: str, labels: list, panels: list, colours: dict,
              default=(50, 110, 200)) -> None:
    """Horizontal bars, one row per label, one panel per (heading, values, number format); a
    bar's colour is that of the first key of `colours` its label starts with."""
    from PIL import Image, ImageDraw
    if not labels:
        return
    row, top, panel_w, pad = 30, 64, 360, 16
    label_w = max(250, 8 * max(len(x) for x in labels) + 2 * pad)
    width = label_w + len(panels) * (panel_w + pad) + pad
    img = Image.new("RGB", (width, top + row * len(labels) + pad), "white")
    d = ImageDraw.Draw(img)
    d.text((pad, 10), title, fill="black", font=_font(16))
    for p, (heading, values, fmt) in enumerate(panels):
        x0 = label_w + p * (panel_w + pad)
        d.text((x0, 38), heading, fill="black", font=_font(14))
        top_value = max([v for v in values if v] + [1e-12])
        for i, (name, v) in enumerate(zip(labels, values)):
            y = top + i * row
            if p == 0:
                d.text((pad, y + 6), name, fill="black", font=_font(13))
            colour = next((c for k, c in colours.items() if name.startswith(k)), default)
            length = int((panel_w - 70) * (v or 0) / top_value)
            d.rectangle([x0, y + 4, x0 + max(length, 1), y + row - 6], fill=colour)
            d.text((x0 + length + 6, y + 6), fmt.format(v), fill="black", font=_font(13))
    img.save(path)


# ------------------------------------------------------------------------- throughput.py

def _baseline_row(rows: list) -> str | None:
    """The row the others are compared with: `official`, else `re-statement`, else the first."""
    names = [r["name"] for r in rows]
    return next((n for n in ("official", "re-statement") if n in names), names[0] if names else None)


def throughput_summary(report: dict) -> dict:
    """The comparisons of a throughput run: each row's ratio to the baseline row at its batch
    (`vs`, and `paired_vs`: the median of the per-round ratios when interleaved), each
    implementation's best batch (`results`), the first fast row's speed-up, the re-statement's
    step time over the official code's."""
    rows = [dict(r) for r in report["rows"]]
    base_name = _baseline_row(rows)
    paired = report["schedule"] == "interleaved"
    for r in rows:
        base = next((b for b in rows if b["name"] == base_name and b["batch"] == r["batch"]
                     and b["status"] == "ok"), None)
        ok = base is not None and r["status"] == "ok"
        r["vs"] = base["median_step_s"] / r["median_step_s"] if ok else None
        r["paired_vs"] = (statistics.median(b / x for b, x in zip(base["step_s"], r["step_s"]))
                          if ok and paired and len(base["step_s"]) == len(r["step_s"]) else None)
    best = {}
    for r in rows:
        if r["status"] == "ok" and (r["name"] not in best or r["clips_per_s"] > best[r["name"]]["clips_per_s"]):
            best[r["name"]] = r
    s = {"rows": rows, "base": base_name, "results": best, "batches": sorted({r["batch"] for r in rows}),
         "speedup": None, "paired_speedup": None, "speedup_batch": None}
    first_fast = next((r["name"] for r in rows if r["kind"] == "fast"), None)
    both = [r for r in rows if r["name"] == first_fast and r["vs"] is not None]
    if both and base_name in ("official", "re-statement"):
        at = max(both, key=lambda r: r["batch"])        # the largest batch both ran
        s.update(speedup=at["vs"], paired_speedup=at["paired_vs"], speedup_batch=at["batch"])
    rest = [r for r in rows if r["name"] == "re-statement" and r["vs"]]
    if rest and base_name == "official":
        s["restatement_over_official"] = 1 / rest[-1]["vs"]
        s["paired_restatement_over_official"] = 1 / rest[-1]["paired_vs"] if rest[-1]["paired_vs"] else None
    return s


def _baseline_title(report: dict) -> str:
    if report["baseline"] == "official-code":
        c = report["official_code"]
        commit = f" at {c['commit'][:7]}" if c["commit"] else ""
        return f", against the official code (OpenGVLab/VideoMAEv2{commit}, timm: {c['timm']})"
    if report["baseline"] == "re-statement":
        return (", against the re-statement of the official code (`vmae2_fast/testing/baseline.py`), "
                "not the official code itself")
    return ""


def _settings(r: dict) -> str:
    s = r["settings"]
    if r["kind"] == "fast":
        return (f"{'compile' if s['compile'] else 'eager'}, checkpointing {s['activation_checkpointing']}, "
                f"attention {s['attention']}, parallelism {s['parallelism']}"
                + (", FP8 encoder GEMMs" if s.get("fp8") else ""))
    if r["kind"] == "hf":
        return "transformers VideoMAEForPreTraining, encoder masking only"
    return f"checkpointing {s.get('checkpointing', 'none')}"


def _throughput_row(r: dict, label: str) -> str:
    if r["status"] != "ok":
        return f"| {label} | {_settings(r)} | {r['batch']} | {r['status']} | | | | | | | |"
    ratio = "" if r["vs"] is None else f"{r['vs']:.2f}x"
    if r.get("paired_vs") is not None:
        ratio += f" ({r['paired_vs']:.2f}x)"
    return (f"| {label} | {_settings(r)} | {r['batch']} | {r['median_step_s']:.4f} | {r['clips_per_s']:.2f} "
            f"| {r['tokens_per_s']:,.0f} | {r['tflops']:.3g} | {_fmt(r['mfu'], '.1f', 100)} "
            f"| {_fmt(r['hfu'], '.1f', 100)} | {_fmt(r['peak_mem_per_clip_gib'], '.3f', none='n/a')} | {ratio} |")


def _label(r: dict, report: dict) -> str:
    return f"official ({report['baseline']})" if r["name"] == "official" else r["name"]


def throughput_markdown(report: dict) -> str:
    s = throughput_summary(report)
    base = s["base"] or "baseline"
    header = [f"| implementation | settings | batch | step (s) | clips/s | tokens/s | TFLOP/s | MFU % | HFU % "
              f"| peak GiB / clip | vs {base} |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    env = [f"torch {report['torch']}"]
    if report.get("cuda"):
        env.append(f"CUDA {report['cuda']}, cuDNN {report['cudnn']}, driver {report.get('driver') or 'unknown'}")
    if report.get("threads"):
        env.append(f"{report['threads']} CPU thread{'s' * (report['threads'] != 1)}")
    env.append(f"1-minute load average {report['load_avg_1m'][0]} before / {report['load_avg_1m'][1]} after")
    peak = (f"{report['peak_tflops']:g} TFLOP/s ({report['peak_source']})" if report["peak_tflops"]
            else report["peak_source"])
    md = [f"# Pre-training throughput on {report['machine']}: {report['model']}, {report['precision']}"
          f"{_baseline_title(report)}", "",
          f"Baseline: **{report['baseline'] or 'none timed'}**. {report['model']} ({report['params_m']} M params), "
          f"clips {report['clip']} ({report['tokens_per_clip']} tokens), mask {report['mask_ratio']} / decoder "
          f"{report['decoder_mask_ratio']}, fused ops `{report['fused_ops']}`, {report['schedule']} timing, median "
          f"of {report['steps']} steps after {report['warmup']} warm-up; {'; '.join(env)}. Peak: {peak}.", ""]
    sweep = report["batch"] == "sweep"
    md += ["## Best batch of each implementation" if sweep else "## Results", "", *header]
    md += [_throughput_row(r, _label(r, report)) for r in s["results"].values()]
    failed = [r for r in s["rows"] if r["status"] != "ok" and r["name"] not in s["results"]]
    md += [_throughput_row(r, _label(r, report)) for r in failed]
    if sweep:
        md += ["", "## Every batch", "", *header]
        md += [_throughput_row(r, _label(r, report)) for r in sorted(s["rows"], key=lambda r: (r["name"], r["batch"]))]
    md.append("")
    if s["speedup"] is not None:
        paired = f" (median of the per-round ratios: {s['paired_speedup']:.2f}x)" if s["paired_speedup"] else ""
        md.append(f"Speed-up of the first fast row ({base} step time / its step time, batch "
                  f"{s['speedup_batch']}): **{s['speedup']:.2f}x**{paired}.")
    if "restatement_over_official" in s:
        paired = s.get("paired_restatement_over_official")
        md.append(f"Re-statement step time / official-code step time: {s['restatement_over_official']:.2f}"
                  + (f" (per-round median {paired:.2f})" if paired else "") + ".")
    first = [(_label(r, report), r["first_step_s"]) for r in s["results"].values() if r.get("first_step_s")]
    if first:
        md.append("First step (compilation and first allocations; not in the medians): "
                  + ", ".join(f"{name} {sec:.3g} s" for name, sec in first) + ".")
    md += ["", "Columns: clips/s = batch / median step; tokens/s = clips/s x the clip's "
           f"{report['tokens_per_clip']} cubes; TFLOP/s = clips/s x the model's training FLOPs per clip "
           "(6 x multiply-adds of what the model must compute: dual masking for official and fast, "
           "VideoMAE V1 decoding for hf); MFU = that / the peak; HFU counts what each implementation "
           "computes (the official code's Conv3d over every cube, recomputed blocks); peak GiB / clip = "
           "what a step allocates above the resident weights and optimiser states, per clip (GPU only); "
           f"vs {base} = {base} step time / this one's at the same batch (above 1: faster; in "
           "brackets, the median of the per-round ratios when interleaved)."]
    return "\n".join(md) + "\n"


def throughput_chart(report: dict, path: Path) -> None:
    s = throughput_summary(report)
    rows = list(s["results"].values())
    mfu = rows and all(r["mfu"] is not None for r in rows)
    bar_chart(path, f"{report['model']} {report['clip']} {report['precision']} on {report['machine']}",
              [_label(r, report) + ("" if report["batch"] != "sweep" else f" (b{r['batch']})") for r in rows],
              [("clips/s", [r["clips_per_s"] for r in rows], "{:.2f}"),
               ("MFU %", [100 * r["mfu"] for r in rows], "{:.1f}") if mfu else
               ("TFLOP/s (no peak known: MFU blank)", [r["tflops"] for r in rows], "{:.3g}")],
              {"official": (120, 120, 120), "re-statement": (175, 175, 175), "hf": (230, 140, 40)})


# -------------------------------------------------------------------------- step_breakdown.py

def step_breakdown_markdown(report: dict) -> str:
    t = {r["name"]: r["seconds_per_step"] for r in report["rows"]}
    names = list(t)
    threads = f", {report['threads']} thread{'s' * (report['threads'] != 1)}" if report["threads"] else ""
    md = [f"# Where a pre-training step's time goes on {report['machine']}", "",
          f"{report['model']}, clips {report['clip']}, batch {report['batch']} ({report['num_visible']} visible, "
          f"{report['num_decoded']} decoded tokens per clip), {report['precision']}, fused ops "
          f"`{report['fused_ops']}`, torch {report['torch']}{threads}, fastest of {report['reps']} interleaved "
          f"repetitions, 1-minute load average {report['load_avg_1m'][0]} before / {report['load_avg_1m'][1]} "
          "after. Each part is timed alone (forward + backward), in milliseconds per training step.", "",
          "| part | " + " | ".join(f"{n} (ms)" for n in names) + (" | official / ours |" if len(names) == 2 else " |"),
          "|---" * (len(names) + 1 + (len(names) == 2)) + "|"]
    for row in (t[names[0]] if names else []):
        cells = [f"{1e3 * t[n][row]:.0f}" for n in names]
        ratio = [f"{t['official'][row] / t['ours'][row]:.2f}" if t["ours"][row] > 0 and row != "not in the parts"
                 else ""] if len(names) == 2 else []
        md.append(f"| {row} | " + " | ".join(cells + ratio) + " |")
    return "\n".join(md) + "\n"


# ------------------------------------------------------------------------------- fed_step.py

def fed_step_markdown(report: dict) -> str:
    ph = {r["phase"]: r for r in report["rows"]}
    lo, st, fed = ph.get("loader"), ph.get("step"), ph.get("fed")
    threads = f", {report['threads']} intra-op threads" if report["threads"] else ""
    missing = "| not measured | | | |"
    md = [f"# Fed pre-training step on {report['machine']}: {report['model']}, decoder {report['decoder']}",
          "",
          f"{report['model']}, clips {report['clip']} (frame stride {report['rate']}), {report['batch_videos']} "
          f"videos x {report['views']} views = {report['clips_per_step']} clips a step, {report['precision']}, "
          f"fused ops `{report['fused_ops']}`; data `{report['data']}` ({report['videos']} videos), decoder "
          f"{report['decoder']} (requested {report['decoder_requested']}), {report['workers']} workers / threads, "
          f"{report['dali_instances']} DALI pipeline(s); {report['steps']} timed steps per phase after "
          f"{report['warmup']} warm-up; torch {report['torch']}{threads}; 1-minute load average "
          f"{report['load_avg_1m'][0]} before / {report['load_avg_1m'][1]} after.", "",
          "| phase | clips/s | step (s) | waiting for data | MFU |", "|---|---|---|---|---|",
          f"| loader alone | {lo['clips_per_s']:.1f} | - | - | - |" if lo else f"| loader alone {missing}",
          f"| step alone (one resident batch) | {st['clips_per_s']:.1f} | {st['step_s']:.3f} | - | {_pct(st['mfu'])} |"
          if st else f"| step alone (one resident batch) {missing}",
          f"| **step fed by the loader** | **{fed['clips_per_s']:.1f}** | {fed['step_s']:.3f} | "
          f"{_pct(fed['data_wait_frac'])} (longest {fed['max_wait_s']:.3f} s) | {_pct(fed['mfu'])} |"
          if fed else f"| **step fed by the loader** {missing}",
          "", "The loader keeps up when the fed rate is close to min(loader, step) and the wait is small."]
    return "\n".join(md) + "\n"


# ----------------------------------------------------------------------------------- data.py

def _data_sections(report: dict) -> dict:
    """{codec: (its re-encoded copies, {loader row name: row})} in the order measured."""
    out = {}
    for r in report["rows"]:
        copies, rows = out.setdefault(r["codec"], ({}, {}))
        if r["kind"] == "copies":
            copies.update(r["copies"])
        else:
            rows[r["name"]] = r
    return out


def data_markdown(report: dict) -> str:
    s = report["settings"]
    md = [f"# Data-loader throughput on {report['machine']}", "",
          f"Source: {report['source']}, re-encoded per codec (GOP {s['gop']}); batch {s['batch_size']} "
          f"videos x {s['views']} views of {s['frames']} frames (stride {s['rate']}) at {s['size']}x{s['size']}; "
          f"{s['epochs']} timed epochs after a warm-up epoch; torch {report['torch']}, DALI "
          f"{report['dali']}; 1-minute load average {report['load_avg_1m'][0]} before / "
          f"{report['load_avg_1m'][1]} after, on {report['cpu_cores']} cores.", "",
          ("Decoded frames: what the decoder decodes to produce the clips (from the keyframe before the "
           "first sampled frame; PyAV may drop non-reference frames in that stretch, so its count is an "
           "upper bound); sampled frames: the T frames a clip holds." if report.get("pyav_seeks") else
           "Decoded frames: what the decoder decodes to produce the clips (from the keyframe before the "
           "first sampled frame for DALI, from frame 0 for PyAV); sampled frames: the T frames a clip holds."),
          ""]
    for codec, (m, rows) in _data_sections(report).items():
        md += [f"## {codec}: {m['videos']} videos, {', '.join(m['resolution'])}, {m['frames_per_video']} "
               f"frames each, a keyframe every {m['keyframe_interval']} frames", "",
               "| loader | decoded frames/s | decoded per video | sampled frames/s | videos/s | clips/s "
               "| start-up (s) |", "|---|---|---|---|---|---|---|"]
        for name, r in rows.items():
            if "skipped" in r:
                md.append(f"| {name} | not run: {r['skipped']} | | | | | |")
            else:
                md.append(f"| {name} | {r['decoded_frames_per_s']:,.0f} | {r['decoded_per_video']} | "
                          f"{r['sampled_frames_per_s']:,.0f} | {r['videos_per_s']:.1f} | {r['clips_per_s']:.1f} "
                          f"| {r['startup_s']:.2f} |")
        md.append("")
    md.append(f"Chart: `{report['file']}.png`.")
    return "\n".join(md) + "\n"


def data_chart(report: dict, path: Path) -> None:
    bars = [(f"{codec}: {name}", r["decoded_frames_per_s"]) for codec, (_, rows) in _data_sections(report).items()
            for name, r in rows.items() if "skipped" not in r]
    bar_chart(path, f"decoded frames/s on {report['machine']} (load {report['load_avg_1m'][0]})",
              [label for label, _ in bars], [("decoded frames/s", [v for _, v in bars], "{:,.0f}")],
              {"h264": (66, 133, 244), "vp9": (219, 68, 55)}, default=(15, 157, 88))


# --------------------------------------------------------------------------------- decode.py

def decode_markdown(report: dict) -> str:
    s = report["settings"]
    load = report["load_avg_1m"]
    md = [f"# Video decoding per worker on {report['machine']}", "",
          f"One process, one thread (what one DataLoader worker does): {s['videos']} videos x {s['rounds']} "
          f"round(s), each item one video -> {s['views']} clips of {s['frames']} frames (stride {s['rate']}) "
          f"at {s['size']}x{s['size']}; rows interleaved item by item. 1-minute load average {load[0]} at "
          f"the start, {load[1]} at the end. torch {report['torch']}; "
          f"{', '.join(f'{k} {v}' for k, v in report['versions'].items() if v)}.", "",
          "Files: camera-like synthetic clips (`vmae2_fast.testing.natural_video`: 1/f-noise scenes, camera "
          f"pan, moving textured objects, sensor grain, a third with a cut), {s['seconds']:g} s at 30 fps, "
          f"short side {s['short_side']}; not real footage.", ""]
    for tag, f in report["files"].items():
        rows = [r for r in report["rows"] if r["files"] == tag]
        base = next((r for r in rows if r["name"].startswith("official") and r["status"] == "ok"), None)
        md += [f"## {f['title']}", "",
               f"{f['videos']} files, {f['frames']} frames, {f['kbps']} kb/s, {f['keyframes_per_video']} "
               f"keyframes per file, {100 * f['b_frames']:.0f} % B-frames.", "",
               "| loader | clips/s | vs official | clips per CPU-second | vs official | frames decoded per video "
               "| right frames (exact) |", "|---|---|---|---|---|---|---|"]
        for r in rows:
            if r["status"] != "ok":
                md.append(f"| {r['name']} | {r['status']} | | | | | |")
                continue
            vs = f"{r['clips_per_s'] / base['clips_per_s']:.2f}x" if base else "n/a"
            vs_cpu = f"{r['clips_per_cpu_s'] / base['clips_per_cpu_s']:.2f}x" if base else "n/a"
            how = " (modelled)" if r["decoded_how"].startswith("modelled") else ""
            ex = r.get("exact")
            ex_s = f"{ex['right_frames']}/{ex['clips']} clips, max diff {ex['max_abs_diff']}" if ex else ""
            md.append(f"| {r['name']} | {r['clips_per_s']:.1f} | {vs} | {r['clips_per_cpu_s']:.1f} | {vs_cpu} | "
                      f"{r['decoded_per_video']}{how} | {ex_s} |")
        md.append("")
    md += ["clips/s: clips over the wall-clock time of the items; clips per CPU-second: over the CPU time "
           "the process spent in them (all its threads: decord decodes in a thread of its own). On a loaded "
           "machine the first also counts waits for a core, which hurt a loader that hands work between "
           "threads; the second is what an idle core would give.", "",
           "Frames decoded per video: one decode serves the item's clips (modelled: from the decoder's seek "
           "rule and the file's keyframes, without the decoder's reorder delay). Right frames: clips whose "
           "every frame is nearest to a plain decode's frame at its index; max diff: the largest pixel "
           "difference from those frames (0: the same RGB conversion as PyAV's)."]
    return "\n".join(md) + "\n"


# ------------------------------------------------------------------------------ fused_ops.py

def fused_ops_markdown(report: dict) -> str:
    rows = report["rows"]
    ok = [r for r in rows if r.get("status", "ok") == "ok"]
    ref = {(r["shape"], r["op"]): r for r in ok if r["backend"] == "reference"}
    peak = "Peak memory: growth over the inputs (CPU: process peak RSS; GPU: max allocated)."
    if report.get("processes") == "one" and report["device"] == "cpu":
        peak = "Peak memory: not measured (one process on a CPU, whose peak RSS is the process's own)."
    lines = [f"# Fused ops, forward + backward: {report['machine']}", "",
             f"batch {report['batch']}, 16x224x224 clips, tubelet 2, mask ratio 0.9, decoder ratio 0.5, "
             f"{report['dtype']}, {report['threads']} threads, median of {report['reps']}; torch {report['torch']}"
             + (f"; 1-minute load average {report['load_avg_1m'][0]} before / {report['load_avg_1m'][1]} after"
                if report["load_avg_1m"][0] is not None else "")
             + f". {peak}", "",
             "| shape | op | backend | time (ms) | speed-up | peak extra memory (MiB) | memory vs reference |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in ok:
        b = ref.get((r["shape"], r["op"]))
        sp = f"{b['ms'] / r['ms']:.2f}x" if b else "-"
        measured = r["peak_mib"] is not None
        mem = f"{r['peak_mib'] / b['peak_mib']:.2f}x" if measured and b and b["peak_mib"] > 0 else "-"
        lines.append(f"| {r['shape']} | {r['op']} | {r['backend']} | {r['ms']:.1f} | {sp} | "
                     f"{_fmt(r['peak_mib'], '.1f', none='n/a')} | {mem} |")
    failed = [r for r in rows if r.get("status", "ok") != "ok"]
    if failed:
        lines += ["", "Failed (the run went on with the next measurement):", ""]
        lines += [f"- {r['shape']} / {r['op']} / {r['backend']}: {r['error']}" for r in failed]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------- attention_check.py

def attention_markdown(report: dict) -> str:
    md = [f"# Attention backends on {report['machine']}", "",
          f"torch {report['torch']}; forward + backward of (batch, heads, tokens, head dim) = "
          f"({report['batch']}, {report['heads']}, {report['tokens']}, d), median of {report['reps']}; "
          "errors relative to the explicit computation in float64. 1-minute load average "
          f"{report['load_avg_1m'][0]} before / {report['load_avg_1m'][1]} after.", "",
          "| dtype | head dim | backend | ms | vs math | output error | gradient error |",
          "|---|---|---|---:|---:|---:|---:|"]
    skipped = []
    for c in report["rows"]:
        math_ms = c["backends"].get("math", {}).get("ms")
        for name, r in c["backends"].items():
            if not r["runs"]:
                skipped.append(f"- {c['dtype']}, head dim {c['head_dim']}, {name}: {r['why_not']}")
                continue
            star = " (auto)" if name == c["auto"] else ""
            vs = f"{math_ms / r['ms']:.2f}x" if math_ms else "-"
            md.append(f"| {c['dtype']} | {c['head_dim']} | {name}{star} | {r['ms']:.3f} | "
                      f"{vs} | {r['out_rel_err']:.1e} | {r['grad_rel_err']:.1e} |")
    md += ["", "`--attention auto`: " + "; ".join(sorted({f"{c['dtype']}: {c['auto']} ({c['auto_reason']})"
                                                         for c in report["rows"]}))]
    if skipped:
        md += ["", "Backends that do not run here, and why:", "", *skipped]
    return "\n".join(md) + "\n"


# ------------------------------------------------------------------------------- gpu_tests.py

def pytest_markdown(report: dict) -> str:
    rows = report["rows"]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    env = [f"torch {report['torch']}", f"pytest {report['pytest']}"]
    if report.get("cuda"):
        env.append(f"CUDA {report['cuda']}, driver {report.get('driver') or 'unknown'}")
    md = [f"# Tests on {report['machine']}{': ' + report['tag'] if report.get('tag') else ''}", "",
          f"`pytest {' '.join(report['args'])}`; {', '.join(env)}; 1-minute load average "
          f"{report['load_avg_1m'][0]} before / {report['load_avg_1m'][1]} after.", "",
          "**" + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + "**" if counts else "No test ran.", ""]
    bad = [r for r in rows if r["outcome"] in ("failed", "error", "xpassed")]
    if bad:
        md += ["| test | outcome | seconds | message |", "|---|---|---:|---|"]
        md += [f"| `{r['nodeid']}` | {r['outcome']} ({r['phase']}) | {r['seconds']:.1f} | "
               f"{r['message'].replace('|', '/')} |" for r in bad]
        md.append("")
    ran = sorted((r for r in rows if r["outcome"] not in ("skipped",)), key=lambda r: -r["seconds"])[:10]
    if ran:
        md += ["Slowest:", "", "| test | outcome | seconds |", "|---|---|---:|"]
        md += [f"| `{r['nodeid']}` | {r['outcome']} | {r['seconds']:.1f} |" for r in ran]
        md.append("")
    reasons: dict[str, int] = {}
    for r in rows:
        if r["outcome"] == "skipped":
            reasons[r["message"]] = reasons.get(r["message"], 0) + 1
    if reasons:
        md += ["Skipped, by reason:", ""] + [f"- {n} x {why}" for why, n in sorted(reasons.items(), key=lambda x: -x[1])]
    return "\n".join(md) + "\n"


# ------------------------------------------------------------------------------- gpu_suite.py

def _step_records_line(folder: Path, rec: dict) -> str:
    """One records file of a step: its rows and whether its run finished; for a pytest run the
    outcomes, for a fused-op run the failures."""
    if "error" in rec:
        return f"`{rec['file']}`: unreadable ({rec['error']})"
    said = f"`{rec['file']}`: {rec['rows']} record(s), " + ("finished" if rec["complete"] else "**stopped before it finished**")
    if rec["bench"] in ("pytest", "fused-ops") and (folder / rec["file"]).exists():
        rows = read_records(folder / rec["file"])[1]
        key = "outcome" if rec["bench"] == "pytest" else "status"
        counts: dict[str, int] = {}
        for r in rows:
            counts[r.get(key, "ok")] = counts.get(r.get(key, "ok"), 0) + 1
        said += " (" + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + ")"
    return said


def _suite_throughput_rows(folder: Path, files: list) -> list[str]:
    """The suite's summary table: every throughput row its steps measured, with its ratio."""
    lines = []
    for f in files:
        path = folder / f
        if not path.exists():
            continue
        report = load(path)
        if not report["rows"]:          # stopped before its first measurement
            continue
        s = throughput_summary(report)
        ac = report.get("official_checkpointing")
        run = f"{Path(f).parent.name}: {report['tag']}" if report["tag"] else Path(f).parent.name
        for r in s["rows"]:
            if report["batch"] == "sweep" and r["status"] == "ok" and s["results"].get(r["name"]) is not r:
                continue        # a sweep: each implementation's best batch only
            what = f"{_label(r, report)}" + (f" (ckpt {ac})" if r["kind"] == "official" else "")
            if r["status"] != "ok":
                lines.append(f"| {report['model']} | {run} | {what} | {r['batch']} | {r['status']} | | | | |")
                continue
            # a run without a baseline row compares its rows with its first: no ratio to show here
            vs = "" if r["vs"] is None or s["base"] not in ("official", "re-statement") else f"{r['vs']:.2f}x"
            lines.append(f"| {report['model']} | {run} | {what} | {r['batch']} | {r['clips_per_s']:.1f} "
                         f"| {_fmt(r['mfu'], '.1f', 100, 'n/a')} | {_fmt(r['peak_mem_per_clip_gib'], '.3f', none='n/a')} "
                         f"| {_fmt(r.get('first_step_s'), '.1f', none='')} | {vs} |")
    return lines


def gpu_suite_markdown(report: dict) -> str:
    folder = Path(report["path"]).parent
    rows = report["rows"]
    seconds = sum(r["seconds"] for r in rows)
    pk = report["packages"]
    present = ", ".join(f"{k} {v}" for k, v in pk.items() if v)
    missing = ", ".join(k for k, v in pk.items() if not v)
    md = [f"# GPU suite ({report['device']} mode) on {report['gpu'] or 'a CPU'}: {seconds:.0f} s of steps, "
          f"budget {report['budget_s']} s", "",
          f"Python {report['python']}, torch's CUDA {report['torch_cuda']}; {present}; not installed: "
          f"{missing or 'none'}. Caps {report['caps_s']} s + set-up {report['setup_cap_s']} s + summary "
          f"{report['render_cap_s']} s; 1-minute load average {report['load_avg_1m'][0]} before / "
          f"{report['load_avg_1m'][1]} after.", "",
          "| step | status | seconds | limit (s) | note |", "|---|---|---:|---:|---|"]
    md += [f"| {r['step']} | {r['status']} | {r['seconds']:.0f} | {r['limit_s']} | {r['note'].replace('|', '/')} |"
           for r in rows]
    done = {r["step"] for r in rows}
    not_reached = [p["step"] for p in report["plan"] if p["step"] not in done]
    if not_reached and not report["complete"]:
        md += [f"| {name} | not reached: the run stopped before it | | | |" for name in not_reached]
    listed = [f"- {r['step']}: {_step_records_line(folder, rec)}" for r in rows for rec in r["records"]]
    if listed:
        md += ["", "Records of each step (`<step>/*.jsonl`; reports beside them):", "", *listed]
    files = [rec["file"] for r in rows for rec in r["records"] if rec.get("bench") == "throughput"]
    table = _suite_throughput_rows(folder, files)
    if table:
        md += ["", "## Pre-training throughput", "",
               "| model | step: run | implementation | batch | clips/s | MFU % | peak GiB / clip | first step (s) | vs baseline |",
               "|---|---|---|---|---:|---:|---:|---:|---:|", *table, "",
               "vs baseline: the baseline's step time (the official code with `--official-repo`, else the "
               "re-statement) over the row's, at the same batch in the same run; a sweep shows each "
               "implementation's best batch. First step: compilation and first allocations."]
    return "\n".join(md) + "\n"


# -------------------------------------------------------------------------------- reencode.py

def reencode_markdown(report: dict) -> str:
    encode = [r for r in report["rows"] if r["kind"] == "encode"]
    decode = [r for r in report["rows"] if r["kind"] == "decode"]
    clip, idx, workers = report["clip"], report["clip"]["indices"], report["workers"]
    load = (f" 1-minute load average {report['load_avg_1m'][0]} before / {report['load_avg_1m'][1]} after."
            if report["load_avg_1m"][0] is not None else "")
    md = [f"# Re-encoder on {report['machine']}", "",
          f"`python bench/reencode.py --workers {workers}`; defaults: short side 320 (smaller "
          f"videos kept), GOP 16, H.264 crf 23 preset fast, VP9 crf 32 (good, cpu-used 4); "
          f"{workers} worker processes. PyAV {report['versions']['av']}.{load}", "",
          "| codec | input | videos | frames | s | frames/s | files/s | output MB |",
          "|---|---|---|---|---|---|---|---|"]
    md += [f"| {r['codec']} | {r['input']} | {r['videos']} | {r['frames']} | {r['seconds']} | "
           f"{r['frames_per_s']} | {r['files_per_s']} | {r['bytes'] / 1e6:.2f} |" for r in encode]
    md += ["", f"PyAV decode of one {len(idx)}x{idx[1] - idx[0]} clip (frames {idx[0]}..{idx[-1]}) "
           f"of the {clip['seconds']} s clip, one thread, median of {report['repeats']}:", "",
           "| video | access | frames decoded | ms per clip | vs source from start |",
           "|---|---|---|---|---|"]
    base = decode[0]["ms_per_clip"] if decode else None
    md += [f"| {r['video']} | {'seek to keyframe' if r['seek'] else 'from frame 0'} | "
           f"{r['frames_decoded']} | {r['ms_per_clip']} | {base / r['ms_per_clip']:.2f}x |"
           for r in decode]
    return "\n".join(md) + "\n"


# bench/shards.py: the readers' names in its report
READER_NAMES = {"file": "file reader (list)", "local": "shards (local)", "s3": "shards (s3)"}


def summarise(report: dict) -> list:
    """One dict per row (reader x workers), in the order first measured: median and range of
    clips/s and videos/s over its rounds."""
    rows = {}
    for r in report["rows"]:
        if r.get("kind") == "epoch":
            rows.setdefault(r["name"], []).append(r)
    out = []
    for name, rs in rows.items():
        cps = [x["clips_per_s"] for x in rs]
        out.append({"name": name, "reader": rs[0]["reader"], "workers": rs[0]["workers"], "rounds": len(rs),
                    "clips_per_s": statistics.median(cps), "min": min(cps), "max": max(cps),
                    "videos_per_s": statistics.median(x["videos_per_s"] for x in rs),
                    "startup_s": statistics.median(x["startup_s"] for x in rs)})
    return out


def shards_markdown(report: dict) -> str:
    s, facts, s3 = report["settings"], report["shard_set"], report["s3"]
    rows = summarise(report)
    file_rate = {r["workers"]: r["clips_per_s"] for r in rows if r["reader"] == "file"}
    threads = f", {report['threads']} intra-op threads" if report.get("threads") else ""
    where = (f"S3: SeaweedFS on loopback ({s3['endpoint']}; started in {s3['start_s']} s, upload "
             f"{s3['upload_s']} s)" if s3.get("endpoint") else f"S3: {s3.get('skipped') or 'not asked for'}")
    md = [f"# Shard reader against file reader on {report['machine']}", "",
          f"Videos: {report['source']} ({facts['samples']} videos, {facts['videos_bytes'] / 2**20:.1f} MiB), "
          f"list `{report['list']}`; shard set: {facts['shards']} shards of at most "
          f"{facts['shard_size'] / 2**20:.1f} MiB. {where}. Pre-training loader (PyAV): "
          f"{s['frames']} frames at rate {s['rate']}, {s['size']}x{s['size']}, {s['batch']} videos x "
          f"{s['num_sample']} views a batch; {s['rounds']} rounds, rows rotating, one epoch each "
          f"(its first batch untimed); torch {report['torch']}{threads}; 1-minute load average "
          f"{report['load_avg_1m'][0]} before / {report['load_avg_1m'][1]} after.", "",
          "| reader | workers | clips/s (median) | min - max | videos/s | vs file reader | first batch (s) |",
          "|---|---|---|---|---|---|---|"]
    for r in rows:
        base = file_rate.get(r["workers"])
        ratio = f"{r['clips_per_s'] / base:.2f}x" if base else "-"
        md.append(f"| {READER_NAMES[r['reader']]} | {r['workers']} | **{r['clips_per_s']:.1f}** | "
                  f"{r['min']:.1f} - {r['max']:.1f} | {r['videos_per_s']:.2f} | {ratio} | {r['startup_s']:.2f} |")
    fed = [r for r in report["rows"] if r.get("kind") == "fed-step"]
    if fed:
        md += ["", "Fed step (bench/fed_step.py, the same clips, the largest worker count):", "",
               "| data | fed clips/s | waiting for data | report |", "|---|---|---|---|"]
        for r in fed:
            md.append(f"| {READER_NAMES[r['reader']]} | {r['fed_clips_per_s']:.2f} | "
                      f"{100 * r['data_wait_frac']:.1f} % | `{r['records'][:-6]}.md` |")
    return "\n".join(md) + "\n"


# bench name (the run record's `bench`, the result files' first word) -> (Markdown, chart or None)
LAYOUTS = {
    "throughput": (throughput_markdown, throughput_chart),
    "step-breakdown": (step_breakdown_markdown, None),
    "fed-step": (fed_step_markdown, None),
    "data": (data_markdown, data_chart),
    "fused-ops": (fused_ops_markdown, None),
    "attention": (attention_markdown, None),
    "reencode": (reencode_markdown, None),
    "pytest": (pytest_markdown, None),
    "gpu-suite": (gpu_suite_markdown, None),
    "decode": (decode_markdown, None),
    "shards": (shards_markdown, None),
}


def _stale(path: Path) -> bool:
    md = path.with_suffix(".md")
    return not md.exists() or md.stat().st_mtime < path.stat().st_mtime


def main(argv=None) -> int:
    import argparse
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="RECORDS_OR_FOLDER",
                   help="records files (.jsonl), or folders: their records whose report is missing or older")
    args = p.parse_args(argv)
    files = []
    for given in map(Path, args.paths):
        if given.is_dir():
            files += [f for f in sorted(given.glob("*.jsonl")) if _stale(f)]
        elif given.is_file():
            files.append(given)
        else:
            print(f"error: {given} does not exist", file=sys.stderr)
            return 2
    try:
        written = [render(f) for f in files]
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if len(args.paths) == 1 and Path(args.paths[0]).is_file():
        print(written[0].read_text())
    else:
        print("\n".join(f"wrote {w}" for w in written) or "nothing to render")
    return 0


if __name__ == "__main__":
    sys.exit(main())
