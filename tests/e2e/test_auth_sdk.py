"""Authentication and authorization as the `openai` SDK sees them: 401 raises
AuthenticationError, 403 raises PermissionDeniedError, and the model list is filtered."""

import hashlib

import openai
import pytest

from conftest import MODEL, start_gateway, start_mock

LLAMA = "meta-llama/Meta-Llama-3-8B-Instruct"


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture(scope="module")
def secured(workdir):
    mock = start_mock(workdir, "secured", "--models", f"{MODEL},{LLAMA}")
    extra = f"""
[[pools]]
name = "llama"
cluster = "local"
framework = "vllm"
models = ["{LLAMA}"]
backends = ["127.0.0.1:{mock.port}"]
allowed_groups = ["llama-users"]

[[plugins]]
kind = "api_keys"
[[plugins.keys]]
sha256 = "{sha256('ada-key')}"
username = "ada@anl.gov"
groups = ["llama-users"]
[[plugins.keys]]
sha256 = "{sha256('bob-key')}"
username = "bob@example.org"
"""
    gw = start_gateway(workdir, "secured", [f"127.0.0.1:{mock.port}"], "", extra)
    yield gw
    gw.stop()
    mock.stop()


def client(gw, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{gw.port}/resource_server/v1", api_key=key, max_retries=0)


def hello(c: openai.OpenAI, model: str):
    return c.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])


def test_unknown_token_raises_authentication_error(secured):
    with pytest.raises(openai.AuthenticationError) as err:
        hello(client(secured, "not-a-key"), MODEL)
    assert err.value.status_code == 401
    assert "Authorization: Bearer" in err.value.message
    assert err.value.response.headers["www-authenticate"] == "Bearer"


def test_outsider_raises_permission_denied(secured):
    with pytest.raises(openai.PermissionDeniedError) as err:
        hello(client(secured, "bob-key"), LLAMA)
    assert err.value.code == "permission_denied"
    assert hello(client(secured, "bob-key"), MODEL).choices[0].message.content


def test_member_uses_the_restricted_model(secured):
    assert hello(client(secured, "ada-key"), LLAMA).choices[0].message.content


def test_models_list_shows_only_permitted_models(secured):
    assert sorted(m.id for m in client(secured, "ada-key").models.list()) == sorted([MODEL, LLAMA])
    assert [m.id for m in client(secured, "bob-key").models.list()] == [MODEL]
