"""A booting node's stage, read from its serial console (no VM: console text from the
reference image's boots under QEMU), and the progress lines ``tidehost vm cluster up`` says."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagebuild.lab.bootstage import BootStage, BootWatch, Stage, console_stage

# Lines as the reference image prints them on ttyS0 (OVMF, EFI stub, kernel, dracut's
# systemd initrd, systemd in the real root, cloud-init), in boot order.
FIRMWARE = '\x1b[=3hBdsDxe: loading Boot0001 "UEFI Misc Device" from PciRoot(0x0)/Pci(0x5,0x0)\n'
KERNEL = ("EFI stub: Loaded initrd from LINUX_EFI_INITRD_MEDIA_GUID device path\n"
          "[    0.000000] Linux version 6.12.118+deb13-cloud-amd64 (debian-kernel@lists)\n")
INITRD = ("[   15.670849] Run /init as init process\n"
          "[!p]104[   16.586575] systemd[1]: systemd 257.13-1~deb13u1 running in system mode (+PAM)\n"
          "[   16.587837] systemd[1]: Running in initrd.\nBooting initrd of dracut.\n"
          "         Starting initrd-switch-root.service - Switch Root...\n")
SYSTEM = ("[   59.398051] systemd[1]: systemd 257.13-1~deb13u1 running in system mode (+PAM)\n"
          "\nWelcome to Tidehost 1.0.0 (alpha)!\n\n"
          "[   93.225107] systemd[1]: Stopped initrd-switch-root.service - Switch Root.\n")
CLOUD_INIT = ("         Starting cloud-init-main.service - Cloud-init: Single Process...\n"
              "[  178.985758] cloud-init[596]: Cloud-init v. 25.1.4 running 'init-local' at ...\n"
              "[  OK  ] Started ssh.service - OpenBSD Secure Shell server.\n"
              "node1 login: [  220.27] cloud-init[596]: Cloud-init v. 25.1.4 running "
              "'modules:config'\n")  # fmt: skip
EMERGENCY = ("[  139.2] systemd[1]: Starting emergency.service - Emergency Shell...\n"
             "Entering emergency mode. Exit the shell to continue.\n"
             "Cannot open access to console, the root account is locked.\n"
             "Press Enter to continue.\n")
RESTART = "[  300.1] reboot: Restarting system\n"
ONE_BOOT = FIRMWARE + KERNEL + INITRD + SYSTEM + CLOUD_INIT


@pytest.mark.parametrize(
    ("text", "stage"),
    [
        ("", Stage.FIRMWARE),
        (FIRMWARE, Stage.FIRMWARE),
        (FIRMWARE + KERNEL, Stage.KERNEL),
        (FIRMWARE + KERNEL + INITRD, Stage.INITRD),  # systemd's "system mode" line is in it
        (FIRMWARE + KERNEL + INITRD + SYSTEM, Stage.SYSTEM),
        (ONE_BOOT, Stage.CLOUD_INIT),  # sshd and the login prompt come before cloud-init ends
        (FIRMWARE + KERNEL + INITRD + EMERGENCY, Stage.EMERGENCY),
    ],
)
def test_each_stage_of_one_boot(text: str, stage: Stage) -> None:
    assert console_stage(text) == BootStage(stage, 1)


def test_every_prefix_of_a_boot_moves_forward_only() -> None:
    ranks = [console_stage(ONE_BOOT[:i]).stage.rank for i in range(0, len(ONE_BOOT), 7)]
    assert ranks == sorted(ranks)
    assert {console_stage(ONE_BOOT[:i]).stage for i in range(len(ONE_BOOT) + 1)} == {
        Stage.FIRMWARE, Stage.KERNEL, Stage.INITRD, Stage.SYSTEM, Stage.CLOUD_INIT}


def test_a_reboot_starts_a_new_boot() -> None:
    failed = FIRMWARE + KERNEL + INITRD + EMERGENCY + RESTART
    assert console_stage(failed) == BootStage(Stage.REBOOTING, 2)
    assert console_stage(failed + FIRMWARE) == BootStage(Stage.FIRMWARE, 2)
    assert console_stage(failed + ONE_BOOT) == BootStage(Stage.CLOUD_INIT, 2)
    assert console_stage(ONE_BOOT + RESTART + ONE_BOOT + RESTART + FIRMWARE + KERNEL) == (
        BootStage(Stage.KERNEL, 3))
    assert str(BootStage(Stage.KERNEL, 3)) == "kernel (boot 3)"
    assert str(BootStage(Stage.INITRD, 1)) == "initrd"


def test_an_initramfs_welcome_is_not_the_real_root() -> None:
    text = FIRMWARE + KERNEL + "Welcome to Debian GNU/Linux 13 (trixie) dracut-106 (Initramfs)!\n"
    assert console_stage(text).stage is Stage.KERNEL


def test_the_watch_says_each_change_once_with_the_time(tmp_path: Path) -> None:
    said: list[str] = []
    now = [100.0]
    watch = BootWatch(t0=100.0, say=said.append, clock=lambda: now[0])
    log = tmp_path / "serial.log"
    watch.console("node1", log)  # no log yet: QEMU is in the firmware
    log.write_text(FIRMWARE + KERNEL)
    for _ in range(3):
        now[0] += 4
        watch.console("node1", log)
    log.write_text(FIRMWARE + KERNEL + INITRD)
    now[0] += 20.4
    assert watch.console("node1", log) == BootStage(Stage.INITRD, 1)
    now[0] += 50
    watch.answered("node1")
    watch.answered("node1")
    assert said == ["node1: firmware (0s)", "node1: kernel (4s)", "node1: initrd (32s)",
                    "node1: ssh (82s)"]  # fmt: skip
