"""Hub models under attack: no weight byte before the last check, and byte
reservations that concurrent or lying downloads cannot walk through.

Each test asserts what did not happen: no weight byte fetched from the hub, no
complete snapshot, no more bytes in the cache than the budget, no more bytes
charged than the quota.
"""

from __future__ import annotations

import threading
import time

import httpx

from policies.principal import Limits
from tests.support.downloads import (
    FULL,
    REPO_ID,
    ask,
    cache_bytes,
    serve,
    snapshot_complete,
)

OTHER = "mlx-community/other"


def downloaded_by(server, key: str) -> int:
    with server.accounts() as store:
        return store.download_bytes_since(key.split("-")[1], 0)


def usage_requests(server, key: str) -> int:
    with server.accounts() as store:
        rows = store.usage_summary(key_id=key.split("-")[1])
    return sum(r["requests"] for r in rows)


def in_parallel(*calls) -> list[httpx.Response]:
    results: list[httpx.Response | None] = [None] * len(calls)

    def run(i: int) -> None:
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


def test_rate_limited_key_asks_the_hub_nothing(hub, tiny_models_dir, tmp_path):
    server = serve(hub, tmp_path, tiny_models_dir)
    try:
        key = server.create_key("hasty", scopes=FULL, limits=Limits(requests_per_minute=1))
        assert ask(server, key, "tiny-a").status_code == 200
        hub.reset_counters()
        refused = ask(server, key)
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert hub.requests == []  # not even the metadata
        assert not snapshot_complete(tmp_path)
    finally:
        server.stop()


def test_key_allowed_no_loads_downloads_nothing(hub, tiny_models_dir, tmp_path):
    server = serve(hub, tmp_path, tiny_models_dir)
    try:
        key = server.create_key("noloads", scopes=FULL, limits=Limits(loads_per_hour=0))
        hub.reset_counters()
        refused = ask(server, key)
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["code"] == "quota_exhausted"
        assert hub.bytes_sent() == 0
        assert not snapshot_complete(tmp_path)
        assert usage_requests(server, key) == 0
    finally:
        server.stop()


def test_model_whose_kv_cache_never_fits_gets_507_before_any_weight_byte(
    hub, tiny_models_dir, tmp_path
):
    server = serve(hub, tmp_path, tiny_models_dir)
    try:
        key = server.create_key("greedy", scopes=FULL)
        hub.reset_counters()
        refused = ask(server, key, "mlx-community/huge-context")
        assert refused.status_code == 507, refused.text
        assert refused.json()["error"]["code"] == "insufficient_memory"
        assert hub.weight_bytes_sent() == 0  # only config.json was read, into memory
        assert not snapshot_complete(tmp_path, "mlx-community/huge-context")
        assert cache_bytes(tmp_path) == 0
        assert downloaded_by(server, key) == 0
    finally:
        server.stop()


def test_two_concurrent_pulls_by_one_key_stay_inside_its_daily_quota(
    hub, tiny_models_dir, tmp_path
):
    hub.bytes_per_second = 300_000  # both would be under way at once
    server = serve(hub, tmp_path, tiny_models_dir)
    try:
        quota = 500_000  # one tiny model (about 370 KB) fits, two do not
        key = server.create_key("twice", scopes=FULL, limits=Limits(download_bytes_per_day=quota))
        results = in_parallel(lambda: ask(server, key), lambda: ask(server, key, OTHER))
        statuses = sorted(r.status_code for r in results)
        assert statuses == [200, 403], [r.text for r in results]
        refused = next(r for r in results if r.status_code == 403)
        assert refused.json()["error"]["code"] == "quota_exhausted"
        assert downloaded_by(server, key) <= quota
        assert hub.weight_bytes_sent() <= quota
    finally:
        server.stop()


def test_two_concurrent_pulls_stay_inside_the_disk_budget(hub, tiny_models_dir, tmp_path):
    hub.bytes_per_second = 300_000
    budget = 600_000
    server = serve(hub, tmp_path, tiny_models_dir, disk_budget=str(budget))
    try:
        first = server.create_key("one", scopes=FULL)
        second = server.create_key("two", scopes=FULL)
        results = in_parallel(lambda: ask(server, first), lambda: ask(server, second, OTHER))
        statuses = sorted(r.status_code for r in results)
        assert statuses == [200, 507], [r.text for r in results]
        assert cache_bytes(tmp_path) <= budget
    finally:
        server.stop()


def test_hub_that_under_reports_is_stopped_at_the_key_quota_and_leaves_nothing(
    hub, tiny_models_dir, tmp_path
):
    hub.size_lies[(REPO_ID, "model.safetensors")] = 7_000  # the real file is about 370 KB
    server = serve(hub, tmp_path, tiny_models_dir)
    try:
        quota = 100_000
        key = server.create_key("lied-to", scopes=FULL, limits=Limits(download_bytes_per_day=quota))
        response = ask(server, key)
        assert response.status_code == 503, response.text
        assert "quota" in response.json()["error"]["message"]
        assert not snapshot_complete(tmp_path)
        assert cache_bytes(tmp_path) < quota  # the partial file was removed
        # Nothing of it can be used: the model is not served, and no retry completes it.
        assert ask(server, key).status_code != 200
        assert not snapshot_complete(tmp_path)
    finally:
        server.stop()


def test_names_that_are_not_hub_repos_answer_4xx_and_mint_no_metric_series(
    hub, tiny_models_dir, tmp_path
):
    server = serve(hub, tmp_path, tiny_models_dir)
    try:
        key = server.create_key("prober", scopes=FULL)

        def series() -> int:
            text = httpx.get(server.base_url + "/metrics", headers=server.headers).text
            return sum(1 for line in text.splitlines() if line.startswith("gateway_"))

        for model in ("evil-org/first", "mlx-community/absent-first"):  # one of each kind
            ask(server, key, model)
            httpx.post(
                server.base_url + "/v1/messages/count_tokens",
                json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
                headers={"x-api-key": key},
                timeout=30,
            )
        series()  # the scrape itself is counted once
        before = series()
        hub.reset_counters()
        for i in range(40):
            for model in (f"evil-org/x{i}", f"mlx-community/absent-{i}"):
                response = ask(server, key, model)
                assert response.status_code in (403, 404), response.text
                counted = httpx.post(
                    server.base_url + "/v1/messages/count_tokens",
                    json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
                    headers={"x-api-key": key},
                    timeout=30,
                )
                assert counted.status_code == 400, counted.text  # not on disk: no tokenizer
        assert series() == before
        assert hub.bytes_sent() == 0
    finally:
        server.stop()


def test_a_download_waited_for_is_not_charged_twice_to_a_second_key(hub, tiny_models_dir, tmp_path):
    hub.bytes_per_second = 300_000
    server = serve(hub, tmp_path, tiny_models_dir)
    try:
        first = server.create_key("starter", scopes=FULL)
        second = server.create_key("rider", scopes=FULL, limits=Limits(download_bytes_per_day=1))
        started = threading.Thread(target=lambda: ask(server, first))
        started.start()
        time.sleep(0.3)
        # The second key could never afford the download, but it is already under way.
        joined = ask(server, second)
        started.join(120)
        assert joined.status_code in (200, 403), joined.text
        assert downloaded_by(server, second) == 0
    finally:
        server.stop()
