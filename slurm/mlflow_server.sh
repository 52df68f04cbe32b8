#!/usr/bin/env bash
# MLflow tracking server over PostgreSQL, for grids whose cells log from many processes at once
# (SQLite locks under concurrent writers; a server in front of PostgreSQL does not).
#
#   slurm/mlflow_server.sh start     # prints: export MLFLOW_TRACKING_URI=http://127.0.0.1:5000
#   slurm/mlflow_server.sh status    # exit 0 if up and /health answers
#   slurm/mlflow_server.sh stop      # stops both; the runs (database, artifacts) are kept
#   slurm/mlflow_server.sh destroy   # stops both and deletes the state dir
#
# Settings (environment):
#   QAT_MLFLOW_DIR   state dir: PostgreSQL data, artifacts, logs, PIDs   (/tmp/qat-mlflow)
#   HOST / PORT      where the server listens      (127.0.0.1 / 5000; QAT_MLFLOW_HOST/_PORT win)
#   WORKERS          server worker processes                                          (1)
#   PG_PORT          PostgreSQL's port, loopback only       (5433; QAT_MLFLOW_PG_PORT wins)
#   QAT_PYTHON       the python that has mlflow                        (<repo>/.venv/bin/python)
# Must run as root on first start (apt-get, and PostgreSQL runs as user postgres).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)

STATE=${QAT_MLFLOW_DIR:-/tmp/qat-mlflow}
HOST=${QAT_MLFLOW_HOST:-${HOST:-127.0.0.1}}
PORT=${QAT_MLFLOW_PORT:-${PORT:-5000}}
WORKERS=${QAT_MLFLOW_WORKERS:-${WORKERS:-1}}
PG_PORT=${QAT_MLFLOW_PG_PORT:-${PG_PORT:-5433}}
PYTHON=${QAT_PYTHON:-$REPO/.venv/bin/python}
# pyproject.toml's `server` extra pins it; installed into the venv only if it is missing.
PSYCOPG2=$(grep -oE '"psycopg2-binary==[^"]+"' "$REPO/pyproject.toml" | tr -d '"') ||
  { echo "[qat-mlflow] error: no psycopg2-binary==<version> in $REPO/pyproject.toml" >&2; exit 1; }

PGDATA=$STATE/pgdata
PGSOCK=$STATE/pgsock
RUN=$STATE/run
LOG=$STATE/log
ARTIFACTS=$STATE/artifacts
MLFLOW_PID=$RUN/mlflow.pid

log() { printf '[qat-mlflow] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# The client-facing address: a wildcard bind is reached through the machine's name.
client_host() {
  case $HOST in
    0.0.0.0 | '::' | '') hostname -f 2>/dev/null || hostname ;;
    *) echo "$HOST" ;;
  esac
}
URI="http://$(client_host):$PORT"
HEALTH_URL="http://$([[ $HOST == 0.0.0.0 || $HOST == '::' ]] && echo 127.0.0.1 || echo "$HOST"):$PORT/health"

