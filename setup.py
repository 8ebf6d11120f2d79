"""tenantflow: an OpenFlow SDN controller for tenant networking."""

from setuptools import setup

setup(
    name="tenantflow",
    version="0.1.0",
    description="OpenFlow SDN controller for clouds: tenant isolation, DVR, floating IPs, security groups",
    python_requires=">=3.11",
    packages=[
        "controller",
        "apps",
        "apps.northbound",
        "apps.ui",
        "apps.lab",
        "apps.bench",
        "topology",
        "flows",
    ],
    package_data={"apps.ui": ["static/*.html", "static/*.js", "static/*.css"]},  # the /ui page, no build step
    install_requires=[
        "os-ken~=4.2.2",
        "networkx>=3.2,<3.7",  # 3.7 needs Python 3.12
        "WebOb~=1.8.7",
        "Routes~=2.5.1",
        "netaddr~=1.3.0",
        "prometheus_client>=0.20,<0.30",
        "etcd3gw>=2.4,<3",  # the controller's etcd store talks to etcd's v3 JSON gateway
        "ovs~=4.0.0",  # the OVSDB IDL: the controller as the hypervisors' OVSDB manager (controller/ovsdb.py)
        "oslo.policy~=6.0.1",  # the API's policy table (apps/northbound/policy.py), as Neutron's
        "keystonemiddleware~=13.0.1",  # --auth keystone: token validation (auth_token), as Neutron's
        "waitress~=3.0.2",  # the API's HTTP server (apps/northbound/server.py): slow clients cost no thread
    ],
    extras_require={
        "test": [
            "pytest>=8,<10",
            "scapy~=2.6",
            "ruff>=0.6",
            "hypothesis>=6.100,<7",
            "openstacksdk>=4.0,<5",
            "python-openstackclient>=7.0,<11",
            "jsonschema>=4.18,<5",  # tests/test_openapi.py validates live answers against /openapi.json
            "selenium>=4.20,<5",  # tests/test_ui.py drives Debian's chromium (chromium-driver) headless
        ],
    },
    entry_points={"console_scripts": ["tenantflow=apps.cli:main"]},
)
