"""Settings: defaults, TOML, GATEWAY_* variables, flags, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.cli import main
from gateway.config import load_settings
from gateway.errors import ConfigError

NO_ENV: dict[str, str] = {}


def test_defaults_work_without_a_file(tmp_path: Path) -> None:
    s = load_settings(environ={"XDG_STATE_HOME": str(tmp_path)})
    assert s.mqtt.url == "mqtt://127.0.0.1:1883"
    assert (s.mqtt.host, s.mqtt.port) == ("127.0.0.1", 1883)
    assert s.http.listen == "lan:8080"  # the LAN interfaces and 127.0.0.1, never the WAN side
    assert s.id.startswith("gw-")
    assert s.id == load_settings(environ={"XDG_STATE_HOME": str(tmp_path)}).id  # stable


def test_priority_is_flags_then_environment_then_file(tmp_path: Path) -> None:
    f = tmp_path / "g.toml"
    f.write_text('id = "from-file"\n[mqtt]\nurl = "mqtt://10.0.0.1:1883"\nkeepalive_s = 60\n')
    env = {"GATEWAY_MQTT__URL": "mqtt://10.0.0.2:1884", "GATEWAY_ID": "from-env"}
    s = load_settings(f, environ=env, overrides={"id": "from-flag", "state_dir": str(tmp_path)})
    assert s.id == "from-flag"
    assert s.mqtt.url == "mqtt://10.0.0.2:1884"
    assert s.mqtt.keepalive_s == 60
    assert s.mqtt.port == 1884


def test_environment_lists_and_numbers(tmp_path: Path) -> None:
    env = {
        "GATEWAY_DISCOVERY__AUTO_APPROVE": "tasmota,coap",
        "GATEWAY_REGISTRY__FLUSH_INTERVAL_S": "0.5",
        "GATEWAY_HOMEASSISTANT__ENABLED": "false",
        "GATEWAY_STATE_DIR": str(tmp_path),
    }
    s = load_settings(environ=env)
    assert s.discovery.auto_approve == ("tasmota", "coap")
    assert s.registry.flush_interval_s == 0.5
    assert s.homeassistant.enabled is False


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ('[mqtt]\nurl = "http://x"\n', "mqtt.url"),
        ("[mqtt]\nkeepalive_s = 1\n", "mqtt.keepalive_s"),
        ("[mqtt]\nkeepalive = 30\n", "allowed here: client_id"),
        ('[log]\nlevel = "LOUD"\n', "'DEBUG', 'INFO', 'WARNING' or 'ERROR'"),
        ('[http]\nlisten = "8080"\n', "HOST:PORT"),
        ("[mqtt\n", "not valid TOML"),
        ('id = "Has Spaces"\n', "id ("),
    ],
)
def test_broken_files_name_the_key_and_what_is_allowed(tmp_path: Path, toml: str, needle: str) -> None:
    f = tmp_path / "g.toml"
    f.write_text(toml)
    with pytest.raises(ConfigError) as err:
        load_settings(f, environ={"GATEWAY_STATE_DIR": str(tmp_path)})
    assert needle in str(err.value)
    assert str(f) in str(err.value)


def test_bad_environment_variable_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="GATEWAY_MQTT__KEEPALIVE_S"):
        load_settings(environ={"GATEWAY_MQTT__KEEPALIVE_S": "soon", "GATEWAY_STATE_DIR": str(tmp_path)})


def test_secrets_are_not_echoed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(environ={"GATEWAY_MQTT__PASSWORD": "[1, 2]", "GATEWAY_STATE_DIR": str(tmp_path)})
    assert "mqtt.password" in str(err.value)
    assert "[1, 2]" not in str(err.value)


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "nope.toml", environ=NO_ENV)


def test_config_check_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.toml"
    good.write_text(f'id = "box-1"\nstate_dir = "{tmp_path}"\n[mqtt]\nurl = "mqtt://192.168.1.2:1883"\n')
    assert main(["config", "check", str(good)]) == 0
    assert "OK" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text("[mqtt]\nstate_qos = 2\n")
    assert main(["config", "check", str(bad)]) == 2
    assert "mqtt.state_qos" in capsys.readouterr().err


@given(st.text(max_size=200))
def test_arbitrary_toml_text_gives_settings_or_config_error(text: str) -> None:
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".toml", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        try:
            load_settings(Path(fh.name), environ={"GATEWAY_STATE_DIR": "/tmp/x"})
        except ConfigError:
            pass


def test_the_old_name_of_the_pin_setting_still_loads(tmp_path: Path) -> None:
    f = tmp_path / "g.toml"
    f.write_text('id = "x"\n[http]\nshow_pin_on_lan = false\n')
    assert load_settings(f, environ=NO_ENV).http.show_pin_on_screens is False
