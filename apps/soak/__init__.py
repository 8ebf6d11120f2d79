"""``tenantflow soak``: the lab under churn, restarts and ping between every pair of VMs (see :mod:`apps.soak.run`)."""

from apps.soak.run import main

__all__ = ["main"]
