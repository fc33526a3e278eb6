"""BUS_FRAME_READER, and the private aiormq and aio-pika parts the bus's frame reader needs."""

from __future__ import annotations

import pytest

from bus.amqp import reader
from bus.errors import ConfigError


@pytest.mark.parametrize(
    ("environ", "expected"),
    [({}, True), ({"BUS_FRAME_READER": "bus"}, True), ({"BUS_FRAME_READER": ""}, True),
     ({"BUS_FRAME_READER": "aiormq"}, False), ({"BUS_FRAME_READER": " AIORMQ "}, False)],
)  # fmt: skip
def test_the_setting_chooses_the_reader(environ: dict[str, str], expected: bool) -> None:
    assert reader.enabled(environ) is expected


def test_an_unknown_reader_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="BUS_FRAME_READER 'fast': use bus or aiormq"):
        reader.enabled({"BUS_FRAME_READER": "fast"})


def test_the_installed_aiormq_and_aio_pika_have_what_the_reader_replaces() -> None:
    # an upgrade that renames one of them falls back to aiormq's reader (with a warning):
    # this test says so first
    assert reader.supported()
