"""The README's run command: the local stack comes up and its workers say how they reached each other."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_local_stack_connects_its_workers_and_prints_each_path(tmp_path):
    base = random.randrange(30000, 60000, 100)
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "stack.py"), "--base-port", str(base)],
                            env={**os.environ, "STACK_STATE_DIR": str(tmp_path)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines, paths = [], {}
    deadline = time.monotonic() + 60
    try:
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
    finally:
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(30)
    output = "".join(lines)
    assert len(paths) == 6, output
    assert paths[("worker-1", "worker-2")] == "direct", output
    # worker-3 listens nowhere: the others reach it through the relay, then DCUtR makes it direct
    assert paths[("worker-1", "worker-3")] in ("relayed", "hole-punched"), output
    assert paths[("worker-3", "worker-2")] in ("relayed", "hole-punched"), output
    assert status == 0
    assert (tmp_path / "logs" / "worker-1.log").read_text().count('"holepunch: connected') >= 2
