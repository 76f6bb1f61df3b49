# faults.sh: sourced by the fault tests. Starting a supervised server and finding the processes
# of its engine job: rank 0 from the supervisor's log, the workers by the job's marker (the
# argument pair "--supervisor ADDR" every process of the job carries), mpirun left out.
: "${TERNPIPE:?}" "${TERN_SOURCE_DIR:?}"
source "$TERN_SOURCE_DIR/tests/mpi/mpi-env.sh"
here=$TERN_SOURCE_DIR/tests/fault
streams() { python3 "$here/streams.py" "$@"; }

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_sv LOG ARGS...: a supervised server in its own session; sets url, sv (its pid), addr
start_sv() {
  local log=$1
  shift
  local port
  port=$(free_port)
  url=http://127.0.0.1:$port
  setsid "$TERNPIPE" serve --port "$port" "$@" >"$log" 2>&1 &
  sv=$!
  local t
  for t in $(seq 1 300); do
    python3 "$TERN_SOURCE_DIR/tests/server/client.py" wait "$url" 1 >/dev/null 2>&1 && break
    if ! kill -0 "$sv" 2>/dev/null || [ "$t" -eq 300 ]; then
      echo "FAIL: supervised server not healthy (exited or 300 s)"
      cat "$log"
      exit 1
    fi
  done
  addr=$(sed -n 's/.*rank 0 reports to \([^)]*\)).*/\1/p' "$log" | head -1)
  [ -n "$addr" ] || { echo "FAIL: no engine address in the log"; cat "$log"; exit 1; }
}

# the job's ternpipe processes now (rank 0 first)
rank0_of() { sed -n 's/.*rank 0: reporting to the supervisor at .* (process \([0-9]*\),.*/\1/p' "$1" | tail -1; }
job_pids() { # the processes carrying the marker, mpirun and its daemons left out
  local p
  for p in $(pgrep -f -- "--supervisor $addr" || true); do
    [ "$(cat "/proc/$p/comm" 2>/dev/null)" = ternpipe ] && echo "$p"
  done
}
worker_of() { # LOG: a worker's pid (not rank 0)
  local r0 p
  r0=$(rank0_of "$1")
  for p in $(job_pids); do [ "$p" != "$r0" ] && { echo "$p"; return; }; done
}
# wait_ready LOG N: until the log has N "engine job up" lines and /health is 200 (bounded)
wait_ready() {
  local t
  for t in $(seq 1 600); do
    if [ "$(grep -c "engine job up" "$1")" -ge "$2" ] &&
      python3 "$TERN_SOURCE_DIR/tests/server/client.py" wait "$url" 1 >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.1
  done
  echo "FAIL: the job did not come back (60 s)"
  tail -30 "$1"
  exit 1
}
# no process of the job may be left once the supervisor is gone
no_orphans() {
  local left
  left=$(pgrep -f -- " $addr( |\$)" || true)
  if [ -n "$left" ]; then
    echo "FAIL: processes of the job left behind: $left"
    ps -o pid,stat,args -p "$(echo "$left" | tr '\n' ',' | sed 's/,$//')" || true
    exit 1
  fi
}
