"""The live topology page served by the controller at ``/ui`` (README "Topology page")."""
