# shellcheck shell=bash
# Liveness of a server a script has just started in the background. Source this file; it defines:
#   started_alive PID   whether PID still runs: not exited, and not a zombie waiting to be reaped
#
# It does not look at the command line. Right after the fork the child's command line is still the
# shell's, until it has exec'd the server, so a check by command line calls a starting server exited
# (jaeger, otelcol and a Kafka broker were each lost to that on a busy machine).

started_alive() {
  local pid=$1 stat
  [ -n "$pid" ] && stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  # The state follows the command name, which is in parentheses and may hold spaces.
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}
