"""The northbound API: Neutron v2.0-shaped REST over the topology (WebOb + Routes)."""

from apps.northbound.api import make_app
from apps.northbound.server import serve

__all__ = ["make_app", "serve"]
