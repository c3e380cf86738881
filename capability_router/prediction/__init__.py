"""Looking ahead: demand forecasts, desired machines per pool, placement directives.

Pure functions and small state objects that take the time as an argument, so
the ``emp intelligence`` service (wall clock) and the simulator (virtual
clock) run the same code.
"""
