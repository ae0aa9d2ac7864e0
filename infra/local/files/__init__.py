"""Local Azure Files emulator: the File service REST API over a plain directory tree.

Moto-style layout: `urls.py` (routing table), `responses.py` (request parsing, response shaping),
`models.py` (the backend holding state), `auth.py` (SharedKey and SAS), `server.py` (werkzeug).
Run it with `python -m infra.local.files --host H --port P --data-dir D`.
"""
