#!/usr/bin/env bash
# Installs what backupd, its demo and its tests need on a fresh Debian/Ubuntu machine:
# the database servers and tools (Debian packages) and the Python package with its dev dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

# chromium: the status page's browser test (headless); prometheus: promtool checks the alert rules;
# openssl: the SMTP test's self-signed certificate; age: age-keygen and the age binary the encryption tests
# check backupd's encrypted artifacts with (backupd itself encrypts with pyrage)
PACKAGES=(mariadb-server mariadb-client redis-server redis-tools openssh-server openssh-client rsync zstd tar
          systemd chromium prometheus openssl postgresql postgresql-client age)
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=0
for bin in mariadbd mariadb-install-db mariadb-dump redis-server redis-check-rdb /usr/sbin/sshd ssh rsync zstd \
           systemd-analyze chromium promtool openssl pg_dump pg_dumpall pg_restore psql age age-keygen; do
  command -v "$bin" >/dev/null 2>&1 || missing=1
done
# Debian keeps the PostgreSQL server binaries (initdb, postgres: the scratch servers drills use) off PATH
ls /usr/lib/postgresql/*/bin/postgres /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing=1
if [ "$missing" -eq 1 ]; then
  echo "installing Debian packages: ${PACKAGES[*]}"
  $SUDO apt-get update -qq
  # policy-rc.d keeps the packaged services from starting: backupd starts its own sandbox servers
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
fi

PY="${PYTHON:-python3}"
"$PY" -m pip install -q --disable-pip-version-check -e ".[dev,apprise]"
