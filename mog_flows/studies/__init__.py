"""Studies over the library: one module per study and the runner and report layer they share.

The core library never imports this package; a study imports the core like any user would.
"""
