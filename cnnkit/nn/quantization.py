"""torch.ao.quantization.fuse_modules for cnnkit's BatchNorm modules.

torch looks fuser methods up by the exact module types, so cnnkit's norms (subclasses of
nn.BatchNorm2d) need their own entries. Pass them to torch::

    torch.ao.quantization.fuse_modules(model, [["conv1", "bn1"]], fuse_custom_config_dict=
        {"additional_fuser_method_mapping": cnnkit.nn.fuser_method_mapping()})

A BatchNormReLU2d fuses as a BatchNorm: its ReLU joins the fusion only where the group lists
the ReLU module after it (["conv1", "bn1", "relu"]). cnnkit's blocks and models apply the
ReLU themselves once their norm is gone, which keeps a block's last norm right (there the
residual is added before the ReLU).

For inference on CPU or CUDA, cnnkit.optimize_for_inference folds and fuses more (the
residual add too) without quantizing.
"""

from torch import nn

from cnnkit.nn.batchnorm import BatchNorm2d, BatchNormReLU2d, share_state


def _as_torch_batch_norm(bn):
    """An nn.BatchNorm2d holding ``bn``'s parameters and buffers (shared), for torch's fusers,
    which build intrinsic modules around an nn.BatchNorm2d."""
    plain = nn.BatchNorm2d(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    return share_state(bn, plain)


def fuser_method_mapping():
    """``additional_fuser_method_mapping`` entries for torch.ao.quantization.fuse_modules."""
    # Imported here: torch.ao.quantization costs a second to import, and few callers need it.
    from torch.ao.quantization.fuser_method_mappings import fuse_conv_bn, fuse_conv_bn_relu

    def conv_bn(is_qat, conv, bn):
        return fuse_conv_bn(is_qat, conv, _as_torch_batch_norm(bn))

    def conv_bn_relu(is_qat, conv, bn, relu):
        return fuse_conv_bn_relu(is_qat, conv, _as_torch_batch_norm(bn), relu)

    return {
        (nn.Conv2d, BatchNorm2d): conv_bn,
        (nn.Conv2d, BatchNorm2d, nn.ReLU): conv_bn_relu,
        (nn.Conv2d, BatchNormReLU2d): conv_bn,
        (nn.Conv2d, BatchNormReLU2d, nn.ReLU): conv_bn_relu,
    }
