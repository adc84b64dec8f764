"""Annotator names people can tell apart: one normalisation, refused characters, confusable skeletons (pure).

A name is shown to people (the admin console, ``rlhf feedback annotators list``, exports) and typed
by them at login, so two names must never look alike. Three rules, each a pure function here:

* :func:`display` - the stored form: Unicode NFKC (fullwidth ``ｒｏｏｔ`` is ``root``, ligatures are
  letters) with surrounding whitespace removed. :func:`key` - the form names are compared by, for
  uniqueness, login and the login limit: NFKC of the case-folded NFKC form (``ROOT``, ``Root`` and
  ``ｒｏｏｔ`` are one name, whose key is ``root``).
* :func:`refused_character` - characters no name may hold: controls (a newline would forge a line of
  ``annotators list``), format characters (bidi overrides such as U+202E that show ``toor`` as
  ``root``, zero-width spaces and joiners), separators, private-use, unassigned and surrogate code
  points, and the other invisible ones Unicode lists as default-ignorable (variation selectors,
  Hangul fillers, ...).
* :func:`skeleton` - what a name looks like, to refuse a new name that is a confusable of an existing
  one. A small table, not Unicode's full confusables list (UTS #39): it covers the Cyrillic and Greek
  letters that look like Latin ones (``rооt`` with Cyrillic o, ``РОП``, ``Αdmin``), the Latin look-alikes
  ``I``/``l``/``1``/``|``, ``O``/``0``, ``rn``/``m`` and ``vv``/``w``, combining marks (``root\\u0301`` looks like
  ``root``; so does ``José`` like ``Jose``) and runs of spaces. Scripts it does not list (Armenian,
  Cherokee, mathematical letters NFKC does not fold...) are compared by their key only.
"""

from __future__ import annotations

import re
import unicodedata

MAX_CHARS = 100  # annotators.name
MAX_KEY_CHARS = 300  # annotators.name_key: case folding may lengthen a name (ß -> ss)

# Categories no name may hold: controls, format (bidi, zero-width), surrogates, private use, unassigned,
# line and paragraph separators.
REFUSED_CATEGORIES = {"Cc": "a control", "Cf": "a format (invisible or bidi)", "Cs": "a surrogate"}
REFUSED_CATEGORIES |= {"Co": "a private-use", "Cn": "an unassigned", "Zl": "a line separator", "Zp": "a separator"}
# Default-ignorable code points that are not in those categories (Unicode's DerivedCoreProperties):
# invisible, yet letters or marks to the category table.
INVISIBLE = (
    (0x034F, 0x034F),  # combining grapheme joiner
    (0x115F, 0x1160),  # Hangul choseong / jungseong fillers
    (0x17B4, 0x17B5),  # Khmer inherent vowels
    (0x180B, 0x180F),  # Mongolian free variation selectors
    (0x3164, 0x3164),  # Hangul filler
    (0xFE00, 0xFE0F),  # variation selectors
    (0xFFA0, 0xFFA0),  # halfwidth Hangul filler
    (0xE0000, 0xE0FFF),  # tags and variation selectors supplement
)

# Letters of other scripts (and Latin ones) that look like a Latin letter: mapped to it before case folding,
# so that case matters where it changes the look (Cyrillic Р looks like P, not R; a capital I like l).
LOOKALIKES = str.maketrans(
    {
        # Cyrillic capitals and small letters
        **dict(zip("АВЕЅІЈКМНОРСТХУҮӀԚԜЗ", "ABESlJKMHOPCTXYYlQW3", strict=True)),
        **dict(zip("аеѕіјорсухүһԁԛԝӏѵ", "aesijopcyxyhdqwlv", strict=True)),
        # Greek capitals and small letters
        **dict(zip("ΑΒΕΖΗΙΚΜΝΟΡΤΥΧ", "ABEZHlKMNOPTYX", strict=True)),
        **dict(zip("αοριυνκχγϲϳ", "aopiuvkxycj", strict=True)),
        # Latin and digits that pass for one another
        **dict(zip("I1|0", "llOO", strict=True)),
    }
)
SEQUENCES = (("rn", "m"), ("vv", "w"))  # after case folding
SPACES = re.compile(r"\s+")


def display(name: str) -> str:
    """The form a name is stored and shown in: NFKC, without surrounding whitespace (not yet checked)."""
    return unicodedata.normalize("NFKC", name).strip()


def key(name: str) -> str:
    """The form names are compared by (uniqueness, login, the login limit): NFKC + case folding."""
    return unicodedata.normalize("NFKC", display(name).casefold())


def _invisible(code: int) -> bool:
    return any(low <= code <= high for low, high in INVISIBLE)


def refused_character(name: str) -> str | None:
    """Why ``name`` may not be a name because of a character it holds (the first such), or None."""
    for index, char in enumerate(name):
        kind = REFUSED_CATEGORIES.get(unicodedata.category(char))
        if kind is None and _invisible(ord(char)):
            kind = "an invisible"
        if kind is not None:
            label = f" ({unicodedata.name(char)})" if unicodedata.name(char, "") else ""
            return f"holds U+{ord(char):04X}{label} at character {index}, {kind} character"
    return None


def skeleton(name: str) -> str:
    """What ``name`` looks like (the module docstring says what the table covers): equal skeletons, look-alikes."""
    decomposed = unicodedata.normalize("NFD", display(name))
    visible = "".join(
        char
        for char in decomposed
        if unicodedata.category(char) != "Mn"
        and unicodedata.category(char) not in REFUSED_CATEGORIES
        and not _invisible(ord(char))
    )
    folded = visible.translate(LOOKALIKES).casefold().translate(LOOKALIKES)
    for sequence, replacement in SEQUENCES:
        folded = folded.replace(sequence, replacement)
    return SPACES.sub(" ", folded)


def problem(name: str) -> str | None:
    """Why ``name`` cannot be a new annotator's name by itself (empty, too long, a refused character), or None."""
    shown = display(name)
    if not shown or len(shown) > MAX_CHARS:
        return f"1 to {MAX_CHARS} characters"
    if len(key(shown)) > MAX_KEY_CHARS:
        return f"at most {MAX_KEY_CHARS} characters once case-folded"
    return refused_character(shown)


def confusable(name: str, existing: dict[int, str]) -> int | None:
    """The id of an existing name (id -> name) that ``name`` has the key or the look of, or None."""
    wanted_key, wanted_look = key(name), skeleton(name)
    for annotator_id, other in existing.items():
        if key(other) == wanted_key or skeleton(other) == wanted_look:
            return annotator_id
    return None


def collisions(existing: dict[int, str]) -> list[str]:
    """Existing names (id -> name) a new annotator could not have today: refused characters, and pairs with
    one key or one look. One line each, the names escaped (``rlhf feedback doctor``, the 0004 migration)."""
    lines = [
        f"annotator {name!r} (id {i}): name {why}" for i, name in existing.items() if (why := refused_character(name))
    ]
    seen: dict[str, tuple[int, str]] = {}
    for annotator_id, name in sorted(existing.items()):
        for kind, value in (("login name", key(name)), ("look", skeleton(name))):
            first = seen.setdefault(f"{kind}:{value}", (annotator_id, name))
            if first[0] != annotator_id:
                lines.append(
                    f"annotator {name!r} (id {annotator_id}) has the {kind} of {first[1]!r} (id {first[0]}): "
                    "rename one (rlhf feedback annotators rename NAME --to NEW) or deactivate it"
                )
                break
    return lines
