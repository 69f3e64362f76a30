"""Where shards live: a local folder, ``s3://bucket/prefix``, ``https://host/path`` (any fsspec
URL), the manifest that describes a shard set, and reads that survive a flaky network.

A shard set (written by ``python -m vmae2_fast.make_shards``) is a folder of WebDataset tar files,
``shard-000000.tar``, ``shard-000001.tar``, ..., each holding per video ``KEY.EXT`` (the file as
it was, or re-encoded) and ``KEY.json`` (label, frame count, the list's path), plus
``shards.json``: for every shard, its samples' keys, byte offsets and sizes inside the tar, frame
counts, labels and list paths. The manifest is what lets a reader plan an epoch without listing
the bucket and fetch exactly the bytes it needs (one ranged GET per run of samples); the tars
stay readable by any tar tool, `webdataset` or DALI's webdataset reader.

Credentials and the endpoint come from the standard AWS variables (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ...; botocore reads them) or from fsspec
storage options (``--storage-options '{"endpoint_url": ...}'``), never from a file of ours.

Transient failures (connection refused or reset, timeouts, 5xx) are retried with exponential
backoff (`Retry`); a missing object or a refused permission is not retried. When the tries run
out, `DataPlaneError` names the URL, the tries and the last error.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from ..errors import ConfigError, DataError, DataPlaneError, MissingFileError

__all__ = ["MANIFEST", "FORMAT", "Retry", "Store", "ShardSet", "is_shard_location", "join",
           "shard_set_in", "parse_storage_options"]

log = logging.getLogger("vmae2_fast")
MANIFEST = "shards.json"
FORMAT = "vmae2_fast.shards/1"
VIDEO_FIELDS = ("width", "height", "codec", "pix_fmt")


def is_shard_location(loc: Optional[str]) -> bool:
    """A URL (``scheme://...``) or a local folder holding a manifest (directly, or in ``train/``,
    the layout of a fine-tuning set)."""
    if not loc:
        return False
    if "://" in loc and not loc.startswith("file://"):
        return True
    loc = loc[len("file://"):] if loc.startswith("file://") else loc
    return os.path.isdir(loc) and any(os.path.isfile(os.path.join(loc, *p, MANIFEST))
                                      for p in ((), ("train",), ("val",)))


def join(loc: str, *names: str) -> str:
    return "/".join([loc.rstrip("/"), *names])


def shard_set_in(loc: str, part: str, storage_options: dict | None = None) -> str:
    """``loc`` if it holds a manifest, else ``loc/part`` (``val`` of a fine-tuning layout)."""
    return loc if Store(loc, storage_options).exists(MANIFEST) else join(loc, part)


def parse_storage_options(text: str | dict | None) -> dict:
    """``--storage-options``: a JSON object of fsspec options (endpoint, anon, ...)."""
    if not text:
        return {}
    if isinstance(text, dict):
        return dict(text)
    try:
        opts = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--storage-options must be a JSON object, like '{{\"anon\": true}}' ({exc})") from None
    if not isinstance(opts, dict):
        raise ConfigError(f"--storage-options must be a JSON object, got {text!r}")
    return opts


@dataclass(frozen=True)
class Retry:
    """``tries`` attempts, waiting ``first_wait`` seconds after the first failure and doubling up
    to ``max_wait`` (0.5 + 1 + 2 + 4 + 8: a server back within about 15 s is not noticed)."""
    tries: int = 6
    first_wait: float = 0.5
    max_wait: float = 8.0

    def waits(self):
        wait = self.first_wait
        for _ in range(self.tries - 1):
            yield wait
            wait = min(wait * 2, self.max_wait)


_INHERITED: list = []

# Errors that no retry cures: the object is not there, or we may not read it.
_MISSING = (FileNotFoundError, IsADirectoryError, NotADirectoryError)


class Store:
    """Reads (and, for the shard writer, writes) objects under one location through fsspec. The
    filesystem is made on first use in each process, so a DataLoader worker never inherits its
    parent's connections (an async client does not survive a fork)."""

    def __init__(self, location: str, storage_options: dict | None = None, retry: Retry = Retry()):
        self.location = location.rstrip("/") or location
        self.options = dict(storage_options or {})
        self.retry = retry
        self._fs, self._pid = None, None

    def __getstate__(self):
        return {**self.__dict__, "_fs": None, "_pid": None}

    @property
    def fs(self):
        if self._fs is not None and self._pid != os.getpid():
            # a forked DataLoader worker: the parent's client is never used or collected here,
            # since closing it would run its cleanup on the parent's event loop, which this
            # process does not have ("attached to a different loop")
            _INHERITED.append(self._fs)
            self._fs = None
        if self._fs is None:
            self._fs, self._pid = _filesystem(self.location, self.options), os.getpid()
        return self._fs

    def url(self, name: str) -> str:
        return join(self.location, name)

    def read(self, name: str, start: int | None = None, end: int | None = None) -> bytes:
        """Bytes ``[start, end)`` of the object ``name`` (all of it by default), retried."""
        url = self.url(name)
        return self._retried(url, lambda: self.fs.cat_file(_path(self.fs, url), start=start, end=end))

    def exists(self, name: str) -> bool:
        url = self.url(name)
        return self._retried(url, lambda: self.fs.exists(_path(self.fs, url)))

    def write(self, name: str, data: bytes) -> None:
        url = self.url(name)
        self._retried(url, lambda: self.fs.pipe_file(_path(self.fs, url), data))

    def put(self, local_file: str, name: str) -> None:
        url = self.url(name)
        self._retried(url, lambda: self.fs.put_file(local_file, _path(self.fs, url)))

    def _retried(self, url: str, call):
        t0, last = time.monotonic(), None
        waits = list(self.retry.waits())
        for attempt in range(self.retry.tries):
            try:
                return call()
            except _MISSING as exc:
                raise MissingFileError(f"cannot read {url}: {type(exc).__name__}: {exc}") from exc
            except PermissionError as exc:
                raise ConfigError(f"access to {url} was refused ({type(exc).__name__}: {_first_line(exc)}); "
                                  "check the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
                                  "AWS_ENDPOINT_URL or --storage-options)") from exc
            except Exception as exc:              # network errors come in many types (OSError,
                last = exc                        # aiohttp, botocore): retry any other
                if attempt < len(waits):
                    log.warning("reading %s failed (%s: %s); try %d of %d in %.1f s", url,
                                type(exc).__name__, _first_line(exc), attempt + 2, self.retry.tries,
                                waits[attempt])
                    time.sleep(waits[attempt])
                    self._fs = None               # a new client: the old one may hold dead sockets
        raise DataPlaneError(f"cannot read {url}: {self.retry.tries} tries over "
                             f"{time.monotonic() - t0:.0f} s failed, the last with "
                             f"{type(last).__name__}: {_first_line(last)}", [url])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else repr(exc)


