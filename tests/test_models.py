"""Tests of ddet.models: the registry, shapes, sizes against the paper's Table III, the DDet/KPN/
LP-KPN structure against ddet_ops.reference, initialisation, gradients, serialisation, compile."""

from __future__ import annotations

import io
import re

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

import ddet_ops
from ddet import models
from ddet.models.kpn import KernelHeadSpec
from ddet.models.lpkpn import expand, laplacian_pyramid, reconstruct, reduce
from ddet.weights import BUNDLED_DIR, bundled_path, read_weights

NAMES = [
    "ddet", "ddet-released", "ddet-plain", "ddet-pr", "ddet-cdm",
    "kpn5", "kpn7", "kpn13", "kpn19", "lpkpn", "srresnet", "edsr", "rcan", "edrn",
]  # fmt: skip

# Few channels and blocks: every structural feature of the family, at a fraction of the cost.
_TINY_BY_FAMILY = {
    "ddet": dict(width=16, blocks=1, feature_width=16, branch_width=8),
    "kpn": dict(width=16, blocks=1, feature_width=16),
    "lpkpn": dict(width=16, blocks=1, feature_width=16),
    "srresnet": dict(width=8, blocks=1),
    "edsr": dict(width=8, blocks=1),
    "rcan": dict(width=16, groups=1, blocks=1, reduction=2),
    "edrn": dict(width=16, groups=4, blocks=1, reduction=2),
}


# These tensors are tiny: a second intra-op thread only adds synchronisation.
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(name: str, **overrides) -> torch.nn.Module:
    family = "lpkpn" if name == "lpkpn" else name.split("-")[0].rstrip("0123456789")
    return models.create(name, **{**_TINY_BY_FAMILY[family], **overrides})


