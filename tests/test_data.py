import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from ddet.data import (
    SKIMAGE_TRAIN_PHOTOS,
    SKIMAGE_VALIDATION_PHOTOS,
    DataSpec,
    DecodedCache,
    Degradation,
    SyntheticPairs,
    TrainingPatches,
    WholeImages,
    degrade,
    make_sources,
    paired_folder,
    read_image,
    realsr,
    sources,
    to_channels,
    training_loader,
    write_image,
)
from ddet.data.degrade import _misalign


def _save_rgb(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _random_uint8(rng, height, width):
    return rng.integers(0, 256, (height, width, 3)).astype(np.uint8)


@pytest.fixture
def photos():
    rng = np.random.default_rng(0)
    return {f"p{i}": rng.random((40 + 4 * i, 36, 3)).astype(np.float32) for i in range(3)}


def test_read_8_and_16_bit_png_and_jpeg(tmp_path):
    rng = np.random.default_rng(1)
    grey16 = rng.integers(0, 65536, (5, 6)).astype(np.uint16)
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    image = read_image(tmp_path / "g16.png")
    assert image.shape == (5, 6, 3) and image.dtype == np.float32
    assert np.allclose(image[..., 1], grey16 / 65535.0)
    rgb8 = _random_uint8(rng, 5, 6)
    _save_rgb(tmp_path / "c8.png", rgb8)
    assert np.array_equal(np.round(read_image(tmp_path / "c8.png") * 255).astype(np.uint8), rgb8)
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(tmp_path / "c.jpg", quality=95)
    assert np.allclose(read_image(tmp_path / "c.jpg"), 128 / 255, atol=2 / 255)


def test_exif_orientation_is_applied(tmp_path):
    image = Image.fromarray(np.zeros((4, 10, 3), np.uint8))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    image.save(tmp_path / "rotated.jpg", exif=exif)
    assert read_image(tmp_path / "rotated.jpg").shape == (10, 4, 3)


def test_unreadable_and_missing_images_name_the_file(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png"):
        read_image(tmp_path / "broken.png")
    with pytest.raises(FileNotFoundError, match="absent.png"):
        read_image(tmp_path / "absent.png")


def test_written_files_get_the_usual_permissions(tmp_path):
    previous = os.umask(0o022)
    try:
        write_image(tmp_path / "public.png", np.zeros((2, 2, 3)))
    finally:
        os.umask(previous)
    assert (tmp_path / "public.png").stat().st_mode & 0o777 == 0o644


def test_write_image_refuses_to_overwrite(tmp_path):
    target = tmp_path / "out.png"
    write_image(target, np.zeros((3, 3, 3)))
    with pytest.raises(FileExistsError, match="out.png"):
        write_image(target, np.ones((3, 3, 3)))
    write_image(target, np.ones((3, 3, 3)), force=True)
    assert read_image(target).min() == 1.0
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]  # no temporary left behind


@pytest.mark.parametrize("version", [2, 3])
def test_realsr_layout(tmp_path, version):
    rng = np.random.default_rng(2)
    for camera in ("Canon", "Nikon"):
        folder = tmp_path / camera / "Train" / "3"
        for number in (1, 2):
            _save_rgb(folder / f"{camera}_{number:03d}_HR.png", _random_uint8(rng, 24, 30))
            lr_size = (24, 30) if version == 2 else (8, 10)
            _save_rgb(folder / f"{camera}_{number:03d}_LR3.png", _random_uint8(rng, *lr_size))
    source = realsr(tmp_path, scale=3, split="Train", cameras=("Nikon",), version=version)
    assert source.names == ["Nikon_001_HR", "Nikon_002_HR"]
    lr, hr = source.pair(1)
    assert lr.shape == hr.shape == (24, 30, 3)
    assert len(realsr(tmp_path, 3, "Train", version=version)) == 4
    (tmp_path / "Canon" / "Train" / "3" / "Canon_002_LR3.png").unlink()
    with pytest.raises(FileNotFoundError, match="Canon_002_LR3.png"):
        realsr(tmp_path, 3, "Train", version=version)
    with pytest.raises(FileNotFoundError, match="Test"):
        realsr(tmp_path, 3, "Test", version=version)


def test_paired_folder_matches_by_name(tmp_path):
    rng = np.random.default_rng(3)
    _save_rgb(tmp_path / "hr" / "a.png", _random_uint8(rng, 16, 16))
    _save_rgb(tmp_path / "hr" / "b.png", _random_uint8(rng, 16, 16))
    _save_rgb(tmp_path / "lr" / "a.jpg", _random_uint8(rng, 8, 8))
    _save_rgb(tmp_path / "lr" / "b.png", _random_uint8(rng, 16, 16))
    source = paired_folder(tmp_path)
    assert source.names == ["a", "b"]
    assert source.pair(0)[0].shape == (16, 16, 3)
    (tmp_path / "lr" / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match="b.png"):
        paired_folder(tmp_path)


def test_degradation_is_seeded_and_changes_the_image(photos):
    hr = photos["p0"]
    first = degrade(hr, 2, np.random.default_rng(5))
    assert first.shape == hr.shape and first.dtype == np.float32
    assert np.array_equal(first, degrade(hr, 2, np.random.default_rng(5)))
    assert not np.array_equal(first, degrade(hr, 2, np.random.default_rng(6)))
    assert 0.0 <= first.min() and first.max() <= 1.0
    assert np.abs(first - hr).mean() > 0.01
    with pytest.raises(ValueError, match="multiple of the scale 3"):
        degrade(hr[:40, :35], 3, np.random.default_rng(0))


def test_misalignment_is_subpixel_shift():
    ramp = np.tile(np.linspace(0, 1, 64, dtype=np.float32)[None, :, None], (32, 1, 3))
    spec = Degradation(max_shift_px=0.5, max_rotation_deg=0.0)
    warped = _misalign(ramp, np.random.default_rng(7), spec)
    step = ramp[0, 1, 0] - ramp[0, 0, 0]
    shift = (warped - ramp)[8:-8, 8:-8, 0] / step  # a horizontal ramp reveals the x shift
    assert np.allclose(shift, shift.mean(), atol=1e-3) and 0 < abs(shift.mean()) <= 0.5
    identity = Degradation(max_shift_px=0.0, max_rotation_deg=0.0)
    assert np.allclose(_misalign(ramp, np.random.default_rng(7), identity), ramp, atol=1e-6)


def test_skimage_split_is_disjoint_and_loads():
    assert not set(SKIMAGE_TRAIN_PHOTOS) & set(SKIMAGE_VALIDATION_PHOTOS)
    train, validation = make_sources("synthetic", scale=4)
    assert train.names == list(SKIMAGE_TRAIN_PHOTOS) and validation.names == list(SKIMAGE_VALIDATION_PHOTOS)
    lr, hr = validation.pair(0)
    assert np.array_equal(lr, validation.pair(0)[0])  # validation pairs are fixed
    assert hr.shape[0] % 4 == 0 and hr.shape[1] % 4 == 0 and lr.shape == hr.shape


def _realsr_tree(root, rng, splits=("Train", "Test")):
    for split in splits:
        for camera, count in (("Canon", 1), ("Nikon", 2)):
            for number in range(count):
                _save_rgb(root / camera / split / "2" / f"{camera}_{split}{number}_HR.png", _random_uint8(rng, 8, 8))
                _save_rgb(root / camera / split / "2" / f"{camera}_{split}{number}_LR2.png", _random_uint8(rng, 8, 8))


def test_a_run_trains_and_validates_on_the_pairs_its_data_spec_gives(tmp_path):
    rng = np.random.default_rng(8)
    for split in ("train", "val"):
        for index in range(2):
            _save_rgb(tmp_path / "photos" / split / f"{split}{index}.png", _random_uint8(rng, 12, 10))
    train, validation = make_sources("synthetic", 2, tmp_path / "photos" / "train", tmp_path / "photos" / "val")
    assert train.names == DataSpec("synthetic", 2).training(tmp_path / "photos" / "train").names == ["train0", "train1"]
    alone = DataSpec("synthetic", 2).validation(tmp_path / "photos" / "val")
    assert validation.names == alone.names == ["val0", "val1"]
    assert all(np.array_equal(a, b) for a, b in zip(validation.pair(1), alone.pair(1), strict=True))
    _realsr_tree(tmp_path / "realsr", rng)
    train, validation = make_sources("realsr", 2, tmp_path / "realsr", cameras=("Nikon",))
    assert train.names == ["Nikon_Train0_HR", "Nikon_Train1_HR"]
    assert validation.names == ["Nikon_Test0_HR", "Nikon_Test1_HR"]
    assert DataSpec("realsr", 2).validation(tmp_path / "realsr", split="Train").names == [
        "Canon_Train0_HR",
        "Nikon_Train0_HR",
        "Nikon_Train1_HR",
    ]
    _save_rgb(tmp_path / "pairs" / "hr" / "a.png", _random_uint8(rng, 8, 8))
    _save_rgb(tmp_path / "pairs" / "lr" / "a.png", _random_uint8(rng, 8, 8))
    assert make_sources("folder", 2, tmp_path / "pairs")[1] is None
    assert make_sources("folder", 2, tmp_path / "pairs", tmp_path / "pairs")[1].names == ["a"]


def test_validation_data_is_built_without_the_training_data(tmp_path, monkeypatch):
    _realsr_tree(tmp_path, np.random.default_rng(9), splits=("Test",))  # no Train split at all
    assert len(DataSpec("realsr", 2).validation(tmp_path)) == 3
    asked = []
    monkeypatch.setattr("ddet.data.skimage_photos", lambda names: asked.append(names) or {"one": np.ones((4, 4, 3))})
    assert DataSpec("synthetic", 2).validation().names == ["one"]
    assert asked == [SKIMAGE_VALIDATION_PHOTOS]


@pytest.mark.parametrize("kind, message", [("realsr", "the RealSR folder"), ("folder", "hr/ and lr/")])
def test_data_without_its_folder_is_refused_by_name(kind, message):
    for make in (DataSpec(kind, 2).training, DataSpec(kind, 2).validation, lambda: make_sources(kind, 2)):
        with pytest.raises(ValueError, match=message):
            make()


def test_an_unknown_data_kind_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown data kind 'jpeg'"):
        DataSpec("jpeg", 2)


def test_training_patches_are_a_function_of_seed_and_sample(photos):
    source = SyntheticPairs(photos, scale=2)
    dataset = TrainingPatches(source, patch=16, channels="y", seed=3, num_samples=9)
    lr, hr = dataset[4]
    assert lr.shape == hr.shape == (1, 16, 16)
    assert torch.equal(lr, dataset[4][0]) and torch.equal(hr, dataset[4][1])
    assert 16 / 255 - 1e-6 <= hr.min() and hr.max() <= 235 / 255 + 1e-6
    shifted = TrainingPatches(source, patch=16, channels="y", seed=3, num_samples=5, first_sample=4)
    assert torch.equal(shifted[0][1], hr)
    # each image once per epoch
    assert sorted(dataset.image_index(k) for k in range(3, 6)) == [0, 1, 2]
    rgb = TrainingPatches(source, patch=16, channels="rgb", seed=3, num_samples=9)
    assert rgb[0][0].shape == (3, 16, 16)


def test_patch_larger_than_an_image_names_it(photos):
    with pytest.raises(ValueError, match="p0"):
        TrainingPatches(SyntheticPairs(photos, scale=2), patch=38)
    with pytest.raises(ValueError, match="channels"):
        TrainingPatches(SyntheticPairs(photos, scale=2), patch=8, channels="lab")


def test_distributed_batches_partition_the_single_process_batch(photos):
    dataset = TrainingPatches(SyntheticPairs(photos, scale=2), patch=8, seed=1, num_samples=8)
    single = [hr for _, hr in training_loader(dataset, global_batch=4)]
    ranks = [[hr for _, hr in training_loader(dataset, 4, rank=r, world_size=2)] for r in range(2)]
    for step, batch in enumerate(single):
        merged = torch.stack([ranks[k % 2][step][k // 2] for k in range(4)])
        assert torch.equal(merged, batch)
    with pytest.raises(ValueError, match="divisible"):
        training_loader(dataset, global_batch=3, world_size=2)


def test_decoded_cache_gives_the_same_patches_and_decodes_each_file_once(tmp_path, monkeypatch):
    rng = np.random.default_rng(4)
    root = tmp_path / "pairs"
    _save_rgb(root / "hr" / "same.png", _random_uint8(rng, 24, 32))
    _save_rgb(root / "lr" / "same.png", _random_uint8(rng, 24, 32))
    _save_rgb(root / "hr" / "small.png", _random_uint8(rng, 24, 32))
    _save_rgb(root / "lr" / "small.png", _random_uint8(rng, 12, 16))
    _png16(root / "hr" / "deep.png", rng.integers(0, 65536, (24, 32, 3)).astype(np.uint16))
    _png16(root / "lr" / "deep.png", rng.integers(0, 65536, (24, 32, 3)).astype(np.uint16))
    plain, cached = paired_folder(root), paired_folder(root, DecodedCache(tmp_path / "cache"))
    region = (3, 5, 16, 20)
    for index, name in enumerate(plain.names):
        for expected, got in zip(plain.pair(index, region=region), cached.pair(index, region=region), strict=True):
            assert got.dtype == np.float32 and got.shape == (16, 20, 3)
            if name == "small":  # the resized LR is stored at 16 bits
                np.testing.assert_allclose(got, expected, rtol=0, atol=0.5 / 65535 + 1e-7)
            else:
                np.testing.assert_array_equal(got, expected)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 6

    def no_decoding(path):
        raise AssertionError(f"decoded {path} again")

    monkeypatch.setattr(sources, "read_integer_image", no_decoding)
    again = paired_folder(root, DecodedCache(tmp_path / "cache"))  # e.g. a worker or a later run
    np.testing.assert_array_equal(again.pair(0)[1], plain.pair(0)[1])
    monkeypatch.undo()
    _save_rgb(root / "hr" / "deep.png", _random_uint8(rng, 24, 32))  # an edited file is decoded afresh
    np.testing.assert_array_equal(again.pair(0)[1], read_image(root / "hr" / "deep.png"))


def test_decoded_cache_refusals_name_the_problem(tmp_path):
    rng = np.random.default_rng(5)
    _save_rgb(tmp_path / "hr" / "a.png", _random_uint8(rng, 8, 8))
    _save_rgb(tmp_path / "lr" / "a.png", _random_uint8(rng, 16, 16))
    with pytest.raises(ValueError, match="lr/a.png .* is larger than its HR image"):
        paired_folder(tmp_path, DecodedCache(tmp_path / "cache")).pair(0)
    from ddet.config import load_config

    with pytest.raises(ValueError, match="decode_cache is for realsr and folder data"):
        load_config(data="synthetic", decode_cache=str(tmp_path / "cache"))


def test_loader_with_workers_equals_in_process(photos):
    dataset = TrainingPatches(SyntheticPairs(photos, scale=2), patch=8, seed=1, num_samples=4)
    direct = next(iter(training_loader(dataset, 4)))
    threaded = next(iter(training_loader(dataset, 4, workers=2)))
    assert torch.equal(direct[0], threaded[0]) and torch.equal(direct[1], threaded[1])


def test_whole_images_in_y_and_rgb(photos):
    source = SyntheticPairs(photos, scale=2, fixed_seed=0)
    lr, hr, name = WholeImages(source, "y")[1]
    assert name == "p1" and lr.shape == hr.shape == (1, 44, 36)
    assert np.allclose(hr[0].numpy(), to_channels(photos["p1"][:44, :36], "y")[..., 0])


def _png16(path, samples, exif_orientation=None):
    """A 16-bit RGB(A) PNG cycling through the five row filters (written by hand: Pillow cannot)."""
    import struct
    import zlib

    from ddet.data.png16 import _paeth

    height, width, channels = samples.shape
    bpp = 2 * channels
    rows = [samples[y].astype(">u2").tobytes() for y in range(height)]
    encoded, previous = b"", bytes(width * bpp)
    for y, row in enumerate(rows):
        kind = y % 5
        out = bytearray()
        for i, value in enumerate(row):
            left = row[i - bpp] if i >= bpp else 0
            up_left = previous[i - bpp] if i >= bpp else 0
            prediction = [0, left, previous[i], (left + previous[i]) // 2, _paeth(left, previous[i], up_left)][kind]
            out.append((value - prediction) & 0xFF)
        encoded += bytes([kind]) + bytes(out)
        previous = row

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 16, {3: 2, 4: 6}[channels], 0, 0, 0)
    exif = b""
    if exif_orientation:
        exif_image = Image.new("RGB", (1, 1))
        tags = exif_image.getexif()
        tags[0x0112] = exif_orientation
        exif = chunk(b"eXIf", tags.tobytes())
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + exif
        + chunk(b"IDAT", zlib.compress(encoded))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("channels", [3, 4])
def test_16_bit_colour_png_keeps_full_precision(tmp_path, channels):
    samples = np.random.default_rng(8).integers(0, 65536, (7, 9, channels)).astype(np.uint16)
    _png16(tmp_path / "deep.png", samples)
    image = read_image(tmp_path / "deep.png")
    np.testing.assert_array_equal(np.round(image * 65535).astype(np.uint16), samples[..., :3])
    # Pillow's own (8-bit) decoding of the same file agrees on the high bytes
    with Image.open(tmp_path / "deep.png") as pillow:
        np.testing.assert_array_equal(np.asarray(pillow.convert("RGB")), (samples[..., :3] >> 8).astype(np.uint8))


def test_16_bit_png_orientation_and_corruption(tmp_path):
    samples = np.random.default_rng(9).integers(0, 65536, (4, 6, 3)).astype(np.uint16)
    _png16(tmp_path / "rotated.png", samples, exif_orientation=6)
    assert read_image(tmp_path / "rotated.png").shape == (6, 4, 3)
    data = bytearray((tmp_path / "rotated.png").read_bytes())
    data[-30:-20] = bytes(10)  # damage the compressed stream
    (tmp_path / "damaged.png").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged.png"):
        read_image(tmp_path / "damaged.png")


@pytest.mark.parametrize("orientation", range(2, 9))
def test_exif_orientations_match_pillow(orientation):
    from PIL import ImageOps

    from ddet.data.io import EXIF_ORIENTATIONS

    array = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.info["exif"] = exif.tobytes()
    expected = np.asarray(ImageOps.exif_transpose(image))
    np.testing.assert_array_equal(EXIF_ORIENTATIONS[orientation](array), expected)


def test_decompression_bombs_are_refused_by_name(tmp_path, monkeypatch):
    Image.new("1", (100, 100)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses beyond twice this
    with pytest.raises(ValueError, match="refusing to decode image .*bomb.png"):
        read_image(tmp_path / "bomb.png")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and sets an address-space limit")
def test_an_image_larger_than_memory_is_refused_before_decoding(tmp_path):
    # 81 megapixels in a 10 KB file: 1.2 GB once decoded, under an address-space limit of 1 GB more
    # than the process uses already.
    Image.new("1", (9000, 9000)).save(tmp_path / "huge.png")
    code = (
        "import resource, sys\n"
        "from ddet.cli import main\n"
        "from ddet.data.io import _proc_field\n"
        "limit = int(_proc_field('/proc/self/status', 'VmSize:')) + 1_000_000_000\n"
        "resource.setrlimit(resource.RLIMIT_AS, (limit, limit))\n"
        f"sys.exit(main(['upscale', {str(tmp_path / 'huge.png')!r}, '-o', {str(tmp_path / 'out.png')!r}]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "huge.png is 9000×9000, 81.0 megapixels: decoding it needs about 1.22 GB" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out.png").exists()


def test_float_and_32_bit_images_are_refused_not_misread(tmp_path):
    Image.fromarray(np.full((4, 4), 0.5, np.float32), mode="F").save(tmp_path / "float.tif")
    Image.fromarray(np.full((4, 4), 70000, np.int32), mode="I").save(tmp_path / "deep.tif")
    with pytest.raises(ValueError, match="float.tif: floating-point pixels"):
        read_image(tmp_path / "float.tif")
    with pytest.raises(ValueError, match="deep.tif: 32-bit pixels from 70000 to 70000"):
        read_image(tmp_path / "deep.tif")
