"""The benchmark of the processor (``make bench``); not part of the installed package."""
