"""What every concern may use: request context, per-app state, the WSGI step, contracts.

Nothing here imports a concern; concerns plug into the WSGI step as observers and
report through :mod:`flask_gateway_obs.core.contracts`.
"""
