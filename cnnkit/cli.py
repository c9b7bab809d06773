"""The `cnnkit` command: `cnnkit info | train | evaluate | summary | experiment`, and `cnnkit --version`.

Each subcommand lives with the code it drives and exposes main(argv) -> exit code; this
module only dispatches, importing the subcommand lazily so `cnnkit info` stays fast.
"""

import importlib
import os
import sys

SUBCOMMANDS = {
    "info": ("cnnkit.info", "main", "versions, compiled backends and registered ops"),
    "train": ("cnnkit.train.cli", "train_main", "train a model of the zoo"),
    "evaluate": ("cnnkit.train.cli", "evaluate_main", "top-1/top-5 of a checkpoint"),
    "summary": ("cnnkit.summary", "main", "per-layer table of a model of the zoo"),
    "experiment": ("cnnkit.experiments", "main", "run a paper's experiment (degradation)"),
}


def usage():
    lines = ["usage: cnnkit COMMAND [ARGS]", "       cnnkit --version", "", "commands:"]
    lines += [f"  {name:<10}{help_}" for name, (_, _, help_) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv=None):
    try:
        code = _run(list(sys.argv[1:] if argv is None else argv))
        sys.stdout.flush()  # so a closed pipe shows up here, not at interpreter exit
        return code
    except BrokenPipeError:
        # The reader went away (`cnnkit summary --list | head -3`): stop quietly. As the
        # CPython docs (signal, "Note on SIGPIPE") recommend, point stdout at devnull so
        # the flush at exit does not fail again, and exit with 1.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _run(argv):
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from cnnkit import __version__

        print(f"cnnkit {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"cnnkit: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name, function_name, _ = SUBCOMMANDS[name]
    return getattr(importlib.import_module(module_name), function_name)(rest)


if __name__ == "__main__":
    sys.exit(main())
