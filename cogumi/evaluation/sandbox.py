"""Running generated code so that its verdict cannot be forged and the machine is untouched.

Two processes per item (the evaluation README has the threat model):

* the **judge** is the harness itself: it runs the task's tests (trusted benchmark code),
  with ``candidate`` bound to a proxy;
* the **candidate process** runs only the generated program (the prompt's code and the
  completion, no tests) inside the sandbox. Each ``candidate(...)`` call of the tests goes
  to it over a pipe carrying plain data only (``_sandbox_codec``: numbers, strings, lists,
  tuples, dicts, sets, None, booleans), and the return value comes back the same way. A
  value outside that set (an object whose ``__eq__`` is always True, a generator, a
  subclass of int) fails the item with reason ``non_data_return``. Nothing the candidate
  process writes is taken as a verdict: exiting, writing forged lines, or corrupting its
  interpreter can only make its own item fail.

A ``CodeJob`` runs that way. A plain program string (or a job whose tests pass non-data
arguments or inspect the candidate, which the proxy detects) runs on the *in-sandbox path*:
the whole program with its tests in the sandbox, reporting its own outcome. That verdict is
forgeable by the program, so such results carry ``judge="in_sandbox"`` and
``verified=False`` and the runner reports the share of them.

Isolation (``Sandbox().describe()`` says which is in force; the report records it):

``namespaces`` (the default) - bubblewrap: empty network namespace, private pid, ipc and
  uts namespaces, a root holding only the interpreter, its standard library and the shared
  libraries they load (read-only; site-packages hidden), /dev with null/zero/random/urandom,
  a size-limited tmpfs working directory, no /proc; the program runs as an unprivileged
  uid/gid (as root: a fresh uid per run, dropped to before any untrusted code; otherwise:
  uid 65534 of a new user namespace), with all capabilities dropped, no_new_privs, and a
  seccomp filter (libseccomp via ``pyseccomp``) refusing new processes (threads are
  allowed), sockets, ptrace, mounts, namespaces, kill, bpf, perf, io_uring, keyrings and
  module loading. When any of this cannot be set up the item fails with
  ``sandbox_error``; it never runs weaker.
``weak-unsafe`` (opt-in only) - a plain subprocess with rlimits and the audit hook. A
  determined program escapes it (``gc`` finds the hook's state, ``dir_fd`` writes outside
  the working directory, it can signal or trace the harness). Its verdicts are marked
  ``verified=False`` and the runner reports code metrics as unverified, so gates fail.

In every mode: rlimits (CPU seconds, address space, file size, open files, processes, core
dumps), a wall-clock limit for the whole item, an output cap, and an audit hook that names
what a program tried (writes outside the working directory, process creation, signals,
sockets, ctypes, rlimit changes): an attempt fails the item with ``forbidden`` even if the
program catches the refusal. The hook is a tripwire for diagnosis, not a boundary.
"""

from __future__ import annotations

import builtins
import errno
import marshal
import os
import re
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import _sandbox_codec as codec

HERE = Path(__file__).resolve().parent
CHILD = HERE / "_sandbox_child.py"
CODEC = HERE / "_sandbox_codec.py"

#: Every reason an item can fail with in the sandbox (the report's ``reason`` field).
REASONS = {
    "passed": "the program ran to the end (all tests passed)",
    "wrong_answer": "a test assertion failed",
    "exception": "the program raised an exception other than AssertionError",
    "syntax_error": "the program does not compile",
    "non_data_return": "the candidate returned a value that is not plain data (numbers, "
    "strings, lists, tuples, dicts, sets, None, booleans of exactly those types): the "
    "trusted tests cannot compare it (an object can claim to equal anything)",
    "channel_error": "the sandboxed process wrote something on the call channel that is "
    "not a well-formed reply to the current call (a forgery or corruption attempt)",
    "timeout": "wall-clock limit reached; the sandbox was killed",
    "cpu_time": "CPU-time limit reached (SIGXCPU/SIGKILL)",
    "memory": "address-space limit reached (MemoryError or killed while allocating)",
    "output_limit": "stdout+stderr exceeded the output cap, or the file-size limit; killed",
    "forbidden": "the program attempted something the sandbox refuses (see detail)",
    "exited_early": "the program exited (sys.exit/os._exit) before its tests finished",
    "killed": "killed by a signal (see detail)",
    "sandbox_error": "the sandbox itself could not be set up or run the program (see detail); "
    "never replaced by a weaker run",
}

