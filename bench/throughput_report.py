"""The files of a bench/throughput.py run: the JSON record, the Markdown tables and a PNG bar chart
of clips/s and MFU (drawn with PIL, a dependency of the package; matplotlib is not needed)."""
from __future__ import annotations

import json
from pathlib import Path

from step_common import result_stem

__all__ = ["write", "baseline_title", "bar_chart"]


def baseline_title(report: dict) -> str:
    if report["baseline"] == "official-code":
        c = report["official_code"]
        commit = f" at {c['commit'][:7]}" if c["commit"] else ""
        return f"the official code (OpenGVLab/VideoMAEv2{commit}, timm: {c['timm']})"
    return "the re-statement of the official code (`vmae2_fast/testing/baseline.py`), not the official code itself"


def _settings(r: dict) -> str:
    s = r["settings"]
    if r["kind"] == "fast":
        return (f"{'compile' if s['compile'] else 'eager'}, checkpointing {s['activation_checkpointing']}, "
                f"attention {s['attention']}, parallelism {s['parallelism']}")
    if r["kind"] == "hf":
        return "transformers VideoMAEForPreTraining, encoder masking only"
    return f"checkpointing {s.get('checkpointing', 'none')}"


def _fmt(x, spec: str, scale: float = 1.0, none: str = "") -> str:
    return none if x is None else format(x * scale, spec)


def _row(r: dict, label: str) -> str:
    if r["status"] != "ok":
        return f"| {label} | {_settings(r)} | {r['batch']} | {r['status']} | | | | | | | |"
    ratio = "" if r["vs_official"] is None else f"{r['vs_official']:.2f}x"
    if r.get("paired_vs_official") is not None:
        ratio += f" ({r['paired_vs_official']:.2f}x)"
    return (f"| {label} | {_settings(r)} | {r['batch']} | {r['median_step_s']:.4f} | {r['clips_per_s']:.2f} "
            f"| {r['tokens_per_s']:,.0f} | {r['tflops']:.3g} | {_fmt(r['mfu'], '.1f', 100)} "
            f"| {_fmt(r['hfu'], '.1f', 100)} | {_fmt(r['peak_mem_per_clip_gib'], '.3f', none='n/a')} | {ratio} |")


HEADER = ["| implementation | settings | batch | step (s) | clips/s | tokens/s | TFLOP/s | MFU % | HFU % "
          "| peak GiB / clip | vs official |", "|---|---|---|---|---|---|---|---|---|---|---|"]


def _label(r: dict, report: dict) -> str:
    return f"official ({report['baseline']})" if r["name"] == "official" else r["name"]


