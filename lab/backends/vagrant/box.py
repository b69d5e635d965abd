"""``halab box build``: a Debian 12 libvirt box for Vagrant, from Debian packages only.

The VMs have no internet, so every package the lab needs is baked in. The box
boots its kernel directly (kernel and initrd ship inside the box, referenced
from the box's own Vagrantfile), with TCG-friendly settings: a tiny virtio
initramfs, slow boot units masked, an emulator wrapper that gives QEMU's TCG
a 128 MiB translation cache instead of 1 GiB.

Steps (cached under ``/var/cache/halab/box/``, rebuilt when an input changes:
the package list or this file):

1. debootstrap a minimal bookworm rootfs with the packages below (~95 s)
2. make it a Vagrant base box: the ``vagrant`` user with Vagrant's insecure
   key and password-less sudo, DHCP on eth0 only (the management NIC), an
   empty machine-id and resolv.conf, sshd without DNS lookups
3. ``mke2fs -d`` (no mount) -> qcow2 -> ``.box`` with kernel, initrd, wrapper
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

from lab.errors import HalabError
from lab.system import require_programs, require_root, run_local

CACHE = Path("/var/cache/halab/box")
BOX_NAME = "halab/debian12"
SIZE_GIB = 4
TB_MB = 128  # QEMU TCG translation cache (the default 1 GiB costs ~1.4 GB RSS per VM)

# What a lab host needs, offline: systemd and sshd for Vagrant; python3-venv for
# halab itself; nginx for the web tier; the tools provision/ and the daemons use.
PACKAGES = (
    "systemd-sysv", "udev", "dbus", "openssh-server", "openssh-sftp-server", "sudo",
    "python3", "python3-venv", "iptables", "iproute2", "iputils-ping", "conntrack",
    "nginx-light", "curl", "netcat-openbsd", "procps", "kmod", "less", "ca-certificates",
    "netbase", "linux-image-cloud-amd64", "initramfs-tools",
    "chrony",  # the lab's clocks follow the machine's: timelines span several hosts
)

BOX_VAGRANTFILE = """\
# The box's own Vagrantfile: direct kernel boot with the files shipped beside it.
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |lv|
    boxdir = File.dirname(File.expand_path(__FILE__))
    tcg = ENV.fetch("HALAB_VM_DRIVER", "kvm") == "qemu"
    lv.emulator_path = File.join(boxdir, "qemu-tcg") if tcg
    lv.kernel = File.join(boxdir, "vmlinuz")
    lv.initrd = File.join(boxdir, "initrd.img")
    lv.cmd_line = "root=/dev/vda rw console=ttyS0 net.ifnames=0 biosdevname=0 quiet"
    lv.disk_bus = "virtio"
    lv.nic_model_type = "virtio"
    lv.graphics_type = "none"
  end
end
"""

QEMU_TCG = f"""\
#!/bin/bash
# libvirt passes "-accel tcg": give TCG a smaller translation cache
a=(); p=; for x in "$@"; do
  [ "$p" = -accel ] && [ "$x" = tcg ] && x=tcg,tb-size={TB_MB}; a+=("$x"); p=$x
