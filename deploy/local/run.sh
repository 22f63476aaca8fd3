#!/usr/bin/env bash
# `make run`: infrastructure, the four Parley services, a scripted demo conversation, then
# keeps running until Ctrl-C, which stops the services (gracefully) and the infrastructure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
STATE="$ROOT/.parley"
LOG="$STATE/log"
BIN="$ROOT/target/debug"

say() { printf '\033[1;34m[run]\033[0m %s\n' "$*" >&2; }

deploy/local/infra.sh up
say "building Parley (first time takes a few minutes)"
cargo build --workspace --bins --locked -q
# shellcheck disable=SC1091
source "$STATE/env"
mkdir -p "$LOG"

pids=()
stopping=0
cleanup() {
  [ "$stopping" = 1 ] && return
  stopping=1
  say "stopping services"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  deploy/local/infra.sh down
  say "stopped"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

declare -A HTTP=([ingest]=7191 [routing]=7291 [history]=7391 [notification]=7491)
for svc in routing ingest history notification; do
  "$BIN/parley-$svc" >"$LOG/$svc.log" 2>&1 &
  pids+=($!)
done
for svc in routing ingest history notification; do
  for _ in $(seq 1 150); do
    (exec 3<>"/dev/tcp/127.0.0.1/${HTTP[$svc]}") 2>/dev/null && break
    sleep 0.2
  done
  (exec 3<>"/dev/tcp/127.0.0.1/${HTTP[$svc]}") 2>/dev/null \
    || { say "parley-$svc did not start; its log:"; tail -n 20 "$LOG/$svc.log"; exit 1; }
  say "parley-$svc up (logs: .parley/log/$svc.log, metrics: http://127.0.0.1:${HTTP[$svc]}/metrics)"
done

"$BIN/parleyctl" demo --write-env "$STATE/demo.env"
# shellcheck disable=SC1091
source "$STATE/demo.env"

# A page of the bank's site with the chat widget, on an origin of its own.
mkdir -p "$STATE/www"
cat >"$STATE/www/index.html" <<'HTML'
<!doctype html>
<html lang="ru">
<head><meta charset="utf-8"><title>Demo Bank</title></head>
<body style="font-family: sans-serif; max-width: 40rem; margin: 3rem auto">
<h1>Demo Bank</h1>
<p>Вопрос по карте или переводу? Напишите нам в чат — кнопка справа внизу.</p>
<script src="http://127.0.0.1:7180/widget.js" data-tenant="demo" data-channel="site" data-lang="ru"
        data-title="Demo Bank" async></script>
</body>
</html>
HTML
python3 -m http.server 7080 --bind 127.0.0.1 --directory "$STATE/www" >"$LOG/www.log" 2>&1 &
pids+=($!)

cat <<EOF

$(printf '\033[1;32m')Parley is running.$(printf '\033[0m') Ctrl-C stops it.

  Operator desk:  http://127.0.0.1:7491/desk/   (sign in with a token below)
    Anna:  $PARLEY_ANNA_TOKEN
    Boris: $PARLEY_BORIS_TOKEN
    Supervisor view: $PARLEY_SUPERVISOR_TOKEN
  The bank's site with the chat widget: http://127.0.0.1:7080/
    (write there as a customer; Anna or Boris gets it on the desk)

In another terminal, try:

  cd $ROOT && source .parley/env && source .parley/demo.env && export PATH=\$PWD/target/debug:\$PATH

  # Anna's desk: goes online, prints what comes in, answers every message
  PARLEY_TOKEN=\$PARLEY_ANNA_TOKEN parleyctl desk --online --auto-reply "Здравствуйте! Чем помочь?"

  # a customer writes through the CRM, and follows the answers
  PARLEY_TOKEN=\$PARLEY_INTEGRATOR_TOKEN parleyctl send --customer me --text "Добрый день, вопрос по карте"
  PARLEY_TOKEN=\$PARLEY_INTEGRATOR_TOKEN parleyctl watch --customer me

  # a supervisor looks around
  PARLEY_TOKEN=\$PARLEY_SUPERVISOR_TOKEN parleyctl queue status default
  PARLEY_TOKEN=\$PARLEY_SUPERVISOR_TOKEN parleyctl conversation <conversation id>
  PARLEY_TOKEN=\$PARLEY_SUPERVISOR_TOKEN parleyctl why <conversation id>

  # the tenant's admin adds people
  PARLEY_TOKEN=\$PARLEY_ADMIN_TOKEN parleyctl operator create vera --name Вера --skill support:3 --language ru --capacity api:4
  PARLEY_TOKEN=\$PARLEY_ADMIN_TOKEN parleyctl token issue --role operator --subject vera

EOF

# Keep running until Ctrl-C or until a service dies.
set +e
wait -n "${pids[@]}"
code=$?
[ "$stopping" = 1 ] || say "a service exited (code $code); see .parley/log/"
exit "$code"
