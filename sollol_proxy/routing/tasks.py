"""Task and complexity of a request: routing hints read from its instructions and its size.

Used by `analysis.analyze()`; nothing here touches the request body directly.

Task table (first matching row wins)
------------------------------------
Embedding routes are always ``embedding``. Otherwise the rules look at the lower-cased system prompt
(``system`` field, ``system``/``developer`` messages, ``instructions``) plus the last user message,
or the system prompt plus ``prompt`` for prompt-style requests. Words match on word boundaries, so
"decode" is not "code". Each text is scanned only in its first and last 2,000 characters: the scan
costs far more per character than hashing, and instructions sit at the start of a system prompt or
at either end of a pasted document. The result is a routing hint, not a classifier.

==================  =======================================================================
task                matches
==================  =======================================================================
code                a triple-backtick fence; code, coding, function, python, javascript,
                    typescript, sql, regex, bug, debug, stack trace, traceback, compile,
                    refactor, implement, unit test (and their plural/inflected forms)
summarization       summarize/summarise, summary, tl;dr, condense, key points
extraction          extract, pull out, list all, parse, fill in the json; or structured
                    output requested: native ``format``, /v1 ``response_format`` other than
                    ``text``, /v1/responses ``text.format`` other than ``text``
classification      classify, categorize/categorise, which category, sentiment, label this,
                    is this spam, yes or no
analysis            analyze/analyse, analysis, compare, evaluate, assess, pros and cons,
                    explain why, reason about
chat / generation   anything else: ``chat`` for messages-style routes, ``generation`` for
                    prompt-style and other routes
==================  =======================================================================

Complexity
----------
* ``high``: ``prompt_tokens > 4000``, or ``max_output > 1024``, or a ``code``/``analysis`` task
  with ``prompt_tokens > 1000``.
* ``low``: ``prompt_tokens < 300`` and ``max_output`` unspecified or ``<= 256`` and the task is
  classification, extraction, embedding, chat or generation.
* ``medium``: everything else.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Final

HIGH_PROMPT_TOKENS: Final = 4000
HIGH_OUTPUT_TOKENS: Final = 1024
HIGH_REASONING_PROMPT_TOKENS: Final = 1000
LOW_PROMPT_TOKENS: Final = 300
LOW_OUTPUT_TOKENS: Final = 256

# Each task's words, highest priority first. Python's `re` costs ~25 ns per character and
# pattern, so all rules are one pattern scanned once; the named group of a match tells its task.
_TASK_WORDS: Final[tuple[tuple[str, tuple[str, ...]], ...]] = (
    (
        "code",
        (
            r"code[sd]?",
            r"coding",
            r"functions?",
            r"python",
            r"javascript",
            r"typescript",
            r"sql",
            r"regex(?:es|p)?",
            r"bugs?",
            r"debug(?:s|ged|ging)?",
            r"stack ?traces?",
            r"traceback",
            r"compil(?:e[sd]?|er|ing|ation)",
            r"refactor(?:s|ed|ing)?",
            r"implement(?:s|ed|ing|ation)?",
            r"unit ?tests?",
        ),
    ),
    (
        "summarization",
        (
            r"summari[sz](?:e[sd]?|ing|ation)",
            r"summary",
            r"summaries",
            r"tl;?dr",
            r"condense[sd]?",
            r"key points",
        ),
    ),
    (
        "extraction",
        (
            r"extract(?:s|ed|ing|ion)?",
            r"pull out",
            r"list all",
            r"pars(?:e[sd]?|ing)",
            r"fill in the json",
        ),
    ),
    (
        "classification",
        (
            r"classif(?:y|ies|ied|ying|ication)",
            r"categori[sz](?:e[sd]?|ing|ation)",
            r"which category",
            r"sentiment",
            r"label this",
            r"is this spam",
            r"yes or no",
        ),
    ),
    (
        "analysis",
        (
            r"analy[sz](?:e[sd]?|ing)",
            r"analysis",
            r"compar(?:e[sd]?|ing|ison)",
            r"evaluat(?:e[sd]?|ing|ion)",
            r"assess(?:es|ed|ing|ment)?",
            r"pros and cons",
            r"explain why",
            r"reason about",
        ),
    ),
)
_TASK_NAMES: Final = tuple(task for task, _ in _TASK_WORDS)
_TASK_FULL: Final = tuple(re.compile("|".join(words)) for _, words in _TASK_WORDS)


def _first_letter_trie(words: list[str]) -> str:
    # Python's `re` tries alternatives one by one at every word start; grouping them by first
    # letter makes most attempts a single failed character test (about 2x faster).
    by_letter: dict[str, list[str]] = {}
    for word in words:
        by_letter.setdefault(word[0], []).append(word[1:])
    return "|".join(f"{letter}(?:{'|'.join(rests)})" for letter, rests in by_letter.items())


_TASK_PATTERN: Final = re.compile(
    r"\b(?:" + _first_letter_trie([w for _, words in _TASK_WORDS for w in words]) + r")\b"
)


@cache
def _task_rank(word: str) -> int:
    # Cached without a bound on purpose: the argument is always a match of _TASK_PATTERN, a
    # finite language of a few hundred strings.
    for rank, pattern in enumerate(_TASK_FULL):
        if pattern.fullmatch(word):
            return rank
    return len(_TASK_NAMES)  # unreachable: every alternative of _TASK_PATTERN is in _TASK_FULL


# Only the head and tail of each text are scanned: the scan is far slower than hashing, and an
# instruction sits at the start of a system prompt or at either end of a pasted document.
_TASK_CLIP: Final = 2000
_EXTRACTION_RANK: Final = _TASK_NAMES.index("extraction")
_REASONING_TASKS: Final = frozenset({"code", "analysis"})
_LIGHT_TASKS: Final = frozenset({"classification", "extraction", "embedding", "chat", "generation"})


def _complexity(prompt_tokens: int, max_output: int | None, task: str) -> str:
    if (
        prompt_tokens > HIGH_PROMPT_TOKENS
        or (max_output is not None and max_output > HIGH_OUTPUT_TOKENS)
        or (task in _REASONING_TASKS and prompt_tokens > HIGH_REASONING_PROMPT_TOKENS)
    ):
        return "high"
    if (
        prompt_tokens < LOW_PROMPT_TOKENS
        and (max_output is None or max_output <= LOW_OUTPUT_TOKENS)
        and task in _LIGHT_TASKS
    ):
        return "low"
    return "medium"


def _task(texts: list[str], structured: bool, default: str) -> str:
    text = "\n".join(_clip(text) for text in texts if text).lower()
    if "```" in text:
        return "code"
    best = len(_TASK_NAMES)
    for match in _TASK_PATTERN.finditer(text):
        rank = _task_rank(match.group())
        if rank < best:
            best = rank
            if rank == 0:
                break
    if structured and best > _EXTRACTION_RANK:
        best = _EXTRACTION_RANK
    return _TASK_NAMES[best] if best < len(_TASK_NAMES) else default


def _clip(text: str) -> str:
    if len(text) <= 2 * _TASK_CLIP:
        return text
    return f"{text[:_TASK_CLIP]}\n{text[-_TASK_CLIP:]}"
