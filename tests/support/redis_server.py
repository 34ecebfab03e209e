"""A throwaway Redis server for tests, from the installed ``redis-server``.

``running_redis()`` starts ``redis-server`` in a fresh temporary directory on a Unix
socket only (``--port 0``: no TCP), without persistence, and yields a
``RedisServer``: its ``unix://`` URL, ``stop()`` and ``start()`` (the same socket
again, empty: for outage and recovery tests) and ``flush()``.  At the end it stops
the server (SIGTERM, then SIGKILL) and removes the directory.  Redis runs as root
too (CI), so no user switch is needed.

``find_redis_server()`` looks in ``PATH``, ``/usr/bin`` and ``/usr/local/bin``;
``running_redis()`` skips the calling test when there is none.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0


def find_redis_server() -> Path | None:
    """The ``redis-server`` binary, else ``None``."""
    candidates = [
        shutil.which("redis-server"),
        "/usr/bin/redis-server",
        "/usr/local/bin/redis-server",
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def _command(sock: Path, reply_len: int, *words: str) -> bytes:
    """Send one command over the socket (RESP) and read ``reply_len`` bytes of its reply."""
    request = f"*{len(words)}\r\n".encode()
    for word in words:
        request += f"${len(word.encode())}\r\n{word}\r\n".encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2.0)
        s.connect(str(sock))
        s.sendall(request)
        reply = b""
        while len(reply) < reply_len and (chunk := s.recv(reply_len - len(reply))):
            reply += chunk
        return reply


class RedisServer:
    """One ``redis-server`` in ``root`` on ``root/redis.sock`` (see the module docstring)."""

    def __init__(self, binary: Path, root: Path) -> None:
        self.binary = binary
        self.root = root
        self.socket = root / "redis.sock"
        self.log = root / "redis.log"
        self.url = f"unix://{self.socket}"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server (again: empty, on the same socket) and wait until it answers."""
        if self._proc is not None and self._proc.poll() is None:
            return
        command = [str(self.binary), "--port", "0", "--unixsocket", str(self.socket)]
        command += ["--unixsocketperm", "700", "--save", "", "--appendonly", "no"]
        command += ["--dir", str(self.root), "--daemonize", "no", "--logfile", ""]
        with self.log.open("ab") as out:
            self._proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with {self._proc.returncode}:\n{self.log.read_text()}"
                )
            with contextlib.suppress(OSError):
                if _command(self.socket, 7, "PING") == b"+PONG\r\n":
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start in time:\n{self.log.read_text()}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL); its data is gone."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def flush(self) -> None:
        """Remove every key."""
        if _command(self.socket, 5, "FLUSHALL") != b"+OK\r\n":
            raise RuntimeError("FLUSHALL failed")


@contextlib.contextmanager
def running_redis() -> Iterator[RedisServer]:
    """A fresh Redis server for the duration of the block (see the module docstring)."""
    binary = find_redis_server()
    if binary is None:
        pytest.skip(
            "Redis is not installed: no redis-server in PATH, /usr/bin or /usr/local/bin"
            " (Debian: apt-get install redis-server)"
        )
    # A short path of its own: a Unix socket's path must fit in about 100 bytes.
    root = Path(tempfile.mkdtemp(prefix="gw-redis-"))
    server = RedisServer(binary, root)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
