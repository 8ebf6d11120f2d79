"""Pure compiler: graph snapshot -> desired OpenFlow flows. Never does I/O."""
