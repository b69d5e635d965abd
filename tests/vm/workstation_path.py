"""The workstation's path, proven on this machine: a plain ``vagrant up`` of one VM
(Vagrant run by hand, not through halab), halab in the ``system`` mode (the machine's
own libvirtd, SSH straight to the VMs, no time server), then the round-robin check
against the lab.

It runs inside the ``halabvm`` namespace: there, the libvirtd that halab's ``netns``
mode started is simply the machine's libvirtd, answering on /run/libvirt, and the VMs'
management network is directly reachable, as on a workstation. Needs the VM lab up
(``tox -e vm`` runs this between its suites). Every step is bounded in time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from lab import topology as topo_mod
from lab.backends.vagrant import box, vmhost


def step(argv: list[str], timeout: float) -> None:
    print(f"workstation path: {' '.join(argv)}", flush=True)
    t0 = time.monotonic()
    subprocess.run(argv, check=True, timeout=timeout)
    print(f"workstation path: done in {time.monotonic() - t0:.0f} s", flush=True)


def main() -> int:
    topo = topo_mod.load(os.environ.get("HALAB_TOPOLOGY"))
    host = topo.webs[-1].name
    # what a workstation's shell would have: the machine's libvirtd, the user's boxes
    inside = ["ip", "netns", "exec", vmhost.NS, "env", "HALAB_VMHOST=system",
              f"HALAB_BOX={box.BOX_NAME}", f"VAGRANT_HOME={vmhost.VAGRANT_HOME}",
              "LIBVIRT_DEFAULT_URI=qemu:///system"]
    step([sys.executable, "-m", "halab.cli", "--lab", "vagrant", "vagrant", "--",
          "destroy", "-f", host], 300)
    step([*inside, "vagrant", "up", host], 1500)  # provisioned by the trigger
    step([*inside, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
          "tests/integration/test_round_robin.py", "--lab", "vagrant"], 1200)
    return 0


if __name__ == "__main__":
    sys.exit(main())
