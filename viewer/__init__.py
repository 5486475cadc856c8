"""``live-stack view``: a PySide6 + pyqtgraph window on a live-stack daemon.

- :mod:`viewer.link`: the network thread (SUB for stacks and status, REQ for control,
  CURVE keys), which hands the GUI only the newest stack;
- :mod:`viewer.window`: the main window and the "daemon unreachable" banner;
- :mod:`viewer.image_panel`, :mod:`viewer.quality_panel`, :mod:`viewer.state_panel`,
  :mod:`viewer.control_panel`: its parts;
- :mod:`viewer.cli`: the command line, with ``--screenshot``.

Importing this package imports nothing from Qt; the modules above do.
"""
