"""Applications around the controller: northbound API, lab, demo, trace, bench."""
