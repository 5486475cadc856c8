"""live-stack: capture-side lucky-imaging stacking for the Moon, the Sun and the planets.

The package ``live_stack`` holds the image pipeline only (numpy and OpenCV, with ducc0
for the FFTs); the daemon, the sources and the viewer live in the sibling packages
``daemon`` and ``viewer``.
"""

__version__ = "0.1.0"
