"""Run untrusted generated code: a separate process, fenced in as far as the OS allows.

Each run gets a fresh temporary directory as its working directory and HOME, a minimal
environment, and, in the child before `exec`:
- resource limits: CPU seconds, address space, file size (so a print loop cannot fill the
  disk: stdout goes to a size-limited file), process count (no fork bombs), no core files;
- when started as root: its own network namespace (no network at all) and the `nobody`
  user, so it cannot touch the runner's files (if no Python reachable by `nobody` exists,
  it keeps root's user and relies on the temporary HOME and the limits); as another user, an unprivileged user +
  network namespace is tried and skipped where the kernel forbids it.
The whole process group is killed on timeout and after every run, so nothing lingers.
"""

from __future__ import annotations

import ctypes
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

NOBODY = 65534
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000


@dataclass(frozen=True)
class Limits:
    wall_seconds: float = 10.0
    cpu_seconds: int = 10
    memory_bytes: int = 1 << 30
    output_bytes: int = 1 << 20
    processes: int = 64


@dataclass(frozen=True)
class RunResult:
    status: str  # "passed", "failed", "timeout"
    returncode: int | None
    output: str
    seconds: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _unshare(flags: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.unshare(flags) == 0
    except (OSError, AttributeError):
        return False


def _confine(limits: Limits, drop_root: bool) -> None:
    """Runs in the child between fork and exec."""
    if os.geteuid() == 0:
        _unshare(CLONE_NEWNET)  # a namespace with only a downed loopback device
    else:
        _unshare(CLONE_NEWUSER | CLONE_NEWNET)
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.output_bytes, limits.output_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if drop_root:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)  # RLIMIT_NPROC is not enforced for root, so drop root first
    resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))


def _reachable_by_others(path: str) -> bool:
    """True when every directory on the way to `path` lets other users through (o+x)."""
    real = Path(os.path.realpath(path))
    return all(os.stat(p).st_mode & stat.S_IXOTH for p in [*reversed(real.parents), real])


def interpreter() -> tuple[str, bool]:
    """The Python that runs generated code, and whether it can run as `nobody`.

    Our own interpreter may live under root's home (0700); a system Python serves then,
    since generated code needs only the standard library.
    """
    if os.geteuid() != 0:
        return sys.executable, False
    for candidate in (sys.executable, shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")):
        if candidate and _reachable_by_others(candidate):
            return candidate, True
    return sys.executable, False


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_python(code: str, limits: Limits = Limits()) -> RunResult:
    """Run `code` as a Python script; passed means it exited 0 within the limits.

    `output` is the last 4 KiB of what it printed (stdout and stderr together).
    """
    with tempfile.TemporaryDirectory(prefix="latentmas-sandbox-", ignore_cleanup_errors=True) as tmp:
        workdir = Path(tmp)
        os.chmod(workdir, 0o777)  # writable by `nobody` when we run as root
        script = workdir / "solution.py"
        script.write_text(code, encoding="utf-8")
        out_path = workdir / "output.txt"
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(workdir),
            "TMPDIR": str(workdir),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        python, drop_root = interpreter()
        start = time.monotonic()
        with open(out_path, "w+b") as out:
            process = subprocess.Popen(
                [python, "-I", str(script)],
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, killed as a whole
                preexec_fn=lambda: _confine(limits, drop_root),
            )
            try:
                returncode = process.wait(timeout=limits.wall_seconds)
                status = "passed" if returncode == 0 else "failed"
            except subprocess.TimeoutExpired:
                returncode, status = None, "timeout"
            finally:
                _kill_group(process.pid)
                process.wait()
            # Read through our handle (the code may have deleted its directory); keep the tail,
            # where a test harness prints its verdict.
            size = out.seek(0, os.SEEK_END)
            out.seek(max(0, size - 4096))
            output = out.read().decode("utf-8", "replace")
        return RunResult(status, returncode, output, time.monotonic() - start)
