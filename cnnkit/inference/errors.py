"""The one error a frozen inference module raises when asked to change."""

FROZEN = (
    "this module is frozen for inference by cnnkit.optimize_for_inference, which folded its "
    "BatchNorms into its convolutions; {action} needs the original model: change or train "
    "that one and call cnnkit.optimize_for_inference on it again"
)


class FrozenModuleError(RuntimeError):
    """An attempt to train, convert, load into or differentiate a frozen inference module."""
