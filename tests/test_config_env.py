"""``RC_MTA_<SECTION>__<KEY>`` overrides, as the documented config reads them: over the
file key by key, lists and tables as JSON, names in any case, and every mistake one line
naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rc_mta.config import load_settings
from rc_mta.errors import ConfigError


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.upper().startswith("RC_MTA_"):
            monkeypatch.delenv(name)
    path = tmp_path / "rc-mta.toml"
    path.write_text(
        '[inbound]\nlisten = "127.0.0.1:2525"\nhostname = "mx.from-file.example"\n'
        '[store]\nurl = "sqlite:///from-file.db"\nbusy_timeout = "9s"\n'
    )
    return path


def test_a_variable_overrides_one_key_and_the_file_keeps_the_others(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RC_MTA_INBOUND__LISTEN", "0.0.0.0:25")
    monkeypatch.setenv("rc_mta_store__URL", "sqlite:///from-env.db")  # names in any case

    settings = load_settings(str(config_file))

    assert settings.inbound.listen == "0.0.0.0:25"
    assert settings.inbound.hostname == "mx.from-file.example"
    assert (settings.store.url, settings.store.busy_timeout) == ("sqlite:///from-env.db", 9.0)


def test_lists_tables_and_nested_sections_come_as_json_or_by_key(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "k" * 40
    monkeypatch.setenv("RC_MTA_DNS__NAMESERVERS", '["10.0.0.53", "10.0.1.53"]')
    monkeypatch.setenv("RC_MTA_SIGNING__KEYS__3", secret)
    monkeypatch.setenv("RC_MTA_SIGNING__ACTIVE_KEY", "3")
    monkeypatch.setenv("RC_MTA_CHECKS__DKIM__MIN_KEY_BITS", "2048")
    monkeypatch.setenv("RC_MTA_LOG", '{"level": "debug", "format": "text"}')
    monkeypatch.setenv("RC_MTA_LOG__FORMAT", "json")  # a key beats its section's JSON

    settings = load_settings(str(config_file))

    assert settings.dns.nameservers == ["10.0.0.53", "10.0.1.53"]
    assert settings.signing.keys[3].get_secret_value() == secret
    assert settings.signing.active_key == 3
    assert settings.checks.dkim.min_key_bits == 2048
    assert (settings.log.level, settings.log.format) == ("debug", "json")


@pytest.mark.parametrize(
    ("name", "value", "said"),
    [
        ("RC_MTA_DNS__NAMESERVERS", "10.0.0.53", "config key dns.nameservers: its value (9 characters) is not JSON"),
        ("RC_MTA_LOG", "debug", "config key log: its value (5 characters) is not JSON"),
        ("RC_MTA_INBOUND__TLS__NOPE", "1", "config key inbound.tls.nope: unknown key"),
        ("RC_MTA_INBOUND__MAX_RECIPIENTS", "many", "config key inbound.max_recipients:"),
        ("RC_MTA_LOG__LEVEL__X", "1", "log.level is not a table"),  # log.level set nowhere
        ("RC_MTA_INBOUND__NOPE__X", "1", "config key inbound.nope: unknown key"),
        ("RC_MTA_LOG", '{"level": "loud"}', "config key log.level:"),
    ],
)
def test_a_wrong_variable_is_named_in_one_line(
    config_file: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str, said: str
) -> None:
    monkeypatch.setenv(name, value)

    with pytest.raises(ConfigError) as raised:
        load_settings(str(config_file))

    message = str(raised.value)
    assert message.startswith(f"environment variable {name}: {said}"), message
    assert "\n" not in message


def test_a_section_given_in_part_keeps_the_defaults_of_the_keys_it_leaves_out(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # [checks.dkim] with only min_key_bits once turned DKIM's policy from "tag" to "reject".
    config_file.write_text(config_file.read_text() + "[checks.dkim]\nmin_key_bits = 2048\n")
    monkeypatch.setenv("RC_MTA_CHECKS__SPF__REJECT_SOFTFAIL", "true")

    settings = load_settings(str(config_file))

    assert (settings.checks.dkim.policy, settings.checks.dkim.min_key_bits) == ("tag", 2048)
    assert (settings.checks.spf.policy, settings.checks.spf.reject_softfail) == ("reject", True)
    assert load_settings(None).checks.dkim.policy == "tag"


def test_a_secret_written_wrong_is_not_repeated_in_the_error(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RC_MTA_HTTP__API_TOKENS", "tok-SuperSecret-abc123")  # meant as ["tok-…"]

    with pytest.raises(ConfigError) as raised:
        load_settings(str(config_file))

    assert "RC_MTA_HTTP__API_TOKENS" in str(raised.value)
    assert "SuperSecret" not in str(raised.value)


def test_a_key_below_a_value_that_is_set_is_refused_not_dropped(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RC_MTA_LOG__LEVEL", "info")
    monkeypatch.setenv("RC_MTA_LOG__LEVEL__X", "1")

    with pytest.raises(ConfigError) as raised:
        load_settings(str(config_file))

    assert str(raised.value) == "environment variable RC_MTA_LOG__LEVEL__X: log.level is not a table"


def test_the_cli_names_a_variable_below_a_value_in_one_line(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RC_MTA_LOG__LEVEL__X", "1")  # and log.level in neither file nor environment

    result = subprocess.run(
        [sys.executable, "-m", "rc_mta", "--config", str(config_file), "task", "show", "t-1"],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode != 0
    assert result.stderr == "rc-mta: error: environment variable RC_MTA_LOG__LEVEL__X: log.level is not a table\n"


def test_two_spellings_of_one_section_in_the_file_are_refused(config_file: Path) -> None:
    config_file.write_text(config_file.read_text() + '[log]\nlevel = "debug"\n[Log]\nformat = "json"\n')

    with pytest.raises(ConfigError) as raised:
        load_settings(str(config_file))

    assert "[Log] and another spelling of it are the same section" in str(raised.value)


def test_tenant_domains_without_trusting_exchange_online_is_refused_in_one_line(config_file: Path) -> None:
    """tenant_domains is read only when Exchange Online is trusted: set alone, it would
    look like protection that is not there."""
    config_file.write_text(config_file.read_text() + '[mailbox.graph]\ntenant_domains = ["Corp.Test."]\n')

    with pytest.raises(ConfigError) as raised:
        load_settings(str(config_file))
    assert "tenant_domains needs trust_exchange_online = true" in str(raised.value)
    assert "\n" not in str(raised.value)

    config_file.write_text(config_file.read_text() + "trust_exchange_online = true\n")
    assert load_settings(str(config_file)).mailbox.graph.tenant_domains == ["corp.test"]
