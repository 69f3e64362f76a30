"""The GPU plan for one loan, run by `bash bench/gpu_suite.sh` (docs/gpu-suite.md): set-up, then
seven steps in order, each under a time cap, each writing its records as it measures.

    bash bench/gpu_suite.sh --out /tmp/suite --bundle "$OUT" --wheels .whl \\
        --official-repo .official/VideoMAEv2          # the first call on a lent GPU
    bash bench/gpu_suite.sh --out /tmp/suite --bundle "$OUT" --only pytest --budget 200 ...  # a step again
    bash bench/gpu_suite.sh --device cpu --out /tmp/suite    # the rehearsal: the same steps at small shapes
    bash bench/gpu_suite.sh --list                           # the plan: steps, caps, commands

Steps: smoke (the fused ops' Triton kernels against the float64 reference in bf16 at ViT-B's
and ViT-g's patch sizes over several row tiles, the attention backends at head dims 64/80/88,
one ViT-B step), headline (ViT-B and ViT-g in bf16, the official code against ours, eager, with
and without activation checkpointing), compiled (ours under torch.compile, ViT-B and ViT-g, with
and without checkpointing: each transformer block is compiled as a region, one graph per block
kind, so a ViT-g row compiles an encoder and a decoder block, not 44), sweep (ViT-B over batch
sizes), pytest (`pytest -m gpu`; the step most likely to need more than its cap, so it also gets
the time the earlier steps left unused), fused-ops (the kernel benchmark) and decoding (the loader
benchmark, when PyAV is there).

Time: every step has a cap; the caps and the set-up's cap add up to less than the budget, so
every step gets its cap even when every earlier one runs out of time. A step that reaches its cap
is stopped (its process group is killed) and marked `timed out`; the records it wrote up to then
are kept and rendered. A step whose package is missing is `skipped` with the reason.

Where things go: `<out>/<step>/` holds each step's records (.jsonl), reports (.md, .png) and
log; `<out>/suite.jsonl` the suite's own records (the plan, then one row per step as it ends)
and `<out>/suite.md` the summary. Every step runs with its caches under `<out>/cache/`
(VMAE2_FAST_CACHE, TORCHINDUCTOR_CACHE_DIR, TRITON_CACHE_DIR): a step killed while torch's
C++-extension loader holds its lock file, or while inductor writes a cache entry, could leave
them broken for every later run, so after a kill (or when a run finds a cache that a killed run
left in use) the cache folder is set aside and the next step starts a fresh one. `--bundle DIR`
also keeps DIR/gpu-suite.tar.gz (everything but the caches) and DIR/suite.md up to date after
every step: the device machines return at most 8 files from $OUT.

This driver imports no torch (it must not hold a CUDA context while the steps run); the steps
are the bench scripts, each in its own process.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from records import Records, load_average, read_records

from vmae2_fast.errors import ConfigError, MissingFileError, MissingPackageError, UserError

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
STEPS = ("smoke", "headline", "compiled", "sweep", "pytest", "fused-ops", "decoding")
SETUP_CAP = {"cuda": 20, "cpu": 30}          # joining and installing the wheels, the package probe
RENDER_CAP = 10                              # the summary's last rendering and bundle, after the last step
DEFAULT_BUDGET = {"cuda": 450, "cpu": 600}   # cuda: what a device call of 480 s leaves
MAX_LOAD_FACTOR = 8.0
MIN_STEP = 10                                # a step given less than this is skipped, not started
KILL_GRACE = 5                               # seconds between SIGTERM and SIGKILL
PACKAGES = ("torch", "triton", "av", "nvidia.dali", "flash_attn", "transformers", "timm", "einops",
            "pytest", "pytest_timeout", "numpy", "PIL", "tqdm")


@dataclass
class Step:
    name: str
    what: str
    cap: int                                    # seconds
    commands: list = field(default_factory=list)   # argv lists, run in order
    skip: str | None = None                     # the reason it cannot run here
    takes_slack: bool = False                   # also gets the time earlier steps left unused


# -------------------------------------------------------------------------------------- the plan

def _py(script: str, *args) -> list:
    return [sys.executable, str(BENCH / script), *map(str, args)]


def load_factor(device: str) -> float:
    """How much slower than on an idle machine a step will run: 1 on a GPU machine (lent whole);
    in CPU mode the 1-minute load average per core, between 1 and MAX_LOAD_FACTOR (a CPU shared
    with other jobs gives each step a share of its cores: the rehearsal's caps scale with it)."""
    if device == "cuda":
        return 1.0
    return round(min(MAX_LOAD_FACTOR, max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))), 1)


