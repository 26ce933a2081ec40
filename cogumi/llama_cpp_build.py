"""How this project builds llama-cpp-python: for this CPU's instruction sets, with AMX off.

    python -m cogumi.llama_cpp_build        # build once (~5 min on 2 cores), install into this Python

llama-cpp-python compiles llama.cpp from source at install, by default with GGML_NATIVE
(``-march=native``). On a CPU with AMX that compiles ggml's AMX kernels, and llama.cpp then
moves every AMX-capable quantized weight (Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K, IQ4_XS) into an
AMX buffer whose matrix multiply runs AMX tiles for a batch of more than one token, and an
AVX512-VNNI kernel for a single token (``ggml-cpu/amx/mmq.cpp``). That batched path is where
0.3.36 crashed (SIGSEGV) on this project's AMX machine, in the prompt of every quantized model,
while the same build decoding one token at a time ran (issue 13; upstream: llama.cpp issue
20824, "segfault in ggml_backend_amx_mul_mat"). So the build here is ``GGML_NATIVE=OFF``
with each instruction set the CPU reports in ``/proc/cpuinfo`` switched on by name (none it
lacks: the wheel runs on this machine and on any with the same features), AMX always off.
Anywhere without ``/proc/cpuinfo`` flags on x86-64, every extension is off: a baseline that
runs on any x86-64 CPU, slower. Other architectures keep llama.cpp's own default.

pip's wheel cache is keyed by the source archive, not by ``CMAKE_ARGS``: a native build it
cached once is handed back to every later install whatever the flags. So the wheel is built
with ``--no-cache-dir`` into a folder named by the version, the Python and a digest of the
flags (:func:`wheel_dir`), reused from there, and installed over whatever build the
environment had (``--force-reinstall --no-deps``). ``COGUMI_LLAMA_CPP_CMAKE_ARGS`` adds flags
after these (a GPU build, say: ``-DGGML_CUDA=on``); they are part of the digest too.

Standard library only: the noxfile imports it before anything is installed, and nox runs it
as a script in the new environment.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "llama-cpp-python"

#: ggml's CMake option for each x86 instruction set, and the /proc/cpuinfo flags it needs.
#: GGML_AVX512 compiles with -mavx512f -mavx512cd -mavx512vl -mavx512dq -mavx512bw
#: (ggml/src/ggml-cpu/CMakeLists.txt), so it needs all five.
X86_OPTIONS: dict[str, tuple[str, ...]] = {
    "GGML_SSE42": ("sse4_2",),
    "GGML_AVX": ("avx",),
    "GGML_AVX2": ("avx2",),
    "GGML_BMI2": ("bmi2",),
    "GGML_FMA": ("fma",),
    "GGML_F16C": ("f16c",),
    "GGML_AVX_VNNI": ("avx_vnni",),
    "GGML_AVX512": ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"),
    "GGML_AVX512_VBMI": ("avx512vbmi",),
    "GGML_AVX512_VNNI": ("avx512_vnni",),
    "GGML_AVX512_BF16": ("avx512_bf16",),
}
#: Off whatever the CPU has: the AMX kernels are the batched-decoding crash (module docstring).
AMX_OPTIONS = ("GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16")


class LlamaCppBuildError(RuntimeError):
    """The project's llama-cpp-python build cannot be made or installed."""


