"""How alike two findings are, so that a new one like a finding trusted reviewers dismissed is not posted.

The flywheel teaches the model slowly; this is the fast path: a nit a reviewer 👎'd stops at once, on
the next merge request, whatever file it lands in. The comparison is pure Python on normalised text
(no model server) and explainable: a finding is reduced once to a ``Shape`` and shapes are compared
with set overlaps, so a review compares its ~10 findings against thousands of dismissed ones in
milliseconds.

Normalisation of the title and the review (each capped at ``CAP`` characters first, so hostile
input costs bounded time), in this order:

1. Unicode NFKC (ligatures, full-width letters), then splitting into runs of letters and runs of
   digits: everything else — punctuation, Markdown emphasis and backticks, ``_`` of snake_case,
   control characters, emoji — only separates words.
2. A run of letters is split at camelCase humps (``parseHTTPRequest`` → parse, HTTP, Request), then
   case-folded. A run of digits becomes ``#``: ``line 12`` and ``line 40`` read the same.
3. Words in ``STOP_WORDS`` are dropped: a small English list, and the few words reviews use
   whatever the issue (avoid, code, consider, instead, make, please, sure, use).
4. Light stemming, one suffix rule of each kind at most: ``-ies`` → ``-y``, else a plural ``-s``
   (not ``-ss``, ``-us``, ``-is``); then ``-ing`` or ``-ed``, undoubling a consonant left doubled
   (debugging → debug) but l, s and z (calling → call); then a final ``-e``. So print, prints,
   printed and printing meet, as do close, closes, closed and closing. Words of three letters or
   fewer are left as they are, and no rule leaves fewer than three.
5. The words, and each pair of neighbouring words after steps 3–4 (``"debug print"``: word order
   counts a little), make the text's set of terms; a word repeated counts once.

The code line gives the identifier-like words it contains (letters, digits and ``_``, not starting
with a digit nor inside a number: ``0x1F`` gives none), case-folded and unsplit. The file kind is
the lower-cased extension; or, for files named by their kind, that kind (``Makefile``,
``GNUmakefile`` → makefile; ``Dockerfile.prod``, ``Containerfile`` → dockerfile; ``Gemfile`` → rb);
or the whole name when it has no extension.
"""

from __future__ import annotations

import itertools
import math
import posixpath
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

K = TypeVar("K")

# What is tokenised of each text: a finding says what it means in its first lines, and hostile
# input (a megabyte of review) must not cost a review its time.
CAP = 2000

_STOP_WORDS = """a about above after again all also an and any are as at be because been before being below
    between both but by can could did do does doing done down during each either else for from
    further had has have having here how i if in into is it its itself just may me might more most
    must my no nor not now of off on once only or other our out over own same she should so some
    such than that the their them then there these they this those through to too under until up
    upon very was we were what when where which while who whom why will with would yet you your
    avoid code consider instead make please sure use"""
STOP_WORDS = frozenset(_STOP_WORDS.split())

# How much a perfect match of the code line and of the file kind counts: they scale the words'
# score and never make one (see ``similarity``).
CODE_WEIGHT = 0.2
KIND_WEIGHT = 0.1

# Calibrated on the table of recurring nits and distinct issues in tests/review/test_similarity.py:
# its recurring pairs score 0.27 to 0.45 (the weakest: "Remove the debug print statement before
# merging" against "Leftover debug print"), its distinct pairs at most 0.11 (a magic-number nit against
# a missing timeout on the same call). It sits in that gap, a little above its middle (0.19): a score
# at or above it hides a finding, and a real issue hidden costs more than a nit posted twice.
SUPPRESS_AT = 0.2

_RUNS = re.compile(r"[^\W\d_]+|\d+")
_IDENTIFIERS = re.compile(r"(?<!\w)[^\W\d]\w*")  # not the x1F of 0x1F
_KIND_BY_NAME = {
    "makefile": "makefile",
    "gnumakefile": "makefile",
    "dockerfile": "dockerfile",
    "containerfile": "dockerfile",
    "jenkinsfile": "groovy",
    "gemfile": "rb",
    "rakefile": "rb",
    "vagrantfile": "rb",
}
# Kinds whose nits carry over (a Python nit to a stub file, a JavaScript one to TypeScript): half the
# kind's weight.
_FAMILY = {
    **dict.fromkeys(["py", "pyi", "pyx"], "python"),
    **dict.fromkeys(["js", "jsx", "mjs", "cjs", "ts", "tsx", "mts", "cts"], "javascript"),
    **dict.fromkeys(["c", "h", "cc", "cpp", "cxx", "hh", "hpp", "hxx"], "c"),
    **dict.fromkeys(["yml", "yaml"], "yaml"),
    **dict.fromkeys(["sh", "bash", "zsh"], "shell"),
    **dict.fromkeys(["md", "markdown", "rst", "txt"], "prose"),
}


