"""One run at a time per profile: an flock on `runs/<profile>/.lock`.

The kernel drops an flock when the process holding it exits, however it exits (a crash, a
kill -9), so a dead run never leaves the profile locked; the file's text (pid, start time,
command) only names the holder for the refusal message. A second `cogumi run` or
`cogumi gate` on the same profile refuses in one line, or waits with `--wait`.

The lock is re-entrant within a process: the CLI holds it for the whole command, and the
runner takes it again around each phase for callers that do not go through the CLI.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

LOCK = ".lock"

_held: dict[str, list] = {}  # resolved lock path -> [file object, depth]


class ProfileBusy(RuntimeError):
    """Another run holds the profile's lock; one line naming it."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info.get("pid"):
        return "another cogumi process (holder not yet recorded)"
    return (f"pid {info['pid']} on {info.get('host', '?')}, started {info.get('started', '?')}"
            f", `{info.get('command', '?')}`")


def is_held_here(runs_dir: Path) -> bool:
    """This process holds the profile's lock (so nothing else can be running on it)."""
    return str((runs_dir / LOCK).resolve()) in _held


@contextlib.contextmanager
def profile_lock(runs_dir: Path, wait: bool = False, command: str | None = None,
                 on_wait=None) -> Iterator[None]:
    """Hold runs_dir's lock for the block. Raises ProfileBusy when another process holds it,
    unless `wait`, which blocks until it is released (calling `on_wait(holder)` first)."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    path = runs_dir / LOCK
    key = str(path.resolve())
    if key in _held:
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    # "a+" creates without truncating: the holder's text stays readable until we own it.
    f = open(path, "a+")  # noqa: SIM115 (held across the yield)
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(path)
            if not wait:
                raise ProfileBusy(f"{runs_dir} is in use by another run ({holder}); wait for "
                                  f"it to finish, or pass --wait") from None
            if on_wait is not None:
                on_wait(holder)
            fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        f.truncate()
        f.write(json.dumps({
            "pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": command or " ".join(["cogumi", *sys.argv[1:]])}) + "\n")
        f.flush()
        _held[key] = [f, 1]
        try:
            yield
        finally:
            del _held[key]
            f.seek(0)
            f.truncate()  # released cleanly: no holder to name
            f.flush()
            fcntl.flock(f, fcntl.LOCK_UN)
    finally:
        f.close()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive
    return True
