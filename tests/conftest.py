"""Shared fixtures: the bundled model, tiny random models and real gateway servers."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import openai
import pytest

from tests.support.postgres import PostgresServer, running_postgres
from tests.support.server import REPO, GatewayServer


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


CACHE = Path(os.environ.get("GATEWAY_TEST_CACHE", REPO / ".cache"))


@pytest.fixture(scope="session")
def bundled_models_dir() -> Path:
    """A models directory holding the converted bundled model (made once, then cached)."""
    from engine.bundled import ensure_bundled_model

    models = CACHE / "models"
    ensure_bundled_model(models, CACHE / "downloads")
    return models


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models directory with two tiny random-weight models, ``tiny-a`` and ``tiny-b``."""
    models = tmp_path_factory.mktemp("tiny-models")
    for seed, name in enumerate(["tiny-a", "tiny-b"]):
        subprocess.run(
            [sys.executable, "-m", "tests.support.tiny_model", str(models / name), str(seed)],
            check=True,
            cwd=REPO,
        )
    return models


@pytest.fixture(scope="module")
def bundled_server(
    bundled_models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayServer]:
    server = GatewayServer(
        bundled_models_dir, tmp_path_factory.mktemp("data"), default_model="smollm2-135m-instruct"
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tiny_server(
    tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayServer]:
    server = GatewayServer(tiny_models_dir, tmp_path_factory.mktemp("data"), default_model="tiny-a")
    yield server
    server.stop()


@pytest.fixture
def make_client() -> Iterator[Callable[..., openai.OpenAI]]:
    """OpenAI SDK clients pointed at a test server, closed after the test."""
    clients: list[openai.OpenAI] = []

    def make(server: GatewayServer, *, retries: int = 0) -> openai.OpenAI:
        client = openai.OpenAI(
            base_url=server.base_url + "/v1", api_key=server.admin_key, max_retries=retries
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL server for the session (``tests.support.postgres``;
    the tests that use it are skipped where PostgreSQL is not installed)."""
    with running_postgres() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a new empty database on that server, dropped after the test."""
    name = f"t_{secrets.token_hex(6)}"
    url = postgres_server.create_database(name)
    yield url
    postgres_server.drop_database(name)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--shared-stores",
        action="store_true",
        help="run every gateway on PostgreSQL (keys, usage) and Redis (counters), "
        "servers started by the fixtures, instead of SQLite and memory",
    )


@pytest.fixture(scope="session", autouse=True)
def shared_stores(request: pytest.FixtureRequest) -> Iterator[None]:
    """Under ``--shared-stores``, one PostgreSQL and one Redis for every gateway."""
    if not request.config.getoption("--shared-stores"):
        yield
        return
    from tests.support import server as support
    from tests.support.redis_server import running_redis

    postgres = request.getfixturevalue("postgres_server")
    with running_redis() as redis:
        support.SHARED = support.SharedStores(postgres, redis.url)
        try:
            yield
        finally:
            support.SHARED = None
