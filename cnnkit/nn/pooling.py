"""cnnkit.nn.MaxPool2d: a drop-in for torch.nn.MaxPool2d (a subclass: same arguments,
state and results) that pools with cnnkit's index-free kernel where nothing needs the
indices (eval, no_grad, inference; see cnnkit.functional.max_pool2d)."""

from torch import nn

from cnnkit.functional.max_pool import max_pool2d
from cnnkit.nn.tracing import traced_module_call


class MaxPool2d(nn.MaxPool2d):
    def forward(self, input):
        traced = traced_module_call(self, input)
        if traced is not None:
            return traced
        if self.return_indices:
            return super().forward(input)
        return max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                          self.ceil_mode)

    @classmethod
    def from_torch(cls, pool):
        """A cnnkit.nn.MaxPool2d with ``pool``'s settings."""
        return cls(pool.kernel_size, pool.stride, pool.padding, pool.dilation,
                   pool.return_indices, pool.ceil_mode)
