"""Default-deny: every request an SDK sends is classified — an LLM call (priced), a free request
(listed), or an unknown endpoint (blocked in enforce mode) — whatever path spelling reaches the
choke point; and a guard that cannot be built refuses every call instead of letting it through."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import boto3
import openai
import pytest

from agentguard_otel import AgentGuardBlocked, AgentGuardInstrumentor
from agentguard_otel.errors import ConfigError
from tests.conftest import Guarded, GuardFactory
from tests.servers.anthropic_server import LocalAnthropicServer
from tests.servers.bedrock_server import LocalBedrockServer

MESSAGES = [{"role": "user", "content": "hi"}]
BLOCK_ALL = {"version": 1, "id": "deny", "mode": "enforce",
             "rules": [{"id": "all", "caps": [{"limit_usd": "0.000000001", "window": "call", "action": "block",
                                                "reason": "nothing passes"}]}]}
ALLOW_UNKNOWN = {**BLOCK_ALL, "unknown_endpoint": "allow"}


def _client(server: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)


def _decisions(g: Guarded) -> list[dict[str, Any]]:
    return [r for r in g.receipts() if r["kind"] == "decision"]


UNPRICED_OPENAI: dict[str, Callable[[openai.OpenAI], Any]] = {
    # images, speech and transcription are priced now (tests/integration/test_media_pricing.py)
    "images.create_variation": lambda c: c.images.create_variation(model="dall-e-2", image=("a.png", b"png")),
    "batches.create": lambda c: c.batches.create(input_file_id="file-1", endpoint="/v1/chat/completions",
                                                 completion_window="24h"),
    "fine_tuning.jobs.create": lambda c: c.fine_tuning.jobs.create(model="gpt-4o-mini", training_file="file-1"),
    "beta.threads.runs.create": lambda c: c.beta.threads.runs.create(thread_id="thread_1", assistant_id="asst_1"),
    "videos.create": lambda c: c.videos.create(model="sora-2", prompt="a cat"),
}


@pytest.mark.parametrize("name", list(UNPRICED_OPENAI))
def test_an_openai_endpoint_no_table_prices_is_blocked_before_it_leaves(name: str, server: Any,
                                                                        guarded: GuardFactory) -> None:
    g = guarded(BLOCK_ALL, ledger="memory://")
    with pytest.raises(AgentGuardBlocked) as blocked:
        UNPRICED_OPENAI[name](_client(server))
    assert "is not guarded (unknown_endpoint: block)" in blocked.value.reason
    assert server.requests == []
    (decision,) = _decisions(g)
    assert (decision["action"], decision["unknown_endpoint"]) == ("block", True)
    assert blocked.value.receipt_hash == decision["hash"]


def test_unknown_endpoint_allow_lets_it_through_with_a_degraded_receipt(server: Any, guarded: GuardFactory) -> None:
    g = guarded(ALLOW_UNKNOWN, ledger="memory://")
    with pytest.raises(openai.APIStatusError):  # the local server has no image variations endpoint
        UNPRICED_OPENAI["images.create_variation"](_client(server))
    assert [r.path for r in server.requests] == ["/v1/images/variations"]
    (decision,) = _decisions(g)
    assert (decision["action"], decision["degraded"]) == ("allow", True)


def test_free_requests_pass_without_a_decision(server: Any, guarded: GuardFactory) -> None:
    g = guarded(BLOCK_ALL, ledger="memory://")
    with pytest.raises(openai.APIStatusError):
        _client(server).models.list()  # a GET: free, whatever the server answers
    with pytest.raises(openai.APIStatusError):
        _client(server).moderations.create(input="hello")  # listed free
    assert len(server.requests) == 2
    assert _decisions(g) == []


SPELLINGS = {
    "no leading slash": lambda c: c.post("chat/completions", body={"model": "gpt-4o-mini", "messages": MESSAGES},
                                          cast_to=object),
    "trailing slash": lambda c: c.post("/chat/completions/", body={"model": "gpt-4o-mini", "messages": MESSAGES},
                                       cast_to=object),
    "percent-encoded": lambda c: c.post("/chat/%63ompletions", body={"model": "gpt-4o-mini", "messages": MESSAGES},
                                        cast_to=object),
    "doubled slashes": lambda c: c.post("/chat//completions", body={"model": "gpt-4o-mini", "messages": MESSAGES},
                                        cast_to=object),
    "dot segments": lambda c: c.post("/models/../chat/completions",
                                     body={"model": "gpt-4o-mini", "messages": MESSAGES}, cast_to=object),
    "query string": lambda c: c.post("/chat/completions?x=1", body={"model": "gpt-4o-mini", "messages": MESSAGES},
                                     cast_to=object),
    "absolute URL": lambda c: c.post(f"{c.base_url}chat/completions",
                                     body={"model": "gpt-4o-mini", "messages": MESSAGES}, cast_to=object),
    "raw content bytes": lambda c: c.post(
        "/chat/completions", cast_to=object, options={"headers": {"Content-Type": "application/json"}},
        content=json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES}).encode()),
    "network-path reference": lambda c: c.post("//chat/completions",
                                               body={"model": "gpt-4o-mini", "messages": MESSAGES}, cast_to=object),
}


@pytest.mark.parametrize("spelling", list(SPELLINGS))
def test_no_spelling_of_an_llm_path_slips_past(spelling: str, server: Any, guarded: GuardFactory) -> None:
    g = guarded(BLOCK_ALL, ledger="memory://")
    with pytest.raises(AgentGuardBlocked):
        SPELLINGS[spelling](_client(server))
    assert server.requests == []
    (decision,) = _decisions(g)
    assert decision["action"] == "block"


def test_an_llm_body_the_guard_cannot_read_is_unknown(server: Any, guarded: GuardFactory) -> None:
    guarded(BLOCK_ALL, ledger="memory://")
    with pytest.raises(AgentGuardBlocked) as blocked:
        _client(server).post("/chat/completions", cast_to=object, content=iter([b"{}"]))
    assert "with a body the guard cannot read" in blocked.value.reason
    assert server.requests == []


def test_anthropic_paths_and_batches(guarded: GuardFactory) -> None:
    g = guarded(BLOCK_ALL, ledger="memory://")
    with LocalAnthropicServer() as srv:
        client = anthropic.Anthropic(base_url=srv.base_url, api_key="sk-ant", max_retries=0)
        with pytest.raises(AgentGuardBlocked):
            client.post("v1/messages", cast_to=object,
                        body={"model": "claude-haiku-4-5", "max_tokens": 16, "messages": MESSAGES})
        with pytest.raises(AgentGuardBlocked) as batch:
            client.messages.batches.create(requests=[{"custom_id": "a", "params": {
                "model": "claude-haiku-4-5", "max_tokens": 16, "messages": MESSAGES}}])
        assert "/v1/messages/batches is not guarded" in batch.value.reason
        assert client.messages.count_tokens(model="claude-haiku-4-5", messages=MESSAGES).input_tokens > 0
        assert [r.path for r in srv.requests] == ["/v1/messages/count_tokens"]
    assert [d["action"] for d in _decisions(g)] == ["block", "block"]


BEDROCK_UNPRICED = {
    ("bedrock-agent-runtime", "retrieve_and_generate"): {
        "input": {"text": "hi"}, "retrieveAndGenerateConfiguration": {
            "type": "KNOWLEDGE_BASE", "knowledgeBaseConfiguration": {
                "knowledgeBaseId": "KB12345678", "modelArn": "arn:aws:bedrock:us-east-1::foundation-model/x"}}},
    ("bedrock-runtime", "start_async_invoke"): {
        "modelId": "amazon.nova-reel-v1:0", "modelInput": {},
        "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": "s3://bucket/out"}}},
    ("bedrock", "create_model_invocation_job"): {
        "jobName": "job", "roleArn": "arn:aws:iam::123456789012:role/r", "modelId": "anthropic.claude-3-haiku",
        "inputDataConfig": {"s3InputDataConfig": {"s3Uri": "s3://bucket/in"}},
        "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": "s3://bucket/out"}}},
}


@pytest.mark.parametrize(("service", "operation"), list(BEDROCK_UNPRICED))
def test_bedrock_operations_no_table_prices_are_blocked(service: str, operation: str, guarded: GuardFactory) -> None:
    guarded(BLOCK_ALL, ledger="memory://")
    with LocalBedrockServer() as srv:
        client = boto3.client(service, endpoint_url=srv.url, region_name="us-east-1",
                              aws_access_key_id="test", aws_secret_access_key="test")
        with pytest.raises(AgentGuardBlocked) as blocked:
            getattr(client, operation)(**BEDROCK_UNPRICED[(service, operation)])
        assert f"{service} " in blocked.value.reason
        assert srv.requests == []


def test_a_second_instrument_with_other_settings_raises(tmp_path: Path) -> None:
    first = {"policy": {"version": 1, "mode": "shadow"}, "ledger": "memory://",
             "signing_key": str(tmp_path / "k"), "receipts": str(tmp_path / "r")}
    instrumentor = AgentGuardInstrumentor()
    instrumentor.instrument(**first)
    try:
        instrumentor.instrument(**first)  # the same settings: nothing to do
        with pytest.raises(ConfigError, match="already instrumented with other settings"):
            AgentGuardInstrumentor().instrument(**{**first, "policy": BLOCK_ALL})
    finally:
        instrumentor.uninstrument()


APP = """
import openai
from agentguard_otel import AgentGuardBlocked
client = openai.OpenAI(max_retries=0)
try:
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
except AgentGuardBlocked as exc:
    print("BLOCKED:", exc.reason)
