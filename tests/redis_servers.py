"""Real Redis topologies on localhost for the tests: a three-primary Cluster (with or without a
replica per primary) and a primary + replica watched by Sentinels. Every server is this test run's
own (free high ports, a temp directory, AOF on); the machine's Redis on 6379 is never touched.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable

import redis

REDIS_SERVER = shutil.which("redis-server") or "redis-server"
REDIS_CLI = shutil.which("redis-cli") or "redis-cli"


def free_ports(n: int) -> list[int]:
    """``n`` ports free now, from the high range (their +10000 cluster-bus ports must be free as well)."""
    ports: list[int] = []
    sockets = []
    while len(ports) < n:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        if port < 55000 and _free(port + 10000) and port not in ports:
            ports.append(port)
            sockets.append(s)
        else:
            s.close()
    for s in sockets:
        s.close()
    return ports


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def within(seconds: float, check: Callable[[], bool], what: str, pause: float = 0.1) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (redis.RedisError, OSError):
            pass
        time.sleep(pause)
    raise AssertionError(f"{what} within {seconds} s")


class Server:
    """One redis-server (or sentinel) process of ours."""

    def __init__(self, directory: Path, port: int, *args: str, sentinel: bool = False) -> None:
        self.directory, self.port, self.args, self.sentinel = directory, port, args, sentinel
        directory.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen | None = None

    def start(self) -> "Server":
        command = [REDIS_SERVER]
        if self.sentinel:
            config = self.directory / "sentinel.conf"
            if not config.exists():
                config.write_text("\n".join(self.args) + "\n")
            command += [str(config), "--sentinel"]
            command += ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory)]
        else:
            command += ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
                        "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", *self.args]
        with open(self.directory / "server.log", "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        within(10, lambda: self.client().ping(), f"redis-server on {self.port} answering")
        return self

    def client(self, **options) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1, **options)

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed on the way out."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


class Cluster:
    """Three primaries (and ``replicas`` per primary) made one cluster by ``redis-cli --cluster create``."""

    def __init__(self, directory: Path, replicas: int = 0, node_timeout_ms: int = 1000) -> None:
        self.replicas = replicas
        ports = free_ports(3 * (1 + replicas))
        self.servers = [Server(directory / str(port), port, "--cluster-enabled", "yes", "--cluster-config-file",
                               "nodes.conf", "--cluster-node-timeout", str(node_timeout_ms),
                               "--cluster-require-full-coverage", "yes")
                        for port in ports]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{s.port}" for s in self.servers)

    def start(self) -> "Cluster":
        for server in self.servers:
            server.start()
        subprocess.run([REDIS_CLI, "--cluster", "create", *(f"127.0.0.1:{s.port}" for s in self.servers),
                        "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        within(30, self.healthy, "the cluster reporting cluster_state:ok on every node", pause=0.2)
        if self.replicas:       # a WAIT before a replica's first sync would time out: wait for every link
            within(30, self.replicas_in_sync, "every replica in sync with its primary", pause=0.2)
        return self

    def replicas_in_sync(self) -> bool:
        roles = [s.client().info("replication") for s in self.servers if s.process is not None]
        replicas = [r for r in roles if r["role"] == "slave"]
        return len(replicas) == 3 * self.replicas and all(r["master_link_status"] == "up" for r in replicas)

    def healthy(self) -> bool:
        alive = [s for s in self.servers if s.process is not None and s.process.poll() is None]
        return all(s.client().cluster("info")["cluster_state"] == "ok" for s in alive)

    def primaries(self) -> list[Server]:
        return [s for s in self.servers if s.process is not None and s.process.poll() is None
                and s.client().info("replication")["role"] == "master"]

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


class SentinelSet:
    """A primary, its replica, and ``sentinels`` Sentinels watching them under ``service``."""

    def __init__(self, directory: Path, sentinels: int = 3, service: str = "riskengine",
                 down_after_ms: int = 1000) -> None:
        primary_port, replica_port, *sentinel_ports = free_ports(2 + sentinels)
        self.service = service
        self.primary = Server(directory / "primary", primary_port)
        self.replica = Server(directory / "replica", replica_port, "--replicaof", "127.0.0.1", str(primary_port))
        quorum = sentinels // 2 + 1
        self.sentinels = [Server(directory / f"sentinel-{port}", port,
                                 f"sentinel monitor {service} 127.0.0.1 {primary_port} {quorum}",
                                 f"sentinel down-after-milliseconds {service} {down_after_ms}",
                                 f"sentinel failover-timeout {service} 10000",
                                 f"sentinel parallel-syncs {service} 1", sentinel=True)
                          for port in sentinel_ports]

    @property
    def url(self) -> str:
        return "redis+sentinel://" + ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels) + f"/{self.service}"

    def start(self) -> "SentinelSet":
        self.primary.start()
        self.replica.start()
        within(20, lambda: self.replica.client().info("replication")["master_link_status"] == "up",
               "the replica in sync with the primary")
        for sentinel in self.sentinels:
            sentinel.start()
        within(20, lambda: all(self._sees_replica(s) for s in self.sentinels), "every sentinel seeing the replica")
        return self

    def _sees_replica(self, sentinel: Server) -> bool:
        client = sentinel.client()
        return (len(client.execute_command("SENTINEL", "REPLICAS", self.service)) >= 1
                and len(client.execute_command("SENTINEL", "SENTINELS", self.service)) == len(self.sentinels) - 1)

    def primary_port(self) -> int:
        host, port = self.sentinels[0].client().execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        return int(port)

    def stop(self) -> None:
        for server in [*self.sentinels, self.replica, self.primary]:
            server.stop()
