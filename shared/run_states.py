"""The states of a run, declared once: the registry enforces them, the OpenAPI document, the API's
filters, the CLI and the tests derive theirs from here (and a test holds the dashboard's list to it).

Why a module of its own: it imports nothing, so the OpenAPI document (built in the Functions host's
cold start) and the CLI can use it without importing the registry and the Table SDK.

    staging -> provisioning -> queued -> running -> succeeded | failed;  cancelled from any active state
"""

from __future__ import annotations

__all__ = [
    "ACTIVE_STATES",
    "CANCELLED",
    "FAILED",
    "PROVISIONING",
    "QUEUED",
    "RUNNING",
    "STAGING",
    "STATES",
    "SUBMITTED_STATES",
    "SUCCEEDED",
    "TERMINAL_STATES",
]

STAGING = "staging"
PROVISIONING = "provisioning"
QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"

# In the order a run passes through them (the CLI and the dashboard show them in this order).
STATES: tuple[str, ...] = (STAGING, PROVISIONING, QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
TERMINAL_STATES: frozenset[str] = frozenset({SUCCEEDED, FAILED, CANCELLED})
ACTIVE_STATES: frozenset[str] = frozenset({STAGING, PROVISIONING, QUEUED, RUNNING})
# Runs that have (or are about to have) a job: what the monitor reconciles.
SUBMITTED_STATES: frozenset[str] = frozenset({PROVISIONING, QUEUED, RUNNING})