def plan(device: str, out: Path, official: str | None, have: dict, factor: float = 1.0) -> list[Step]:
    """The steps for `device` (cuda: the real shapes; cpu: the same commands at small shapes and in
    float32, a rehearsal of the machinery), given the packages `have` found by the probe; caps
    (and the CPU sweep's own time budget) multiplied by `factor` (load_factor)."""
    cuda = device == "cuda"
    d = {name: out / name for name in STEPS}
    tp = ["throughput.py", "--device", device]
    if cuda:
        b, g = ["--model", "vit_b", "--batch", 64], ["--model", "vit_g", "--batch", 32]
        models = [(b, ""), (g, "")]          # (arguments, result-name prefix): the model names them apart
        precision, timed = ["--precision", "bf16"], ["--steps", 5, "--warmup", 2]
        b_step = ["--model", "vit_b", "--batch", 8]
        sweep = ["--model", "vit_b", "--sweep", "--batches", 32, 64, 128, 256, "--time-budget", 20,
                 "--steps", 3, "--warmup", 1]
        caps = dict(smoke=50, headline=95, compiled=100, sweep=30, pytest=90, **{"fused-ops": 20}, decoding=25)
        fused = ["--device", "cuda", "--batch", 32, "--reps", 5]
        attention = ["--device", "cuda", "--dtypes", "bf16", "--reps", 5]
        data = ["--synthetic", 16, "--synthetic-frames", 64, "--codecs", "h264", "--batch-size", 8, "--views", 2,
                "--frames", 16, "--size", 224, "--epochs", 1]
        test_timeout = 90
    else:   # small shapes, fp32, the reference ops (the C++ ops would be compiled once per run's cache)
        small = ["--model", "vit_micro", "--frames", 4, "--size", 32, "--kernels", "reference"]
        # the ViT-g stand-in is the ViT-B one under its own result names: the same shapes, so its
        # compiled rows find the block graphs of the ViT-B stand-in's in the suite's inductor cache
        b = b_step = small + ["--batch", 2]
        models = [(b, ""), (b, "g-")]
        precision, timed = ["--precision", "fp32"], ["--steps", 2, "--warmup", 1]
        # 64 cubes a clip and batches up to 512 would take minutes: the sweep's own time budget
        # ends it after the batch it is in (each batch costs about what all smaller ones did)
        sweep = ["--model", "vit_micro", "--frames", 8, "--size", 64, "--kernels", "reference", "--sweep",
                 "--batches", *(2 ** k for k in range(10)), "--time-budget", round(10 * factor), "--steps", 2,
                 "--warmup", 1]
        # inductor's CPU compile of vit_micro's two block graphs: about 40 s of CPU time, most of it g++
        caps = dict(smoke=40, headline=60, compiled=240, sweep=45, pytest=80, **{"fused-ops": 25}, decoding=45)
        fused = ["--device", "cpu", "--batch", 1, "--shapes", "vit_b", "--reps", 1, "--backends", "reference",
                 "--processes", "one"]
        attention = ["--device", "cpu", "--batch", 1, "--tokens", 64, "--reps", 2]
        data = ["--synthetic", 8, "--synthetic-frames", 48, "--synthetic-size", 96, "--codecs", "vp9",
                "--batch-size", 2, "--views", 1, "--frames", 8, "--size", 64, "--workers", 1, "--epochs", 1]
        test_timeout = 60
    caps = {name: round(cap * factor) for name, cap in caps.items()}
    with_official = ["--official-repo", official] if official else []
    loaders = ["pyav"] + (["dali-gpu" if cuda else "dali-cpu"] if have.get("nvidia.dali") else [])
    timeout = ["--timeout", test_timeout] if have.get("pytest_timeout") else []
    smoke_tests = [f"tests/test_op_{op}.py::test_triton_on_cuda[{case}-torch.bfloat16]"
                   for op in ("patch_embed", "decoder_assembly", "masked_loss")
                   for case in ("tiles-p16-b2-r0.5", "tiles-p14-b3-r0.6")]

    def headline(model_args, prefix, ac):
        return _py(*tp, *model_args, *precision, *timed, "--impl", "official", "fast", *with_official,
                   "--official-checkpointing", ac, "--activation-checkpointing", ac, "--compile", "off",
                   "--tag", f"{prefix}eager-ac-{ac}", "--out", d["headline"])

    smoke = [_py("attention_check.py", *attention, "--out", d["smoke"]),
             _py(*tp, *b_step, *precision, "--impl", "fast", "--steps", 1, "--warmup", 1, "--tag", "smoke",
                 "--out", d["smoke"])]
    if have.get("pytest"):
        smoke.insert(0, _py("gpu_tests.py", "--out", d["smoke"], "--tag", "smoke", "--", "-p", "no:cacheprovider",
                            "-v", *timeout, *smoke_tests))
    steps = [
        Step("smoke", "the fused ops' Triton kernels against the reference (bf16, several row tiles), the "
             "attention backends at head dims 64/80/88, one ViT-B step", caps["smoke"], smoke),
        Step("headline", "ViT-B and ViT-g, the official code against ours, eager, with and without activation "
             "checkpointing", caps["headline"],
             [headline(m, prefix, ac) for m, prefix in models for ac in ("none", "full")]),
        Step("compiled", "ours under torch.compile (one graph per block kind), ViT-B and ViT-g, with and without "
             "activation checkpointing", caps["compiled"], [
                 _py(*tp, *m, *precision, *timed, "--impl", "fast", "--compile", "on", "--activation-checkpointing",
                     "none", "full", "--tag", f"{prefix}compiled", "--out", d["compiled"]) for m, prefix in models]),
        Step("sweep", "ViT-B over batch sizes, the official code against ours", caps["sweep"], [
            _py(*tp, *sweep, *precision, "--impl", "official", "fast", *with_official, "--tag", "sweep",
                "--out", d["sweep"])]),
        Step("pytest", "pytest -m gpu, every test under a time limit", caps["pytest"], takes_slack=True, commands=[
            _py("gpu_tests.py", "--out", d["pytest"], "--tag", "gpu", "--", "-m", "gpu", "tests", "-v",
                "-p", "no:cacheprovider", "--continue-on-collection-errors", *timeout, "--durations", 20,
                "--junitxml", d["pytest"] / "junit.xml")],
             skip=None if have.get("pytest") else "pytest is not installed: bring its wheels (pytest, pluggy, "
                                                   "iniconfig) with --wheels"),
        Step("fused-ops", "the fused-op benchmark, one process", caps["fused-ops"], [
            _py("fused_ops.py", *fused, "--out", d["fused-ops"])]),
        Step("decoding", "the loader benchmark (PyAV; DALI where installed)", caps["decoding"], [
            _py("data.py", *data, "--loaders", *loaders, "--work-dir", out / "cache" / "data", "--out", d["decoding"])],
             skip=None if have.get("av") else "PyAV is not installed: the decoding benchmark needs it to write and "
                                              "read videos; bring its cp312 wheel with --wheels (docs/gpu-suite.md)"),
    ]
    assert tuple(s.name for s in steps) == STEPS
    return steps


