"""`cnnkit info` and the command dispatcher."""

import subprocess
import sys

import torch

import cnnkit
from cnnkit import cli


def test_info_names_versions_backends_and_ops(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"cnnkit {cnnkit.__version__}" in out
    assert f"torch {torch.__version__}" in out
    assert f"{cnnkit._ops._C.cpu_capability} SIMD kernels active" in out
    assert "compiled: DEFAULT" in out
    assert ("no CUDA" in out) != cnnkit._ops.has_kernel("local_response_norm", "cuda")
    assert "torch.ops.cnnkit.local_response_norm [cpu" in out


def test_unknown_command_exits_2_with_usage(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_python_dash_m_runs_the_same_command():
    result = subprocess.run([sys.executable, "-m", "cnnkit", "info"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "torch.ops.cnnkit.local_response_norm_backward" in result.stdout
