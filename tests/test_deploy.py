"""``deploy/``: a real nginx, rendered from the site template, in front of a real
server, carrying a whole session over TLS; and each of the other files checked by the
tool that would run or reject it (cfn-lint, systemd-analyze, cloud-init, shellcheck).

nginx runs as a foreground process with its prefix, pid, logs and temp files under
``tmp_path``. The test binds its listening sockets first, on 127.0.0.1 port 0, and
hands them to nginx as inherited sockets (the ``NGINX`` environment variable nginx
uses for binary upgrades): no port race, and nothing to wait for, since connections
queue in the test's own backlog until nginx accepts them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs
import httpx
import pytest
import trio
import trio_websocket
import yaml
from helpers import checked, finals_of, listener_path
from protocol_schemas import validate_http

import babel_actors
from babel_actors.config import Config
from babel_actors.server.app import Server
from babel_actors.server.static import StaticSite
from babel_actors.testing import (
    ProtocolClient,
    ScriptedSpeechToText,
    running_server,
    sentence_script,
    silence,
)

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
SENTENCES = [f"sentence number {n} is spoken here" for n in range(1, 5)]
SECONDS = 1.0
START_BURST = 10
"""``burst`` of ``limit_req zone=babel_start`` in the site template."""
PRIVATE_PATHS = ("/metrics", "/stats", "/sessions", "/metrics/x")

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
OPENSSL = shutil.which("openssl")
needs_nginx = pytest.mark.skipif(
    not (Path(NGINX).exists() and OPENSSL),
    reason="nginx and openssl are not installed (make test installs them with apt)",
)


def _render_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_render", DEPLOY / "nginx/render.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = _render_module()


# ------------------------------------------------------------------ nginx harness


@attrs.frozen
class Cert:
    """A self-signed certificate for ``localhost`` and 127.0.0.1."""

    cert: Path
    """PEM certificate, also the client's only trusted CA."""
    key: Path
    """PEM private key."""

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))


@attrs.frozen
class Proxy:
    """A running nginx in front of the backends."""

    http_port: int
    """Plain HTTP: redirects, ACME challenges."""
    https_port: int
    """TLS: the API and the WebSocket."""
    tls: ssl.SSLContext
    """Trusts the test's certificate."""
    acme_root: Path
    """The directory served at ``/.well-known/acme-challenge/``."""

    @property
    def origin(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.origin, verify=self.tls, trust_env=False)

    @asynccontextmanager
    async def websocket(self, path: str) -> AsyncIterator[ProtocolClient]:
        url = f"wss://127.0.0.1:{self.https_port}{path}"
        async with trio_websocket.open_websocket_url(url, ssl_context=self.tls) as ws:
            yield ProtocolClient(ws)


@pytest.fixture
def cert(tmp_path: Path) -> Cert:
    assert OPENSSL is not None
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return Cert(cert, key)


MAIN_CONF = """\
{user}worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log notice;
events {{ worker_connections 1024; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log {root}/access.log;
    client_body_temp_path {root}/temp/client_body;
    proxy_temp_path {root}/temp/proxy;
    fastcgi_temp_path {root}/temp/fastcgi;
    uwsgi_temp_path {root}/temp/uwsgi;
    scgi_temp_path {root}/temp/scgi;
    include {root}/babel-actors.conf;
}}
"""
"""What /etc/nginx/nginx.conf is to the site config in production, with every path
under the test's directory. Root's workers stay root, so they can use that directory."""


def _listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(511)
    return sock


@asynccontextmanager
async def running_nginx(
    root: Path, cert: Cert, backends: list[Server | int], extra: tuple[str, ...] = ()
) -> AsyncIterator[Proxy]:
    """nginx with the rendered site config in front of ``backends`` (servers, or bare
    ports on 127.0.0.1), rendered with ``extra`` flags too, until the block ends."""
    root.mkdir()
    (root / "temp").mkdir()
    acme_root = root / "acme"
    acme_root.mkdir()
    with _listening_socket() as http_sock, _listening_socket() as https_sock:
        http_port, https_port = http_sock.getsockname()[1], https_sock.getsockname()[1]
        argv = ["--server-name", "localhost", "--listen", "127.0.0.1",
                "--http-port", str(http_port), "--https-port", str(https_port),
                "--cert", str(cert.cert), "--key", str(cert.key),
                "--acme-root", str(acme_root), "--log-dir", str(root),
                "-o", str(root / "babel-actors.conf")]  # fmt: skip
        for server in backends:
            port = server if isinstance(server, int) else server.port
            argv += ["--backend", f"127.0.0.1:{port}"]
        argv += extra
        assert render.main(argv) == 0
        user = "user root root;\n" if os.geteuid() == 0 else ""
        conf = root / "nginx.conf"
        conf.write_text(MAIN_CONF.format(user=user, root=root))
        base = [NGINX, "-p", f"{root}/", "-c", str(conf)]
        check = await trio.run_process(
            [*base, "-t", "-e", str(root / "check.log")], capture_stderr=True, check=False
        )
        assert check.returncode == 0, check.stderr.decode()
        # nginx takes these as its listening sockets (it matches them by address);
        # the test's copies close at the end of this block.
        process = await trio.lowlevel.open_process(
            [*base, "-e", str(root / "startup.log")],
            env={**os.environ, "NGINX": f"{http_sock.fileno()};{https_sock.fileno()};"},
            pass_fds=(http_sock.fileno(), https_sock.fileno()),
        )

    async def watch() -> None:
        await process.wait()
        logs = [root / "startup.log", root / "error.log"]
        log = "".join(p.read_text() for p in logs if p.exists())
        raise RuntimeError(f"nginx exited with {process.returncode}:\n{log}")

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            yield Proxy(http_port, https_port, cert.client_context(), acme_root)
            nursery.cancel_scope.cancel()
    finally:
        if process.returncode is None:
            process.terminate()
        with trio.CancelScope(shield=True):
            with trio.move_on_after(10):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()


def scripted() -> ScriptedSpeechToText:
    return ScriptedSpeechToText(sentence_script(SENTENCES, seconds_each=SECONDS))


