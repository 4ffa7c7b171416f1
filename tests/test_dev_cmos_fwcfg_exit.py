"""CMOS/RTC, fw_cfg and isa-debug-exit, read through their ports."""

import struct

import pytest

from vmm.devices import Cmos, DebugExit, FwCfg, PortBus

MiB = 1024 * 1024
GiB = 1024 * MiB


def cmos_bus(ram_size):
    bus = PortBus()
    bus.register(0x70, 0x71, Cmos(ram_size), "cmos")
    return bus


def cmos_read(bus, index):
    bus.write(0x70, 1, index)
    return bus.read(0x71, 1)


def cmos_word(bus, lo_index):
    return cmos_read(bus, lo_index) | cmos_read(bus, lo_index + 1) << 8


# -- CMOS -----------------------------------------------------------------------------

@pytest.mark.parametrize("ram_size, ext_kib, above_16m_64k", [
    (128 * MiB, 0xFFFF, (128 - 16) * 16),    # 112 MiB / 64 KiB = 1792 = 0x0700
    (1 * GiB, 0xFFFF, (1024 - 16) * 16),     # 0x3f00
    (3 * GiB, 0xFFFF, (3072 - 16) * 16),     # 0xbf00: fits, no cap needed
    (8 * MiB, 7 * 1024, 0),                  # all below 16 MiB
])
def test_cmos_memory_sizes_like_qemu_pc(ram_size, ext_kib, above_16m_64k):
    bus = cmos_bus(ram_size)
    assert cmos_word(bus, 0x15) == 640
    assert cmos_word(bus, 0x17) == ext_kib
    assert cmos_word(bus, 0x30) == ext_kib
    assert cmos_word(bus, 0x34) == above_16m_64k
    assert [cmos_read(bus, i) for i in (0x5B, 0x5C, 0x5D)] == [0, 0, 0]
    assert cmos_read(bus, 0x5F) == 0          # one CPU


def test_cmos_128mib_exact_bytes():
    bus = cmos_bus(128 * MiB)
    assert (cmos_read(bus, 0x15), cmos_read(bus, 0x16)) == (0x80, 0x02)
    assert (cmos_read(bus, 0x34), cmos_read(bus, 0x35)) == (0x00, 0x07)


def test_cmos_tiny_ram_base_memory():
    bus = cmos_bus(512 * 1024)
    assert cmos_word(bus, 0x15) == 512
    assert cmos_word(bus, 0x17) == 0


def test_rtc_fixed_date_bcd_24h():
    bus = cmos_bus(128 * MiB)
    assert [cmos_read(bus, i) for i in (0x00, 0x02, 0x04)] == [0, 0, 0]
    assert cmos_read(bus, 0x07) == 0x01       # day of month
    assert cmos_read(bus, 0x08) == 0x01       # January
    assert cmos_read(bus, 0x09) == 0x26       # year, BCD
    assert cmos_read(bus, 0x32) == 0x20       # century
    assert cmos_read(bus, 0x06) == 5          # 2026-01-01 is a Thursday (Sunday = 1)
    assert cmos_read(bus, 0x0B) == 0x02       # 24 h, BCD
    assert cmos_read(bus, 0x0A) == 0x26       # UIP clear
    assert cmos_read(bus, 0x0D) == 0x80       # battery good


def test_rtc_is_deterministic_across_instances():
    a, b = cmos_bus(64 * MiB), cmos_bus(64 * MiB)
    assert [cmos_read(a, i) for i in range(128)] == [cmos_read(b, i) for i in range(128)]


def test_nmi_disable_bit_is_not_part_of_the_index():
    cmos = Cmos(128 * MiB)
    bus = PortBus()
    bus.register(0x70, 0x71, cmos, "cmos")
    bus.write(0x70, 1, 0x80 | 0x09)
    assert bus.read(0x71, 1) == 0x26
    assert cmos.nmi_disabled
    bus.write(0x70, 1, 0x09)
    assert not cmos.nmi_disabled


