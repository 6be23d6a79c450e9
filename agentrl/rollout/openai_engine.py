"""Any OpenAI-compatible completions server behind the Engine interface (evaluation).

One ``POST {base_url}/completions`` per turn, with the prompt as token ids (so the agent loop
stays token-in/token-out) and the sampled tokens' logprobs requested. What it relies on:

- ``prompt`` as a list of token ids (OpenAI's legacy completions API allows it; vLLM and
  SGLang accept it);
- ``logprobs: 0`` returning ``choices[0].logprobs.token_logprobs`` for the sampled tokens;
- the sampled *ids*: ``choices[0].token_ids`` when the server returns them (vLLM's
  ``return_token_ids``), else ``logprobs.tokens`` in vLLM's ``"token:<id>"`` form
  (``return_tokens_as_token_ids``). A server that only returns token strings is refused with an
  error saying so: re-tokenizing text would break token-in/token-out.
- vLLM's sampling extensions ``top_k``, ``stop_token_ids``, ``ignore_eos``,
  ``skip_special_tokens``; ``seed`` per request. Set ``vllm_extensions=False`` for a server
  that rejects unknown fields (top-k and stop ids are then not sent).

When the server ends on a stop token but leaves it out of the returned ids, it is appended
(id from ``stop_reason``, logprob 0.0) so the turn closes as the chat template expects. The
``version`` of every Generation is whatever :meth:`update_weights` last set (the server's
weights are not agentrl's to change). HTTP through ``httpx.AsyncClient`` (one per event loop,
``max_concurrency`` connections); connection errors and 5xx are retried ``max_retries`` times.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .engines import Engine, Generation, SamplingParams

log = logging.getLogger(__name__)

TOKEN_PREFIX = "token:"


class OpenAIEngine(Engine):
    """Client of ``{base_url}/completions`` (e.g. ``http://localhost:8000/v1``) for ``model``."""

    def __init__(self, base_url: str, *, model: str, api_key: str | None = None, timeout_s: float = 600.0,
                 max_concurrency: int = 64, max_retries: int = 2, vllm_extensions: bool = True,
                 extra_body: dict[str, Any] | None = None) -> None:
        self.url = base_url.rstrip("/") + "/completions"
        self.model, self.api_key, self.timeout_s = model, api_key, timeout_s
        self.max_concurrency, self.max_retries, self.vllm_extensions = max_concurrency, max_retries, vllm_extensions
        self.extra_body = dict(extra_body or {})
        self.version = 0
        self._clients: dict[int, Any] = {}

    def request_body(self, prompt_ids: list[int], params: SamplingParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model, "prompt": list(prompt_ids), "max_tokens": params.max_new_tokens,
            "temperature": params.temperature, "top_p": params.top_p, "n": 1, "logprobs": 0, "stream": False,
        }
        if params.seed is not None:
            body["seed"] = params.seed % (2**63)
        if self.vllm_extensions:
            body.update({
                "return_tokens_as_token_ids": True, "return_token_ids": True, "skip_special_tokens": False,
                "stop_token_ids": list(params.stop_token_ids), "ignore_eos": bool(params.stop_token_ids),
            })
            if params.top_k:
                body["top_k"] = params.top_k
        body.update(self.extra_body)
        return body

    def parse_response(self, data: dict[str, Any], params: SamplingParams) -> Generation:
        """The first choice of a completions response as a Generation (see module docstring)."""
        try:
            choice = data["choices"][0]
        except (KeyError, IndexError, TypeError):
            raise RuntimeError(f"completions response without choices: {str(data)[:300]}") from None
        lp = choice.get("logprobs") or {}
        token_logprobs = lp.get("token_logprobs")
        ids = choice.get("token_ids")
        if ids is None:
            tokens = lp.get("tokens") or []
            if not all(isinstance(t, str) and t.startswith(TOKEN_PREFIX) for t in tokens):
                raise RuntimeError(
                    f"{self.url} returned token strings ({tokens[:3]}...), not ids; agentrl needs the sampled ids "
                    "(vLLM: return_tokens_as_token_ids / return_token_ids, sent unless vllm_extensions=False)"
                )
            ids = [int(t[len(TOKEN_PREFIX):]) for t in tokens]
        if token_logprobs is None or len(token_logprobs) != len(ids):
            raise RuntimeError(f"{self.url} returned {0 if token_logprobs is None else len(token_logprobs)} logprobs for {len(ids)} tokens")
        ids = [int(i) for i in ids]
        logprobs = [float(x) if x is not None else 0.0 for x in token_logprobs]
        reason = "stop" if choice.get("finish_reason") == "stop" else "length"
        if reason == "stop" and (not ids or ids[-1] not in params.stop_token_ids):
            stop = choice.get("stop_reason")
            if isinstance(stop, int):
                ids.append(stop)
                logprobs.append(0.0)
            elif params.stop_token_ids:
                ids.append(params.stop_token_ids[0])
                logprobs.append(0.0)
        return Generation(ids, logprobs, reason, self.version)

    def _client(self) -> Any:
        import httpx

        key = id(asyncio.get_running_loop())
        if key not in self._clients:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            limits = httpx.Limits(max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency)
            self._clients[key] = httpx.AsyncClient(timeout=self.timeout_s, limits=limits, headers=headers)
        return self._clients[key]

    async def agenerate(self, prompt_ids: list[int], params: SamplingParams) -> Generation:
        import httpx

        if not prompt_ids:
            raise ValueError("agenerate() got an empty prompt")
        body = self.request_body(prompt_ids, params)
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                await asyncio.sleep(0.5 * 2 ** (attempt - 1))
            try:
                resp = await self._client().post(self.url, json=body)
            except httpx.TransportError as e:
                last = f"{type(e).__name__}: {e}"
                continue
            if resp.status_code == 200:
                return self.parse_response(resp.json(), params)
            if resp.status_code < 500:  # the request is wrong: retrying will not help
                raise RuntimeError(f"{self.url} answered {resp.status_code}: {resp.text[:300]}")
            last = f"HTTP {resp.status_code}: {resp.text[:300]}"
        raise RuntimeError(f"{self.url} failed after {self.max_retries + 1} attempts: {last}")

    def close(self) -> None:
        """Forget the clients (their event loops own the connections)."""
        self._clients = {}

    async def aclose(self) -> None:
        """Close the client of the running loop."""
        client = self._clients.pop(id(asyncio.get_running_loop()), None)
        if client is not None:
            await client.aclose()
