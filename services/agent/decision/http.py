"""An engine that asks an HTTP service for the decision, typically an LLM (OpenAI-compatible or not)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import aiohttp

from services.agent.decision.engine import Decision, DecisionRequest, Passage
from services.agent.model import Citation

_CITATION_MARK = re.compile(r"\[(\d+)\]")


class HttpDecisionEngine:
    """Delegates the decision to an HTTP service, typically an LLM.

    ``protocol="agentmesh"`` posts ``{"run_id", "question", "passages": [...]}`` and expects
    ``{"answer", "citations": [passage indexes, 1-based], "confidence"}``.
    ``protocol="openai-chat"`` speaks the OpenAI-compatible ``/v1/chat/completions`` API
    (vLLM, llama.cpp server, Ollama, ...): passages are numbered in the prompt, the model is
    asked to cite them as [n], and ``assumed_confidence`` is used as the confidence when it does; a
    reply citing nothing is an abstention ("not found"). ``eval/rag`` runs the same evaluation
    through this engine (``python -m eval.rag --engine http --engine-options '{"url": ...}'``).
    """

    name = "http"

    def __init__(
        self,
        *,
        url: str,
        protocol: str = "agentmesh",
        model: str = "",
        api_key: str = "",
        timeout: float = 20.0,
        assumed_confidence: float = 0.6,
    ) -> None:
        if protocol not in ("agentmesh", "openai-chat"):
            raise ValueError(f"unknown HTTP decision protocol {protocol!r}; use 'agentmesh' or 'openai-chat'")
        self._url = url
        self._protocol = protocol
        self._model = model
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._assumed_confidence = assumed_confidence
        self._session: aiohttp.ClientSession | None = None

    async def decide(self, request: DecisionRequest) -> Decision:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers)
        body = self._agentmesh_body(request) if self._protocol == "agentmesh" else self._chat_body(request)
        async with self._session.post(self._url, json=body) as response:
            response.raise_for_status()
            reply = await response.json()
        if self._protocol == "agentmesh":
            answer = str(reply["answer"])
            indexes = [int(i) for i in reply.get("citations", [])]
            confidence = float(reply.get("confidence", 0.0))
        else:
            answer = str(reply["choices"][0]["message"]["content"]).strip()
            indexes = [int(i) for i in _CITATION_MARK.findall(answer)]
            confidence = self._assumed_confidence if indexes else 0.0
        citations = _cite(request.passages, indexes)
        if self._protocol == "openai-chat" and not citations:
            # Asked to cite every claim and to say so without citing when the passages lack the
            # answer: an uncited reply is the model saying the knowledge base does not cover it.
            return Decision(
                answer=answer, citations=(), confidence=1.0, decided_by=f"{self.name}:not-found", abstained=True
            )
        return Decision(
            answer=answer,
            citations=citations,
            confidence=min(max(confidence, 0.0), 1.0),
            decided_by=self.name,
        )

    @staticmethod
    def _agentmesh_body(request: DecisionRequest) -> dict[str, Any]:
        return {
            "run_id": request.run_id,
            "question": request.question,
            "passages": [{"index": i, **p.to_dict()} for i, p in enumerate(request.passages, start=1)],
        }

    def _chat_body(self, request: DecisionRequest) -> dict[str, Any]:
        numbered = "\n\n".join(f"[{i}] {p.text}" for i, p in enumerate(request.passages, start=1))
        return {
            "model": self._model,
            "temperature": 0,
            "messages": [
                {
                    "role": "system",
                    "content": "Answer only from the numbered passages. Cite every claim as [n]. "
                    "If the passages do not contain the answer, say so without citing.",
                },
                {"role": "user", "content": f"Passages:\n{numbered}\n\nQuestion: {request.question}"},
            ],
        }

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _cite(passages: Sequence[Passage], indexes: Sequence[int]) -> tuple[Citation, ...]:
    cited = []
    for index in dict.fromkeys(indexes):  # keeps first-mention order, drops repeats
        if 1 <= index <= len(passages):
            p = passages[index - 1]
            cited.append(Citation(p.document_id, p.chunk_id, p.start_offset, p.end_offset, p.text, p.score))
    return tuple(cited)
