"""DDet: Dual-path Dynamic Enhancement Network for real-world image super-resolution.

>>> import ddet
>>> out = ddet.upscale(image, scale=2)   # numpy H×W×3 (uint8/uint16/float) or a path
"""

__version__ = "0.1.0"
__all__ = ["upscale", "__version__"]


def __getattr__(name):
    # Deferred so that `import ddet` does not load torch and the compiled operators.
    if name == "upscale":
        from ddet.inference import upscale

        return upscale
    raise AttributeError(f"module 'ddet' has no attribute {name!r}")
