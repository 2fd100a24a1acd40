"""The Python examples of docs/user-guide.md, run with the official `openai` SDK against the gateway."""

import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from conftest import MODEL, free_port, make_client, start_gateway, start_mock


def test_chat_completion(client):
    response = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is machine learning?"},
        ],
        max_tokens=200,
        # vLLM extensions pass through untouched.
        extra_body={"top_k": 5, "min_p": 0.1},
    )
    assert response.choices[0].message.content.startswith("tok0 ")
    assert response.usage.completion_tokens == 10
    assert response.model == MODEL


def test_completion(client):
    response = client.completions.create(model=MODEL, prompt="The future of AI is", max_tokens=3)
    assert response.choices[0].text == "tok0 tok1 tok2 "
    assert response.choices[0].finish_reason == "length"


def test_embeddings(client):
    response = client.embeddings.create(model=MODEL, input=["hello", "world"])
    assert len(response.data) == 2
    assert len(response.data[0].embedding) == 8


def test_models_list(client):
    ids = [m.id for m in client.models.list()]
    assert ids == [MODEL]


def test_targeted_cluster_framework_route(gateway):
    targeted = make_client(gateway.port, "/resource_server/local/vllm/v1")
    response = targeted.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert response.choices[0].message.content
    assert [m.id for m in targeted.models.list()] == [MODEL]


def test_streaming_arrives_incrementally(client):
    started = time.monotonic()
    arrivals = []
    text = ""
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Explain quantum computing"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic() - started)
            text += chunk.choices[0].delta.content
    assert text == "".join(f"tok{i} " for i in range(10))
    assert usage is not None and usage.completion_tokens == 10
    # Ten tokens 50 ms apart: the first arrives ~450 ms before the last.
    assert arrivals[-1] - arrivals[0] > 0.3, arrivals


def test_unknown_model_raises_not_found(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert err.value.code == "model_not_found"
    assert "no-such-model" in err.value.message


def test_missing_model_raises_bad_request(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="", messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 400
    assert err.value.code == "missing_model"


def test_backend_400_reaches_the_sdk(client):
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-mock-fault": "status=400"},
        )


def test_oversized_body_is_413(client):
    with pytest.raises(openai.APIStatusError) as err:
        client.completions.create(model=MODEL, prompt="x" * (11 << 20))
    assert err.value.status_code == 413
    assert err.value.code == "request_too_large"


def test_wrong_method_is_405(client):
    with pytest.raises(openai.APIStatusError) as err:
        client.get("/chat/completions", cast_to=object)
    assert err.value.status_code == 405


def test_silent_backend_is_504(client):
    with pytest.raises(openai.InternalServerError) as err:
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-mock-fault": "hang"},
        )
    assert err.value.status_code == 504
    assert err.value.code == "upstream_timeout"


def test_refused_backends_are_502_then_503(workdir):
    gw = start_gateway(workdir, "dead", [f"127.0.0.1:{free_port()}"], "")
    try:
        client = make_client(gw.port)
        with pytest.raises(openai.InternalServerError) as err:
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        # 502 if this request found the refusal, 503 if a health check did first.
        assert err.value.status_code in (502, 503)
        with pytest.raises(openai.InternalServerError) as err:
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        assert err.value.status_code == 503
        assert err.value.response.headers["retry-after"]
        assert err.value.code == "no_healthy_backend"
    finally:
        gw.stop()


def test_backend_failing_its_checks_is_503_without_panic_routing(workdir):
    mock = start_mock(workdir, "flaky", "--fault", "unhealthy")
    gw = start_gateway(
        workdir, "flaky", [f"127.0.0.1:{mock.port}"], health="panic_routing = false"
    )
    try:
        client = make_client(gw.port)
        deadline = time.monotonic() + 5
        while True:
            try:
                client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
            except openai.InternalServerError as err:
                assert err.status_code == 503
                break
            assert time.monotonic() < deadline, "health check never marked the backend down"
            time.sleep(0.05)
    finally:
        gw.stop()
        mock.stop()


def test_busy_single_slot_backend_serves_every_stream(workdir):
    """A server like llama-cpp-python (one generation at a time, its health route blocked
    meanwhile) behind checks far shorter than a generation: nothing is refused."""
    mock = start_mock(workdir, "serial", "--serial", "--token-gap-ms", "23", "--tokens", "10")
    gw = start_gateway(
        workdir, "serial", [f"127.0.0.1:{mock.port}"], health='timeout = "30ms"'
    )
    try:
        client = make_client(gw.port)

        def stream_text() -> str:
            stream = client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
            )
            return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

        for _ in range(12):
            assert stream_text().startswith("tok0 ")
        with ThreadPoolExecutor(max_workers=8) as pool:
            texts = list(pool.map(lambda _: stream_text(), range(8)))
        assert all(t.startswith("tok0 ") and "tok9" in t for t in texts)
    finally:
        gw.stop()
        mock.stop()
