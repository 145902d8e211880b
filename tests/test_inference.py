import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from ddet import inference, models
from ddet.data import read_image, resize
from ddet.data.color import rgb_to_ycbcr
from ddet.inference import TILE_ALIGN, _spans, as_float_rgb, plan_tiles, resolve_model, run_model, upscale
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


@pytest.mark.parametrize("tile", [32, 48, 64])
def test_tiles_with_the_receptive_radius_as_context_give_the_whole_image_result(tile):
    model = _tiny(perturb=0.02)
    x = torch.rand(1, 90, 110)
    whole = run_model(model, x)
    assert (whole - x).abs().mean() > 0.05  # the model really changes the image
    assert (run_model(model, x, tile=tile) - whole).abs().max() < 1e-5


@pytest.mark.parametrize("tile, context", [(32, 16), (64, 16)])
def test_tiles_with_less_context_stay_within_the_blending_tolerance(tile, context):
    model = _tiny(perturb=0.02)
    x = torch.rand(1, 90, 110)
    whole = run_model(model, x)
    tiled = run_model(model, x, tile=tile, context=context)
    effect = (whole - x).abs().mean()
    assert 0 < (tiled - whole).abs().max() < 1e-2
    assert (tiled - whole).abs().mean() < 1e-2 * effect


def test_tiles_that_cover_the_image_give_the_exact_result():
    model = _tiny(perturb=0.02)
    x = torch.rand(1, 40, 50)
    assert torch.equal(run_model(model, x, tile=64), run_model(model, x))


@pytest.mark.parametrize("length, tile, context", [(1000, 256, 32), (90, 32, 24), (4000, 704, 32), (50, 64, 8)])
def test_tile_cores_cover_the_axis_once_and_windows_add_the_context_on_the_grid(length, tile, context):
    spans = _spans(length, tile, context)
    assert [start for start, *_ in spans] == [0] + [stop for _, stop, *_ in spans[:-1]] and spans[-1][1] == length
    assert max(stop - start for start, stop, *_ in spans) < tile + TILE_ALIGN
    for start, stop, window_start, window_stop in spans:
        assert window_start % TILE_ALIGN == 0
        assert window_start <= max(start - context, 0) and window_stop == min(stop + context, length)


def _window_and_computed_pixels(height, width, tile, context):
    rows, columns = (_spans(length, side, context) for length, side in ((height, tile[0]), (width, tile[1])))
    lengths = [[stop - start for *_, start, stop in spans] for spans in (rows, columns)]
    return max(lengths[0]) * max(lengths[1]), sum(lengths[0]) * sum(lengths[1])


@pytest.mark.parametrize("height, width", [(1024, 1024), (4000, 6000), (854, 1280), (300, 5000)])
def test_planned_tiles_fit_the_budget_and_compute_fewer_pixels_than_the_largest_squares(height, width):
    budget, context = 603_000, 32
    plan = plan_tiles(height, width, context, budget)
    window, computed = _window_and_computed_pixels(height, width, plan, context)
    square = (math.isqrt(budget) - 2 * context) // TILE_ALIGN * TILE_ALIGN
    assert window <= budget
    assert computed <= _window_and_computed_pixels(height, width, (square, square), context)[1]
    assert plan_tiles(height, width, context, height * width) == (0, 0)  # whole when it fits


def test_a_band_as_wide_as_the_image_is_planned_where_it_fits():
    assert plan_tiles(1024, 1024, 32, 603_000) in ((1024, 512), (512, 1024))
    assert plan_tiles(2000, 500, 32, 300_000)[1] >= 500


def test_rectangular_tiles_give_the_whole_image_result():
    model = _tiny(perturb=0.02)
    x = torch.rand(1, 100, 90)
    assert (run_model(model, x, tile=(32, 64)) - run_model(model, x)).abs().max() < 1e-5


def test_bad_tiling_is_refused():
    with pytest.raises(ValueError, match="--tile"):
        run_model(_tiny(), torch.rand(1, 100, 100), tile=8)
    with pytest.raises(ValueError, match="--tile-context"):
        run_model(_tiny(), torch.rand(1, 100, 100), tile=64, context=-1)


def test_auto_precision_follows_the_bfloat16_units(monkeypatch):
    monkeypatch.setattr(inference, "cpu_flags", lambda: {"avx2", "amx_bf16"})
    assert inference.choose_precision("auto", "cpu")[:2] == ("bf16", torch.bfloat16)
    monkeypatch.setattr(inference, "cpu_flags", lambda: {"avx2", "fma"})
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda: False, raising=False)
    chosen = inference.choose_precision("auto", "cpu")
    assert chosen[:2] == ("fp32", None) and "no bfloat16" in inference.describe_precision(chosen)
    assert inference.choose_precision("fp16", "cpu")[:2] == ("fp16", torch.float16)
    with pytest.raises(ValueError, match="--precision"):
        inference.choose_precision("int8", "cpu")


def test_reduced_precision_runs_the_network_in_it():
    model = _tiny(perturb=0.02)
    x = torch.rand(1, 64, 64)
    exact = run_model(model, x)
    for precision in ("bf16", "fp16"):
        reduced = run_model(model, x, precision=precision)
        assert 0 < (reduced - exact).abs().max() < 0.05


class _EightCopiesFourTimes(torch.nn.Module):
    """Holds 44 bytes a pixel at its peak, from the second round on: the input, the last round's
    plane, its eight copies and their mean. Its outputs together are 148 bytes a pixel."""

    def forward(self, x):
        for _ in range(4):
            x = x.repeat(1, 8, 1, 1).mean(1, keepdim=True)
        return x


