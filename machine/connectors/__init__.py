"""Connectors: one interface in front of each service a worker runs jobs on.

``make_connector(kind, settings)`` builds one by name: ``comfyui``,
``comfyui-remote`` or ``simulation``; ``connector_from_env()`` builds the one
``EMP_CONNECTOR`` names; ``get_connector(service)`` is the worker process's
initialized connector that job tasks use.
"""

from machine.connectors.base import (
    ClaimGate,
    Connector,
    ConnectorError,
    ErrorType,
    Health,
    JobCancelledByService,
    JobInput,
    JobOutput,
    Progress,
    ServiceUnavailable,
)
from machine.connectors.factory import (
    KINDS,
    connector_from_env,
    get_connector,
    make_connector,
    settings_from_env,
)

__all__ = [
    "KINDS", "ClaimGate", "Connector", "ConnectorError", "ErrorType", "Health",
    "JobCancelledByService", "JobInput", "JobOutput", "Progress", "ServiceUnavailable",
    "connector_from_env", "get_connector", "make_connector", "settings_from_env",
]
