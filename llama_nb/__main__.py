"""`python -m llama_nb ...` is `llama-nb ...`."""

from llama_nb._entry import main

main()
