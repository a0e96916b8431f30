"""The [limits] table of the config (target.config): defaults, values, clear errors."""

from __future__ import annotations

import pytest

from target.config import MIN_BUFFERED_BYTES, ConfigError, LimitsConfig, from_dict

pytestmark = pytest.mark.unit


def test_defaults_without_the_table():
    assert from_dict({}).limits == LimitsConfig()
    lim = LimitsConfig()
    assert lim.login_timeout == 15.0 and lim.max_connections == 1024
    assert lim.max_connections_per_address == 128 and lim.max_sessions == 256
    assert lim.max_buffered_bytes == 64 << 20


def test_values_and_sizes():
    lim = from_dict({"limits": {"login_timeout": 0.5, "max_connections": 10,
                                "max_connections_per_address": 3, "max_sessions": 4,
                                "max_buffered_bytes": "16M"}}).limits
    assert (lim.login_timeout, lim.max_connections, lim.max_connections_per_address,
            lim.max_sessions, lim.max_buffered_bytes) == (0.5, 10, 3, 4, 16 << 20)


def test_per_address_defaults_to_no_more_than_the_portal():
    lim = from_dict({"limits": {"max_connections": 10}}).limits
    assert lim.max_connections_per_address == 10


@pytest.mark.parametrize("table, words", [
    ({"login_timeout": 0}, "limits.login_timeout: expected a number greater than 0"),
    ({"login_timeout": "15"}, "limits.login_timeout: expected int/float"),
    ({"max_connections": 0}, "limits.max_connections: expected an integer of at least 1"),
    ({"max_sessions": True}, "limits.max_sessions: expected int"),
    ({"max_connections": 4, "max_connections_per_address": 5},
     "limits.max_connections_per_address: 5 is more than max_connections (4)"),
    ({"max_buffered_bytes": "1M"},
     f"limits.max_buffered_bytes: expected at least {MIN_BUFFERED_BYTES} bytes"),
    ({"max_buffered_bytes": "lots"}, "limits.max_buffered_bytes"),
    ({"max_conections": 4}, "limits: unknown key(s): max_conections"),
])
def test_bad_values_name_the_key(table, words):
    with pytest.raises(ConfigError) as err:
        from_dict({"limits": table}, "t.toml")
    assert str(err.value).startswith("t.toml: ")
    assert words in str(err.value)


def test_limits_must_be_a_table():
    with pytest.raises(ConfigError, match="limits: expected dict"):
        from_dict({"limits": 3}, "t.toml")
