"""The degradation experiment's report: per-epoch errors (CSV, JSONL), a figure in the
style of the ResNet paper's Figure 6, the table of final errors and results.md.

Training error is the loop's running error over each epoch's batches, in training mode on
augmented images, as in the paper's thin curves; test error is measured on the test
split after each epoch.
"""

import csv
import json
import os

import cnnkit
from cnnkit.info import git_revision, machine
from cnnkit.train.config import TrainConfig

ERROR_FIELDS = ("model", "family", "depth", "epoch", "lr", "train_error", "test_error",
                "train_loss", "test_loss", "epoch_s")
FAMILY_TITLES = {"plain": "plain networks", "resnet": "ResNets"}
PAPER = "He et al., Deep residual learning for image recognition, 2015 (section 4.2, Figure 6)"


def train_error(record):
    return 1.0 - record["train_top1_acc"]


def error_rows(runs):
    """One dict per model and epoch, in ERROR_FIELDS."""
    return [
        {"model": run.name, "family": run.family, "depth": run.depth, "epoch": record["epoch"],
         "lr": record["lr"], "train_error": round(train_error(record), 6),
         "test_error": round(record["test_top1_err"], 6), "train_loss": record["train_loss"],
         "test_loss": record["test_loss"], "epoch_s": record["epoch_s"]}
        for run in runs for record in run.history
    ]


def _by_family(runs):
    return {family: sorted((r for r in runs if r.family == family), key=lambda r: r.depth)
            for family in FAMILY_TITLES}


def verdicts(runs):
    """(one line per family, True if both behave as in the paper): the deepest plain
    network's final training error above the shallowest's, the deepest ResNet's at or
    below its shallowest's."""
    lines, reproduced = [], True
    for family, members in _by_family(runs).items():
        shallow, deep = members[0], members[-1]
        shallow_error, deep_error = train_error(shallow.history[-1]), train_error(deep.history[-1])
        if family == "plain":
            holds = deep_error > shallow_error
            outcome = "deeper is worse: degradation reproduced" if holds else \
                "deeper is not worse: degradation not reproduced"
        else:
            holds = deep_error <= shallow_error
            outcome = "deeper is no worse, as in the paper" if holds else \
                "deeper is worse, unlike the paper"
        reproduced = reproduced and holds
        lines.append(f"{family}: {deep.name} ends with training error {100 * deep_error:.2f}%, "
                     f"{shallow.name} with {100 * shallow_error:.2f}%: {outcome}")
    return lines, reproduced


def markdown_table(runs):
    lines = ["| model | layers | parameters | final train error | final test error | best test error "
             "| training time |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for run in runs:
        last = run.history[-1]
        best = min(record["test_top1_err"] for record in run.history)
        seconds = sum(record["epoch_s"] for record in run.history)
        lines.append(f"| {run.name} | {run.depth} | {run.params:,} | {100 * train_error(last):.2f}% "
                     f"| {100 * last['test_top1_err']:.2f}% | {100 * best:.2f}% | {seconds / 60:.1f} min |")
    return "\n".join(lines)


def recipe(config):
    """The training settings all models shared, in words."""
    config = TrainConfig.from_dict(config)
    limits = ", ".join(f"the first {value:,} {split} images" if value else f"all {split} images"
                       for split, value in (("training", config.limit_train), ("test", config.limit_test)))
    schedule = f"{config.schedule} schedule"
    if config.schedule == "step":
        schedule = f"divided by 10 after epochs {', '.join(map(str, config.step_milestones(32)))}"
    return (f"{config.dataset}, {limits}; {config.epochs} epochs of batch {config.batch_size}; "
            f"{config.optimizer} with momentum {config.momentum}, weight decay {config.weight_decay}, "
            f"learning rate {config.lr} {schedule}; augmentation {config.augment}; seed {config.seed}")


def write(output, runs, verdict_lines, command):
    """errors.csv, errors.jsonl, degradation.png and results.md in `output`; their paths."""
    files = {"errors_csv": os.path.join(output, "errors.csv"),
             "errors_jsonl": os.path.join(output, "errors.jsonl"),
             "figure": os.path.join(output, "degradation.png"),
             "results": os.path.join(output, "results.md")}
    rows = error_rows(runs)
    with open(files["errors_csv"], "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=ERROR_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    with open(files["errors_jsonl"], "w") as file:
        file.writelines(json.dumps(row) + "\n" for row in rows)
    dataset = runs[0].config["dataset"]
    plot(runs, files["figure"], f"Degradation on {dataset}: dashed train error, solid test error")
    with open(files["results"], "w") as file:
        file.write(results_markdown(runs, verdict_lines, command))
    return files


def results_markdown(runs, verdict_lines, command):
    return "\n".join([
        f"# Degradation: plain and residual networks on {runs[0].config['dataset']}",
        "",
        f"Reproduces the comparison of {PAPER} on a small budget.",
        "",
        f"- Command: `{command}`",
        f"- Machine: {machine()}; cnnkit {cnnkit.__version__}, revision {git_revision()}",
        f"- Recipe, the same for every model: {recipe(runs[0].config)}",
        "- Training error: the running error over each epoch's batches (training mode, "
        "augmented images), as in the paper's thin curves; test error: the test split after "
        "each epoch.",
        "",
        markdown_table(runs),
        "",
        *[f"- {line}" for line in verdict_lines],
        "",
        "![training (dashed) and test (solid) error per epoch](degradation.png)",
        "",
    ])


def plot(runs, path, title):
    """Plain networks on the left, ResNets on the right; dashed training error, solid test
    error, one colour per depth in both panels (the layout of the paper's Figure 6)."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed; must precede pyplot's import
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    families = _by_family(runs)
    depths = sorted({run.depth for run in runs})
    colours = {depth: plt.get_cmap("tab10")(index) for index, depth in enumerate(depths)}
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    for axis, (family, members) in zip(axes, families.items()):
        for run in members:
            epochs = [record["epoch"] for record in run.history]
            colour = colours[run.depth]
            axis.plot(epochs, [100 * train_error(r) for r in run.history], "--", color=colour,
                      linewidth=1, label=f"{run.name} train")
            axis.plot(epochs, [100 * r["test_top1_err"] for r in run.history], "-", color=colour,
                      linewidth=2, marker="o", markersize=3, label=f"{run.name} test")
        axis.set(title=FAMILY_TITLES[family], xlabel="epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        axis.legend()
    axes[0].set_ylabel("top-1 error (%)")
    axes[0].set_ylim(bottom=0)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