async def post(client: httpx.AsyncClient, path: str, body: dict[str, Any] | None = None) -> Any:
    response = await client.post(path, json=body)
    data = response.json()
    validate_http(path, "post", response.status_code, data)
    assert response.status_code == 200, data
    return data


# ------------------------------------------------------------------ through nginx


@needs_nginx
async def test_a_whole_session_runs_through_nginx_over_tls(tmp_path: Path, cert: Cert) -> None:
    with trio.fail_after(30):
        async with (
            running_server(Config(port=0), stt=scripted()) as server,
            running_nginx(tmp_path / "nginx", cert, [server]) as proxy,
            proxy.client() as http,
        ):
            started = await post(http, "/session/start")
            joined = await post(
                http, "/session/join", {"sessionCode": started["sessionCode"], "targetLang": "es"}
            )
            async with proxy.websocket(joined["wsUrl"]) as listener:
                assert (await listener.receive())["type"] == "session_joined"
                async with proxy.websocket(started["wsUrl"]) as host:
                    assert (await host.receive())["type"] == "session_ready"
                    info = await http.get(f"/session/{started['sessionCode']}/info")
                    validate_http("/session/{code}/info", "get", info.status_code, info.json())
                    assert info.json()["session"]["listenerCount"] == 1
                    await host.send({"type": "init", "sourceLang": "en", "sampleRate": 24000})
                    for _ in range(len(SENTENCES) * 2):
                        await host.send_audio(silence(SECONDS / 2))
                    # The resampler holds back a few milliseconds; this tail pushes them.
                    await host.send_audio(silence(0.05))
                    listener_finals = await listener.finals(len(SENTENCES))
                    host_finals = await host.finals(len(SENTENCES))
                # The host closed normally, which ends the session for its listeners.
                ended = await listener.receive_until(lambda m: m["type"] == "session_ended")
        assert [m["translatedText"] for m in checked(listener_finals)] == [
            f"[es] {s}" for s in SENTENCES
        ]
        assert [m["originalText"] for m in checked(host_finals)] == SENTENCES
        assert finals_of(listener.received) == listener_finals
        assert checked(ended)[-1]["type"] == "session_ended"


@needs_nginx
async def test_nginx_redirects_and_guards(tmp_path: Path, cert: Cert) -> None:
    with trio.fail_after(30):
        async with (
            running_server(Config(port=0)) as server,
            running_nginx(tmp_path / "nginx", cert, [server]) as proxy,
            proxy.client() as http,
            httpx.AsyncClient(trust_env=False) as plain,
        ):
            redirect = await plain.get(f"http://127.0.0.1:{proxy.http_port}/session/x?y=1")
            (proxy.acme_root / ".well-known/acme-challenge").mkdir(parents=True)
            (proxy.acme_root / ".well-known/acme-challenge/t0ken").write_text("t0ken.key")
            challenge = await plain.get(
                f"http://127.0.0.1:{proxy.http_port}/.well-known/acme-challenge/t0ken"
            )
            health = await http.get("/health")
            hidden = {p: (await http.get(p)).status_code for p in PRIVATE_PATHS}
            direct = await plain.get(f"{server.url}/sessions")
            too_big = await http.post(
                "/session/join", content=b"x" * (100 << 10), headers={"content-type": "text/plain"}
            )

    assert redirect.status_code == 301
    assert redirect.headers["location"] == f"https://localhost:{proxy.https_port}/session/x?y=1"
    assert (challenge.status_code, challenge.text) == (200, "t0ken.key")

    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert health.headers["strict-transport-security"].startswith("max-age=")
    assert health.headers["x-frame-options"] == "DENY"
    assert health.headers.get_list("x-content-type-options") == ["nosniff"]
    assert "microphone=(self)" in health.headers["permissions-policy"]
    assert health.headers["server"] == "nginx", "no version in the Server header"

    assert hidden == dict.fromkeys(PRIVATE_PATHS, 404)
    assert direct.status_code == 200, "the block is nginx's; the server still answers"

    assert too_big.status_code == 413
    validate_http("/session/join", "post", 413, too_big.json())


def _largest_web_file() -> str | None:
    """The URL path of the biggest script or stylesheet the server's web client serves."""
    web = Path(babel_actors.__file__).parent / "web"
    files = [f for f in web.rglob("*") if f.suffix in (".js", ".css") and f.is_file()]
    site = StaticSite.from_package()
    served = [f"/{f.relative_to(web).as_posix()}" for f in files]
    served = [p for p in served if site.find(p) is not None]
    return max(served, key=lambda p: (web / p[1:]).stat().st_size, default=None)


@needs_nginx
async def test_nginx_compresses_the_web_client(tmp_path: Path, cert: Cert) -> None:
    path = _largest_web_file()
    if path is None:
        pytest.skip("the package ships no web client to serve")
    with trio.fail_after(30):
        async with (
            running_server(Config(port=0)) as server,
            running_nginx(tmp_path / "nginx", cert, [server]) as proxy,
            proxy.client() as http,
        ):
            response = await http.get(path, headers={"accept-encoding": "gzip"})
    assert response.status_code == 200
    assert response.headers["content-encoding"] == "gzip"
    assert response.headers["vary"] == "Accept-Encoding"
    assert response.content == StaticSite.from_package().find(path).body  # type: ignore[union-attr]


@needs_nginx
async def test_session_creation_is_rate_limited_past_its_burst(tmp_path: Path, cert: Cert) -> None:
    responses: list[httpx.Response] = []
    with trio.fail_after(30):
        async with (
            running_server(Config(port=0)) as server,
            running_nginx(tmp_path / "nginx", cert, [server]) as proxy,
            proxy.client() as http,
        ):
            while len(responses) < START_BURST * 4 and 429 not in _statuses(responses):
                responses.append(await http.post("/session/start"))
            health = await http.get("/health")
    statuses = _statuses(responses)
    assert statuses[-1] == 429, f"no 429 in {len(statuses)} requests"
    assert statuses[:-1] == [200] * (len(statuses) - 1)
    assert len(statuses) > START_BURST + 1, "the burst passes before the limit bites"
    validate_http("/session/start", "post", 429, responses[-1].json())
    assert health.status_code == 200, "the other routes have limits of their own"


