"""Run untrusted generated code in a separate process that the kernel fences in.

What the code can do, as root and as a normal user alike: read the system's programs and
libraries (/usr, /lib, /bin, its interpreter) and a few files of /etc, and read and write
its own temporary directory. Nothing else:
- **files**: Landlock (Linux >= 5.13, no privileges needed) denies every other path, so the
  caller's home, keys, hub token and files can be neither read nor changed;
- **network**: Landlock ABI >= 4 (Linux >= 6.7) denies TCP connect and bind; a network
  namespace (as root, or where unprivileged user namespaces are allowed) removes the
  network altogether;
- **other processes**: Landlock ABI >= 6 scopes signals and abstract unix sockets to the
  sandbox; as root the code also runs as `nobody`;
- **resources**: limits on CPU seconds, address space, file size, processes, and a disk
  budget for its directory (polled; the run is killed past it).

The confinement is applied by a small bootstrap inside the child interpreter before the
code runs (a fresh, single-threaded process: nothing is done between fork and exec).
Where the kernel offers no Landlock, or neither Landlock's network rules nor a network
namespace, grading refuses with one line instead of running the code unconfined, unless
the caller opted in (`--unsafe-exec`, or LATENTMAS_UNSAFE_EXEC=1).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import LatentMASError

NOBODY = 65534
UNSAFE_ENV = "LATENTMAS_UNSAFE_EXEC"
_REFUSED = 97  # the bootstrap's exit status when it cannot confine the code

SYS_LANDLOCK_CREATE_RULESET = 444  # the same number on every architecture Linux added it to
LANDLOCK_CREATE_RULESET_VERSION = 1


@dataclass(frozen=True)
class Limits:
    wall_seconds: float = 10.0
    cpu_seconds: int = 10
    memory_bytes: int = 1 << 30
    output_bytes: int = 1 << 20  # also the largest file the code may write
    disk_bytes: int = 64 << 20  # all it may write in its directory
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


class SandboxUnavailable(LatentMASError):
    """This system cannot confine generated code, and the caller did not opt out."""


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 where it has none (or it is disabled)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        version = libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, 0, LANDLOCK_CREATE_RULESET_VERSION)
    except (OSError, AttributeError):
        return 0
    return max(0, int(version))


def unsafe_allowed() -> bool:
    return os.environ.get(UNSAFE_ENV, "") not in ("", "0")


def require_confinement() -> None:
    """Raise `SandboxUnavailable` where generated code could not be confined (checked before
    a run loads a model, so a refusal costs nothing)."""
    if unsafe_allowed():
        return
    if landlock_abi() < 1:
        raise SandboxUnavailable(
            "grading generated code needs Landlock (Linux >= 5.13 with the landlock LSM enabled) to "
            "keep it out of your files, and this kernel has none; run it on such a system, or pass "
            f"--unsafe-exec ({UNSAFE_ENV}=1) to run the code unconfined"
        )


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


def _disk_use(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                pass
    return total


def run_python(code: str, limits: Limits = Limits()) -> RunResult:
    """Run `code` as a Python script; passed means it exited 0 within the limits.

    `output` is the last 4 KiB of what it printed (stdout and stderr together). Raises
    `SandboxUnavailable` where the code cannot be confined (see the module's docstring).
    """
    require_confinement()
    with tempfile.TemporaryDirectory(prefix="latentmas-sandbox-", ignore_cleanup_errors=True) as tmp:
        workdir = Path(tmp) / "work"
        workdir.mkdir()
        os.chmod(tmp, 0o755)
        os.chmod(workdir, 0o777)  # writable by `nobody` when we run as root
        script = workdir / "solution.py"
        script.write_text(code, encoding="utf-8")
        out_path = Path(tmp) / "output.txt"  # outside the code's directory: it cannot be replaced
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(workdir),
            "TMPDIR": str(workdir),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        python, drop_root = interpreter()
        settings = {
            "limits": asdict(limits),
            "workdir": str(workdir),
            "script": str(script),
            "drop_root": drop_root,
            "strict": not unsafe_allowed(),
        }
        start = time.monotonic()
        with open(out_path, "w+b") as out:
            process = subprocess.Popen(
                [python, "-I", "-c", _BOOTSTRAP, json.dumps(settings)],
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, killed as a whole
            )
            returncode, status = None, "timeout"
            try:
                while time.monotonic() - start < limits.wall_seconds:
                    try:
                        returncode = process.wait(timeout=0.05)
                        status = "passed" if returncode == 0 else "failed"
                        break
                    except subprocess.TimeoutExpired:
                        if _disk_use(workdir) > limits.disk_bytes:
                            status = "failed"  # filling the disk ends the run
                            break
            finally:
                _kill_group(process.pid)
                process.wait()
            # Keep the tail, where a test harness prints its verdict.
            size = out.seek(0, os.SEEK_END)
            out.seek(max(0, size - 4096))
            output = out.read().decode("utf-8", "replace")
        if returncode == _REFUSED and output.startswith("latentmas-sandbox:"):
            raise SandboxUnavailable(output.partition(":")[2].strip())
        return RunResult(status, returncode, output, time.monotonic() - start)


# Runs first in the child interpreter (`python -I -c`), with the settings as argv[1]: confine
# this process, then run the script. Standard library only: it may run as `nobody` under a
# system Python that cannot see our package.
_BOOTSTRAP = r"""
import ctypes, json, os, resource, runpy, struct, sys

settings = json.loads(sys.argv[1])
limits, workdir = settings["limits"], settings["workdir"]
libc = ctypes.CDLL(None, use_errno=True)
root = os.geteuid() == 0

def refuse(what):
    if settings["strict"]:
        sys.stdout.write("latentmas-sandbox: " + what + "; pass --unsafe-exec (LATENTMAS_UNSAFE_EXEC=1) "
                         "to run generated code unconfined\n")
        sys.stdout.flush()
        os._exit(97)

net_before = os.stat("/proc/self/ns/net").st_ino
libc.unshare(0x40000000 if root else 0x10000000 | 0x40000000)  # CLONE_NEWNET (| CLONE_NEWUSER)
net_isolated = os.stat("/proc/self/ns/net").st_ino != net_before

resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_seconds"], limits["cpu_seconds"] + 1))
resource.setrlimit(resource.RLIMIT_AS, (limits["memory_bytes"], limits["memory_bytes"]))
resource.setrlimit(resource.RLIMIT_FSIZE, (limits["output_bytes"], limits["output_bytes"]))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

abi = max(0, libc.syscall(444, None, 0, 1))
if abi < 1:
    refuse("this kernel has no Landlock, so generated code could read and change your files")
elif abi < 4 and not net_isolated:
    refuse("this kernel's Landlock cannot deny network access (ABI %d < 4) and no network "
           "namespace could be created" % abi)
if abi >= 1:
    # Every file-system right this ABI knows is handled (so denied unless a rule grants it).
    fs_bits = {1: 13, 2: 14, 3: 15, 4: 15}.get(abi, 16)
    handled_fs = (1 << fs_bits) - 1
    read = (1 << 0) | (1 << 2) | (1 << 3)  # execute, read file, read dir
    read_file = (1 << 0) | (1 << 2)
    net = 0b11 if abi >= 4 else 0  # bind and connect TCP, with no port allowed
    scoped = 0b11 if abi >= 6 else 0  # abstract unix sockets and signals stay inside
    attr = struct.pack("QQQ", handled_fs, net, scoped)[: 8 if abi < 4 else 16 if abi < 6 else 24]
    ruleset = libc.syscall(444, ctypes.c_char_p(attr), len(attr), 0)
    if ruleset < 0:
        refuse("Landlock refused a ruleset (errno %d)" % ctypes.get_errno())
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
                os.path.dirname(os.path.dirname(os.path.realpath(sys.executable)))}
    rules = [(p, read) for p in ("/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin", *prefixes)]
    rules += [(p, read_file) for p in ("/etc/ld.so.cache", "/etc/localtime", "/etc/passwd", "/etc/group")]
    rules += [(p, read_file | (1 << 1) | ((1 << 14) if abi >= 3 else 0)) for p in ("/dev/null", "/dev/zero")]
    rules += [(p, read_file) for p in ("/dev/urandom", "/dev/random")]
    rules += [(workdir, handled_fs)]
    for path, access in rules:
        if not os.path.exists(path):
            continue
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        is_dir = os.path.isdir(path)
        file_rights = 0xC007  # execute, write, read, truncate, ioctl: all a file (not a folder) takes
        rule = struct.pack("=Qi", access & handled_fs & (-1 if is_dir else file_rights), fd)
        if libc.syscall(445, ruleset, 1, ctypes.c_char_p(rule), 0) != 0:
            refuse("Landlock refused a rule for %s (errno %d)" % (path, ctypes.get_errno()))
        os.close(fd)
    libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS: required to restrict oneself
    if libc.syscall(446, ruleset, 0) != 0:
        refuse("Landlock could not be applied (errno %d)" % ctypes.get_errno())
    os.close(ruleset)

if settings["drop_root"]:
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)  # RLIMIT_NPROC is not enforced for root, so drop root first
resource.setrlimit(resource.RLIMIT_NPROC, (limits["processes"], limits["processes"]))

script = settings["script"]
del ctypes, json, libc, struct, settings, limits, workdir
sys.argv[:] = [script]
runpy.run_path(script, run_name="__main__")
"""
