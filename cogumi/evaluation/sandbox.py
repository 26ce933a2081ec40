"""A sandbox for generated code: every program runs in its own short-lived process.

Isolation, strongest first (``Sandbox().describe()`` says which one is in force; the
report records it):

``namespaces`` (root, or unprivileged user namespaces): ``unshare --net --mount --pid``.
  No network (an empty network namespace); every mount read-only except a size-limited
  tmpfs working directory; a private /dev with only null/zero/random/urandom; a private
  pid namespace (the program cannot see, let alone signal, the harness; when its reaper
  exits the kernel kills everything left); a per-run pids cgroup when cgroups are
  writable (fork bombs stop at ``max_procs``); all capabilities dropped.
``weak``: none of the above is available. Only rlimits and the audit hook below guard the
  machine; a determined program can escape. Say so wherever the numbers are used.

In every mode: rlimits (CPU seconds, address space, file size, open files, core dumps), a
wall-clock limit with the whole process group killed, an output cap, a throwaway working
directory, and a ``sys.addaudithook`` hook (cannot be removed by the code) refusing writes
outside the working directory, deletes/renames outside it, process creation, signals,
sockets, ctypes and rlimit changes. A program that merely *tries* one of these fails with
reason ``forbidden`` even if it catches the refusal.

Known limit: the code runs in the same interpreter as the worker that reports its result;
a program written to forge that report (find the nonce by frame inspection) could. Exiting
early (``sys.exit(0)``, ``os._exit(0)``) is detected and is a failure.
"""

from __future__ import annotations

import json
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CHILD = Path(__file__).with_name("_sandbox_child.py")

#: Every reason an item can fail with in the sandbox (the report's ``reason`` field).
REASONS = {
    "passed": "the program ran to the end (all tests passed)",
    "wrong_answer": "a test assertion failed",
    "exception": "the program raised an exception other than AssertionError",
    "syntax_error": "the program does not compile",
    "timeout": "wall-clock limit reached; the process group was killed",
    "cpu_time": "CPU-time limit reached (SIGXCPU/SIGKILL)",
    "memory": "address-space limit reached (MemoryError or killed while allocating)",
    "output_limit": "stdout+stderr exceeded the output cap; killed",
    "forbidden": "the program attempted something the sandbox refuses (see detail)",
    "exited_early": "the program exited (sys.exit/os._exit) before its tests finished",
    "killed": "killed by a signal (see detail)",
    "sandbox_error": "the sandbox itself failed to run the program",
}


@dataclass(frozen=True)
class SandboxLimits:
    wall_s: float = 10.0
    cpu_s: int = 10
    memory_mb: int = 1024
    max_procs: int = 32
    file_size_mb: int = 16
    open_files: int = 64
    output_bytes: int = 1_000_000
    tmpfs_mb: int = 64


@dataclass
class SandboxResult:
    reason: str
    detail: str = ""
    wall_s: float = 0.0
    exit_code: int | None = None
    signal: int | None = None
    stdout: str = ""
    stderr: str = ""
    violations: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.reason == "passed"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_probe_lock = threading.Lock()
_probe_cache: dict[str, Any] = {}


