from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddet.data import SKIMAGE_TRAIN_PHOTOS, SKIMAGE_VALIDATION_PHOTOS, folder_photos, skimage_photos


@pytest.fixture(scope="module")
def training_photos(load_tool):
    return load_tool("training_photos")


@pytest.fixture
def fake_opencv_doc(training_photos, tmp_path):
    root = tmp_path / "examples"
    rng = np.random.default_rng(0)
    for relative in training_photos.OPENCV_DOC_PHOTOS:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(path)
    return root


def test_training_photos_gathers_both_sources_unchanged(training_photos, fake_opencv_doc, tmp_path):
    out = tmp_path / "photos"
    written = training_photos.gather(out, fake_opencv_doc)
    assert len(written) == len(SKIMAGE_TRAIN_PHOTOS) + len(training_photos.OPENCV_DOC_PHOTOS)
    photos = folder_photos(out)
    for name, photo in skimage_photos(SKIMAGE_TRAIN_PHOTOS).items():
        np.testing.assert_array_equal(photos[f"skimage_{name}"], photo)
    for relative, name in training_photos.OPENCV_DOC_PHOTOS.items():
        assert (out / f"opencv_{name}{Path(relative).suffix}").read_bytes() == (fake_opencv_doc / relative).read_bytes()
    assert not set(SKIMAGE_VALIDATION_PHOTOS) & {name.split("_", 1)[1] for name in photos}


def test_training_photos_refusals_name_the_problem(training_photos, fake_opencv_doc, tmp_path):
    with pytest.raises(FileNotFoundError, match="opencv-doc photos not found under .*missing"):
        training_photos.gather(tmp_path / "out", tmp_path / "missing")
    out = tmp_path / "photos"
    out.mkdir()
    (out / "mine.png").write_bytes(b"")
    with pytest.raises(FileExistsError, match="not empty; pass --force"):
        training_photos.gather(out, fake_opencv_doc)
    assert len(training_photos.gather(out, fake_opencv_doc, force=True)) > len(SKIMAGE_TRAIN_PHOTOS)
