"""The `cnnkit` command: `cnnkit info | train | evaluate | summary`.

Each subcommand lives with the code it drives and exposes main(argv) -> exit code; this
module only dispatches, importing the subcommand lazily so `cnnkit info` stays fast.
"""

import importlib
import sys

SUBCOMMANDS = {
    "info": ("cnnkit.info", "main", "versions, compiled backends and registered ops"),
    "train": ("cnnkit.train.cli", "train_main", "train a model of the zoo"),
    "evaluate": ("cnnkit.train.cli", "evaluate_main", "top-1/top-5 of a checkpoint"),
    "summary": ("cnnkit.summary", "main", "per-layer table of a model of the zoo"),
}


def usage():
    lines = ["usage: cnnkit COMMAND [ARGS]", "", "commands:"]
    lines += [f"  {name:<10}{help_}" for name, (_, _, help_) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"cnnkit: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name, function_name, _ = SUBCOMMANDS[name]
    return getattr(importlib.import_module(module_name), function_name)(rest)


if __name__ == "__main__":
    sys.exit(main())
