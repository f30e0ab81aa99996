"""Clean-up of chatty VLM replies into the short answers the QAPE corpus lemmatises."""

from __future__ import annotations

import pytest

from qaclims.short_answer import clean

QUESTION = "what is above the boat?"
PROMPT = f"{QUESTION} Answer the question using a single word or phrase."


@pytest.mark.parametrize(
    ("reply", "short"),
    [
        ("Sky", "sky"),
        ("The sky.", "sky"),
        ("A wooden canoe.", "wooden canoe"),
        ("Sure! The answer is a wooden canoe.\nIt is floating on water.", "wooden canoe"),
        ("It is a dog. It is sitting on the grass.", "dog"),
        ("It's a cat", "cat"),
        ("The answer is: rail", "rail"),
        ("ASSISTANT: Grass", "grass"),
        (f"{QUESTION} The sky.", "sky"),
        (f"{PROMPT}\nClouds", "clouds"),
        ("Okay. Water", "water"),
        ("There are trees, a fence and a road behind the boat.", "trees"),
        ('"Canoe."', "canoe"),
        ("a dining table", "dining table"),
        ("In a small harbour with many other boats and people", "in a small"),
        ("3.5 meters", "3.5 meters"),
        ("...", ""),
        ("", ""),
    ],
)
def test_chatty_reply_becomes_the_short_answer(reply: str, short: str) -> None:
    assert clean(reply, echoes=(PROMPT, QUESTION), max_words=3) == short


def test_word_limit() -> None:
    reply = "a red and white striped lighthouse"
    assert clean(reply, max_words=2) == "red and"
    assert clean(reply, max_words=8) == "red and white striped lighthouse"


def test_only_leading_phrases_are_dropped() -> None:
    """ "the" inside an answer and a word that merely starts like a lead phrase stay."""
    assert clean("thermos") == "thermos"
    assert clean("itself") == "itself"
    assert clean("over the hill") == "over the hill"
