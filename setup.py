"""tenantflow: an OpenFlow SDN controller for tenant networking."""

import sys

from setuptools import setup

NETWORKX = "networkx>=3.2,<3.7" if sys.version_info < (3, 12) else "networkx>=3.2,<3.7"

setup(
    name="tenantflow",
    version="0.1.0",
    description="OpenFlow SDN controller for clouds: tenant isolation, DVR, floating IPs, security groups",
    python_requires=">=3.11",
    packages=[
        "controller",
        "apps",
        "apps.northbound",
        "apps.lab",
        "topology",
        "flows",
    ],
    install_requires=[
        "os-ken>=4.2.2,<5",
        NETWORKX,
        "WebOb>=1.8.7,<2",
        "Routes>=2.5.1,<3",
        "netaddr>=1.3,<2",
        "prometheus_client>=0.20,<1",
    ],
    extras_require={
        "test": [
            "pytest>=8,<10",
            "scapy>=2.5,<3",
            "ruff>=0.6",
        ],
    },
    entry_points={"console_scripts": ["tenantflow=apps.cli:main"]},
)
