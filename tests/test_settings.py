from __future__ import annotations

from pathlib import Path

import pytest

from ledger.errors import ConfigError
from ledger.settings import Settings


def test_no_url_means_the_embedded_default() -> None:
    assert Settings.from_env({}).database_url is None


def test_a_good_url_is_taken_and_plain_postgresql_means_psycopg() -> None:
    s = Settings.from_env({"LEDGER_DATABASE_URL": "postgresql://u:pw@db:5433/ledger", "LEDGER_HOME": "~/x"})
    assert s.database_url is not None
    assert s.database_url.drivername == "postgresql+psycopg"
    assert (s.database_url.host, s.database_url.port, s.database_url.database) == ("db", 5433, "ledger")
    assert s.home == Path("~/x").expanduser()


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("not a url", "is not a database URL"),
        ("mysql://u@h/db", "uses the driver 'mysql'"),
        ("postgresql+psycopg://u@h:5432/", "names no database"),
        ("postgresql+psycopg://u@h:99999/db", "impossible port"),
        ("postgresql+psycopg://u@h:port/db", "is not a database URL"),
    ],
)
def test_malformed_urls_name_the_variable_and_show_an_example(value: str, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"LEDGER_DATABASE_URL": value})
    message = str(err.value)
    assert "LEDGER_DATABASE_URL" in message and says in message
    assert "postgresql+psycopg://ledger:secret@localhost:5432/ledger" in message


def test_a_password_never_shows_in_the_error() -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"LEDGER_DATABASE_URL": "mysql://u:hunter2@h/db"})
    assert "hunter2" not in str(err.value)
