"""The README's run command: the local stack comes up, its workers say how they reached each other, and
Ctrl-C or SIGTERM stops it in order: the workers and the relay unregister from a rendezvous still up."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REGISTERED = ("worker-1", "worker-2", "worker-3", "chatbot", "relay")  # every child that registers somewhere


def start_stack(state: Path, *, sigint_ignored: bool = False) -> subprocess.Popen:
    """`scripts/stack.py --base-port 0` (free ports) in a process group of its own, as a terminal's foreground
    job is; with `sigint_ignored`, started as `scripts/run.sh &` in a script or nohup start it."""
    command = [sys.executable, str(ROOT / "scripts" / "stack.py"), "--base-port", "0"]
    if sigint_ignored:
        command = ["bash", "-c", 'trap "" INT; exec "$@"', "stack", *command]
    return subprocess.Popen(command, env={**os.environ, "STACK_STATE_DIR": str(state)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def paths_printed(proc: subprocess.Popen, lines: list[str], timeout: float = 60) -> dict[tuple[str, str], str]:
    """(worker, peer) -> path, from the stack's `connected to` lines, once each worker has reached the others."""
    paths: dict[tuple[str, str], str] = {}
    deadline = time.monotonic() + timeout
    os.set_blocking(proc.stdout.fileno(), False)
    while time.monotonic() < deadline and len(paths) < 6:  # 3 workers: each reaches the other two
        line = proc.stdout.readline()
        if not line:
            assert proc.poll() is None, "".join(lines)
            time.sleep(0.05)
            continue
        lines.append(line)
        words = line.split()
        if "connected" in words and "to" in words:
            paths[(words[0], words[words.index("to") + 1])] = line.split("path=")[1].split()[0]
    return paths


def stopped(proc: subprocess.Popen, lines: list[str], how) -> int:
    how()
    try:
        status = proc.wait(40)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise AssertionError("the stack did not stop:\n" + "".join(lines))
    os.set_blocking(proc.stdout.fileno(), True)
    lines.extend(proc.stdout.readlines())
    return status


def last_messages(log: Path) -> list[str]:
    messages = []
    for line in log.read_text().splitlines():
        try:
            messages.append(json.loads(line)["message"])
        except (ValueError, KeyError):
            continue
    return messages


def assert_every_child_unregistered(state: Path) -> None:
    for name in REGISTERED:
        messages = last_messages(state / "logs" / f"{name}.log")
        assert "unregistered" in messages[-3:], f"{name}: {messages[-5:]}"
        assert not any(m.startswith("could not unregister") for m in messages), f"{name}: {messages[-5:]}"


def test_the_local_stack_connects_its_workers_prints_each_path_and_stops_on_sigterm(tmp_path):
    proc = start_stack(tmp_path)
    lines: list[str] = []
    try:
        paths = paths_printed(proc, lines)
    finally:
        status = stopped(proc, lines, lambda: proc.send_signal(signal.SIGTERM))
    output = "".join(lines)
    assert len(paths) == 6, output
    assert paths[("worker-1", "worker-2")] == "direct", output
    # worker-3 listens nowhere: the others reach it through the relay, then DCUtR makes it direct
    assert paths[("worker-1", "worker-3")] == "hole-punched", output
    assert paths[("worker-3", "worker-2")] == "hole-punched", output
    assert status == 0, output
    assert (tmp_path / "logs" / "worker-1.log").read_text().count('"holepunch: connected') >= 2
    assert_every_child_unregistered(tmp_path)


def test_ctrl_c_stops_the_stack_in_order_even_when_it_was_started_with_sigint_ignored(tmp_path):
    proc = start_stack(tmp_path, sigint_ignored=True)
    lines: list[str] = []
    try:
        assert len(paths_printed(proc, lines)) == 6, "".join(lines)
    finally:
        # what Ctrl-C at a terminal does: SIGINT to every process of the foreground group at once
        status = stopped(proc, lines, lambda: os.killpg(proc.pid, signal.SIGINT))
    assert status == 0, "".join(lines)
    assert "stopping (SIGINT)" in "".join(lines)
    assert_every_child_unregistered(tmp_path)