def perturb(model: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """Move every parameter off its initialisation (zero-initialised heads would hide wiring)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * scale)
    return model


def image(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- registry


def test_names_are_the_paper_models_in_table_order():
    assert models.names() == NAMES
    for name in NAMES:
        assert models.describe(name)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown model name 'ddet-x'.*ddet-released.*edrn"):
        models.create("ddet-x")


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_pretrained_loads_the_weights_bundled_for_the_scale(scale):
    stored, _ = read_weights(bundled_path("ddet", scale))
    model = models.create("ddet", pretrained=True, scale=scale)
    loaded = model.state_dict()
    assert loaded.keys() == stored.keys()
    for key, value in stored.items():
        torch.testing.assert_close(loaded[key], value.to(loaded[key].dtype), rtol=0, atol=0, msg=key)
    untrained = models.create("ddet").state_dict()
    assert any(not torch.equal(untrained[key], loaded[key]) for key in loaded)


def test_the_registry_records_every_bundled_weights_file_and_only_those():
    recorded = {bundled_path(name, scale) for name in models.names() for scale in models.pretrained_scales(name)}
    assert models.pretrained_scales("ddet") == [2, 3, 4]
    assert recorded == set(BUNDLED_DIR.glob("*.safetensors"))


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("kpn5", dict(scale=2), r"no bundled weights for model 'kpn5' \(bundled: ddet ×2/×3/×4\); pass --weights FILE"),
        ("ddet", dict(scale=5), r"no bundled weights for model 'ddet' at ×5 \(bundled: ddet ×2/×3/×4\)"),
        ("ddet", dict(), r"pretrained=True needs scale=, one of \[2, 3, 4\] for 'ddet'"),
    ],
)
def test_pretrained_without_bundled_weights_is_refused_in_one_line(name, options, message):
    with pytest.raises(ValueError, match=message) as refusal:
        models.create(name, pretrained=True, **options)
    assert "\n" not in str(refusal.value)


def test_scale_without_pretrained_is_refused():
    with pytest.raises(ValueError, match="scale=2 selects bundled weights: pass pretrained=True"):
        models.create("ddet", scale=2)


def test_unknown_override_names_the_field_and_lists_the_valid_ones():
    with pytest.raises(ValueError, match="'kernel'.*in_channels"):
        models.create("kpn5", kernel=3)


@pytest.mark.parametrize(
    "name, overrides, field",
    [
        ("ddet", dict(width=24), "width"),
        ("ddet", dict(in_channels=0), "in_channels"),
        ("kpn5", dict(blocks=-1), "blocks"),
        ("lpkpn", dict(kernel_size=4), "kernel_size"),
        ("rcan", dict(reduction=128), "reduction"),
        ("edsr", dict(width=2.5), "width"),
        ("ddet", dict(in_channels=3, branch_width=2), "branch_width"),
    ],
)
def test_bad_configuration_names_the_field(name, overrides, field):
    with pytest.raises(ValueError, match=field):
        models.create(name, **overrides)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("field, value", [("in_channels", 0), ("width", 0), ("blocks", -1), ("width", True)])
def test_every_family_checks_the_common_fields(name, field, value):
    config_class = type(models.default_config(name)).__name__
    with pytest.raises(ValueError, match=rf"^{config_class}\.{field} must be an int >= "):
        models.create(name, **{field: value})


@pytest.mark.parametrize(
    "name, overrides, message",
    [
        ("edrn", dict(reduction=128), "EDRNConfig.reduction (128) must not exceed width (64)"),
        ("edrn", dict(groups=-1), "EDRNConfig.groups must be an int >= 0"),
        ("lpkpn", dict(width=24), "LPKPNConfig.width must divide by 16"),
        ("lpkpn", dict(feature_width=0), "LPKPNConfig.feature_width must be an int >= 1"),
        ("ddet", dict(feature_width=0), "DDetConfig.feature_width must be an int >= 1"),
    ],
)
def test_family_checks_reach_the_configurations_built_on_them(name, overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        models.create(name, **overrides)


def test_kernel_head_rejects_even_sizes():
    with pytest.raises(ValueError, match="odd"):
        KernelHeadSpec((4,))


def test_config_is_recorded_and_overrides_apply():
    model = tiny("ddet", in_channels=3)
    assert model.in_channels == 3 and model.config.in_channels == 3
    assert models.default_config("ddet").in_channels == 1


# ---------------------------------------------------------------- shapes and inputs


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("channels", [1, 3])
def test_output_has_the_input_shape_for_odd_sizes(name, channels):
    model = tiny(name, in_channels=channels)
    for h, w in [(13, 11), (1, 1), (6, 9)]:
        x = image(2, channels, h, w)
        y = model(x)
        assert y.shape == x.shape and y.dtype == x.dtype and torch.isfinite(y).all()


@pytest.mark.parametrize("name", ["ddet", "ddet-released", "kpn19", "lpkpn", "srresnet"])
def test_full_size_configurations_run(name):
    x = image(1, 1, 9, 14)
    assert models.create(name)(x).shape == x.shape


def test_bad_input_is_a_clear_error():
    model = tiny("kpn5")
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\).*in_channels=3"):
        model(image(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        model(image(1, 8, 8))
    with pytest.raises(ValueError, match="floating"):
        model(torch.zeros(1, 1, 8, 8, dtype=torch.uint8))


# ---------------------------------------------------------------- sizes (Table III, MB = float32 bytes / 1e6)

TABLE_III_MB = {
    "ddet": 5.7, "kpn5": 5.1, "kpn7": 5.2, "kpn13": 5.5, "kpn19": 5.9,
    "lpkpn": 5.7, "srresnet": 4.9, "edsr": 153.5,
}  # fmt: skip


def _on_meta(name: str, **overrides) -> torch.nn.Module:
    with torch.device("meta"):  # EDSR and EDRN hold 38 M and 58 M parameters: count without allocating
        return models.create(name, **overrides)


@pytest.mark.parametrize("name", sorted(TABLE_III_MB))
def test_size_matches_table_iii_within_3_percent(name):
    assert models.size_mb(_on_meta(name)) == pytest.approx(TABLE_III_MB[name], rel=0.03)


@pytest.mark.parametrize(
    "name, overrides, parameters",
    [
        # Counted by hand from the prototxt / published code, layer by layer.
        ("ddet-released", dict(feature_width=64), 1_428_919),  # x2 file: Table III's 5.7 MB
        ("ddet-released", dict(), 1_559_159),  # x3/x4 files
        ("ddet", dict(), 1_439_189),
        ("rcan", dict(), 15_294_625),
        ("edrn", dict(), 58_443_593),
    ],
)
def test_parameter_counts_of_the_published_layouts(name, overrides, parameters):
    assert models.parameter_count(_on_meta(name, **overrides)) == parameters


def test_size_mb_is_float32_bytes_over_a_million():
    model = _on_meta("ddet-released", feature_width=64)
    assert models.size_mb(model) == pytest.approx(1_428_919 * 4 / 1e6)
    assert models.size_mb(model) == pytest.approx(5.7, rel=0.03)


def test_plain_ablation_with_64_features_is_kpn7():
    kpn = perturb(tiny("kpn7", feature_width=64))
    plain = tiny("ddet-plain", feature_width=64)
    plain.load_state_dict(kpn.state_dict())
    x = image(1, 1, 10, 7)
    torch.testing.assert_close(plain(x), kpn(x), rtol=0, atol=0)


def test_ablation_ladder_adds_one_component_per_rung():
    ladder = [tiny(name) for name in ("ddet-plain", "ddet-pr", "ddet-cdm", "ddet")]
    assert [(m.detail is not None, m.refine is not None, m.sizes) for m in ladder] == [
        (False, False, (7,)),
        (False, True, (7,)),
        (True, True, (7,)),
        (True, True, (3, 5, 7)),
    ]


# ---------------------------------------------------------------- structure against ddet_ops.reference


@pytest.mark.parametrize("name, sizes, channels", [("ddet", (3, 5, 7), 83), ("ddet-released", (9, 7, 5), 81 + 49 + 25)])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_mda_equals_the_reference_on_the_same_kernels(name, sizes, channels, in_channels):
    model = perturb(tiny(name, in_channels=in_channels))
    assert model.sizes == sizes
    x = image(2, in_channels, 12, 8)  # a multiple of 4: the model adds no padding
    kernels = model.kernels(x)
    assert kernels.shape == (2, channels, 12, 8)
    revised = model.revise(x)
    expected = ddet_ops.reference.multi_dynconv(revised, kernels, model.sizes)
    torch.testing.assert_close(model.apply_kernels(revised, kernels), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model(x), model.refine_output(expected), rtol=1e-5, atol=1e-5)
    # The kernels act on I_Rev = G_Dil(x) + x, not on x.
    assert not torch.allclose(revised, x)


def _set_head_to_tap(model, row: int, col: int) -> None:
    size = model.sizes[0]
    last = model.heads[0][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
        last.bias[row * size + col] = 1.0


@pytest.mark.parametrize("name", ["kpn5", "kpn19", "ddet-plain"])
def test_kpn_with_centre_tap_kernels_returns_its_input_exactly(name):
    model = perturb(tiny(name))
    centre = model.sizes[0] // 2
    _set_head_to_tap(model, centre, centre)
    x = image(2, 1, 13, 11)
    assert torch.equal(model(x), x)


def test_kpn_tap_order_is_row_major_and_padding_replicates_the_edge():
    model = perturb(tiny("kpn5"))
    _set_head_to_tap(model, 2, 3)  # one column right of the centre: y[h, w] = x[h, w + 1]
    x = image(1, 1, 8, 7)  # padded inside to 8 x 8 by repeating the last column
    y = model(x)
    assert torch.equal(y[..., :, :-1], x[..., :, 1:])
    assert torch.equal(y[..., :, -1], x[..., :, -1])


@pytest.mark.parametrize("name", NAMES)
def test_fresh_models_are_close_to_the_identity(name):
    model = tiny(name)
    x = image(2, 1, 13, 11)
    torch.testing.assert_close(model(x), x, rtol=0, atol=1e-5)


# ---------------------------------------------------------------- Laplacian pyramid and LP-KPN


@pytest.mark.parametrize("shape", [(2, 1, 16, 12), (1, 3, 13, 11), (1, 1, 1, 1), (1, 1, 5, 2)])
def test_pyramid_analysis_then_synthesis_reconstructs_the_input(shape):
    x = image(*shape)
    bands = laplacian_pyramid(x)
    assert [b.shape[-2:] for b in bands] == [
        x.shape[-2:],
        torch.Size([-(-shape[2] // 2), -(-shape[3] // 2)]),
        torch.Size([-(-shape[2] // 4), -(-shape[3] // 4)]),
    ]
    torch.testing.assert_close(reconstruct(bands), x, rtol=0, atol=1e-6)


def test_pyramid_filters_have_unit_gain_up_to_the_borders():
    flat = torch.full((1, 1, 9, 7), 0.25)
    torch.testing.assert_close(reduce(flat), torch.full((1, 1, 5, 4), 0.25))
    torch.testing.assert_close(expand(torch.full((1, 1, 5, 4), 0.25), (9, 7)), flat)


def test_expand_is_zero_insertion_then_the_binomial_filter_times_four():
    y = image(1, 1, 6, 5)
    zeros_inserted = torch.zeros(1, 1, 12, 10)
    zeros_inserted[..., ::2, ::2] = y
    taps = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
    kernel = (torch.outer(taps, taps) / 64).view(1, 1, 5, 5)
    expected = F.conv2d(zeros_inserted, kernel, padding=2)
    # Away from the border, where only the padding rule differs.
    torch.testing.assert_close(expand(y, (12, 10))[..., 2:-2, 2:-2], expected[..., 2:-2, 2:-2])


def test_reduce_is_the_binomial_blur_then_decimation():
    x = image(1, 1, 12, 10)
    taps = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
    blurred = F.conv2d(x, (torch.outer(taps, taps) / 256).view(1, 1, 5, 5), padding=2)
    torch.testing.assert_close(reduce(x)[..., 1:-1, 1:-1], blurred[..., 2:-2:2, 2:-2:2])


def test_lpkpn_levels_and_targets_line_up():
    model = perturb(tiny("lpkpn"))
    x, hr = image(2, 1, 13, 11, seed=1), image(2, 1, 13, 11, seed=2)
    output, levels = model.forward_levels(x)
    targets = model.pyramid(hr)
    torch.testing.assert_close(output, model(x), rtol=0, atol=0)
    assert [t.shape for t in levels] == [t.shape for t in targets]
    assert [t.shape[-2:] for t in levels] == [(13, 11), (7, 6), (4, 3)]
    x16 = image(1, 1, 16, 12)
    output16, levels16 = model.forward_levels(x16)
    torch.testing.assert_close(reconstruct(levels16), output16, rtol=0, atol=1e-6)
    torch.testing.assert_close(reconstruct(model.pyramid(x16)), x16, rtol=0, atol=1e-6)


def test_fresh_lpkpn_filters_every_band_by_the_identity():
    model = tiny("lpkpn")
    x = image(1, 1, 13, 11)
    for level, target in zip(model.forward_levels(x)[1], model.pyramid(x), strict=True):
        torch.testing.assert_close(level, target, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- training and serialisation


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter(name):
    model = perturb(tiny(name)).train()
    x = image(2, 1, 13, 11)
    output = model(x)
    if name == "lpkpn":
        output = output + sum(level.sum() for level in model.forward_levels(x)[1])
    output.square().mean().backward()
    for parameter_name, p in model.named_parameters():
        assert p.grad is not None, parameter_name
        assert torch.isfinite(p.grad).all(), parameter_name
        assert p.grad.abs().sum() > 0, parameter_name


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_through_safetensors(name):
    source = perturb(tiny(name), seed=3).eval()
    blob = save_safetensors({k: v.contiguous() for k, v in source.state_dict().items()})
    copy = tiny(name).eval()
    copy.load_state_dict(load_safetensors(blob), strict=True)
    x = image(1, 1, 9, 10)
    assert torch.equal(copy(x), source(x))


@pytest.mark.parametrize("name", NAMES)
def test_eval_mode_is_deterministic(name):
    model = perturb(tiny(name)).eval()
    x = image(2, 1, 13, 11)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_state_dict_round_trip_through_torch_save():
    source = perturb(tiny("ddet-released"))
    buffer = io.BytesIO()
    torch.save(source.state_dict(), buffer)
    buffer.seek(0)
    copy = tiny("ddet-released")
    copy.load_state_dict(torch.load(buffer, weights_only=True))
    x = image(1, 1, 8, 8)
    assert torch.equal(copy(x), source(x))


# ---------------------------------------------------------------- dtypes, layouts, compile


def test_channels_last_gives_the_same_result():
    model = perturb(tiny("ddet", in_channels=3)).eval()
    x = image(2, 3, 12, 9)
    expected = model(x)
    model = model.to(memory_format=torch.channels_last)
    torch.testing.assert_close(model(x.to(memory_format=torch.channels_last)), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["ddet", "lpkpn"])
def test_bfloat16_autocast_stays_close_to_float32(name):
    model = perturb(tiny(name)).eval()
    x = image(1, 1, 12, 10)
    expected = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        actual = model(x)
    assert actual.shape == x.shape
    torch.testing.assert_close(actual.float(), expected, rtol=0, atol=0.05)


def test_float64_models_run_in_float64():
    model = perturb(tiny("ddet")).double()
    x = image(1, 1, 7, 6).double()
    assert model(x).dtype == torch.float64


@pytest.mark.slow  # about 20 s of inductor code generation on a cold cache, 4 s warm
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_torch_compile_of_ddet_matches_eager():
    torch._dynamo.reset()
    model = perturb(tiny("ddet")).eval()
    x = image(1, 1, 13, 11)
    compiled = torch.compile(model)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


def _reach(model, size=112):
    """Largest distance from an output pixel to an input pixel its gradient touches, over the four
    positions of a pixel in the trunk's 4×4 cell."""
    x = torch.rand(1, 1, size, size, requires_grad=True)
    output = model(x)
    centre, reach = size // 2 - size // 2 % 4, 0
    for offset in range(4):
        x.grad = None
        pixel = centre + offset
        output[0, 0, pixel, pixel].backward(retain_graph=True)
        rows, cols = torch.nonzero(x.grad[0, 0], as_tuple=True)
        reach = max(reach, (rows - pixel).abs().max().item(), (cols - pixel).abs().max().item())
    return reach


@pytest.mark.parametrize(
    "name, blocks", [("ddet", 1), ("ddet-released", 2), ("ddet-plain", 0), ("kpn7", 1), ("kpn19", 0)]
)
def test_receptive_radius_is_how_far_the_gradient_reaches(name, blocks):
    torch.manual_seed(0)
    model = models.create(name, width=16, blocks=blocks, feature_width=16)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))  # no zero-initialised layer blocks a path
    assert _reach(model) == model.receptive_radius
    assert models.create("ddet").receptive_radius == 144
