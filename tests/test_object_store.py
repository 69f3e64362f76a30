"""The loopback object stores of tests/object_store.py: they serve what was put in them, to s3fs and
fsspec's HTTP filesystem, fail reads fast while stopped and serve the same data after a restart.

SeaweedFS tests skip where the server cannot start (binary missing, no loopback ports), except on
CI (CI=true), where that is a failure: the data reader's object-store tests depend on it.
"""
import os
import time
import urllib.error
import urllib.request

import fsspec
import pytest

import needs
from needs import on_ci
from object_store import HttpFiles, SeaweedS3, ServerUnavailable, start_or_skip

needs.module("s3fs")  # of the `test` extra (with aiohttp and botocore): skip locally, fail on CI
import aiohttp  # noqa: E402
from botocore.exceptions import EndpointConnectionError  # noqa: E402

# A client that gives up at once on a dead server (a single attempt): a read of a stopped server
# then fails in ~0.15 s instead of the 5-13 s of botocore's default retries.
FAIL_FAST = {"config_kwargs": {"connect_timeout": 1, "read_timeout": 5,
                               "retries": {"total_max_attempts": 1}}}

PAYLOAD = bytes(range(256)) * 40  # 10240 bytes, every offset distinguishable


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory):
    with start_or_skip(tmp_path_factory.mktemp("seaweed")) as server:
        yield server


@pytest.fixture
def local_tree(tmp_path):
    root = tmp_path / "tree"
    (root / "sub").mkdir(parents=True)
    (root / "a.bin").write_bytes(PAYLOAD)
    (root / "sub" / "b.txt").write_bytes(b"hello object store")
    return root


# ------------------------------------------------------------------------------------------------
# SeaweedS3


def test_s3_upload_and_read_back_with_explicit_options(seaweed, local_tree):
    seaweed.upload(local_tree, "s3://explicit/data")
    fs = seaweed.fs()
    assert sorted(fs.find("explicit/data")) == ["explicit/data/a.bin", "explicit/data/sub/b.txt"]
    assert fs.cat_file("explicit/data/a.bin") == PAYLOAD
    assert fs.info("explicit/data/a.bin")["size"] == len(PAYLOAD)
    # ranged reads: cat_file's byte range, and a seek + read on an open file
    assert fs.cat_file("explicit/data/a.bin", start=1000, end=1300) == PAYLOAD[1000:1300]
    with fsspec.open("s3://explicit/data/sub/b.txt", "rb", **seaweed.storage_options()) as f:
        f.seek(6)
        assert f.read(6) == b"object"


def test_s3_standard_aws_variables_are_enough(seaweed, monkeypatch, tmp_path):
    seaweed.make_bucket("viaenv")
    seaweed.fs().pipe_file("viaenv/k", PAYLOAD)
    # nothing from the user's ~/.aws may help: the variables alone must do
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in seaweed.env().items():
        monkeypatch.setenv(name, value)
    # no endpoint, no key: botocore takes them from AWS_ENDPOINT_URL / AWS_ACCESS_KEY_ID / ...
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    assert fs.cat_file("viaenv/k") == PAYLOAD
    assert fs.cat_file("viaenv/k", start=-16) == PAYLOAD[-16:]


def test_s3_requires_the_credentials(seaweed):
    seaweed.make_bucket("private")
    seaweed.fs().pipe_file("private/k", b"x")
    with pytest.raises(PermissionError):
        seaweed.fs(secret="not-the-secret").cat_file("private/k")
    with pytest.raises(PermissionError):
        seaweed.fs(anon=True, key=None, secret=None).cat_file("private/k")


