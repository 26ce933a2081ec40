"""The process that runs untrusted code. Started by cogumi.evaluation.sandbox, never imported.

Runs as ``python -I -S _sandbox_child.py`` (inside ``unshare --net --mount --pid`` when the
machine allows), reads its job as JSON from stdin, and:

1. (namespace mode, still privileged) joins the per-run pids cgroup, mounts a size-limited
   tmpfs as the working directory, replaces /dev by a tmpfs holding only null/zero/random/
   urandom, and remounts every other mount read-only;
2. forks the worker. This process stays as the reaper (pid 1 of the namespace): when it
   exits, the kernel kills everything left in the namespace;
3. the worker sets rlimits (CPU, address space, file size, open files, processes, core),
   drops every capability and sets no_new_privs, installs an audit hook that refuses
   writes outside the working directory, deletes, process creation, signals, sockets,
   ctypes and rlimit changes (audit hooks cannot be removed once added), then executes the
   program;
4. the worker reports the outcome on fd 3 with the job's nonce; the reaper reports the
   worker's exit status on fd 3 as its last line.
"""

import json
import os
import resource
import signal
import sys

RESULT_FD = 3  # replaced by the job's result_fd


def _emit(obj):
    data = (json.dumps(obj) + "\n").encode()
    try:
        os.write(RESULT_FD, data)
    except OSError:
        pass


# ------------------------------------------------------------------ namespace setup
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18


def _libc():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
    return ctypes, libc


def _mount(libc, ctypes, src, target, fstype, flags, data=None):
    rc = libc.mount(
        src.encode() if src else None,
        target.encode(),
        fstype.encode() if fstype else None,
        flags,
        data.encode() if data else None,
    )
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")


def _mountpoints():
    points = []
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 4:
                continue
            mp = parts[1].encode().decode("unicode_escape")  # \040 etc.
            opts = parts[3].split(",")
            points.append((mp, opts))
    return points


def setup_namespace(job):
    ctypes, libc = _libc()
    errors = []
    for cg in job.get("cgroups", []):
        with open(os.path.join(cg, "cgroup.procs"), "w") as f:
            f.write("0")
    _mount(libc, ctypes, None, "/", None, MS_REC | MS_PRIVATE)
    workdir = job["workdir"]
    # Everything already mounted becomes read-only (the new tmpfs mounts come after).
    for mp, opts in _mountpoints():
        if mp == workdir:
            continue
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        for name, bit in (("nosuid", MS_NOSUID), ("nodev", MS_NODEV), ("noexec", MS_NOEXEC)):
            if name in opts:
                flags |= bit
        if mp != "/dev":
            flags |= MS_NOSUID | MS_NODEV
        try:
            _mount(libc, ctypes, None, mp, None, flags)
        except OSError as e:
            if mp == "/":
                raise
            errors.append(str(e))
    size = int(job["limits"]["tmpfs_mb"])
    _mount(libc, ctypes, "tmpfs", workdir, "tmpfs", MS_NOSUID | MS_NODEV,
           f"size={size}m,mode=0777")
    if job.get("private_dev", True):
        # A /dev with only harmless character devices: no disks, no ttys, no /dev/shm.
        _mount(libc, ctypes, "tmpfs", "/dev", "tmpfs", MS_NOSUID, "size=64k,mode=0755")
        for name, minor in (("null", 3), ("zero", 5), ("random", 8), ("urandom", 9)):
            os.mknod(f"/dev/{name}", 0o666 | 0o020000, os.makedev(1, minor))
        _mount(libc, ctypes, None, "/dev", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID)
    return errors


def drop_privileges():
    """No capabilities (so no mount, no raw devices, no ptrace of others), no new privs."""
    ctypes, libc = _libc()
    PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP = 38, 24
    PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    for cap in range(64):
        libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    hdr = Header(0x20080522, 0)
    data = (Data * 2)()
    if libc.capset(ctypes.byref(hdr), data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")


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
        # Not enforced for uid 0; the pids cgroup and the audit hook are the real guards.
        (resource.RLIMIT_NPROC, (int(limits["max_procs"]),) * 2),
    ]
    for which, value in table:
        try:
            resource.setrlimit(which, value)
        except (ValueError, OSError):
            pass


# ------------------------------------------------------------------ audit hook
class SandboxViolation(Exception):
    pass


def install_audit_hook(workdir, violations):
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


# ------------------------------------------------------------------ worker
def run_worker(job, nonce, violations):
    workdir = job["workdir"]
    path = os.path.join(workdir, "main.py")
    source = job["program"]
    with open(path, "w", encoding="utf-8") as f:
        f.write(source)
    try:
        code = compile(source, path, "exec")
    except (SyntaxError, ValueError) as e:
        return {"outcome": "syntax_error", "detail": f"{type(e).__name__}: {e}"}
    glb = {"__name__": "__main__", "__file__": path, "__builtins__": __builtins__}
    try:
        exec(code, glb)
    except SystemExit as e:
        return {"outcome": "exited_early", "detail": f"SystemExit({e.code!r}) before the tests finished"}
    except MemoryError:
        return {"outcome": "memory", "detail": "MemoryError"}
    except AssertionError as e:
        return {"outcome": "wrong_answer", "detail": f"AssertionError: {e}"[:500]}
    except SandboxViolation as e:
        return {"outcome": "forbidden", "detail": str(e)[:500]}
    except BaseException as e:  # noqa: BLE001 - anything the program raises is its failure
        try:
            detail = f"{type(e).__name__}: {e}"[:500]
        except BaseException:  # noqa: BLE001 - a hostile __str__
            detail = type(e).__name__
        return {"outcome": "exception", "detail": detail}
    return {"outcome": "passed", "detail": ""}


def main():
    global RESULT_FD
    job = json.loads(sys.stdin.read())
    os.close(0)
    RESULT_FD = int(job["result_fd"])
    nonce = job.pop("nonce")
    setup_errors = []
    if job["mode"] == "namespaces":
        setup_errors = setup_namespace(job)
    os.chdir(job["workdir"])

    pid = os.fork()
    if pid == 0:
        violations = []
        try:
            if job["mode"] == "namespaces":
                drop_privileges()
            set_limits(job["limits"])
            for mod in [m for m in sys.modules if m == "ctypes" or m.startswith(("ctypes.", "_ctypes"))]:
                del sys.modules[mod]
            if job.get("audit_hooks", True):
                install_audit_hook(job["workdir"], violations)
            result = run_worker(job, nonce, violations)
        except MemoryError:
            result = {"outcome": "memory", "detail": "MemoryError"}
        if violations and result["outcome"] != "forbidden":
            result = {"outcome": "forbidden", "detail": "sandbox refused " + violations[0],
                      "masked": result["outcome"]}
        result["nonce"] = nonce
        result["violations"] = violations[:20]
        _emit(result)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    # Reaper: wait for the worker (and adopt any orphans), then report how it ended.
    status = None
    while True:
        try:
            wpid, st = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if wpid == pid:
            status = st
            break
    report = {"reaper": True, "setup_errors": setup_errors}
    if status is not None:
        if os.WIFSIGNALED(status):
            report["signal"] = os.WTERMSIG(status)
        else:
            report["exit_code"] = os.WEXITSTATUS(status)
    _emit(report)
    os._exit(0)


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    main()
