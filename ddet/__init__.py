"""DDet: Dual-path Dynamic Enhancement Network for real-world image super-resolution.

>>> import ddet
>>> out = ddet.upscale(image, scale=2)   # numpy H×W×3 (uint8/uint16/float) or a path
>>> ddet.export("ddet_x2.onnx", scale=2)  # or *.pt2: a compiled PyTorch package
"""

__version__ = "0.1.0"
__all__ = ["upscale", "export", "__version__"]


def __getattr__(name):
    # Deferred so that `import ddet` does not load torch and the compiled operators.
    if name == "upscale":
        from ddet.inference import upscale

        return upscale
    if name == "export":
        from ddet.deploy import export

        return export
    raise AttributeError(f"module 'ddet' has no attribute {name!r}")