@dataclass(frozen=True)
class Shape:
    """A finding reduced to what similarity compares: normalised word tokens of its title+review, the
    identifier tokens of its code line, and its file's kind (extension, or the name for
    Makefile/Dockerfile...). ``title`` holds the terms of the title alone, ``words`` those of the title
    and the review (the module's docstring says how text becomes terms)."""

    title: frozenset[str]
    words: frozenset[str]
    identifiers: frozenset[str]
    kind: str


def shape(path: str, title: str, review: str, code: str) -> Shape:
    """The shape of a finding on ``path`` (``code``: its anchored line's text, "" for a file-level one)."""
    title_terms = _terms(title)
    return Shape(
        title=title_terms,
        words=title_terms | _terms(review),
        identifiers=frozenset(match.casefold() for match in _IDENTIFIERS.findall(_clean(code))),
        kind=_kind(path),
    )


def similarity(a: Shape, b: Shape) -> float:
    """How alike two findings are, in [0, 1]: symmetric, 1.0 for identical inputs.

    The words decide: the mean of two overlaps of term sets (Ochiai: shared / √(size × size)), the
    titles' and the titles-with-reviews' — a title names the issue, a review explains it in words
    that vary more. That is scaled by how far the code lines' identifiers (Jaccard) and the file kinds
    agree: a different code line takes off ``CODE_WEIGHT`` of it, a different kind ``KIND_WEIGHT``
    (half that in the same family, .py and .pyi). Neither raises a score on its own: a different
    issue on the same line of the same file shares both, and must stay apart. A finding without
    words scores 0 against any other but its exact twin."""
    if a is b or a == b:
        return 1.0
    words = (_overlap(a.title, b.title) + _overlap(a.words, b.words)) / 2
    if words == 0.0:
        return 0.0
    code = _jaccard(a.identifiers, b.identifiers)
    return words * (1.0 - CODE_WEIGHT * (1.0 - code) - KIND_WEIGHT * (1.0 - _kind_match(a.kind, b.kind)))


def most_similar(
    candidate: Shape, others: Sequence[tuple[K, Shape]], at: float = SUPPRESS_AT
) -> tuple[K, float] | None:
    """The most similar of `others` scoring at least `at` (ties: the first), else None."""
    best: tuple[K, float] | None = None
    for key, other in others:
        score = similarity(candidate, other)
        if score >= at and (best is None or score > best[1]):
            best = (key, score)
    return best


def _clean(text: str) -> str:
    return unicodedata.normalize("NFKC", text[:CAP])


def _terms(text: str) -> frozenset[str]:
    """The text's normalised words and pairs of neighbouring words."""
    words = [_stem(word) for word in _words(_clean(text)) if word not in STOP_WORDS]
    return frozenset(words) | frozenset(f"{first} {second}" for first, second in itertools.pairwise(words))


def _words(text: str) -> list[str]:
    words: list[str] = []
    for run in _RUNS.findall(text):
        if run.isdigit():
            words.append("#")
        else:
            words.extend(part.casefold() for part in _humps(run))
    return words


def _humps(run: str) -> list[str]:
    """A run of letters split at its camelCase humps: before an upper-case letter that follows a
    lower-case one, and before the last capital of an acronym followed by lower case (HTTPRequest)."""
    parts: list[str] = []
    start = 0
    for i in range(1, len(run)):
        before, here = run[i - 1], run[i]
        after = run[i + 1] if i + 1 < len(run) else ""
        if here.isupper() and (before.islower() or (before.isupper() and after.islower())):
            parts.append(run[start:i])
            start = i
    parts.append(run[start:])
    return parts


def _stem(word: str) -> str:
    if len(word) <= 3:
        return word
    if len(word) > 4 and word.endswith("ies"):
        word = word[:-3] + "y"
    elif word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    for suffix in ("ing", "ed"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            if len(word) > 3 and word[-1] == word[-2] and word[-1] not in "aeiouylsz":
                word = word[:-1]  # debugging, logged: debug, log
            break
    if len(word) > 3 and word.endswith("e"):
        word = word[:-1]
    return word


def _kind(path: str) -> str:
    name = posixpath.basename(path[-CAP:]).casefold()
    first = name.partition(".")[0]
    if first in _KIND_BY_NAME:
        return _KIND_BY_NAME[first]
    return (name.rpartition(".")[2] if first else "") or name


def _kind_match(a: str, b: str) -> float:
    if a is b or a == b:
        return 1.0
    family = _FAMILY.get(a)
    return 0.5 if family is not None and family == _FAMILY.get(b) else 0.0


def _overlap(a: frozenset[str], b: frozenset[str]) -> float:
    if not a or not b:
        return 0.0
    return len(a & b) / math.sqrt(len(a) * len(b))


def _jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)
