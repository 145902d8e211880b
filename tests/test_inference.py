import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from ddet import models
from ddet.data import read_image, resize
from ddet.data.color import rgb_to_ycbcr
from ddet.inference import as_float_rgb, resolve_model, run_model, upscale
from ddet.weights import save_weights

TINY_DDET = {"width": 16, "blocks": 1, "feature_width": 16, "branch_width": 8}


def _tiny(in_channels=1, perturb=0.0, seed=0):
    torch.manual_seed(seed)
    model = models.create("ddet", in_channels=in_channels, **TINY_DDET).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(perturb * torch.randn_like(parameter))
    return model


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (21, 26, 3)).astype(np.uint8)


@pytest.mark.parametrize("tile, overlap", [(64, 32), (48, 32), (64, 48)])
def test_tiled_equals_untiled(tile, overlap):
    model = _tiny(perturb=0.02)
    x = torch.rand(1, 90, 110)
    whole = run_model(model, x)
    tiled = run_model(model, x, tile=tile, overlap=overlap)
    effect = (whole - x).abs().mean()
    assert effect > 0.05  # the model really changes the image
    assert (tiled - whole).abs().max() < 1e-2
    assert (tiled - whole).abs().mean() < 1e-2 * effect


def test_tiles_that_cover_the_image_give_the_exact_result():
    model = _tiny(perturb=0.02)
    x = torch.rand(1, 40, 50)
    assert torch.equal(run_model(model, x, tile=64), run_model(model, x))


def test_bad_tiling_is_refused():
    with pytest.raises(ValueError, match="tile"):
        run_model(_tiny(), torch.rand(1, 100, 100), tile=64, overlap=60)


def test_identity_y_model_gives_bicubic_with_original_chroma(image):
    out = upscale(image, scale=3, model=_tiny(), tile=32, tile_overlap=16)
    expected = np.clip(resize(image.astype(np.float32) / 255, 63, 78), 0, 1)
    assert out.shape == (63, 78, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=2e-5)


@pytest.mark.parametrize("channels", [1, 3])
def test_upscale_in_tiles_equals_upscale_whole(channels):
    image = np.random.default_rng(1).integers(0, 256, (45, 70, 3)).astype(np.uint8)
    model = _tiny(in_channels=channels, perturb=0.02)
    whole = upscale(image, scale=2, model=model, tile=None)
    tiled = upscale(image, scale=2, model=model, tile=48, tile_overlap=32)
    assert np.abs(whole - np.clip(resize(image / np.float32(255), 90, 140), 0, 1)).mean() > 0.02
    assert np.abs(tiled - whole).max() < 1e-2
    as_bytes = upscale(image, scale=2, model=model, tile=48, tile_overlap=32, dtype=np.uint8)
    np.testing.assert_array_equal(as_bytes, np.round(tiled * 255).astype(np.uint8))


PEAK_MEMORY_SCRIPT = """
import resource, sys, numpy as np, torch
from ddet import models
from ddet.inference import upscale
model = models.create("ddet", width=16, blocks=1, feature_width=16, branch_width=8).eval()
upscale(np.zeros((150, 150, 3), np.uint8), scale=2, model=model, tile=256, dtype=np.uint8)  # one tile's working set
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = upscale(np.zeros((800, 1200, 3), np.uint8), scale=2, model=model, tile=256, dtype=np.uint8)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024 / out.nbytes)
"""


def test_tiled_upscale_memory_grows_with_the_image_not_with_float_copies_of_it():
    # Input as float32 (1/4 of the output pixels × 3 channels × 4 bytes), the resampling planes
    # (as much again) and the uint8 output are each one output-size worth of bytes; whole-image
    # float buffers of the output (12 bytes a pixel each) would add ~4 per copy.
    growth = float(subprocess.run([sys.executable, "-c", PEAK_MEMORY_SCRIPT], check=True, capture_output=True, text=True).stdout)
    assert growth < 4.5, f"peak memory grew by {growth:.1f}× the output's size"


def test_y_model_changes_luminance_only():
    grey = np.full((16, 16, 3), 0.5, np.float32)
    grey[..., 0] = 0.7
    out = upscale(grey, scale=2, model=_tiny(perturb=0.02))
    chroma_in = rgb_to_ycbcr(np.clip(resize(grey, 32, 32), 0, 1))[..., 1:]
    np.testing.assert_allclose(rgb_to_ycbcr(out)[..., 1:][4:-4, 4:-4], chroma_in[4:-4, 4:-4], atol=1e-2)


