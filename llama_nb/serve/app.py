"""The HTTP front end: an ASGI app (Starlette) in OpenAI's shapes over the engine thread.

    GET  /health                 {"status": "ok", "active": n}          (no API key needed)
    GET  /v1/models              the one model served
    POST /v1/chat/completions    chat.completion, or a stream of chat.completion.chunk
    POST /v1/completions         text_completion (streamed too)

A stream is server-sent events, `data: {json}\\n\\n` per chunk and `data: [DONE]\\n\\n` at the end:
chat opens with a chunk whose delta is {"role": "assistant", "content": ""}, then one chunk per
piece of text, then one with an empty delta and the finish_reason; with
stream_options.include_usage every chunk carries "usage": null and a last chunk with no choices
carries the usage (OpenAI's exact convention). Non-streamed responses always carry usage
(prompt_tokens_details.cached_tokens: the prompt tokens taken from a slot's cache).

A request with tools gets the model's tool calls in OpenAI's shape (serve/tools.py): "tool_calls"
in the message (or in one delta of the stream) and finish_reason "tool_calls".

When a client disconnects, Starlette cancels its response; the handler's `finally` cancels the
job, so the engine stops generating for it and frees its slot at the next step.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from llama_nb.io.tool_calls import parse_assistant
from llama_nb.serve.engine import Engine, Job
from llama_nb.serve.requests import ApiError, JobSpec, parse_chat, parse_completion
from llama_nb.serve.tools import HeldText, openai_tool_calls

DISCONNECT_POLL = 0.25  # seconds between checks that a non-streaming client is still there


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


def create_app(engine: Engine, model_id: str, api_key: str | None = None) -> Starlette:
    """The Starlette app serving `engine`'s model as `model_id`; requests to /v1 need the key if one is given."""
    llm = engine.llm
    created = int(time.time())

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            raise ApiError(401, "Incorrect API key provided: pass it as 'Authorization: Bearer <key>'",
                           code="invalid_api_key")

    # A body larger than a full context could be is refused before it is read whole (or tokenized):
    # 64 bytes per token of context is more than any Llama 3 token takes, JSON-escaped.
    max_body = (1 << 20) + 64 * llm.ctx

    async def read_json(request: Request):
        body = bytearray()
        async for piece in request.stream():
            body += piece
            if len(body) > max_body:
                raise ApiError(413, f"the request body is larger than {max_body} bytes, more than a context of "
                               f"{llm.ctx} tokens can hold")
        try:
            return json.loads(bytes(body))
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "the request body is not valid JSON") from None

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "active": engine.active})

    async def models(request: Request) -> Response:
        authorize(request)
        return JSONResponse({"object": "list", "data": [
            {"id": model_id, "object": "model", "created": created, "owned_by": "llama_nb"}]})

    async def chat_completions(request: Request) -> Response:
        authorize(request)
        spec = parse_chat(await read_json(request), llm.chat_format, llm.ctx)
        return await answer(request, spec, "chatcmpl")

    async def completions(request: Request) -> Response:
        authorize(request)
        spec = parse_completion(await read_json(request), llm.tokenizer, llm.ctx, llm.args.vocab_size)
        return await answer(request, spec, "cmpl")

    async def answer(request: Request, spec: JobSpec, prefix: str) -> Response:
        if engine.stopping:
            raise ApiError(503, "the server is shutting down", kind="server_error")
        job = Job(spec, asyncio.get_running_loop())
        engine.submit(job)
        shape = Shape(spec, f"{prefix}-{uuid.uuid4().hex[:24]}", model_id)
        if spec.stream:
            return StreamingResponse(stream(job, shape), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await whole(request, job, shape)

    async def whole(request: Request, job: Job, shape: "Shape") -> Response:
        texts = []
        try:
            while True:
                try:
                    item = await asyncio.wait_for(job.events.get(), DISCONNECT_POLL)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return Response(status_code=499)
                    continue
                if item[0] == "text":
                    texts.append(item[1])
                elif item[0] == "error":
                    raise ApiError(503 if engine.stopping else 500, item[1], kind="server_error")
                else:
                    return JSONResponse(shape.whole("".join(texts), item[1], item[2], answer_of(job, "".join(texts))))
        finally:
            engine.cancel(job)  # a no-op when it has finished

    def answer_of(job: Job, text: str):
        """The generated message with its tool calls, when the request offered tools; else None."""
        if not job.spec.tools:
            return None
        stop_token = job.seq.stats.stop_token if job.seq is not None else None
        return parse_assistant(text, llm.chat_format.stop_reason(stop_token))

    async def stream(job: Job, shape: "Shape"):
        held = HeldText() if job.spec.tools else None  # a message that may be a tool call is held back
        try:
            yield shape.event(shape.first())
            while True:
                item = await job.events.get()
                if item[0] == "text":
                    text = held.push(item[1]) if held is not None else item[1]
                    if text:
                        yield shape.event(shape.delta(text))
                elif item[0] == "error":  # headers are sent: the error goes in the stream, as OpenAI's do
                    yield shape.event(ApiError(500, item[1], kind="server_error").body())
                    break
                else:
                    reason = item[1]
                    if held is not None and (rest := held.rest()):
                        message = answer_of(job, rest) if held.maybe_call else None
                        if message is not None and message.tool_calls:
                            yield shape.event(shape.tool_delta(message))
                            reason = "tool_calls"
                        else:
                            yield shape.event(shape.delta(rest))
                    yield shape.event(shape.delta(None, reason))
                    if job.spec.include_usage:
                        yield shape.event(shape.usage_chunk(item[2]))
                    break
            yield "data: [DONE]\n\n"
        finally:
            engine.cancel(job)

    async def on_api_error(request: Request, exc: ApiError) -> Response:
        return error_response(exc)

    async def on_bug(request: Request, exc: Exception) -> Response:  # uvicorn logs the traceback: a bug of ours
        return error_response(ApiError(500, f"internal error: {type(exc).__name__}: {exc}", kind="server_error"))

    async def on_http_error(request: Request, exc: HTTPException) -> Response:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_response(ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", kind=kind))

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers={ApiError: on_api_error, HTTPException: on_http_error,
                                                    Exception: on_bug})


class Shape:
    """The response objects of one request, in OpenAI's shapes (chat or text completion)."""

    def __init__(self, spec: JobSpec, request_id: str, model_id: str):
        self.chat, self.include_usage = spec.kind == "chat", spec.include_usage
        self.base = {"id": request_id, "object": "", "created": int(time.time()), "model": model_id,
                     "system_fingerprint": None}

    @staticmethod
    def event(obj: dict) -> str:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

    def _chunk(self, choices: list) -> dict:
        chunk = dict(self.base, object="chat.completion.chunk" if self.chat else "text_completion", choices=choices)
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def first(self) -> dict:
        if self.chat:
            return self._chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                 "finish_reason": None}])
        return self.delta("")

    def delta(self, text: str | None, finish_reason: str | None = None) -> dict:
        if self.chat:
            delta = {} if text is None else {"content": text}
            return self._chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}])
        return self._chunk([{"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}])

    def usage_chunk(self, usage: dict) -> dict:
        return dict(self._chunk([]), usage=usage)

    def tool_delta(self, message) -> dict:
        """The stream's one chunk of a message's tool calls (each with its index, as OpenAI's)."""
        calls = [dict(call, index=i) for i, call in enumerate(openai_tool_calls(message))]
        return self._chunk([{"index": 0, "delta": {"tool_calls": calls}, "logprobs": None, "finish_reason": None}])

    def whole(self, text: str, finish_reason: str, usage: dict, message=None) -> dict:
        """The response; `message`: the parsed answer of a request with tools (its calls, if any)."""
        if self.chat:
            reply = {"role": "assistant", "content": text, "refusal": None}
            if message is not None and message.tool_calls:
                reply.update(content=message.content or None, tool_calls=openai_tool_calls(message))
                finish_reason = "tool_calls"
            choice = {"index": 0, "message": reply, "logprobs": None, "finish_reason": finish_reason}
            return dict(self.base, object="chat.completion", choices=[choice], usage=usage)
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        return dict(self.base, object="text_completion", choices=[choice], usage=usage)
