"""`specgen serve` end to end: the official `openai` client against a real server on 127.0.0.1."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any, Iterator

import pytest

from specgen.config import GenerationConfig, SamplingConfig
from specgen.generate import generate

from .conftest import RunningServer

pytestmark = pytest.mark.slow  # the real embedded model

MODEL = "smollm2-135m"
GREEDY = GenerationConfig(max_new_tokens=24, sampling=SamplingConfig(temperature=0.0))


def solo_ar(bundle: Any, prompt: str, raw: bool, max_tokens: int = 24) -> str:
    gen = GenerationConfig(max_new_tokens=max_tokens, sampling=SamplingConfig(temperature=0.0))
    return generate(bundle, prompt, method="ar", gen=gen, raw=raw).text


@pytest.mark.parametrize("method", ["ar", "pld"])
def test_completion_and_chat_equal_solo_ar(server: RunningServer, real_bundle: Any, method: str) -> None:
    c = server.client()
    prompt = "def fibonacci(n):\n    "
    r = c.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0, extra_body={"method": method})
    assert r.choices[0].text == solo_ar(real_bundle, prompt, raw=True)
    assert r.usage.completion_tokens == 24 and r.choices[0].finish_reason == "length"
    spec = r.model_extra["spec_decode"]
    assert spec["method"] == method and spec["num_accepted_tokens"] <= spec["num_draft_tokens"]
    question = "Name three colors of the rainbow."
    r = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": question}], max_tokens=24,
                                  temperature=0, extra_body={"method": method})
    assert r.choices[0].message.content == solo_ar(real_bundle, question, raw=False)
    assert r.choices[0].message.role == "assistant" and r.object == "chat.completion"


def test_streaming_chunks_join_to_the_answer(server: RunningServer, real_bundle: Any) -> None:
    c = server.client()
    question = "Write one sentence about the sea."
    chunks = list(c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": question}],
                                            max_tokens=24, temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks)
    assert text == solo_ar(real_bundle, question, raw=False)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length") and len(chunks) > 3
    prompt = "The capital of France is"
    parts = list(c.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0, stream=True))
    assert "".join(p.choices[0].text for p in parts) == solo_ar(real_bundle, prompt, raw=True, max_tokens=12)


def test_stop_strings_and_seeded_sampling(server: RunningServer) -> None:
    c = server.client()
    prompt = "1, 2, 3, 4, 5, 6,"
    r = c.completions.create(model=MODEL, prompt=prompt, max_tokens=30, temperature=0, stop=[" 9"])
    assert " 9" not in r.choices[0].text and r.choices[0].finish_reason == "stop"
    a = c.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=16, temperature=0.9, seed=7)
    b = c.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=16, temperature=0.9, seed=7,
                             extra_body={"method": "ar"})
    assert a.choices[0].text == b.choices[0].text  # seeded sampling: pld and ar give the same text


def test_greedy_answer_equals_the_cli(server: RunningServer) -> None:
    question = "What is 2 + 2?"
    proc = subprocess.run([sys.executable, "-m", "specgen.cli.main", "generate", question, "--method", "ar",
                           "--max-new-tokens", "24", "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    cli = json.loads(proc.stdout)["text"]
    r = server.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": question}],
                                                max_tokens=24, temperature=0)
    assert r.choices[0].message.content == cli


def _metrics(server: RunningServer) -> dict[str, float]:
    text = urllib.request.urlopen(server.url + "/metrics", timeout=30).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    assert all(re.match(r"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{.*\})?$", k) for k in out), "not Prometheus exposition"
    return out


@pytest.fixture()
def fresh_server(real_bundle: Any) -> Iterator[RunningServer]:
    """A server of its own, each request calibrated alone. The session server's shared calibration is
    taught by earlier tests' requests (the load test's prose, where prompt lookup's drafts fail); once
    it expects nothing, this test's repetitive code may draft nothing and leave the counters' sums at
    zero (seen once on a fresh clone, on a loaded machine)."""
    srv = RunningServer(real_bundle, method="pld", shared_calibration=False)
    yield srv
    srv.stop()


def test_models_health_and_metrics_add_up(fresh_server: RunningServer) -> None:
    server = fresh_server
    c = server.client()
    assert [m.id for m in c.models.list().data] == [MODEL]
    assert json.loads(urllib.request.urlopen(server.url + "/health", timeout=30).read()) == {"status": "ok"}
    before = _metrics(server)
    specs = []
    for prompt in ("a = [1, 2, 3]\nb = [1, 2, 3]\nc = ", "for i in range(10):\n    print(i)\nfor j in range(10):\n"):
        r = c.completions.create(model=MODEL, prompt=prompt, max_tokens=20, temperature=0, extra_body={"method": "pld"})
        specs.append(r.model_extra["spec_decode"])
    after = _metrics(server)
    lab = f'{{model_name="{MODEL}",method="pld"}}'
    for counter, key in (("spec_decode_num_drafts", "num_drafts"), ("spec_decode_num_draft_tokens", "num_draft_tokens"),
                         ("spec_decode_num_accepted_tokens", "num_accepted_tokens")):
        name = f"specgen:{counter}_total{lab}"
        assert after[name] - before.get(name, 0.0) == sum(s[key] for s in specs), counter
    pos0 = f'specgen:spec_decode_num_accepted_tokens_per_pos_total{{model_name="{MODEL}",method="pld",position="0"}}'
    assert after.get(pos0, 0.0) - before.get(pos0, 0.0) == sum((s["num_accepted_tokens_per_pos"] or [0])[0] for s in specs)
    count = f"specgen:e2e_request_latency_seconds_count{lab}"
    assert after[count] - before.get(count, 0.0) == 2
    assert sum(s["num_draft_tokens"] for s in specs) > 0  # repetitive code: prompt lookup drafts


def _post(server: RunningServer, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(server.url + path, data=body, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _body(**kw: Any) -> bytes:
    return json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 4, **kw}).encode()


BAD = [
    ("/v1/completions", b"{not json", 400, None),
    ("/v1/completions", b"[1, 2]", 400, None),
    ("/v1/completions", _body(model="gpt-4"), 404, "model"),
    ("/v1/completions", _body(method="beam-search"), 400, "method"),
    ("/v1/completions", _body(max_tokens=0), 400, "max_tokens"),
    ("/v1/completions", _body(max_tokens=10**6), 400, "max_tokens"),
    ("/v1/completions", _body(max_tokens="ten"), 400, "max_tokens"),
    ("/v1/completions", _body(temperature="hot"), 400, "temperature"),
    ("/v1/completions", _body(temperature=-1), 400, "temperature"),
    ("/v1/completions", _body(top_p=0), 400, "top_p"),
    ("/v1/completions", _body(seed=-3), 400, "seed"),
    ("/v1/completions", _body(stop=[""]), 400, "stop"),
    ("/v1/completions", _body(stream="yes"), 400, "stream"),
    ("/v1/completions", _body(n=2), 400, "n"),
    ("/v1/completions", _body(prompt=""), 400, "prompt"),
    ("/v1/completions", _body(prompt=12), 400, "prompt"),
    ("/v1/completions", _body(prompt="word " * 9000), 400, "prompt"),
    ("/v1/chat/completions", _body(), 400, "messages"),
    ("/v1/chat/completions", json.dumps({"model": MODEL, "messages": [{"role": "robot", "content": "x"}]}).encode(),
     400, "messages"),
    ("/v1/nothing-here", _body(), 404, None),
]


@pytest.mark.parametrize(("path", "body", "status", "param"), BAD, ids=[f"{i:02d}" for i in range(len(BAD))])
def test_bad_request_is_a_4xx_json_error_and_the_server_keeps_serving(server: RunningServer, path: str, body: bytes,
                                                                      status: int, param: str | None) -> None:
    code, data = _post(server, path, body)
    assert code == status, data
    err = data["error"]
    assert isinstance(err["message"], str) and err["message"] and "Traceback" not in err["message"]
    if param is not None:
        assert err["param"] == param, err
    r = server.client().completions.create(model=MODEL, prompt="Hello", max_tokens=2, temperature=0)
    assert r.usage.completion_tokens == 2


def test_oversized_body_is_413_before_it_is_read(server: RunningServer) -> None:
    """A body announced larger than the limit is refused from its Content-Length alone (the server
    does not read it); the connection then closes, and the next request is served."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.putrequest("POST", "/v1/completions")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(2 << 20))
    conn.endheaders(b'{"model": "')  # a start of the body; the rest never comes
    resp = conn.getresponse()
    assert resp.status == 413
    assert "larger than" in json.loads(resp.read())["error"]["message"]
    conn.close()
    r = server.client().completions.create(model=MODEL, prompt="Hello", max_tokens=2, temperature=0)
    assert r.usage.completion_tokens == 2


def test_api_key_is_required_when_set(real_bundle: Any) -> None:
    import openai

    srv = RunningServer(real_bundle, method="ar", api_key="s3cret")
    try:
        with pytest.raises(openai.AuthenticationError):
            srv.client(api_key="wrong").models.list()
        code, data = _post(srv, "/v1/completions", _body())
        assert code == 401 and data["error"]["code"] == "invalid_api_key"
        r = srv.client(api_key="s3cret").completions.create(model=MODEL, prompt="Hi", max_tokens=2, temperature=0)
        assert r.usage.completion_tokens == 2
    finally:
        srv.stop()


def test_non_loopback_bind_needs_an_api_key() -> None:
    from specgen.errors import SpecgenError
    from specgen.serve.config import ServeConfig

    with pytest.raises(SpecgenError, match="--api-key"):
        ServeConfig(host="0.0.0.0")
    assert ServeConfig(host="0.0.0.0", api_key="k").host == "0.0.0.0"
    assert ServeConfig(host="::1").host == "::1"