def _filesystem(location: str, options: dict):
    try:
        import fsspec
    except ImportError:
        raise ConfigError("reading shards needs fsspec: pip install 'vmae2_fast[shards]'") from None
    protocol = location.split("://", 1)[0] if "://" in location else "file"
    try:
        return fsspec.filesystem(protocol, skip_instance_cache=True, **options)
    except ImportError as exc:
        pkg = {"s3": "s3fs", "http": "aiohttp", "https": "aiohttp", "gs": "gcsfs"}.get(protocol, protocol)
        raise ConfigError(f"reading {protocol}:// shards needs {pkg}: pip install 'vmae2_fast[shards]' "
                          f"({exc})") from None
    except ValueError as exc:
        raise ConfigError(f"no fsspec filesystem for {location}: {exc}") from None


def _path(fs, url: str) -> str:
    """What ``fs`` calls the object (s3 strips the scheme; http keeps the URL)."""
    return fs._strip_protocol(url) if not url.startswith(("http://", "https://")) else url


# ------------------------------------------------------------------------------ the manifest
@dataclass
class Shard:
    """One tar: its name and, per sample (in the tar's order), the video's byte range."""
    name: str
    ext: List[str]
    offsets: np.ndarray        # int64, of each video's data in the tar
    sizes: np.ndarray          # int64
    first_id: int              # the set-wide id of the shard's first sample

    def __len__(self) -> int:
        return len(self.offsets)