def markdown(report: dict) -> str:
    env = [f"torch {report['torch']}"]
    if report.get("cuda"):
        env.append(f"CUDA {report['cuda']}, cuDNN {report['cudnn']}, driver {report.get('driver') or 'unknown'}")
    if report.get("threads"):
        env.append(f"{report['threads']} CPU thread{'s' * (report['threads'] != 1)}")
    env.append(f"1-minute load average {report['load_avg_1m'][0]} before / {report['load_avg_1m'][1]} after")
    peak = (f"{report['peak_tflops']:g} TFLOP/s ({report['peak_source']})" if report["peak_tflops"]
            else report["peak_source"])
    md = [f"# Pre-training throughput on {report['machine']}: {report['model']}, {report['precision']}, "
          f"against {baseline_title(report)}", "",
          f"Baseline: **{report['baseline']}**. {report['model']} ({report['params_m']} M params), clips "
          f"{report['clip']} ({report['tokens_per_clip']} tokens), mask {report['mask_ratio']} / decoder "
          f"{report['decoder_mask_ratio']}, fused ops `{report['fused_ops']}`, {report['schedule']} timing, median "
          f"of {report['steps']} steps after {report['warmup']} warm-up; {'; '.join(env)}. Peak: {peak}.", ""]
    sweep = report["batch"] == "sweep"
    md += ["## Best batch of each implementation" if sweep else "## Results", "", *HEADER]
    md += [_row(r, _label(r, report)) for r in report["results"].values()]
    failed = [r for r in report["records"] if r["status"] != "ok" and r["name"] not in report["results"]]
    md += [_row(r, _label(r, report)) for r in failed]
    if sweep:
        md += ["", "## Every batch", "", *HEADER]
        md += [_row(r, _label(r, report)) for r in sorted(report["records"], key=lambda r: (r["name"], r["batch"]))]
    md.append("")
    if report["speedup"] is not None:
        paired = f" (median of the per-round ratios: {report['paired_speedup']:.2f}x)" if report["paired_speedup"] else ""
        md.append(f"Speed-up of the first fast row (official step time / its step time, batch "
                  f"{report['speedup_batch']}): **{report['speedup']:.2f}x**{paired}.")
    if "restatement_over_official" in report:
        paired = report.get("paired_restatement_over_official")
        md.append(f"Re-statement step time / official-code step time: {report['restatement_over_official']:.2f}"
                  + (f" (per-round median {paired:.2f})" if paired else "") + ".")
    md += ["", "Columns: clips/s = batch / median step; tokens/s = clips/s x the clip's "
           f"{report['tokens_per_clip']} cubes; TFLOP/s = clips/s x the model's training FLOPs per clip "
           "(6 x multiply-adds of what the model must compute: dual masking for official and fast, "
           "VideoMAE V1 decoding for hf); MFU = that / the peak; HFU counts what each implementation "
           "computes (the official code's Conv3d over every cube, recomputed blocks); peak GiB / clip = "
           "what a step allocates above the resident weights and optimiser states, per clip (GPU only); "
           "vs official = official step time / this one's at the same batch (above 1: faster; in "
           "brackets, the median of the per-round ratios when interleaved)."]
    return "\n".join(md) + "\n"


def write(report: dict, out_dir: Path) -> Path:
    stem = result_stem(report, out_dir, "throughput")
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    rows = list(report["results"].values())
    mfu = all(r["mfu"] is not None for r in rows) and rows
    bar_chart(stem.with_suffix(".png"),
              f"{report['model']} {report['clip']} {report['precision']} on {report['machine']}",
              [_label(r, report) + ("" if report["batch"] != "sweep" else f" (b{r['batch']})") for r in rows],
              [("clips/s", [r["clips_per_s"] for r in rows], "{:.2f}"),
               ("MFU %", [100 * r["mfu"] for r in rows], "{:.1f}") if mfu else
               ("TFLOP/s (no peak known: MFU blank)", [r["tflops"] for r in rows], "{:.3g}")])
    return stem


def _font(size: int):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)     # a scalable font (Pillow >= 10.1 with FreeType)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def bar_chart(path: Path, title: str, labels: list[str], panels: list[tuple[str, list[float], str]]) -> None:
    """Horizontal bars, one row per label, one panel per (heading, values, number format)."""
    from PIL import Image, ImageDraw
    row, top, label_w, panel_w, pad = 30, 64, 250, 360, 16
    width = label_w + len(panels) * (panel_w + pad) + pad
    height = top + row * max(len(labels), 1) + pad
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    d.text((pad, 10), title, fill="black", font=_font(16))
    colours = {"official": (120, 120, 120), "re-statement": (175, 175, 175), "hf": (230, 140, 40)}
    for p, (heading, values, fmt) in enumerate(panels):
        x0 = label_w + p * (panel_w + pad)
        d.text((x0, 38), heading, fill="black", font=_font(14))
        top_value = max([v for v in values if v] + [1e-12])
        for i, (name, v) in enumerate(zip(labels, values)):
            y = top + i * row
            if p == 0:
                d.text((pad, y + 6), name[:36], fill="black", font=_font(13))
            colour = next((c for k, c in colours.items() if name.startswith(k)), (50, 110, 200))
            length = int((panel_w - 70) * (v or 0) / top_value)
            d.rectangle([x0, y + 4, x0 + max(length, 1), y + row - 6], fill=colour)
            d.text((x0 + length + 6, y + 6), fmt.format(v), fill="black", font=_font(13))
    img.save(path)
