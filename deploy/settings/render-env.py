#!/usr/bin/env python3
"""Write babel-actors' env file from the stack's SSM parameters and Redis secret.

    render-env.py [--deploy-env /etc/babel-actors/deploy.env]

Every parameter under ``SETTINGS_PATH`` (``/babel-actors/STACK/``; SecureString or
String) becomes one line, its last path component the variable's name:
``/babel-actors/babel/BABEL_API_KEYS`` -> ``BABEL_API_KEYS=...``. One name is special:
``GOOGLE_CREDENTIALS_JSON`` (a service account's JSON key) is written to
``google-credentials.json`` beside the env file, and ``GOOGLE_APPLICATION_CREDENTIALS``
names that file. With ``REDIS_SECRET_ARN`` set, the Redis AUTH token is read from
Secrets Manager and ``BABEL_REDIS_URL`` is a ``rediss://`` URL that checks the
server's certificate and host name.

Runs at boot and on ``systemctl reload babel-actors-settings`` (the unit
babel-actors-settings.service). Nothing is written unless every read succeeded, so a
failed reload leaves the last good file; a stack whose parameters hold no
``BABEL_API_KEYS`` refuses to start unless ``ALLOW_OPEN=1``. Without ``SETTINGS_PATH``
(an instance set up by hand) the env file is left as it is.

Standard library only: it runs on the system's python3, with the AWS CLI (``aws``).
Values never reach its output or the journal, only names.
"""

from __future__ import annotations

import argparse
import grp
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
SETTINGS_PATH = re.compile(r"^/[A-Za-z0-9_.\-/]+/$")
UNSAFE_VALUE = re.compile(r"['\\\n\r\x00]")
GOOGLE_JSON = "GOOGLE_CREDENTIALS_JSON"
SIDE_FILES = {"google-credentials.json", "operator-key"}
DEFAULTS = {"BABEL_STT": "whisper", "BABEL_MT": "apertium"}
"""What an instance runs when the parameters do not say (``make run``'s engines)."""


class SettingsError(Exception):
    """A parameter cannot be used, or AWS could not be asked; the message names no value."""


def read_deploy_env(path: Path) -> dict[str, str]:
    """``deploy.env``'s ``KEY=value`` lines (as cloud-init writes them; no expansion)."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and NAME.match(key.strip()):
            words = shlex.split(value, comments=True) if value.strip() else [""]
            values[key.strip()] = words[0] if words else ""
    return values


def aws(*args: str, region: str) -> str:
    command = ["aws", *args, "--output", "json"]
    if region:
        command += ["--region", region]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SettingsError(f"aws {args[0]} {args[1]}: {exc}") from None
    if result.returncode != 0:
        # The CLI's errors name parameters and ARNs, never their values.
        raise SettingsError(f"aws {args[0]} {args[1]} failed: {result.stderr.strip()}")
    return result.stdout


def parameters(path: str, region: str) -> dict[str, str]:
    """Every parameter under ``path``, by its last component, decrypted."""
    out = aws("ssm", "get-parameters-by-path", "--path", path, "--recursive",
              "--with-decryption", region=region)  # fmt: skip
    found: dict[str, str] = {}
    for parameter in json.loads(out)["Parameters"]:
        name = parameter["Name"].rsplit("/", 1)[-1]
        if not NAME.match(name):
            raise SettingsError(f"{parameter['Name']}: the last part must be a variable name")
        found[name] = parameter["Value"]
    return found


def redis_url(deploy: dict[str, str], region: str) -> str:
    """The ``rediss://`` URL for the stack's ElastiCache, AUTH token included."""
    out = aws("secretsmanager", "get-secret-value", "--secret-id", deploy["REDIS_SECRET_ARN"],
              region=region)  # fmt: skip
    token = json.loads(out)["SecretString"]
    host, port = deploy.get("REDIS_HOST", ""), deploy.get("REDIS_PORT", "6379")
    if not re.fullmatch(r"[A-Za-z0-9.-]+", host) or not port.isdigit():
        raise SettingsError("REDIS_HOST and REDIS_PORT in deploy.env must name the Redis")
    # coredis takes the password from the URL as it stands, without unquoting it.
    if not re.fullmatch(r"[A-Za-z0-9_~.-]{16,128}", token):
        raise SettingsError("the Redis AUTH token must be 16-128 letters and digits")
    password = token
    # coredis checks neither the certificate nor the host name unless asked.
    return f"rediss://:{password}@{host}:{port}/0?ssl_cert_reqs=required&ssl_check_hostname=true"