@dataclass
class ShardSet:
    """A shard set's manifest: shards, and per sample (set-wide ids, manifest order) its label,
    frame count and list path."""
    location: str
    kind: str                                  # "pretrain" (no labels) or "classify"
    shards: List[Shard]
    frames: np.ndarray                         # int64 per sample
    labels: np.ndarray                         # int64 per sample (-1: none)
    sources: List[str]                         # the path as the list wrote it
    video: Dict[str, list]                     # per sample: width, height, codec, pix_fmt
    classes: Optional[List[str]] = None
    excluded: List[dict] = field(default_factory=list)
    store: Optional[Store] = None

    @property
    def num_samples(self) -> int:
        return len(self.frames)

    def shard_of(self) -> np.ndarray:
        """The shard index of each sample id."""
        return np.repeat(np.arange(len(self.shards)), [len(s) for s in self.shards])

    @classmethod
    def open(cls, location: str, storage_options: dict | None = None, retry: Retry = Retry()) -> "ShardSet":
        """Read ``location/shards.json``; a location without one is refused with what to do."""
        location = location[len("file://"):] if location.startswith("file://") else location
        store = Store(location, storage_options, retry)
        try:
            raw = store.read(MANIFEST)
        except MissingFileError:
            raise MissingFileError(
                f"{store.url(MANIFEST)} does not exist: --data {location} is not a shard set (write "
                f"one with `python -m vmae2_fast.make_shards LIST --data-root DIR --out {location}`)") from None
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise DataError(f"{store.url(MANIFEST)} is not JSON ({exc})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
            raise DataError(f"{store.url(MANIFEST)} has format {found!r}, this version reads "
                            f"{FORMAT!r}; rewrite the set with this version's make_shards")
        try:
            return cls.from_manifest(doc, location, store)
        except DataError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{store.url(MANIFEST)} is damaged ({type(exc).__name__}: {exc}); rewrite "
                            "the set with make_shards") from None

    @classmethod
    def from_manifest(cls, doc: dict, location: str, store: Store | None = None) -> "ShardSet":
        shards, frames, labels, sources, first = [], [], [], [], 0
        video = {k: [] for k in VIDEO_FIELDS}
        for s in doc["shards"]:
            n = len(s["offsets"])
            shards.append(Shard(s["name"], list(s["ext"]), np.asarray(s["offsets"], dtype=np.int64),
                                np.asarray(s["sizes"], dtype=np.int64), first))
            frames += s["frames"]
            labels += s["labels"]
            sources += s["sources"]
            for k in VIDEO_FIELDS:
                video[k] += s[k]
            first += n
        if first == 0:
            raise DataError(f"the shard set at {location} holds no video")
        return cls(location, doc["kind"], shards, np.asarray(frames, dtype=np.int64),
                   np.asarray(labels, dtype=np.int64), sources, video, doc.get("classes"),
                   doc.get("excluded", []), store)


def manifest_doc(kind: str, shards: List[Dict], classes=None, excluded=None) -> dict:
    """The JSON the writer stores (the reader's `ShardSet.from_manifest` is its inverse)."""
    return {"format": FORMAT, "kind": kind, "num_samples": sum(len(s["offsets"]) for s in shards),
            "classes": classes, "excluded": excluded or [], "shards": shards}
