"""Rate limits as the `openai` SDK sees them: RateLimitError, and its retries succeed once
the budget refills (the gateway's Retry-After tells it how long to wait)."""

import time

import openai
import pytest

from conftest import MODEL, start_gateway, start_mock


@pytest.fixture(scope="module")
def limited(workdir):
    mock = start_mock(workdir, "limited")
    extra = """
[[plugins]]
kind = "rate_limits"
[plugins.per_user]
requests_per_minute = 60
"""
    gw = start_gateway(workdir, "limited", [f"127.0.0.1:{mock.port}"], "", extra)
    yield gw
    gw.stop()
    mock.stop()


def client(gw, retries: int) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{gw.port}/resource_server/v1", api_key="k", max_retries=retries)


def hello(c: openai.OpenAI):
    return c.chat.completions.with_raw_response.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2)


def test_rate_limit_error_then_retry_succeeds(limited):
    c = client(limited, 0)
    raw = hello(c)
    assert raw.headers["x-ratelimit-limit-requests"] == "60"
    with pytest.raises(openai.RateLimitError) as err:
        for _ in range(100):
            hello(c)
    assert err.value.code == "rate_limit_exceeded"
    assert "60 requests per minute" in err.value.message
    assert int(err.value.response.headers["retry-after"]) >= 1
    # One request a second refills: the SDK's own retries (honouring Retry-After) get through.
    started = time.monotonic()
    raw = hello(client(limited, 3))
    assert raw.http_response.status_code == 200
    assert time.monotonic() - started < 10
