"""Experiments of the classic papers, run end to end: `cnnkit experiment NAME [options]`.

Each experiment lives in its own module with run(...) for Python and main(argv) for the
command line; this module lists them and dispatches, importing each lazily.
"""

import importlib
import sys

EXPERIMENTS = {
    "degradation": ("cnnkit.experiments.degradation",
                    "plain vs residual networks as depth grows (He et al. 2015, Figure 6)"),
}


def usage():
    lines = ["usage: cnnkit experiment NAME [options]", "", "experiments:"]
    lines += [f"  {name:<14}{help_}" for name, (_, help_) in EXPERIMENTS.items()]
    lines.append("\n`cnnkit experiment NAME --help` lists an experiment's options.")
    return "\n".join(lines)


def main(argv):
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in EXPERIMENTS:
        print(f"cnnkit experiment: unknown experiment {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    return importlib.import_module(EXPERIMENTS[name][0]).main(rest)
