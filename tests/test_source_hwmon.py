"""The hwmon/thermal source against a temporary tree laid out like sysfs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from powercast.config import ConfigError, HwmonSource, PublisherConfig, Reading, parse
from powercast.sources import SourceError, make_reader
from powercast.sources.hwmon import HwmonReader, clean, discover


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A small machine: coretemp with labels, acpitz without, an NVMe drive, two zones."""
    hwmon = tmp_path / "sys" / "class" / "hwmon"
    write(hwmon / "hwmon0" / "name", "acpitz")
    write(hwmon / "hwmon0" / "temp1_input", "27800")
    write(hwmon / "hwmon2" / "name", "coretemp")
    write(hwmon / "hwmon2" / "temp1_input", "45000")
    write(hwmon / "hwmon2" / "temp1_label", "Package id 0")
    write(hwmon / "hwmon2" / "temp2_input", "43500")
    write(hwmon / "hwmon2" / "temp2_label", "Core 0")
    write(hwmon / "hwmon2" / "temp10_input", "44000")
    write(hwmon / "hwmon2" / "temp10_label", "Core 8")
    write(hwmon / "hwmon2" / "temp2_crit", "100000")  # not an input: ignored
    write(hwmon / "hwmon10" / "name", "nvme")
    write(hwmon / "hwmon10" / "temp1_input", "-5000")
    write(hwmon / "hwmon10" / "temp1_label", "Composite")
    thermal = tmp_path / "sys" / "class" / "thermal"
    write(thermal / "thermal_zone0" / "type", "acpitz")
    write(thermal / "thermal_zone0" / "temp", "27800")
    write(thermal / "thermal_zone1" / "type", "x86_pkg_temp")
    write(thermal / "thermal_zone1" / "temp", "45000")
    write(thermal / "cooling_device0" / "type", "Processor")  # not a zone: ignored
    return tmp_path


def read(root: Path, *sensors: str, **rename: str) -> Reading:
    config = HwmonSource(root=str(root), sensors=list(sensors or ["*"]), rename=rename)
    reader = make_reader(config, 0, 0.0)
    assert isinstance(reader, HwmonReader)
    return asyncio.run(reader.read())


@pytest.mark.unit
class TestHwmonConfig:
    def test_defaults_and_errors(self) -> None:
        """All sensors under / by default; a rename target must be a valid sensor name."""
        got = parse('role = "publisher"\n[[sources]]\nkind = "hwmon"', "p.toml")
        assert isinstance(got, PublisherConfig)
        hwmon = got.sources[0]
        assert isinstance(hwmon, HwmonSource)
        assert (hwmon.sensors, hwmon.root, hwmon.rename, hwmon.interval_s) == (["*"], "/", {}, 2.0)
        with pytest.raises(ConfigError, match=r"sources\[0\]\.rename\.\*: expected"):
            parse(
                'role = "publisher"\n[[sources]]\nkind = "hwmon"\nrename = { a = "b c" }',
                "p.toml",
            )


@pytest.mark.unit
class TestDiscover:
    def test_names_in_sysfs_order(self, root: Path) -> None:
        """hwmon sensors are <name>.<label> (or .temp<N>), zones their type; hwmon10 after 2."""
        assert [s.name for s in discover(root)] == [
            "acpitz.temp1",
            "coretemp.Package_id_0",
            "coretemp.Core_0",
            "coretemp.Core_8",
            "nvme.Composite",
            "acpitz",
            "x86_pkg_temp",
        ]

    def test_twins_get_a_suffix(self, root: Path) -> None:
        """Two sensors that would share a name are told apart by -2, in sysfs order."""
        write(root / "sys/class/hwmon/hwmon11/name", "nvme")
        write(root / "sys/class/hwmon/hwmon11/temp1_label", "Composite")
        write(root / "sys/class/hwmon/hwmon11/temp1_input", "30000")
        names = [s.name for s in discover(root)]
        assert names[names.index("nvme.Composite") + 1] == "nvme.Composite-2"

    def test_old_layout_under_device(self, tmp_path: Path) -> None:
        """Older drivers keep name and temp*_input under hwmonN/device/."""
        write(tmp_path / "sys/class/hwmon/hwmon0/device/name", "it87")
        write(tmp_path / "sys/class/hwmon/hwmon0/device/temp3_input", "39000")
        assert [s.name for s in discover(tmp_path)] == ["it87.temp3"]

    def test_clean(self) -> None:
        """Names lose what a sensor name cannot hold and fit in 32 characters."""
        assert clean("Package id 0") == "Package_id_0"
        assert clean("_x/y") == "x_y"
        assert len(clean("a" * 50)) == 32
        assert clean("...") == "sensor"

    def test_nothing_there(self, tmp_path: Path) -> None:
        """A machine without sysfs sensors has none (the read then fails, below)."""
        assert discover(tmp_path) == []


