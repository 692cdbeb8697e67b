"""``JR.config``: the original's settings and defaults, checked the moment they are set."""

from __future__ import annotations

from typing import Any

import pytest

from jobreactor import JR, Config, ConfigError

ORIGINAL_DEFAULTS = {
    "job_directory": "reactor_jobs",
    "max_attempt": 10,
    "retry_multiplier": 5,
    "merge_job_itself_to_args": False,
    "always_use_specified_node": False,
    "remove_done_jobs": True,
    "remove_cancelled_jobs": True,
    "remove_failed_jobs": False,
    "retry_jobs_at_start": True,
    "redis_host": "localhost",
    "redis_port": 6379,
}


@pytest.mark.parametrize(("name", "default"), ORIGINAL_DEFAULTS.items())
def test_the_originals_settings_have_the_originals_defaults(name: str, default: Any) -> None:
    config = Config()

    assert config[name] == default
    assert getattr(config, name) == default
    assert type(config[name]) is type(default)


def test_jr_config_is_a_config_with_the_defaults() -> None:
    assert isinstance(JR.config, Config)
    assert JR.config.thread_pool_size == 20


def test_both_spellings_set_a_setting() -> None:
    config = Config()

    config["max_attempt"] = 3
    config.retry_multiplier = 0.5

    assert (config.max_attempt, config["retry_multiplier"]) == (3, 0.5)


@pytest.mark.parametrize("how", ["getitem", "setitem", "update"])
def test_an_unknown_setting_is_refused_by_name(how: str) -> None:
    config = Config()

    with pytest.raises(ConfigError, match="'max_attempts'") as raised:
        if how == "getitem":
            config["max_attempts"]
        elif how == "setitem":
            config["max_attempts"] = 3
        else:
            config.update(max_attempts=3)

    assert "max_attempt," in str(raised.value)  # the message lists the real names


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("max_attempt", "10"),
        ("max_attempt", 2.5),
        ("max_attempt", True),
        ("retry_multiplier", False),
        ("retry_multiplier", "5"),
        ("retry_multiplier", float("nan")),
        ("redis_port", True),
        ("redis_port", "6379"),
        ("merge_job_itself_to_args", 1),
        ("remove_done_jobs", "yes"),
        ("job_directory", None),
        ("redis_host", 127),
    ],
)
def test_a_wrong_type_is_refused_naming_the_setting(name: str, value: Any) -> None:
    config = Config()
    before = config[name]

    with pytest.raises(ConfigError, match=f"JR.config.{name} "):
        config[name] = value
    with pytest.raises(ConfigError, match=f"JR.config.{name} "):
        setattr(config, name, value)
    with pytest.raises(ConfigError, match=f"JR.config.{name} "):
        Config(**{name: value})

    assert config[name] == before


@pytest.mark.parametrize(
    ("name", "value"),
    [("max_attempt", 0), ("retry_multiplier", -1), ("redis_port", 0), ("redis_port", 65536)],
)
def test_a_value_out_of_range_is_refused(name: str, value: int) -> None:
    with pytest.raises(ConfigError, match=f"JR.config.{name} must be at"):
        Config()[name] = value


def test_a_float_is_a_number_of_seconds() -> None:
    config = Config()

    config.update(retry_multiplier=2.5, node_grace_period=0)

    assert (config.retry_multiplier, config.node_grace_period) == (2.5, 0)


def test_update_sets_several_settings_from_a_mapping_or_keywords() -> None:
    config = Config()

    config.update({"max_attempt": 2, "redis_host": "cache"}, remove_failed_jobs=True)

    assert (config.max_attempt, config.redis_host, config.remove_failed_jobs) == (
        2,
        "cache",
        True,
    )


def test_update_changes_nothing_when_one_setting_is_wrong() -> None:
    config = Config()

    with pytest.raises(ConfigError, match="redis_port"):
        config.update(max_attempt=2, redis_port="6379")
    with pytest.raises(ConfigError, match="'bogus'"):
        config.update(max_attempt=2, bogus=1)

    assert config == Config()