ISOLATIONS = ("namespaces", "weak-unsafe")
_MAX_REPLY = 16 * 1024 * 1024
_SANDBOX_WORKDIR = "/sandbox"
_SANDBOX_HARNESS = "/harness"


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
    #: "trusted": tests ran in the harness, the candidate only answered calls with data;
    #: "in_sandbox": the program ran its own tests and reported the outcome (forgeable).
    judge: str = "trusted"
    #: True only for a trusted judge under namespace isolation.
    verified: bool = False
    calls: int = 0

    @property
    def passed(self) -> bool:
        return self.reason == "passed"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CodeJob:
    """One generated program and the tests that judge it.

    ``candidate`` runs in the sandbox (the prompt's code and the completion, no tests);
    ``prelude`` (the benchmark's own code before the stub: imports, helpers the tests call)
    and ``tests`` (defining ``check(candidate)``) run in the harness, which is safe only
    because they come from the benchmark file, never from the model. ``program`` (candidate,
    tests and the ``check`` call in one) is what the in-sandbox path runs when the tests
    cannot be called through the channel.
    """

    candidate: str
    tests: str
    entry_point: str
    prelude: str = ""
    program: str = ""
    check: str = "check"


# ---------------------------------------------------------------------- probing
_probe_lock = threading.Lock()
_probe_cache: dict[str, Any] = {}


def _ldd(paths: list[str]) -> set[str]:
    """The shared libraries these ELF files load, as the dynamic loader names them."""
    libs: set[str] = set()
    for i in range(0, len(paths), 64):
        r = subprocess.run(["ldd", *paths[i:i + 64]], capture_output=True, text=True,
                           timeout=60)
        for line in r.stdout.splitlines():
            m = re.search(r"=>\s+(/\S+)\s+\(", line) or re.match(r"\s+(/\S+)\s+\(", line)
            if m:
                libs.add(m.group(1))
    return libs


def _interpreter_layout() -> dict[str, Any]:
    """What the sandbox's root holds: the real interpreter binary, its standard library
    (site-packages hidden) and the shared libraries both load."""
    exe = os.path.realpath(sys.executable)
    stdlib = os.path.realpath(sysconfig.get_paths()["stdlib"])
    dynload = os.path.join(stdlib, "lib-dynload")
    # Not for test programs, and they would bring X11, Tk and terminal libraries along.
    skip = ("_tkinter", "_curses", "_curses_panel", "readline", "_dbm", "_gdbm", "nis")
    elves = [exe] + sorted(str(p) for p in Path(dynload).glob("*.so")
                           if p.name.split(".")[0] not in skip)
    libs = _ldd(elves)
    binds = [(exe, exe), (stdlib, stdlib)]
    for lib in sorted(libs):
        binds.append((os.path.realpath(lib), lib))
    hide = [p for p in (os.path.join(stdlib, "site-packages"), os.path.join(stdlib, "dist-packages"))
            if os.path.isdir(p)]
    return {"exe": exe, "stdlib": stdlib, "binds": binds, "hide": hide,
            "lib_dirs": sorted({os.path.dirname(lib) for lib in libs})}