done
exec /usr/bin/qemu-system-x86_64 "${{a[@]}}"
"""


def fingerprint() -> str:
    """What the box is made of: the packages and this builder."""
    h = hashlib.sha256()
    h.update("\n".join(PACKAGES).encode())
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()[:16]


def box_path() -> Path:
    return CACHE / f"debian12-halab-{fingerprint()}.box"


def mirror() -> str:
    """The Debian mirror apt uses on this machine (never a host written here)."""
    for src in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for line in src.read_text().splitlines():
            if line.startswith("URIs:"):
                return line.split()[1]
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            if line.startswith("deb "):
                return line.split()[1]
    raise HalabError("no Debian mirror found in /etc/apt/sources.list(.d): cannot debootstrap")


def vagrant_insecure_key() -> str:
    gems = Path("/usr/share/rubygems-integration/all/gems")
    keys = sorted(gems.glob("vagrant-*/keys/vagrant.pub"))
    keys = [k for k in keys if "libvirt" not in str(k)]
    if not keys:
        raise HalabError("Vagrant's insecure public key not found: apt-get install -y vagrant")
    return keys[0].read_text()


def chroot(root: Path, *argv: str, check: bool = True) -> None:
    run_local(["chroot", str(root), *argv], check=check, timeout=600)


def build_rootfs(root: Path, log: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
    with log.open("w") as out:
        proc = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
             "bookworm", str(root), mirror()], stdout=out, stderr=subprocess.STDOUT,
            check=False)
    if proc.returncode != 0:
        raise HalabError(f"debootstrap failed (exit {proc.returncode}): see {log}")


def configure(root: Path) -> str:
    """Make the rootfs a Vagrant base box; returns the kernel version."""
    (root / "etc/hostname").write_text("halab\n")
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n127.0.1.1 halab\n")
    (root / "etc/fstab").write_text("/dev/vda / ext4 defaults,noatime 0 1\n")
    (root / "etc/resolv.conf").write_text("")  # the VMs have no DNS
    (root / "etc/machine-id").write_text("")  # one per VM at first boot (its own DHCP DUID)
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    net = root / "etc/systemd/network"
    net.mkdir(parents=True, exist_ok=True)
    # no default route: the lab's hosts reach only their own networks (the client
    # would otherwise reach the web nodes through the management network)
    (net / "10-mgmt.network").write_text(
        "[Match]\nName=eth0\n[Network]\nDHCP=ipv4\n[DHCPv4]\nUseGateway=false\n")
    # A pulled cable must not take the lab's addresses away (systemd-networkd drops
    # them on carrier loss by default; a server's static configuration keeps them): a
    # drop-in for each file Vagrant writes for its private networks, in place before
    # Vagrant writes them and restarts networkd (a live reconfigure later, under the
    # lab's firewall, was seen to leave a VM unreachable).
    for n in range(1, 9):
        drop_in = net / f"50-vagrant-eth{n}.network.d"
        drop_in.mkdir(exist_ok=True)
        (drop_in / "halab.conf").write_text(
            "# halab: keep the lab's addresses without carrier\n"
            "[Network]\nConfigureWithoutCarrier=yes\nIgnoreCarrierLoss=yes\n")
    chroot(root, "systemctl", "enable", "systemd-networkd.service")
    chroot(root, "systemctl", "disable", "systemd-networkd-wait-online.service",
           "apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer", "fstrim.timer",
           check=False)
    # seconds each under TCG, useless here
    chroot(root, "systemctl", "mask", "e2scrub_reap.service", "modprobe@dm_mod.service",
           "modprobe@loop.service", "modprobe@fuse.service", "modprobe@efi_pstore.service",
           "nginx.service", check=False)  # halab provisioning starts nginx with its config
    chroot(root, "sh", "-c", "id vagrant >/dev/null 2>&1 || useradd -m -s /bin/bash vagrant")
    chroot(root, "sh", "-c", "echo vagrant:vagrant | chpasswd")
    ssh = root / "home/vagrant/.ssh"
    ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
    (ssh / "authorized_keys").write_text(vagrant_insecure_key())
    os.chmod(ssh / "authorized_keys", 0o600)
    chroot(root, "chown", "-R", "vagrant:vagrant", "/home/vagrant/.ssh")
    sudoers = root / "etc/sudoers.d/vagrant"
    sudoers.write_text("vagrant ALL=(ALL) NOPASSWD:ALL\n")
    os.chmod(sudoers, 0o440)
    (root / "etc/ssh/sshd_config.d/vagrant.conf").write_text(
        "UseDNS no\nGSSAPIAuthentication no\n")
    # a tiny initramfs: only the virtio drivers (modules in the cloud kernel)
    conf = root / "etc/initramfs-tools/initramfs.conf"
    conf.write_text("".join("MODULES=list\n" if ln.startswith("MODULES=") else ln + "\n"
                            for ln in conf.read_text().splitlines()))
    (root / "etc/initramfs-tools/modules").write_text(
        "virtio_pci\nvirtio_blk\nvirtio_net\nvirtio_console\n")
    kernel = sorted(os.listdir(root / "lib/modules"))[0]
    chroot(root, "update-initramfs", "-u", "-k", kernel)
    chroot(root, "apt-get", "clean")
    for junk in ("var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/info"):
        shutil.rmtree(root / junk, ignore_errors=True)
    return kernel


def pack(root: Path, kernel: str, out: Path) -> None:
    work = out.parent / "pack"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ext4 = work / "root.ext4"
    run_local(["mke2fs", "-q", "-t", "ext4", "-L", "root", "-E", "root_owner=0:0", "-d",
               str(root), str(ext4), f"{SIZE_GIB}G"], timeout=600)
    run_local(["qemu-img", "convert", "-O", "qcow2", str(ext4), str(work / "box.img")],
              timeout=600)
    ext4.unlink()
    (work / "metadata.json").write_text(json.dumps(
        {"provider": "libvirt", "format": "qcow2", "virtual_size": SIZE_GIB}))
    (work / "Vagrantfile").write_text(BOX_VAGRANTFILE)
    (work / "qemu-tcg").write_text(QEMU_TCG)
    os.chmod(work / "qemu-tcg", 0o755)
    shutil.copy(root / f"boot/vmlinuz-{kernel}", work / "vmlinuz")
    shutil.copy(root / f"boot/initrd.img-{kernel}", work / "initrd.img")
    tmp = out.with_suffix(".tmp")
    with tarfile.open(tmp, "w") as tar:
        for name in ("metadata.json", "Vagrantfile", "box.img", "vmlinuz", "initrd.img",
                     "qemu-tcg"):
            tar.add(work / name, arcname=name)
    tmp.replace(out)
    shutil.rmtree(work)


def build(force: bool = False, say: Callable[[str], None] | None = print) -> Path:
    """The box for the current inputs, built if it is not in the cache."""
    require_root("building the box")
    require_programs(["debootstrap", "mke2fs", "qemu-img", "chroot"])
    out = box_path()
    if out.exists() and not force:
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    root = CACHE / "rootfs"
    stamp = CACHE / "rootfs.fingerprint"
    packages = "\n".join(PACKAGES)
    if force or not stamp.exists() or stamp.read_text() != packages:
        if say:
            say(f"debootstrap bookworm with {len(PACKAGES)} packages (about 2 minutes)")
        stamp.unlink(missing_ok=True)
        build_rootfs(root, CACHE / "debootstrap.log")
        stamp.write_text(packages)
    if say:
        say("configuring the rootfs and packing the box")
    kernel = configure(root)
    for old in CACHE.glob("debian12-halab-*.box"):
        old.unlink()
    pack(root, kernel, out)
    return out
