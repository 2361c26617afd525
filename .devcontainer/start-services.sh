#!/usr/bin/env bash
# The devcontainer's postStartCommand: the course services (`lab up`) and JupyterLab, started so
# they outlive this command. (A postStartCommand that backgrounds its work with `&` can see it
# killed when the command returns: `make up && nohup jupyter ... &` lost both.)
#
# - `lab up` runs in the foreground and returns once every service answers; each service runs
#   detached, in a process group of its own (labkit.proc), its PID in $STATE/services.json.
# - JupyterLab runs in a session of its own, without a terminal, stdin closed; its PID goes to
#   $STATE/jupyter.pid.
# Logs: $STATE/logs/lab-up.log (what `lab up` said), $STATE/logs/jupyter.log, and each service's
# own log under $STATE/ (temporal/temporal.log, llm.log, ...). $STATE is .lab/ (LAB_STATE_DIR moves
# it). Stop: `lab down` stops the services; `kill $(cat .lab/jupyter.pid)` stops JupyterLab.
# LAB_JUPYTER_PORT (default 8888) and lab up's LAB_*_PORT variables move the ports.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
STATE="${LAB_STATE_DIR:-$PWD/.lab}"
LOGS="$STATE/logs"
BIN="$PWD/.venv/bin"
JUPYTER_PORT="${LAB_JUPYTER_PORT:-8888}"
mkdir -p "$LOGS"

[ -x "$BIN/lab" ] || make setup >"$LOGS/setup.log" 2>&1 || { echo "make setup failed: see $LOGS/setup.log"; exit 1; }

"$BIN/lab" up 2>&1 | tee "$LOGS/lab-up.log"

if [ -f "$STATE/jupyter.pid" ] && "$BIN/python" -c 'import psutil, sys; p = psutil.Process(int(sys.argv[1])); sys.exit("jupyter" not in " ".join(p.cmdline()))' "$(cat "$STATE/jupyter.pid")" 2>/dev/null; then
    echo "jupyter: already running (pid $(cat "$STATE/jupyter.pid"))"
else
    # A session of its own (setsid in the child before exec: Popen returns only after the exec), no
    # terminal, stdin closed: nothing this command's end sends (a group kill, a hangup) reaches it.
    pid=$("$BIN/python" - "$STATE/jupyter.pid" "$LOGS/jupyter.log" "$BIN/jupyter" lab --no-browser --ip=127.0.0.1 \
        --port="$JUPYTER_PORT" --port-retries=0 --allow-root --ServerApp.root_dir="$PWD" \
        --IdentityProvider.token='' <<'PY'
import subprocess, sys
pid_file, log, *argv = sys.argv[1:]
with open(log, "ab") as out:
    child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                             start_new_session=True)
with open(pid_file, "w") as handle:
    handle.write(f"{child.pid}\n")
print(child.pid)
PY
)
    echo "jupyter: started (pid $pid), http://localhost:$JUPYTER_PORT"
fi
echo "logs: $LOGS/lab-up.log, $LOGS/jupyter.log; each service's own log under $STATE/"
