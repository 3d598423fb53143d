"""`llama-nb serve`: an OpenAI-compatible HTTP server, several conversations decoded in one pass.

    requests.py  OpenAI request bodies -> checked job specs; OpenAI's error shape
    engine.py    the engine thread that owns the model and runs batched steps; stop strings
    app.py       the Starlette app: routes, streaming (server-sent events), response shapes
The scheduling of sequences over KV cache slots is llama_nb/model/batch.py's.
"""