def test_rgb_model(image):
    out = upscale(image, scale=2, model=_tiny(in_channels=3))
    np.testing.assert_allclose(out, np.clip(resize(image.astype(np.float32) / 255, 42, 52), 0, 1), atol=2e-5)


def test_inputs_uint16_float_grey_and_paths(tmp_path, image):
    as16 = as_float_rgb(image.astype(np.uint16) * 257)
    np.testing.assert_allclose(as16, image / 255.0, atol=1e-6)
    assert as_float_rgb(np.zeros((4, 5))).shape == as_float_rgb(np.zeros((4, 5, 1))).shape == (4, 5, 3)
    Image.fromarray(image).save(tmp_path / "a.png")
    np.testing.assert_array_equal(as_float_rgb(tmp_path / "a.png"), read_image(tmp_path / "a.png"))
    with pytest.raises(TypeError, match="int64"):
        as_float_rgb(np.zeros((4, 4), np.int64))


def test_weights_files_describe_their_model(tmp_path):
    model = _tiny(perturb=0.01)
    path = tmp_path / "w.safetensors"
    save_weights(path, model.state_dict(), "ddet", {**TINY_DDET, "in_channels": 1}, 3, "y", dtype=torch.float16)
    loaded, scale, channels, name = resolve_model(weights=path)
    assert (scale, channels, name) == (3, "y", "ddet")
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=2e-3, rtol=0)
    with pytest.raises(ValueError, match="×3"):
        resolve_model(weights=path, scale=2)
    with pytest.raises(ValueError, match="kpn5"):
        resolve_model(model="kpn5", weights=path)
    with pytest.raises(ValueError, match="--weights"):
        resolve_model(model="edsr")
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(ValueError, match="bad.safetensors"):
        resolve_model(weights=tmp_path / "bad.safetensors")
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        resolve_model(weights=tmp_path / "missing.safetensors")


@pytest.mark.parametrize("field, value, message", [
    ("scale", "0", "scale must be one of 2, 3, 4"), ("scale", "5", "scale must be one of"),
    ("channels", "rgba", "channels must be one of"), ("model_args", "[1]", "model_args must be a JSON mapping"),
])
def test_weights_metadata_is_checked_by_name(tmp_path, field, value, message):
    metadata = {"model": "ddet", "model_args": '{"in_channels": 1}', "scale": "2", "channels": "y", field: value}
    path = tmp_path / "w.safetensors"
    from safetensors.torch import save_file

    save_file(_tiny().state_dict(), path, metadata=metadata)
    with pytest.raises(ValueError, match=f"w.safetensors.*{message}"):
        resolve_model(weights=path)


def test_non_finite_weights_are_refused_at_load(tmp_path):
    state = _tiny().state_dict()
    name = next(key for key, value in state.items() if value.is_floating_point())
    state[name] = torch.full_like(state[name], float("nan"))
    save_weights(tmp_path / "nan.safetensors", state, "ddet", {**TINY_DDET, "in_channels": 1}, 2, "y")
    with pytest.raises(ValueError, match=f"nan.safetensors holds non-finite values.*{name}"):
        resolve_model(weights=tmp_path / "nan.safetensors")


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.int32])
def test_weights_of_a_foreign_type_are_refused(tmp_path, dtype):
    state = {key: value.to(dtype) for key, value in _tiny().state_dict().items()}
    save_weights(tmp_path / "odd.safetensors", state, "ddet", {**TINY_DDET, "in_channels": 1}, 2, "y")
    with pytest.raises(ValueError, match=f"odd.safetensors holds tensors of a type ddet does not load.*{str(dtype)[6:]}"):
        resolve_model(weights=tmp_path / "odd.safetensors")


def test_weights_that_do_not_fit_are_summed_up_in_one_line(tmp_path):
    save_weights(tmp_path / "w.safetensors", _tiny().state_dict(), "ddet", {"in_channels": 1}, 2, "y")
    with pytest.raises(ValueError, match=r"w.safetensors does not fit this DDet: tensors \d+ missing \(first: .*\d+ of another shape \(first: ") as caught:
        resolve_model(weights=tmp_path / "w.safetensors")
    assert "\n" not in str(caught.value)
