"""The process that runs untrusted code. Started by cogumi.evaluation.sandbox, never imported.

Runs as ``python -S -s -B -P _sandbox_child.py IN_FD OUT_FD`` inside bubblewrap (namespace
mode) or as a plain subprocess (the opt-in weak mode). It reads ``marshal`` frames from
IN_FD and writes replies to OUT_FD, one JSON array per line (``_sandbox_codec``):

1. ``["job", {...}]``: the program, the entry point, the limits. The child drops to the
   given unprivileged uid/gid (when started as root), sets rlimits, closes every other
   descriptor, installs the audit hook, answers ``["ready"]`` and only then runs the
   program (the candidate's code without its tests), answering ``["loaded", n, [...]]``
   or ``["load_error", reason, detail, [...]]`` (n and the list: violations so far).
2. ``["call", id, args, kwargs]``: calls the entry point; answers ``["ok", id, value, n]``,
   ``["raise", id, type_name, message, n]``, ``["nondata", id, what, n]`` or
   ``["exit", id, detail, n]``.
3. ``["done"]``: answers ``["done", n, [...]]`` and exits.

In the in-sandbox path (tests that cannot be called through the channel), the program
holds its tests and the child answers ``["outcome", reason, detail, [...]]`` once: that
verdict comes from the untrusted process and is marked as such by the harness.

Nothing here is trusted by the harness except ``["ready"]``, which is written before any
untrusted code runs: every later line may be forged, and the harness reads it as data only.
"""

import marshal
import os
import resource
import sys

IN_FD, OUT_FD = int(sys.argv[1]), int(sys.argv[2])
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _sandbox_codec as C  # noqa: E402  (next to this file, inside the sandbox too)

_out = OUT_FD


def send(*message):
    send_bytes((C.dumps(list(message)) + "\n").encode("ascii"))


def send_bytes(data):
    view = memoryview(data)
    while view:
        n = os.write(_out, view)
        view = view[n:]


def set_limits(limits):
    cpu = int(limits["cpu_s"])
    mem = int(limits["memory_mb"]) * 1024 * 1024
    fsize = int(limits["file_size_mb"]) * 1024 * 1024
    table = [
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),  # SIGXCPU at the soft limit, SIGKILL at hard
        (resource.RLIMIT_AS, (mem, mem)),
        (resource.RLIMIT_FSIZE, (fsize, fsize)),
        (resource.RLIMIT_NOFILE, (int(limits["open_files"]),) * 2),
        (resource.RLIMIT_CORE, (0, 0)),
        # Counted per user namespace (or per uid: each run has its own) and enforced because
        # the program never runs as uid 0 of the host.
        (resource.RLIMIT_NPROC, (int(limits["max_procs"]),) * 2),
    ]
    for which, value in table:
        resource.setrlimit(which, value)


# ------------------------------------------------------------------ audit hook
class SandboxViolation(Exception):
    pass


def install_audit_hook(workdir, violations):
    """A tripwire, not a boundary (code that finds this closure through gc can turn it
    off): it names what a program tried, so the item fails with reason ``forbidden``."""
    import os.path as osp

    workdir = osp.realpath(workdir)
    allowed_write = {"/dev/null"}
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    blocked_prefixes = ("socket.", "ctypes.", "subprocess.", "os.exec", "os.spawn",
                        "os.posix_spawn", "os.fork", "os.kill", "os.killpg", "_posixsubprocess",
                        "resource.setrlimit", "resource.prlimit", "signal.pthread_kill",
                        "os.system", "pty.", "winreg.", "os.startfile", "mmap.")
    blocked_imports = {"ctypes", "_ctypes", "_posixsubprocess", "_xxsubinterpreters",
                       "_testcapi", "_testinternalcapi", "cffi", "_cffi_backend"}
    path_events = {"os.remove", "os.unlink", "os.rmdir", "os.rename", "os.replace",
                   "os.truncate", "os.chmod", "os.chown", "os.link", "os.symlink", "os.mkdir",
                   "os.utime", "os.chflags", "os.lchflags", "os.mkfifo", "os.mknod",
                   "shutil.rmtree", "shutil.copyfile", "shutil.copymode", "shutil.copystat",
                   "shutil.move", "os.setxattr", "os.removexattr"}
    state = {"busy": False}
    realpath, join, getcwd = osp.realpath, osp.join, os.getcwd

    def inside(path):
        if isinstance(path, int):
            return True  # an fd the program already holds
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        try:
            path = os.fspath(path)
        except TypeError:
            return False
        full = realpath(join(getcwd(), path))
        return full == workdir or full.startswith(workdir + "/") or full in allowed_write

    def refuse(event, args):
        msg = f"{event} {args[:2]!r}"[:300]
        violations.append(msg)
        raise SandboxViolation(f"sandbox refused {msg}")

    def hook(event, args):
        if state["busy"]:
            return
        state["busy"] = True
        try:
            if event == "open":
                path, mode, flags = (list(args) + [None, None, None])[:3]
                writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                    isinstance(flags, int) and flags & write_flags
                )
                if writing and not inside(path):
                    refuse(event, args)
            elif event in path_events:
                for p in args[:2]:
                    if isinstance(p, (str, bytes, os.PathLike)) and not inside(p):
                        refuse(event, args)
            elif event == "import":
                if args and str(args[0]).split(".")[0] in blocked_imports:
                    refuse(event, args)
            elif event.startswith(blocked_prefixes):
                refuse(event, args)
        finally:
            state["busy"] = False

    sys.addaudithook(hook)