def test_cmos_ram_writes_stick_and_status_cd_are_read_only():
    bus = cmos_bus(128 * MiB)
    bus.write(0x70, 1, 0x40)
    bus.write(0x71, 1, 0xA5)
    assert cmos_read(bus, 0x40) == 0xA5
    bus.write(0x70, 1, 0x0D)
    bus.write(0x71, 1, 0x00)
    assert cmos_read(bus, 0x0D) == 0x80
    bus.write(0x70, 1, 0x0A)
    bus.write(0x71, 1, 0xA6)                  # UIP is read-only
    assert cmos_read(bus, 0x0A) == 0x26


def test_cmos_index_port_reads_ones():
    assert cmos_bus(128 * MiB).read(0x70, 1) == 0xFF


# -- fw_cfg -----------------------------------------------------------------------------

def fwcfg_bus(ram_size=128 * MiB):
    bus = PortBus()
    bus.register(0x510, 0x511, FwCfg(ram_size), "fw_cfg")
    return bus


def fwcfg_read(bus, key, length):
    bus.write(0x510, 2, key)
    return bytes(bus.read(0x511, 1) for _ in range(length))


def test_fwcfg_signature_and_id():
    bus = fwcfg_bus()
    assert fwcfg_read(bus, 0x00, 4) == b"QEMU"
    assert struct.unpack("<I", fwcfg_read(bus, 0x01, 4))[0] == 1   # no DMA bit


@pytest.mark.parametrize("ram_size", [128 * MiB, 1 * GiB, 3 * GiB])
def test_fwcfg_ram_size(ram_size):
    bus = fwcfg_bus(ram_size)
    assert struct.unpack("<Q", fwcfg_read(bus, 0x03, 8))[0] == ram_size


def test_fwcfg_cpus_and_file_dir():
    bus = fwcfg_bus()
    assert struct.unpack("<H", fwcfg_read(bus, 0x05, 2))[0] == 1
    assert struct.unpack("<H", fwcfg_read(bus, 0x0F, 2))[0] == 1
    assert struct.unpack(">I", fwcfg_read(bus, 0x19, 4))[0] == 0


def test_fwcfg_past_end_and_unknown_keys_read_zero():
    bus = fwcfg_bus()
    assert fwcfg_read(bus, 0x00, 6) == b"QEMU\0\0"
    assert fwcfg_read(bus, 0x1234, 3) == b"\0\0\0"


def test_fwcfg_selector_write_rewinds():
    bus = fwcfg_bus()
    assert fwcfg_read(bus, 0x00, 2) == b"QE"
    assert fwcfg_read(bus, 0x00, 2) == b"QE"


def test_fwcfg_qemu_port_quirks():
    bus = fwcfg_bus()
    bus.write(0x511, 2, 0x0000)               # a 16-bit write selects at either port
    assert bus.read(0x510, 1) == ord("Q")     # a byte read at either port is data
    bus.write(0x511, 1, 0x55)                 # data writes are ignored
    assert bus.read(0x511, 1) == ord("E")
    assert bus.read(0x511, 2) == 0xFFFF       # invalid size, no exception


# -- isa-debug-exit ------------------------------------------------------------------------

@pytest.mark.parametrize("size, value, status", [
    (1, 0x00, 0x01), (1, 0x10, 0x21), (4, 0x31, 0x63), (2, 0x1FF, 0x3FF),
])
def test_debug_exit_status_is_value_shifted_or_one(size, value, status):
    statuses = []
    bus = PortBus()
    bus.register(0xF4, 0xF7, DebugExit(on_exit=statuses.append), "debug-exit")
    bus.write(0xF4, size, value)
    assert statuses == [status]


def test_debug_exit_reads_zero():
    bus = PortBus()
    bus.register(0xF4, 0xF7, DebugExit(on_exit=lambda s: None), "debug-exit")
    assert bus.read(0xF4, 4) == 0
