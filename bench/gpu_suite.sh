#!/usr/bin/env bash
# The GPU suite in one call: the GPU tests, the fused-kernel benchmark, the attention-backend check
# and the pre-training throughput report (ViT-B batch sweep; ViT-g in bf16 with and without
# torch.compile and activation checkpointing), every result written where the caller says.
#
#   bash bench/gpu_suite.sh                        # CUDA; results in $OUT (the device machine's folder)
#   bash bench/gpu_suite.sh --out results/h100     # or any folder
#   bash bench/gpu_suite.sh --device cpu --out /tmp/suite   # CPU mode: the same steps at small shapes
#   bash bench/gpu_suite.sh --wheels wheels/ ...   # first install the wheels brought along (see README)
#   bash bench/gpu_suite.sh --only vit_g-compile   # some steps only (--skip to leave some out)
#   bash bench/gpu_suite.sh --official-repo ~/src/VideoMAEv2 ...   # baseline: the official code (needs einops)
#
# It never installs torch or triton: it uses the Python it finds (`$PYTHON`, else python3), runs
# this checkout with `pip install --no-deps -e .` (or from the source folder when pip cannot), and
# installs only the wheels given with --wheels (parts `X.whl.part-*` are joined into X.whl first:
# DALI's wheel is larger than what one transfer carries). What needs a package that is missing
# (PyAV, DALI, flash-attn, pytest, transformers) is skipped with a line that says so.
#
# Every step has a time cap and the whole suite a budget (--budget, default 530 s: under 9 minutes),
# so the call ends in time even when a step hangs; a step that runs out of time is reported as
# such. The caps are estimates (no GPU was at hand when they were set): adjust with --budget or
# split the steps over several calls with --only. Writes into the folder: one result file set per
# step (records as JSON lines, written as each measurement completes, so that a step stopped at
# its cap keeps what it measured; Markdown; PNG), logs/<step>.log, environment.txt, suite.json
# and suite.md (each step's status, time and note). Exit status: 0 when no step failed, 1 otherwise, 2 for bad usage.
set -uo pipefail

usage() { sed -n '2,/^[^#]/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; }   # the comment above
die() { echo "error: $*" >&2; exit 2; }

DEVICE=cuda
DEST="${OUT:-}"
WHEELS=""
BUDGET=530
ONLY=""
SKIP=""
OFFICIAL=""
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE="${2:-}"; shift 2 ;;
        --out) DEST="${2:-}"; shift 2 ;;
        --wheels) WHEELS="${2:-}"; shift 2 ;;
        --budget) BUDGET="${2:-}"; shift 2 ;;
        --only) ONLY=",${2:-},"; shift 2 ;;
        --official-repo) OFFICIAL="${2:-}"; shift 2 ;;
        --skip) SKIP=",${2:-},"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
case "$DEVICE" in cuda|cpu) ;; *) die "--device must be cuda or cpu, got '$DEVICE'" ;; esac
[ -n "$DEST" ] || die "say where the results go: --out DIR, or set OUT"
[[ "$BUDGET" =~ ^[0-9]+$ ]] || die "--budget takes whole seconds, got '$BUDGET'"
if [ -n "$WHEELS" ] && [ ! -d "$WHEELS" ]; then die "--wheels $WHEELS is not a folder"; fi
if [ -n "$OFFICIAL" ]; then
    [ -d "$OFFICIAL" ] || die "--official-repo $OFFICIAL is not a folder"
    OFFICIAL="$(cd "$OFFICIAL" && pwd)"
fi

PY="${PYTHON:-$(command -v python3 || command -v python)}"
[ -n "$PY" ] || die "no python3 on PATH (set PYTHON)"
case "$PY" in /*) ;; */*) PY="$PWD/$PY" ;; *) PY="$(command -v "$PY")" || die "cannot find $PY" ;; esac
[ -x "$PY" ] || die "cannot run $PY"
mkdir -p "$DEST/logs" || die "cannot create $DEST"
DEST="$(cd "$DEST" && pwd)"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 2
export VMAE2_FAST_CACHE="${VMAE2_FAST_CACHE:-$REPO/.cache}" PYTHONUNBUFFERED=1
START=$SECONDS
SUMMARY="$DEST/logs/suite.tsv"
: > "$SUMMARY"

