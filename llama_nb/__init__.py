"""llama_nb: Llama 3.x inference on the CPU, every op a Numba kernel on raw bf16 buffers."""

__version__ = "0.1.0"


def load_model(path=None, impl=None, **kwargs):
    """Load a Meta-format model folder; see `llama_nb.model.load.load_model`.

    With no path, the built-in demo model (llama_nb/demo: 6.7M parameters, King James Bible),
    so `llama_nb.load_model()` works right after installing."""
    from llama_nb.model.load import load_model as _load_model

    if path is None:
        from llama_nb.demo import demo_model_dir

        path = demo_model_dir()
    return _load_model(path, impl=impl, **kwargs)


__all__ = ["load_model", "__version__"]
