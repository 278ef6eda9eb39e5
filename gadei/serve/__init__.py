"""`gadei serve`: text classifiers as a service, trained on the parameter server (docs/serve.md).

Modules: `cli` (the serve and tenants commands), `app` (HTTP API and web page), `db` (SQLite,
versioned migrations), `tenants` (API keys), `csvdata` (the training CSV), `runner` (the
training queue: one `gadei train` subprocess per classifier), `models` (loaded classifiers).
Importing this package loads none of them.
"""
