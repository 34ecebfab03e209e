"""A Hugging Face Hub on loopback that the real ``huggingface_hub`` client accepts, with faults.

``LocalHub`` serves directories as model repos (``org/name``, revision ``main`` or the
commit sha) over the two endpoints the download path uses:

* ``GET /api/models/{repo}[/revision/{rev}]`` -- ``HfApi.model_info``; with ``?blobs=true``
  (what ``files_metadata=True`` sends) every sibling carries ``size``, ``blobId`` and, for a
  non-empty file, ``lfs: {sha256, size, pointerSize}``.
* ``HEAD``/``GET /{repo}/resolve/{rev}/{path}`` -- ``hf_hub_download``: a HEAD for the metadata,
  then a GET (with ``Range: bytes=N-`` when the client resumes).

Header choices (read off ``huggingface_hub`` 2.4.0, ``file_download.get_hf_file_metadata``):

* ``X-Repo-Commit`` is required (without it the client raises ``FileMetadataError``, surfaced as
  ``LocalEntryNotFoundError``) and names the snapshot folder.
* ``ETag`` is required; ``X-Linked-Etag`` wins over it.  Every non-empty file is served as an LFS
  file: both carry the quoted sha256, so the cache blob is ``blobs/<sha256>`` and matches
  ``lfs.sha256`` in ``model_info``.  An empty file is a plain git file (ETag = git blob sha1,
  no ``X-Linked-*``; the client then skips the GET altogether).
* The expected size comes from ``X-Linked-Size`` (else ``Content-Length``).  The real hub answers
  an LFS HEAD with a 302 to a CDN; this one answers 200 directly, so the client downloads from
  the same ``/resolve/`` URL.
* ``Accept-Ranges: bytes``; a ``Range: bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` GET gets a 206
  with ``Content-Range: bytes a-b/size``; an unsatisfiable one a 416.
* Errors are the hub's shape: a JSON ``{"error": ...}`` body plus ``X-Error-Code``
  (``RepoNotFound`` -> ``RepositoryNotFoundError``, ``RevisionNotFound`` ->
  ``RevisionNotFoundError``, ``EntryNotFound`` -> ``RemoteEntryNotFoundError``, a subclass of
  ``EntryNotFoundError``) and ``X-Error-Message``; an ``EntryNotFound`` also carries
  ``X-Repo-Commit`` (the client caches the absence under ``.no_exist/<commit>/``).

Faults (settable at any time, read per request / per chunk):

* ``bytes_per_second`` throttles file bodies.
* ``drop_after_bytes``: the first GET of each (repo, file) whose body is longer than this sends
  that many body bytes and then closes the connection (an exception raised in the ASGI app after
  the response started; uvicorn flushes and closes the socket; the log line is filtered out).
  The body was announced with ``Content-Length``, so the client sees
  ``httpx2.RemoteProtocolError`` ("peer closed connection without sending complete message
  body").  ``huggingface_hub`` 2.4.0 catches that inside ``http_get``, sleeps 1 s and resumes
  in the same ``hf_hub_download`` call with ``Range: bytes=N-``: the call succeeds.  (It no
  longer keeps ``.incomplete`` files between calls: each call writes a uniquely named temporary
  file and deletes it on failure, so there is no cross-call resume.)  Setting the knob again
  re-arms it for every file.
* ``size_lies[(repo, file)] = n``: ``model_info`` reports ``n`` (``size`` and ``lfs.size``) while
  the real bytes are served.  By default the HEAD tells the truth, so ``hf_hub_download`` accepts
  the real file.  With ``size_lies_in_head = True`` the HEAD reports ``n`` too
  (``X-Linked-Size`` and ``Content-Length``); the GET still streams every real byte with the real
  ``Content-Length``, and the client then raises ``OSError("Consistency check failed: file
  should be of size n but has size <real> ...")`` and keeps nothing.

Observation: ``requests`` ((method, path) in order), ``range_requests`` ((path, Range header)),
``bytes_sent(repo=None)`` (file-body bytes handed to the server, stopped when the client goes
away), ``file_bytes_sent(repo, file)``, ``weight_bytes_sent(repo=None)`` (``*.safetensors``
bodies only), ``reset_counters()``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote

import uvicorn

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

CHUNK = 64 * 1024
MAIN = "main"
LAST_MODIFIED = "2024-01-01T00:00:00.000Z"
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


class _DropConnection(Exception):
    """Raised in the middle of a body: uvicorn then closes the connection."""


class _HideDrops(logging.Filter):
    """Keeps uvicorn's "Exception in ASGI application" for a deliberate drop out of the logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, _DropConnection)


