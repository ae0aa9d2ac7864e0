"""Azure Functions entry point (Python v2 programming model): one app, one blueprint per trigger family.

Kept to imports and registrations: the Functions host imports this module at every cold start, so
everything heavy (SDKs, pydantic models) is imported inside the handlers in `functions/` and `shared/`.
HTTP functions need a function key (`AuthLevel.FUNCTION`) unless a blueprint says otherwise.
"""

import azure.functions as func

from functions import api, cleanup, ingest, monitor, staging

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

app.register_functions(ingest.bp)  # blob trigger on training-data/{name}: stage, create cluster, submit
app.register_functions(staging.bp)  # queue trigger: stage and submit HTTP starts from a folder
app.register_functions(monitor.bp)  # timer: job states, outputs, callbacks
app.register_functions(api.bp)  # HTTP API: runs, outputs, clusters, OpenAPI document
app.register_functions(cleanup.bp)  # nightly cleanup timer