def _statuses(responses: list[httpx.Response]) -> list[int]:
    return [r.status_code for r in responses]


@needs_nginx
async def test_session_lookups_reach_the_process_that_holds_the_session(
    tmp_path: Path, cert: Cert
) -> None:
    with trio.fail_after(30):
        async with (
            running_server(Config(port=0)) as first,
            running_server(Config(port=0)) as second,
            running_nginx(tmp_path / "nginx", cert, [first, second]) as proxy,
            proxy.client() as http,
            httpx.AsyncClient(base_url=second.url, trust_env=False) as direct,
        ):
            code = (await post(direct, "/session/start"))["sessionCode"]
            # Two of each: the upstream takes turns, so one of each pair goes to the
            # process that does not hold the session, and must be passed on.
            joins = [
                await http.post("/session/join", json={"sessionCode": code, "targetLang": "es"})
                for _ in range(2)
            ]
            infos = [await http.get(f"/session/{code}/info") for _ in range(2)]
            unknown = await http.get("/session/ZZZZZZ/info")
    assert [r.status_code for r in joins + infos] == [200] * 4
    assert unknown.status_code == 404
    validate_http("/session/{code}/info", "get", 404, unknown.json())


@needs_nginx
@pytest.mark.xfail(
    strict=True,
    reason="the server answers 101 before it looks the session up, so nginx cannot pass a "
    "WebSocket for another process's session on; a 404 before the upgrade would let it "
    "(proxy_next_upstream http_404 is already in the site config)",
)
async def test_listeners_reach_the_process_that_holds_the_session(
    tmp_path: Path, cert: Cert
) -> None:
    with trio.fail_after(30):
        async with (
            running_server(Config(port=0)) as first,
            running_server(Config(port=0)) as second,
            running_nginx(tmp_path / "nginx", cert, [first, second]) as proxy,
            httpx.AsyncClient(base_url=second.url, trust_env=False) as direct,
        ):
            session_id = (await post(direct, "/session/start"))["sessionId"]
            path = listener_path(session_id, "es")
            async with proxy.websocket(path) as one, proxy.websocket(path) as two:
                greetings = [(await one.receive())["type"], (await two.receive())["type"]]
    assert greetings == ["session_joined", "session_joined"]


def _alb_idle_timeout() -> int:
    """The scaled shape's ALB idle timeout, which the template also hands install.sh."""
    template = _template()
    seconds = int(template["Mappings"]["Tuning"]["LoadBalancer"]["IdleTimeoutSeconds"])
    attributes = template["Resources"]["LoadBalancer"]["Properties"]["LoadBalancerAttributes"]
    idle = next(a["Value"] for a in attributes if a["Key"] == "idle_timeout.timeout_seconds")
    assert idle == {"Fn::FindInMap": ["Tuning", "LoadBalancer", "IdleTimeoutSeconds"]}
    assert "LB_IDLE_TIMEOUT=${LbIdleTimeout}" in _user_data_from_template()
    return seconds


@needs_nginx
async def test_behind_the_alb_nginx_keeps_connections_longer_than_the_alb(
    tmp_path: Path, cert: Cert
) -> None:
    alb = _alb_idle_timeout()
    root = tmp_path / "nginx"
    with trio.fail_after(30):
        async with (
            running_server(Config(port=0)) as server,
            running_nginx(
                root,
                cert,
                [server],
                ("--lb-idle-timeout", str(alb), "--trusted-proxy", "10.42.0.0/16"),
            ) as proxy,
            proxy.client() as http,
        ):
            health = await http.get("/health")
    assert health.status_code == 200
    conf = (root / "babel-actors.conf").read_text()
    timeouts = re.findall(r"^\s*keepalive_timeout (\d+)s;$", conf, re.M)
    assert len(timeouts) == 1 and int(timeouts[0]) > alb
    requests = re.findall(r"^\s*keepalive_requests (\d+);$", conf, re.M)
    assert len(requests) == 1 and int(requests[0]) >= 10000, "nginx 1.18 closes after 100"


def test_without_a_load_balancer_idle_keepalives_stay_short() -> None:
    conf = render.render(
        render._parser().parse_args(
            ["--server-name", "live.example.org", "--backend", "127.0.0.1:8081"]
        )
    )
    assert re.findall(r"^\s*keepalive_timeout (\d+)s;$", conf, re.M) == ["30"]
    assert (
        render.main(
            ["--server-name", "a.example.org", "--backend", "h:1", "--lb-idle-timeout", "5000"]
        )
        == 2
    )


HOST_TOKEN = "h0st-t0ken-5ecret-3f9a"
API_KEY = "ap1-key-5ecret-77c1"


@needs_nginx
async def test_a_502_leaves_no_token_or_key_in_nginx_logs(tmp_path: Path, cert: Cert) -> None:
    root = tmp_path / "nginx"
    # Bound but not listening: every connection to it is refused, so nginx answers 502.
    with socket.socket() as down:
        down.bind(("127.0.0.1", 0))
        port = down.getsockname()[1]
        with trio.fail_after(30):
            async with (
                running_nginx(root, cert, [port]) as proxy,
                proxy.client() as http,
            ):
                socket_upgrade = await http.get(
                    f"/translate?role=host&sessionId=s1&token={HOST_TOKEN}&apiKey={API_KEY}",
                    headers={
                        "connection": "upgrade",
                        "upgrade": "websocket",
                        "sec-websocket-version": "13",
                        "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
                    },
                )
                lookup = await http.get(f"/session/ABCDEF/info?apiKey={API_KEY}")
    assert (socket_upgrade.status_code, lookup.status_code) == (502, 502)
    logs = {p.name: p.read_text() for p in root.glob("*.log")}
    access = logs["babel-actors.access.log"]
    assert access.count(" 502 ") == 2, access
    assert f"upstream=127.0.0.1:{port}" in access, "the access log says which backend failed"
    assert "babel-actors.error.log" in logs
    for name, text in logs.items():
        assert HOST_TOKEN not in text and API_KEY not in text, name


