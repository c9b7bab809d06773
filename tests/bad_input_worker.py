"""The process tests/test_bad_input.py runs its cases in: it reads one case (Python source)
per line of JSON on stdin, runs it, and answers with one line of JSON. A case that crashes
or hangs this process fails alone: the test side starts a new worker for the next case.

A case passes when its code runs to the end. It states what it expects with the helpers
below (`raises`, `like_torch`), which compare cnnkit with torch.nn wherever torch has the op.
"""

import json
import math
import sys
import traceback

import torch
import torch.nn.functional as F

import cnnkit


class CaseFailed(AssertionError):
    pass


def raises(fn, types, *words):
    """fn() must raise one of `types` (a type or a tuple), its message naming every word."""
    try:
        fn()
    except types as error:
        missing = [word for word in words if word not in str(error)]
        if missing:
            raise CaseFailed(f"{type(error).__name__} does not name {missing}: {error}") from None
        return error
    except Exception as error:
        raise CaseFailed(f"expected {types}, got {type(error).__name__}: {error}") from None
    raise CaseFailed(f"expected {types}, nothing raised")


def _close(ours, theirs, atol, rtol):
    if isinstance(theirs, (tuple, list)):
        return len(ours) == len(theirs) and all(_close(a, b, atol, rtol) for a, b in zip(ours, theirs))
    if isinstance(theirs, torch.Tensor):
        return (isinstance(ours, torch.Tensor) and ours.shape == theirs.shape and ours.dtype == theirs.dtype
                and torch.allclose(ours.double(), theirs.double(), atol=atol, rtol=rtol, equal_nan=True))
    return ours == theirs or (isinstance(theirs, float) and math.isclose(ours, theirs, rel_tol=rtol, abs_tol=atol))


def like_torch(ours, theirs, atol=1e-5, rtol=1e-4):
    """ours() behaves as theirs() (torch.nn): the same exception type, or close results
    (NaN where torch has NaN, and nowhere else)."""
    try:
        expected = theirs()
    except Exception as error:
        return raises(ours, type(error))
    try:
        got = ours()
    except Exception as error:
        raise CaseFailed(f"torch returns, cnnkit raises {type(error).__name__}: {error}") from None
    if not _close(got, expected, atol, rtol):
        raise CaseFailed(f"results differ from torch's:\n{got}\n{expected}")
    return got


def run(code):
    # Every case sees the same random numbers on every run and machine: a failure reproduces.
    torch.manual_seed(0)
    namespace = {"torch": torch, "F": F, "cnnkit": cnnkit, "math": math, "raises": raises,
                 "like_torch": like_torch}
    try:
        exec(compile(code, "<case>", "exec"), namespace)
    except Exception as error:
        return {"passed": False, "error": f"{type(error).__name__}: {error}",
                "traceback": traceback.format_exc(limit=-3)}
    return {"passed": True}


def main():
    for line in sys.stdin:
        print(json.dumps(run(json.loads(line)["code"])), flush=True)


if __name__ == "__main__":
    main()
