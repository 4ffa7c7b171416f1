"""The device guests (``test_dev_testdev``, ``test_dev_hpet``): each prints what it reads of
one device; the output must be QEMU's byte for byte, on the board kvm-unit-tests' images
expect (``-device pc-testdev``), in every mode that boots a Multiboot kernel."""
from __future__ import annotations

import pytest
import test_dev_hpet
import test_dev_testdev

from conftest import DEVICE_GUEST_MODES, build_kernel, run_kernel, run_kernel_in_qemu
from tools.machines import testdev_command as qemu_testdev_command
from vmm.vm import StopKind

DEVICES = {"pc-testdev": test_dev_testdev, "hpet": test_dev_hpet}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, bytes]:
    tmp = tmp_path_factory.mktemp("devices")
    return {name: build_kernel(tmp, name, case.GUEST) for name, case in DEVICES.items()}


@pytest.mark.parametrize("mode", DEVICE_GUEST_MODES)
@pytest.mark.parametrize("device", DEVICES)
def test_the_device_as_the_guest_sees_it(device, mode, images):
    result, out = run_kernel(images[device], mode)
    assert result.kind is StopKind.EXIT, result.message
    assert out == DEVICES[device].EXPECTED


@pytest.mark.qemu
@pytest.mark.parametrize("device", DEVICES)
def test_qemu_agrees(device, images, tmp_path):
    out, status = run_kernel_in_qemu(images[device], tmp_path, qemu_testdev_command)
    assert out == DEVICES[device].EXPECTED and status == 1