def test_the_working_set_is_the_peak_of_the_tensors_alive_at_once():
    fp32 = inference.choose_precision("fp32", "cpu")
    assert inference.working_set_per_pixel(_EightCopiesFourTimes(), 1, fp32, "cpu") == 44
    assert inference.window_pixels(_EightCopiesFourTimes(), 1, fp32, "cpu", max_memory=44 * 10_000) == 10_000


def test_tiles_sized_from_the_memory_budget(image):
    model = _tiny(perturb=0.02)
    fp32, bf16 = inference.choose_precision("fp32", "cpu"), inference.choose_precision("bf16", "cpu")
    small = inference.window_pixels(model, 1, fp32, "cpu", max_memory=2**23)
    assert small < inference.window_pixels(model, 1, fp32, "cpu", max_memory=2**25)
    assert small < inference.window_pixels(model, 1, bf16, "cpu", max_memory=2**23)
    tiles = []
    tiled = upscale(image, scale=4, model=model, max_memory=2**19, on_pixels=tiles.append)
    assert len(tiles) > 1 and sum(tiles) == 84 * 104
    np.testing.assert_allclose(tiled, upscale(image, scale=4, model=model, tile=0), atol=1e-5)


def test_bundled_model_tiles_with_the_capped_context_are_within_a_fifth_of_an_8bit_level():
    from ddet.data.sources import skimage_photos

    photo = skimage_photos(["astronaut"])["astronaut"][:96, 160:288]
    whole = upscale(photo, scale=2, tile=0, precision="fp32")
    tiled = upscale(photo, scale=2, tile=64, precision="fp32")
    assert 0 < np.abs(tiled - whole).max() < 0.2 / 255


def test_identity_y_model_gives_bicubic_with_original_chroma(image):
    out = upscale(image, scale=3, model=_tiny(), tile=32, tile_context=16)
    expected = np.clip(resize(image.astype(np.float32) / 255, 63, 78), 0, 1)
    assert out.shape == (63, 78, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=2e-5)


@pytest.mark.parametrize("channels", [1, 3])
def test_upscale_in_tiles_equals_upscale_whole(channels):
    image = np.random.default_rng(1).integers(0, 256, (45, 70, 3)).astype(np.uint8)
    model = _tiny(in_channels=channels, perturb=0.02)
    whole = upscale(image, scale=2, model=model, tile=None)
    tiled = upscale(image, scale=2, model=model, tile=48, tile_context=16)
    assert np.abs(whole - np.clip(resize(image / np.float32(255), 90, 140), 0, 1)).mean() > 0.02
    assert np.abs(tiled - whole).max() < 1e-2
    as_bytes = upscale(image, scale=2, model=model, tile=48, tile_context=16, dtype=np.uint8)
    np.testing.assert_array_equal(as_bytes, np.round(tiled * 255).astype(np.uint8))


PEAK_MEMORY_SCRIPT = """
import resource, sys, numpy as np, torch
from ddet import models
from ddet.inference import upscale
model = models.create("ddet", width=16, blocks=1, feature_width=16, branch_width=8).eval()
out = upscale(np.zeros((int(sys.argv[1]), 1200, 3), np.uint8), scale=2, model=model, tile=240, dtype=np.uint8)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, out.nbytes)
"""


def _peak_and_output_bytes(height):
    # A fixed mmap threshold hands every freed block of 64 kB or more back to the system at once,
    # so the peak resident size follows the live memory instead of the heap's history.
    environment = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    command = [sys.executable, "-c", PEAK_MEMORY_SCRIPT, str(height)]
    return map(int, subprocess.run(command, check=True, capture_output=True, text=True, env=environment).stdout.split())


def test_tiled_upscale_memory_grows_with_the_image_not_with_float_copies_of_it():
    # Two images with the same tile shapes (first, inner and last rows and columns of 240-pixel
    # tiles), so the tiles' working set and oneDNN's per-shape primitives cancel out. Per byte of
    # 8-bit output: the input as float32 (1/4 of the pixels × 4 bytes), its resampling planes (as
    # much again) and the output itself, at most 3 in all (2.0 measured); a whole-image float
    # buffer of the output would add 4 more.
    small_peak, small_output = _peak_and_output_bytes(360)
    large_peak, large_output = _peak_and_output_bytes(1320)
    growth = (large_peak - small_peak) / (large_output - small_output)
    assert growth < 4.5, f"peak memory grew by {growth:.1f}× the output's growth"


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


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("scale", "0", "scale must be one of 2, 3, 4"),
        ("scale", "5", "scale must be one of"),
        ("channels", "rgba", "channels must be one of"),
        ("model_args", "[1]", "model_args must be a JSON mapping"),
    ],
)
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
    with pytest.raises(
        ValueError, match=f"odd.safetensors holds tensors of a type ddet does not load.*{str(dtype)[6:]}"
    ):
        resolve_model(weights=tmp_path / "odd.safetensors")


def test_weights_that_do_not_fit_are_summed_up_in_one_line(tmp_path):
    save_weights(tmp_path / "w.safetensors", _tiny().state_dict(), "ddet", {"in_channels": 1}, 2, "y")
    with pytest.raises(
        ValueError,
        match=r"w.safetensors does not fit this DDet: tensors \d+ missing \(first: .*\d+ of another shape \(first: ",
    ) as caught:
        resolve_model(weights=tmp_path / "w.safetensors")
    assert "\n" not in str(caught.value)
