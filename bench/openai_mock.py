"""An OpenAI-shaped upstream for the peer gateway (LiteLLM): POST /v1/chat/completions answers
one word after DELAY_MS, like the echo model. A bare ASGI app, served by uvicorn."""

from __future__ import annotations

import asyncio
import json
import os
import time

DELAY_S = float(os.environ.get("DELAY_MS", "0")) / 1000


async def app(scope, receive, send):  # noqa: ANN001, ANN201
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    request = json.loads(body or b"{}")
    if DELAY_S:
        await asyncio.sleep(DELAY_S)
    answer = json.dumps({
        "id": "chatcmpl-mock", "object": "chat.completion", "created": int(time.time()),
        "model": request.get("model", "mock"),
        "choices": [{"index": 0, "finish_reason": "length",
                     "message": {"role": "assistant", "content": "hello"}}],
        "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3},
    }).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]})
    await send({"type": "http.response.body", "body": answer})
