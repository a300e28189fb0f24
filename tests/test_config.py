"""Settings: defaults, environment, flags, and refusals that name the setting."""

from __future__ import annotations

import pytest

from captify_ws.config import Settings
from captify_ws.errors import ConfigError

pytestmark = pytest.mark.unit


def test_defaults_bind_loopback_port_3000() -> None:
    """The default bind is 127.0.0.1:3000, like the seed's port and uvicorn's loopback."""
    settings = Settings.load({})
    assert (settings.host, settings.port) == ("127.0.0.1", 3000)


def test_environment_then_overrides() -> None:
    """CAPTIFY_WS_* variables override defaults; CLI overrides win over both."""
    env = {"CAPTIFY_WS_PORT": "4000", "CAPTIFY_WS_HOST": "0.0.0.0", "CAPTIFY_WS_AUTH": "jwt",
           "CAPTIFY_WS_HANDLERS": "a.b:c, d.e:f", "CAPTIFY_WS_MAX_MESSAGE_SIZE": "2m"}
    settings = Settings.load(env, {"port": 5000, "host": None})
    assert settings.port == 5000
    assert settings.host == "0.0.0.0"
    assert settings.handlers == ("a.b:c", "d.e:f")
    assert settings.max_message_size == 2 * 1024 * 1024


@pytest.mark.parametrize(("env", "message"), [
    ({"CAPTIFY_WS_PORT": "eighty"}, "CAPTIFY_WS_PORT=eighty: eighty is not a whole number"),
    ({"CAPTIFY_WS_PORT": "70000"}, "port 70000"),
    ({"CAPTIFY_WS_TRANSPORT": "carrier-pigeon"}, "transport"),
    ({"CAPTIFY_WS_SEND_BUDGET": "1k"}, "send_budget"),
])
def test_bad_values_name_the_setting(env: dict[str, str], message: str) -> None:
    """A bad value raises ConfigError naming the variable or setting."""
    with pytest.raises(ConfigError, match=message):
        Settings.load(env)


def test_secrets_are_masked_in_describe() -> None:
    """describe() never shows the API key."""
    assert Settings(api_key="hunter2").describe()["api_key"] == "***"
