"""llmops chat: one chat turn on an endpoint, the answer streamed to the terminal
token by token (the router's ChatStream), or the whole response as JSON."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from llmops.v1 import inference_pb2

from .options import gateway
from .render import Output, OutputOption, as_dict, console, print_json

CHAT_TIMEOUT_S = 300.0


def chat(ctx: typer.Context,
         endpoint: Annotated[str, typer.Argument(help="Endpoint name, as in /serve/NAME.")],
         message: Annotated[str, typer.Argument(help="The user's message; - reads it from stdin.")],
         system: Annotated[str, typer.Option(help="A system prompt before the message.")] = "",
         max_tokens: Annotated[int | None, typer.Option(min=1, help="Most tokens to generate.")] = None,
         temperature: Annotated[float | None, typer.Option(min=0, help="Sampling temperature.")] = None,
         top_p: Annotated[float | None, typer.Option(min=0, max=1, help="Nucleus sampling mass.")] = None,
         seed: Annotated[int | None, typer.Option(help="Same seed, request and replica: same text.")] = None,
         stop: Annotated[list[str] | None, typer.Option(help="Stop sequence (repeatable).")] = None,
         timeout: Annotated[float, typer.Option(min=0, help="Seconds before the call gives up.")] = CHAT_TIMEOUT_S,
         output: OutputOption = Output.TABLE) -> None:
    """Chat with an endpoint: tokens are printed as they are generated (-o json: the whole response)."""
    gw = gateway(ctx)
    messages = [inference_pb2.ChatMessage(role="system", content=system)] if system else []
    messages.append(inference_pb2.ChatMessage(role="user", content=sys.stdin.read() if message == "-" else message))
    request = inference_pb2.ChatRequest(name=endpoint, messages=messages, max_tokens=max_tokens,
                                        temperature=temperature, top_p=top_p, seed=seed, stop=stop or [])
    if output is Output.JSON:
        print_json(as_dict(gw.call(gw.inference.Chat, request, timeout_s=timeout)))
        return
    usage = None
    for chunk in gw.call(gw.inference.ChatStream, inference_pb2.ChatStreamRequest(request=request), timeout_s=timeout):
        for choice in chunk.choices:
            sys.stdout.write(choice.delta.content)
        sys.stdout.flush()
        if chunk.HasField("usage"):
            usage = chunk.usage
    sys.stdout.write("\n")
    if usage is not None:
        console(stderr=True).print(f"{usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens",
                                   style="dim", markup=False)
