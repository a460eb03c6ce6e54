#!/usr/bin/env bash
# Install rc-mta on a server (`make install-system`): Debian refuses pip into the system
# Python, so rc-mta gets a venv of its own at PREFIX (/opt/rc-mta), with the runtime only.
# Beside it: the systemd unit (ExecStart at PREFIX/bin/rc-mta), the rc-mta user
# (sysusers.d), its directories (tmpfiles.d), /etc/rc-mta/rc-mta.toml unless one is there,
# and PREFIX/bin/rc-mta linked into BINDIR for the operator's own commands.
#
# DESTDIR stages the whole tree under another root for a package, or a test: the venv is
# built there and its scripts then point at PREFIX, where the package will put it. Nothing
# is started or enabled; with no DESTDIR the user and directories are made at once.
#
#   scripts/install.sh                         # as root
#   PREFIX=/srv/rc-mta PYTHON=/usr/bin/python3.12 scripts/install.sh
#   DESTDIR=/tmp/pkg UNITDIR=/usr/lib/systemd/system BINDIR=/usr/bin scripts/install.sh
set -euo pipefail

PREFIX=${PREFIX:-/opt/rc-mta}
DESTDIR=${DESTDIR:-}
DESTDIR=${DESTDIR%/}
# The distribution's Python: apt keeps it patched, and it is outside /home and /root,
# which the unit's ProtectHome=yes hides from the service (a pyenv one would not start).
PYTHON=${PYTHON:-/usr/bin/python3}
UNITDIR=${UNITDIR:-/etc/systemd/system}
SYSUSERSDIR=${SYSUSERSDIR:-/usr/lib/sysusers.d}
TMPFILESDIR=${TMPFILESDIR:-/usr/lib/tmpfiles.d}
BINDIR=${BINDIR:-/usr/local/bin}
CONFDIR=/etc/rc-mta
SRC=$(cd "$(dirname "$0")/.." && pwd)

fail() { echo "install.sh: $*" >&2; exit 1; }
case $PREFIX in /*) ;; *) fail "PREFIX must be an absolute path, not '$PREFIX'" ;; esac
case $DESTDIR in ''|/*) ;; *) fail "DESTDIR must be an absolute path, not '$DESTDIR'" ;; esac
[ -f "$SRC/pyproject.toml" ] && [ -d "$SRC/rc_mta" ] || fail "no rc-mta source at $SRC"

base=$("$PYTHON" -c 'import sys; print(sys.base_prefix)') || fail "no Python at $PYTHON (set PYTHON=...)"
case $base in /home/*|/root/*) fail "$PYTHON lives in $base, which ProtectHome=yes hides from the service: use PYTHON=/usr/bin/python3" ;; esac

venv=$DESTDIR$PREFIX
echo "rc-mta: venv at $venv"
"$PYTHON" -m venv --clear "$venv"
# Built from a copy, so no build/ left in the checkout can put stale modules in the wheel.
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
tar -C "$SRC" --exclude=__pycache__ -cf - pyproject.toml README.md rc_mta | tar -C "$build" -xf -
"$venv/bin/pip" install --quiet --disable-pip-version-check "$build"
if [ -n "$DESTDIR" ]; then
  # The venv's scripts name the python they were made with: make it the one at PREFIX.
  grep -rlI --null -F "$venv" "$venv/bin" "$venv/pyvenv.cfg" | xargs -0 -r sed -i "s|$venv|$PREFIX|g"
  if grep -rlI -F "$DESTDIR" "$venv/bin" "$venv/pyvenv.cfg"; then fail "these still name $DESTDIR"; fi
fi
install -d -m 0755 "$venv/share/doc/rc-mta"
install -m 0644 "$SRC/docs/operations.md" "$venv/share/doc/rc-mta/operations.md"

# The unit as shipped names /opt/rc-mta; any other PREFIX replaces it.
install -d -m 0755 "$DESTDIR$UNITDIR" "$DESTDIR$SYSUSERSDIR" "$DESTDIR$TMPFILESDIR" "$DESTDIR$BINDIR"
sed "s|/opt/rc-mta/|$PREFIX/|g" "$SRC/systemd/rc-mta.service" > "$DESTDIR$UNITDIR/rc-mta.service"
chmod 0644 "$DESTDIR$UNITDIR/rc-mta.service"
install -m 0644 "$SRC/systemd/rc-mta.sysusers" "$DESTDIR$SYSUSERSDIR/rc-mta.conf"
install -m 0644 "$SRC/systemd/rc-mta.tmpfiles" "$DESTDIR$TMPFILESDIR/rc-mta.conf"
ln -sfn "$PREFIX/bin/rc-mta" "$DESTDIR$BINDIR/rc-mta"

# An operator's edited config is never overwritten; tmpfiles.d gives it group rc-mta.
install -d -m 0750 "$DESTDIR$CONFDIR"
if [ -e "$DESTDIR$CONFDIR/rc-mta.toml" ]; then
  echo "rc-mta: keeping $DESTDIR$CONFDIR/rc-mta.toml"
else
  install -m 0640 "$SRC/conf/rc-mta.toml" "$DESTDIR$CONFDIR/rc-mta.toml"
fi

if [ -z "$DESTDIR" ]; then
  systemd-sysusers rc-mta.conf
  systemd-tmpfiles --create rc-mta.conf
  if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
  echo "rc-mta: installed. Edit $CONFDIR/rc-mta.toml, then:"
  echo "  cd /var/lib/rc-mta && sudo -u rc-mta $PREFIX/bin/rc-mta --config $CONFDIR/rc-mta.toml check-config"
  echo "  systemctl enable --now rc-mta"
fi
