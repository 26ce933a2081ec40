"""Hostile completions must be contained and recorded with their reason, and the harness
process and the machine's files must be untouched.

Each case runs with the full sandbox, and again with the audit hook switched off, which
proves the namespace layer (read-only mounts, empty network namespace, pid namespace,
pids cgroup) holds on its own. The weak mode (audit hook + rlimits only) is tested with
the hook on only: without it, it would not contain these programs, as its name says.
"""

from __future__ import annotations

import os
import socket
import time

import pytest

from cogumi.evaluation.sandbox import Sandbox, SandboxLimits, probe_isolation

LIMITS = SandboxLimits(wall_s=1.2, cpu_s=1, memory_mb=256, max_procs=16, output_bytes=100_000)
HAVE_NS = probe_isolation()["mode"] == "namespaces"

MODES = [
    pytest.param(("namespaces", True), id="namespaces+audit",
                 marks=pytest.mark.skipif(not HAVE_NS, reason="no namespaces here")),
    pytest.param(("namespaces", False), id="namespaces-only",
                 marks=pytest.mark.skipif(not HAVE_NS, reason="no namespaces here")),
    pytest.param(("weak", True), id="weak+audit"),
]


@pytest.fixture(params=MODES)
def sandbox(request):
    mode, hooks = request.param
    return Sandbox(LIMITS, isolation=mode, audit_hooks=hooks)


@pytest.fixture
def sentinel(tmp_path):
    """A file outside the sandbox that hostile code will try to overwrite or delete."""
    path = tmp_path / "precious.txt"
    path.write_text("untouched")
    return path


def _all_children() -> set[int]:
    psutil = pytest.importorskip("psutil")
    return {p.pid for p in psutil.Process().children(recursive=True)}


_preexisting: set[int] = set()


@pytest.fixture(autouse=True)
def _note_preexisting_children():
    """Children this process had before the test (e.g. a multiprocessing forkserver that an
    earlier test module started) are not the sandbox's; only new ones count."""
    _preexisting.clear()
    _preexisting.update(_all_children())
    yield


def _children() -> list[int]:
    return sorted(_all_children() - _preexisting)


def _strict(sandbox: Sandbox) -> bool:
    return sandbox.audit_hooks


def check_contained(sandbox, result, sentinel, allowed):
    assert result.reason in allowed, (result.reason, result.detail, result.stderr[-500:])
    assert sentinel.read_text() == "untouched"
    assert _children() == []  # nothing the program started outlives it


def test_infinite_loop_is_stopped_by_cpu_or_wall_limit(sandbox, sentinel):
    t = time.monotonic()
    r = sandbox.run("while True:\n    pass\n")
    check_contained(sandbox, r, sentinel, {"cpu_time", "timeout"})
    assert time.monotonic() - t < LIMITS.wall_s + 2


def test_sleeping_forever_hits_the_wall_clock(sandbox, sentinel):
    r = sandbox.run("import time\ntime.sleep(60)\n")
    check_contained(sandbox, r, sentinel, {"timeout"})


def test_fork_bomb(sandbox, sentinel):
    r = sandbox.run("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n")
    allowed = {"forbidden"} if _strict(sandbox) else {"timeout", "cpu_time", "killed"}
    check_contained(sandbox, r, sentinel, allowed)


def test_memory_bomb(sandbox, sentinel):
    r = sandbox.run("chunks = []\nwhile True:\n    chunks.append(bytearray(50 * 1024 * 1024))\n")
    check_contained(sandbox, r, sentinel, {"memory"})


def test_writing_outside_the_working_directory(sandbox, sentinel):
    r = sandbox.run(f"open({str(sentinel)!r}, 'w').write('pwned')\n")
    allowed = {"forbidden"} if _strict(sandbox) else {"exception"}
    check_contained(sandbox, r, sentinel, allowed)
    if not _strict(sandbox):
        assert "Read-only file system" in r.detail


def test_deleting_files(sandbox, sentinel):
    r = sandbox.run(f"import os, shutil\nos.remove({str(sentinel)!r})\n")
    check_contained(sandbox, r, sentinel, {"forbidden"} if _strict(sandbox) else {"exception"})
    r = sandbox.run(f"import shutil\nshutil.rmtree({str(sentinel.parent)!r})\n")
    check_contained(sandbox, r, sentinel, {"forbidden"} if _strict(sandbox) else {"exception"})


