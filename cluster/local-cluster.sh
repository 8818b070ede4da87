#!/usr/bin/env bash
# A multi-node Ray cluster on this machine, on loopback addresses only (head 127.0.0.2, workers
# 127.0.0.3, ...), plus the MLflow server of cluster/mlflow-server.sh when that script is here.
#
#   cluster/local-cluster.sh start [--workers N] [--cpus N] [--state DIR] [--shared-dirs] [--no-mlflow]
#   cluster/local-cluster.sh stop [--node NAME] [--state DIR] [--no-mlflow]
#   cluster/local-cluster.sh status [--state DIR]
#   eval "$(cluster/local-cluster.sh env)"      # the cluster's token for rlservice tune submit/status/logs
#
# Each node is one `ray start --block` process leading its own session, with a pid file in the state dir
# (default $RLSERVICE_HOME/local-cluster); stop ends exactly those sessions, never `ray stop`.
# Like machines, the nodes share no directories: each has its own MINARI_DATASETS_PATH and RLSERVICE_HOME
# under STATE/nodes/NAME and TMPDIR in its Ray temp dir (--shared-dirs: the caller's, for all). They share Tune's storage,
# RLSERVICE_STORAGE_PATH: the caller's value (s3://... on a real cluster), else file://STATE/storage.
# The MLflow server keeps its store in STATE/mlflow; MLFLOW_PORT picks its port (5000).
# Environment: RLSERVICE_PYTHON, the python of the rlservice environment (default: .venv here).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
python=${RLSERVICE_PYTHON:-$here/../.venv/bin/python}
[[ -x $python ]] || python=python3
command=${1:-}
[[ $command =~ ^(start|stop|status|env)$ ]] || { echo "usage: $0 start|stop|status|env [options]" >&2; exit 1; }
shift

state=${RLSERVICE_HOME:-$HOME/.rlservice}/local-cluster
mlflow=1
args=()
while (($#)); do
    case $1 in
        --state) state=${2:?--state needs a directory}; shift 2 ;;
        --no-mlflow) mlflow=0; shift ;;
        --node) mlflow=0; args+=("$1" "${2:?--node needs a name}"); shift 2 ;;
        *) args+=("$1"); shift ;;
    esac
done
[[ -x $here/mlflow-server.sh ]] || mlflow=0
# The MLflow server of the same environment, unless MLFLOW_BIN says otherwise.
[[ -x $(dirname "$python")/mlflow ]] && export MLFLOW_BIN=${MLFLOW_BIN:-$(dirname "$python")/mlflow}

cd "$here/.."
"$python" -m rlservice.runtime.local_cluster "$command" --state "$state" "${args[@]}"
if ((mlflow)); then
    case $command in
        start) "$here/mlflow-server.sh" start --store "$state/mlflow" ||
            { "$python" -m rlservice.runtime.local_cluster stop --state "$state"; exit 1; } ;;
        stop) "$here/mlflow-server.sh" stop --store "$state/mlflow" ;;
        status) "$here/mlflow-server.sh" status --store "$state/mlflow" || true ;;
    esac
fi
