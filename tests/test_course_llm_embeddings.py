"""The course LLM's /v1/embeddings, tested the way students' code uses it: the real `openai` client.

Vectors are deterministic per (model, text, dimensions) and recomputable with
labkit.llm.embeddings.vector; a rule with endpoint="embeddings" can take one model down for
matching inputs (fail_always) while another model answers; every request is in the ledger with
the origin header it carried, like a chat call.
"""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

import httpx
import openai
import pytest

from labkit import attribution
from labkit.llm import embeddings
from labkit.services import CourseLLM

RULES_TOML = """
[[rules]]
name = "primary-down"
endpoint = "embeddings"
model = "text-embedding-3-small"
match = "\\\\[down\\\\]"
fail_always = true
fail_status = 503

[[rules]]
name = "flaky-once"
endpoint = "embeddings"
match = "\\\\[flaky\\\\]"
fail_first = 1
fail_status = 500

[[rules]]
name = "chat-only"
match = "\\\\[down\\\\]"
reply = "chat rules do not answer embeddings"
"""


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llm-embeddings")
    rules = folder / "rules.toml"
    rules.write_text(RULES_TOML)
    server = CourseLLM(folder / "state", rules_files=[rules])
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def key() -> str:
    return f"lab-embeddings-{uuid.uuid4().hex[:8]}"


def client(llm: CourseLLM, key: str, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=llm.base_url, api_key=key, max_retries=0, default_headers=headers or None)


def test_vectors_are_deterministic_per_model_and_text(llm, key):
    """Given two texts and two models, When each is embedded twice (base64, the client's default, and float),
    Then the same (model, text) gives the same unit-length vector, equal to embeddings.vector, and another
    model or text gives another one."""
    api = client(llm, key)
    first = api.embeddings.create(model="text-embedding-3-small", input="a contract of three pages")
    again = api.embeddings.create(model="text-embedding-3-small", input="a contract of three pages",
                                  encoding_format="float")
    other_model = api.embeddings.create(model="text-embedding-3-large", input="a contract of three pages")
    assert first.data[0].embedding == again.data[0].embedding
    assert first.data[0].embedding == embeddings.vector("text-embedding-3-small", "a contract of three pages")
    assert len(first.data[0].embedding) == embeddings.DEFAULT_DIMENSIONS
    assert math.isclose(math.sqrt(sum(x * x for x in first.data[0].embedding)), 1.0, rel_tol=1e-5)
    assert other_model.data[0].embedding != first.data[0].embedding
    assert first.model == "text-embedding-3-small" and first.object == "list"
    assert first.usage.prompt_tokens > 0 and first.usage.total_tokens == first.usage.prompt_tokens


def test_a_list_of_inputs_gets_one_vector_each_with_the_dimensions_asked(llm, key):
    """Given three texts in one request and dimensions=8, Then three 8-dimension vectors come back, in order."""
    texts = ["one", "two words", "three little words"]
    answer = client(llm, key).embeddings.create(model="m", input=texts, dimensions=8)
    assert [d.index for d in answer.data] == [0, 1, 2]
    assert [d.embedding for d in answer.data] == [embeddings.vector("m", t, 8) for t in texts]


def test_a_rule_takes_one_model_down_for_matching_inputs_only(llm, key):
    """Given the rule primary-down (text-embedding-3-small, inputs tagged [down], fail_always, 503),
    When a tagged input is sent three times to that model, once to another model, and an untagged input once,
    Then the three get 503 (every time, not only the first), the other model and the untagged input answer."""
    api = client(llm, key)
    for _ in range(3):
        with pytest.raises(openai.InternalServerError) as err:
            api.embeddings.create(model="text-embedding-3-small", input="[down] doc 7")
        assert err.value.status_code == 503
    assert api.embeddings.create(model="text-embedding-3-large", input="[down] doc 7").data
    assert api.embeddings.create(model="text-embedding-3-small", input="doc 8").data
    entries = [e for e in llm.ledger().entries(caller=key) if e.endpoint == "embeddings"]
    assert [(e.model, e.status, e.rule, e.fault) for e in entries] == [
        ("text-embedding-3-small", 503, "primary-down", "fail_always")] * 3 + [
        ("text-embedding-3-large", 200, "fallback", None), ("text-embedding-3-small", 200, "fallback", None)]
    assert json.loads(entries[-1].reply) == {"vectors": 1, "dimensions": embeddings.DEFAULT_DIMENSIONS}


def test_fail_first_counts_per_caller_for_embeddings_too(llm, key):
    """Given flaky-once (fail_first=1), Then each caller's first tagged request fails and its second answers."""
    api = client(llm, key)
    with pytest.raises(openai.InternalServerError):
        api.embeddings.create(model="m", input="[flaky] x")
    assert api.embeddings.create(model="m", input="[flaky] x").data
    other = client(llm, f"{key}-other")
    with pytest.raises(openai.InternalServerError):
        other.embeddings.create(model="m", input="[flaky] x")


def test_the_ledger_ties_each_request_to_its_origin(llm, key):
    """Given a request carrying an X-Lab-Origin header (as every check-started program's requests do),
    Then its ledger entry holds that origin, with the activity attempt that sent it."""
    origin = {"pid": 4242, "program": "lab.worker", "node": None, "thread": None,
              "activity": {"type": "embed_document", "id": "3", "attempt": 2, "workflow_id": "ingest-1",
                           "run_id": "r"}}
    client(llm, key, **{attribution.HEADER: json.dumps(origin)}).embeddings.create(model="m", input="origin test")
    entry = [e for e in llm.ledger().entries(caller=key) if e.endpoint == "embeddings"][-1]
    assert entry.activity_type == "embed_document" and entry.origin["activity"]["attempt"] == 2


def test_bad_requests_get_openai_errors(llm, key):
    """Given an empty input, a bad dimensions value or an unknown encoding, Then a 400 in OpenAI's error shape."""
    for body in ({"model": "m", "input": ""}, {"model": "m", "input": "x", "dimensions": 0},
                 {"model": "m", "input": "x", "encoding_format": "int8"}):
        answer = httpx.post(f"{llm.base_url}/embeddings", json=body, headers={"Authorization": f"Bearer {key}"})
        assert answer.status_code == 400 and answer.json()["error"]["type"] == "invalid_request_error"
