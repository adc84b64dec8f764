"""The torch-free core both sides use: errors, row schemas and their validation, reading row files.

Layers, each importing only the ones below it:

1. ``rlhf_core`` (this package): the standard library only (``datasets`` for CSV/Parquet files, when
   one is read). Row validation is pure code, so the web app, the importer and the exporter check
   rows exactly as the training stages do without importing torch.
2. ``feedback``: the store, the web app, import and export. Imports ``rlhf_core`` and nothing
   of ``rlhf``; a test asserts that importing it loads no torch.
3. ``rlhf`` (everything else): models, training stages, sampling, candidate generation, simulated
   annotators, the pipeline and the one console entry point ``rlhf``. May import ``feedback``.
"""
