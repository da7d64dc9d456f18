#!/usr/bin/env python3
"""Render ``babel-actors.conf.in`` into an nginx site config.

    render.py --server-name live.example.org --backend 127.0.0.1:8081 \
        --backend 127.0.0.1:8082 -o /etc/nginx/sites-available/babel-actors.conf

Standard library only, Python 3.8+: it runs on a fresh Ubuntu 22.04 before the
project's own Python exists. Every ``@NAME@`` in the template must be filled, and
every value is checked, so a typo fails here rather than in ``nginx -t``.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import sys
from pathlib import Path

TEMPLATE = Path(__file__).with_name("babel-actors.conf.in")
PLACEHOLDER = re.compile(r"@([A-Z_]+)@")
NAME = re.compile(r"^(?:\*\.)?[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$|^_$")
BACKEND = re.compile(r"^(?:unix:/[^;{}\s]+|[A-Za-z0-9.-]+:\d{1,5}|\[[0-9A-Fa-f:]+\]:\d{1,5})$")
SAFE_PATH = re.compile(r"^/[^;{}\s'\"]*$")
LB_KEEPALIVE_MARGIN_S = 60
"""How much longer than a load balancer's idle timeout nginx keeps a connection."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add(
        "--server-name",
        required=True,
        help="public host name (the first is canonical)",
        action="append",
    )
    add(
        "--backend",
        required=True,
        action="append",
        help="a babel-actors process, host:port (repeat for each)",
    )
    add(
        "--listen",
        action="append",
        help="address to listen on (repeat); default: every IPv4 and IPv6 address",
    )
    add("--http-port", type=int, default=80)
    add("--https-port", type=int, default=443)
    add("--cert", help="certificate chain (default: Let's Encrypt's fullchain.pem)")
    add("--key", help="private key (default: Let's Encrypt's privkey.pem)")
    add("--acme-root", default="/var/www/letsencrypt", help="certbot --webroot directory")
    add("--log-dir", default="/var/log/nginx")
    add(
        "--trusted-proxy",
        action="append",
        default=[],
        help="CIDR of a load balancer whose X-Forwarded-For is believed (repeat)",
    )
    add(
        "--lb-idle-timeout",
        type=int,
        default=0,
        metavar="SECONDS",
        help="idle timeout of a load balancer in front (an ALB's idle_timeout); nginx "
        "keeps its connections open longer, so the balancer never reuses one nginx "
        "has just closed (a 502)",
    )
    add("-o", "--output", help="write here instead of standard output")
    return parser


def render(args: argparse.Namespace, template: str | None = None) -> str:
    """The site config for parsed ``args``; raises ValueError on a bad value."""
    names: list[str] = args.server_name
    for name in names:
        if not NAME.match(name):
            raise ValueError(f"not a host name: {name!r}")
    for backend in args.backend:
        if not BACKEND.match(backend):
            raise ValueError(f"a backend is host:port, [v6]:port or unix:/path, not {backend!r}")
    for port in (args.http_port, args.https_port):
        if not 0 < port < 65536:
            raise ValueError(f"not a port: {port}")
    if not 0 <= args.lb_idle_timeout <= 4000:
        raise ValueError(f"an ALB's idle timeout is 1-4000 s, not {args.lb_idle_timeout}")
    canonical = names[0] if names[0] != "_" else "$host"
    cert = args.cert or f"/etc/letsencrypt/live/{names[0]}/fullchain.pem"
    key = args.key or f"/etc/letsencrypt/live/{names[0]}/privkey.pem"
    for path in (cert, key, args.acme_root, args.log_dir):
        if not SAFE_PATH.match(path):
            raise ValueError(f"not an absolute path nginx can take unquoted: {path!r}")
    proxies = [str(ipaddress.ip_network(cidr, strict=False)) for cidr in args.trusted_proxy]
    listen = args.listen or ["", "[::]"]

    def listen_lines(port: int, params: str) -> list[str]:
        return [f"listen {f'{addr}:' if addr else ''}{port}{params};" for addr in listen]

    values: dict[str, str | list[str]] = {
        "SERVER_NAME": " ".join(names),
        "CANONICAL_NAME": canonical,
        "HTTPS_PORT_SUFFIX": "" if args.https_port == 443 else f":{args.https_port}",
        "UPSTREAM_SERVERS": [f"server {b} max_fails=3 fail_timeout=10s;" for b in args.backend],
        "LISTEN_HTTP": listen_lines(args.http_port, " default_server"),
        "LISTEN_HTTPS": listen_lines(args.https_port, " ssl http2 default_server"),
        "CERT": cert,
        "KEY": key,
        "ACME_ROOT": args.acme_root,
        "LOG_DIR": args.log_dir.rstrip("/") or "/",
        "KEEPALIVE": (
            [
                f"keepalive_timeout {args.lb_idle_timeout + LB_KEEPALIVE_MARGIN_S}s;",
                "keepalive_requests 100000;",
            ]
            if args.lb_idle_timeout
            else ["keepalive_timeout 30s;"]
        ),
        "REAL_IP": (
            [f"set_real_ip_from {cidr};" for cidr in proxies]
            + ["real_ip_header X-Forwarded-For;", "real_ip_recursive on;"]
            if proxies
            else ["# No load balancer in front: $remote_addr is the client."]
        ),
    }
    text = TEMPLATE.read_text() if template is None else template
    used = set(PLACEHOLDER.findall(text))
    missing = used - values.keys()
    if missing:
        raise ValueError(f"the template names unknown placeholders: {sorted(missing)}")
    out = []
    for line in text.splitlines():
        stripped = line.strip()
        whole = PLACEHOLDER.fullmatch(stripped)
        if whole and isinstance(values[whole.group(1)], list):
            indent = line[: len(line) - len(line.lstrip())]
            out.extend(indent + item for item in values[whole.group(1)])
            continue

        def fill(match: re.Match[str]) -> str:
            value = values[match.group(1)]
            if isinstance(value, list):
                raise ValueError(f"@{match.group(1)}@ takes a line of its own")
            return value

        out.append(PLACEHOLDER.sub(fill, line))
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        text = render(args)
    except ValueError as exc:
        print(f"render.py: {exc}", file=sys.stderr)
        return 2
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