# ------------------------------------------------------------------------------------ the set-up

def install_wheels(folders: list, site: Path, log) -> str:
    """Join split wheels (`X.whl.part-aa`, `-ab`, ... -> X.whl: a lent machine takes 64 MiB per
    call, so a large wheel comes in parts over several calls), then install every wheel of the
    folders but torch and triton into `site` (on PYTHONPATH for the steps), without touching the
    environment's own packages. Returns what it did."""
    files = []
    for wheels in map(Path, folders):
        for first in sorted(wheels.glob("*.whl.part-aa")):
            whl = first.with_name(first.name[:-len(".part-aa")])
            with open(whl.with_name(whl.name + ".joining"), "wb") as joined:
                for part in sorted(wheels.glob(whl.name + ".part-*")):
                    joined.write(part.read_bytes())
            whl.with_name(whl.name + ".joining").rename(whl)
        files += [w for w in sorted(wheels.glob("*.whl")) if w.name.split("-")[0].lower() not in ("torch", "triton")]
    if not files:
        return f"no wheels in {', '.join(map(str, folders))}"
    res = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                          "--no-cache-dir", "--upgrade", "--target", str(site), *map(str, files)],
                         stdout=log, stderr=subprocess.STDOUT, timeout=300)
    if res.returncode != 0:
        raise MissingPackageError(f"pip could not install the wheels (see {log.name})")
    return f"installed {', '.join(w.name.split('-')[0] for w in files)} into {site}"