def cpu_flags(cpuinfo: str | None = None) -> set[str] | None:
    """The instruction-set flags of the first CPU in /proc/cpuinfo; None where there are none."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return None


def cmake_args(flags: set[str] | None, machine: str | None = None) -> list[str]:
    """The CMake options for a CPU with these /proc/cpuinfo flags (x86-64), AMX always off;
    [] (llama.cpp's default) on other architectures."""
    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64"):
        return []
    have = flags or set()
    args = ["-DGGML_NATIVE=OFF"]
    args += [f"-D{option}={'ON' if all(f in have for f in needs) else 'OFF'}"
             for option, needs in X86_OPTIONS.items()]
    args += [f"-D{option}=OFF" for option in AMX_OPTIONS]
    return args + os.environ.get("COGUMI_LLAMA_CPP_CMAKE_ARGS", "").split()


def pinned_version(pyproject: Path = ROOT / "pyproject.toml") -> str:
    """The llama-cpp-python version the project pins (``==``), from pyproject.toml, in
    whichever dependency list names it; from the installed cogumi's metadata elsewhere."""
    if pyproject.exists():
        import tomllib  # here, not at the top: nox's own Python may be older than 3.11

        data = tomllib.loads(pyproject.read_text())["project"]
        requirements = list(data.get("dependencies", []))
        for extra in data.get("optional-dependencies", {}).values():
            requirements += extra
    else:
        from importlib.metadata import requires
        requirements = requires("cogumi") or []
    for req in requirements:
        m = re.fullmatch(r"llama[-_]cpp[-_]python\s*(\[[^\]]*\])?\s*==\s*([^\s;]+)(\s*;.*)?",
                         req.strip())
        if m:
            return m.group(2)
    raise LlamaCppBuildError(f"{pyproject}: no dependency pins {PACKAGE}==VERSION")


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cogumi" / "wheels"


def wheel_dir(version: str, args: list[str], python_tag: str,
              root: Path | None = None) -> Path:
    """One folder per (version, Python, flags): a wheel built with other flags is never reused."""
    digest = hashlib.sha256(" ".join(args).encode()).hexdigest()[:12]
    return (root or cache_root()) / f"{PACKAGE}-{version}-{python_tag}-{digest}"


def _python_tag(python: str) -> str:
    out = subprocess.run([python, "-c", "import sys; print(f'cp{sys.version_info[0]}"
                          "{sys.version_info[1]}')"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def built_wheel(python: str = sys.executable, root: Path | None = None) -> Path:
    """The wheel for this CPU and Python, built first if its folder has none."""
    version, args = pinned_version(), cmake_args(cpu_flags())
    folder = wheel_dir(version, args, _python_tag(python), root)
    wheels = sorted(folder.glob("*.whl"))
    if wheels:
        return wheels[0]
    if folder.exists():  # left by a build that stopped before its wheel was written
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    print(f"building {PACKAGE}=={version} with CMAKE_ARGS={' '.join(args)!r} into {folder} "
          f"(once; about 5 minutes on 2 cores)", flush=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        env = {**os.environ, "CMAKE_ARGS": " ".join(args)}
        # --no-cache-dir: neither take a wheel from pip's cache (it may hold a native build)
        # nor leave this one there; --no-binary: never a prebuilt wheel from an index.
        cmd = [python, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir",
               "--no-binary", PACKAGE, "-w", tmp, f"{PACKAGE}=={version}"]
        if subprocess.run(cmd, env=env).returncode != 0:
            raise LlamaCppBuildError(f"building {PACKAGE}=={version} failed: {' '.join(cmd)} "
                                     f"with CMAKE_ARGS={' '.join(args)!r}")
        staged = Path(tmp)
        (staged / "build.json").write_text(json.dumps(
            {"package": PACKAGE, "version": version, "cmake_args": args,
             "cpu_flags": sorted(cpu_flags() or [])}, indent=2) + "\n")
        # Renamed only when complete: an interrupted build leaves no folder to reuse.
        os.replace(staged, folder)
        folder.chmod(0o755)  # TemporaryDirectory made it private; the cache may be shared
        os.mkdir(staged)  # for TemporaryDirectory's cleanup
    return sorted(folder.glob("*.whl"))[0]


def install(python: str = sys.executable, root: Path | None = None) -> Path:
    """Build (once) and install the project's llama-cpp-python into `python`'s environment,
    replacing any other build of it there; its own dependencies come with the project's."""
    wheel = built_wheel(python, root)
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall",
                    str(wheel)], check=True)
    return wheel


def refuse_amx_build(system_info: str) -> None:
    """Refuse, in one line, a llama.cpp whose system info says its AMX kernels are compiled
    in (``AMX_INT8 = 1``): a native build on an AMX CPU, e.g. one pip's cache handed back."""
    if "AMX_INT8 = 1" in system_info:
        raise LlamaCppBuildError(
            "the installed llama-cpp-python was built with AMX, which crashes in batched "
            "decoding of quantized models; replace it with `python -m cogumi.llama_cpp_build`")


def load_llama_cpp(needed_by: str, install_hint: str = "pip install llama-cpp-python"):
    """The llama_cpp module, after the checks every user of it needs, each refused in one
    line as LlamaCppBuildError: installed at all (naming who needs it and how to install it),
    and not an AMX build (refuse_amx_build). The one place the project imports it in-process."""
    try:
        import llama_cpp
    except ImportError:
        raise LlamaCppBuildError(f"{needed_by} needs llama-cpp-python: {install_hint}") from None
    refuse_amx_build(llama_cpp.llama_print_system_info().decode())
    return llama_cpp


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cogumi.llama_cpp_build",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--print-args", action="store_true",
                        help="print the CMake options for this CPU and exit")
    opts = parser.parse_args(argv)
    if opts.print_args:
        print(" ".join(cmake_args(cpu_flags())))
        return 0
    try:
        print(f"installed {install()}")
    except (LlamaCppBuildError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
