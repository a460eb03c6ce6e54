#!/usr/bin/env bash
# What the test suite needs from the machine, installed only when missing (apt-get, as root
# or through sudo). Debian packages the test suite starts as real servers of its own on
# loopback: NSD (DNS zones for SPF, rDNS, DKIM, DMARC), Postfix (a real front MTA), Dovecot
# (IMAP for mailbox mode) and PostgreSQL (a throw-away cluster in a temporary directory,
# made with its initdb and pg_ctl); promtool and systemd-analyze check the metrics,
# dashboard and unit; Chromium renders the request mail. The system-wide services these
# packages start are stopped again (the tests never use them), except a PostgreSQL that may
# serve other things on this machine.
set -euo pipefail
need=()
command -v nsd >/dev/null 2>&1 || [ -x /usr/sbin/nsd ] || need+=(nsd)
[ -x /usr/sbin/postfix ] || need+=(postfix)
[ -x /usr/sbin/dovecot ] || need+=(dovecot-imapd)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)        # promtool checks /metrics and the dashboard
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)    # verifies the unit (not started here)
command -v chromium >/dev/null 2>&1 || need+=(chromium)          # renders the request mail, light and dark
/usr/bin/python3 -c 'import ensurepip' >/dev/null 2>&1 || need+=(python3-venv)  # make install-system's venv
command -v openssl >/dev/null 2>&1 || need+=(openssl)            # the tests' CA and Dovecot's certificate
command -v ss >/dev/null 2>&1 || need+=(iproute2)                # reads the listen backlog in a test
command -v prlimit >/dev/null 2>&1 || need+=(util-linux)         # lowers a running server's descriptor limit
command -v unshare >/dev/null 2>&1 || need+=(util-linux)         # a resolv.conf of a test's own (silent DNS)
command -v mount >/dev/null 2>&1 || need+=(mount)                # ... bound over /etc/resolv.conf in that namespace
[ ${#need[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
else
  SUDO=
fi
export DEBIAN_FRONTEND=noninteractive
echo "installing Debian packages: ${need[*]}"
$SUDO apt-get update -qq || true
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
for service in postfix nsd dovecot prometheus; do
  $SUDO service "$service" stop >/dev/null 2>&1 || true
done
