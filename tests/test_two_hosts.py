"""Two "hosts" on one machine: two network namespaces joined by a veth pair, each with its own
address and host name, each running one torchrun agent (one process), meeting at a c10d
rendezvous on host A's address, as the Slurm script runs one agent per node
(scripts/slurm/multinode.sbatch). Mid-run every process of host B is SIGKILLed (its agent
too: a lost node); host A's agent restarts its worker and waits at the rendezvous, a new agent
on host B (what a scheduler's requeue does) joins it, and the group resumes from the newest
checkpoint and finishes with the losses of one process that was never interrupted.

The test creates the namespaces and removes them (and every process in them) however it ends.
It needs root (`ip netns add`): see needs.network_namespaces for where it may skip."""
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

import needs
from cli_runs import micro_flags, train_records
from vmae2_fast.cli import config_for
from vmae2_fast.models.weights import read_checkpoint
from vmae2_fast.stages.pretrain import run

WORKER = Path(__file__).with_name("fault_worker.py")


def ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=60)


class Hosts:
    """Namespaces ``<tag>a`` / ``<tag>b`` with addresses 10.231.N.1 / .2 on a veth pair (private
    addresses, reachable only between these two namespaces)."""

    def __init__(self):
        tag = f"vm{uuid.uuid4().hex[:6]}"
        net = random.randrange(1, 250)
        self.ns = {"a": f"{tag}a", "b": f"{tag}b"}
        self.dev = {"a": f"{tag}va", "b": f"{tag}vb"}
        self.addr = {"a": f"10.231.{net}.1", "b": f"10.231.{net}.2"}
        for h in "ab":
            ip("netns", "add", self.ns[h])
            # `ip netns exec` mounts /etc/netns/NAME/hosts on /etc/hosts: each host resolves both names
            self.etc(h).mkdir(parents=True, exist_ok=True)
            (self.etc(h) / "hosts").write_text(f"127.0.0.1 localhost\n{self.addr['a']} node-a\n"
                                               f"{self.addr['b']} node-b\n")
        ip("link", "add", self.dev["a"], "type", "veth", "peer", "name", self.dev["b"])
        for h in "ab":
            ip("link", "set", self.dev[h], "netns", self.ns[h])
            ip("-n", self.ns[h], "addr", "add", f"{self.addr[h]}/24", "dev", self.dev[h])
            ip("-n", self.ns[h], "link", "set", self.dev[h], "up")
            ip("-n", self.ns[h], "link", "set", "lo", "up")

    def etc(self, h) -> Path:
        return Path("/etc/netns") / self.ns[h]

    def pids(self, h) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", self.ns[h]], capture_output=True, text=True, timeout=60).stdout
        return [int(p) for p in out.split()]

    def kill_all(self, h) -> int:
        pids = self.pids(h)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(pids)

    def remove(self):
        for h in "ab":
            self.kill_all(h)
            subprocess.run(["ip", "netns", "del", self.ns[h]], capture_output=True, timeout=60)
            shutil.rmtree(self.etc(h), ignore_errors=True)

    def agent(self, h, argv, port, log, **env):
        """A torchrun agent on host `h` (its own host name, node-a or node-b), one process."""
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                   "--rdzv-backend", "c10d", "--rdzv-endpoint", f"{self.addr['a']}:{port}", "--rdzv-id", "two-hosts",
                   "--local-addr", self.addr[h], "--max-restarts", "1", "--monitor-interval", "0.2",
                   str(WORKER), *argv]
        env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME=self.dev[h],
                   TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1", **env)
        return subprocess.Popen(["ip", "netns", "exec", self.ns[h], "unshare", "--uts", "sh", "-c",
                                 f'hostname node-{h} && exec "$@"', "sh", *command],
                                env=env, stdout=log, stderr=subprocess.STDOUT, text=True)


def wait_for(path: Path, text: str, procs, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists() and text in path.read_text():
            return
        if all(p.poll() is not None for p in procs):
            break
        time.sleep(0.2)
    pytest.fail(f"{text!r} never appeared in {path.name}: {path.read_text()[-3000:] if path.exists() else ''}")


@pytest.mark.slow
def test_losing_a_host_restarts_the_job_across_two_hosts(tiny_synthetic, tmp_path):
    needs.network_namespaces()
    flags = dict(save_every_steps=2, threads=1, kernels="reference", no_progress=True)
    truth = tmp_path / "truth"
    run(config_for("pretrain", micro_flags(tiny_synthetic, truth, **flags)))
    out = tmp_path / "run"
    argv = micro_flags(tiny_synthetic, out, batch_size=2, **flags)
    # host B's process stalls before step 5 (after checkpoint-last.pth of step 4), once
    fault = dict(VMAE2_TEST_FAULT="stall-at-step:*:4:600", VMAE2_TEST_FAULT_ONCE=str(tmp_path / "fault-fired"))
    port = random.randrange(20000, 60000)
    hosts = Hosts()
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("a", "b", "b2")}
    procs = []
    try:
        procs.append(hosts.agent("a", argv, port, logs["a"]))
        procs.append(hosts.agent("b", argv, port, logs["b"], **fault))
        wait_for(tmp_path / "b.log", "fault: rank", procs, timeout=300)
        assert hosts.kill_all("b") >= 2                    # host B is lost: its agent and its worker
        procs[1].wait(timeout=60)
        procs.append(hosts.agent("b", argv, port, logs["b2"]))   # the node comes back
        for p in (procs[0], procs[2]):
            assert p.wait(timeout=400) == 0, (tmp_path / "a.log").read_text()[-3000:] + \
                (tmp_path / "b2.log").read_text()[-3000:]
    finally:
        hosts.remove()
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        for f in logs.values():
            f.close()
    assert not hosts.pids("a") and subprocess.run(["ip", "netns", "pids", hosts.ns["a"]],
                                                  capture_output=True, timeout=60).returncode != 0   # removed
    log = (out / "log.txt").read_text()
    assert "resumed from" in log and "global step 4" in log.split("resumed from")[1].splitlines()[0], log[-3000:]
    rows = train_records(out)
    assert [r["global_step"] for r in rows] == list(range(1, 7))
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in train_records(truth)], rel=1e-5)
    a, b = read_checkpoint(out / "checkpoint-last.pth")["model"], read_checkpoint(truth / "checkpoint-last.pth")["model"]
    assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a)
    assert not (out / "run.lock").exists()