# An installed PostgreSQL's bin dir (Debian keeps it out of PATH, under its version).
pg_bin() {
  local d best=
  for d in /usr/lib/postgresql/*/bin; do
    [[ -x $d/pg_ctl ]] && best=$d
  done
  [[ -n $best ]] && echo "$best"
}

as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"; }

# True while PID is a live process. A zombie counts as gone: daemons end up children of PID 1,
# which in containers does not always reap them.
running() {
  local state
  state=$(awk '/^State:/ { print $2 }' "/proc/$1/status" 2>/dev/null) || return 1
  [[ -n $state && $state != Z ]]
}

# postgres' PID lives in postmaster.pid (pg_ctl daemonizes it); alive only while it is postgres.
pg_alive() {
  local pid
  pid=$(head -n 1 "$PGDATA/postmaster.pid" 2>/dev/null) || return 1
  [[ -n $pid && $(cat "/proc/$pid/comm" 2>/dev/null) == postgres ]] && running "$pid"
}

# The recorded server PID, only while it still is our mlflow server (a stale PID file from
# before a reboot may name an unrelated process by now).
mlflow_pid() {
  local pid
  pid=$(cat "$MLFLOW_PID" 2>/dev/null) || return 1
  [[ -n $pid ]] && running "$pid" || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- '-m mlflow server' || return 1
  echo "$pid"
}

healthy() {
  curl -fsS --max-time 2 "$HEALTH_URL" >/dev/null 2>&1
}

start_postgres() {
  local bin
  if ! bin=$(pg_bin); then
    [[ $(id -u) -eq 0 ]] || die "PostgreSQL is not installed; run as root to install it"
    log "installing postgresql"
    # A policy-rc.d refusing service starts keeps the package from starting Debian's own
    # cluster on 5432; it is removed again unless it was there before.
    local own_policy=
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
      chmod 755 /usr/sbin/policy-rc.d
      own_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends postgresql >"$LOG/apt.log" 2>&1 \
      || { apt-get update -qq >>"$LOG/apt.log" 2>&1 \
        && apt-get install -y -qq --no-install-recommends postgresql >>"$LOG/apt.log" 2>&1; } \
      || { [[ -n $own_policy ]] && rm -f /usr/sbin/policy-rc.d; die "apt-get failed ($LOG/apt.log)"; }
    [[ -n $own_policy ]] && rm -f /usr/sbin/policy-rc.d
    bin=$(pg_bin) || die "postgresql installed but pg_ctl not found"
  fi

  mkdir -p "$PGSOCK"
  chown postgres:postgres "$PGSOCK"
  # Only root and postgres reach the socket; it is trusted for them (no password to manage).
  chmod 700 "$PGSOCK"
  if [[ ! -f $PGDATA/PG_VERSION ]]; then
    mkdir -p "$PGDATA"
    chown postgres:postgres "$PGDATA"
    # TCP (loopback) needs the mlflow role's password; the private socket is trusted.
    as_postgres "$bin/initdb" -D "$PGDATA" -U postgres --auth-local=trust \
      --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >"$LOG/initdb.log" 2>&1 \
      || die "initdb failed ($LOG/initdb.log)"
  fi
  touch "$LOG/postgres.log"
  chown postgres:postgres "$LOG/postgres.log"
  if ! pg_alive; then
    # pg_ctl -w returns once postgres accepts connections; postgres itself runs on in the
    # background (its PID in postmaster.pid, which stop uses).
    as_postgres "$bin/pg_ctl" -D "$PGDATA" -l "$LOG/postgres.log" -w -t 60 \
      -o "-p $PG_PORT -k $PGSOCK -c listen_addresses=127.0.0.1 -c max_connections=200" \
      start >/dev/null || { tail -n 20 "$LOG/postgres.log" >&2; die "PostgreSQL did not start"; }
  fi
  head -n 1 "$PGDATA/postmaster.pid" >"$RUN/postgres.pid"

  local pw_file=$STATE/db-password
  if [[ ! -s $pw_file ]]; then
    (umask 077 && head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$pw_file")
  fi
  local pw
  pw=$(cat "$pw_file")
  local psql=("$bin/psql" -h "$PGSOCK" -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 -qAt)
  if [[ -z $("${psql[@]}" -c "SELECT 1 FROM pg_roles WHERE rolname = 'mlflow'") ]]; then
    "${psql[@]}" -c "CREATE ROLE mlflow LOGIN PASSWORD '$pw'"
  fi
  if [[ -z $("${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname = 'mlflow'") ]]; then
    "${psql[@]}" -c "CREATE DATABASE mlflow OWNER mlflow"
  fi
  # The password reaches libpq through a pgpass file rather than the URI, which would show it
  # in the server's command line (ps).
  (umask 077 && echo "127.0.0.1:$PG_PORT:mlflow:mlflow:$pw" >"$STATE/pgpass")
  export PGPASSFILE=$STATE/pgpass
  BACKEND_URI="postgresql+psycopg2://mlflow@127.0.0.1:$PG_PORT/mlflow"
}

cmd_start() {
  mkdir -p "$STATE" "$RUN" "$LOG" "$ARTIFACTS"
  chmod 755 "$STATE"
  if mlflow_pid >/dev/null && healthy; then
    log "already up at $URI (state in $STATE)"
    echo "export MLFLOW_TRACKING_URI=$URI"
    return 0
  fi
  # A server process left without a healthy answer (half-started) is restarted.
  cmd_stop_mlflow
  local t0
  t0=$(date +%s.%N)
  [[ -x $PYTHON ]] || die "no python at $PYTHON (set QAT_PYTHON)"
  if ! "$PYTHON" -c 'import psycopg2' 2>/dev/null; then
    log "installing $PSYCOPG2 into $("$PYTHON" -c 'import sys; print(sys.prefix)')"
    "$PYTHON" -m pip install -q "$PSYCOPG2" >"$LOG/pip.log" 2>&1 || die "pip failed ($LOG/pip.log)"
  fi
  start_postgres
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    die "port $PORT is taken by something else (set PORT)"
  fi

  # Job execution (MLflow's background job runner) is off: it costs seconds of startup and this
  # project does not use it. --serve-artifacts proxies artifacts through the server, so that
  # clients (SLURM jobs) need no access to the artifact dir; new experiments get
  # mlflow-artifacts:/ as their root, resolved to --artifacts-destination.
  MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid "$PYTHON" -m mlflow server \
    --backend-store-uri "$BACKEND_URI" \
    --serve-artifacts --artifacts-destination "$ARTIFACTS" \
    --host "$HOST" --port "$PORT" --workers "$WORKERS" \
    </dev/null >>"$LOG/mlflow.log" 2>&1 &
  echo $! >"$MLFLOW_PID"

  local i
  for ((i = 0; i < 1200; i++)); do
    healthy && break
    if ! mlflow_pid >/dev/null; then
      tail -n 30 "$LOG/mlflow.log" >&2
      die "the MLflow server exited (log: $LOG/mlflow.log)"
    fi
    sleep 0.1
  done
  healthy || { tail -n 30 "$LOG/mlflow.log" >&2; die "no /health answer after 120 s"; }
  log "up at $URI in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s (PostgreSQL on 127.0.0.1:$PG_PORT, artifacts in" \
    "$ARTIFACTS, ${WORKERS} worker(s))"
  echo "export MLFLOW_TRACKING_URI=$URI"
}

# SIGTERM to the server's whole process group (setsid made the recorded PID its leader): the
# mlflow CLI runs its web server (uvicorn and workers) as children, which a signal to the CLI
# alone would leave behind.
cmd_stop_mlflow() {
  local pid i
  if pid=$(mlflow_pid); then
    kill -TERM -- "-$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
      kill -0 -- "-$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  rm -f "$MLFLOW_PID"
}

cmd_stop() {  # cmd_stop [fast|immediate]
  cmd_stop_mlflow
  local bin
  if pg_alive && bin=$(pg_bin); then
    as_postgres "$bin/pg_ctl" -D "$PGDATA" -m "${1:-fast}" -w -t 60 stop >/dev/null
  fi
  rm -f "$RUN/postgres.pid"
}

cmd_status() {
  local ok=0 pid
  if pid=$(mlflow_pid); then echo "mlflow     running (pid $pid)"; else echo "mlflow     not running"; ok=1; fi
  if pg_alive; then
    echo "postgres   running (pid $(head -n 1 "$PGDATA/postmaster.pid"), port $PG_PORT)"
  else
    echo "postgres   not running"
    ok=1
  fi
  if healthy; then echo "health     OK ($HEALTH_URL)"; else echo "health     no answer"; ok=1; fi
  ((ok == 0)) && echo "export MLFLOW_TRACKING_URI=$URI"
  return "$ok"
}

case ${1:-} in
  start) cmd_start ;;
  stop)
    if [[ -d $STATE ]]; then
      cmd_stop
      log "stopped (runs kept in $STATE)"
    else
      log "nothing to stop ($STATE does not exist)"
    fi
    ;;
  status) cmd_status ;;
  destroy)
    # The data is deleted next: skip PostgreSQL's shutdown checkpoint (seconds of writes).
    if [[ -d $STATE ]]; then cmd_stop immediate; fi
    rm -rf "$STATE"
    log "removed $STATE"
    ;;
  *)
    echo "usage: $0 start|stop|status|destroy" >&2
    exit 2
    ;;
esac
