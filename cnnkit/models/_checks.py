"""Input checks shared by the models: fail early with the input the network expects,
instead of a shape error from a layer deep inside."""

from cnnkit.nn.tracing import traced_function_call


def check_image_batch(input, model_name, in_channels, min_size=1, exact_sizes=None):
    """Raise ValueError unless `input` is an (N, in_channels, H, W) batch the model can take.

    min_size: the smallest H and W the network's strides and pools can reduce to >= 1 pixel.
    exact_sizes: for networks whose classifier fixes the input, the accepted (H, W) pairs.
    While torch.fx traces the model, the check is recorded in the graph instead.
    """
    if traced_function_call(check_image_batch, input, model_name, in_channels, min_size,
                            exact_sizes) is not None:
        return
    if input.dim() != 4:
        raise ValueError(
            f"{model_name}: expected input of shape (N, {in_channels}, H, W), "
            f"got a {input.dim()}-D tensor of shape {tuple(input.shape)}"
        )
    channels, height, width = input.shape[1], input.shape[2], input.shape[3]
    if channels != in_channels:
        raise ValueError(
            f"{model_name}: expected input with {in_channels} channels, shape "
            f"(N, {in_channels}, H, W), got {channels} channels (shape {tuple(input.shape)})"
        )
    if exact_sizes is not None:
        if (height, width) not in exact_sizes:
            sizes = " or ".join(f"{h}x{w}" for h, w in exact_sizes)
            raise ValueError(
                f"{model_name}: expected input of spatial size {sizes}, "
                f"got {height}x{width} (shape {tuple(input.shape)})"
            )
    elif height < min_size or width < min_size:
        raise ValueError(
            f"{model_name}: expected input of spatial size at least {min_size}x{min_size}, "
            f"got {height}x{width} (shape {tuple(input.shape)})"
        )