say() { echo "[gpu_suite] $*"; }
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$SUMMARY"; say "$1: $2 (${3} s)${4:+ - $4}"; }
wanted() {
    if [ -n "$ONLY" ] && [[ "$ONLY" != *",$1,"* ]]; then return 1; fi
    if [[ "$SKIP" == *",$1,"* ]]; then return 1; fi
    return 0
}
has() { "$PY" -c "import $1" > /dev/null 2>&1; }     # importable (an installed but broken one is not)

# step NAME CAP_SECONDS COMMAND...: run under `timeout` (the cap, or what is left of the budget)
step() {
    local name="$1" cap="$2"; shift 2
    wanted "$name" || return 0
    local left=$(( BUDGET - (SECONDS - START) ))
    if [ "$left" -lt 20 ]; then record "$name" skipped 0 "the suite's budget (${BUDGET} s) is spent"; return 0; fi
    [ "$cap" -gt "$left" ] && cap="$left"
    local t0=$SECONDS rc
    say "$name: running (at most ${cap} s; log: logs/$name.log)"
    timeout --kill-after=10 "$cap" "$@" > "$DEST/logs/$name.log" 2>&1
    rc=$?
    local took=$(( SECONDS - t0 ))
    if [ "$rc" -eq 0 ]; then
        record "$name" ok "$took" "${NOTE:-}"
    elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        # the records it measured are on disk (written as each completes): their report says the run stopped
        "$PY" bench/render.py "$DEST" >> "$DEST/logs/$name.log" 2>&1
        record "$name" "timed out" "$took" "stopped after its cap of ${cap} s; the measurements it finished are in its report"
    else
        record "$name" failed "$took" "exit status $rc"
        tail -n 15 "$DEST/logs/$name.log" | sed 's/^/    /'
    fi
}
skip() { wanted "$1" && record "$1" skipped 0 "$2"; return 0; }

# --- set-up: wheels brought along, this checkout, what is missing -------------------------------
has torch || die "$PY has no torch: this suite uses the torch already installed and never installs one"
if [ -n "$WHEELS" ]; then
    for first in "$WHEELS"/*.whl.part-aa; do
        [ -e "$first" ] || continue
        whl="${first%.part-aa}"
        cat "${whl}".part-* > "$whl.joining" && mv "$whl.joining" "$whl" && say "joined $(basename "$whl")"
    done
    # by name, not by file: pip keeps what is already installed (numpy, pillow...) as it is
    mapfile -t to_install < <(ls "$WHEELS"/*.whl 2>/dev/null | sed 's#.*/##; s/-.*//' | sort -u | grep -Evx 'torch|triton')
    if [ "${#to_install[@]}" -gt 0 ]; then
        t0=$SECONDS
        if "$PY" -m pip install --no-index --find-links "$WHEELS" "${to_install[@]}" > "$DEST/logs/wheels.log" 2>&1; then
            record wheels ok $(( SECONDS - t0 )) "${#to_install[@]} wheel(s) from $WHEELS"
        else
            record wheels failed $(( SECONDS - t0 )) "pip could not install them: see logs/wheels.log"
        fi
    fi
fi
if ! (cd / && "$PY" -c "import vmae2_fast" 2>/dev/null); then
    if "$PY" -m pip install --no-deps --no-build-isolation -q -e . > "$DEST/logs/install.log" 2>&1; then
        say "installed this checkout with pip install --no-deps -e ."
    else
        say "pip could not install this checkout (logs/install.log): running it from $REPO"
        export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
    fi
fi
for need in numpy PIL tqdm; do
    has "$need" || die "$PY lacks '$need', which everything here needs: bring its wheel (--wheels DIR)"
