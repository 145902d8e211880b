"""The nn.Module face of the operator."""

import pytest

import ddet_ops


@pytest.mark.parametrize(
    "sizes, groups, message",
    [
        ((3.9,), 1, "kernel sizes must be ints"),
        ("357", 1, "sizes must be a sequence"),
        ((True,), 1, "must be ints"),
        ((2,), 1, "odd"),
        ((), 1, "1 to 16 kernel sizes"),
        ((3,), 0, "groups must be an int >= 1"),
    ],
)
def test_the_module_checks_its_arguments_when_built(sizes, groups, message):
    with pytest.raises(ValueError, match=message):
        ddet_ops.MultiDynConv(sizes, groups=groups)
