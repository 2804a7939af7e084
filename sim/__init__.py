"""Loopback emulators of the real venues and chat services, and market replay: the paper venue.

Only tests, bench/ and the run scripts import this package; production code talks to it over the
venues' own APIs with the real clients.
"""
