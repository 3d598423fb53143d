"""llama_nb test suite (a package so helpers import as `from tests.tinymodel import ...`)."""
