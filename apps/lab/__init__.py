"""The lab: hypervisors as private Open vSwitch instances in network namespaces, VMs as Mininet hosts.

``Lab`` builds them with exactly the operator steps of :mod:`apps.lab.steps`; see
``apps/lab/lab.py`` for the layout and ``apps/lab/cli.py`` for ``tenantflow lab``.
The control-plane scale lab (dummy-datapath bridges, no namespaces) is
``apps.lab.scale.ScaleLab`` (``tenantflow lab --scale N``).
"""

from apps.lab.lab import Hypervisor, Lab, LabError, LabVM, destroy_stale

__all__ = ["Hypervisor", "Lab", "LabError", "LabVM", "destroy_stale"]
