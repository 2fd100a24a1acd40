"""OpenAI's Files + Batches door, driven by the official `openai` SDK: upload, run, read the
results, list and page, invalid input, isolation between users, and cancelling."""

import hashlib
import json
import time

import openai
import pytest

from conftest import GATEWAY_BIN, MODEL, Process, free_port, start_mock

USERS = ("alice", "bob")


def start_batch_gateway(workdir, name, mock, pool_extra="", plugins=""):
    """A gateway with `[batch]` on (state in its own directory) and one pool on `mock`.
    Written here rather than through `start_gateway`, whose pool takes no extra keys."""
    port = free_port()
    config = workdir / f"{name}.toml"
    config.write_text(
        f"""
[server]
listen = ["127.0.0.1:{port}"]
metrics_listen = ""

[[plugins]]
kind = "access_log"
path = "{workdir / (name + '-access.log')}"
{plugins}

[[pools]]
name = "local-vllm"
cluster = "local"
framework = "vllm"
models = ["{MODEL}"]
backends = ["127.0.0.1:{mock.port}"]
{pool_extra}

[batch]
state_dir = "{workdir / (name + '-state')}"
max_active_per_user = 10
retry_backoff = "100ms"
"""
    )
    log = open(workdir / f"{name}-gateway.log", "w")
    return Process([str(GATEWAY_BIN), "run", "--config", str(config)], port, f"gateway {name}", log)


def api_keys_plugin() -> str:
    text = '[[plugins]]\nkind = "api_keys"\n'
    for user in USERS:
        digest = hashlib.sha256(f"key-{user}".encode()).hexdigest()
        text += f'[[plugins.keys]]\nsha256 = "{digest}"\nusername = "{user}@anl.gov"\ngroups = []\n'
    return text


def sdk(gw, key="no-auth") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{gw.port}/resource_server/v1", api_key=key, max_retries=0, timeout=30)


def chat_line(custom_id: str, **body) -> dict:
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"say {custom_id}"}], "max_tokens": 4, **body}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def upload(client, lines, name="input.jsonl"):
    """Uploads `lines` (dicts, or raw strings kept as written) as a JSONL batch input."""
    text = "".join((json.dumps(line) if isinstance(line, dict) else line) + "\n" for line in lines)
    f = client.files.create(file=(name, text.encode()), purpose="batch")
    assert (f.purpose, f.bytes, f.filename) == ("batch", len(text.encode()), name)
    return f


def submit(client, file_id, **extra):
    return client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h", **extra
    )


def wait_for(client, batch_id, predicate, what, deadline=30.0):
    """Polls the batch until `predicate(batch)` holds; fails after `deadline` seconds."""
    end = time.monotonic() + deadline
    while True:
        batch = client.batches.retrieve(batch_id)
        if predicate(batch):
            return batch
        assert time.monotonic() < end, f"batch {batch_id} never {what}; last seen: {batch}"
        time.sleep(0.05)


def wait_status(client, batch_id, status, deadline=30.0):
    return wait_for(client, batch_id, lambda b: b.status == status, f"reached {status}", deadline)


def read_jsonl(client, file_id) -> list[dict]:
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def batch_access_lines(workdir, name, batch_id, expect: int) -> list[dict]:
    """The access-log lines of `batch_id` once `expect` are there (waiting up to 5 s: a line
    reaches the file within the log's flush_interval, 100 ms), read again one interval later
    so that a line too many shows too."""
    log = workdir / f"{name}-access.log"

    def read() -> list[dict]:
        lines = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        return [line for line in lines if line.get("batch_id") == batch_id]

    deadline = time.monotonic() + 5
    while len(read()) < expect and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    return read()


@pytest.fixture(scope="module")
def site(workdir):
    """Users alice and bob (API keys `key-alice`, `key-bob`) on a fast mock."""
    mock = start_mock(workdir, "batches", "--tokens", "3")
    gw = start_batch_gateway(workdir, "batches", mock, plugins=api_keys_plugin())
    yield gw
    gw.stop()
    mock.stop()


@pytest.fixture
def alice(site):
    return sdk(site, "key-alice")


