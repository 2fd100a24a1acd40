#!/usr/bin/env python3
"""The training run of a profile-guided build (scripts/build-pgo.sh).

Runs an instrumented gateway behind the test kit's backends (mock-fast, mock-globus) and
sends it the traffic it exists for, at the load where its CPU time matters (wrk, 32
keep-alive connections), so that the compiler learns which paths are hot: non-streaming chat
and 256-chunk streams with every request-path feature on (globus_auth with a cached token,
rate_limits in memory, metrics, the access log), then non-streaming chat without plugins; and
a few of the answers users get wrong (unknown model, bad token, malformed body), at low
weight. The gateway then stops on SIGTERM, which writes its profile.

    scripts/pgo-train.py INSTRUMENTED_GATEWAY [seconds=12]

Needs wrk (apt-get install wrk) and release builds of mock-fast and mock-globus; everything
listens on 127.0.0.1.
"""

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "AgTrainToken"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(port, proc, what):
    for _ in range(300):
        if proc.poll() is not None:
            sys.exit(f"{what} exited early ({proc.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not listen on 127.0.0.1:{port}")


def config(work, port, backend, globus, plugins):
    text = f'[server]\nlisten = ["127.0.0.1:{port}"]\nthreads = 1\nlog_level = "warn"\n'
    if plugins:
        text += f'metrics_listen = "127.0.0.1:{free_port()}"\n'
        text += f'[[plugins]]\nkind = "access_log"\npath = "{work}/access.log"\n'
        text += ('[[plugins]]\nkind = "globus_auth"\nclient_id = "train-client"\n'
                 'client_secret_env = "TRAIN_GLOBUS_SECRET"\n'
                 f'introspect_url = "http://127.0.0.1:{globus}/v2/oauth2/token/introspect"\n'
                 f'token_url = "http://127.0.0.1:{globus}/v2/oauth2/token"\n'
                 f'groups_url = "http://127.0.0.1:{globus}/v2/groups/my_groups"\n')
        text += ('[[plugins]]\nkind = "rate_limits"\n[plugins.per_user]\n'
                 'requests_per_minute = 1000000000\ntokens_per_minute = 1000000000000\n'
                 '[plugins.per_model]\nmax_concurrent = 100000\n')
    else:
        text += 'metrics_listen = ""\n'
    text += ('[[pools]]\nname = "train"\ncluster = "local"\nframework = "vllm"\n'
             f'models = ["facebook/opt-125m"]\nbackends = ["127.0.0.1:{backend}"]\n')
    path = os.path.join(work, f"gateway-{port}.toml")
    with open(path, "w") as f:
        f.write(text)
    return path


def chat(stream, model="facebook/opt-125m"):
    body = {"model": model, "messages": [{"role": "user", "content": "Explain Globus Compute."}],
            "max_tokens": 16}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return json.dumps(body)


WRK_SCRIPT = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %s"
wrk.body = '%s'
"""

# The requests users get wrong: each answered before any backend is asked.
MISTAKES = [(chat(False, "no-such-model"), TOKEN), (chat(False), "AgWrongToken"), ('{"model": ', TOKEN)]


def load(work, port, body, seconds, connections=32):
    script = os.path.join(work, f"load-{port}-{len(body)}.lua")
    with open(script, "w") as f:
        f.write(WRK_SCRIPT % (TOKEN, body))
    url = f"http://127.0.0.1:{port}/resource_server/v1/chat/completions"
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-s", script, url],
                         capture_output=True, text=True, check=True).stdout
    requests = int(out.split(" requests in")[0].split()[-1])
    if requests < 1000 or "Non-2xx" in out:
        sys.exit(f"the training load went wrong:\n{out}")
    return requests


def mistakes(port, rounds):
    answered = {}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for _ in range(rounds):
        for body, token in MISTAKES:
            conn.request("POST", "/resource_server/v1/chat/completions", body,
                         {"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
            response = conn.getresponse()
            response.read()
            answered[response.status] = answered.get(response.status, 0) + 1
            if response.will_close:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.close()
    return answered


def drive(gateway, work, conf, port, phases):
    env = dict(os.environ, TRAIN_GLOBUS_SECRET="train-secret")
    proc = subprocess.Popen([gateway, "run", "--config", conf], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(port, proc, "the instrumented gateway")
        done = [f"{load(work, port, body, seconds, connections)} {what}"
                for what, body, seconds, connections in phases]
        done.append(f"mistakes {mistakes(port, 200)}")
    finally:
        # SIGTERM: a graceful stop, whose exit writes the profile.
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    if code != 0:
        sys.exit(f"the instrumented gateway exited with {code}")
    print(f"  {os.path.basename(conf)}: " + ", ".join(done))


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    gateway = sys.argv[1]
    if shutil.which("wrk") is None:
        sys.exit("pgo-train: needs wrk (apt-get install wrk)")
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 12.0
    release = os.path.join(ROOT, "target", "release")
    backend, globus = free_port(), free_port()
    helpers = [
        subprocess.Popen([os.path.join(release, "mock-fast"), "--listen", f"127.0.0.1:{backend}",
                          "--threads", "1", "--chunks", "256"], stdout=subprocess.DEVNULL),
        subprocess.Popen([os.path.join(release, "mock-globus"), "--listen", f"127.0.0.1:{globus}",
                          "--client-id", "train-client", "--client-secret", "train-secret",
                          "--token", f"{TOKEN}=ada@anl.gov"], stdout=subprocess.DEVNULL),
    ]
    try:
        wait_for(backend, helpers[0], "mock-fast")
        wait_for(globus, helpers[1], "mock-globus")
        with tempfile.TemporaryDirectory() as work:
            port = free_port()
            drive(gateway, work, config(work, port, backend, globus, True), port,
                  [("chat", chat(False), seconds * 0.6, 32), ("streams", chat(True), seconds * 0.2, 8)])
            port = free_port()
            drive(gateway, work, config(work, port, backend, globus, False), port,
                  [("chat without plugins", chat(False), seconds * 0.2, 32)])
    finally:
        for h in helpers:
            h.kill()
            h.wait()


if __name__ == "__main__":
    main()
