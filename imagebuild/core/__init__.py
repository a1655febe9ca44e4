"""core: what every wing of the toolkit stands on.

The one runner of subprocesses (``run``), the one error hierarchy (``errors``), logging with
timed steps (``log``), field parsers for files and flags (``fields``), one atomic write and
package-data lookup (``files``), one deadline loop (``wait``), and one table of the platforms
hosts run on (``platforms``). Imports nothing of the other wings.
"""