def _seccomp_program() -> bytes:
    """A BPF filter compiled by libseccomp: refuse new processes (clone without
    CLONE_THREAD, fork, vfork; clone3 answers ENOSYS so threads fall back to clone), and the
    system calls a test program has no use for."""
    import pyseccomp as sc

    f = sc.SyscallFilter(defaction=sc.ALLOW)
    eperm = sc.ERRNO(errno.EPERM)
    clone_thread = 0x00010000
    f.add_rule(eperm, "clone", sc.Arg(0, sc.MASKED_EQ, clone_thread, 0))
    f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    for name in ("fork", "vfork", "socket", "socketpair", "ptrace", "process_vm_readv",
                 "process_vm_writev", "kcmp", "mount", "umount2", "pivot_root", "chroot",
                 "unshare", "setns", "open_tree", "move_mount", "fsopen", "fsconfig",
                 "fsmount", "fspick", "mount_setattr", "bpf", "perf_event_open",
                 "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
                 "keyctl", "add_key", "request_key", "kexec_load", "kexec_file_load",
                 "init_module", "finit_module", "delete_module", "reboot", "swapon",
                 "swapoff", "acct", "quotactl", "syslog", "iopl", "ioperm", "personality",
                 "lookup_dcookie", "open_by_handle_at", "name_to_handle_at",
                 "fanotify_init", "mknod", "mknodat", "kill", "tkill", "pidfd_open",
                 "pidfd_send_signal", "pidfd_getfd", "memfd_secret", "set_mempolicy",
                 "migrate_pages", "move_pages", "mbind"):
        try:
            f.add_rule(eperm, name)
        except (ValueError, RuntimeError, OSError):
            pass  # a system call this kernel/arch does not have
    with tempfile.TemporaryFile() as t:
        f.export_bpf(t)
        t.seek(0)
        return t.read()


def probe_isolation() -> dict[str, Any]:
    """What this machine allows (cached): bubblewrap, user namespaces, seccomp."""
    with _probe_lock:
        if "bwrap" in _probe_cache:
            return dict(_probe_cache)
        info: dict[str, Any] = {"bwrap": shutil.which("bwrap"), "bwrap_version": None,
                                "root": os.geteuid() == 0, "seccomp": False,
                                "seccomp_error": None, "namespaces": False, "error": None}
        try:
            info["seccomp_bpf"] = _seccomp_program()
            info["seccomp"] = True
        except Exception as e:  # noqa: BLE001 - recorded; the run then has no filter
            info["seccomp_error"] = f"{type(e).__name__}: {e}"
        if not info["bwrap"]:
            info["error"] = "bubblewrap (bwrap) is not installed"
        else:
            try:
                info["bwrap_version"] = subprocess.run(
                    [info["bwrap"], "--version"], capture_output=True, text=True,
                    timeout=10).stdout.strip()
                info["layout"] = _interpreter_layout()
                info["namespaces"] = True
            except (OSError, subprocess.SubprocessError) as e:
                info["error"] = f"could not inspect the interpreter: {e}"
        _probe_cache.update(info)
        return dict(info)


