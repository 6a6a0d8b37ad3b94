"""OpenAI-compatible generator against a tiny local HTTP server on 127.0.0.1 (prismatic.synth.generators)."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytest.importorskip("httpx", reason="the OpenAI-compatible back end needs the [http] extra")

from prismatic.config import GeneratorConfig  # noqa: E402
from prismatic.errors import ConfigError  # noqa: E402
from prismatic.synth.generators import (  # noqa: E402
    OpenAICompatibleGenerator,
    make_generator,
    request_seed,
)
from prismatic.synth.secrets import forget_secrets  # noqa: E402
from prismatic.synth.types import GeneratorError  # noqa: E402

KEY = "sk-test-9f8e7d6c5b4a3210"

Reply = tuple[int, object, dict]  # status, body (dict -> JSON, str -> raw), headers


def chat_ok(body: dict) -> Reply:
    n = body.get("n", 1)
    key = "message" if "messages" in body else "text"
    prompt = body["messages"][-1]["content"] if "messages" in body else body["prompt"]
    choices = []
    for i in range(n):
        text = f"reply {i} to {prompt} seed {body.get('seed')}"
        choices.append({"index": i, "finish_reason": "stop", key: {"role": "assistant", "content": text}})
        if key == "text":
            choices[-1]["text"] = text
    usage = {"prompt_tokens": 11, "completion_tokens": 10 * n, "total_tokens": 11 + 10 * n}
    return 200, {"id": "x", "object": "chat.completion", "choices": choices, "usage": usage}, {}


class Server:
    """Scripted OpenAI-compatible server: ``script(call_index, request)`` returns the reply."""

    def __init__(self, script: Callable[[int, dict], Reply], port: int = 0):
        self.script = script
        self.requests: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server API
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                req = {"path": self.path, "headers": dict(self.headers), "body": body}
                with server._lock:
                    idx = len(server.requests)
                    server.requests.append(req)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    status, payload, headers = server.script(idx, req)
                finally:
                    with server._lock:
                        server.in_flight -= 1
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(script, port=0):
        s = Server(script, port)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.close()


@pytest.fixture(autouse=True)
def _clean_secrets():
    yield
    forget_secrets()


def client(server: Server, sleeps: list | None = None, **kw) -> OpenAICompatibleGenerator:
    kw.setdefault("backoff_s", 0.01)
    kw.setdefault("timeout_s", 5.0)
    return OpenAICompatibleGenerator(
        server.base_url, "served-model", sleep=(sleeps.append if sleeps is not None else lambda s: None), **kw
    )


def test_success_with_auth_header_from_env_var(serve, monkeypatch):
    server = serve(lambda i, req: chat_ok(req["body"]))
    monkeypatch.setenv("MY_LLM_KEY", KEY)
    cfg = GeneratorConfig(backend="openai", base_url=server.base_url, model="served-model", api_key_env="MY_LLM_KEY")
    with make_generator(cfg) as gen:
        out = gen.generate(["What is 1+1?", "Name a prime."], n=2, temperature=0.75, top_p=0.95, max_tokens=32, seed=3)
    assert len(out) == 2 and all(len(r) == 2 for r in out)
    assert out[0][1].text == f"reply 1 to What is 1+1? seed {request_seed(3, 'What is 1+1?', 0)}"
    assert out[0][0].prompt_tokens == 11 and sum(g.completion_tokens for g in out[0]) == 20
    assert out[0][0].finish_reason == "stop" and out[0][0].ok
    assert len(server.requests) == 2
    req = sorted(server.requests, key=lambda r: r["body"]["messages"][-1]["content"])[0]
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["Authorization"] == f"Bearer {KEY}"
    body = req["body"]
    assert body["model"] == "served-model" and body["messages"] == [{"role": "user", "content": "Name a prime."}]
    assert (body["n"], body["temperature"], body["top_p"], body["max_tokens"]) == (2, 0.75, 0.95, 32)
    assert body["seed"] == request_seed(3, "Name a prime.", 0)
    assert KEY not in repr(gen) and gen.params()["api_key"] == "set"


def test_no_key_sends_no_auth_header_and_completions_endpoint(serve, monkeypatch):
    monkeypatch.delenv("PRISM_GENERATOR_API_KEY", raising=False)
    server = serve(lambda i, req: chat_ok(req["body"]))
    cfg = GeneratorConfig(backend="openai", base_url=server.base_url + "/", model="m", endpoint="completions")
    gen = make_generator(cfg)
    out = gen.generate(["2+2="], n=1, temperature=0.0, top_p=1.0, max_tokens=4, seed=0)
    assert out[0][0].text.startswith("reply 0 to 2+2=")
    req = server.requests[0]
    assert req["path"] == "/v1/completions" and req["body"]["prompt"] == "2+2=" and "messages" not in req["body"]
    assert "Authorization" not in req["headers"]
    assert gen.backend == "openai-completions" and gen.params()["api_key"] == "none"


def test_500_then_success_is_retried_with_backoff(serve):
    server = serve(lambda i, req: (500, "overloaded", {}) if i == 0 else chat_ok(req["body"]))
    sleeps: list[float] = []
    out = client(server, sleeps, max_retries=3).generate(["hi"], n=1, max_tokens=8)
    assert out[0][0].text.startswith("reply 0 to hi")
    assert len(server.requests) == 2 and len(sleeps) == 1 and 0 <= sleeps[0] <= 0.03


def test_429_honours_retry_after(serve):
    server = serve(lambda i, req: (429, "slow down", {"Retry-After": "0.05"}) if i < 2 else chat_ok(req["body"]))
    sleeps: list[float] = []
    client(server, sleeps, max_retries=3).generate(["hi"], n=1, max_tokens=8)
    assert sleeps == [0.05, 0.05]


def test_backoff_grows_and_is_capped():
    gen = OpenAICompatibleGenerator("http://127.0.0.1:9/v1", "m", backoff_s=1.0, max_backoff_s=5.0)
    waits = [[gen._wait(a, None) for _ in range(200)] for a in range(6)]
    assert all(0.1 <= w <= 5.0 for ws in waits for w in ws)
    assert max(waits[0]) <= 1.1 and max(waits[3]) > 2.0  # full jitter over [0, 2^attempt]


def test_persistent_failure_is_recorded_as_error_markers_without_the_key(serve, monkeypatch, caplog):
    # a hostile server echoes the Authorization header back in its error body; 503 after every retry means the
    # server is unavailable: the prompt's generations are error markers (the round records generator_error)
    server = serve(lambda i, req: (503, "upstream down; you sent " + req["headers"].get("Authorization", ""), {}))
    monkeypatch.setenv("PRISM_GENERATOR_API_KEY", KEY)
    cfg = GeneratorConfig(backend="openai", base_url=server.base_url, model="m", max_retries=2, backoff_s=0.0)
    gen = make_generator(cfg)
    caplog.set_level(logging.DEBUG)
    out = gen.generate(["boom"], n=2, max_tokens=8)
    assert len(server.requests) == 3  # one try and two retries
    assert [g.finish_reason for g in out[0]] == ["error", "error"] and not any(g.ok for g in out[0])
    err = out[0][0].error
    assert "failed after 3 attempts: HTTP 503" in err
    assert "retry 1/2" in caplog.text and "recorded as generator_error" in caplog.text
    for text in (err, caplog.text, repr(gen)):
        assert KEY not in text


def test_persistent_failure_error_carries_the_request_and_redacted_payload(serve, monkeypatch):
    server = serve(lambda i, req: (503, "upstream down; you sent " + req["headers"].get("Authorization", ""), {}))
    monkeypatch.setenv("PRISM_GENERATOR_API_KEY", KEY)
    cfg = GeneratorConfig(backend="openai", base_url=server.base_url, model="m", max_retries=1, backoff_s=0.0)
    gen = make_generator(cfg)
    with pytest.raises(GeneratorError) as ei:
        gen._post(gen._body("boom", 1, 1.0, 1.0, 8, 0))
    err = ei.value
    assert err.unavailable and err.attempts == 2 and err.status_code == 503
    assert err.request["messages"][-1]["content"] == "boom"
    assert "upstream down" in err.payload and "***" in err.payload
    for text in (str(err), repr(err.request), err.payload, err.hint):
        assert KEY not in text


def test_client_error_is_not_retried(serve):
    server = serve(lambda i, req: (400, '{"error": "max_tokens too large"}', {}))
    with pytest.raises(GeneratorError, match="refused the request: HTTP 400") as ei:
        client(server, max_retries=5).generate(["x"], n=1, max_tokens=8)
    assert len(server.requests) == 1 and ei.value.attempts == 1 and "max_tokens" in ei.value.payload


def test_skip_bad_requests_marks_only_the_failed_prompt(serve):
    def script(i, req):
        if req["body"]["messages"][-1]["content"] == "bad":
            return 500, "nope", {}
        return chat_ok(req["body"])

    server = serve(script)
    out = client(server, max_retries=1, skip_bad_requests=True).generate(["good", "bad", "also good"], n=2)
    assert [g.ok for g in out[0]] == [True, True] and [g.ok for g in out[2]] == [True, True]
    assert [g.finish_reason for g in out[1]] == ["error", "error"]
    assert "HTTP 500" in out[1][0].error and out[1][0].text == ""
    assert len(server.requests) == 4  # good, also good, bad twice


def test_timeout_is_retried_then_recorded_as_error_markers(serve):
    def slow(i, req):
        time.sleep(0.5)
        return chat_ok(req["body"])

    server = serve(slow)
    out = client(server, timeout_s=0.1, max_retries=1).generate(["x"], n=2)
    assert [g.finish_reason for g in out[0]] == ["error", "error"]
    assert "failed after 2 attempts: timed out" in out[0][0].error
    assert len(server.requests) == 2


def test_connection_refused_is_recorded_as_error_markers():
    gen = OpenAICompatibleGenerator("http://127.0.0.1:9/v1", "m", max_retries=1, sleep=lambda s: None)
    out = gen.generate(["x", "y"], n=3)
    assert [[g.finish_reason for g in row] for row in out] == [["error"] * 3] * 2
    assert all("connection error" in g.error for row in out for g in row)


@pytest.mark.parametrize(
    ("reply", "match"),
    [
        ((200, "not json", {}), "not JSON"),
        ((200, {"object": "error"}, {}), "'choices'"),
        ((200, {"choices": [{"index": 0, "message": {"content": "a"}}]}, {}), "returned 1 choices for n=2"),
    ],
)
def test_malformed_responses(serve, reply, match):
    server = serve(lambda i, req: reply)
    with pytest.raises(GeneratorError, match=match):
        client(server, max_retries=3).generate(["x"], n=2)
    assert len(server.requests) == 1


def test_one_request_per_sample_when_server_ignores_n(serve):
    server = serve(lambda i, req: chat_ok(req["body"]))
    out = client(server, supports_n=False).generate(["p"], n=3, seed=5)
    assert len(out[0]) == 3 and len(server.requests) == 3
    seeds = sorted(r["body"]["seed"] for r in server.requests)
    assert seeds == sorted(request_seed(5, "p", j) for j in range(3)) and len(set(seeds)) == 3
    assert all(r["body"]["n"] == 1 for r in server.requests)


def test_concurrency_limit(serve):
    def slow(i, req):
        time.sleep(0.15)
        return chat_ok(req["body"])

    server = serve(slow)
    t0 = time.perf_counter()
    out = client(server, concurrency=2).generate([f"p{i}" for i in range(6)], n=1)
    elapsed = time.perf_counter() - t0
    assert [o[0].text.split(" seed")[0] for o in out] == [f"reply 0 to p{i}" for i in range(6)]  # prompt order kept
    assert server.max_in_flight == 2
    assert elapsed >= 0.4  # 6 requests, 2 at a time, 0.15 s each


def test_missing_base_url_is_a_clear_error():
    with pytest.raises(ConfigError, match="base_url"):
        make_generator(GeneratorConfig(backend="openai"))


def echo_auth(body: dict, headers: dict) -> Reply:
    """A hostile server: every completion repeats the Authorization header it received."""
    status, data, extra = chat_ok(body)
    for c in data["choices"]:
        c["message"]["content"] = "Problem 1: what is 2+2? (debug: " + headers.get("Authorization", "") + ")"
    return status, data, extra


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_echoed_key_never_reaches_texts_the_request_cache_or_logs(serve, monkeypatch, tmp_path, caplog):
    from prismatic.synth.cache import SQLiteRequestCache

    server = serve(lambda i, req: echo_auth(req["body"], req["headers"]))
    monkeypatch.setenv("PRISM_GENERATOR_API_KEY", KEY)
    cfg = GeneratorConfig(backend="openai", base_url=server.base_url, model="m", backoff_s=0.0)
    gen = make_generator(cfg, SQLiteRequestCache(tmp_path / "cache"))
    caplog.set_level(logging.DEBUG)
    first = gen.generate(["a", "b"], n=2, max_tokens=16, seed=1)
    assert server.requests[0]["headers"]["Authorization"] == f"Bearer {KEY}"  # the key was really sent
    texts = [g.text for row in first for g in row]
    assert texts == ["Problem 1: what is 2+2? (debug: Bearer ***)"] * 4
    again = gen.generate(["a", "b"], n=2, max_tokens=16, seed=1)  # answered from the cache: still masked
    assert len(server.requests) == 2 and [g.text for row in again for g in row] == texts
    stored = b"".join(f.read_bytes() for f in (tmp_path / "cache").rglob("*") if f.is_file())
    assert b"Bearer ***" in stored and KEY.encode() not in stored
    assert KEY not in caplog.text


def test_a_refusing_server_gives_error_markers_that_are_not_cached_and_a_rerun_resumes(serve, tmp_path):
    from prismatic.synth.cache import SQLiteRequestCache

    port = free_port()
    cfg = GeneratorConfig(
        backend="openai", base_url=f"http://127.0.0.1:{port}/v1", model="m", max_retries=1, backoff_s=0.0
    )
    gen = make_generator(cfg, SQLiteRequestCache(tmp_path / "cache"))
    down = gen.generate(["p1", "p2"], n=2, max_tokens=8, seed=4)  # nothing listens: connection refused
    assert [[g.finish_reason for g in row] for row in down] == [["error", "error"]] * 2
    assert all("connection error" in g.error for row in down for g in row)
    server = serve(lambda i, req: chat_ok(req["body"]), port=port)  # the server comes up; the round is re-run
    up = gen.generate(["p1", "p2"], n=2, max_tokens=8, seed=4)
    assert all(g.ok for row in up for g in row) and len(server.requests) == 2  # asked again: errors were not cached
    assert up[0][0].text.startswith("reply 0 to p1")
    assert gen.generate(["p1", "p2"], n=2, max_tokens=8, seed=4) == up and len(server.requests) == 2
