"""The project's llama-cpp-python build (cogumi/llama_cpp_build.py): CMake options chosen from
the CPU's /proc/cpuinfo flags, AMX always off, a wheel folder per flag set. No build here:
the flags and the folder names are pure functions (tests/test_gguf_export.py runs the build
that is installed)."""

from __future__ import annotations

import pytest

from cogumi import llama_cpp_build as B

from .conftest import ROOT

# The first CPU's flags line of an Intel Sapphire Rapids (AMX + AVX-512, abridged) and of
# an AMD EPYC of the first generation (AVX2, no AVX-512), as /proc/cpuinfo writes them.
SAPPHIRE_RAPIDS = ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: "
                   "fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c bmi1 avx2 bmi2 avx512f "
                   "avx512dq avx512cd avx512bw avx512vl avx512vbmi avx512_vnni avx512_bf16 "
                   "avx_vnni amx_bf16 amx_tile amx_int8\n\nprocessor\t: 1\nflags\t\t: fpu\n")
EPYC_ZEN1 = ("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse sse2 ssse3 fma sse4_1 "
             "sse4_2 avx f16c bmi1 avx2 bmi2 sse4a sha_ni\n")


def options(args: list[str]) -> dict[str, str]:
    return dict(a.removeprefix("-D").split("=", 1) for a in args)


@pytest.fixture(autouse=True)
def _no_extra_args(monkeypatch):
    monkeypatch.delenv("COGUMI_LLAMA_CPP_CMAKE_ARGS", raising=False)


def test_cpuinfo_flags_are_the_first_cpus():
    flags = B.cpu_flags(SAPPHIRE_RAPIDS)
    assert {"avx512f", "amx_int8", "avx_vnni"} <= flags and "fpu" in flags
    assert B.cpu_flags("processor\t: 0\n") is None


def test_an_amx_cpu_gets_its_avx512_but_never_amx():
    got = options(B.cmake_args(B.cpu_flags(SAPPHIRE_RAPIDS), "x86_64"))
    assert got["GGML_NATIVE"] == "OFF"  # -march=native would switch AMX on
    for option in ("GGML_AVX2", "GGML_FMA", "GGML_F16C", "GGML_BMI2", "GGML_AVX_VNNI",
                   "GGML_AVX512", "GGML_AVX512_VBMI", "GGML_AVX512_VNNI", "GGML_AVX512_BF16"):
        assert got[option] == "ON", option
    assert [got[o] for o in B.AMX_OPTIONS] == ["OFF"] * 3


def test_a_cpu_without_avx512_gets_none():
    got = options(B.cmake_args(B.cpu_flags(EPYC_ZEN1), "x86_64"))
    assert got["GGML_AVX2"] == got["GGML_FMA"] == got["GGML_F16C"] == "ON"
    assert all(got[o] == "OFF" for o in got if o.startswith(("GGML_AVX512", "GGML_AMX")))
    assert got["GGML_AVX_VNNI"] == "OFF"


def test_avx512_needs_all_five_of_its_compiler_flags():
    flags = B.cpu_flags(SAPPHIRE_RAPIDS) - {"avx512bw"}
    assert options(B.cmake_args(flags, "x86_64"))["GGML_AVX512"] == "OFF"


def test_no_cpuinfo_on_x86_is_the_plain_x86_64_baseline():
    got = options(B.cmake_args(None, "x86_64"))
    assert got.pop("GGML_NATIVE") == "OFF"
    assert set(got.values()) == {"OFF"}


def test_other_architectures_keep_llama_cpps_default():
    assert B.cmake_args({"neon"}, "aarch64") == []


def test_extra_cmake_args_come_last_and_change_the_wheel_folder(monkeypatch):
    plain = B.cmake_args(B.cpu_flags(EPYC_ZEN1), "x86_64")
    monkeypatch.setenv("COGUMI_LLAMA_CPP_CMAKE_ARGS", "-DGGML_CUDA=on")
    cuda = B.cmake_args(B.cpu_flags(EPYC_ZEN1), "x86_64")
    assert cuda == [*plain, "-DGGML_CUDA=on"]
    assert B.wheel_dir("0.3.36", plain, "cp311") != B.wheel_dir("0.3.36", cuda, "cp311")


def test_a_wheel_folder_per_version_python_and_flags(tmp_path):
    amx_cpu = B.cmake_args(B.cpu_flags(SAPPHIRE_RAPIDS), "x86_64")
    avx2_cpu = B.cmake_args(B.cpu_flags(EPYC_ZEN1), "x86_64")
    folder = B.wheel_dir("0.3.36", amx_cpu, "cp311", tmp_path)
    assert folder.parent == tmp_path and folder.name.startswith("llama-cpp-python-0.3.36-cp311-")
    assert folder == B.wheel_dir("0.3.36", list(amx_cpu), "cp311", tmp_path)
    others = {B.wheel_dir("0.3.36", avx2_cpu, "cp311", tmp_path),
              B.wheel_dir("0.3.37", amx_cpu, "cp311", tmp_path),
              B.wheel_dir("0.3.36", amx_cpu, "cp312", tmp_path)}
    assert folder not in others and len(others) == 3


def test_the_version_is_the_projects_pin(tmp_path):
    assert B.pinned_version(ROOT / "pyproject.toml") == "0.3.36"
    bad = tmp_path / "pyproject.toml"
    bad.write_text('[project]\nname = "x"\ndependencies = ["llama-cpp-python>=0.3"]\n')
    with pytest.raises(B.LlamaCppBuildError, match=r"pyproject.toml: no dependency pins"):
        B.pinned_version(bad)


def test_an_amx_build_is_refused_in_one_line_naming_the_fix():
    native_on_amx = ("CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 1 | AVX512_VNNI = 1 | AMX_INT8 = 1 | "
                     "LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 |")
    with pytest.raises(B.LlamaCppBuildError, match=r"built with AMX.*cogumi\.llama_cpp_build"):
        B.refuse_amx_build(native_on_amx)
    B.refuse_amx_build(native_on_amx.replace("AMX_INT8 = 1", "AMX_INT8 = 0"))
    B.refuse_amx_build("CPU : SSE3 = 1 | AVX2 = 1 | REPACK = 1 |")  # this machine's build


def test_load_llama_cpp_names_who_needs_it_and_how_to_install(monkeypatch):
    """The one in-process import of llama_cpp: missing, it is refused in one line naming the
    caller and the install command."""
    import sys

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import raises ImportError
    with pytest.raises(B.LlamaCppBuildError, match=r"^a served teacher needs llama-cpp-python: "
                                                   r"pip install 'llama-cpp-python\[server\]'$"):
        B.load_llama_cpp("a served teacher", "pip install 'llama-cpp-python[server]'")