@pytest.fixture
def bob(site):
    return sdk(site, "key-bob")


def test_full_flow_produces_every_answer_once(alice, site, workdir):
    ids = [f"req-{i:02d}" for i in range(20)]
    f = upload(alice, [chat_line(i) for i in ids])
    created = submit(alice, f.id, metadata={"job": "e2e"})
    assert created.id.startswith("batch_") and created.object == "batch"
    assert (created.input_file_id, created.endpoint, created.completion_window) == (f.id, "/v1/chat/completions", "24h")
    assert created.status in ("in_progress", "finalizing", "completed")
    assert created.request_counts.total == 20

    done = wait_status(alice, created.id, "completed")
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (20, 20, 0)
    assert done.metadata == {"job": "e2e"}
    assert done.error_file_id is None and done.errors is None
    assert None not in (done.created_at, done.in_progress_at, done.finalizing_at, done.completed_at)
    assert done.created_at <= done.in_progress_at <= done.finalizing_at <= done.completed_at
    assert done.expires_at == done.created_at + 24 * 3600
    assert done.failed_at is None and done.cancelled_at is None

    out = read_jsonl(alice, done.output_file_id)
    assert sorted(line["custom_id"] for line in out) == ids
    for line in out:
        assert line["error"] is None and line["response"]["status_code"] == 200, line
        body = line["response"]["body"]
        assert body["model"] == MODEL and body["choices"][0]["message"]["content"], line
    assert done.usage.output_tokens == sum(line["response"]["body"]["usage"]["completion_tokens"] for line in out) > 0

    output_file = alice.files.retrieve(done.output_file_id)
    assert (output_file.purpose, output_file.bytes) == ("batch_output", len(alice.files.content(done.output_file_id).content))
    # Every line went through the pool and was logged with the batch id.
    assert len(batch_access_lines(workdir, "batches", done.id, 20)) == 20
    with pytest.raises(openai.ConflictError) as err:
        alice.batches.cancel(done.id)
    assert err.value.code == "batch_not_cancellable"


def test_list_pages_newest_first(alice):
    f = upload(alice, [chat_line("only")])
    first = wait_status(alice, submit(alice, f.id).id, "completed")
    second = wait_status(alice, submit(alice, f.id).id, "completed")  # the same input, once the first is done

    page = alice.batches.list(limit=1)
    assert [b.id for b in page.data] == [second.id]
    assert page.has_more is True
    after = alice.batches.list(limit=1, after=second.id)
    assert [b.id for b in after.data] == [first.id]
    # Auto-pagination (`after` = the last id of each page) sees each batch once, newest first.
    seen = [b.id for b in alice.batches.list(limit=1)]
    assert seen[:2] == [second.id, first.id] and len(seen) == len(set(seen))
    assert alice.batches.list(limit=100).has_more is False


def test_files_list_retrieve_delete(alice):
    f = upload(alice, [chat_line("x")], name="to-delete.jsonl")
    listed = {x.id: x for x in alice.files.list()}
    assert listed[f.id].filename == "to-delete.jsonl"
    assert all(x.purpose == "batch" for x in alice.files.list(purpose="batch"))
    assert f.id in {x.id for x in alice.files.list(purpose="batch")}
    assert f.id not in {x.id for x in alice.files.list(purpose="batch_output")}

    got = alice.files.retrieve(f.id)
    assert (got.id, got.bytes, got.purpose, got.created_at) == (f.id, f.bytes, "batch", f.created_at)
    assert json.loads(alice.files.content(f.id).text)["custom_id"] == "x"

    deleted = alice.files.delete(f.id)
    assert (deleted.id, deleted.deleted) == (f.id, True)
    for gone in (alice.files.retrieve, alice.files.content, alice.files.delete):
        with pytest.raises(openai.NotFoundError):
            gone(f.id)
    assert f.id not in {x.id for x in alice.files.list()}
    with pytest.raises(openai.NotFoundError):
        submit(alice, f.id)


