"""PROCESSES: several worker processes serve one port (SO_REUSEPORT) as one replica: each answers requests,
/metrics on any of them shows their sum, SIGTERM drains them all, and a worker that dies (or cannot start)
stops the replica loudly. Real processes on a real Redis; which worker holds a connection is read from
the kernel (psutil), so nothing in the service has to say who answered."""
from __future__ import annotations

import contextlib
import http.client
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rendezvous.settings import ConfigError, Settings, available_cpus
from shared.registration import sign_registration
from tests.helpers import new_key
from tests.servers import COOKIE_KEY, free_port

START_SECONDS = 40  # two interpreters starting on a machine busy with builds


@contextlib.contextmanager
def replica(redis_url: str, key_prefix: str, log: pathlib.Path, **env: str):
    """`rendezvous` with PROCESSES=2 (unless `env` says otherwise) and its JSON log lines in `log`."""
    port = free_port()
    environ = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "REDIS_URL": redis_url,
               "COOKIE_HMAC_KEY": COOKIE_KEY.decode(), "KEY_PREFIX": key_prefix, "PROCESSES": "2", **env}
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "rendezvous.cli"], env=environ, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        yield port, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for leftover in _started_workers(log):  # a test that failed half-way leaves nothing running
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(leftover).kill()


def lines(log: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def _started_workers(log: pathlib.Path) -> list[int]:
    return [pid for line in lines(log) if line["message"] == "rendezvous workers started" for pid in line["pids"]]


def until(condition, seconds: float = START_SECONDS, what: str = ""):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what or condition}")


def listening_workers(log: pathlib.Path, count: int = 2) -> list[int]:
    """The worker PIDs once each has logged that it listens."""
    def ready() -> list[int] | None:
        pids = _started_workers(log)
        listening = {line["pid"] for line in lines(log) if line["message"] == "rendezvous listening"}
        return pids if len(pids) == count and listening == set(pids) else None
    return until(ready, what="both workers to listen")


def holder(sock: socket.socket, workers: list[int]) -> int:
    """The worker whose socket is the far end of `sock`'s connection, once one has accepted it."""
    here = sock.getsockname()

    def accepted() -> int | None:
        return next((pid for pid in workers if any(c.raddr and tuple(c.raddr) == here
                                                   for c in psutil.Process(pid).net_connections("tcp"))), None)
    return until(accepted, 10, f"a worker to accept the connection from {here}")


def get(connection: http.client.HTTPConnection, path: str) -> tuple[int, bytes]:
    connection.request("GET", path)
    response = connection.getresponse()
    return response.status, response.read()


def samples(text: bytes, name: str) -> list[tuple[dict, float]]:
    return [(sample.labels, sample.value) for family in text_string_to_metric_families(text.decode())
            for sample in family.samples if sample.name == name]


def test_two_workers_each_answer_and_metrics_on_either_add_up_both(redis_server, key_prefix, tmp_path):
    log, door_port = tmp_path / "rendezvous.log", free_port()
    with replica(redis_server.url, key_prefix, log, LIBP2P_TCP_PORT=str(door_port), LIBP2P_HOST="127.0.0.1") \
            as (port, proc):
        workers = listening_workers(log)
        connections = [http.client.HTTPConnection("127.0.0.1", port, timeout=10) for _ in range(16)]
        sent = 0
        for index, connection in enumerate(connections):
            for _ in range(1 + index % 3):
                assert get(connection, "/healthz")[0] == 200
                sent += 1
        by_worker: dict[int, list[http.client.HTTPConnection]] = {pid: [] for pid in workers}
        for connection in connections:
            by_worker[holder(connection.sock, workers)].append(connection)
        assert all(by_worker.values()), {pid: len(held) for pid, held in by_worker.items()}  # both answered

        namespace = f"{key_prefix}-procs"
        connections[0].request("POST", "/peers", body=sign_registration(new_key(), namespace, [], 60))
        response = connections[0].getresponse()
        assert response.status == 201, response.read()
        response.read()
        for pid, held in by_worker.items():  # scraped from each worker in turn: the same totals
            status, text = get(held[0], "/metrics")
            assert status == 200
            healthz = [value for labels, value in samples(text, "rendezvous_http_requests_total")
                       if labels == {"route": "/healthz", "method": "GET", "status": "200"}]
            assert healthz == [sent], pid
            assert samples(text, "rendezvous_registrations_total") == [({"outcome": "created"}, 1.0)]
            # a fact about Redis, read by the scraped worker: once, with no per-process label
            assert samples(text, "rendezvous_live_peers") == [({"namespace": namespace}, 1.0)]

        # watch streams held by both workers: the gauge shows their sum, once, with no per-process label
        watches, holders = [], set()
        while len(holders) < 2 and len(watches) < 20:
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(f"GET /peers/watch?namespace={namespace} HTTP/1.1\r\nHost: r\r\n\r\n".encode())
            assert b" 200 " in sock.recv(4096).split(b"\r\n", 1)[0]
            watches.append(sock)
            holders.add(holder(sock, workers))
        assert len(holders) == 2
        assert samples(get(connections[0], "/metrics")[1], "rendezvous_watchers") == [({}, float(len(watches)))]
        for sock in watches:
            sock.close()

        # the libp2p door listens in one worker only (each would otherwise try to bind its port)
        door = [pid for pid in workers if any(c.status == psutil.CONN_LISTEN and c.laddr.port == door_port
                                              for c in psutil.Process(pid).net_connections("tcp"))]
        assert len(door) == 1
        for connection in connections:
            connection.close()
        assert proc.poll() is None


