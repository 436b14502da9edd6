"""One parser for every size, rate and duration option (ftx/units.py), table-driven."""

import subprocess

import pytest
from click.testing import CliRunner

from ftx.cli import main
from ftx.units import parse_duration, parse_rate, parse_size

from .helpers import FTX

MiB, MB = 1 << 20, 10 ** 6

SIZES = [
    ("4096", 4096), ("4096B", 4096), ("500K", 500 << 10), ("500k", 500 << 10), ("20M", 20 * MiB),
    ("20MiB", 20 * MiB), ("20mib", 20 * MiB), ("20MB", 20 * MB), ("1.5G", 3 << 29),
    ("2T", 2 << 40), ("1KB", 1000), ("1KiB", 1024), (" 8M ", 8 * MiB), ("0", 0),
]
RATES = SIZES[1:] + [
    ("160Mbit", 20 * MB), ("1Gbit", 125 * MB), ("8kbit", 1000), ("100Mbps", 12_500_000), ("20M/s", 20 * MiB),
    ("20MB/s", 20 * MB), ("160Mbit/s", 20 * MB), ("800bit", 100),
]
BAD = ["", "x", "-1", "1Q", "nan", "inf", "20Mb", "20mb", "1e999", "M", "1 2M", "20MiBit"]


@pytest.mark.parametrize("text,value", SIZES)
def test_sizes(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text,value", RATES)
def test_rates(text, value):
    assert parse_rate(text) == value


@pytest.mark.parametrize("text,value", [("30", 30.0), ("30s", 30.0), ("500ms", 0.5), ("5m", 300.0),
                                        ("12h", 43200.0), ("7d", 604800.0)])
def test_durations(text, value):
    assert parse_duration(text) == value


@pytest.mark.parametrize("bad", BAD)
def test_bad_values_raise_value_error_listing_the_forms(bad):
    for parse in (parse_size, parse_rate, parse_duration):
        with pytest.raises(ValueError) as info:
            parse(bad)
        assert repr(bad) in str(info.value) or "ambiguous" in str(info.value)


def test_bits_are_rates_not_sizes():
    with pytest.raises(ValueError, match="20M"):
        parse_size("160Mbit")


@pytest.mark.parametrize("option,value", [("--max-rate", "fast"), ("--max-rate", "20Mb"), ("--chunk-size", "1Mbit")])
def test_a_bad_unit_is_a_usage_error_that_lists_accepted_forms(tmp_path, option, value):
    (tmp_path / "f").write_bytes(b"x")
    proc = subprocess.run(FTX + ["send", str(tmp_path / "f"), "127.0.0.1:9", option, value, "--insecure"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert option in proc.stderr
    assert "20MiB" in proc.stderr or "MB for bytes" in proc.stderr


@pytest.mark.parametrize("option,value", [("--min-free", "20Mb"), ("--max-memory", "lots")])
def test_a_bad_receive_size_lists_accepted_forms(option, value):
    result = CliRunner().invoke(main, ["receive", "--mkdir", option, value])
    assert result.exit_code == 2
    assert option in result.output and ("20MiB" in result.output or "MB for bytes" in result.output)


def test_help_states_the_units():
    out = CliRunner().invoke(main, ["send", "--help"], terminal_width=200).output
    assert "160Mbit" in out and "MiB" in out and "10^6" in out
    out = CliRunner().invoke(main, ["receive", "--help"], terminal_width=200).output
    assert "MB = 10^6" in out or "20MB" in out


@pytest.mark.parametrize("text,value", [("200Mbit", 25_000_000), ("20M", 20 * MiB), ("20MB", 20 * MB),
                                        ("20MB/s", 20 * MB), ("1Gbps", 125 * MB)])
def test_impair_rates_read_as_max_rate(text, value):
    from ftx.netsim import Impairment

    assert Impairment.parse(f"rate={text}").rate == value