def test_isolation_between_users(alice, bob):
    f = upload(alice, [chat_line("private")])
    batch = submit(alice, f.id)
    for call, arg in [
        (bob.batches.retrieve, batch.id),
        (bob.batches.cancel, batch.id),
        (bob.files.retrieve, f.id),
        (bob.files.content, f.id),
        (bob.files.delete, f.id),
    ]:
        with pytest.raises(openai.NotFoundError) as err:
            call(arg)
        assert err.value.status_code == 404, call
    with pytest.raises(openai.NotFoundError):
        submit(bob, f.id)  # bob cannot run alice's file either
    assert batch.id not in {b.id for b in bob.batches.list()}
    assert f.id not in {x.id for x in bob.files.list()}

    # Nothing bob did touched alice's batch or file.
    done = wait_status(alice, batch.id, "completed")
    assert done.request_counts.completed == 1
    assert alice.files.retrieve(f.id).id == f.id
    for call in (bob.files.retrieve, bob.files.content):
        with pytest.raises(openai.NotFoundError):
            call(done.output_file_id)


def test_invalid_lines_fail_the_batch_before_any_is_sent(workdir):
    mock = start_mock(workdir, "batches-invalid")
    gw = start_batch_gateway(workdir, "batches-invalid", mock)
    try:
        client = sdk(gw)  # no authenticator: one anonymous owner
        f = upload(client, [
            chat_line("a"),
            '{"custom_id": "b", "method": "POST", not json',
            chat_line("a"),
            chat_line("c", stream=True),
            chat_line("d"),
        ])
        batch = submit(client, f.id)
        assert batch.status == "failed" and batch.failed_at is not None
        errors = [(e.line, e.code) for e in batch.errors.data]
        assert errors == [(2, "invalid_json"), (3, "duplicate_custom_id"), (4, "invalid_body")], batch.errors
        assert all(e.message for e in batch.errors.data)
        assert "stream" in batch.errors.data[2].message

        # A good batch submitted after it runs to the end: the worker has passed the failed
        # one by then, and must not have sent any of its lines.
        good = wait_status(client, submit(client, upload(client, [chat_line("ok")]).id).id, "completed")
        assert len(batch_access_lines(workdir, "batches-invalid", good.id, 1)) == 1
        again = client.batches.retrieve(batch.id)
        assert again.status == "failed"
        assert again.output_file_id is None and again.error_file_id is None
        assert again.request_counts.completed == 0 and again.in_progress_at is None
        assert batch_access_lines(workdir, "batches-invalid", batch.id, 0) == []
        assert [b.id for b in client.batches.list(extra_query={"status": "failed"})] == [batch.id]
    finally:
        gw.stop()
        mock.stop()


def test_cancel_keeps_finished_lines_and_closes_the_rest(workdir):
    mock = start_mock(workdir, "batches-slow", "--first-token-ms", "300", "--tokens", "2")
    gw = start_batch_gateway(workdir, "batches-slow", mock, pool_extra="batch_max_in_flight = 1")
    try:
        client = sdk(gw)
        ids = [f"slow-{i:02d}" for i in range(30)]
        batch = submit(client, upload(client, [chat_line(i) for i in ids]).id)
        wait_for(client, batch.id, lambda b: b.request_counts.completed >= 1, "completed a line", deadline=15)

        cancelling = client.batches.cancel(batch.id)
        assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at is not None
        done = wait_status(client, batch.id, "cancelled", deadline=15)
        counts = done.request_counts
        assert 0 < counts.completed < 30 and counts.completed + counts.failed == counts.total == 30, counts
        assert done.cancelled_at is not None and done.completed_at is None

        out = read_jsonl(client, done.output_file_id)
        errs = read_jsonl(client, done.error_file_id)
        assert len(out) == counts.completed and len(errs) == counts.failed
        assert all(line["response"]["status_code"] == 200 for line in out)
        assert all(line["error"]["code"] == "batch_cancelled" and line["response"] is None for line in errs), errs
        assert sorted(line["custom_id"] for line in out + errs) == ids
        # Only the lines in the output reached the backend.
        assert len(batch_access_lines(workdir, "batches-slow", batch.id, counts.completed)) == counts.completed
        assert client.batches.cancel(batch.id).status == "cancelled"  # cancelling again changes nothing
    finally:
        gw.stop()
        mock.stop()
