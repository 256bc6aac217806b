# Sourced by the scripts that start servers on loopback and wait for them (lambda_local_check.sh,
# sam-local.sh, perf.sh).
#
#     free_port         prints a free TCP port on 127.0.0.1
#     wait_for S CMD..  waits up to S seconds for CMD to succeed (its output discarded); false if not
#     disk_report       one line: what is free on the disk of the current directory and of /tmp,
#                       for the failure messages (a full disk fails pip, cargo and Docker in ways
#                       that do not say so)

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.5
    done
}

disk_report() {
    df -h --output=target,avail . /tmp 2>/dev/null | awk 'NR > 1 && !seen[$1]++ { printf "%s%s free on %s", sep, $2, $1; sep = ", " } END { print "" }'
}
