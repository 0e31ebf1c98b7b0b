"""A real ``redis-server`` (Debian's package) for the tests: started on 127.0.0.1 on a free port,
without persistence, in its own temporary directory."""

from __future__ import annotations

import atexit
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class RedisServer:
    """One redis-server process; ``stop()`` (SIGKILL, a crash) and ``start()`` again keep the port.

    ``durable``: an append-only file fsynced on every write, as a production ledger should run, so
    a crashed and restarted server still has every counter and hold.
    """

    def __init__(self, directory: Path, port: int | None = None, *, durable: bool = False) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.durable = durable
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0, **options: str) -> str:
        query = "&".join(f"{name}={value}" for name, value in options.items())
        return f"redis://127.0.0.1:{self.port}/{db}" + (f"?{query}" if query else "")

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             *(["--appendonly", "yes", "--appendfsync", "always"] if self.durable else ["--appendonly", "no"]),
             "--dir", str(self.directory), "--logfile", str(self.directory / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)
        deadline = time.monotonic() + 10
        try:
            while True:
                try:
                    client.ping()
                    return self
                except redis.ConnectionError:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        log = (self.directory / "redis.log").read_text(errors="replace")
                        raise RuntimeError(f"redis-server did not start on port {self.port}:\n{log}") from None
                    time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


_shared: list[RedisServer] = []


def shared_server() -> RedisServer:
    """The session's server, started on first use (also by code outside fixtures, such as the
    ledger factories of the property test) and stopped when the interpreter exits."""
    if not _shared:
        directory = Path(tempfile.mkdtemp(prefix="agentguard-redis-"))
        _shared.append(RedisServer(directory).start())
        atexit.register(stop_shared_server)
    return _shared[0]


def stop_shared_server() -> None:
    while _shared:
        server = _shared.pop()
        server.stop()
        shutil.rmtree(server.directory, ignore_errors=True)