# ------------------------------------------------------------------ running code
def _describe(e):
    try:
        return f"{type(e).__name__}: {e}"[:500]
    except BaseException:  # noqa: BLE001 - a hostile __str__
        return type(e).__name__


def run_program(source, glb):
    """(reason, detail) after executing ``source``; reason "passed" when it ran to the end."""
    try:
        code = compile(source, "main.py", "exec")
    except (SyntaxError, ValueError) as e:
        return "syntax_error", _describe(e)
    try:
        exec(code, glb)
    except SystemExit as e:
        return "exited_early", f"SystemExit({e.code!r}) while the program was loading"[:500]
    except MemoryError:
        return "memory", "MemoryError"
    except AssertionError as e:
        return "wrong_answer", _describe(e)
    except SandboxViolation as e:
        return "forbidden", str(e)[:500]
    except BaseException as e:  # noqa: BLE001 - anything the program raises is its failure
        return "exception", _describe(e)
    return "passed", ""


def serve_calls(fn, read_frame, violations):
    while True:
        msg = read_frame()
        if msg is None:
            return
        if msg[0] == "done":
            send("done", len(violations), violations[:20])
            return
        _, cid, args, kwargs = msg
        try:
            value = fn(*args, **kwargs)
        except SystemExit as e:
            send("exit", cid, f"SystemExit({e.code!r}) inside the call"[:500], len(violations))
            continue
        except BaseException as e:  # noqa: BLE001 - the candidate's failure, reported as data
            try:
                text = str(e)[:500]
            except BaseException:  # noqa: BLE001
                text = ""
            send("raise", cid, type(e).__name__[:100], text, len(violations))
            continue
        try:
            reply = f'["ok",{cid:d},{C.dumps(value)},{len(violations):d}]\n'
        except C.NotData as e:
            send("nondata", cid, str(e)[:300], len(violations))
            continue
        except (ValueError, RecursionError) as e:
            send("nondata", cid, f"unprintable: {type(e).__name__}", len(violations))
            continue
        send_bytes(reply.encode("ascii"))


def main():
    def read_exact(n):
        chunks = []
        while n:
            chunk = os.read(IN_FD, min(n, 1 << 20))
            if not chunk:
                return None
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def read_frame():
        head = read_exact(4)
        if head is None:
            return None
        body = read_exact(int.from_bytes(head, "big"))
        return None if body is None else marshal.loads(body)

    job = read_frame()[1]
    drop = job.get("drop_to")
    if drop is not None:
        uid, gid = drop
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
            raise OSError("could not drop to the sandbox uid/gid")
    set_limits(job["limits"])
    keep = sorted({0, 1, 2, IN_FD, OUT_FD})
    for lo, hi in zip(keep, keep[1:] + [1 << 20], strict=True):
        os.closerange(lo + 1, hi)
    os.chdir(job["workdir"])
    violations = []
    if job["audit_hooks"]:
        install_audit_hook(job["workdir"], violations)
    send("ready")

    glb = {"__name__": "__main__", "__file__": "main.py", "__builtins__": __builtins__}
    reason, detail = run_program(job["program"], glb)
    if job["kind"] == "program":  # the in-sandbox path: the program holds its tests
        send("outcome", reason, detail, violations[:20])
        return
    if reason != "passed":
        send("load_error", reason, detail, violations[:20])
        return
    fn = glb.get(job["entry"])
    if not callable(fn):
        send("load_error", "exception",
             f"NameError: the program defines no function {job['entry']!r}", violations[:20])
        return
    send("loaded", len(violations), violations[:20])
    serve_calls(fn, read_frame, violations)


if __name__ == "__main__":
    try:
        main()
    except BaseException as e:  # noqa: BLE001 - the harness reads this as setup failure
        try:
            send("child_error", _describe(e))
        except BaseException:  # noqa: BLE001
            pass
        os._exit(70)
    os._exit(0)