# ---------------------------------------------------------------------- failures
class _Failed(BaseException):
    """The item fails (raised inside the trusted tests; BaseException so that a test's
    ``except Exception`` cannot swallow it, and remembered besides in case one does)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason, detail)
        self.reason, self.detail = reason, detail


class _NotProxyable(BaseException):
    """The tests need something the data channel cannot carry: use the in-sandbox path."""


class CandidateError(Exception):
    """An exception the candidate raised whose type is not a built-in exception."""


class _Channel:
    """The harness's end of one sandboxed process: sends calls, reads replies, drains and
    caps stdout/stderr, enforces the item's deadline."""

    def __init__(self, proc, req_w: int, rep_r: int, deadline: float, cap: int) -> None:
        self.proc, self.req_w, self.rep_r = proc, req_w, rep_r
        self.deadline, self.cap = deadline, cap
        self.out, self.err = bytearray(), bytearray()
        self.rep = bytearray()
        self.sel = selectors.DefaultSelector()
        self.open = {proc.stdout.fileno(): self.out, proc.stderr.fileno(): self.err, rep_r: self.rep}
        for fd in self.open:
            os.set_blocking(fd, False)
            self.sel.register(fd, selectors.EVENT_READ)
        os.set_blocking(req_w, False)
        self.failed: _Failed | None = None
        self.violations = 0

    def fail(self, reason: str, detail: str = "") -> _Failed:
        if self.failed is None:
            self.failed = _Failed(reason, detail)
        return self.failed

    def drain_stderr(self, timeout: float = 2.0) -> None:
        """Read what a process that is gone left on stderr (bubblewrap's reason for refusing
        to start, say), up to its end or `timeout` seconds."""
        end = time.monotonic() + timeout
        while self.proc.stderr.fileno() in self.open and time.monotonic() < end:
            try:
                self._pump(0.05)
            except _Failed:
                break

    def _pump(self, timeout: float) -> None:
        for key, _ in self.sel.select(timeout=timeout):
            fd = key.fd
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                self.sel.unregister(fd)
                del self.open[fd]
                continue
            buf = self.open[fd]
            if fd == self.rep_r:
                buf.extend(chunk)
                if len(buf) > _MAX_REPLY:  # one huge reply, or a flood of unasked-for ones
                    raise self.fail("channel_error", f"more than {_MAX_REPLY} bytes of replies "
                                    "pending")
                continue
            buf.extend(chunk[: max(0, self.cap + 1 - len(buf))])
            if len(self.out) + len(self.err) > self.cap:
                raise self.fail("output_limit", "output exceeded the cap")

    def _left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise self.fail("timeout", "wall-clock limit")
        return left

    def send(self, message: list) -> None:
        if self.failed:
            raise self.failed
        body = marshal.dumps(message)
        view = memoryview(len(body).to_bytes(4, "big") + body)
        while view:
            self._left()
            try:
                n = os.write(self.req_w, view)
                view = view[n:]
            except BlockingIOError:
                self._pump(min(self._left(), 0.05))
            except BrokenPipeError:
                raise self.fail(*self.death()) from None

    def recv(self) -> list:
        if self.failed:
            raise self.failed
        while b"\n" not in self.rep:
            if self.rep_r not in self.open:
                raise self.fail(*self.death())
            self._pump(min(self._left(), 0.5))
        i = self.rep.index(b"\n") + 1
        line = bytes(self.rep[:i])
        del self.rep[:i]
        try:
            return codec.decode(line, _MAX_REPLY)
        except codec.NotData as e:
            raise self.fail("channel_error", f"unreadable reply: {e}") from None

    def death(self) -> tuple[str, str]:
        """Why the process ended (it closed the channel): from its exit status."""
        try:
            rc = self.proc.wait(timeout=max(0.05, min(2.0, self.deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            return "exited_early", "the program closed its call channel"
        if rc >= 128:  # bubblewrap's way of saying "killed by signal rc-128"
            sig = rc - 128
            name = signal.Signals(sig).name if sig in signal.valid_signals() else str(sig)
            if sig == signal.SIGXCPU:
                return "cpu_time", name
            if sig == signal.SIGXFSZ:
                return "output_limit", "file size limit (SIGXFSZ)"
            if sig == signal.SIGKILL and _looks_memory(self.err):
                return "memory", "killed while allocating"
            return "killed", name
        if rc < 0:
            return "killed", signal.Signals(-rc).name if -rc in signal.valid_signals() else str(rc)
        return "exited_early", f"the program exited (status {rc}) before its tests finished"

    def close(self) -> None:
        self.sel.close()
        for fd in (self.req_w, self.rep_r):
            try:
                os.close(fd)
            except OSError:
                pass


def _looks_memory(err: bytes) -> bool:
    return b"MemoryError" in err


# ---------------------------------------------------------------------- the sandbox
class Sandbox:
    """``Sandbox(limits).run(job) -> SandboxResult``; ``run_many`` runs in parallel.

    ``isolation`` is ``"namespaces"`` (default) or ``"weak-unsafe"`` (opt-in: see the module
    docstring). ``audit_hooks`` and ``seccomp`` can be switched off only so that tests can
    prove each layer on its own.
    """

    def __init__(
        self,
        limits: SandboxLimits | None = None,
        isolation: str = "namespaces",
        audit_hooks: bool = True,
        seccomp: bool = True,
    ) -> None:
        if isolation not in ISOLATIONS:
            raise ValueError(f"isolation must be one of {ISOLATIONS}, got {isolation!r} (the weak "
                             "mode is never chosen for you: ask for 'weak-unsafe' by name)")
        self.limits = limits or SandboxLimits()
        self.isolation = isolation
        self.audit_hooks = audit_hooks
        self.probe = probe_isolation()
        self.seccomp = bool(seccomp and isolation == "namespaces")
        self._setup_error = None
        if isolation == "namespaces":
            if not self.probe["namespaces"]:
                self._setup_error = f"namespace isolation unavailable: {self.probe['error']}"
            elif self.seccomp and not self.probe["seccomp"]:
                self._setup_error = f"seccomp unavailable: {self.probe['seccomp_error']}"

    @property
    def verified(self) -> bool:
        """Whether a trusted verdict from this sandbox counts as verified."""
        return self.isolation == "namespaces"

    def describe(self) -> dict[str, Any]:
        ns = self.isolation == "namespaces"
        root = self.probe["root"]
        return {
            "isolation": self.isolation,
            "verified": self.verified,
            "judge": "tests run in the harness; the candidate is called over a plain-data channel",
            "tool": self.probe.get("bwrap_version") if ns else None,
            "network": "empty network namespace" if ns else "audit hook only (weak-unsafe)",
            "filesystem": "read-only root of interpreter + stdlib, tmpfs workdir" if ns
            else "audit hook only (weak-unsafe)",
            "processes": "pid namespace; seccomp refuses new processes" if ns and self.seccomp
            else "pid namespace + RLIMIT_NPROC" if ns else "audit hook only (weak-unsafe)",
            "user": ("a fresh unprivileged uid/gid per run" if root
                     else "uid 65534 of a new user namespace") if ns else "the harness's own uid",
            "seccomp": self.seccomp,
            "audit_hook": self.audit_hooks,
            "setup_error": self._setup_error,
            "limits": asdict(self.limits),
        }

    # ------------------------------------------------------------------ one run
    def run(self, job: CodeJob | str) -> SandboxResult:
        """A ``CodeJob`` is judged in the harness; a program string runs its own tests in
        the sandbox (``judge="in_sandbox"``, unverified)."""
        if isinstance(job, str):
            return self._run_program(job, why="a plain program reports its own outcome")
        return self._judge(job)

    def run_many(self, jobs: list[CodeJob | str], workers: int = 2) -> list[SandboxResult]:
        """Runs in parallel (threads wait on subprocesses), results in input order."""
        if workers <= 1 or len(jobs) <= 1:
            return [self.run(j) for j in jobs]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(self.run, jobs))

    # ------------------------------------------------------------------ the trusted judge
    def _judge(self, job: CodeJob) -> SandboxResult:
        t0 = time.monotonic()
        ns: dict[str, Any] = {"__name__": "__cogumi_judge__", "__builtins__": builtins}
        try:
            tests = compile(job.tests, "<task tests>", "exec")
            exec(compile(job.prelude, "<task prelude>", "exec"), ns)
        except Exception as e:  # noqa: BLE001 - the benchmark's code, not the model's
            return self._run_program(job.program, why=f"the task's prelude/tests do not load "
                                     f"on their own ({type(e).__name__}: {e})")
        started = self._start(t0)
        if isinstance(started, SandboxResult):
            return started
        ch, cleanup, workdir = started
        calls = [0]
        result: SandboxResult | None = None
        try:
            result = self._send_job(ch, self._job_dict("call", job.candidate, job.entry_point,
                                                       workdir), t0)
            if result is None:
                msg = ch.recv()
                if msg[0] == "load_error" and len(msg) == 4:
                    result = self._result(ch, t0, msg[1] if msg[1] in REASONS else "exception",
                                          str(msg[2]), violations=msg[3])
                elif msg[0] != "loaded" or len(msg) != 3:
                    raise ch.fail("channel_error", f"unexpected {str(msg[0])[:40]!r} while loading")
                elif msg[1]:
                    result = self._result(ch, t0, "forbidden", "sandbox refused "
                                          + str((msg[2] or ["?"])[0]), violations=msg[2])
            if result is None:
                proxy = _Candidate(ch, calls)
                ns[job.entry_point] = proxy
                try:
                    # Tests without a check() (asserts at module level) are judged by running.
                    exec(tests, ns)
                    if callable(ns.get(job.check)):
                        ns[job.check](proxy)
                    outcome = ("passed", "")
                except _Failed:
                    raise
                except _NotProxyable:
                    raise
                except AssertionError as e:
                    outcome = ("wrong_answer", _describe(e) + _test_line(e, job.tests))
                except Exception as e:  # noqa: BLE001
                    by = " (raised by the candidate)" if getattr(e, "_cogumi_candidate", False) else ""
                    outcome = ("exception", _describe(e) + by + _test_line(e, job.tests))
                if ch.failed:  # the test swallowed a failure
                    raise ch.failed
                if outcome[0] == "passed" or ch.violations:
                    ch.send(["done"])
                    msg = ch.recv()
                    if msg[0] != "done" or len(msg) != 3:
                        raise ch.fail("channel_error", f"unexpected {str(msg[0])[:40]!r} at the end")
                    if msg[1] or ch.violations:
                        outcome = ("forbidden", "sandbox refused " + str((msg[2] or ["?"])[0]))
                        result = self._result(ch, t0, *outcome, violations=msg[2], calls=calls[0])
                if result is None:
                    result = self._result(ch, t0, *outcome, calls=calls[0])
        except _NotProxyable as e:
            cleanup()
            return self._run_program(job.program, why=str(e))
        except _Failed as e:
            result = self._result(ch, t0, e.reason, e.detail, calls=calls[0])
        finally:
            cleanup()
        return result

    # ------------------------------------------------------------------ the in-sandbox path
    def _run_program(self, program: str, why: str, t0: float | None = None) -> SandboxResult:
        t0 = time.monotonic() if t0 is None else t0
        started = self._start(t0)
        if isinstance(started, SandboxResult):
            started.judge = "in_sandbox"
            return started
        ch, cleanup, workdir = started
        try:
            result = self._send_job(ch, self._job_dict("program", program, None, workdir), t0)
            if result is None:
                msg = ch.recv()
                if msg[0] != "outcome" or len(msg) != 4 or msg[1] not in REASONS:
                    raise ch.fail("channel_error", f"unexpected {str(msg[0])[:40]!r}")
                reason, detail, violations = msg[1], str(msg[2]), msg[3]
                if violations and reason != "forbidden":
                    reason, detail = "forbidden", "sandbox refused " + str(violations[0])
                result = self._result(ch, t0, reason, detail, violations=violations)
        except _Failed as e:
            result = self._result(ch, t0, e.reason, e.detail)
        finally:
            cleanup()
        result.judge, result.verified = "in_sandbox", False
        result.detail = (result.detail + f" [verdict reported by the sandboxed program: {why}]").strip()
        return result

    # ------------------------------------------------------------------ plumbing
    def _job_dict(self, kind: str, program: str, entry: str | None,
                  workdir: str) -> dict[str, Any]:
        ns = self.isolation == "namespaces"
        drop = None
        if ns and self.probe["root"]:
            uid = 2_000_000 + secrets.randbelow(1_000_000)  # one per run: NPROC is per uid
            drop = [uid, uid]
        return {"kind": kind, "program": program, "entry": entry, "limits": asdict(self.limits),
                "audit_hooks": self.audit_hooks, "drop_to": drop,
                "workdir": workdir}

    def _send_job(self, ch: _Channel, job: dict[str, Any], t0: float) -> SandboxResult | None:
        """The job, then the child's "ready": None when untrusted code may run. A process that
        is gone before it could read the job (bubblewrap refusing a bind, say) is a sandbox
        that was never set up, not a program that exited early: which of the two a broken
        pipe meets first depends only on how fast the machine is."""
        try:
            ch.send(["job", job])
        except _Failed:
            ch.drain_stderr()
            ch.failed = None
            return self._result(ch, t0, "sandbox_error",
                                "the sandbox did not start: " + _tail(ch.err, 600))
        return self._await_ready(ch, t0)

    def _await_ready(self, ch: _Channel, t0: float) -> SandboxResult | None:
        """The first line is the only one written before untrusted code runs: anything else
        there means the sandbox was not set up."""
        try:
            msg = ch.recv()
        except _Failed:
            ch.drain_stderr()
            ch.failed = None
            return self._result(ch, t0, "sandbox_error",
                                "the sandbox did not start: " + _tail(ch.err, 600))
        if msg[0] == "child_error":
            ch.failed = None
            return self._result(ch, t0, "sandbox_error", f"sandbox setup failed: {msg[1:]}")
        if msg != ["ready"]:
            ch.failed = None
            return self._result(ch, t0, "sandbox_error", f"unexpected first message {msg[:1]}")
        return None

    def _result(self, ch: _Channel, t0: float, reason: str, detail: str = "",
                violations: Any = None, calls: int = 0) -> SandboxResult:
        rc = ch.proc.poll()
        return SandboxResult(
            reason=reason, detail=str(detail)[:1000], wall_s=time.monotonic() - t0,
            exit_code=rc, signal=(rc - 128) if rc is not None and rc > 128 else None,
            stdout=bytes(ch.out[:4000]).decode("utf-8", "replace"),
            stderr=_tail(ch.err, 4000),
            violations=[str(v)[:300] for v in violations][:20] if isinstance(violations, list) else [],
            judge="trusted", verified=self.verified, calls=calls)

    def _command(self, in_fd: int, out_fd: int, seccomp_fd: int | None) -> list[str]:
        py_flags = ["-S", "-s", "-B", "-P"]
        if self.isolation != "namespaces":
            return [sys.executable, *py_flags, str(CHILD), str(in_fd), str(out_fd)]
        lay = self.probe["layout"]
        args = [self.probe["bwrap"], "--unshare-ipc", "--unshare-pid", "--unshare-net",
                "--unshare-uts", "--unshare-cgroup-try", "--die-with-parent", "--new-session",
                "--hostname", "sandbox"]
        if self.probe["root"]:
            # Root creates no user namespace; the child drops to its per-run uid, which needs
            # these two capabilities until it does (bwrap drops every other one).
            args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        else:
            args += ["--unshare-user", "--uid", "65534", "--gid", "65534", "--disable-userns"]
        targets = [dst for _, dst in lay["binds"]] + [_SANDBOX_HARNESS + "/x"]
        dirs: set[str] = set()
        for t in targets:
            p = os.path.dirname(t)
            while p not in ("/", ""):
                dirs.add(p)
                p = os.path.dirname(p)
        for d in sorted(dirs, key=lambda d: (d.count("/"), d)):
            args += ["--perms", "0755", "--dir", d]
        for src, dst in lay["binds"]:
            args += ["--ro-bind", src, dst]
        for h in lay["hide"]:
            args += ["--perms", "0555", "--tmpfs", h, "--remount-ro", h]
        args += ["--ro-bind", str(CHILD), f"{_SANDBOX_HARNESS}/_sandbox_child.py",
                 "--ro-bind", str(CODEC), f"{_SANDBOX_HARNESS}/_sandbox_codec.py"]
        for dev in ("null", "zero", "random", "urandom"):
            args += ["--dev-bind", f"/dev/{dev}", f"/dev/{dev}"]
        # No ld.so.cache inside: the loader is told where the bound libraries are.
        args += ["--setenv", "LD_LIBRARY_PATH", ":".join(lay["lib_dirs"])]
        args += ["--perms", "01777", "--size", str(self.limits.tmpfs_mb * 1024 * 1024),
                 "--tmpfs", _SANDBOX_WORKDIR, "--chdir", _SANDBOX_WORKDIR]
        if seccomp_fd is not None:
            args += ["--seccomp", str(seccomp_fd)]
        args += ["--remount-ro", "/", "--", lay["exe"], *py_flags,
                 f"{_SANDBOX_HARNESS}/_sandbox_child.py", str(in_fd), str(out_fd)]
        return args

    def _start(self, t0: float):
        """(channel, cleanup, workdir) for a fresh sandboxed process, or a sandbox_error."""
        if self._setup_error:
            return SandboxResult("sandbox_error", self._setup_error, time.monotonic() - t0,
                                 verified=False)
        ns = self.isolation == "namespaces"
        tmp = None if ns else tempfile.mkdtemp(prefix="cogumi-sbx-")
        workdir = tmp or _SANDBOX_WORKDIR
        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        fds = [req_r, rep_w]
        seccomp_fd = None
        if self.seccomp:
            seccomp_fd, sw = os.pipe()
            os.write(sw, self.probe["seccomp_bpf"])  # a few hundred bytes: fits the pipe
            os.close(sw)
            fds.append(seccomp_fd)
        env = {"PATH": "/nonexistent", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
               "PYTHONHASHSEED": "0", "HOME": workdir, "TMPDIR": workdir}
        try:
            proc = subprocess.Popen(
                self._command(req_r, rep_w, seccomp_fd), stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=fds,
                cwd=tmp or "/", env=env, start_new_session=True)
        except OSError as e:
            for fd in fds + [req_w, rep_r]:
                os.close(fd)
            if tmp:
                shutil.rmtree(tmp, ignore_errors=True)
            return SandboxResult("sandbox_error", f"could not start: {e}", time.monotonic() - t0,
                                 verified=False)
        for fd in fds:
            os.close(fd)
        ch = _Channel(proc, req_w, rep_r, t0 + self.limits.wall_s, self.limits.output_bytes)
        done = [False]

        def cleanup() -> None:
            if done[0]:
                return
            done[0] = True
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
            for stream in (proc.stdout, proc.stderr):
                stream.close()
            ch.close()
            if tmp:
                shutil.rmtree(tmp, ignore_errors=True)

        return ch, cleanup, workdir


class _Candidate:
    """What the trusted tests call: forwards plain-data calls to the sandboxed process."""

    __slots__ = ("_ch", "_calls")

    def __init__(self, ch: _Channel, calls: list[int]) -> None:
        self._ch, self._calls = ch, calls

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        ch = self._ch
        payload = [list(args), dict(kwargs)]
        try:
            codec.check_plain(payload)
        except (codec.NotData, RecursionError) as e:
            raise _NotProxyable(f"the tests pass the candidate a non-data argument ({e})") from None
        self._calls[0] += 1
        cid = self._calls[0]
        ch.send(["call", cid, *payload])
        msg = ch.recv()
        kind = msg[0]
        if len(msg) < 3 or msg[1] != cid:
            raise ch.fail("channel_error", f"a reply {str(kind)[:20]!r} that does not answer call {cid}")
        count = msg[-1]
        if type(count) is int and count > 0:
            ch.violations = max(ch.violations, count)
        if kind == "ok" and len(msg) == 4:
            return msg[2]
        if kind == "nondata" and len(msg) == 4:
            raise ch.fail("non_data_return", f"call {cid}: {str(msg[2])[:300]}")
        if kind == "exit" and len(msg) == 4:
            raise ch.fail("exited_early", f"call {cid}: {str(msg[2])[:300]}")
        if kind == "raise" and len(msg) == 5:
            name, text = str(msg[2]), str(msg[3])
            if name == "MemoryError":
                raise ch.fail("memory", f"call {cid}: MemoryError")
            if name == "SandboxViolation":
                raise ch.fail("forbidden", text)
            cls = getattr(builtins, name, None)
            if not (isinstance(cls, type) and issubclass(cls, Exception)):
                cls = CandidateError
                text = f"{name}: {text}"
            try:
                exc = cls(text)
            except Exception:  # noqa: BLE001 - a built-in that wants other arguments
                exc = CandidateError(f"{name}: {text}")
            exc._cogumi_candidate = True
            raise exc
        raise ch.fail("channel_error", f"a malformed {str(kind)[:20]!r} reply to call {cid}")

    def __getattr__(self, name: str) -> Any:
        raise _NotProxyable(f"the tests read attribute {name!r} of the candidate")

    def __repr__(self) -> str:
        return "<candidate in the sandbox>"


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:500]


def _test_line(e: BaseException, tests: str) -> str:
    """Where in the (trusted) tests the failure surfaced: ' at tests line N: <source>'."""
    tb, line = e.__traceback__, None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<task tests>":
            line = tb.tb_lineno
        tb = tb.tb_next
    if line is None:
        return ""
    lines = tests.splitlines()
    src = lines[line - 1].strip() if 0 < line <= len(lines) else ""
    return f" at tests line {line}: {src}"[:300]


def _tail(buf: bytes | bytearray, n: int) -> str:
    return bytes(buf[-n:]).decode("utf-8", "replace")
