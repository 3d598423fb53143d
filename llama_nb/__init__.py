"""llama_nb: Llama 3.x inference on the CPU, every op a Numba kernel on raw bf16 buffers."""

__version__ = "0.1.0"


def load_model(path, impl=None, **kwargs):
    """Load a Meta-format model folder; see `llama_nb.model.load.load_model`."""
    from llama_nb.model.load import load_model as _load_model

    return _load_model(path, impl=impl, **kwargs)


__all__ = ["load_model", "__version__"]