def _unshare_args(user_ns: bool) -> list[str]:
    args = ["unshare", "--net", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc"]
    if user_ns:
        args.insert(1, "--map-root-user")
        args.insert(1, "--user")
    return args


def probe_isolation() -> dict[str, Any]:
    """Which isolation this machine allows (cached). Runs ``unshare ... true`` once."""
    with _probe_lock:
        if "mode" in _probe_cache:
            return dict(_probe_cache)
        info: dict[str, Any] = {"mode": "weak", "unshare": shutil.which("unshare"),
                                "user_ns": False, "cgroup_pids": None}
        if info["unshare"]:
            for user_ns in ([False] if os.geteuid() == 0 else []) + [True]:
                try:
                    r = subprocess.run(_unshare_args(user_ns) + ["true"], capture_output=True,
                                       timeout=10)
                except (OSError, subprocess.TimeoutExpired):
                    continue
                if r.returncode == 0:
                    info["mode"], info["user_ns"] = "namespaces", user_ns
                    break
        info["cgroup_pids"] = _find_pids_cgroup() if info["mode"] == "namespaces" else None
        _probe_cache.update(info)
        return dict(info)


def _find_pids_cgroup() -> str | None:
    for base in ("/sys/fs/cgroup/pids", "/sys/fs/cgroup"):
        if os.path.isfile(os.path.join(base, "cgroup.procs")) and os.access(base, os.W_OK):
            if base == "/sys/fs/cgroup":  # v2: the pids controller must be enabled
                try:
                    ctl = Path(base, "cgroup.subtree_control").read_text()
                except OSError:
                    continue
                if "pids" not in ctl.split():
                    continue
            probe = os.path.join(base, f"cogumi-probe-{os.getpid()}")
            try:
                os.mkdir(probe)
                os.rmdir(probe)
                return base
            except OSError:
                continue
    return None


class Sandbox:
    """``Sandbox(limits).run(program) -> SandboxResult``; ``run_many`` runs in parallel."""

    def __init__(
        self,
        limits: SandboxLimits | None = None,
        isolation: str = "auto",
        audit_hooks: bool = True,
        site_packages: bool = False,
    ) -> None:
        self.limits = limits or SandboxLimits()
        probe = probe_isolation()
        if isolation == "auto":
            isolation = probe["mode"]
        if isolation == "namespaces" and probe["mode"] != "namespaces":
            raise RuntimeError("namespace isolation is not available on this machine")
        if isolation not in ("namespaces", "weak"):
            raise ValueError("isolation must be 'auto', 'namespaces' or 'weak'")
        self.isolation = isolation
        self.user_ns = bool(probe["user_ns"])
        self.cgroup_base = probe["cgroup_pids"] if isolation == "namespaces" else None
        # Turning the hook off exists only so tests can prove each layer on its own.
        self.audit_hooks = audit_hooks
        self.site_packages = site_packages

    def describe(self) -> dict[str, Any]:
        return {
            "isolation": self.isolation,
            "network": "empty network namespace" if self.isolation == "namespaces"
            else "audit hook only (weak)",
            "filesystem": "read-only mounts + tmpfs workdir" if self.isolation == "namespaces"
            else "audit hook only (weak)",
            "processes": ("pid namespace + pids cgroup" if self.cgroup_base else "pid namespace")
            if self.isolation == "namespaces" else "audit hook only (weak)",
            "audit_hook": self.audit_hooks,
            "limits": asdict(self.limits),
        }

    # ------------------------------------------------------------------ one run
    def run(self, program: str) -> SandboxResult:
        t0 = time.monotonic()
        lim = self.limits
        tmp = tempfile.mkdtemp(prefix="cogumi-sbx-")
        workdir = os.path.join(tmp, "work")
        os.mkdir(workdir)
        os.chmod(tmp, 0o755)
        cgroup = self._make_cgroup()
        nonce = secrets.token_hex(16)
        job = {
            "program": program,
            "workdir": workdir,
            "limits": asdict(lim),
            "mode": self.isolation,
            "nonce": nonce,
            "cgroups": [cgroup] if cgroup else [],
            "audit_hooks": self.audit_hooks,
            "private_dev": not self.user_ns,
        }
        py = [sys.executable, "-I"] + ([] if self.site_packages else ["-S"]) + [str(CHILD)]
        cmd = (_unshare_args(self.user_ns) + py) if self.isolation == "namespaces" else py
        r_fd, w_fd = os.pipe()
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
               "PYTHONDONTWRITEBYTECODE": "1", "HOME": workdir, "TMPDIR": workdir}
        job["result_fd"] = w_fd
        try:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                pass_fds=(w_fd,), cwd=workdir, env=env, start_new_session=True,
            )
        except OSError as e:
            os.close(r_fd)
            os.close(w_fd)
            self._cleanup(tmp, cgroup)
            return SandboxResult("sandbox_error", f"could not start: {e}", time.monotonic() - t0)
        os.close(w_fd)
        try:
            proc.stdin.write(json.dumps(job).encode())
            proc.stdin.close()
        except OSError:
            pass
        out, err, res, overflow, timed_out = self._collect(proc, r_fd, t0 + lim.wall_s)
        self._kill(proc)
        proc.wait()
        self._cleanup(tmp, cgroup)
        return self._classify(res, nonce, out, err, overflow, timed_out, proc.returncode,
                              time.monotonic() - t0)

    def _collect(self, proc, r_fd, deadline):
        sel = selectors.DefaultSelector()
        bufs = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray(),
                r_fd: bytearray()}
        for fd in bufs:
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        overflow = timed_out = False
        cap = self.limits.output_bytes
        open_fds = set(bufs)
        while open_fds:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            for key, _ in sel.select(timeout=min(left, 0.5)):
                fd = key.fd
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    sel.unregister(fd)
                    open_fds.discard(fd)
                    continue
                buf = bufs[fd]
                if fd == r_fd:
                    if len(buf) < 1_000_000:
                        buf.extend(chunk)
                    continue
                buf.extend(chunk[: max(0, cap + 1 - len(buf))])
                total = len(bufs[proc.stdout.fileno()]) + len(bufs[proc.stderr.fileno()])
                if total > cap:
                    overflow = True
            if overflow:
                break
        sel.close()
        out = bytes(bufs[proc.stdout.fileno()])
        err = bytes(bufs[proc.stderr.fileno()])
        res = bytes(bufs[r_fd])
        os.close(r_fd)
        return out, err, res, overflow, timed_out

    def _kill(self, proc) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for stream in (proc.stdout, proc.stderr):
            try:
                stream.close()
            except OSError:
                pass

    def _make_cgroup(self) -> str | None:
        if not self.cgroup_base:
            return None
        path = os.path.join(self.cgroup_base, f"cogumi-sbx-{os.getpid()}-{secrets.token_hex(6)}")
        try:
            os.mkdir(path)
            with open(os.path.join(path, "pids.max"), "w") as f:
                f.write(str(self.limits.max_procs))
            return path
        except OSError:
            return None

    def _cleanup(self, tmp: str, cgroup: str | None) -> None:
        if cgroup:
            for _ in range(50):
                try:
                    pids = Path(cgroup, "cgroup.procs").read_text().split()
                except OSError:
                    break
                for p in pids:
                    try:
                        os.kill(int(p), signal.SIGKILL)
                    except (ProcessLookupError, ValueError):
                        pass
                try:
                    os.rmdir(cgroup)
                    break
                except OSError:
                    time.sleep(0.02)
        shutil.rmtree(tmp, ignore_errors=True)

    @staticmethod
    def _classify(res, nonce, out, err, overflow, timed_out, rc, wall) -> SandboxResult:
        worker: dict[str, Any] | None = None
        reaper: dict[str, Any] | None = None
        for line in res.decode("utf-8", "replace").splitlines():
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(obj, dict):
                continue
            if obj.get("reaper"):
                reaper = obj
            elif obj.get("nonce") == nonce and worker is None:
                worker = obj
        sig = reaper.get("signal") if reaper else None
        stdout = out[:4000].decode("utf-8", "replace")
        stderr = err[-4000:].decode("utf-8", "replace")
        base = dict(wall_s=wall, stdout=stdout, stderr=stderr, signal=sig,
                    exit_code=reaper.get("exit_code") if reaper else rc)
        violations = list(worker.get("violations", [])) if worker else []
        if worker and worker.get("outcome") == "forbidden":
            return SandboxResult("forbidden", worker.get("detail", ""), violations=violations, **base)
        if overflow:
            return SandboxResult("output_limit", "output exceeded the cap", violations=violations, **base)
        if timed_out:
            return SandboxResult("timeout", "wall-clock limit", violations=violations, **base)
        if worker:
            return SandboxResult(worker["outcome"], worker.get("detail", ""),
                                 violations=violations, **base)
        if sig is not None:
            name = signal.Signals(sig).name if sig in signal.valid_signals() else str(sig)
            if sig in (signal.SIGXCPU,) or (sig == signal.SIGKILL and _looks_cpu(stderr)):
                return SandboxResult("cpu_time", name, **base)
            if sig == signal.SIGXFSZ:
                return SandboxResult("output_limit", "file size limit (SIGXFSZ)", **base)
            return SandboxResult("killed", name, **base)
        if "MemoryError" in stderr:
            return SandboxResult("memory", "MemoryError", **base)
        if reaper is not None:
            return SandboxResult("exited_early", "the program exited before its tests finished",
                                 **base)
        return SandboxResult("killed" if rc and rc < 0 else "sandbox_error",
                             f"no report from the sandbox (exit status {rc}); "
                             f"stderr: {stderr[-300:]}", **base)

    # ------------------------------------------------------------------ many runs
    def run_many(self, programs: list[str], workers: int = 2) -> list[SandboxResult]:
        """Runs in parallel (threads only wait on subprocesses), results in input order."""
        if workers <= 1 or len(programs) <= 1:
            return [self.run(p) for p in programs]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(self.run, programs))


def _looks_cpu(stderr: str) -> bool:
    return "CPU time" in stderr
