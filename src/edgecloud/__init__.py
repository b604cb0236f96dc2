"""edgecloud: ten edge–cloud research systems made real, fast and usable together.

Each system lives in its own subpackage (see README.md for the map); ``edgecloud.cli`` is the
single ``edgecloud`` command that reaches all of them.
"""

__version__ = "0.1.0"
