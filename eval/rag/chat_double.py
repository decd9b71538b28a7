"""A local stand-in for an OpenAI-compatible chat server, replying from a script instead of a model.

It serves ``POST /v1/chat/completions`` on loopback so the ``http`` decision engine
(``protocol="openai-chat"``) runs the whole evaluation with no network and no model: the figures
it gives measure the harness and the engine's parsing, not a model. Point the engine at vLLM,
llama.cpp's server or Ollama instead for a real one (eval/rag/README.md).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

from aiohttp import web

Script = Callable[[Sequence[Mapping[str, str]]], str]

_PASSAGE = re.compile(r"^\[(\d+)\] (.*?)(?=\n\n\[\d+\] |\n\nQuestion: )", re.MULTILINE | re.DOTALL)
_FIRST_SENTENCE = re.compile(r"(?:#[^\n]*\n+)*(.+?[.!?])(?=\s|$)", re.DOTALL)
NOT_FOUND = "The passages do not contain the answer."


def numbered_passages(messages: Sequence[Mapping[str, str]]) -> dict[int, str]:
    """The passages the engine numbered in its last user message."""
    return {int(n): text for n, text in _PASSAGE.findall(messages[-1]["content"])}


def quote_first_passage(messages: Sequence[Mapping[str, str]]) -> str:
    """A baseline "model": the first sentence of passage [1], cited; no passages, no answer."""
    passages = numbered_passages(messages)
    if 1 not in passages:
        return NOT_FOUND
    match = _FIRST_SENTENCE.match(passages[1].strip())
    sentence = match.group(1) if match else passages[1].strip()
    return f"{' '.join(sentence.split())} [1]"


class ChatDouble:
    """``async with ChatDouble(script) as double:`` serves ``double.url`` until the block ends."""

    def __init__(self, script: Script) -> None:
        self._script = script
        self.requests: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> ChatDouble:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._complete)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/v1/chat/completions"
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _complete(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        content = self._script(body["messages"])
        return web.json_response(
            {
                "id": f"chatcmpl-{len(self.requests)}",
                "object": "chat.completion",
                "model": body.get("model", ""),
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                ],
            }
        )
