"""Downloads from a local hub (the real huggingface_hub client), under policy.

Every refusal is checked against the hub's own counters: zero bytes fetched.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time

import httpx
import pytest

from policies.principal import Limits
from tests.support.downloads import FULL, REPO_ID, ask, serve, snapshot_complete
from tests.support.server import REPO, GatewayServer, open_accounts


def test_permitted_request_downloads_loads_and_answers(hub, tiny_models_dir, tmp_path):
    server = serve(hub, tmp_path, tiny_models_dir)
    try:
        key = server.create_key("puller", scopes=FULL)
        response = ask(server, key)
        assert response.status_code == 200, response.text
        assert response.json()["model"] == REPO_ID
        assert hub.bytes_sent(REPO_ID) > 0
        assert snapshot_complete(tmp_path)
        with open_accounts(tmp_path) as store:
            downloaded = store.download_bytes_since(key.split("-")[1], 0)
        # Everything the hub sent, but the config.json read (into memory, for the
        # memory need) before the download started: metadata, not charged.
        config_read = hub.file_bytes_sent(REPO_ID, "config.json") // 2
        assert downloaded == hub.bytes_sent(REPO_ID) - config_read
        sent = hub.bytes_sent()
        assert ask(server, key).status_code == 200  # now on disk: nothing fetched again
        assert hub.bytes_sent() == sent
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("case", "model", "scopes", "limits", "downloads", "status", "code"),
    [
        ("repo not allowed", "evil-org/tiny", FULL, None, {}, 403, "download_not_allowed"),
        ("no download scope", REPO_ID, ("infer", "load"), None, {}, 403, "missing_scope"),
        ("no load scope", REPO_ID, ("infer", "download"), None, {}, 403, "missing_scope"),
        (
            "over max_model_size",
            REPO_ID,
            FULL,
            None,
            {"max_model_size": "1KB"},
            507,
            "insufficient_storage",
        ),
        (
            "over disk budget",
            REPO_ID,
            FULL,
            None,
            {"disk_budget": "10KB"},
            507,
            "insufficient_storage",
        ),
        (
            "over daily quota",
            REPO_ID,
            FULL,
            Limits(download_bytes_per_day=1000),
            {},
            403,
            "quota_exhausted",
        ),
        ("downloads disabled", REPO_ID, FULL, None, {"enabled": "false"}, 404, "model_not_found"),
    ],
)
def test_download_refused_before_any_byte(
    hub, tiny_models_dir, tmp_path, case, model, scopes, limits, downloads, status, code
):
    server = serve(hub, tmp_path, tiny_models_dir, **downloads)
    try:
        key = server.create_key("refused", scopes=scopes, limits=limits)
        hub.reset_counters()
        response = ask(server, key, model)
        assert response.status_code == status, response.text
        assert response.json()["error"]["code"] == code
        assert hub.bytes_sent() == 0
        assert not snapshot_complete(tmp_path, model)
    finally:
        server.stop()


def test_concurrent_requests_share_one_download(hub, tiny_models_dir, tmp_path):
    hub.bytes_per_second = 400_000  # about a second for the tiny model
    server = serve(hub, tmp_path, tiny_models_dir)
    try:
        key = server.create_key("crowd", scopes=FULL, limits=Limits(max_concurrent=20))
        results: list[int] = []

        def one() -> None:
            results.append(ask(server, key).status_code)

        # Eight: one key may hold a quarter of queue_per_model (32) per model.

        threads = [threading.Thread(target=one) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert results == [200] * 8
        weights = [p for m, p in hub.requests if m == "GET" and p.endswith("model.safetensors")]
        assert len(weights) == 1
    finally:
        server.stop()


def test_dropped_connection_is_resumed_and_the_model_is_whole(
    hub, tiny_models_dir, tiny_repo_dirs, tmp_path
):
    hub.drop_after_bytes = 100_000  # the client retries the transfer by itself
    server = serve(hub, tmp_path, tiny_models_dir)
    try:
        key = server.create_key("unlucky", scopes=FULL)
        assert ask(server, key).status_code == 200
        (snapshot,) = (
            tmp_path / "hf-cache" / "models--mlx-community--tiny-dl" / "snapshots"
        ).iterdir()
        for name in ("model.safetensors", "config.json", "tokenizer.json"):
            assert (snapshot / name).read_bytes() == (tiny_repo_dirs["tiny-dl"] / name).read_bytes()
    finally:
        server.stop()


def test_failed_download_leaves_nothing_complete_and_next_attempt_succeeds(
    hub, tiny_models_dir, tmp_path
):
    # The hub announces a size its file does not have: the client's consistency check fails.
    hub.size_lies[(REPO_ID, "model.safetensors")] = 1000
    hub.size_lies_in_head = True
    server = serve(hub, tmp_path, tiny_models_dir)
    try:
        key = server.create_key("unlucky", scopes=FULL)
        failed = ask(server, key)
        assert failed.status_code == 503
        assert "download" in failed.json()["error"]["message"]
        assert not snapshot_complete(tmp_path)
        hub.size_lies.clear()
        hub.size_lies_in_head = False
        assert ask(server, key).status_code == 200
        assert snapshot_complete(tmp_path)
    finally:
        server.stop()


def test_cancelled_job_leaves_nothing_complete_and_a_new_pull_succeeds(
    hub, tiny_models_dir, tmp_path
):
    hub.bytes_per_second = 50_000
    server = serve(hub, tmp_path, tiny_models_dir)
    try:
        pulled = httpx.post(
            f"{server.base_url}/admin/models/{REPO_ID}/pull", headers=server.headers
        )
        assert pulled.status_code == 202
        url = server.base_url + pulled.json()["status_url"]
        time.sleep(0.5)
        cancelled = httpx.post(url + "/cancel", headers=server.headers, timeout=60)
        assert cancelled.json()["state"] == "cancelled"
        assert not snapshot_complete(tmp_path)
        hub.bytes_per_second = None
        again = httpx.post(f"{server.base_url}/admin/models/{REPO_ID}/pull", headers=server.headers)
        job_url = server.base_url + again.json()["status_url"]
        deadline = time.monotonic() + 60
        while httpx.get(job_url, headers=server.headers).json()["state"] == "downloading":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert httpx.get(job_url, headers=server.headers).json()["state"] == "done"
        assert snapshot_complete(tmp_path)
    finally:
        server.stop()


def test_disk_budget_running_out_mid_download_aborts_cleanly(
    hub, tiny_models_dir, tiny_repo_dirs, tmp_path
):
    real = tiny_repo_dirs["tiny-dl"] / "model.safetensors"
    hub.size_lies[(REPO_ID, "model.safetensors")] = 1000  # the hub under-reports the size
    server = serve(hub, tmp_path, tiny_models_dir, disk_budget="50KB")
    try:
        key = server.create_key("fooled", scopes=FULL)
        response = ask(server, key)
        assert response.status_code == 503
        assert "budget" in response.json()["error"]["message"]
        assert not snapshot_complete(tmp_path)
        assert real.stat().st_size > 50_000
    finally:
        server.stop()


def test_download_quota_persists_across_a_restart(hub, tiny_models_dir, tmp_path):
    first = serve(hub, tmp_path, tiny_models_dir)
    key = first.create_key("quota", scopes=FULL)
    size = None
    try:
        assert ask(first, key).status_code == 200
        size = hub.bytes_sent(REPO_ID)
    finally:
        first.stop()
    with open_accounts(tmp_path) as store:
        store.update(key.split("-")[1], limits={"download_bytes_per_day": int(size * 1.5)})
    shutil.rmtree(tmp_path / "hf-cache" / "models--mlx-community--other", ignore_errors=True)
    again = serve(hub, tmp_path, tiny_models_dir)
    try:
        hub.reset_counters()
        refused = ask(again, key, "mlx-community/other")
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "quota_exhausted"
        assert hub.bytes_sent() == 0
    finally:
        again.stop()


def test_request_waits_load_wait_then_503_with_progress_while_the_download_continues(
    hub, tiny_models_dir, tmp_path
):
    hub.bytes_per_second = 100_000  # the tiny model takes a few seconds
    server = serve(hub, tmp_path, tiny_models_dir)
    server.stop()
    server = GatewayServer(
        tiny_models_dir,
        tmp_path,
        default_model="tiny-a",
        env={
            "GATEWAY_CONFIG": str(tmp_path / "gateway.toml"),
            "HF_ENDPOINT": hub.endpoint,
            "GATEWAY_ENGINE_LOAD_WAIT": "0.5",
        },
    )
    try:
        key = server.create_key("impatient", scopes=FULL)
        waiting = ask(server, key)
        assert waiting.status_code == 503
        error = waiting.json()["error"]
        assert error["code"] == "model_loading"
        assert "downloading" in error["message"] and "%" in error["message"]
        assert int(waiting.headers["retry-after"]) >= 1
        deadline = time.monotonic() + 60
        while not snapshot_complete(tmp_path):  # the download went on without the client
            assert time.monotonic() < deadline
            time.sleep(0.2)
        hub.bytes_per_second = None
        server_response = None
        for _ in range(20):
            server_response = ask(server, key)
            if server_response.status_code == 200:
                break
            time.sleep(0.5)
        assert server_response is not None and server_response.status_code == 200
    finally:
        server.stop()


def test_cli_pull_downloads_with_progress_and_models_list_shows_it(hub, tmp_path):
    env = {
        "HF_ENDPOINT": hub.endpoint,
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "GATEWAY_DOWNLOADS_CACHE_DIR": str(tmp_path / "hf-cache"),
        "GATEWAY_MODELS_DISCOVER_HF_CACHE": "true",
        "PATH": "/usr/bin:/bin",
    }
    dirs = ["--data-dir", str(tmp_path), "--models-dir", str(tmp_path / "none")]

    def gateway(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", "models", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    pulled = gateway("pull", REPO_ID, "--data-dir", str(tmp_path))
    assert pulled.returncode == 0, pulled.stderr
    assert "pulled mlx-community/tiny-dl" in pulled.stdout
    assert "[" in pulled.stderr  # the progress bar
    assert snapshot_complete(tmp_path)
    listed = gateway("list", *dirs)
    assert REPO_ID in listed.stdout and "on_disk" in listed.stdout
    removed = gateway("rm", REPO_ID, *dirs)
    assert removed.returncode == 0, removed.stderr
    assert not snapshot_complete(tmp_path)


def test_removing_a_loaded_model_is_refused_unless_forced_by_draining(
    hub, tiny_models_dir, tmp_path
):
    server = serve(hub, tmp_path, tiny_models_dir)
    try:
        key = server.create_key("remover", scopes=FULL)
        assert ask(server, key).status_code == 200
        url = f"{server.base_url}/admin/models/{REPO_ID}"
        refused = httpx.delete(url, headers=server.headers)
        assert refused.status_code == 409
        assert refused.json()["error"]["code"] == "model_loaded"
        assert snapshot_complete(tmp_path)
        forced = httpx.delete(url, params={"force": "true"}, headers=server.headers, timeout=60)
        assert forced.status_code == 200, forced.text
        assert not snapshot_complete(tmp_path)
        assert server.model(REPO_ID)["state"] == "absent"
        assert ask(server, key).status_code == 200  # downloaded again on demand
    finally:
        server.stop()
