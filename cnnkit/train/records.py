"""Per-epoch metrics as JSONL and CSV, a text log, and the PNG plot of a run."""

import csv
import json
import os

FIELDS = ("epoch", "lr", "train_loss", "train_top1_acc", "test_loss", "test_top1_acc",
          "test_top1_err", "test_top5_err", "epoch_s", "train_images_per_s", "elapsed_s")


class RunRecords:
    """Writes metrics.jsonl, metrics.csv and log.txt in a run's output directory.

    The files are rewritten from the full history at each epoch, so a resumed run's
    files hold exactly its epochs (none repeated from before an interruption)."""

    def __init__(self, directory):
        self.directory = directory
        os.makedirs(directory, exist_ok=True)

    def path(self, name):
        return os.path.join(self.directory, name)

    def write_history(self, history):
        with open(self.path("metrics.jsonl"), "w") as file:
            for record in history:
                file.write(json.dumps(record) + "\n")
        with open(self.path("metrics.csv"), "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(history)

    def log(self, line):
        with open(self.path("log.txt"), "a") as file:
            file.write(line + "\n")

    def plot(self, history, title):
        return plot_history(history, self.path("training.png"), title)


def plot_history(history, path, title=""):
    """Loss, top-1 accuracy and learning rate per epoch, in three panels, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed; must precede pyplot's import
    import matplotlib.pyplot as plt

    epochs = [record["epoch"] for record in history]
    figure, (loss_axis, accuracy_axis, lr_axis) = plt.subplots(1, 3, figsize=(13, 3.8))
    loss_axis.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    loss_axis.plot(epochs, [r["test_loss"] for r in history], "s-", label="test")
    loss_axis.set(title="cross-entropy loss", xlabel="epoch")
    accuracy_axis.plot(epochs, [100 * r["train_top1_acc"] for r in history], "o-", label="train")
    accuracy_axis.plot(epochs, [100 * r["test_top1_acc"] for r in history], "s-", label="test")
    accuracy_axis.set(title="top-1 accuracy (%)", xlabel="epoch")
    # Markers: a step line through one point (a 1-epoch run) draws nothing.
    lr_axis.step(epochs, [r["lr"] for r in history], "o-", where="post")
    lr_axis.set(title="learning rate", xlabel="epoch", yscale="log")
    for axis in (loss_axis, accuracy_axis):
        axis.legend()
    for axis in (loss_axis, accuracy_axis, lr_axis):
        axis.grid(alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
