"""Every operation of the installed SDKs is classified: an LLM call the guard prices, a free request,
or a paid one it refuses (listed, so the README can say so). A new SDK release with an operation in
none of these fails here — at run time such an operation is an unknown endpoint, refused in enforce
mode, never passed."""

from __future__ import annotations

import importlib
import pathlib
import re

import botocore.session
import pytest

from agentguard_otel.providers import bedrock
from agentguard_otel.providers.anthropic import AnthropicAdapter
from agentguard_otel.providers.base import ends_with, matches, normalise_path
from agentguard_otel.providers.openai import OpenAIAdapter
from agentguard_otel.providers.stainless import StainlessAdapter

# Every request a resource method makes: ``self._post("/path", ...)`` or with ``path_template(...)``.
_CALL = re.compile(r'self\._(post|get|delete|patch|put|get_api_list)\(\s*(?:path_template\(\s*)?f?"([^"]+)"', re.S)


def _sdk_requests(package: str) -> set[tuple[str, str]]:
    root = pathlib.Path(importlib.import_module(package).__file__ or "").parent / "resources"
    found = {(m.group(1), normalise_path(re.sub(r"\{[^}]*\}", "x", m.group(2))))
             for path in root.rglob("*.py") for m in _CALL.finditer(path.read_text())}
    assert len(found) > 50, f"no resource methods found under {root}: the scan is broken"
    return found


def _classify(adapter: StainlessAdapter, method: str, path: str) -> str:
    if method in ("get", "get_api_list", "delete"):
        return "free"
    if method != "post":
        return "unknown"
    if any(ends_with(path, p) for p in adapter.endpoints):
        return "llm"
    if any(matches(path, p) for p in adapter.free):
        return "free"
    if any(matches(path, p) for p in adapter.refused):
        return "refused"
    return "unclassified"


@pytest.mark.parametrize(("package", "adapter"), [("openai", OpenAIAdapter), ("anthropic", AnthropicAdapter)])
def test_every_stainless_operation_is_classified(package: str, adapter: type[StainlessAdapter]) -> None:
    instance = adapter.__new__(adapter)  # the tables are class attributes; no SDK client needed
    kinds = {(method, path): _classify(instance, method, path) for method, path in _sdk_requests(package)}
    assert [key for key, kind in kinds.items() if kind == "unclassified"] == []
    assert {"llm", "free", "refused"} <= set(kinds.values())


def test_openai_media_is_priced_and_the_rest_stays_refused() -> None:
    """Images, speech, transcription and translation are LLM calls the guard prices; image
    variations (DALL-E 2 only), batches, fine-tuning, assistants runs and videos stay refused."""
    adapter = OpenAIAdapter.__new__(OpenAIAdapter)
    priced = ["/images/generations", "/images/edits", "/audio/speech", "/audio/transcriptions", "/audio/translations"]
    refused = ["/images/variations", "/batches", "/fine_tuning/jobs", "/threads/x/runs", "/videos"]
    assert {path: _classify(adapter, "post", path) for path in priced + refused} == \
        {**dict.fromkeys(priced, "llm"), **dict.fromkeys(refused, "refused")}


@pytest.mark.parametrize("service", ["bedrock-runtime", "bedrock-agent-runtime", "bedrock"])
def test_every_bedrock_operation_is_classified(service: str) -> None:
    operations = botocore.session.get_session().get_service_model(service).operation_names
    unclassified = [
        name for name in operations
        if not (name in bedrock.OPERATIONS or name.startswith(bedrock._FREE_PREFIXES)
                or name in bedrock.FREE_OPERATIONS or name in bedrock.REFUSED_OPERATIONS
                or (service == "bedrock" and name.startswith(bedrock.REFUSED_CONTROL_PREFIXES)))]
    assert unclassified == []
