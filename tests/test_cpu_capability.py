"""Runtime CPU dispatch: one build holds the CPU kernels for every SIMD capability of
csrc/cpu/capabilities.txt and runs the one torch's own kernels use."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cpu_capability import environment

import cnnkit

LEVELS = ["DEFAULT", "AVX2", "AVX512"]
NATIVE = torch.backends.cpu.get_cpu_capability()
# The capabilities this CPU can run, which a test can force with ATEN_CPU_CAPABILITY.
RUNNABLE = LEVELS[: LEVELS.index(NATIVE) + 1] if NATIVE in LEVELS else ["DEFAULT"]
COMPILED = cnnkit._ops._C.cpu_capabilities.split(",")
# The kernel parity tests: every op and module against cnnkit.reference and torch.nn.
PARITY_TESTS = [
    "test_lrn.py", "test_batch_norm.py", "test_conv_bn.py", "test_blocks.py", "test_max_pool.py",
]


def _python(code, capability):
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=environment(capability), timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_the_build_holds_every_capability_from_default_up():
    assert COMPILED[0] == "DEFAULT" and COMPILED == sorted(COMPILED, key=LEVELS.index)
    assert cnnkit._ops._C.cpu_capability in COMPILED


@pytest.mark.parametrize("capability", RUNNABLE)
def test_active_capability_is_the_highest_compiled_one_torch_allows(capability):
    chosen = _python("import torch, cnnkit; print(torch.backends.cpu.get_cpu_capability(), "
                     "cnnkit._ops._C.cpu_capability)", capability).split()
    allowed = [c for c in COMPILED if LEVELS.index(c) <= LEVELS.index(chosen[0])]
    assert chosen == [capability, allowed[-1]]


@pytest.mark.parametrize("capability", [c for c in RUNNABLE if c != NATIVE])
def test_kernel_parity_tests_pass_at(capability):
    """The parity tests again, in a process forced down to `capability`: the DEFAULT and
    AVX2 kernels are tested even on an AVX-512 machine."""
    tests = [str(Path(__file__).parent / name) for name in PARITY_TESTS]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *tests],
        capture_output=True, text=True, env=environment(capability), timeout=900)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert f"cnnkit CPU kernels: {capability}" in result.stdout


def _symbols(path, kinds):
    """Mangled names of the symbols of nm type in `kinds` in an object or library."""
    listing = subprocess.run(["nm", path], capture_output=True, text=True, check=True).stdout
    return {line.split()[-1] for line in listing.splitlines() if line.split()[-2] in kinds}


def _functions_with_vector_code(library):
    """{mangled name: first VEX/EVEX instruction} for the functions of `library` that have
    one (their mnemonics start with v; the portable build has none)."""
    listing = subprocess.run(["objdump", "-d", "--no-show-raw-insn", library],
                             capture_output=True, text=True, check=True).stdout
    found, name = {}, None
    for line in listing.splitlines():
        if line.endswith(">:"):
            name = line.split("<", 1)[1][:-2]
        elif name not in found:
            match = re.search(r"\t(v[a-z0-9]+\s.*)$", line)
            if match:
                found[name] = match.group(1)
    return found


def _build_objects():
    """{capability: its object files} of the build that made cnnkit._C (setup.py's build
    directory: the portable objects, and one subdirectory per extra capability)."""
    library = Path(cnnkit._ops._C.__file__)
    builds = sorted((path for path in library.parent.parent.glob("build/temp.*/csrc/module.o")
                     if not path.parent.parent.name.endswith("-sanitize")),  # scripts/sanitize.sh's
                    key=lambda path: path.stat().st_mtime)
    if not builds or builds[-1].stat().st_mtime > library.stat().st_mtime:
        pytest.skip("the objects cnnkit._C was linked from are not beside it (not an in-tree build)")
    root = builds[-1].parent.parent
    objects = {"DEFAULT": list((root / "csrc").rglob("*.o"))}
    for capability in COMPILED[1:]:
        objects[capability] = list((root / capability).rglob("*.o"))
    return objects


def _is_registrar(mangled):
    """cnnkit::cpu::register_<family>_kernels<capability> (csrc/cpu/capability.h)."""
    return re.match(r"_ZN6cnnkit3cpu\d+register_\w+_kernels", mangled) is not None


@pytest.mark.skipif(shutil.which("objdump") is None or shutil.which("nm") is None,
                    reason="needs binutils (nm, objdump)")
def test_portable_code_never_calls_a_capability_build():
    """The kernel builds share inline functions from headers (torch's, the standard
    library's) with the portable code. Where the linker kept an AVX-512 build's copy of one,
    portable code would call it and die with an illegal instruction on an AVX2 CPU: setup.py
    links the portable objects first, whose copies the linker then keeps. Checked on the
    objects: what the portable code calls is defined by it, or is a registrar (called only
    for the active capability); and where both define it, the library holds the copy without
    vector code, the portable one."""
    objects = _build_objects()
    portable_defines = set().union(*(_symbols(o, "TWV") for o in objects["DEFAULT"]))
    portable_uses = set().union(*(_symbols(o, "UwWvV") for o in objects["DEFAULT"]))
    vector_code = _functions_with_vector_code(cnnkit._ops._C.__file__)
    wrong = []
    for capability in COMPILED[1:]:
        defines = set().union(*(_symbols(o, "TWV") for o in objects[capability]))
        for name in sorted(portable_uses & defines):
            if name not in portable_defines and not _is_registrar(name):
                wrong.append(f"portable code calls {name}, defined by the {capability} build only")
            elif name in portable_defines and name in vector_code:
                wrong.append(f"the {capability} build's copy of {name} was kept: {vector_code[name]}")
    assert not wrong, "\n".join(wrong)
