"""Data sets as whole uint8 tensors (batches by indexing) or image folders (decoded by
worker processes), and batched tensor augmentations."""

from .augment import (  # noqa: F401
    center_pad,
    channel_stats,
    compute_color_pca,
    crop_at,
    fit_size,
    normalize,
    pca_color_noise,
    random_crop,
    random_horizontal_flip,
    ten_crop,
    to_float,
)
from .cifar import CIFAR10_CLASSES, is_cifar10_directory, load_cifar10  # noqa: F401
from .dataset import ImageDataset  # noqa: F401
from .decode import RandomResizedCrop, ResizeCenterCrop, decode_image  # noqa: F401
from .errors import DataError, DataFormatError, DataNotFoundError  # noqa: F401
from .folder_loader import FolderLoader  # noqa: F401
from .idx import read_idx, write_idx  # noqa: F401
from .imagefolder import IMAGE_EXTENSIONS, ImageFolder, load_image_folder, scan_image_folder  # noqa: F401,E501
from .loader import BatchLoader  # noqa: F401
from .mnist import (  # noqa: F401
    FASHION_MNIST_CLASSES,
    MNIST_CLASSES,
    load_fashion_mnist,
    load_mnist,
    load_mnist_format,
)
from .registry import (  # noqa: F401
    DATA_ENV,
    DATASETS,
    dataset_info,
    list_datasets,
    load_dataset,
    resolve_data_dir,
)
from .synthetic import (  # noqa: F401
    synthetic_images,
    write_synthetic_cifar10,
    write_synthetic_image_folder,
    write_synthetic_mnist,
)
