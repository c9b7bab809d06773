"""Classification metrics: top-k accuracy and error, per-class accuracy, confusion matrix."""

import torch


def topk_correct(logits, target, ks=(1, 5)):
    """Number of rows whose target is among the k highest logits, for each k (k is clamped
    to the number of classes, so top-5 of a 3-class problem is top-3)."""
    if logits.dim() != 2:
        raise ValueError(f"logits: expected (N, classes), got shape {tuple(logits.shape)}")
    if target.shape != logits.shape[:1]:
        raise ValueError(
            f"target: expected shape ({logits.shape[0]},), got {tuple(target.shape)}"
        )
    num_classes = logits.shape[1]
    kmax = min(max(ks), num_classes)
    top = logits.topk(kmax, dim=1).indices  # (N, kmax), best first
    hits = top.eq(target.view(-1, 1))
    return [int(hits[:, :min(k, num_classes)].sum()) for k in ks]


def topk_accuracy(logits, target, k=1):
    """Fraction of rows whose target is among the top k (nan for an empty batch)."""
    if target.numel() == 0:
        return float("nan")
    return topk_correct(logits, target, (k,))[0] / target.numel()


def topk_error(logits, target, k=1):
    return 1.0 - topk_accuracy(logits, target, k)


def confusion_matrix(predicted, target, num_classes):
    """(num_classes, num_classes) int64 counts; row = true class, column = predicted."""
    if predicted.shape != target.shape:
        raise ValueError(
            f"predicted: shape {tuple(predicted.shape)} differs from target's "
            f"{tuple(target.shape)}"
        )
    flat = target.reshape(-1).long() * num_classes + predicted.reshape(-1).long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def per_class_accuracy(confusion):
    """Recall of each class from a confusion matrix (nan for a class with no examples)."""
    confusion = confusion.double()
    return confusion.diagonal() / confusion.sum(dim=1)


class ClassificationMeter:
    """Accumulates loss, top-1/top-5 hits and the confusion matrix over batches.

    The totals live in one tensor (`state`), so a distributed run sums them across
    processes with a single all_reduce and gets the exact counts of the whole data set.
    """

    def __init__(self, num_classes, topk=5):
        self.num_classes = num_classes
        self.topk = topk
        self.reset()

    def reset(self):
        # [loss sum, count, top-1 hits, top-k hits, confusion matrix...]
        self.state = torch.zeros(4 + self.num_classes ** 2, dtype=torch.float64)

    @torch.no_grad()
    def update(self, logits, target, loss_sum=None):
        """loss_sum: the summed (not mean) loss of the batch, when the loss is tracked."""
        logits, target = logits.detach().float().cpu(), target.detach().cpu()
        top1, topk = topk_correct(logits, target, (1, self.topk))
        confusion = confusion_matrix(logits.argmax(dim=1), target, self.num_classes)
        self.state[0] += float(loss_sum) if loss_sum is not None else 0.0
        self.state[1] += target.numel()
        self.state[2] += top1
        self.state[3] += topk
        self.state[4:] += confusion.view(-1).double()

    @property
    def count(self):
        return int(self.state[1])

    @property
    def confusion(self):
        return self.state[4:].view(self.num_classes, self.num_classes).long()

    def compute(self):
        count = max(self.count, 1)
        top1 = float(self.state[2]) / count
        topk = float(self.state[3]) / count
        return {
            "loss": float(self.state[0]) / count,
            "top1_acc": top1,
            "top1_err": 1.0 - top1,
            f"top{self.topk}_acc": topk,
            f"top{self.topk}_err": 1.0 - topk,
            "count": self.count,
        }