def test_no_worker_answers_before_the_door_listens(redis_server, key_prefix, tmp_path):
    """The door lives in worker 0 and starts slower than plain HTTP (py-libp2p loads for a second): a
    /healthz from another worker must not say the replica is up while its door is not."""
    door_port = free_port()
    with replica(redis_server.url, key_prefix, tmp_path / "rendezvous.log", LIBP2P_TCP_PORT=str(door_port),
                 LIBP2P_HOST="127.0.0.1") as (port, proc):
        def healthy() -> bool:
            with contextlib.suppress(OSError):
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                try:
                    return get(connection, "/healthz")[0] == 200
                finally:
                    connection.close()
            return False
        until(healthy, 30, "the replica to answer")
        with socket.create_connection(("127.0.0.1", door_port), timeout=2):
            pass  # the door was listening by then
        assert proc.poll() is None


def _slow_post(port: int, body: bytes) -> socket.socket:
    """A registration whose body is still arriving: its headers and the first bytes only."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    sock.sendall(b"POST /peers HTTP/1.1\r\nHost: rendezvous\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:10])
    return sock


def test_sigterm_drains_every_worker_and_finishes_the_requests_in_flight(redis_server, key_prefix, tmp_path):
    log = tmp_path / "rendezvous.log"
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = pathlib.Path(tempfile.gettempdir()) / f"rendezvous-metrics-{gone.pid}-left-by-a-sigkill"
    stale.mkdir()  # a supervisor's metrics directory, that supervisor killed (no longer running)
    with replica(redis_server.url, key_prefix, log, LOG_LEVEL="INFO") as (port, proc):
        workers = listening_workers(log)
        bodies, in_flight = {}, {}
        for _ in range(64):  # a slow request on each worker
            body = sign_registration(new_key(), "draining", [], 60)
            sock = _slow_post(port, body)
            pid = holder(sock, workers)
            if pid in in_flight:
                sock.close()
                continue
            in_flight[pid], bodies[pid] = sock, body
            if len(in_flight) == 2:
                break
        assert set(in_flight) == set(workers)
        time.sleep(0.5)  # both handlers are reading their bodies
        proc.send_signal(signal.SIGTERM)
        until(lambda: sum(line["message"] == "stopping: draining the requests in flight" for line in lines(log)) == 2,
              15, "both workers to drain")
        with pytest.raises(ConnectionRefusedError):  # no worker takes new connections any more
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        for pid, sock in in_flight.items():
            sock.sendall(bodies[pid][10:])
            answer = sock.makefile("rb").read()  # the worker answers, then closes: it is stopping
            assert answer.startswith(b"HTTP/1.1 201 "), answer[:200]
            sock.close()
        assert proc.wait(15) == 0
        assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                       for pid in workers)
    # the supervisor removed its metrics directory, and the stale one at its start
    assert not list(pathlib.Path(tempfile.gettempdir()).glob(f"rendezvous-metrics-{proc.pid}-*"))
    assert not stale.exists()


def test_a_sigterm_while_the_workers_start_stops_them_cleanly(redis_server, key_prefix, tmp_path):
    """Cloud Run may stop an instance that is still starting: a worker that was still loading its modules
    must not die of the signal's default action (status -15), which would fail the whole replica."""
    log = tmp_path / "rendezvous.log"
    with replica(redis_server.url, key_prefix, log) as (port, proc):
        workers = until(lambda: _started_workers(log), what="the workers to be started")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, [line for line in lines(log) if line["severity"] != "INFO"]
        assert not any(psutil.pid_exists(pid) for pid in workers)


