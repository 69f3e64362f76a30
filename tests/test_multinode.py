"""Several nodes, as far as one machine allows: the Slurm script itself (with stand-ins for srun and
scontrol that start its two "nodes" on this machine, each a torchrun agent meeting the other at
the c10d rendezvous), and the bare-srun launch (two processes with the variables srun gives its
tasks). Both must train exactly like one process with the whole batch."""
import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from vmae2_fast.cli import config_for
from vmae2_fast.stages.pretrain import run
from vmae2_fast.train.distributed import slurm_environment

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flags(ds, out, batch):
    return ["--model", "vit_micro", "--preset", "cpu_demo", "--data", ds.pretrain_list, "--data-root",
            ds.root, "--output-dir", str(out), "--input-size", "32", "--num-frames", "4",
            "--sampling-rate", "2", "--num-sample", "2", "--batch-size", str(batch), "--epochs", "1",
            "--warmup-epochs", "0", "--num-workers", "0", "--log-every", "1", "--preview-every", "0",
            "--seed", "3", "--no-progress", "--threads", "1"]


def losses(out):
    return [json.loads(x)["loss"] for x in (Path(out) / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


@pytest.fixture(scope="module")
def one_process(tiny_synthetic, tmp_path_factory):
    out = tmp_path_factory.mktemp("one")
    run(config_for("pretrain", flags(tiny_synthetic, out, 4)))
    return losses(out)


def test_srun_variables_become_torchrun_ones():
    task = {"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "16", "SLURM_LOCALID": "1", "MASTER_ADDR": "n001"}
    assert slurm_environment(task) == {"RANK": "5", "WORLD_SIZE": "16", "LOCAL_RANK": "1",
                                       "MASTER_PORT": "29500", "MASTER_ADDR": "n001"}
    assert slurm_environment({**task, "WORLD_SIZE": "8"}) == {}              # torchrun set them
    assert slurm_environment({"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}) == {}   # not in an srun step
    no_addr = {k: v for k, v in task.items() if k != "MASTER_ADDR"} | {"SLURM_JOB_NODELIST": "[]"}
    with pytest.raises(ValueError, match="MASTER_ADDR"):      # no scontrol here, or it rejects "[]"
        slurm_environment(no_addr)


def stand_in(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.mark.slow
def test_the_slurm_script_on_two_local_nodes_equals_one_process(tiny_synthetic, tmp_path, one_process):
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    stand_in(bin_, "scontrol", 'for i in $(seq 20000); do echo 127.0.0.1; done\n')   # a long list: no SIGPIPE
    # srun of one task per node: start the command once per "node", on this machine
    stand_in(bin_, "srun", 'while [[ $1 == --* ]]; do shift; done\n"$@" & "$@" & wait -n && wait -n\n')
    stand_in(bin_, "torchrun", f'exec {sys.executable} -m torch.distributed.run "$@"\n')
    out = tmp_path / "two_nodes"
    env = dict(os.environ, PATH=f"{bin_}:{os.environ['PATH']}", SLURM_JOB_NODELIST="n[1-2]",
               SLURM_JOB_NUM_NODES="2", SLURM_JOB_ID="4242", GPUS_PER_NODE="1", SLURM_CPUS_PER_TASK="1",
               RDZV_PORT=str(free_port()))
    res = subprocess.run(["bash", str(ROOT / "scripts" / "slurm" / "multinode.sbatch"), "vmae2_fast.pretrain",
                          *flags(tiny_synthetic, out, 2)], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert losses(out) == pytest.approx(one_process, rel=1e-5)


@pytest.mark.slow
def test_bare_srun_tasks_equal_one_process(tiny_synthetic, tmp_path, one_process):
    out = tmp_path / "srun"
    port = str(free_port())
    procs = []
    for rank in range(2):
        env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
        env.update(SLURM_PROCID=str(rank), SLURM_STEP_NUM_TASKS="2", SLURM_LOCALID=str(rank),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=port, OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, "-m", "vmae2_fast.pretrain", *flags(tiny_synthetic, out, 2)],
                                      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs[0][-3000:] + errs[1][-3000:]
    assert losses(out) == pytest.approx(one_process, rel=1e-5)