# The steps depend on the first four being importable (an installed but broken one, or one that a
# test hides, is not there); the others are only listed, found without the import's cost.
IMPORTED = ("av", "nvidia.dali", "pytest", "pytest_timeout")
PROBE = """
import importlib, importlib.metadata, importlib.util, json, sys
imported, listed = sys.argv[1].split(","), sys.argv[2].split(",")
dists = {"PIL": "pillow", "nvidia.dali": "nvidia-dali-cuda130", "pytest_timeout": "pytest-timeout"}
out = {}
for name in imported + listed:
    try:
        if name in imported:
            importlib.import_module(name)
        elif importlib.util.find_spec(name) is None:
            raise ImportError(name)
    except Exception:
        out[name] = None
        continue
    try:
        out[name] = importlib.metadata.version(dists.get(name, name))
    except importlib.metadata.PackageNotFoundError:
        out[name] = "installed"
import torch
out["cuda_available"] = torch.cuda.is_available()
out["gpu"] = torch.cuda.get_device_name(0) if out["cuda_available"] else None
out["torch_cuda"] = torch.version.cuda
print(json.dumps(out))
"""


def probe(env: dict) -> dict:
    """The packages the steps will find (name -> version or None), torch's CUDA and the GPU, as
    the steps' Python sees them (the wheels' folder on its path)."""
    listed = [p for p in PACKAGES if p not in IMPORTED]
    res = subprocess.run([sys.executable, "-c", PROBE, ",".join(IMPORTED), ",".join(listed)], env=env,
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    if res.returncode != 0:
        raise MissingPackageError(f"{sys.executable} cannot import torch: this suite uses the torch already installed "
                         f"and never installs one ({res.stderr.strip().splitlines()[-1] if res.stderr.strip() else ''})")
    return json.loads(res.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------- running a step

class Caches:
    """The steps' cache folder, `<out>/cache`, marked in use while a step runs. A step that is
    killed (or a run that finds the mark a killed run left) sets the folder aside: a lock file
    or a cut-short cache entry in it must not reach a later step."""

    def __init__(self, out: Path):
        self.root, self.mark, self.discarded = out / "cache", out / "cache" / ".in-use", 0
        if self.mark.exists():
            self.discard("a run was stopped while a step used it")

    def env(self) -> dict:
        return {"VMAE2_FAST_CACHE": str(self.root / "vmae2_fast"),
                "TORCHINDUCTOR_CACHE_DIR": str(self.root / "inductor"),
                "TRITON_CACHE_DIR": str(self.root / "triton")}

    def start(self, step: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.mark.write_text(step)

    def done(self) -> None:
        self.mark.unlink(missing_ok=True)

    def discard(self, why: str) -> str:
        self.discarded += 1
        aside = self.root.with_name(f"cache.discarded-{int(time.time())}-{self.discarded}")
        self.root.rename(aside)
        return f"its cache was set aside ({why}): {aside.name}"


def _kill_group(proc: subprocess.Popen) -> None:
    """Stop a step's process and everything it started (its own process group): SIGTERM, then,
    after KILL_GRACE seconds, SIGKILL for whatever is left (compile workers outlive their parent)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=KILL_GRACE)
        except subprocess.TimeoutExpired:
            pass
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:      # the whole group has ended
        pass
    proc.wait()


def run_commands(commands: list, limit: float, log_path: Path, env: dict) -> tuple[str, str]:
    """Run `commands` in order within `limit` seconds in all, output appended to `log_path`:
    ('ok' | 'failed' | 'timed out', a note)."""
    deadline = time.monotonic() + limit
    failed = []
    with open(log_path, "a") as log:
        for argv in commands:
            left = deadline - time.monotonic()
            name = Path(argv[1]).name if len(argv) > 1 else argv[0]
            if left <= 1:
                return "timed out", f"stopped at its limit of {limit:.0f} s before {name} started"
            log.write(f"\n$ {' '.join(map(str, argv))}\n")
            log.flush()
            # its own process group (to stop it whole), in this session: whatever stops the suite
            # (a device call's time limit) stops it too
            proc = subprocess.Popen(list(map(str, argv)), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                    process_group=0)
            try:
                rc = proc.wait(timeout=left)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                log.write(f"\n[gpu_suite] stopped: the step reached its limit of {limit:.0f} s\n")
                return "timed out", f"stopped at its limit of {limit:.0f} s during {name}"
            except BaseException:       # the suite itself is being stopped: its step goes with it
                _kill_group(proc)
                raise
            if rc != 0:
                failed.append(f"{name} exit status {rc}")
    return ("failed", "; ".join(failed)) if failed else ("ok", "")


def records_of(folder: Path, out: Path) -> list[dict]:
    """Each records file a step wrote: its path (relative to `out`), bench, rows, finished or not."""
    found = []
    for path in sorted(folder.glob("*.jsonl")):
        try:
            header, rows, end = read_records(path)
        except ValueError as exc:
            found.append({"file": str(path.relative_to(out)), "error": str(exc)})
            continue
        found.append({"file": str(path.relative_to(out)), "bench": header["bench"], "rows": len(rows),
                      "complete": end is not None})
    return found


def render_folder(folder: Path) -> None:
    """The reports of the records a stopped or failed run left without one."""
    import render
    for path in sorted(folder.glob("*.jsonl")):
        try:
            render.render(path)
        except Exception as exc:        # noqa: BLE001 - a report that cannot be made is said in the log, not fatal
            with open(folder / "log.txt", "a") as log:
                log.write(f"[gpu_suite] could not render {path.name}: {type(exc).__name__}: {exc}\n")


# ---------------------------------------------------------------------------------- the summary

def write_summary(suite: Path, out: Path, bundle: Path | None) -> str:
    import render
    md = render.render(suite).read_text()
    if bundle is not None:
        bundle.mkdir(parents=True, exist_ok=True)
        tmp = bundle / "gpu-suite.tar.gz.writing"
        with tarfile.open(tmp, "w:gz") as tar:
            for p in sorted(out.iterdir()):
                if not (p.name.startswith("cache") or p.name == "site"):
                    tar.add(p, arcname=f"gpu-suite/{p.name}")
        tmp.rename(bundle / "gpu-suite.tar.gz")
        shutil.copy(out / "suite.md", bundle / "suite.md")
    return md


# ---------------------------------------------------------------------------------- command line

def parse(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (the plan) or cpu (its rehearsal at small shapes)")
    p.add_argument("--out", help="the results folder (required)")
    p.add_argument("--bundle", help="also keep DIR/gpu-suite.tar.gz and DIR/suite.md up to date after each step")
    p.add_argument("--budget", help=f"seconds for the whole run, set-up included (default: "
                                    f"{DEFAULT_BUDGET['cuda']} on cuda, {DEFAULT_BUDGET['cpu']} x the load factor on cpu)")
    p.add_argument("--only", help=f"comma-separated steps to run, of: {', '.join(STEPS)}")
    p.add_argument("--skip", help="comma-separated steps to leave out")
    p.add_argument("--wheels", nargs="+", metavar="DIR",
                   help="folders of wheels to install first, into <out>/site (parts X.whl.part-* are joined)")
    p.add_argument("--official-repo", help="a checkout of OpenGVLab/VideoMAEv2: the baseline of the headline "
                                           "and the sweep (without it: the re-statement)")
    p.add_argument("--cap", nargs="+", default=[], metavar="STEP=SECONDS",
                   help="another cap for a step (a second call that gives a step the time it lacked)")
    p.add_argument("--list", action="store_true", help="print the plan (steps, caps, commands) and exit")
    a = p.parse_args(argv)
    if a.device not in ("cuda", "cpu"):
        raise ConfigError(f"--device must be cuda or cpu, got '{a.device}'")
    if a.out is None and not a.list:
        raise ConfigError("say where the results go: --out DIR")
    a.factor = load_factor(a.device)
    if a.budget is None:
        a.budget = round(DEFAULT_BUDGET[a.device] * a.factor)
    elif not str(a.budget).isdigit():
        raise ConfigError(f"--budget takes whole seconds, got '{a.budget}'")
    a.budget = int(a.budget)
    for flag in ("only", "skip"):
        names = [s for s in (getattr(a, flag) or "").split(",") if s]
        unknown = [s for s in names if s not in STEPS]
        if unknown:
            raise ConfigError(f"--{flag}: no step {', '.join(unknown)} (steps: {', '.join(STEPS)})")
        setattr(a, flag, set(names))
    caps = {}
    for given in a.cap:
        name, _, seconds = given.partition("=")
        if name not in STEPS or not seconds.isdigit():
            raise ConfigError(f"--cap takes STEP=SECONDS with a step of {', '.join(STEPS)}, got '{given}'")
        caps[name] = int(seconds)
    a.cap = caps
    for folder in a.wheels or []:
        if not Path(folder).is_dir():
            raise MissingFileError(f"--wheels {folder} is not a folder")
    if a.official_repo:
        if not Path(a.official_repo).is_dir():
            raise MissingFileError(f"--official-repo {a.official_repo} is not a folder")
        a.official_repo = str(Path(a.official_repo).resolve())
    return a


def say(text: str) -> None:
    print(f"[gpu_suite] {text}", flush=True)


def step_env(out: Path, caches: Caches, device: str) -> dict:
    """The steps' environment: unbuffered output (a killed step's log is whole), the suite's own
    caches, the wheels' folder and this checkout on the path, git allowed to read the official
    checkout's commit (its owner check refuses folders copied from another user). In CPU mode one
    intra-op thread: on a CPU shared with other jobs, OpenMP's threads wait for each other at
    every barrier whenever one of them is descheduled, which slowed the rehearsal's tiny steps
    from milliseconds to seconds under a load of 12 on 2 cores."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **caches.env(),
           "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "safe.directory", "GIT_CONFIG_VALUE_0": "*"}
    if device == "cpu":
        env.setdefault("OMP_NUM_THREADS", "1")
    path = [str(out / "site"), str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(path)
    return env


def wanted(a, step: Step) -> bool:
    return not ((a.only and step.name not in a.only) or step.name in a.skip)


def run_step(s: Step, limit: float, out: Path, caches: Caches, env: dict) -> dict:
    """Run one step within `limit` seconds: its summary row (status, seconds, note, records)."""
    folder = out / s.name
    folder.mkdir(exist_ok=True)
    row = {"step": s.name, "limit_s": round(max(limit, 0)), "cap_s": s.cap}
    if s.skip or limit < MIN_STEP:
        note = s.skip or "the budget is spent"
        return {**row, "status": "skipped", "seconds": 0.0, "note": note, "records": records_of(folder, out)}
    say(f"{s.name}: running (at most {limit:.0f} s; log: {s.name}/log.txt)")
    caches.start(s.name)
    t0 = time.monotonic()
    status, note = run_commands(s.commands, limit, folder / "log.txt", env)
    took = round(time.monotonic() - t0, 1)
    if status == "timed out":
        note += "; " + caches.discard(f"{s.name} was stopped")
    else:
        caches.done()
    if status != "ok":          # a stopped or failed script did not render what it recorded
        render_folder(folder)
    return {**row, "status": status, "seconds": took, "note": note, "records": records_of(folder, out)}


def _stop(signum, frame):
    raise SystemExit(128 + signum)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    signal.signal(signal.SIGTERM, _stop)        # stopped from outside: the running step is stopped too
    try:
        a = parse(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if a.list:
        have = {"pytest": True, "pytest_timeout": True, "av": True}
        for s in plan(a.device, Path(a.out or "OUT"), a.official_repo, have, a.factor):
            print(f"{s.name} (cap {s.cap} s{', and the time earlier steps left' if s.takes_slack else ''}): {s.what}")
            for c in s.commands:
                print("    " + " ".join(str(x) for x in c[1:]))
        return 0
    start = time.monotonic()
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    bundle = Path(a.bundle).resolve() if a.bundle else None
    caches = Caches(out)
    env = step_env(out, caches, a.device)

    # set-up: the wheels brought along, then what the steps will find
    setup_cap = round(SETUP_CAP[a.device] * a.factor)
    (out / "setup").mkdir(exist_ok=True)
    try:
        with open(out / "setup" / "log.txt", "w") as log:
            installed = install_wheels(a.wheels, out / "site", log) if a.wheels else "no --wheels"
        have = probe(env)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if a.device == "cuda" and not have["cuda_available"]:
        print("error: --device cuda but torch sees no CUDA device (--device cpu runs the rehearsal)", file=sys.stderr)
        return 2
    setup_s = round(time.monotonic() - start, 1)
    steps = [s for s in plan(a.device, out, a.official_repo, have, a.factor) if wanted(a, s)]
    for s in steps:
        s.cap = a.cap.get(s.name, s.cap)
    caps = sum(s.cap for s in steps)
    header = {"device": a.device, "gpu": have["gpu"], "load_avg_1m": load_average(), "load_factor": a.factor,
              "torch_cuda": have["torch_cuda"], "python": sys.version.split()[0],
              "packages": {k: have[k] for k in PACKAGES}, "budget_s": a.budget, "caps_s": caps,
              "setup_cap_s": setup_cap, "render_cap_s": RENDER_CAP, "argv": argv, "official_repo": a.official_repo,
              "plan": [{"step": s.name, "cap_s": s.cap, "what": s.what} for s in steps]}
    say(f"{a.device}: {have['gpu'] or 'no GPU'}; set-up {setup_s} s ({installed}); budget {a.budget} s: "
        f"caps {caps} s + set-up {setup_cap} s + summary {RENDER_CAP} s"
        + (f" (load factor {a.factor})" if a.factor != 1 else ""))
    if caps + setup_cap + RENDER_CAP > a.budget:
        say("the caps exceed the budget: the last steps may get less than their caps")
    failures = 0
    with Records(out / "suite", "gpu-suite", header) as records:
        records.add({"step": "set-up", "status": "ok", "seconds": setup_s, "limit_s": setup_cap, "cap_s": setup_cap,
                     "note": installed, "records": []})
        slack = max(0.0, setup_cap - setup_s)        # what the steps so far left of their caps
        for s in steps:
            left = a.budget - (time.monotonic() - start) - RENDER_CAP
            row = run_step(s, min(s.cap + (slack if s.takes_slack else 0), left), out, caches, env)
            slack += max(0.0, s.cap - row["seconds"]) if row["status"] != "skipped" else 0.0
            failures += row["status"] in ("failed", "timed out")
            records.add(row)
            say(f"{s.name}: {row['status']} ({row['seconds']:.0f} s){' - ' + row['note'] if row['note'] else ''}")
            if row["status"] == "failed":
                tail = (out / s.name / "log.txt").read_text(errors="replace").splitlines()[-12:]
                print("\n".join("    " + line for line in tail), flush=True)
            write_summary(records.path, out, bundle)
    print(write_summary(records.path, out, bundle), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
