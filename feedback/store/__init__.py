"""The durable feedback store: every read and write of annotation data goes through :class:`Store`.

SQLite is the embedded default, PostgreSQL is used by URL for teams (:mod:`feedback.store.db`).
The store is split by area, each a module of functions over a SQLAlchemy ``Connection``:

* :mod:`~feedback.store.db` - URLs, engines, migrations, transactions;
* :mod:`~feedback.store.settings` - overlap, mode, lease, guidelines;
* :mod:`~feedback.store.accounts` - annotators, passwords, tokens, sessions;
* :mod:`~feedback.store.names` - names people can tell apart: one normalisation, refused characters, look-alikes;
* :mod:`~feedback.store.logins` - the login limit, counted before the password is checked;
* :mod:`~feedback.store.items` - prompts, candidates, imports, annotation batches (rounds);
* :mod:`~feedback.store.queue` - who gets which item next: leases, skips, assignments;
* :mod:`~feedback.store.answers` - idempotent submissions, compare-and-set edits, stored answers;
* :mod:`~feedback.store.reporting` - progress and the records for export and agreement;
* :mod:`~feedback.store.outbox` - what LangSmith has not received yet;
* :mod:`~feedback.store.doctor` - stored text UTF-8 cannot encode (``rlhf feedback doctor``);
* :mod:`~feedback.store.views` / :mod:`~feedback.store.errors` - what the store returns and refuses.

:class:`Store` (:mod:`~feedback.store.facade`) opens one transaction per call and delegates.

Python API (the web app, the CLI and simulated annotators all use it)::

    store = Store.create("sqlite:///feedback.db")            # migrate, then open
    token = store.add_annotator("alice", "annotator", password="...")  # returns an API token, once
    [pid] = store.add_prompts(["What is 2 plus 3?"])
    cids = store.add_candidates(pid, ["2 plus 3 is 5.", "Ugh. 5."], model="builtin:tiny", generation={...})
    store.assign_batch([pid], 2, "uncertainty", scores=[0.93])  # round 2 of iterated RLHF chose it
    alice = store.authenticate(token)
    item = store.next_item(alice.id)                         # candidates shuffled, model hidden
    store.submit_ranking(alice.id, pid, {cids[0]: 1, cids[1]: 2}, client_id="uuid-from-the-client")
    store.submit_rating(alice.id, pid, {cids[0]: True, cids[1]: False}, client_id=...)  # thumbs
    store.progress(); store.records()                        # -> feedback.export / feedback.agreement

Submissions are idempotent: the client supplies the id, a retry with the same id and body
returns the first receipt (``created=False``), the same id with another body is a conflict.
Errors are :class:`StoreError` subclasses (:class:`NotFound`, :class:`Conflict`,
:class:`Invalid`, :class:`Forbidden`, :class:`Unauthorized`, :class:`TooManyAttempts`) whose message is written for the
person who sent the request; the web app maps them to 4xx responses. Reads return frozen
dataclasses (:mod:`feedback.store.views`).
"""

from feedback.store.answers import dense_ranks
from feedback.store.common import MAX_INTEGER, MAX_TEXT, unencodable, utcnow
from feedback.store.db import make_engine, migrate, normalize_url, redact
from feedback.store.errors import Conflict, Forbidden, Invalid, NotFound, StoreError, TooManyAttempts, Unauthorized
from feedback.store.facade import Store
from feedback.store.logins import LoginLimits
from feedback.store.views import (
    Annotator,
    AnnotatorCount,
    AnnotatorProgress,
    AnswerView,
    BatchProgress,
    ImportReport,
    ItemView,
    Progress,
    Receipt,
    RunJob,
    Settings,
    SyncJob,
    SyncStatus,
)

__all__ = [
    "MAX_INTEGER",
    "MAX_TEXT",
    "Annotator",
    "AnnotatorCount",
    "AnnotatorProgress",
    "AnswerView",
    "BatchProgress",
    "Conflict",
    "Forbidden",
    "ImportReport",
    "Invalid",
    "ItemView",
    "LoginLimits",
    "NotFound",
    "Progress",
    "Receipt",
    "RunJob",
    "Settings",
    "Store",
    "StoreError",
    "SyncJob",
    "SyncStatus",
    "TooManyAttempts",
    "Unauthorized",
    "dense_ranks",
    "make_engine",
    "migrate",
    "normalize_url",
    "redact",
    "unencodable",
    "utcnow",
]