done
{
    "$PY" - "$DEVICE" <<'EOF'
import importlib, platform, sys
import torch
device = sys.argv[1]
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
if device == "cuda":
    if not torch.cuda.is_available():
        sys.exit("error: --device cuda but torch sees no CUDA device (use --device cpu for the CPU mode)")
    p = torch.cuda.get_device_properties(0)
    print(f"GPU {p.name}, {p.total_memory / 2**30:.1f} GiB, compute capability {p.major}.{p.minor}")
for name in ("triton", "pytest", "av", "nvidia.dali", "flash_attn", "flash_attn_interface", "xformers",
             "transformers", "einops"):
    try:
        module = importlib.import_module(name)
        print(f"{name}: {getattr(module, '__version__', 'installed')}")
    except Exception as exc:  # noqa: BLE001 - missing or broken: either way the steps that need it skip
        print(f"{name}: not usable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
EOF
} > "$DEST/environment.txt" 2>&1 || { cat "$DEST/environment.txt"; exit 2; }
command -v nvidia-smi > /dev/null && nvidia-smi >> "$DEST/environment.txt" 2>&1
sed 's/^/    /' "$DEST/environment.txt" | head -n 14

# --- the steps (CUDA: full shapes; CPU: the same commands at small shapes) -----------------------
TP=("$PY" bench/throughput.py --device "$DEVICE" --out "$DEST")
[ -n "$OFFICIAL" ] && TP+=(--official-repo "$OFFICIAL")     # else the baseline is the re-statement
if [ "$DEVICE" = cuda ]; then
    PYTEST_ARGS=(-m gpu tests)
    KERNELS=(--device cuda --batch 32 --reps 5)
    ATTENTION=(--device cuda)
    VIT_B=(--model vit_b --precision bf16 --sweep --batches 8 16 32 64 128 256 --time-budget 90 --steps 5 --warmup 2)
    VIT_G=(--model vit_g --precision bf16 --batch 8 --official-checkpointing full --steps 3 --warmup 1)
    CAPS=(150 60 30 120 110 150)
else    # small shapes, fp32 (bf16 matrix products are slow to compile and run on most CPUs)
    PYTEST_ARGS=(-m gpu tests)          # every GPU test is collected and skips with its reason
    KERNELS=(--device cpu --batch 1 --shapes vit_b --reps 1)
    ATTENTION=(--device cpu --batch 1 --tokens 64 --reps 2)
    SMALL=(--model vit_micro --frames 4 --size 32 --mask-ratio 0.75)
    VIT_B=("${SMALL[@]}" --sweep --batches 1 2 4 --steps 2 --warmup 1)
    VIT_G=("${SMALL[@]}" --batch 2 --official-checkpointing full --steps 2 --warmup 1)
    CAPS=(90 60 30 60 60 90)
fi

if has pytest; then
    # Test files that import PyAV themselves cannot even be collected without it: leave those out
    # (and only those: any other collection error still fails the step).
    NOTE=""; IGNORE=()
    if ! has av && wanted pytest-gpu; then
        cat > "$DEST/logs/collect.py" <<'EOF'
import sys

import pytest


class NeedsPyAV:
    def __init__(self):
        self.files = []

    def pytest_collectreport(self, report):
        if report.failed and "No module named 'av'" in str(report.longrepr):
            self.files.append(report.nodeid)


plugin = NeedsPyAV()
pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", *sys.argv[2:]], plugins=[plugin])
with open(sys.argv[1], "a") as f:
    f.writelines(name + "\n" for name in plugin.files)
EOF
        # once a failed import has left half a package behind, whether the next file imports
        # depends on the order: collect again without the files found until none is new
        : > "$DEST/logs/needs-pyav.txt"
        for _round in 1 2 3 4 5; do
            before=$(wc -l < "$DEST/logs/needs-pyav.txt")
            mapfile -t needs_av < "$DEST/logs/needs-pyav.txt"
            IGNORE=(); for f in "${needs_av[@]}"; do IGNORE+=("--ignore=$f"); done
            "$PY" - "$DEST/logs/needs-pyav.txt" "${IGNORE[@]}" "${PYTEST_ARGS[@]}" >> "$DEST/logs/pytest-collect.log" 2>&1 < "$DEST/logs/collect.py"
            [ "$(wc -l < "$DEST/logs/needs-pyav.txt")" -eq "$before" ] && break
        done
        mapfile -t needs_av < "$DEST/logs/needs-pyav.txt"
        IGNORE=(); for f in "${needs_av[@]}"; do IGNORE+=("--ignore=$f"); done
        if [ "${#needs_av[@]}" -gt 0 ]; then
            NOTE="${#needs_av[@]} test files need PyAV (not installed) and were left out: logs/needs-pyav.txt"
            say "PyAV is not installed: $NOTE"
        fi
    fi
    step pytest-gpu "${CAPS[0]}" "$PY" -m pytest -q -p no:cacheprovider -rs --junitxml="$DEST/pytest-gpu.xml" \
        "${IGNORE[@]}" "${PYTEST_ARGS[@]}"
    NOTE=""
else
    skip pytest-gpu "pytest is not installed: bring its wheels (pytest, pluggy, iniconfig) with --wheels"
fi
step kernels "${CAPS[1]}" "$PY" bench/fused_ops.py "${KERNELS[@]}" --out "$DEST"
step attention "${CAPS[2]}" "$PY" bench/attention_check.py "${ATTENTION[@]}" --out "$DEST"
[ "$DEVICE" = cpu ] || has flash_attn || say "flash-attn is not installed: the attention check lists flash-attn2/3 as not running (pip install 'vmae2_fast[flash]')"
IMPLS=(official fast)
if has transformers; then IMPLS+=(hf); else say "transformers is not installed: no hf rows"; fi
step vit_b-sweep "${CAPS[3]}" "${TP[@]}" "${VIT_B[@]}" --impl "${IMPLS[@]}"
step vit_g-eager "${CAPS[4]}" "${TP[@]}" "${VIT_G[@]}" --impl official fast --compile off --activation-checkpointing none full --tag eager
step vit_g-compile "${CAPS[5]}" "${TP[@]}" "${VIT_G[@]}" --impl official fast --compile on --activation-checkpointing none full --tag compile
# decoding (bench/data.py): PyAV always, DALI where it is installed (NVDEC on a GPU)
if [ "$DEVICE" = cuda ]; then
    DATA=(--synthetic 24 --codecs h264 vp9 --batch-size 8 --views 2 --frames 16 --size 224 --epochs 1); DALI=dali-gpu
else
    DATA=(--synthetic 12 --synthetic-frames 48 --synthetic-size 96 --codecs vp9 --batch-size 2 --views 1
          --frames 8 --size 64 --workers 1 --epochs 1); DALI=dali-cpu
fi
LOADERS=(pyav)
if has nvidia.dali; then LOADERS+=("$DALI"); else
    say "DALI is not installed: GPU decoding (NVDEC) is not measured; bring its wheel in parts with --wheels (README)"; fi
if has av; then
    step data 90 "$PY" bench/data.py "${DATA[@]}" --loaders "${LOADERS[@]}" \
        --work-dir "$VMAE2_FAST_CACHE/bench-suite" --out "$DEST"
else
    skip data "PyAV is not installed: the decoding benchmark and the fed step (bench/fed_step.py) need it; bring its cp312 wheel with --wheels"
fi

# --- the summary ----------------------------------------------------------------------------------
"$PY" - "$SUMMARY" "$DEST" "$DEVICE" "$(( SECONDS - START ))" <<'EOF'
import json, sys
from pathlib import Path
summary, dest, device, seconds = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
steps = [dict(zip(("step", "status", "seconds", "note"), line.rstrip("\n").split("\t")))
         for line in open(summary) if line.strip()]
for s in steps:
    s["seconds"] = int(s["seconds"])
files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file() and p.parent.name != "logs")
env = (dest / "environment.txt").read_text().splitlines()[:2]
(dest / "suite.json").write_text(json.dumps({"device": device, "seconds": seconds, "environment": env,
                                             "steps": steps, "files": files}, indent=2) + "\n")
md = [f"# GPU suite ({device} mode), {seconds} s", "", *[f"{line}  " for line in env], "",
      "| step | status | seconds | note |", "|---|---|---:|---|"]
md += [f"| {s['step']} | {s['status']} | {s['seconds']} | {s['note']} |" for s in steps]
md += ["", "Result files: " + ", ".join(f"`{f}`" for f in files if not f.startswith("suite."))]
(dest / "suite.md").write_text("\n".join(md) + "\n")
print("\n".join(md))
EOF
if cut -f2 "$SUMMARY" | grep -qx -e failed -e "timed out"; then exit 1; fi
exit 0
