"""OpenAIEngine against a local fake of vLLM's /v1/completions (http.server in a thread, backed
by HFEngine on the tiny model): the ids and logprobs it returns are HFEngine's for the same
seed, a multi-turn episode runs through it, and the failure modes say what is wrong. No network
beyond 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agentrl.rollout.engines import HFEngine, SamplingParams
from agentrl.rollout.openai_engine import OpenAIEngine

pytestmark = pytest.mark.timeout(300)


class FakeVLLM:
    """What the handler does per request; ``mode`` switches to misbehaving servers."""

    def __init__(self, engine: HFEngine) -> None:
        self.engine, self.mode, self.requests = engine, "vllm", []

    def complete(self, body: dict) -> tuple[int, dict]:
        self.requests.append(body)
        if self.mode == "error":
            return 503, {"error": "overloaded"}
        params = SamplingParams(temperature=body["temperature"], top_p=body["top_p"], top_k=body.get("top_k", 0),
                                max_new_tokens=body["max_tokens"], stop_token_ids=tuple(body.get("stop_token_ids", ())), seed=body.get("seed"))
        gen = self.engine.generate([body["prompt"]], [params])[0]
        ids, lps = list(gen.ids), list(gen.logprobs)
        stop_reason = None
        tokens = [f"token:{i}" for i in ids] if self.mode != "text_tokens" else ["a" for _ in ids]
        choice = {"index": 0, "text": "", "finish_reason": gen.finish_reason, "stop_reason": stop_reason,
                  "logprobs": {"tokens": tokens, "token_logprobs": lps, "top_logprobs": None, "text_offset": []}}
        if self.mode == "token_ids":
            choice["token_ids"] = ids
        return 200, {"id": "cmpl-1", "object": "text_completion", "model": body["model"], "choices": [choice]}


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    from agentrl.learner.policy import load_model, load_tokenizer

    path = str(tiny_model_dir("chatml"))
    tok = load_tokenizer(path)
    fake = FakeVLLM(HFEngine(load_model(path), pad_token_id=tok.pad_token_id))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            if self.path != "/v1/completions":
                self.send_error(404)
                return
            status, data = fake.complete(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            raw = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield fake, f"http://127.0.0.1:{httpd.server_address[1]}/v1", path, tok
    httpd.shutdown()


def prompt(tok) -> list[int]:
    from agentrl.models.chat import ChatFormat

    return ChatFormat(tok).prompt_ids([{"role": "user", "content": "Find the secret integer between 1 and 8."}], None)


def test_ids_and_logprobs_are_the_servers_samples(server):
    fake, url, path, tok = server
    fake.mode = "vllm"
    from agentrl.models.chat import ChatFormat

    stop = tuple(ChatFormat(tok).stop_token_ids)
    params = [SamplingParams(temperature=t, max_new_tokens=16, stop_token_ids=stop, seed=s) for t, s in ((1.0, 1), (0.7, 2), (1.3, 3))]
    engine = OpenAIEngine(url, model=path)

    async def run():
        return await asyncio.gather(*(engine.agenerate(prompt(tok), p) for p in params))

    gens = asyncio.run(run())
    direct = fake.engine.generate([prompt(tok)] * 3, params)  # same seeds: the same samples
    for g, d in zip(gens, direct):
        assert g.ids == d.ids and g.finish_reason == d.finish_reason
        assert g.logprobs == pytest.approx(d.logprobs, abs=1e-5)
    body = fake.requests[-1]
    assert body["prompt"] == prompt(tok) and body["logprobs"] == 0 and body["return_tokens_as_token_ids"] is True
    assert body["stop_token_ids"] == list(stop) and body["ignore_eos"] is True and body["temperature"] in (1.0, 0.7, 1.3)


def test_a_multi_turn_episode_runs_through_the_server(server, guess_env_id):
    from agentrl import envs
    from agentrl.models.chat import ChatFormat
    from agentrl.rollout.agent_loop import AgentLoop, EpisodeSpec

    fake, url, path, tok = server
    fake.mode = "token_ids"
    engine = OpenAIEngine(url, model=path)
    loop = AgentLoop([envs.make(guess_env_id, high=8, max_turns=3)], engine, ChatFormat(tok), SamplingParams(max_new_tokens=12), max_total_tokens=1024)
    (traj,) = asyncio.run(loop.collect([EpisodeSpec({"task_index": 0, "split": "test"}, seed=5)]))
    loop.close()
    assert not traj.failed, traj.failure_reason
    assert traj.num_turns >= 1 and traj.num_generated_tokens > 0
    assert all(v == 0 for v, m in zip(traj.policy_versions, traj.loss_mask) if m)


def test_parse_response_variants():
    """Pure parsing: ids from token_ids or "token:<id>" strings, a missing logprob as 0.0, and a
    stop token the server left out restored from stop_reason (or the first stop id)."""
    engine = OpenAIEngine("http://unused/v1", model="m")
    params = SamplingParams(stop_token_ids=(7, 9))

    def response(**choice):
        return {"choices": [{"finish_reason": "stop", "logprobs": {"tokens": ["token:5", "token:6"], "token_logprobs": [-0.5, None]}, **choice}]}

    g = engine.parse_response(response(stop_reason=9), params)
    assert (g.ids, g.logprobs, g.finish_reason) == ([5, 6, 9], [-0.5, 0.0, 0.0], "stop")
    g = engine.parse_response(response(stop_reason=None), params)
    assert g.ids == [5, 6, 7]
    g = engine.parse_response(response(token_ids=[5, 7], logprobs={"tokens": ["x", "y"], "token_logprobs": [-1.0, -2.0]}), params)
    assert (g.ids, g.logprobs) == ([5, 7], [-1.0, -2.0])  # ends on a stop id already: unchanged
    g = engine.parse_response(response(finish_reason="length"), params)
    assert (g.ids, g.finish_reason) == ([5, 6], "length")
    with pytest.raises(RuntimeError, match="2 logprobs for 3 tokens"):
        engine.parse_response(response(token_ids=[1, 2, 3]), params)
    with pytest.raises(RuntimeError, match="without choices"):
        engine.parse_response({"error": "x"}, params)


def test_errors_say_what_is_wrong(server):
    fake, url, path, tok = server
    params = SamplingParams(max_new_tokens=4, seed=0)
    fake.mode = "text_tokens"
    with pytest.raises(RuntimeError, match="returned token strings"):
        asyncio.run(OpenAIEngine(url, model=path).agenerate(prompt(tok), params))
    fake.mode = "error"
    n = len(fake.requests)
    with pytest.raises(RuntimeError, match="failed after 2 attempts"):
        asyncio.run(OpenAIEngine(url, model=path, max_retries=1).agenerate(prompt(tok), params))
    assert len(fake.requests) == n + 2  # retried once
    with pytest.raises(RuntimeError, match="failed after 1 attempts"):
        asyncio.run(OpenAIEngine("http://127.0.0.1:9/v1", model=path, max_retries=0, timeout_s=5).agenerate(prompt(tok), params))
