"""ImageFolder: a data set of image files in torchvision's layout, read lazily.

    DIR/train/<class>/*.jpg|png|...
    DIR/val/<class>/...

Class indices follow the sorted folder names. Scanning lists files only; images are
decoded when a batch needs them (cnnkit.data.folder_loader), so a data set of any size
opens at once. The checks that need no decoding (no class folders, an empty class, train
and val disagreeing on the classes) fail here, before training starts.
"""

import dataclasses
import os

from .errors import DataFormatError, DataNotFoundError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLITS = {True: "train", False: "val"}


@dataclasses.dataclass
class ImageFolder:
    """samples: (path, label) pairs; classes: one folder name per label.

    Images are RGB: a grayscale, palette or CMYK file is converted when decoded."""

    root: str
    samples: tuple
    classes: tuple
    name: str = "imagefolder"

    def __len__(self):
        return len(self.samples)

    @property
    def num_classes(self):
        return len(self.classes)

    @property
    def image_shape(self):
        """(C, H, W): the size comes from the decoding transform, not the files."""
        return (3, None, None)

    def subset(self, count):
        """`count` samples evenly spaced over the data set (all of them when count is
        None): the samples are sorted by class, so the first `count` would hold the first
        classes only."""
        if count is not None and count < 0:
            raise ValueError(f"count: expected None or an int >= 0, got {count}")
        if count is None or count >= len(self):
            return self
        picked = tuple(self.samples[i * len(self) // count] for i in range(count))
        return dataclasses.replace(self, samples=picked)


def is_image_file(name):
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def scan_image_folder(directory, name="imagefolder"):
    """An ImageFolder of `directory`/<class>/<image files> (subfolders included)."""
    if not os.path.isdir(directory):
        raise DataNotFoundError(f"{directory}: no such directory")
    classes = _class_folders(directory)
    if not classes:
        raise DataFormatError(f"{directory}: no class folders (expected "
                              f"{directory}/<class>/<image files>)")
    samples = []
    for label, class_name in enumerate(classes):
        files = sorted(
            os.path.join(folder, file)
            for folder, _, names in os.walk(os.path.join(directory, class_name), followlinks=True)
            for file in names if is_image_file(file))
        if not files:
            raise DataFormatError(f"{os.path.join(directory, class_name)}: class folder holds no "
                                  f"image files ({', '.join(IMAGE_EXTENSIONS)})")
        samples.extend((path, label) for path in files)
    return ImageFolder(directory, tuple(samples), tuple(classes), name)


def load_image_folder(directory, train=True):
    """The train or val split of an image-folder data set rooted at `directory`. The val
    split must have exactly the train split's classes: a class missing from either would
    shift every later label."""
    if not directory or not os.path.isdir(directory):
        raise DataNotFoundError(f"{directory or '(no --data-dir)'}: no image-folder data set "
                                "there")
    splits = {flag: os.path.join(directory, split) for flag, split in SPLITS.items()}
    for path in splits.values():
        if not os.path.isdir(path):
            raise DataNotFoundError(f"{path}: no such directory (an image-folder data set "
                                    "holds train/<class>/... and val/<class>/...)")
    train_classes, val_classes = _class_folders(splits[True]), _class_folders(splits[False])
    if train_classes != val_classes:
        only_train = sorted(set(train_classes) - set(val_classes))
        only_val = sorted(set(val_classes) - set(train_classes))
        raise DataFormatError(
            f"{directory}: train and val hold different classes (only in train: "
            f"{', '.join(only_train) or 'none'}; only in val: {', '.join(only_val) or 'none'})")
    return scan_image_folder(splits[train], f"imagefolder:{SPLITS[train]}")


def _class_folders(directory):
    return tuple(sorted(entry.name for entry in os.scandir(directory)
                        if entry.is_dir() and not entry.name.startswith(".")))
