"""live-stack: capture-side lucky-imaging stacking for the Moon, the Sun and the planets.

The package ``live_stack`` holds the image pipeline only (numpy, OpenCV and SciPy); the
daemon, the sources and the viewer live in the sibling packages ``daemon`` and ``viewer``.
"""

__version__ = "0.1.0"