_HIDE_DROPS = _HideDrops()


@dataclass(frozen=True)
class _File:
    data: bytes
    sha256: str
    blob_id: str  # the git blob sha1

    @classmethod
    def of(cls, data: bytes) -> _File:
        git = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        return cls(data, hashlib.sha256(data).hexdigest(), git)

    @property
    def lfs(self) -> bool:
        return len(self.data) > 0

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.blob_id

    def pointer_size(self, size: int) -> int:
        pointer = (
            f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {size}\n"
        )
        return len(pointer.encode())


@dataclass(frozen=True)
class _Repo:
    commit: str
    files: dict[str, _File]


def _commit_of(files: dict[str, _File]) -> str:
    digest = hashlib.sha1()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name].sha256.encode() + b"\n")
    return digest.hexdigest()


class LocalHub:
    """A loopback Hugging Face Hub (uvicorn in a thread) for the real ``huggingface_hub``."""

    def __init__(self) -> None:
        self._repos: dict[str, _Repo] = {}
        self._lock = threading.Lock()
        self._sent: dict[str, int] = {}
        self._sent_files: dict[tuple[str, str], int] = {}
        self._dropped: set[tuple[str, str]] = set()
        self._drop_after_bytes: int | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._endpoint: str | None = None
        self.bytes_per_second: float | None = None
        self.size_lies: dict[tuple[str, str], int] = {}
        self.size_lies_in_head = False
        self.requests: list[tuple[str, str]] = []
        self.range_requests: list[tuple[str, str]] = []

    # -- repos ---------------------------------------------------------------------------

    def add_repo(self, repo_id: str, directory: Path) -> str:
        """Serve every file under ``directory`` as ``repo_id`` at ``main``; returns the commit.

        Contents are read now: later changes to the directory are not seen (add it again).
        """
        if not _REPO_ID.fullmatch(repo_id):
            raise ValueError(f"repo ids are org/name, not {repo_id!r}")
        root = Path(directory)
        files = {
            path.relative_to(root).as_posix(): _File.of(path.read_bytes())
            for path in sorted(root.rglob("*"))
            if path.is_file()
        }
        repo = _Repo(_commit_of(files), files)
        self._repos[repo_id] = repo
        return repo.commit

    # -- faults and counters -------------------------------------------------------------

    @property
    def drop_after_bytes(self) -> int | None:
        return self._drop_after_bytes

    @drop_after_bytes.setter
    def drop_after_bytes(self, value: int | None) -> None:
        with self._lock:
            self._drop_after_bytes = value
            self._dropped.clear()  # setting the knob re-arms it for every file

    def bytes_sent(self, repo_id: str | None = None) -> int:
        """File-body bytes sent by resolve GETs, in all or for one repo."""
        with self._lock:
            if repo_id is None:
                return sum(self._sent.values())
            return self._sent.get(repo_id, 0)

    def file_bytes_sent(self, repo_id: str, filename: str) -> int:
        """File-body bytes of one file sent by resolve GETs (a re-read counts again)."""
        with self._lock:
            return self._sent_files.get((repo_id, filename), 0)

    def weight_bytes_sent(self, repo_id: str | None = None) -> int:
        """Bytes of ``*.safetensors`` bodies sent, in all or for one repo: what a
        refusal must never have caused (reading config.json is metadata)."""
        with self._lock:
            return sum(
                n
                for (repo, name), n in self._sent_files.items()
                if name.endswith(".safetensors") and repo_id in (None, repo)
            )

    def reset_counters(self) -> None:
        with self._lock:
            self._sent.clear()
            self._sent_files.clear()
            self.requests.clear()
            self.range_requests.clear()

    def _count(self, repo_id: str, amount: int, filename: str = "") -> None:
        with self._lock:
            self._sent[repo_id] = self._sent.get(repo_id, 0) + amount
            key = (repo_id, filename)
            self._sent_files[key] = self._sent_files.get(key, 0) + amount

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        if self._endpoint is None:
            raise RuntimeError("the local hub is not started")
        return self._endpoint

    def start(self) -> LocalHub:
        if self._server is not None:
            raise RuntimeError("the local hub is already started")
        logging.getLogger("uvicorn.error").addFilter(_HIDE_DROPS)  # idempotent
        config = uvicorn.Config(
            self._app,
            host="127.0.0.1",
            port=0,
            interface="asgi3",
            lifespan="off",
            loop="asyncio",
            http="h11",
            ws="none",
            log_level="warning",
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=2,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name="local-hub", daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                thread.join(5)
                raise RuntimeError("the local hub did not start")
            time.sleep(0.005)
        port = server.servers[0].sockets[0].getsockname()[1]
        self._server, self._thread = server, thread
        self._endpoint = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(15)
        self._server = self._thread = None
        self._endpoint = None
        if thread.is_alive():
            raise RuntimeError("the local hub did not stop")

    def __enter__(self) -> LocalHub:
        return self.start() if self._server is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- the ASGI app --------------------------------------------------------------------

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method: str = scope["method"]
        self.requests.append((method, scope["path"]))
        # Split the raw path: a revision is quoted with safe="" and may hold a "/".
        raw = (scope.get("raw_path") or scope["path"].encode()).split(b"?", 1)[0]
        parts = [unquote(p) for p in raw.decode("latin-1").split("/")[1:]]
        head = method == "HEAD"
        if method not in ("GET", "HEAD"):
            await _error(send, 405, None, "Method not allowed", head)
        elif parts[:2] == ["api", "models"] and (
            len(parts) == 4 or (len(parts) == 6 and parts[4] == "revision")
        ):
            repo_id = "/".join(parts[2:4])
            revision = parts[5] if len(parts) == 6 else MAIN
            query = parse_qs(scope.get("query_string", b"").decode())
            blobs = query.get("blobs", ["false"])[-1].lower() in ("1", "true")
            await self._model_info(send, repo_id, revision, blobs=blobs, head=head)
        elif len(parts) >= 5 and parts[2] == "resolve" and all(parts[4:]):
            headers = {
                k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]
            }
            await self._resolve(
                receive,
                send,
                "/".join(parts[:2]),
                parts[3],
                "/".join(parts[4:]),
                head=head,
                range_header=headers.get("range"),
                path=scope["path"],
            )
        else:
            await _error(send, 404, None, "Not Found", head)

    def _find(self, repo_id: str, revision: str) -> _Repo | tuple[str, str]:
        repo = self._repos.get(repo_id)
        if repo is None:
            return ("RepoNotFound", "Repository not found")
        if revision not in (MAIN, repo.commit):
            return ("RevisionNotFound", f"Invalid rev id: {revision}")
        return repo

    async def _model_info(
        self, send: Send, repo_id: str, revision: str, *, blobs: bool, head: bool
    ) -> None:
        repo = self._find(repo_id, revision)
        if isinstance(repo, tuple):
            await _error(send, 404, repo[0], repo[1], head)
            return
        siblings: list[dict[str, Any]] = []
        for name, file in sorted(repo.files.items()):
            sibling: dict[str, Any] = {"rfilename": name}
            if blobs:
                size = self.size_lies.get((repo_id, name), len(file.data))
                sibling.update(size=size, blobId=file.blob_id)
                if file.lfs:
                    sibling["lfs"] = {
                        "sha256": file.sha256,
                        "size": size,
                        "pointerSize": file.pointer_size(size),
                    }
            siblings.append(sibling)
        body = {
            "_id": repo.commit[:24],
            "id": repo_id,
            "modelId": repo_id,
            "author": repo_id.split("/")[0],
            "sha": repo.commit,
            "lastModified": LAST_MODIFIED,
            "createdAt": LAST_MODIFIED,
            "private": False,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
        }
        await _respond(
            send,
            200,
            {"content-type": "application/json; charset=utf-8"},
            json.dumps(body).encode(),
            head,
        )

    async def _resolve(
        self,
        receive: Receive,
        send: Send,
        repo_id: str,
        revision: str,
        filename: str,
        *,
        head: bool,
        range_header: str | None,
        path: str,
    ) -> None:
        repo = self._find(repo_id, revision)
        if isinstance(repo, tuple):
            await _error(send, 404, repo[0], repo[1], head)
            return
        file = repo.files.get(filename)
        if file is None:
            await _error(
                send,
                404,
                "EntryNotFound",
                f"{filename} does not exist on {revision!r}",
                head,
                {"x-repo-commit": repo.commit},
            )
            return
        size = len(file.data)
        headers = {
            "content-type": "application/octet-stream",
            "accept-ranges": "bytes",
            "etag": f'"{file.etag}"',
            "x-repo-commit": repo.commit,
        }
        if head:
            lie = self.size_lies.get((repo_id, filename))
            reported = lie if lie is not None and self.size_lies_in_head else size
            if file.lfs:
                headers["x-linked-etag"] = f'"{file.sha256}"'
                headers["x-linked-size"] = str(reported)
            headers["content-length"] = str(reported)
            await _respond(send, 200, headers, b"", head=True)
            return
        if file.lfs:
            headers["x-linked-etag"] = f'"{file.sha256}"'
            headers["x-linked-size"] = str(size)
        start, end, status = 0, size - 1, 200
        if range_header is not None:
            self.range_requests.append((path, range_header))
            bounds = _parse_range(range_header, size)
            if bounds is None:
                headers["content-range"] = f"bytes */{size}"
                await _error(send, 416, None, "Range Not Satisfiable", False, headers)
                return
            start, end = bounds
            status = 206
            headers["content-range"] = f"bytes {start}-{end}/{size}"
        body = memoryview(file.data)[start : end + 1]
        headers["content-length"] = str(len(body))
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": _encode(headers),
            }
        )
        await self._stream(receive, send, repo_id, filename, body)

    async def _stream(
        self, receive: Receive, send: Send, repo_id: str, filename: str, body: memoryview
    ) -> None:
        gone = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            drop_at: int | None = None
            with self._lock:
                limit = self._drop_after_bytes
                key = (repo_id, filename)
                if limit is not None and limit < len(body) and key not in self._dropped:
                    self._dropped.add(key)
                    drop_at = max(limit, 0)
            sent, started = 0, time.monotonic()
            while sent < len(body) and not gone.done():
                rate = self.bytes_per_second
                step = CHUNK if not rate else max(1024, min(CHUNK, int(rate / 20)))
                stop = min(len(body), sent + step)
                if drop_at is not None:
                    stop = min(stop, drop_at)
                if stop > sent:
                    self._count(repo_id, stop - sent, filename)  # handed over, even if the
                    await send(  # client closes before the send returns
                        {
                            "type": "http.response.body",
                            "body": bytes(body[sent:stop]),
                            "more_body": True,
                        }
                    )
                    sent = stop
                if drop_at is not None and sent >= drop_at:
                    raise _DropConnection(f"dropped {repo_id}/{filename} after {sent} bytes")
                if rate:
                    delay = started + sent / rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            gone.cancel()


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a single ``bytes=`` range, or None when unsatisfiable."""
    match = _RANGE.fullmatch(header.strip())
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.groups()
    if first == "":  # the last n bytes
        n = int(last)
        return (max(size - n, 0), size - 1) if n > 0 and size > 0 else None
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    return (start, end) if start <= end else None


def _encode(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


async def _respond(
    send: Send, status: int, headers: dict[str, str], body: bytes, head: bool
) -> None:
    headers = {"content-length": str(len(body)), **headers}
    await send({"type": "http.response.start", "status": status, "headers": _encode(headers)})
    await send({"type": "http.response.body", "body": b"" if head else body})


async def _error(
    send: Send,
    status: int,
    code: str | None,
    message: str,
    head: bool,
    extra: dict[str, str] | None = None,
) -> None:
    headers = dict(extra or {})
    headers.pop("content-length", None)
    headers["content-type"] = "application/json; charset=utf-8"
    headers["x-error-message"] = message
    if code is not None:
        headers["x-error-code"] = code
    await _respond(send, status, headers, json.dumps({"error": message}).encode(), head)