@needs_nginx
@pytest.mark.skipif(os.geteuid() != 0, reason="install.sh runs as root")
async def test_lets_encrypt_is_asked_only_once_the_domain_reaches_this_nginx(
    tmp_path: Path, cert: Cert
) -> None:
    """install.sh's probe: a nonce in the ACME root, fetched through DOMAIN. When DOMAIN
    leads elsewhere (here: to an nginx serving another directory), wait_for_dns gives
    up after DNS_WAIT_S; lets_encrypt runs certbot only when it did not."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = 'set -euo pipefail; . "$1"; "$2"'
    with trio.fail_after(30):
        async with (
            running_server(Config(port=0)) as server,
            running_nginx(tmp_path / "nginx", cert, [server]) as proxy,
        ):

            async def install_sh(step: str, acme_root: Path) -> int:
                env = {**os.environ, "DOMAIN": f"127.0.0.1:{proxy.http_port}",
                       "BABEL_ACME_ROOT": str(acme_root), "BABEL_ETC": str(tmp_path / "etc"),
                       "DNS_WAIT_S": "0"}  # fmt: skip
                done = await trio.run_process(
                    ["bash", "-c", probe, "-", str(DEPLOY / "install.sh"), step],
                    env=env, check=False, capture_stderr=True,
                )  # fmt: skip
                return done.returncode

            here = await install_sh("domain_reaches_here", proxy.acme_root)
            not_here = await install_sh("domain_reaches_here", elsewhere)
            waited = await install_sh("wait_for_dns", elsewhere)
    assert (here, not_here, waited) == (0, 1, 1)
    assert list((proxy.acme_root / ".well-known/acme-challenge").iterdir()) == [], "cleaned up"


def test_render_refuses_values_nginx_would_misread() -> None:
    base = ["--server-name", "live.example.org"]
    assert render.main([*base, "--backend", "127.0.0.1:8081; evil"]) == 2
    assert render.main([*base, "--backend", "127.0.0.1:8081", "--cert", "/a b.pem"]) == 2
    assert render.main(["--server-name", "bad name", "--backend", "127.0.0.1:8081"]) == 2
    with pytest.raises(ValueError, match="unknown placeholders"):
        render.render(render._parser().parse_args([*base, "--backend", "h:1"]), "@NOPE@\n")


# ------------------------------------------------------------------ the other files


def test_cloudformation_template_passes_cfn_lint() -> None:
    cfn_lint = Path(sys.executable).with_name("cfn-lint")
    result = subprocess.run(
        [str(cfn_lint), str(DEPLOY / "cloudformation.yaml")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


CHECKOV = Path(__file__).resolve().parent.parent / ".venv-checkov/bin/checkov"


@pytest.mark.skipif(not CHECKOV.exists(), reason="checkov is not installed (make test installs it)")
@pytest.mark.parametrize("shape", ["small", "scaled"])
def test_cloudformation_template_passes_checkov(shape: str, tmp_path: Path) -> None:
    """checkov drops resources whose condition is false under the parameters' defaults,
    so each shape is checked as the default in turn; accepted findings are listed,
    with their reasons, in deploy/checkov.yaml."""
    text = (DEPLOY / "cloudformation.yaml").read_text()
    default = "    Default: small\n    AllowedValues: [small, scaled]"
    assert text.count(default) == 1
    template = tmp_path / f"{shape}.yaml"
    template.write_text(text.replace(default, default.replace("small", shape, 1)))
    result = subprocess.run(
        [str(CHECKOV), "-f", str(template), "--config-file", str(DEPLOY / "checkov.yaml"),
         "--skip-download"],
        capture_output=True, text=True, env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    passed = re.search(r"Passed checks: (\d+), Failed checks: 0", result.stdout)
    assert passed is not None and int(passed[1]) > 20, result.stdout


def _template() -> Any:
    from cfnlint.decode import decode_str

    template, problems = decode_str((DEPLOY / "cloudformation.yaml").read_text())
    assert not problems
    return template


def test_cloudformation_opens_ssh_to_the_admin_only_and_keeps_the_bucket_private() -> None:
    resources = _template()["Resources"]
    ingress = resources["InstanceSecurityGroup"]["Properties"]["SecurityGroupIngress"]
    assert [(r["FromPort"], r["CidrIp"]) for r in ingress] == [(22, {"Ref": "AdminCidr"})]
    world = [
        r["Properties"]["FromPort"]
        for r in resources.values()
        if r["Type"] == "AWS::EC2::SecurityGroupIngress"
        and r["Properties"].get("CidrIp") == "0.0.0.0/0"
    ]
    assert sorted(world) == [80, 443]
    block = resources["WebBucket"]["Properties"]["PublicAccessBlockConfiguration"]
    assert all(block.values())
    origin = resources["WebDistribution"]["Properties"]["DistributionConfig"]["Origins"][0]
    assert origin["OriginAccessControlId"] == {"Fn::GetAtt": ["WebOriginAccessControl", "Id"]}
    scaled = {"LoadBalancer", "AutoScalingGroup", "Redis", "TargetGroup"}
    assert all(resources[name]["Condition"] == "IsScaled" for name in scaled)
    assert resources["Instance"]["Condition"] == "IsSmall"


def test_updates_neither_replace_the_small_instance_for_a_new_ami_nor_go_unsignalled() -> None:
    template = _template()
    resources = template["Resources"]
    data = resources["LaunchTemplate"]["Properties"]["LaunchTemplateData"]
    # EC2 resolves the AMI at launch; CloudFormation sees the same text on every update.
    assert data["ImageId"] == {"Fn::Sub": "resolve:ssm:${ImageParameter}"}
    assert template["Parameters"]["ImageParameter"]["Type"] == "String"
    assert resources["Instance"]["CreationPolicy"]["ResourceSignal"]["Count"] == 1
    group = resources["AutoScalingGroup"]
    assert group["CreationPolicy"]["ResourceSignal"]["Count"] == {"Ref": "DesiredInstances"}
    rolling = group["UpdatePolicy"]["AutoScalingRollingUpdate"]
    assert rolling["WaitOnResourceSignals"] is True and rolling["MaxBatchSize"] == 1
    assert rolling["MinInstancesInService"] == {"Ref": "MinInstances"}
    user_data = _user_data_from_template()
    assert "CFN_RESOURCE=${SignalResource}" in user_data
    assert "aws cloudformation signal-resource" in user_data
    assert "git clone" not in user_data, "the release comes from S3, not git"


def test_several_processes_are_refused_without_redis() -> None:
    rule = _template()["Rules"]["ProcessesNeedRedis"]
    assert rule["RuleCondition"] == {"Fn::Equals": [{"Ref": "Shape"}, "small"]}
    assert rule["Assertions"][0]["Assert"] == {"Fn::Equals": [{"Ref": "ProcessesPerInstance"}, "1"]}


def test_redis_takes_auth_from_secrets_manager_over_tls_on_a_pinned_engine() -> None:
    resources = _template()["Resources"]
    redis = resources["Redis"]["Properties"]
    assert redis["TransitEncryptionEnabled"] is True and redis["AtRestEncryptionEnabled"]
    assert redis["AuthToken"] == {"Fn::Sub": "{{resolve:secretsmanager:${RedisAuthSecret}}}"}
    assert redis["EngineVersion"] == {"Ref": "RedisEngineVersion"}
    assert redis["NumCacheClusters"] == {"Fn::If": ["TwoRedisNodes", 2, 1]}
    generated = resources["RedisAuthSecret"]["Properties"]["GenerateSecretString"]
    assert generated["ExcludePunctuation"] is True, "render-env puts it in a URL unquoted"


def test_the_instance_role_reads_only_this_stacks_settings() -> None:
    role = _template()["Resources"]["InstanceRole"]["Properties"]
    assert "ManagedPolicyArns" not in role, "AmazonSSMManagedInstanceCore reads any parameter"
    statements = role["Policies"][0]["PolicyDocument"]["Statement"]
    by_sid = {st["Sid"]: st for st in statements if "Sid" in st}
    settings = by_sid["ThisStacksSettings"]
    assert settings["Action"] == "ssm:GetParametersByPath"
    assert all(
        "parameter/babel-actors/${AWS::StackName}" in r["Fn::Sub"] for r in settings["Resource"]
    )
    wildcard = sorted(sid for sid, st in by_sid.items() if st["Resource"] == "*")
    assert wildcard == ["ShipHostMetrics", "SystemsManagerAgent"], "APIs without resource ARNs"
    assert by_sid["ShipHostMetrics"]["Condition"] == {
        "StringEquals": {"cloudwatch:namespace": "BabelActors"}
    }


def test_alarms_go_to_the_stacks_topic() -> None:
    resources = _template()["Resources"]
    alarms = {k: r for k, r in resources.items() if r["Type"] == "AWS::CloudWatch::Alarm"}
    assert {"Nginx5xxAlarm", "SystemStatusAlarm", "InstanceStatusAlarm", "CpuCreditsAlarm",
            "UnhealthyHostsAlarm", "LoadBalancer5xxAlarm", "RedisCpuAlarm",
            "RedisMemoryAlarm"} <= alarms.keys()  # fmt: skip
    for name, alarm in alarms.items():
        assert {"Ref": "AlertTopic"} in alarm["Properties"]["AlarmActions"], name


def test_the_scaled_shape_can_request_its_own_dns_validated_certificate() -> None:
    template = _template()
    certificate = template["Resources"]["Certificate"]
    assert certificate["Condition"] == "RequestCertificate"
    assert certificate["Properties"]["ValidationMethod"] == "DNS"
    options = certificate["Properties"]["DomainValidationOptions"][0]
    assert options["HostedZoneId"] == {"Ref": "HostedZoneId"}
    listener = template["Resources"]["HttpsListener"]["Properties"]
    assert listener["Certificates"][0]["CertificateArn"] == {
        "Fn::If": ["HasCertificate", {"Ref": "CertificateArn"}, {"Ref": "Certificate"}]
    }


def _user_data_from_template() -> str:
    props = _template()["Resources"]["LaunchTemplate"]["Properties"]
    text, _ = props["LaunchTemplateData"]["UserData"]["Fn::Base64"]["Fn::Sub"]
    return str(text)


def test_the_template_carries_the_cloud_init_file_filled_from_parameters() -> None:
    standalone = (DEPLOY / "cloud-init.yaml").read_text().splitlines()
    embedded = _user_data_from_template().splitlines()
    assert len(standalone) == len(embedded)
    setting = re.compile(r"^\s+([A-Z_]+)=")
    for ours, theirs in zip(standalone, embedded, strict=True):
        if (key := setting.match(ours)) is not None:
            assert theirs.startswith(f"{key.group(0)}${{"), (ours, theirs)
        else:
            assert ours == theirs


needs_cloud_init = pytest.mark.skipif(
    shutil.which("cloud-init") is None,
    reason="cloud-init is not installed (make test installs it with apt)",
)


def _cloud_init_keys() -> set[str]:
    """Every top-level key that some cloud-init module reads (cloud-init's own schema;
    ``cloud-init schema`` lets unknown keys through, so a typo would pass it)."""
    schema_file = Path("/usr/lib/python3/dist-packages/cloudinit/config/schemas")
    schema_file /= "schema-cloud-config-v1.json"
    if not schema_file.exists():
        pytest.skip("cloud-init's schema file is not where Debian puts it")
    schema = json.loads(schema_file.read_text())
    keys: set[str] = set()
    for definition in schema["$defs"].values():
        keys.update(definition.get("properties", {}))
    return keys


def _cloud_init_schema(path: Path) -> None:
    result = subprocess.run(
        ["cloud-init", "schema", "--config-file", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid cloud-config" in result.stdout
    document = yaml.safe_load(path.read_text())
    unknown = set(document) - _cloud_init_keys()
    assert not unknown, f"keys no cloud-init module reads: {unknown}"


@needs_cloud_init
def test_cloud_init_user_data_passes_cloud_init_schema() -> None:
    _cloud_init_schema(DEPLOY / "cloud-init.yaml")


@needs_cloud_init
def test_cloud_init_user_data_in_the_template_passes_cloud_init_schema(tmp_path: Path) -> None:
    values = {
        "DomainName": "live.example.org",
        "AdminEmail": "ops@example.org",
        "TlsMode": "selfsigned",
        "ProcessesPerInstance": "2",
        "TrustedProxyCidr": "10.42.0.0/16",
        "LbIdleTimeout": "3600",
        "ReleaseUrl": "s3://releases/babel-actors/0.1.0/babel-actors-0.1.0.tar.gz",
        "Region": "us-east-1",
        "SettingsPath": "/babel-actors/babel/",
        "AllowOpen": "0",
        "RedisHost": "master.babel.cache.amazonaws.com",
        "RedisPort": "6379",
        "RedisSecretArn": REDIS_ARN,
        "LogGroupPrefix": "/babel-actors/babel",
        "StackName": "babel",
        "SignalResource": "AutoScalingGroup",
    }
    filled = re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], _user_data_from_template())
    user_data = tmp_path / "user-data.yaml"
    user_data.write_text(filled)
    _cloud_init_schema(user_data)
    env = yaml.safe_load(filled)["write_files"][0]["content"]
    assert "TRUSTED_PROXY_CIDR=10.42.0.0/16\n" in env


def _systemd_root(tmp_path: Path) -> Path:
    """A file-system root for ``systemd-analyze --root``: the system's own units, ours,
    and a stand-in for the venv's ``babel-actors`` (verify checks ExecStart exists)."""
    units = Path("/usr/lib/systemd/system")
    if shutil.which("systemd-analyze") is None or not units.is_dir():
        pytest.skip("systemd is not installed here, so systemd-analyze cannot check the unit")
    root = tmp_path / "root"
    shutil.copytree(units, root / "usr/lib/systemd/system", symlinks=True)
    ours = root / "etc/systemd/system"
    ours.mkdir(parents=True)
    for unit in (DEPLOY / "systemd").iterdir():
        shutil.copy(unit, ours / unit.name)
    for name in ("opt/babel-actors/venv/bin/babel-actors", "usr/local/lib/babel-actors/render-env"):
        exe = root / name
        exe.parent.mkdir(parents=True)
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
    return root


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    root = _systemd_root(tmp_path)
    result = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}",
         "babel-actors@8081.service", "babel-actors.target", "babel-actors-settings.service"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", "warnings are findings too"


