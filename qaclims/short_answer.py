"""Chatty VLM answer -> the short VQA answer the QAPE corpus expects.

BLIP's VQA head answers in one to three words ("dog", "grass"); an instruction-following
VLM asked the same question may say "Sure! The answer is a wooden canoe.\nIt is ...". The
corpus (ALGORITHM §1) lemmatises each answer as one noun and tests it for the class name, so
such a reply is turned into "wooden canoe" before the lemma, in this order:

1. the prompt echo is dropped: the prompt or question the model repeats before its answer,
   then a leading role label ("assistant:", "answer:", "short answer:");
2. lowercase; cut at the first newline;
3. cut at the first sentence end (`.`, `!` or `?` followed by a space or the end), skipping
   a first sentence that is only a filler word ("sure!", "okay.");
4. leading answer phrases ("the answer is", "it is", "this is", "there are", ...) and
   leading articles (a, an, the) are dropped, repeatedly ("it is a dog" -> "dog");
5. cut at the first clause break (`,` `;` `:` followed by a space);
6. quotes and punctuation at either end are stripped;
7. at most `max_words` words are kept.

Nothing is invented: a reply with no words left is the empty answer, which the corpus
treats as BLIP's empty answer (qaclims/corpus.py).
"""

from __future__ import annotations

import re

ROLE_LABELS = ("assistant:", "short answer:", "answer:", "a:")
FILLERS = ("sure", "certainly", "of course", "okay", "ok", "well")
ANSWER_LEADS = (
    "the short answer is",
    "the answer is",
    "my answer is",
    "answer is",
    "it looks like",
    "it appears to be",
    "i think it is",
    "i think",
    "i see",
    "it is",
    "it's",
    "this is",
    "that is",
    "these are",
    "those are",
    "they are",
    "there is",
    "there are",
)
ARTICLES = ("a", "an", "the")
EDGE_PUNCTUATION = " \t\"'`“”‘’.,!?;:()[]{}*-"
SENTENCE_END = re.compile(r"[.!?](?:\s|$)")
CLAUSE_BREAK = re.compile(r"[,;:](?:\s|$)")


def _drop_prefix(text: str, prefix: str) -> str:
    """`text` without a leading `prefix` (case and spacing ignored), else unchanged."""
    words = prefix.split()
    if not words:
        return text
    pattern = r"\s*" + r"\s+".join(map(re.escape, words)) + r"\s*"
    match = re.match(pattern, text, flags=re.IGNORECASE)
    return text[match.end() :] if match else text


def _drop_words(text: str, phrases: tuple[str, ...]) -> str:
    """Drop leading whole-word `phrases` (and a ':' or ',' after them) until none is left."""
    while True:
        for phrase in phrases:
            match = re.match(rf"{re.escape(phrase)}[:,]?(?:\s+|$)", text)
            if match:
                text = text[match.end() :]
                break
        else:
            return text


def _first_sentence(text: str) -> str:
    """The first sentence that is not a filler word alone."""
    for sentence in SENTENCE_END.split(text):
        if sentence.strip(EDGE_PUNCTUATION) not in FILLERS:
            return sentence.strip()
    return ""


def clean(text: str, *, echoes: tuple[str, ...] = (), max_words: int = 3) -> str:
    """The short answer in a VLM's reply (module docstring); `echoes`: the prompt, question."""
    text = text.strip()
    for echo in echoes:
        text = _drop_prefix(text, echo)
    for label in ROLE_LABELS:
        text = _drop_prefix(text, label)
    text = " ".join(text.strip().lower().split("\n")[0].split())
    text = _first_sentence(text)
    text = _drop_words(text, ANSWER_LEADS + ARTICLES)
    text = CLAUSE_BREAK.split(text)[0].strip(EDGE_PUNCTUATION)
    text = _drop_words(text, ARTICLES)
    return " ".join(text.split()[:max_words])
