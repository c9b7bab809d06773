"""Data sets by name, with where each is found by default.

The directory is, in order: the `data_dir` argument (--data-dir), the CNNKIT_DATA
environment variable, the data set's default location (Debian's dataset-fashion-mnist
package installs Fashion-MNIST in /usr/share/datasets/fashion-mnist).
"""

import dataclasses
import os

from .cifar import load_cifar10
from .errors import DataNotFoundError
from .imagefolder import load_image_folder
from .mnist import load_fashion_mnist, load_mnist

DATA_ENV = "CNNKIT_DATA"


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    name: str
    loader: object  # loader(directory, train=True) -> ImageDataset or ImageFolder
    default_dir: str
    image_shape: tuple  # (C, H, W); None where the files tell
    num_classes: int  # None where the files tell
    how_to_get: str


DATASETS = {
    info.name: info
    for info in (
        DatasetInfo("fashion-mnist", load_fashion_mnist, "/usr/share/datasets/fashion-mnist",
                    (1, 28, 28), 10, "install it with `apt-get install dataset-fashion-mnist`"),
        DatasetInfo("mnist", load_mnist, "/usr/share/datasets/mnist", (1, 28, 28), 10,
                    "download the four IDX files from http://yann.lecun.com/exdb/mnist/"),
        DatasetInfo("cifar10", load_cifar10,
                    os.path.join("~", ".cache", "cnnkit", "cifar-10-batches-py"), (3, 32, 32), 10,
                    "download and extract https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
        DatasetInfo("imagefolder", load_image_folder, "", None, None,
                    "pass --data-dir DIR holding DIR/train/<class>/<images> and "
                    "DIR/val/<class>/<images>"),
    )
}


def list_datasets():
    return list(DATASETS)


def dataset_info(name):
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(
            f"unknown data set {name!r}; expected one of: {', '.join(DATASETS)}"
        ) from None


def resolve_data_dir(name, data_dir=None):
    """The directory to read data set `name` from (see the module docstring)."""
    directory = data_dir or os.environ.get(DATA_ENV) or dataset_info(name).default_dir
    return os.path.expanduser(os.fspath(directory))


def load_dataset(name, data_dir=None, train=True):
    """The training or test split of a data set by name, as an ImageDataset."""
    info = dataset_info(name)
    try:
        return info.loader(resolve_data_dir(name, data_dir), train=train)
    except DataNotFoundError as error:
        raise DataNotFoundError(f"{error}, or {info.how_to_get}") from None
