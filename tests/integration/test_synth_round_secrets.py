"""A synthesis round against local OpenAI-compatible servers: one that echoes the API key, one that refuses.

Real Spark + Delta + MLflow, the tiny proxy, and the real HTTP back end (``synth.generator.backend=openai``); the
server answers in the scripted arithmetic style of ``synth_helpers`` so that candidates are accepted and the
echoed key would reach every place a round writes to.
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from synth_helpers import arithmetic_script, seed_pool, tiny_overrides

from prismatic.config import load_config
from prismatic.ingest import ingest
from prismatic.synth.loop import synthesize
from prismatic.synth.secrets import forget_secrets
from prismatic.synth.types import Reason, RoundStatus
from prismatic.tables import open_store

pytest.importorskip("httpx", reason="the OpenAI-compatible back end needs the [http] extra")
pytestmark = pytest.mark.spark

KEY = "sk-echo-7c1d9e04b2a8f6350e1d"


def serve(port: int = 0, echo: bool = True) -> ThreadingHTTPServer:
    """Chat completions in the arithmetic script's style; with ``echo`` every answer repeats the auth header."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server API
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            prompt = body["messages"][-1]["content"]
            tail = f" [auth: {self.headers.get('Authorization', '')}]" if echo else ""
            texts = [arithmetic_script(prompt, j, body.get("seed", 0) + j) + tail for j in range(body.get("n", 1))]
            data = json.dumps(
                {
                    "choices": [
                        {"index": j, "finish_reason": "stop", "message": {"role": "assistant", "content": t}}
                        for j, t in enumerate(texts)
                    ],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 12 * len(texts)},
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    return httpd


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_overrides(root: Path, model: Path, port: int) -> list[str]:
    return tiny_overrides(root, model) + [
        "synth.generator.backend=openai",
        f"synth.generator.base_url=http://127.0.0.1:{port}/v1",
        "synth.generator.model=served",
        "synth.generator.max_retries=0",
        "synth.generator.backoff_s=0",
        "synth.generator.timeout_s=10",
    ]


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("PRISM_GENERATOR_API_KEY", KEY)
    yield
    forget_secrets()


def test_an_echoed_key_reaches_no_table_cache_log_or_mlflow_file(tmp_path, spark, tiny_model, caplog):
    httpd = serve()
    try:
        root = tmp_path / "lake"
        settings = load_config(overrides=http_overrides(root, tiny_model, httpd.server_address[1]))
        store = open_store(settings, spark)
        ingest(store, [str(seed_pool(tmp_path))], "seed", "math", settings)
        (report,) = synthesize(store, settings, rounds=1)
    finally:
        httpd.shutdown()
        httpd.server_close()
    cands = store.read_arrow("synth_candidates").to_pylist()
    assert report.generated == len(cands) > 0
    # the echo went through, masked, to every place a round writes: candidates (table, Delta log stats), the
    # request cache, the MLflow artifact; accepted samples are built from the same masked texts
    assert any("Bearer ***" in (c["prompt"] or "") for c in cands)
    for table in ("samples", "synth_candidates", "rounds"):
        assert KEY not in json.dumps(store.read_arrow(table).to_pylist(), default=str)
    files = [p for p in root.rglob("*") if p.is_file()]
    masked = {p.relative_to(root).parts[0] + "/" + p.name for p in files if b"Bearer ***" in p.read_bytes()}
    assert any(name.startswith("synth_cache/requests.sqlite") for name in masked)  # the db or its WAL
    assert "mlflow/candidates_sample.json" in masked
    assert any(name.startswith("tables/") and name.endswith(".json") for name in masked)  # a Delta log entry
    assert not [p for p in files if KEY.encode() in p.read_bytes()]
    assert KEY not in caplog.text


def refused_round(tmp_path, spark, tiny_model):
    """One round against a port nothing listens on (every request refused); returns (settings, store, report)."""
    port = free_port()
    settings = load_config(overrides=http_overrides(tmp_path / "lake", tiny_model, port))
    store = open_store(settings, spark)
    ingest(store, [str(seed_pool(tmp_path))], "seed", "math", settings)
    (report,) = synthesize(store, settings, rounds=1)
    return settings, store, report, port


def test_a_refusing_server_records_one_generator_error_row_per_call(tmp_path, spark, tiny_model):
    settings, store, down, _ = refused_round(tmp_path, spark, tiny_model)
    cands = store.read_arrow("synth_candidates").to_pylist()
    assert len(cands) == settings.synth.calls_per_round
    assert {c["reason"] for c in cands} == {Reason.GENERATOR_ERROR}
    assert all("connection error" in c["detail"] for c in cands)
    assert down.reasons == {Reason.GENERATOR_ERROR: settings.synth.calls_per_round}
    assert not [s for s in store.read_arrow("samples").to_pylist() if s["origin"] == "synthetic"]


def test_a_round_whose_generator_was_down_is_run_again(tmp_path, spark, tiny_model):
    settings, store, _, port = refused_round(tmp_path, spark, tiny_model)
    row = {r["round"]: r for r in store.read_arrow("rounds").to_pylist()}[1]
    assert row["status"] != RoundStatus.DONE  # not finished: the next call runs it again
    httpd = serve(port, echo=False)  # the server is back
    try:
        (again,) = synthesize(store, settings, rounds=1)
    finally:
        httpd.shutdown()
        httpd.server_close()
    # the failed calls were asked again and answered (what the verifier keeps of the answers is not this test's)
    assert again.round == 1 and again.reasons.get(Reason.GENERATOR_ERROR, 0) == 0 and again.generated > 0
    rows = store.read_arrow("synth_candidates").to_pylist()
    assert not [c for c in rows if c["reason"] == Reason.GENERATOR_ERROR]  # the failed calls' rows were replaced
    assert {r["round"]: r for r in store.read_arrow("rounds").to_pylist()}[1]["status"] == RoundStatus.DONE
