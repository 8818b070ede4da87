#!/usr/bin/env bash
# Start or stop a local MLflow tracking server: SQLite backend store and a local artifact folder
# served through the server, bound to 127.0.0.1, in its own process group with a pid file.
#
#   cluster/mlflow-server.sh start [--port N] [--store DIR] [--workers N] [--auth] [--credentials FILE]
#   cluster/mlflow-server.sh stop  [--store DIR]
#   cluster/mlflow-server.sh status [--store DIR]
#
# Environment (flags win): MLFLOW_PORT (5000), MLFLOW_STORE_DIR ($RLSERVICE_HOME/mlflow-server),
# MLFLOW_WORKERS (2), MLFLOW_START_TIMEOUT (seconds to wait for /health, 120), MLFLOW_BIN (mlflow).
#
# --auth turns on MLflow's basic authentication (needs mlflow[auth]). Its secrets come from the
# environment or from --credentials FILE (KEY=VALUE lines), never from the command line:
#   MLFLOW_FLASK_SERVER_SECRET_KEY   signs the server's sessions and CSRF tokens
#   MLFLOW_AUTH_ADMIN_PASSWORD       password of the admin user, created on the first start
#   MLFLOW_AUTH_ADMIN_USERNAME       optional, default admin
# Clients then authenticate with MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD.
set -euo pipefail

die() { echo "mlflow-server: $*" >&2; exit 1; }

command=${1:-}
[[ $command =~ ^(start|stop|status)$ ]] || die "usage: $0 start|stop|status [--port N] [--store DIR] [--workers N] [--auth] [--credentials FILE]"
shift

port=${MLFLOW_PORT:-5000}
store=${MLFLOW_STORE_DIR:-${RLSERVICE_HOME:-$HOME/.rlservice}/mlflow-server}
workers=${MLFLOW_WORKERS:-2}
timeout=${MLFLOW_START_TIMEOUT:-120}
mlflow_bin=${MLFLOW_BIN:-mlflow}
auth=0
credentials=""
while (($#)); do
    case $1 in
        --port) port=${2:?--port needs a value}; shift 2 ;;
        --store) store=${2:?--store needs a value}; shift 2 ;;
        --workers) workers=${2:?--workers needs a value}; shift 2 ;;
        --credentials) credentials=${2:?--credentials needs a file}; shift 2 ;;
        --auth) auth=1; shift ;;
        *) die "unknown argument $1" ;;
    esac
done
pid_file=$store/mlflow-server.pid
log_file=$store/mlflow-server.log

running_pid() {
    [[ -f $pid_file ]] || return 1
    local pid
    pid=$(<"$pid_file")
    kill -0 -- "-$pid" 2>/dev/null && echo "$pid"
}

load_credentials() {
    [[ -n $credentials ]] || return 0
    [[ -r $credentials ]] || die "credentials file $credentials is not readable"
    local key value
    while IFS='=' read -r key value || [[ -n $key ]]; do  # the last line may lack its newline
        case $key in
            MLFLOW_FLASK_SERVER_SECRET_KEY | MLFLOW_AUTH_ADMIN_PASSWORD | MLFLOW_AUTH_ADMIN_USERNAME)
                export "$key=$value" ;;
            '' | \#*) ;;
            *) die "credentials file $credentials: unexpected key $key" ;;
        esac
    done <"$credentials"
}

configure_auth() {
    load_credentials
    [[ -n ${MLFLOW_FLASK_SERVER_SECRET_KEY:-} ]] || die "--auth needs MLFLOW_FLASK_SERVER_SECRET_KEY (environment or --credentials file)"
    [[ -n ${MLFLOW_AUTH_ADMIN_PASSWORD:-} ]] || die "--auth needs MLFLOW_AUTH_ADMIN_PASSWORD (environment or --credentials file)"
    # The user database lives in the store, not in the working directory (MLflow's default).
    cat >"$store/basic_auth.ini" <<EOF
[mlflow]
default_permission = READ
database_uri = sqlite:///$store/basic_auth.db
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
EOF
    export MLFLOW_AUTH_CONFIG_PATH=$store/basic_auth.ini MLFLOW_FLASK_SERVER_SECRET_KEY MLFLOW_AUTH_ADMIN_PASSWORD
}

stop_group() {
    local pid=$1
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 -- "-$pid" 2>/dev/null || return 0
        sleep 0.2
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
}

start() {
    local pid
    if pid=$(running_pid); then die "already running (process group $pid, pid file $pid_file)"; fi
    mkdir -p "$store/artifacts"
    local args=(server --host 127.0.0.1 --port "$port" --workers "$workers"
        --backend-store-uri "sqlite:///$store/mlflow.db" --artifacts-destination "$store/artifacts")
    # The server's job runner (GenAI evaluation jobs, unused here) starts a dozen worker processes.
    export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}
    if ((auth)); then
        configure_auth
        args+=(--app-name basic-auth)
    fi
    # A background job of a non-interactive shell is no group leader, so setsid does not fork:
    # $! is the server's pid and the id of its new process group (workers included).
    setsid "$mlflow_bin" "${args[@]}" >>"$log_file" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$pid_file"
    local deadline=$((SECONDS + timeout))
    until curl -fsS -o /dev/null "http://127.0.0.1:$port/health" 2>/dev/null; do
        if ! kill -0 "$pid" 2>/dev/null || ((SECONDS >= deadline)); then
            stop_group "$pid"
            rm -f "$pid_file"
            tail -n 20 "$log_file" >&2 || true
            die "server did not answer http://127.0.0.1:$port/health within ${timeout}s (log: $log_file)"
        fi
        sleep 0.5
    done
    echo "mlflow server http://127.0.0.1:$port (process group $pid, store $store)"
}

stop() {
    local pid
    if ! pid=$(running_pid); then
        rm -f "$pid_file"
        echo "mlflow server not running (store $store)"
        return 0
    fi
    stop_group "$pid"
    rm -f "$pid_file"
    echo "mlflow server stopped (process group $pid)"
}

status() {
    local pid
    if pid=$(running_pid); then echo "running (process group $pid, store $store)"; else echo "not running (store $store)"; exit 3; fi
}

"$command"