def render(deploy: dict[str, str], etc: Path) -> tuple[str, dict[str, str]]:
    """The env file's text and the side files (name -> content) it refers to."""
    region = deploy.get("AWS_REGION", "")
    path = deploy["SETTINGS_PATH"]
    if not SETTINGS_PATH.match(path):
        raise SettingsError(f"SETTINGS_PATH is a path ending in /, not {path!r}")
    settings = {**DEFAULTS, **parameters(path, region)}
    files: dict[str, str] = {}
    if GOOGLE_JSON in settings:
        files["google-credentials.json"] = settings.pop(GOOGLE_JSON)
        try:
            json.loads(files["google-credentials.json"])
        except ValueError:
            raise SettingsError(f"{path}{GOOGLE_JSON} is not JSON") from None
        settings["GOOGLE_APPLICATION_CREDENTIALS"] = str(etc / "google-credentials.json")
    if deploy.get("REDIS_SECRET_ARN"):
        settings["BABEL_REDIS_URL"] = redis_url(deploy, region)
    if not settings.get("BABEL_API_KEYS") and deploy.get("ALLOW_OPEN") != "1":
        raise SettingsError(
            f"no {path}BABEL_API_KEYS: anyone could start sessions. Put one (a SecureString) "
            "there, or set ALLOW_OPEN=1 in deploy.env"
        )
    if settings.get("BABEL_OPERATOR_KEY"):
        # What the CloudWatch agent sends to scrape /metrics.
        files["operator-key"] = settings["BABEL_OPERATOR_KEY"]
    lines = [
        f"# Written by babel-actors-render-env from SSM {path}* (edits here are lost):",
        "# change the parameters, then: sudo systemctl reload babel-actors-settings",
    ]
    for name, value in sorted(settings.items()):
        if UNSAFE_VALUE.search(value):
            raise SettingsError(f"{path}{name}: quotes, backslashes and newlines are refused")
        lines.append(f"{name}='{value}'")
    return "\n".join(lines) + "\n", files


def write_private(path: Path, text: str, group: str) -> None:
    """Replace ``path`` at once, readable by root and ``group`` only."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o640)
        if os.geteuid() == 0:
            try:
                os.chown(tmp, 0, grp.getgrnam(group).gr_gid)
            except KeyError:
                os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deploy-env", type=Path, default=Path("/etc/babel-actors/deploy.env"))
    parser.add_argument("--group", default="babel", help="group that may read the files")
    args = parser.parse_args(argv)
    etc = args.deploy_env.parent
    deploy = read_deploy_env(args.deploy_env) if args.deploy_env.exists() else {}
    if not deploy.get("SETTINGS_PATH"):
        print("render-env: no SETTINGS_PATH; babel-actors.env is edited by hand", file=sys.stderr)
        return 0
    try:
        text, files = render(deploy, etc)
    except SettingsError as exc:
        print(f"render-env: {exc}", file=sys.stderr)
        return 1
    for name, content in files.items():
        write_private(etc / name, content, "root" if name == "operator-key" else args.group)
    write_private(etc / "babel-actors.env", text, args.group)
    for name in SIDE_FILES - files.keys():
        (etc / name).unlink(missing_ok=True)
    names = [line.split("=", 1)[0] for line in text.splitlines() if not line.startswith("#")]
    print(f"render-env: wrote {', '.join(names)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
