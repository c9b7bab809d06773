"""cnnkit.nn.LocalResponseNorm: a drop-in for torch.nn.LocalResponseNorm."""

from torch import nn

from cnnkit.functional.lrn import local_response_norm
from cnnkit.nn.tracing import traced_module_call

# The AlexNet paper's constants (Krizhevsky et al. 2012, section 3.3).
PAPER_DEFAULTS = {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 2.0}


class LocalResponseNorm(nn.LocalResponseNorm):
    """Local Response Normalization across channels, with torch.nn.LocalResponseNorm's
    arguments, defaults and results, run by cnnkit's kernels (a subclass of it).

    ``convention`` selects another published definition (see
    cnnkit.functional.local_response_norm for each formula). With ``convention="paper"``
    the defaults become the AlexNet paper's: size=5, alpha=1e-4, beta=0.75, k=2.
    """

    __constants__ = ["size", "alpha", "beta", "k", "convention"]

    def __init__(self, size=None, alpha=None, beta=None, k=None, convention="torch"):
        defaults = PAPER_DEFAULTS if convention == "paper" else {"alpha": 1e-4, "beta": 0.75, "k": 1.0}
        if size is None:
            if "size" not in defaults:
                raise TypeError("LocalResponseNorm.__init__() missing 1 required positional argument: 'size'")
            size = defaults["size"]
        super().__init__(
            size,
            defaults["alpha"] if alpha is None else alpha,
            defaults["beta"] if beta is None else beta,
            defaults["k"] if k is None else k,
        )
        self.convention = convention

    def forward(self, input):
        traced = traced_module_call(self, input)
        if traced is not None:
            return traced
        return local_response_norm(
            input, self.size, self.alpha, self.beta, self.k, convention=self.convention
        )

    def extra_repr(self):
        text = f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"
        return text if self.convention == "torch" else f"{text}, convention={self.convention!r}"
