"""Microsoft.BatchAI 2018-05-01 in the ARM emulator: `models.py` one model per resource, `backend.py`
the store, persistence and clock (routing and responses: `infra/local/arm/urls.py`, `responses.py`)."""
