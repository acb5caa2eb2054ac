"""The code sandbox: hostile solutions neither hang nor harm the runner, and are failures."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import latentmas
from latentmas.evaluation import sandbox
from latentmas.evaluation.sandbox import Limits, SandboxUnavailable, run_python

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
    # Denied by Landlock, or no route at all in a network namespace: never a refused connection.
    assert "permission denied" in result.output.lower() or "unreachable" in result.output.lower()


def test_reading_outside_its_directory_is_denied():
    result = run_python("print(open('/etc/hostname').read())\n", FAST)
    assert not result.passed and "Permission denied" in result.output


def test_without_landlock_grading_refuses_in_one_line_unless_opted_in(monkeypatch):
    monkeypatch.setattr(sandbox, "landlock_abi", lambda: 0)
    monkeypatch.delenv(sandbox.UNSAFE_ENV, raising=False)
    with pytest.raises(SandboxUnavailable, match=r"needs Landlock.*--unsafe-exec"):
        run_python("print('hi')\n", FAST)
    monkeypatch.setenv(sandbox.UNSAFE_ENV, "1")
    assert run_python("print('hi')\n", FAST).passed  # the bootstrap still confines what it can


# --- The same hostile programs, graded by a normal (unprivileged) user ---------------------
# CI runs as root, so the grading process itself drops to `nobody` with a home of its own:
# a copy of the sandbox (standard library only) under the system Python.

HOSTILE = {
    "delete a file of the caller": "import os\nos.remove({precious!r})\n",
    "write to the caller's home": "open({home!r} + '/planted.txt', 'w').write('x')\n",
    "read a file outside its directory": "print(open({secret!r}).read())\n",
    "open a socket": "import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=3)\nprint('CONNECTED')\n",
    "fork bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
    "fill the disk": "i = 0\nwhile True:\n    open(f'f{{i}}', 'wb').write(b'x' * (1 << 19))\n    i += 1\n",
}


@pytest.fixture(scope="module")
def normal_user():
    """(run, home): `run(code)` grades `code` from a process of the user `nobody`."""
    system_python = shutil.which("python3", path="/usr/bin:/bin")
    if os.geteuid() == 0 and (system_python is None or shutil.which("setpriv") is None):
        pytest.skip("needs setpriv and a system python3 to act as a normal user")
    base = Path(tempfile.mkdtemp(prefix="latentmas-user-", dir="/tmp"))
    package = base / "lib" / "latentmas"
    (package / "evaluation").mkdir(parents=True)
    source = Path(latentmas.__file__).parent
    for module in ("__init__.py", "evaluation/__init__.py"):
        (package / module).write_text("")
    for module in ("errors.py", "evaluation/sandbox.py"):
        shutil.copy(source / module, package / module)
    home = base / "home"
    home.mkdir()
    os.chmod(base, 0o755)
    for path in (base / "lib", package, *package.rglob("*")):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    if os.geteuid() == 0:
        os.chown(home, sandbox.NOBODY, sandbox.NOBODY)
    runner = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); from latentmas.evaluation.sandbox import Limits, run_python; "
        "r = run_python(sys.argv[2], Limits(wall_seconds=8, cpu_seconds=8, processes=16)); "
        "print(json.dumps({'status': r.status, 'output': r.output, 'seconds': r.seconds}))"
    )

    def run(code: str) -> dict:
        prefix = (
            ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"] if os.geteuid() == 0 else []
        )
        python = system_python if os.geteuid() == 0 else sys.executable
        done = subprocess.run(
            [*prefix, python, "-c", runner, str(base / "lib"), code],
            env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    yield run, home
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("attack", list(HOSTILE))
def test_a_normal_users_files_and_network_survive_hostile_code(normal_user, attack):
    run, home = normal_user
    precious, secret = home / "precious.txt", home / "secret.txt"
    for path, text in ((precious, "precious"), (secret, "hub-token-0123")):
        path.write_text(text)
        os.chmod(path, 0o600)
        if os.geteuid() == 0:
            os.chown(path, sandbox.NOBODY, sandbox.NOBODY)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        code = HOSTILE[attack].format(
            precious=str(precious), home=str(home), secret=str(secret), port=listener.getsockname()[1]
        )
        result = run(code)
    assert result["status"] != "passed", result
    assert precious.read_text() == "precious"
    assert not (home / "planted.txt").exists()
    assert "hub-token" not in result["output"] and "CONNECTED" not in result["output"]
    if attack == "fill the disk":
        assert result["status"] == "failed" and result["seconds"] < 8  # the disk budget ended it
    leftovers = os.popen("ps -eo cmd | grep -c '[l]atentmas-sandbox'").read().strip()
    assert leftovers == "0"


def test_a_normal_user_still_gets_correct_code_passed(normal_user):
    run, _ = normal_user
    assert run("assert sum(range(4)) == 6\nprint('ok')\n")["status"] == "passed"
