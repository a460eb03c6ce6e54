#!/usr/bin/env bash
# Debian packages the test suite starts as real servers: NSD (DNS zones for SPF, rDNS,
# DKIM, DMARC), Postfix (a real front MTA) and Dovecot (IMAP for mailbox mode).
# Installed only when missing.
set -euo pipefail
need=()
command -v nsd >/dev/null 2>&1 || [ -x /usr/sbin/nsd ] || need+=(nsd)
[ -x /usr/sbin/postfix ] || need+=(postfix)
[ -x /usr/sbin/dovecot ] || need+=(dovecot-imapd)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)        # promtool checks /metrics and the dashboard
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)    # verifies the unit (not started here)
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
# The tests run their own Postfix and NSD instances; the system-wide ones stay stopped.
$SUDO service postfix stop >/dev/null 2>&1 || true
$SUDO service nsd stop >/dev/null 2>&1 || true
$SUDO service dovecot stop >/dev/null 2>&1 || true
$SUDO service prometheus stop >/dev/null 2>&1 || true
