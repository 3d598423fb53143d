"""`python -m llama_nb ...` is `llama-nb ...`."""

from llama_nb.cli import main

main()