def test_s3_read_fails_while_stopped_and_works_after_restart(seaweed):
    seaweed.make_bucket("durable")
    seaweed.fs().pipe_file("durable/k", PAYLOAD)
    endpoint, pid = seaweed.endpoint, seaweed._proc.pid
    seaweed.stop()
    try:
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)  # the whole process group is gone
        fs = seaweed.fs(**FAIL_FAST)
        t0 = time.monotonic()
        # connection refused: botocore.exceptions.EndpointConnectionError, which is no OSError
        with pytest.raises(EndpointConnectionError):
            fs.cat_file("durable/k")
        assert time.monotonic() - t0 < 5
    finally:
        seaweed.restart()
    assert seaweed.endpoint == endpoint
    assert seaweed.fs().cat_file("durable/k", start=10, end=20) == PAYLOAD[10:20]


def test_s3_start_failure_is_server_unavailable(tmp_path):
    with pytest.raises(ServerUnavailable, match="not found"):
        SeaweedS3.start(tmp_path / "a", binary=str(tmp_path / "no-such-weed"))
    # a binary that exits at once: reported with its exit code, not waited on until the timeout
    t0 = time.monotonic()
    with pytest.raises(ServerUnavailable, match="exited with code 1"):
        SeaweedS3.start(tmp_path / "b", binary="/bin/false", timeout=30)
    assert time.monotonic() - t0 < 10


# ------------------------------------------------------------------------------------------------
# HttpFiles


@pytest.fixture
def http_files(local_tree):
    with HttpFiles(local_tree) as server:
        yield server


def test_http_read_ranges_and_info(http_files):
    url = http_files.url
    with fsspec.open(url + "/a.bin", "rb") as f:
        assert f.read() == PAYLOAD
    fs = fsspec.filesystem("http", skip_instance_cache=True)
    assert fs.info(url + "/a.bin")["size"] == len(PAYLOAD)
    assert fs.cat_file(url + "/a.bin", start=1000, end=1300) == PAYLOAD[1000:1300]
    assert fs.cat_file(url + "/a.bin", start=10000) == PAYLOAD[10000:]
    assert fs.cat_file(url + "/a.bin", start=-5) == PAYLOAD[-5:]
    assert fs.cat_file(url + "/sub/b.txt") == b"hello object store"
    # random access through a file object that fetches blocks by ranged GETs
    with fs.open(url + "/a.bin", "rb", block_size=512) as f:
        f.seek(4097)
        assert f.read(700) == PAYLOAD[4097:4797]


def test_http_range_responses(http_files):
    def get(path, range_header):
        req = urllib.request.Request(http_files.url + path, headers={"Range": range_header})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, r.headers.get("Content-Range"), r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("Content-Range"), b""

    n = len(PAYLOAD)
    assert get("/a.bin", "bytes=0-9") == (206, f"bytes 0-9/{n}", PAYLOAD[:10])
    assert get("/a.bin", f"bytes={n - 3}-{n + 50}") == (206, f"bytes {n - 3}-{n - 1}/{n}",
                                                        PAYLOAD[-3:])
    assert get("/a.bin", f"bytes={n}-") == (416, f"bytes */{n}", b"")
    assert get("/a.bin", "bytes=0-1,5-6")[:2] == (200, None)  # multi-range: the whole file
    assert get("/missing", "bytes=0-1")[0] == 404


def test_http_read_fails_while_stopped_and_works_after_restart(http_files):
    url = http_files.url + "/a.bin"
    http_files.stop()
    fs = fsspec.filesystem("http", skip_instance_cache=True)
    t0 = time.monotonic()
    # aiohttp.ClientConnectorError, an OSError; fsspec's HTTP filesystem does not retry
    with pytest.raises(aiohttp.ClientConnectorError):
        fs.cat_file(url)
    # info (HEAD) turns every error into FileNotFoundError: a dead server looks like a missing file
    with pytest.raises(FileNotFoundError):
        fs.info(url)
    assert time.monotonic() - t0 < 5
    http_files.restart()
    assert http_files.url + "/a.bin" == url
    assert fs.cat_file(url, start=3, end=9) == PAYLOAD[3:9]