def test_writing_inside_the_working_directory_is_allowed_and_thrown_away(sandbox):
    r = sandbox.run("open('scratch.txt', 'w').write('ok')\nassert open('scratch.txt').read() == 'ok'\n"
                    "import os\nprint(os.getcwd())\n")
    assert r.reason == "passed", r.detail
    assert not os.path.exists(r.stdout.strip())  # the working directory is gone afterwards


def test_network_socket_reaches_nothing(sandbox, sentinel):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.3)
    port = server.getsockname()[1]
    try:
        r = sandbox.run(f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
                        "s.sendall(b'leak')\n")
        check_contained(sandbox, r, sentinel,
                        {"forbidden"} if _strict(sandbox) else {"exception"})
        with pytest.raises(socket.timeout):
            server.accept()  # no connection ever arrived
    finally:
        server.close()


def test_killing_the_parent_or_everything(sandbox, sentinel):
    me = os.getpid()
    prog = f"import os, signal\nos.kill({me}, signal.SIGKILL)\n"
    if sandbox.isolation == "namespaces":
        # Only processes inside the pid namespace are visible; -1 means "all of them".
        prog += "os.kill(os.getppid(), signal.SIGKILL)\nos.kill(-1, signal.SIGKILL)\n"
    r = sandbox.run(prog)
    allowed = {"forbidden"} if _strict(sandbox) else {"exception", "killed", "exited_early"}
    check_contained(sandbox, r, sentinel, allowed)
    assert os.getpid() == me  # we are still here to assert it


def test_huge_output_is_capped(sandbox, sentinel):
    r = sandbox.run("while True:\n    print('x' * 10000)\n")
    check_contained(sandbox, r, sentinel, {"output_limit"})
    assert len(r.stdout) <= 4000


def test_escape_tools_are_refused(sandbox, sentinel):
    if not _strict(sandbox):
        pytest.skip("these are refused by the audit hook; without it, capabilities are dropped")
    for prog in ("import ctypes\n", "import subprocess\nsubprocess.run(['true'])\n",
                 "import os\nos.system('true')\n", "import resource\n"
                 "resource.setrlimit(resource.RLIMIT_CPU, (100, 100))\n"):
        r = sandbox.run(prog)
        check_contained(sandbox, r, sentinel, {"forbidden"})


def test_a_caught_refusal_still_fails_the_item(sandbox, sentinel):
    if not _strict(sandbox):
        pytest.skip("refusals come from the audit hook")
    r = sandbox.run(f"try:\n    open({str(sentinel)!r}, 'w')\nexcept Exception:\n    pass\n")
    check_contained(sandbox, r, sentinel, {"forbidden"})
    assert r.violations


def test_privileged_operations_fail_without_capabilities(sentinel):
    if not HAVE_NS:
        pytest.skip("no namespaces here")
    # With the audit hook off, ctypes is reachable: remounting / read-write must still fail.
    sb = Sandbox(LIMITS, isolation="namespaces", audit_hooks=False)
    r = sb.run("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
               "assert libc.mount(None, b'/', None, 32 | 4096, None) != 0\n"
               f"open({str(sentinel)!r}, 'w')\n")
    check_contained(sb, r, sentinel, {"exception"})
    assert "Read-only" in r.detail


@pytest.mark.parametrize(
    "prog,reason",
    [("assert 1 == 2", "wrong_answer"), ("1/0", "exception"), ("def f(:", "syntax_error"),
     ("import sys\nsys.exit(0)", "exited_early"), ("import os\nos._exit(0)", "exited_early"),
     ("print('fine')", "passed")],
)
def test_ordinary_outcomes_are_classified(prog, reason):
    r = Sandbox(LIMITS).run(prog)
    assert r.reason == reason, (r.reason, r.detail)


def test_run_many_keeps_order_and_isolates_items():
    progs = ["assert True", "while True: pass", "assert False", "print(1)"]
    got = [r.reason for r in Sandbox(LIMITS).run_many(progs, workers=2)]
    assert got[0] == "passed" and got[1] in ("cpu_time", "timeout")
    assert got[2:] == ["wrong_answer", "passed"]
