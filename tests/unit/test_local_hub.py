"""The local hub against the real ``huggingface_hub`` client (model_info, hf_hub_download)."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import httpx2
import pytest
from huggingface_hub import HfApi, constants, get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.errors import (
    EntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from tests.support.local_hub import LocalHub

REPO = "org/model"
NOWHERE = "http://127.0.0.1:9"  # refused at once: a call that ignores `endpoint=` fails loudly


@pytest.fixture(autouse=True)
def _only_the_local_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """No call may reach huggingface.co, and offline mode must not block the local hub."""
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", NOWHERE)
    monkeypatch.setattr(
        constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        NOWHERE + "/{repo_id}/resolve/{revision}/{filename}",
    )


@pytest.fixture
def hub() -> Iterator[LocalHub]:
    with LocalHub() as hub:
        yield hub


def fake_safetensors(payload: int) -> bytes:
    header = json.dumps(
        {"w": {"dtype": "U8", "shape": [payload], "data_offsets": [0, payload]}}
    ).encode()
    return struct.pack("<Q", len(header)) + header + os.urandom(payload)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "tokenizer").mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    (root / "model.safetensors").write_bytes(fake_safetensors(300_000))
    (root / "tokenizer" / "vocab.txt").write_bytes(os.urandom(5_000))
    (root / "empty.txt").write_bytes(b"")
    return root


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def download(
    hub: LocalHub, filename: str, cache: Path, *, repo: str = REPO, revision: str = "main"
) -> Path:
    path = hf_hub_download(
        repo, filename, revision=revision, cache_dir=cache, endpoint=hub.endpoint, token=False
    )
    return Path(str(path))


def resolve_path(filename: str, *, repo: str = REPO, revision: str = "main") -> str:
    return f"/{repo}/resolve/{revision}/{filename}"


def test_model_info_lists_every_file_with_sizes_and_the_sha(hub: LocalHub, model_dir: Path) -> None:
    sha = hub.add_repo(REPO, model_dir)
    api = HfApi(endpoint=hub.endpoint, token=False)

    info = api.model_info(REPO, revision="main", files_metadata=True)

    assert info.id == REPO
    assert info.sha == sha
    files = files_of(model_dir)
    siblings = {s.rfilename: s for s in info.siblings or []}
    assert (
        set(siblings)
        == set(files)
        == {
            "config.json",
            "model.safetensors",
            "tokenizer/vocab.txt",
            "empty.txt",
        }
    )
    for name, data in files.items():
        sibling = siblings[name]
        assert sibling.size == len(data)
        assert sibling.blob_id == hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        if data:
            assert sibling.lfs is not None
            assert sibling.lfs.size == len(data)
            assert sibling.lfs.sha256 == hashlib.sha256(data).hexdigest()
        else:
            assert sibling.lfs is None
    assert hub.requests == [("GET", f"/api/models/{REPO}/revision/main")]
    # Without files_metadata only the names come back; the commit sha is a revision too.
    bare = api.model_info(REPO, revision=sha)
    assert bare.sha == sha
    assert {s.rfilename: s.size for s in bare.siblings or []} == dict.fromkeys(files)
    assert api.model_info(REPO).sha == sha  # GET /api/models/{repo}


def test_downloads_land_in_the_cache_layout_and_are_not_fetched_twice(
    hub: LocalHub, model_dir: Path, tmp_path: Path
) -> None:
    sha = hub.add_repo(REPO, model_dir)
    cache = tmp_path / "cache"
    storage = cache / "models--org--model"

    for name, data in files_of(model_dir).items():
        path = download(hub, name, cache)
        assert path == storage / "snapshots" / sha / name
        assert path.read_bytes() == data
        assert path.is_symlink()
        blob = path.resolve()
        assert blob.parent == storage / "blobs"
        # The blob is named by the ETag: the sha256 for LFS files, the git sha1 for the empty one.
        etag = hashlib.sha256(data).hexdigest() if data else hashlib.sha1(b"blob 0\0").hexdigest()
        assert blob.name == etag
    assert (storage / "refs" / "main").read_text() == sha
    assert not list(cache.rglob("*.incomplete"))
    # The empty file needs no GET: the client knows its size (0) from the HEAD.
    assert ("GET", resolve_path("empty.txt")) not in hub.requests
    assert ("HEAD", resolve_path("empty.txt")) in hub.requests

    hub.reset_counters()
    for name in files_of(model_dir):
        download(hub, name, cache)  # a branch: one HEAD each to learn the commit, no body
    assert {method for method, _ in hub.requests} == {"HEAD"}
    assert hub.bytes_sent() == 0

    hub.reset_counters()
    for name in files_of(model_dir):
        download(hub, name, cache, revision=sha)  # a cached commit: no request at all
    assert hub.requests == []


def test_unknown_repos_revisions_and_files_raise_the_clients_errors(
    hub: LocalHub, model_dir: Path, tmp_path: Path
) -> None:
    sha = hub.add_repo(REPO, model_dir)
    api = HfApi(endpoint=hub.endpoint, token=False)
    cache = tmp_path / "cache"

    with pytest.raises(RepositoryNotFoundError):
        api.model_info("org/missing", files_metadata=True)
    with pytest.raises(RevisionNotFoundError):
        api.model_info(REPO, revision="nope", files_metadata=True)
    with pytest.raises(RepositoryNotFoundError):
        download(hub, "config.json", cache, repo="org/missing")
    with pytest.raises(RevisionNotFoundError):
        download(hub, "config.json", cache, revision="nope")
    with pytest.raises(EntryNotFoundError) as caught:
        download(hub, "missing.bin", cache)
    assert isinstance(caught.value, RemoteEntryNotFoundError)
    # The 404 carries X-Repo-Commit: the client records the absence for that commit.
    assert (cache / "models--org--model" / ".no_exist" / sha / "missing.bin").exists()


def test_range_requests_get_206_and_unsatisfiable_ones_416(hub: LocalHub, model_dir: Path) -> None:
    hub.add_repo(REPO, model_dir)
    data = (model_dir / "model.safetensors").read_bytes()
    url = hub.endpoint + resolve_path("model.safetensors")

    with httpx.Client() as client:
        part = client.get(url, headers={"Range": "bytes=10-19"})
        assert part.status_code == 206
        assert part.headers["content-range"] == f"bytes 10-19/{len(data)}"
        assert part.content == data[10:20]
        tail = client.get(url, headers={"Range": "bytes=-5"})
        assert (tail.status_code, tail.content) == (206, data[-5:])
        rest = client.get(url, headers={"Range": f"bytes={len(data) - 3}-"})
        assert (rest.status_code, rest.content) == (206, data[-3:])
        over = client.get(url, headers={"Range": f"bytes={len(data)}-"})
        assert over.status_code == 416
        assert over.headers["content-range"] == f"bytes */{len(data)}"
        head = client.head(url)
        assert head.headers["accept-ranges"] == "bytes"
        assert head.headers["x-linked-size"] == head.headers["content-length"] == str(len(data))
    assert hub.range_requests == [
        (resolve_path("model.safetensors"), "bytes=10-19"),
        (resolve_path("model.safetensors"), "bytes=-5"),
        (resolve_path("model.safetensors"), f"bytes={len(data) - 3}-"),
        (resolve_path("model.safetensors"), f"bytes={len(data)}-"),
    ]
    assert hub.bytes_sent(REPO) == 10 + 5 + 3


def test_a_dropped_connection_is_a_remote_protocol_error_and_a_whole_retry(
    hub: LocalHub, model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hub.add_repo(REPO, model_dir)
    data = (model_dir / "model.safetensors").read_bytes()
    url = hub.endpoint + resolve_path("model.safetensors")
    hub.drop_after_bytes = 100_000

    # What the client's HTTP layer sees: the body was announced with Content-Length, so a
    # close in the middle is httpx2.RemoteProtocolError ("peer closed connection without
    # sending complete message body (received 100000 bytes, expected ...)").
    with httpx2.Client() as client, client.stream("GET", url) as response:
        received = 0
        with pytest.raises(httpx2.RemoteProtocolError, match="peer closed connection"):
            for chunk in response.iter_bytes():
                received += len(chunk)
    assert received == 100_000

    # The drop happens once per file: re-arm it for the client's download.
    hub.drop_after_bytes = 100_000
    hub.reset_counters()
    path = download(hub, "model.safetensors", tmp_path / "cache")

    # huggingface_hub 2.4.0 catches RemoteProtocolError inside http_get, sleeps 1 s and retries
    # in the same call.  It streams with iter_bytes(chunk_size=DOWNLOAD_CHUNK_SIZE = 10 MiB), so
    # the 100 000 bytes before the drop never reached its file: the retry is a whole GET.
    assert path.read_bytes() == data
    assert [method for method, _ in hub.requests] == ["HEAD", "GET", "GET"]
    assert hub.range_requests == []
    assert hub.bytes_sent(REPO) == 100_000 + len(data)
    assert not list((tmp_path / "cache").rglob("*.incomplete"))
    assert "Exception in ASGI application" not in caplog.text  # deliberate drops are not logged


def test_a_drop_after_the_first_client_chunk_is_resumed_with_a_range(
    hub: LocalHub, tmp_path: Path
) -> None:
    chunk = constants.DOWNLOAD_CHUNK_SIZE  # 10 MiB: what the client writes at a time
    root = tmp_path / "big"
    root.mkdir()
    data = os.urandom(chunk + 1_000_000)
    (root / "model.safetensors").write_bytes(data)
    hub.add_repo("org/big", root)
    hub.drop_after_bytes = chunk + 300_000
    cache = tmp_path / "cache"

    path = download(hub, "model.safetensors", cache, repo="org/big")

    # One hf_hub_download call: the first GET dies after chunk + 300 000 bytes, the client keeps
    # the 10 MiB it had written and asks for the rest (the 300 000 buffered bytes are lost).
    assert path.read_bytes() == data
    target = resolve_path("model.safetensors", repo="org/big")
    assert hub.requests == [("HEAD", target), ("GET", target), ("GET", target)]
    assert hub.range_requests == [(target, f"bytes={chunk}-")]
    assert hub.bytes_sent("org/big") == chunk + 300_000 + (len(data) - chunk)
    assert hub.bytes_sent("org/big") < 2 * len(data)
    # 2.4.0 downloads into a per-call temporary file and removes it: nothing is left over.
    assert not list(cache.rglob("*.incomplete"))


def test_size_lies_show_in_model_info_and_optionally_in_the_head(
    hub: LocalHub, model_dir: Path, tmp_path: Path
) -> None:
    hub.add_repo(REPO, model_dir)
    data = (model_dir / "model.safetensors").read_bytes()
    hub.size_lies[(REPO, "model.safetensors")] = 1_000
    api = HfApi(endpoint=hub.endpoint, token=False)
    url = hf_hub_url(REPO, "model.safetensors", endpoint=hub.endpoint)

    info = api.model_info(REPO, files_metadata=True)
    sibling = next(s for s in info.siblings or [] if s.rfilename == "model.safetensors")
    assert sibling.size == 1_000
    assert sibling.lfs is not None and sibling.lfs.size == 1_000

    # By default the HEAD tells the truth: the client expects and accepts the real file.
    assert get_hf_file_metadata(url, token=False, endpoint=hub.endpoint).size == len(data)
    assert download(hub, "model.safetensors", tmp_path / "a").read_bytes() == data

    # With the lie in the HEAD too (X-Linked-Size, Content-Length), the client takes it as the
    # expected size, still reads every real byte of the GET, then refuses the file.
    hub.size_lies_in_head = True
    hub.reset_counters()
    assert get_hf_file_metadata(url, token=False, endpoint=hub.endpoint).size == 1_000
    with pytest.raises(OSError, match="Consistency check failed: file should be of size 1000"):
        download(hub, "model.safetensors", tmp_path / "b")
    assert hub.bytes_sent() == len(data)
    blobs = tmp_path / "b" / "models--org--model" / "blobs"
    assert list(blobs.iterdir()) == []


def test_bytes_per_second_throttles_file_bodies(hub: LocalHub, tmp_path: Path) -> None:
    root = tmp_path / "slow"
    root.mkdir()
    data = os.urandom(200_000)
    (root / "model.safetensors").write_bytes(data)
    hub.add_repo("org/slow", root)
    hub.bytes_per_second = 1_000_000

    started = time.monotonic()
    path = download(hub, "model.safetensors", tmp_path / "cache", repo="org/slow")
    elapsed = time.monotonic() - started

    assert path.read_bytes() == data
    assert elapsed >= 0.15
    assert hub.bytes_sent("org/slow") == len(data)


def test_a_client_that_goes_away_stops_the_body(hub: LocalHub, tmp_path: Path) -> None:
    root = tmp_path / "slow"
    root.mkdir()
    (root / "model.safetensors").write_bytes(os.urandom(1_000_000))
    hub.add_repo("org/slow", root)
    hub.bytes_per_second = 500_000
    url = hub.endpoint + resolve_path("model.safetensors", repo="org/slow")

    with httpx.Client() as client, client.stream("GET", url) as response:
        next(response.iter_bytes())
    time.sleep(0.2)
    sent = hub.bytes_sent("org/slow")
    time.sleep(0.2)

    assert 0 < sent == hub.bytes_sent("org/slow") < 500_000


def test_counters_record_requests_and_body_bytes_per_repo(
    hub: LocalHub, model_dir: Path, tmp_path: Path
) -> None:
    hub.add_repo(REPO, model_dir)
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text("{}")
    hub.add_repo("org/other", other)
    cache = tmp_path / "cache"
    size = (model_dir / "model.safetensors").stat().st_size

    download(hub, "model.safetensors", cache)
    download(hub, "config.json", cache, repo="org/other")

    assert hub.requests == [
        ("HEAD", resolve_path("model.safetensors")),
        ("GET", resolve_path("model.safetensors")),
        ("HEAD", resolve_path("config.json", repo="org/other")),
        ("GET", resolve_path("config.json", repo="org/other")),
    ]
    assert hub.bytes_sent(REPO) == size
    assert hub.bytes_sent("org/other") == 2
    assert hub.bytes_sent("org/none") == 0
    assert hub.bytes_sent() == size + 2
    hub.reset_counters()
    assert (hub.requests, hub.range_requests, hub.bytes_sent()) == ([], [], 0)


def test_commits_are_deterministic_and_the_server_stops(model_dir: Path, tmp_path: Path) -> None:
    first, second = LocalHub(), LocalHub()
    assert first.add_repo(REPO, model_dir) == second.add_repo("org/copy", model_dir)
    (model_dir / "config.json").write_text("{}")
    changed = first.add_repo(REPO, model_dir)
    assert changed != second.add_repo("org/copy", tmp_path / "repo" / "tokenizer")
    assert len(changed) == 40 and int(changed, 16) >= 0
    with pytest.raises(ValueError):
        first.add_repo("no-org", model_dir)
    with pytest.raises(RuntimeError):
        _ = first.endpoint

    with first:
        endpoint = first.endpoint
        assert httpx.get(endpoint + "/nowhere").status_code == 404
    with pytest.raises(httpx.ConnectError):
        httpx.get(endpoint + "/nowhere")
