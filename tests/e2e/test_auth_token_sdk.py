"""The usage guide's first steps with `inference-auth-token`, as a user runs them: log in on a
machine without a browser, `export MY_TOKEN=$(inference-auth-token get_access_token)`, then the
`openai` SDK through the gateway's `globus_auth` plugin (against the test kit's mock Globus
Auth). And the token file is the Globus Python SDK's: a login made by either tool serves the
other."""

import os
import re
import subprocess
import time
import urllib.request

import openai
import pytest
from globus_sdk.token_storage import JSONTokenStorage, TokenStorageData

from conftest import MODEL, TARGET, Process, free_port, make_client, start_gateway, start_mock

TOOL = TARGET / "inference-auth-token"
MOCK_GLOBUS = TARGET / "mock-globus"
NATIVE_APP = "58fdd3bc-0000-4000-8000-00000000a991"
GATEWAY = "681c10cc-0000-4000-8000-00000000beef"


@pytest.fixture(scope="module")
def globus(workdir):
    port = free_port()
    log = open(workdir / "auth-token-globus.log", "w")
    args = [
        str(MOCK_GLOBUS), "--listen", f"127.0.0.1:{port}", "--client-id", GATEWAY,
        "--client-secret", "gateway-secret", "--login-user", "ada@anl.gov",
    ]
    proc = Process(args, port, "mock globus", log)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def secured_by_globus(workdir, globus):
    secret = workdir / "auth-token-gateway-secret"
    secret.write_text("gateway-secret\n")
    base = f"http://127.0.0.1:{globus.port}"
    mock = start_mock(workdir, "auth-token")
    extra = f"""
[[plugins]]
kind = "globus_auth"
client_id = "{GATEWAY}"
client_secret_file = "{secret}"
introspect_url = "{base}/v2/oauth2/token/introspect"
token_url = "{base}/v2/oauth2/token"
groups_url = "{base}/v2/groups/my_groups"
"""
    gw = start_gateway(workdir, "auth-token", [f"127.0.0.1:{mock.port}"], "", extra)
    yield gw
    gw.stop()
    mock.stop()


@pytest.fixture
def user_env(tmp_path, globus):
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "INFERENCE_AUTH_CLIENT_ID": NATIVE_APP,
        "INFERENCE_AUTH_GATEWAY_CLIENT_ID": GATEWAY,
        "INFERENCE_AUTH_GLOBUS_URL": f"http://127.0.0.1:{globus.port}",
    }


def tokens_file(env) -> str:
    return os.path.join(env["HOME"], ".globus", "app", NATIVE_APP, "inference_app", "tokens.json")


def authenticate(env):
    """`inference-auth-token authenticate` on a login node: open the printed address elsewhere
    (the mock logs the user in and shows the code), paste the code back."""
    proc = subprocess.Popen(
        [str(TOOL), "authenticate", "--no-browser"], env=env, text=True,
        stdin=subprocess.PIPE, stderr=subprocess.PIPE, stdout=subprocess.PIPE,
    )
    deadline = time.monotonic() + 10
    url = None
    while url is None and time.monotonic() < deadline:
        line = proc.stderr.readline()
        match = re.search(r"(http://\S+/v2/oauth2/authorize\?\S+)", line)
        url = match.group(1) if match else None
    assert url, "the tool printed the authorize address"
    page = urllib.request.urlopen(url, timeout=10).read().decode()
    code = [l for l in page.splitlines() if l.strip()][-1].strip()
    out, err = proc.communicate(code + "\n", timeout=20)
    assert proc.returncode == 0, err
    assert out == ""


def test_the_guides_first_steps_with_the_openai_sdk(secured_by_globus, user_env):
    authenticate(user_env)
    script = f'export MY_TOKEN=$({TOOL} get_access_token) && printf "%s" "$MY_TOKEN"'
    my_token = subprocess.run(["bash", "-c", script], env=user_env, check=True, capture_output=True, text=True).stdout
    assert my_token.startswith("Ag")

    client = make_client(secured_by_globus.port)
    client.api_key = my_token
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content

    stranger = make_client(secured_by_globus.port)
    stranger.api_key = "AgNotAToken"
    with pytest.raises(openai.AuthenticationError):
        stranger.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])


def test_the_token_file_is_the_globus_python_sdks(user_env):
    authenticate(user_env)
    path = tokens_file(user_env)
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    # The Python SDK reads what we wrote ...
    ours = JSONTokenStorage(path).get_token_data(GATEWAY)
    printed = subprocess.run(
        [str(TOOL), "get_access_token"], env=user_env, check=True, capture_output=True, text=True
    ).stdout
    assert ours is not None and printed == ours.access_token + "\n"
    assert ours.refresh_token

    # ... and we read what it writes (a login made with the Python script), keeping its
    # other entries when we write.
    storage = JSONTokenStorage(path)
    storage.store_token_data_by_resource_server({
        GATEWAY: TokenStorageData(
            GATEWAY, "identity-1", f"https://auth.globus.org/scopes/{GATEWAY}/action_all",
            "AgFromThePythonScript", ours.refresh_token, int(time.time()) + 7200, "Bearer",
        ),
        "auth.globus.org": TokenStorageData(
            "auth.globus.org", "identity-1", "openid", "AgOpenId", None, int(time.time()) + 7200, "Bearer",
        ),
    })
    printed = subprocess.run(
        [str(TOOL), "get_access_token"], env=user_env, check=True, capture_output=True, text=True
    ).stdout
    assert printed == "AgFromThePythonScript\n"
    subprocess.run([str(TOOL), "logout"], env=user_env, check=True, capture_output=True)
    after = JSONTokenStorage(path)
    assert after.get_token_data(GATEWAY) is None
    assert after.get_token_data("auth.globus.org").access_token == "AgOpenId"
