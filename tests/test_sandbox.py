"""The code sandbox: hostile solutions neither hang nor harm the runner, and are failures."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from latentmas.sandbox import Limits, run_python

FAST = Limits(wall_seconds=5, cpu_seconds=5, memory_bytes=512 << 20, output_bytes=1 << 16, processes=32)


def test_correct_code_passes_and_output_is_captured():
    result = run_python("print('hello')\nassert 1 + 1 == 2\n", FAST)
    assert result.passed and "hello" in result.output


def test_failing_assertion_fails():
    result = run_python("assert 1 + 1 == 3\n", FAST)
    assert result.status == "failed" and "AssertionError" in result.output


def test_infinite_loop_times_out_quickly():
    start = time.monotonic()
    result = run_python("while True:\n    pass\n", Limits(wall_seconds=2, cpu_seconds=10))
    assert result.status == "timeout" and not result.passed
    assert time.monotonic() - start < 10


def test_memory_bomb_fails_without_taking_the_machine():
    result = run_python("x = bytearray(8 * 1024**3)\n", FAST)
    assert result.status == "failed" and "MemoryError" in result.output


def test_fork_loop_is_contained():
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    start = time.monotonic()
    result = run_python(code, Limits(wall_seconds=3, cpu_seconds=5, processes=16))
    assert not result.passed
    assert time.monotonic() - start < 20
    time.sleep(0.5)
    # No forked child outlives the run.
    leftovers = os.popen("ps -eo cmd | grep -c '[l]atentmas-sandbox'").read().strip()
    assert leftovers == "0"


def test_rm_rf_home_cannot_touch_the_runner(tmp_path):
    canary = tmp_path / "runner-file.txt"
    canary.write_text("precious")
    code = (
        "import os, shutil\n"
        "os.system('rm -rf ~ 2>/dev/null')\n"
        f"shutil.rmtree({str(tmp_path)!r}, ignore_errors=True)\n"
        f"open({str(canary)!r}, 'w').write('overwritten')\n"
    )
    result = run_python(code, FAST)
    assert not result.passed
    assert canary.read_text() == "precious"
    assert Path.home().exists()


def test_print_loop_is_cut_off_by_the_output_limit():
    """The file-size limit stops it, long before the clock would."""
    limits = Limits(wall_seconds=30, cpu_seconds=30, output_bytes=1 << 16)
    result = run_python("while True:\n    print('x' * 1000)\n", limits)
    assert result.status == "failed"  # not "timeout": the size limit ended it
    assert result.seconds < 15


@pytest.mark.skipif(os.geteuid() != 0, reason="network isolation needs root or unprivileged user namespaces")
def test_no_network():
    """A server listens on the runner's loopback; unconfined code would reach it."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        code = (
            f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=3)\nprint('CONNECTED')\n"
        )
        result = run_python(code, FAST)
    assert not result.passed and "CONNECTED" not in result.output
    assert "unreachable" in result.output.lower()  # no route at all, not a refused connection
