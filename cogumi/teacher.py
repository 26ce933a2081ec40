"""The profile's teacher, reached only through an OpenAI-compatible endpoint.

A hosted teacher (GPT-5, vLLM, any OpenAI-compatible server) and a local one take the same
path: cogumi's OpenAI-compatible backend (cogumi.evaluation.backends.openai_backend) with
its retries, failure counts by reason, cache and price table. A local teacher
(`[teacher] source = "served-gguf"`) is a GGUF that cogumi serves itself for the length of
a `with` block: llama-cpp-python's own server (`python -m llama_cpp.server`, its `server`
extra) in a child process on a free loopback port, health-checked on /v1/models before the
first request, and stopped when the block ends, on an exception too. The child is killed
if cogumi's process dies without unwinding (Linux: PR_SET_PDEATHSIG).

```python
with teacher_backend(profile.teacher) as teacher:   # an OpenAIBackend
    outs = teacher.generate(requests)
```
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from cogumi.evaluation.backends.openai_backend import OpenAIBackend
from cogumi.profile import TeacherConfig

LOOPBACK = "127.0.0.1"


class TeacherUnavailable(RuntimeError):
    """The teacher's server could not be started or did not become healthy; one line."""


def free_loopback_port() -> int:
    """A port nothing listens on now (the OS picks it); the server binds it right after."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child, before exec
    try:
        import ctypes
        # SIGKILL, not SIGTERM: on SIGTERM uvicorn waits for the request in flight, which on a
        # busy CPU is minutes of generation nobody will read (seen when the bench was killed).
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class LlamaCppServer:
    """llama-cpp-python's OpenAI-compatible server on one GGUF, as a context manager.

    ``model_alias`` is the model name the server answers to (requests name it). The
    server's log (llama.cpp's and uvicorn's) goes to ``log_path`` (default: discarded); its
    last line is quoted when the server fails to start.
    """

    def __init__(self, model_path: str | Path, *, model_alias: str, n_ctx: int = 4096,
                 n_threads: int = 2, n_batch: int = 512, port: int | None = None,
                 startup_timeout_s: float = 300.0, log_path: str | Path | None = None,
                 python: str = sys.executable) -> None:
        self.model_path = Path(model_path)
        self.model_alias = model_alias
        self.n_ctx, self.n_threads, self.n_batch = n_ctx, n_threads, n_batch
        self.port = port
        self.startup_timeout_s = startup_timeout_s
        self.log_path = Path(log_path) if log_path else None
        self.python = python
        self.process: subprocess.Popen | None = None
        self.startup_s: float | None = None

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/v1"

    def command(self) -> list[str]:
        return [self.python, "-m", "llama_cpp.server", "--model", str(self.model_path),
                "--model_alias", self.model_alias, "--host", LOOPBACK, "--port", str(self.port),
                "--n_ctx", str(self.n_ctx), "--n_threads", str(self.n_threads),
                "--n_threads_batch", str(self.n_threads), "--n_batch", str(self.n_batch),
                "--seed", "0"]

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> LlamaCppServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        if not self.model_path.is_file():
            raise TeacherUnavailable(f"teacher model {self.model_path} does not exist")
        _refuse_amx_build()
        fixed_port = self.port is not None
        for _attempt in range(3):  # another process may take a free port before we bind it
            if not fixed_port:
                self.port = free_loopback_port()
            t0 = time.monotonic()
            self._spawn()
            try:
                self._wait_healthy()
            except _PortTaken:
                self.stop()
                if fixed_port:
                    raise TeacherUnavailable(f"teacher server: port {self.port} is in use") from None
                continue
            except BaseException:
                self.stop()
                raise
            self.startup_s = time.monotonic() - t0
            return
        raise TeacherUnavailable("teacher server: three free ports were taken before it bound one")

    def _spawn(self) -> None:
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        try:
            self.process = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        finally:
            if log is not subprocess.DEVNULL:
                log.close()

    def _log_tail(self) -> str:
        if not self.log_path or not self.log_path.is_file():
            return "(no log kept)"
        lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        return lines[-1][:300] if lines else "(empty log)"

    def _wait_healthy(self) -> None:
        import httpx

        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            rc = self.process.poll()
            if rc is not None:
                tail = self._log_tail()
                if "address already in use" in tail.lower():
                    raise _PortTaken()
                raise TeacherUnavailable(f"teacher server for {self.model_path.name} exited with "
                                         f"code {rc} before it answered: {tail}")
            try:
                resp = httpx.get(f"{self.base_url}/models", timeout=2.0)
                if resp.status_code == 200 and self.model_alias in {
                        m.get("id") for m in resp.json().get("data", [])}:
                    return
            except (httpx.TransportError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise TeacherUnavailable(
                    f"teacher server for {self.model_path.name} did not answer {self.base_url}"
                    f"/models within {self.startup_timeout_s:g} s: {self._log_tail()}")
            time.sleep(0.2)

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM to the server's process group, SIGKILL after ``grace_s``; idempotent."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class _PortTaken(Exception):
    pass


def _refuse_amx_build() -> None:
    """The server runs this environment's llama.cpp: the same AMX-off requirement as the
    llama.cpp backend (cogumi.llama_cpp_build)."""
    from cogumi.llama_cpp_build import LlamaCppBuildError, load_llama_cpp
    try:
        load_llama_cpp("a served teacher", "pip install 'llama-cpp-python[server]'")
    except LlamaCppBuildError as e:
        raise TeacherUnavailable(str(e)) from None


def _served_file(cfg: TeacherConfig, root: Path | None) -> tuple[Path, str]:
    """The GGUF a served-gguf teacher runs and its sha256 (a part-packaged model is
    assembled and verified against its pinned digest; a file is hashed as it is)."""
    if cfg.parts is not None:
        from cogumi.locations import assemble_gguf, part_packaged_gguf
        return assemble_gguf(cfg.parts), part_packaged_gguf(cfg.parts).sha256
    from cogumi.artifacts import sha256_file
    from cogumi.locations import data_root
    # Relative to the repository, as every path a profile names (PhaseContext.resolve).
    path = Path(root or data_root()) / cfg.path
    if not path.is_file():
        raise TeacherUnavailable(f"teacher.path: no GGUF file at {path}")
    return path, sha256_file(path)


def _backend(cfg: TeacherConfig, base_url: str, cache_dir: Path | None,
             model_digest: str | None = None) -> OpenAIBackend:
    return OpenAIBackend(base_url, cfg.model, api_key_env=cfg.api_key_env,
                         concurrency=cfg.concurrency, max_retries=cfg.max_retries,
                         timeout_s=cfg.timeout_s, cache_dir=cache_dir,
                         price_per_mtok=tuple(cfg.price_usd_per_mtok), on_failure="raise",
                         model_digest=model_digest)


def _gguf_digest(sha256: str, cfg: TeacherConfig) -> str:
    # The cache key of every answer: the same file at the same context answers the same.
    return f"gguf:{sha256}:n_ctx={cfg.n_ctx}"


def teacher_model_digest(cfg: TeacherConfig, root: Path | None = None) -> str:
    """The ``model_digest`` the teacher's backend reports in ``identity()``, without starting
    a server: a phase can tell whether an earlier phase's teacher answers came from the same
    teacher (a served GGUF: its file and context; an endpoint: its model name and URL)."""
    if cfg.source == "endpoint":
        return f"openai:{cfg.model}@{cfg.base_url.rstrip('/')}"
    return _gguf_digest(_served_file(cfg, root)[1], cfg)


@contextlib.contextmanager
def teacher_backend(cfg: TeacherConfig, *, cache_dir: Path | None = None,
                    log_dir: Path | None = None,
                    root: Path | None = None) -> Iterator[OpenAIBackend]:
    """The teacher as an OpenAI-compatible backend for the ``with`` block (a served GGUF is
    started first and stopped after). Its requests raise EndpointFailed after the retry
    budget instead of recording an empty answer. `root`: what a `path` teacher is relative
    to (the repository's data root if None, as for every path a profile names)."""
    if cfg.source == "endpoint":
        backend = _backend(cfg, cfg.base_url, cache_dir)
        try:
            yield backend
        finally:
            backend.close()
        return
    gguf, sha256 = _served_file(cfg, root)
    digest = _gguf_digest(sha256, cfg)
    log = None
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        log = log_dir / f"teacher-server-{cfg.model}.log"
    with LlamaCppServer(gguf, model_alias=cfg.model, n_ctx=cfg.n_ctx, n_threads=cfg.threads,
                        startup_timeout_s=cfg.startup_timeout_s, log_path=log) as server:
        backend = _backend(cfg, server.base_url, cache_dir, digest)
        try:
            yield backend
        finally:
            backend.close()