class TestHwmonReader:
    @pytest.mark.unit
    def test_all_by_default(self, root: Path) -> None:
        """Without a selection every sensor is read, millidegrees to degrees."""
        got = read(root)
        assert got.power is None
        assert got.temperatures == {
            "acpitz.temp1": 27.8,
            "coretemp.Package_id_0": 45.0,
            "coretemp.Core_0": 43.5,
            "coretemp.Core_8": 44.0,
            "nvme.Composite": -5.0,
            "acpitz": 27.8,
            "x86_pkg_temp": 45.0,
        }

    @pytest.mark.unit
    def test_select_by_name_and_glob_and_rename(self, root: Path) -> None:
        """Names and globs pick sensors; rename announces one under another name."""
        got = read(root, "coretemp.Core_*", "x86_pkg_temp", x86_pkg_temp="cpu")
        assert got.temperatures == {"coretemp.Core_0": 43.5, "coretemp.Core_8": 44.0, "cpu": 45.0}

    @pytest.mark.unit
    def test_values_change_between_reads(self, root: Path) -> None:
        """Each read reads the files again."""
        assert read(root, "acpitz").temperatures == {"acpitz": 27.8}
        write(root / "sys/class/thermal/thermal_zone0/temp", "31000")
        assert read(root, "acpitz").temperatures == {"acpitz": 31.0}

    @pytest.mark.unit
    def test_pattern_matching_nothing(self, root: Path) -> None:
        """A name or glob that matches no sensor fails the read, listing what there is."""
        with pytest.raises(SourceError) as info:
            read(root, "x86_pkg_temp", "gpu*")
        assert str(info.value).startswith(
            f"hwmon {root}/sys/class: no sensor matches 'gpu*' (found: acpitz.temp1, "
        )

    @pytest.mark.unit
    def test_rename_of_an_unselected_sensor(self, root: Path) -> None:
        """A rename whose sensor is not selected is a mistake, and says so."""
        with pytest.raises(SourceError, match="rename: no selected sensor named 'acpitz'"):
            read(root, "x86_pkg_temp", acpitz="room")

    @pytest.mark.unit
    def test_unreadable_or_garbage_sensor(self, root: Path) -> None:
        """A selected sensor whose file is not millidegrees fails the read, naming the file."""
        bad = root / "sys/class/hwmon/hwmon0/temp1_input"
        write(bad, "n/a")
        with pytest.raises(SourceError, match=rf"{bad}: expected millidegrees Celsius, got 'n/a'"):
            read(root, "acpitz.temp1")
        write(bad, "2000000")  # 2000 °C: a broken sensor, not a reading
        with pytest.raises(SourceError, match="expected millidegrees Celsius, got '2000000'"):
            read(root, "acpitz.temp1")
        assert read(root, "x86_pkg_temp").temperatures == {"x86_pkg_temp": 45.0}  # others: fine
        bad.unlink()
        with pytest.raises(SourceError, match=r"no sensor matches 'acpitz\.temp1'"):
            read(root, "acpitz.temp1")

    @pytest.mark.unit
    def test_too_many_sensors(self, tmp_path: Path) -> None:
        """More than fit in an announcement (24) is an error asking for a narrower selection."""
        for i in range(1, 30):
            write(tmp_path / f"sys/class/hwmon/hwmon0/temp{i}_input", "40000")
        write(tmp_path / "sys/class/hwmon/hwmon0/name", "coretemp")
        with pytest.raises(SourceError, match="29 sensors match, at most 24"):
            read(tmp_path)
        assert len(read(tmp_path, "coretemp.temp1?").temperatures) == 10

    @pytest.mark.system
    @pytest.mark.skipif(
        not any(Path("/sys/class", kind).exists() for kind in ("hwmon", "thermal")),
        reason="needs temperature sensors: this machine has no /sys/class/hwmon or thermal",
    )
    def test_this_machine(self) -> None:
        """On the real /sys the discovery runs without error (whatever it finds)."""
        for sensor in discover(Path("/")):
            assert clean(sensor.name) == sensor.name
