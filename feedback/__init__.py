"""Human feedback: an annotation web app, a durable store, preference export and LangSmith sync.

Modules, each usable on its own:

* :mod:`feedback.store` - the database (SQLite by default, PostgreSQL by URL) and its Python API;
  the only package that touches the database (tables in :mod:`feedback.schema`).
* :mod:`feedback.app` - the web app (REST API + annotation and admin pages); calls only the store.
* :mod:`feedback.enums` - roles, modes, assignment states, token kinds (the words stored and sent).
* :mod:`feedback.export` - pairs / KTO / SFT datasets from the stored answers (pure formatters + writers).
* :mod:`feedback.agreement` - Krippendorff's alpha per question (pure functions).
* :mod:`feedback.importer` - prompts and candidates from JSONL files and LangSmith runs.
* :mod:`feedback.langsmith_sync` - every answer recorded as LangSmith feedback, retried from the store.
* :mod:`feedback.cli` - ``rlhf feedback <command>``.

The package imports nothing of ``rlhf``: it stands on the torch-free core both packages share
(:mod:`rlhf_core`: errors, row validation). What needs a model lives on the training side:
candidate generation in :mod:`rlhf.candidates` (``rlhf feedback generate``), simulated annotators
in :mod:`rlhf.annotators`.
"""