def test_a_killed_worker_stops_the_replica_with_status_1(redis_server, key_prefix, tmp_path):
    log = tmp_path / "rendezvous.log"
    with replica(redis_server.url, key_prefix, log) as (port, proc):
        workers = listening_workers(log)
        os.kill(workers[1], signal.SIGKILL)
        assert proc.wait(20) == 1  # not serving on with one worker fewer
        assert not psutil.pid_exists(workers[0])
        assert any(line["message"] == "a worker stopped on its own: stopping the others"
                   and line["worker_pid"] == workers[1] for line in lines(log))


def test_a_worker_that_cannot_start_stops_every_worker(redis_server, key_prefix, tmp_path):
    log = tmp_path / "rendezvous.log"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        # worker 0 runs the libp2p door, on a port already in use: it cannot start
        with replica(redis_server.url, key_prefix, log, LIBP2P_TCP_PORT=str(taken.getsockname()[1]),
                     LIBP2P_HOST="127.0.0.1") as (port, proc):
            assert proc.wait(START_SECONDS) == 1
            workers = _started_workers(log)
            assert len(workers) == 2 and not any(psutil.pid_exists(pid) for pid in workers)
            assert any(line["severity"] == "CRITICAL" and "cannot start" in line["message"] for line in lines(log))


@pytest.mark.parametrize("value, message", [("0", "0 is outside 1..256"), ("two", "expected an integer"),
                                            ("257", "257 is outside 1..256")])
def test_a_bad_processes_value_names_the_option(value, message):
    with pytest.raises(ConfigError) as err:
        Settings.parse([], {"REDIS_URL": "redis://127.0.0.1:6390/0", "COOKIE_HMAC_KEY": "c" * 32, "PROCESSES": value})
    assert str(err.value).startswith(f"PROCESSES (--processes): {message}")


def test_several_processes_need_redis_and_auto_is_one_with_the_embedded_store():
    with pytest.raises(ConfigError) as err:
        Settings.parse(["--processes", "2"], {})
    assert str(err.value).startswith("PROCESSES (--processes): more than 1 needs REDIS_URL")
    assert Settings.parse([], {}).processes == 1
    redis = {"REDIS_URL": "redis://127.0.0.1:6390/0", "COOKIE_HMAC_KEY": "c" * 32}
    assert Settings.parse([], redis).processes == available_cpus()
    assert Settings.parse([], {**redis, "PROCESSES": "3"}).processes == 3


@pytest.mark.parametrize("files, cpus", [
    ({"cpu.max": "150000 100000"}, 1),  # 1.5 CPUs of quota: 1 worker, rounded down
    ({"cpu.max": "50000 100000"}, 1),  # half a CPU: still one
    ({"cpu.max": "max 100000"}, None),  # no quota: the affinity
    ({"cpu/cpu.cfs_quota_us": "250000", "cpu/cpu.cfs_period_us": "100000"}, 2),  # cgroup v1
    ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None),
    ({}, None),
])
def test_auto_counts_the_cpus_the_container_is_given(tmp_path, files, cpus):
    # the process's own cgroup v2 group, under the fake root, as available_cpus finds it
    group = next((line.split("::", 1)[1].lstrip("/") for line in
                  pathlib.Path("/proc/self/cgroup").read_text().splitlines() if line.startswith("0::")), "")
    for name, text in files.items():
        path = tmp_path / (group if name == "cpu.max" else "") / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    affinity = len(os.sched_getaffinity(0))
    assert available_cpus(tmp_path) == (affinity if cpus is None else min(cpus, affinity))
