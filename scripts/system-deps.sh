#!/usr/bin/env bash
# What the test suite needs from the machine, installed or started only when missing.
# Debian packages the test suite starts as real servers: NSD (DNS zones for SPF, rDNS,
# DKIM, DMARC), Postfix (a real front MTA) and Dovecot (IMAP for mailbox mode); promtool
# and systemd-analyze check the metrics, dashboard and unit; Chromium renders the request
# mail; PostgreSQL is started.
set -euo pipefail
need=()
command -v nsd >/dev/null 2>&1 || [ -x /usr/sbin/nsd ] || need+=(nsd)
[ -x /usr/sbin/postfix ] || need+=(postfix)
[ -x /usr/sbin/dovecot ] || need+=(dovecot-imapd)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)        # promtool checks /metrics and the dashboard
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)    # verifies the unit (not started here)
command -v chromium >/dev/null 2>&1 || need+=(chromium)          # renders the request mail, light and dark
if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
else
  SUDO=
fi

# PostgreSQL for the store suite (127.0.0.1:5432, trust auth, database test): start the
# machine's cluster if it is installed but not running.
start_postgres() {
  pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null && return 0
  command -v pg_ctlcluster >/dev/null 2>&1 || return 0
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && return 0; sleep 1; done
}

if [ ${#need[@]} -eq 0 ]; then
  start_postgres
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
echo "installing Debian packages: ${need[*]}"
$SUDO apt-get update -qq || true
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# The tests run their own Postfix and NSD instances; the system-wide ones stay stopped.
$SUDO service postfix stop >/dev/null 2>&1 || true
$SUDO service nsd stop >/dev/null 2>&1 || true
$SUDO service dovecot stop >/dev/null 2>&1 || true
$SUDO service prometheus stop >/dev/null 2>&1 || true
start_postgres