"""


@pytest.mark.parametrize("setting", ["policy typo", "ledger scheme", "missing policy file"])
def test_a_zero_code_misconfiguration_refuses_every_call(setting: str, server: Any, tmp_path: Path) -> None:
    bad_policy = tmp_path / "policy.yaml"
    bad_policy.write_text("version: 1\nrules:\n  - id: a\n    caps: [{limit_usd: 1, windw: day}]\n")
    env = {**os.environ, "OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "sk-x",
           "AGENTGUARD_HOME": str(tmp_path / "home"), "OTEL_TRACES_EXPORTER": "none",
           "OTEL_METRICS_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none"}
    env.update({"policy typo": {"AGENTGUARD_POLICY": str(bad_policy)},
                "ledger scheme": {"AGENTGUARD_LEDGER": "ftp://x"},
                "missing policy file": {"AGENTGUARD_POLICY": str(tmp_path / "nope.yaml")}}[setting])
    app = tmp_path / "app.py"
    app.write_text(APP)
    run = subprocess.run([str(Path(sys.executable).parent / "opentelemetry-instrument"), sys.executable, str(app)],
                         env=env, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    assert "BLOCKED: the guard is not configured" in run.stdout
    said = [line for line in run.stderr.splitlines() if "not configured" in line]
    assert len(said) == 1 and said[0].startswith("agentguard: the guard is not configured (")
    assert "Traceback" not in run.stderr
    assert server.requests == []


ONLY_MINI = {"version": 1, "id": "mini", "mode": "enforce", "azure_deployments": {"prod-mini": "gpt-4o-mini"},
             "rules": [{"id": "all", "models": {"allow": ["gpt-4o-mini"]}}]}


def _azure(server: Any, deployment: str | None) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(azure_endpoint=server.url, azure_deployment=deployment, api_key="az-key",
                              api_version="2024-10-21", max_retries=0)


def test_an_azure_deployment_is_allow_listed_as_the_model_it_serves(server: Any, guarded: GuardFactory) -> None:
    g = guarded(ONLY_MINI, ledger="memory://")
    with pytest.raises(AgentGuardBlocked) as blocked:  # the body says gpt-4o-mini; the deployment decides
        _azure(server, "o1-pro").chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert "model o1-pro is not allowed" in blocked.value.reason
    with pytest.raises(AgentGuardBlocked):  # no azure_deployment: the body's model names the deployment
        _azure(server, None).chat.completions.create(model="o1-pro", messages=MESSAGES)
    assert server.requests == []
    with pytest.raises(openai.APIStatusError):  # a mapped deployment passes (the local server has no Azure routes)
        _azure(server, "prod-mini").chat.completions.create(model="anything", messages=MESSAGES)
    decisions = _decisions(g)
    assert [(d["deployment"], d["model_requested"], d["action"]) for d in decisions] == [
        ("o1-pro", "o1-pro", "block"), ("o1-pro", "o1-pro", "block"), ("prod-mini", "gpt-4o-mini", "allow")]


@pytest.mark.parametrize("mode", ["enforce", "shadow"])
def test_websocket_sessions_are_unknown_endpoints(mode: str, guarded: GuardFactory) -> None:
    g = guarded({**BLOCK_ALL, "mode": mode}, ledger="memory://")
    client = openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="sk", max_retries=0)  # nothing listens
    opened: list[Callable[[], Any]] = [client.responses.connect, lambda: client.realtime.connect(model="gpt-realtime")]
    for connect in opened:
        if mode == "enforce":
            with pytest.raises(AgentGuardBlocked, match="WebSocket session"), connect():
                pass
        else:
            with pytest.raises(OSError), connect():  # recorded, then really attempted
                pass
    assert [(d["action"], d["unknown_endpoint"]) for d in _decisions(g)] == [
        ("block" if mode == "enforce" else "allow", True)] * 2


def _raw_calls(url: str) -> dict[str, Callable[[], Any]]:
    import urllib.request

    import httpx
    import requests

    body = {"model": "gpt-4o-mini", "messages": MESSAGES}
    return {
        "httpx": lambda: httpx.post(f"{url}/chat/completions", json=body, timeout=5),
        "requests": lambda: requests.post(f"{url}/chat/completions", json=body, timeout=5),
        "urllib": lambda: urllib.request.urlopen(urllib.request.Request(
            f"{url}/chat/completions", data=json.dumps(body).encode(), method="POST"), timeout=5),
    }


@pytest.mark.parametrize("client", ["httpx", "requests", "urllib"])
def test_http_to_an_llm_host_outside_every_sdk_is_refused(client: str, server: Any, guarded: GuardFactory) -> None:
    g = guarded(BLOCK_ALL, ledger="memory://", guarded_hosts=["127.0.0.1"])  # the local server stands for the host
    # httpx is guarded through the adapter of the wire format; the others are unknown endpoints
    reason = "nothing passes" if client == "httpx" else "sent outside a guarded SDK"
    with pytest.raises(AgentGuardBlocked, match=reason):
        _raw_calls(server.base_url)[client]()
    assert server.requests == []
    with pytest.raises(AgentGuardBlocked, match="nothing passes"):  # through the SDK: decided as usual
        _client(server).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert [d["action"] for d in _decisions(g)] == ["block", "block"]


def test_the_sdk_s_own_free_requests_pass_the_tripwire(server: Any, guarded: GuardFactory) -> None:
    guarded(BLOCK_ALL, ledger="memory://", guarded_hosts=["127.0.0.1"])
    with pytest.raises(openai.NotFoundError):  # reached the server: the local one lists no models
        _client(server).models.list()
    assert len(server.requests) == 1