def test_systemd_unit_is_hardened(tmp_path: Path) -> None:
    root = _systemd_root(tmp_path)
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", f"--root={root}", "--threshold=20",
         "--no-pager", "babel-actors@8081.service"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    unit = (DEPLOY / "systemd/babel-actors@.service").read_text()
    for line in ("User=babel", "NoNewPrivileges=yes", "ProtectSystem=strict",
                 "Restart=always", "KillSignal=SIGTERM", "StandardOutput=journal",
                 "EnvironmentFile=-/etc/babel-actors/babel-actors.env"):  # fmt: skip
        assert line in unit.splitlines()
    grace = re.search(r"^Environment=BABEL_SHUTDOWN_GRACE_S=(\d+)$", unit, re.M)
    stop = re.search(r"^TimeoutStopSec=(\d+)$", unit, re.M)
    assert grace is not None and stop is not None
    assert int(stop[1]) > int(grace[1]) + 5, "systemd must not kill the server while it drains"


@pytest.mark.skipif(
    shutil.which("rsyslogd") is None or shutil.which("logrotate") is None,
    reason="rsyslog and logrotate are not installed (make test installs them with apt)",
)
def test_the_journald_to_file_rule_and_its_rotation_pass_their_tools(tmp_path: Path) -> None:
    rule = DEPLOY / "rsyslog/30-babel-actors.conf"
    result = subprocess.run(["rsyslogd", "-N1", "-f", str(rule)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "/var/log/babel-actors/server.log" in rule.read_text()
    rotation = DEPLOY / "rsyslog/babel-actors.logrotate"
    rotate = subprocess.run(
        ["logrotate", "-d", "-s", str(tmp_path / "state"), str(rotation)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert rotate.returncode == 0 and "error" not in rotate.stderr.lower(), rotate.stderr
    agent = json.loads((DEPLOY / "cloudwatch/agent.json.in").read_text())
    shipped = {f["file_path"] for f in agent["logs"]["logs_collected"]["files"]["collect_list"]}
    assert {"/var/log/babel-actors/server.log", "/var/log/nginx/babel-actors.access.log",
            "/var/log/nginx/babel-actors.error.log"} <= shipped  # fmt: skip


needs_shellcheck = pytest.mark.skipif(
    shutil.which("shellcheck") is None,
    reason="shellcheck is not installed (make test installs it with apt)",
)


@needs_shellcheck
@pytest.mark.parametrize(
    "script",
    ["deploy/install.sh", "deploy/publish-web.sh", "deploy/upgrade.sh",
     "scripts/build-release.sh", "scripts/publish-release.sh"],
)  # fmt: skip
def test_shell_scripts_pass_shellcheck(script: str) -> None:
    path = DEPLOY.parent / script
    result = subprocess.run(["shellcheck", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


FAKE_AWS = """#!/usr/bin/env bash
# Records each call; answers describe-stacks like a stack with the template's outputs.
printf '%s\\n' "$*" >>"$AWS_LOG"
case "$1 $2" in
  "s3 sync") cp "$3/config.js" "$AWS_LOG.config.js" ;;
  "cloudformation describe-stacks")
    case "$*" in
      *WebBucketName*) echo web-bucket ;;
      *WebDistributionId*) echo E123 ;;
      *ServerUrl*) echo https://live.example.org ;;
    esac ;;
  "cloudfront create-invalidation") echo I42 ;;
esac
"""


@pytest.fixture
def fake_aws(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    aws = bin_dir / "aws"
    aws.write_text(FAKE_AWS)
    aws.chmod(0o755)
    log = tmp_path / "aws.log"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "AWS_LOG": str(log)}
    yield env, log


def _web_dir(tmp_path: Path) -> Path:
    web = tmp_path / "web"
    (web / "js").mkdir(parents=True)
    (web / "index.html").write_text("<!doctype html><title>t</title>")
    (web / "js/app.js").write_text("console.log(1);")
    (web / "config.js").write_text('window.BABEL_SERVER = "";\n')
    return web


def test_publish_syncs_assets_then_pages_then_invalidates(
    tmp_path: Path, fake_aws: tuple[dict[str, str], Path]
) -> None:
    env, log = fake_aws
    web = _web_dir(tmp_path)
    subprocess.run(
        [str(DEPLOY / "publish-web.sh"), "--stack", "babel", str(web)],
        env=env, check=True, capture_output=True,
    )  # fmt: skip
    calls = log.read_text().splitlines()
    syncs = [c for c in calls if c.startswith("s3 sync")]
    assert len(syncs) == 3 and all(" s3://web-bucket " in f"{c} " for c in syncs)
    assert "--exclude *.html" in syncs[0] and "max-age=300" in syncs[0]
    assert "--include *.html" in syncs[1] and "max-age=0, must-revalidate" in syncs[1]
    assert "--delete" in syncs[2]
    assert calls[-1].startswith("cloudfront create-invalidation --distribution-id E123")
    assert "--paths /*" in calls[-1]
    config_js = Path(f"{log}.config.js").read_text()
    assert 'window.BABEL_SERVER = "https://live.example.org";' in config_js
    assert (web / "config.js").read_text() == 'window.BABEL_SERVER = "";\n', "source untouched"


def test_publish_refuses_a_directory_without_a_page(
    tmp_path: Path, fake_aws: tuple[dict[str, str], Path]
) -> None:
    env, log = fake_aws
    result = subprocess.run(
        [str(DEPLOY / "publish-web.sh"), "--bucket", "b", "--distribution", "d", str(tmp_path)],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode != 0 and "index.html" in result.stderr
    assert not log.exists(), "nothing was sent to AWS"


# ------------------------------------------------------------------ settings from SSM

FAKE_SSM_AWS = """#!/usr/bin/env bash
# SSM Parameter Store and Secrets Manager as the CLI answers them, from files: the
# parameters under the asked path (decrypted only when asked), the Redis secret.
printf '%s\\n' "$*" >>"$AWS_LOG"
[[ -e $AWS_FAIL ]] && { echo "An error occurred (ThrottlingException)" >&2; exit 254; }
case "$1 $2" in
  "ssm get-parameters-by-path")
    [[ " $* " == *" --with-decryption "* ]] || { echo 'not decrypted' >&2; exit 9; }
    [[ " $* " == *" --path $SSM_PATH "* ]] || { echo '{"Parameters": []}'; exit 0; }
    cat "$SSM_PARAMETERS" ;;
  "secretsmanager get-secret-value")
    [[ " $* " == *" --secret-id $REDIS_SECRET_ARN "* ]] || exit 9
    printf '{"Name": "redis", "SecretString": "%s"}\\n' "$REDIS_TOKEN" ;;
  *) echo "unexpected: $*" >&2; exit 9 ;;
esac
"""
STACK_PATH = "/babel-actors/babel/"
REDIS_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:babel-redis-AbCdEf"
REDIS_TOKEN = "r3disT0kenFromSecretsManager42"
GOOGLE_KEY = {"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----\nk\n"}


@attrs.frozen
class ParameterStore:
    """A fake ``aws`` on PATH and the deploy.env that points render-env.py at it."""

    etc: Path
    """What /etc/babel-actors is on an instance."""
    env: dict[str, str]
    """The environment to run render-env.py in."""
    parameters: Path
    """The JSON get-parameters-by-path answers."""
    fail: Path
    """While this file exists, every aws call fails."""

    def put(self, **values: str) -> None:
        listed = [{"Name": f"{STACK_PATH}{k}", "Type": "SecureString", "Value": v}
                  for k, v in values.items()]  # fmt: skip
        self.parameters.write_text(json.dumps({"Parameters": listed}))

    def render(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(DEPLOY / "settings/render-env.py"),
             "--deploy-env", str(self.etc / "deploy.env")],
            env=self.env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    def env_file(self) -> dict[str, str]:
        text = (self.etc / "babel-actors.env").read_text()
        return dict(line.split("=", 1) for line in text.splitlines() if not line.startswith("#"))


@pytest.fixture
def store(tmp_path: Path) -> ParameterStore:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "aws").write_text(FAKE_SSM_AWS)
    (bin_dir / "aws").chmod(0o755)
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "deploy.env").write_text(
        f"DOMAIN=live.example.org\nSETTINGS_PATH={STACK_PATH}\nAWS_REGION=us-east-1\n"
        f"REDIS_SECRET_ARN={REDIS_ARN}\nREDIS_HOST=master.babel.cache.amazonaws.com\n"
        "REDIS_PORT=6379\n"
    )
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "AWS_LOG": str(tmp_path / "aws.log"), "AWS_FAIL": str(tmp_path / "fail"),
           "SSM_PATH": STACK_PATH, "SSM_PARAMETERS": str(tmp_path / "parameters.json"),
           "REDIS_SECRET_ARN": REDIS_ARN, "REDIS_TOKEN": REDIS_TOKEN}  # fmt: skip
    return ParameterStore(etc, env, tmp_path / "parameters.json", tmp_path / "fail")


def test_settings_and_keys_are_rendered_from_the_stacks_parameters(store: ParameterStore) -> None:
    store.put(
        BABEL_API_KEYS="k-one,k-two",
        BABEL_OPERATOR_KEY="op-key-1",
        BABEL_STT="google",
        OPENAI_API_KEY="sk-test-123",
        GOOGLE_CREDENTIALS_JSON=json.dumps(GOOGLE_KEY),
    )
    result = store.render()
    assert result.returncode == 0, result.stderr
    env = store.env_file()
    assert env["BABEL_API_KEYS"] == "'k-one,k-two'"
    assert env["OPENAI_API_KEY"] == "'sk-test-123'"
    assert env["BABEL_STT"] == "'google'" and env["BABEL_MT"] == "'apertium'", "defaults fill in"
    google = store.etc / "google-credentials.json"
    assert env["GOOGLE_APPLICATION_CREDENTIALS"] == f"'{google}'"
    assert json.loads(google.read_text()) == GOOGLE_KEY
    assert "GOOGLE_CREDENTIALS_JSON" not in env
    assert (store.etc / "operator-key").read_text() == "op-key-1"
    for name in ("babel-actors.env", "google-credentials.json", "operator-key"):
        assert (store.etc / name).stat().st_mode & 0o007 == 0, f"{name} is not world-readable"
    for value in ("k-one", "sk-test-123", "op-key-1", "PRIVATE KEY", "t0ken"):
        assert value not in result.stderr + result.stdout, "values never reach the journal"
    # What systemd's EnvironmentFile= reads is what a shell reads from single quotes.
    shell = subprocess.run(
        ["bash", "-c", 'set -a; . "$1"; printf %s "$BABEL_REDIS_URL"', "-",
         str(store.etc / "babel-actors.env")], capture_output=True, text=True, check=True,
    )  # fmt: skip
    _assert_verified_redis_url(shell.stdout)


def _assert_verified_redis_url(url: str) -> None:
    """coredis, reading ``url`` as the server does, checks the certificate and host name
    and sends the AUTH token from Secrets Manager."""
    import coredis

    pool = coredis.ConnectionPool.from_url(url)
    kwargs: dict[str, Any] = pool.connection_kwargs
    context = kwargs["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert kwargs["password"] == REDIS_TOKEN


def test_a_failed_reload_keeps_the_last_good_settings(store: ParameterStore) -> None:
    store.put(BABEL_API_KEYS="k-one")
    assert store.render().returncode == 0
    before = (store.etc / "babel-actors.env").read_text()
    store.put(BABEL_API_KEYS="k-two")
    store.fail.touch()
    result = store.render()
    assert result.returncode == 1 and "ThrottlingException" in result.stderr
    assert (store.etc / "babel-actors.env").read_text() == before
    store.fail.unlink()
    assert store.render().returncode == 0
    assert store.env_file()["BABEL_API_KEYS"] == "'k-two'"


def test_an_instance_without_api_keys_refuses_to_come_up_open(store: ParameterStore) -> None:
    store.put(BABEL_STT="whisper")
    result = store.render()
    assert result.returncode == 1 and f"{STACK_PATH}BABEL_API_KEYS" in result.stderr
    assert not (store.etc / "babel-actors.env").exists()
    deploy_env = store.etc / "deploy.env"
    deploy_env.write_text(deploy_env.read_text() + "ALLOW_OPEN=1\n")
    assert store.render().returncode == 0
    assert "BABEL_API_KEYS" not in store.env_file()


def test_values_the_env_file_cannot_hold_are_refused_by_name(store: ParameterStore) -> None:
    store.put(BABEL_API_KEYS="k-one", BABEL_ALLOWED_ORIGINS="it's\nbad")
    result = store.render()
    assert result.returncode == 1 and "BABEL_ALLOWED_ORIGINS" in result.stderr
    assert "it's" not in result.stderr


def test_an_instance_set_up_by_hand_keeps_its_env_file(store: ParameterStore) -> None:
    (store.etc / "deploy.env").write_text("DOMAIN=live.example.org\nSETTINGS_PATH=\n")
    (store.etc / "babel-actors.env").write_text("BABEL_API_KEYS=by-hand\n")
    assert store.render().returncode == 0
    assert (store.etc / "babel-actors.env").read_text() == "BABEL_API_KEYS=by-hand\n"
    assert not Path(store.env["AWS_LOG"]).exists(), "AWS was not asked"


# ------------------------------------------------------------------ the release artifact

ROOT = DEPLOY.parent
RELEASE_VERSION = "0.0.1+test"


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scripts/build-release.sh's tarball, with the core and the Redis extra (every
    extra would fetch the speech engines' few hundred MB; the steps are the same)."""
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [str(ROOT / "scripts/build-release.sh"), "--extras", "redis",
         "--version", RELEASE_VERSION, "--out", str(out)],
        env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return out / f"babel-actors-{RELEASE_VERSION}.tar.gz"


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("python3.11") is None,
    reason="install.sh runs as root with python3.11, as on the instances",
)
def test_install_sh_installs_a_release_without_pypi_or_git(release: Path, tmp_path: Path) -> None:
    check = subprocess.run(
        ["sha256sum", "-c", f"{release.name}.sha256"], cwd=release.parent, capture_output=True
    )
    assert check.returncode == 0, check.stdout
    unpacked = tmp_path / "release"
    unpacked.mkdir()
    subprocess.run(
        ["tar", "-xzf", str(release), "-C", str(unpacked), "--strip-components=1"], check=True
    )
    wheels = sorted(p.name for p in (unpacked / "wheelhouse").glob("*.whl"))
    lock = (unpacked / "requirements.lock").read_text().splitlines()
    pinned = [line for line in lock if not line.startswith("#")]
    assert len(pinned) == len(wheels) and all(" --hash=sha256:" in line for line in pinned)
    assert any(line.startswith("babel-actors==") for line in pinned)
    assert any(line.startswith("coredis==") for line in pinned), "the extra's dependencies"
    assert not (unpacked / ".git").exists() and (unpacked / "deploy/install.sh").exists()

    venv = tmp_path / "venv"
    # Only what the release holds: not this checkout (the tests' PYTHONPATH).
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env = {**clean, "BABEL_VENV": str(venv), "BABEL_ETC": str(tmp_path / "etc"),
           "DOMAIN": "live.example.org",
           # Nothing may come from an index: this one does not answer.
           "PIP_INDEX_URL": "http://127.0.0.1:9/simple"}  # fmt: skip
    install = ["bash", "-c", 'set -euo pipefail; . "$1"; install_venv', "-",
               str(unpacked / "deploy/install.sh")]  # fmt: skip
    for _ in ("install", "upgrade"):
        result = subprocess.run(
            install, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert not Path(f"{venv}.old").exists()
    run = subprocess.run(
        [str(venv / "bin/python"), "-c",
         "import pathlib, babel_actors, coredis; print(pathlib.Path(babel_actors.__file__))"],
        capture_output=True, text=True, env=clean, cwd=tmp_path,
    )  # fmt: skip
    package = Path(run.stdout.strip()).parent
    assert package.is_relative_to(venv), run.stdout + run.stderr
    assert (package / "web/index.html").is_file(), "the web client is in the wheel"
    help_ = subprocess.run(
        [str(venv / "bin/babel-actors"), "serve", "--help"],
        capture_output=True, env=clean, cwd=tmp_path,
    )  # fmt: skip
    assert help_.returncode == 0
