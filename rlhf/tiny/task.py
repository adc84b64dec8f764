"""The built-in tiny task: a small arithmetic helper that a person can grade at a glance.

Why this task. Every stage of the toolkit has to show real learning on two CPU cores in minutes,
with nothing downloaded. So the task must be (1) learnable by a ~3M-parameter model, (2) judged
objectively by a few lines of Python that a person would agree with, and (3) shaped so that each
stage has something to do:

* the **base** model (pre-trained by ``scripts/build_tiny_model.py``) knows the language and the
  chat format, and answers in every style with equal probability;
* the **SFT** demonstrations are of mixed quality (about a third are wrong, rude, rambling or
  off-topic), so the SFT policy is better than the base but leaves clear room to improve;
* the **reward** pairs need both style (polite, ends properly) and correctness to be ranked: a
  third of them differ only in that one answer misread the question ("3 plus 5 is 8." to "What
  is 3 plus 4?"), so a reward model that reads style alone cannot score well, and reward hacking
  shows up as a gap between reward-model score and gold score. Wrong answers misread the question
  rather than slip in arithmetic because checking a sum is beyond a tiny model trained for
  minutes (measured: a 0.7M base judged "a plus b is c" claims at chance), while comparing an
  answer with its question is the kind of matching small transformers learn quickly;
* **PPO** prompts and **held-out** evaluation prompts come from disjoint arithmetic facts, so the
  evaluation measures generalisation, not memorised prompts.

The gold judge (:func:`score`) stands in for a human annotator. Its rules, in the order a person
would apply them:

=================================================  ==========================
rule                                               points
=================================================  ==========================
restates the question as asked and states the      +1 (otherwise: -1)
right result ("3 plus 4 is 7." to "3 plus 4?")
friendly (a polite phrase and nothing rude)        +0.5
rude phrase                                        -1
does not end with ``.``, ``!`` or ``?`` (cut off)  -0.5
repeats a sentence                                 -0.5
an answer with a stray sentence beside it, one     -0.5
that neither answers nor is a courtesy ("Of!")
longer than 20 words                               -0.1 per extra word (max -1)
=================================================  ==========================

The best possible score is 1.5 ("Sure! 3 plus 4 is 7. Hope that helps!"). A person reads the
whole answer: "Of! 0 plus 1 equals 1. Hope that helps!" is not a perfect answer and "plus 1
equals 1." does not say what it answers, so the judge checks every sentence, not only the number.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MAX_OPERAND = 9


HELD_OUT_FRACTION = 0.15


MAX_WORDS = 20


BEST_SCORE = 1.5


# Questions. The result is always x + y or x - y, whatever order the phrasing reads them in
# ("take {y} away from {x}" is x - y).
_PLUS_TEMPLATES = (
    "What is {x} plus {y}?",
    "How much is {x} plus {y}?",
    "Can you add {x} and {y}?",
    "Please tell me {x} plus {y}.",
    "What do you get when you add {x} and {y}?",
    "Add {x} and {y}, please.",
)


_MINUS_TEMPLATES = (
    "What is {x} minus {y}?",
    "How much is {x} minus {y}?",
    "Please tell me {x} minus {y}.",
    "Can you take {y} away from {x}?",
    "What is left when you take {y} from {x}?",
)


POLITE_PHRASES = (
    "sure",
    "of course",
    "happy to help",
    "good question",
    "glad you asked",
    "hope that helps",
    "thanks for asking",
    "you are welcome",
)


RUDE_PHRASES = (
    "ugh",
    "obviously",
    "whatever",
    "stop asking",
    "figure it out",
    "boring",
    "silly question",
)


POLITE_OPENERS = ("Sure!", "Of course!", "Happy to help!", "Good question!", "Glad you asked!")


POLITE_CLOSERS = ("", "", "Hope that helps!", "Thanks for asking!", "You are welcome!")


RUDE_OPENERS = ("Ugh.", "Whatever.", "Silly question.", "Obviously, come on.")


RUDE_CLOSERS = ("", "Stop asking.", "Figure it out yourself.", "That was boring.")


@dataclass(frozen=True)
class Fact:
    """One arithmetic fact, ``a op b``, with ``op`` in ``{"+", "-"}`` and a non-negative result."""

    a: int
    b: int
    op: str

    @property
    def result(self) -> int:
        return self.a + self.b if self.op == "+" else self.a - self.b

    @property
    def word(self) -> str:
        return "plus" if self.op == "+" else "minus"


@dataclass(frozen=True)
class Judgement:
    """The gold judge's verdict, rule by rule, so reports can say *why* a response scored as it did."""

    correct: bool
    answered: bool
    polite: bool
    rude: bool
    ended: bool
    repeated: bool
    stray: bool  # a sentence beside the answer that neither answers nor is a courtesy ("Of!", "16.")
    words: int
    score: float


def all_facts() -> list[Fact]:
    """Every fact of the task: ``a + b`` and ``a - b`` (``a >= b``) for operands 0..9."""
    facts = [Fact(a, b, "+") for a in range(MAX_OPERAND + 1) for b in range(MAX_OPERAND + 1)]
    facts += [Fact(a, b, "-") for a in range(MAX_OPERAND + 1) for b in range(a + 1)]
    return facts


def split_facts() -> dict[str, list[Fact]]:
    """Deterministic split of the facts: ``train`` for SFT/reward/PPO, ``test`` held out for evaluation.

    The base model sees every fact during pre-training (that is its world knowledge); the alignment
    stages never see a held-out fact, so evaluation on them measures whether the learnt *behaviour*
    generalises to new prompts.
    """
    facts = all_facts()
    rng = random.Random(1234)
    held_out = set(rng.sample(range(len(facts)), round(HELD_OUT_FRACTION * len(facts))))
    return {
        "train": [f for i, f in enumerate(facts) if i not in held_out],
        "test": [f for i, f in enumerate(facts) if i in held_out],
    }


def question_text(fact: Fact, template: str) -> str:
    return template.format(x=fact.a, y=fact.b)


def templates_for(fact: Fact) -> tuple[str, ...]:
    return _PLUS_TEMPLATES if fact.op == "+" else _MINUS_TEMPLATES


def _template_regex(template: str) -> re.Pattern[str]:
    pattern = re.escape(template).replace(r"\{x\}", r"(?P<x>\d+)").replace(r"\{y\}", r"(?P<y>\d+)")
    return re.compile(rf"^\s*{pattern}\s*$", re.IGNORECASE)


_QUESTION_PATTERNS = [(_template_regex(t), "+") for t in _PLUS_TEMPLATES] + [
    (_template_regex(t), "-") for t in _MINUS_TEMPLATES
]


def parse_question(prompt: str) -> Fact | None:
    """The fact a prompt asks about, or ``None`` when the prompt is not one of the task's questions."""
    for pattern, op in _QUESTION_PATTERNS:
        match = pattern.match(prompt)
        if match:
            return Fact(int(match["x"]), int(match["y"]), op)
    return None


_CLAIM = re.compile(r"\b(?:is|equals|makes)\s+(-?\d+)\b|=\s*(-?\d+)", re.IGNORECASE)


# A whole answer sentence: the question restated, then the result ("3 plus 4 is 7.")
_ANSWER = re.compile(r"^(\d+) (plus|minus) (\d+) (?:is|equals|makes) (-?\d+)$")


def _letters(sentence: str) -> str:
    return re.sub(r"[^a-z ]", "", sentence.lower()).strip()


# sentences that only carry tone: the phrases alone, and the openers and closers people use
_COURTESIES = {
    _letters(s)
    for s in (*POLITE_PHRASES, *RUDE_PHRASES, *POLITE_OPENERS, *POLITE_CLOSERS, *RUDE_OPENERS, *RUDE_CLOSERS)
} - {""}


_BARE_NUMBER = re.compile(r"^\s*(-?\d+)\s*[.!]?\s*$")


_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+")


def claimed_answer(response: str) -> int | None:
    """The result a response states: the first number after "is"/"equals"/"makes"/"=", or a bare number."""
    match = _CLAIM.search(response)
    if match:
        return int(match.group(1) or match.group(2))
    match = _BARE_NUMBER.match(response)
    return int(match.group(1)) if match else None


def _has_phrase(text: str, phrases: Sequence[str]) -> bool:
    lowered = text.lower()
    return any(re.search(rf"\b{re.escape(p)}\b", lowered) for p in phrases)


def _prompt_text(prompt: str | list[dict[str, Any]]) -> str:
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    return users[-1] if users else ""


def judge(prompt: str | list[dict[str, Any]], response: str) -> Judgement:
    """Apply the gold rules (see the module docstring) and return the verdict with its parts.

    ``prompt`` is the user's question, as text or as a list of chat messages (the last user
    message is the question). ``response`` is the assistant's text without special tokens.
    """
    fact = parse_question(_prompt_text(prompt))
    claim = claimed_answer(response)
    rude = _has_phrase(response, RUDE_PHRASES)
    polite = not rude and _has_phrase(response, POLITE_PHRASES)
    text = response.strip()
    ended = bool(text) and text[-1] in ".!?"
    sentences = [s.strip().lower() for s in _SENTENCE_SPLIT.split(text) if s.strip()]
    repeated = len(sentences) != len(set(sentences))
    words = len(text.split())
    # every finished sentence either answers (restating a question) or is a courtesy; a cut-off last
    # sentence is the "cut off" rule's, not a stray one
    finished = [s.rstrip(".!?").strip() for s in (sentences if ended else sentences[:-1])]
    attempt = next((s for s in finished if claimed_answer(s) is not None), None)  # the sentence that answers
    stray = attempt is not None and any(
        s != attempt and not _ANSWER.match(s) and _letters(s) not in _COURTESIES for s in finished
    )
    answer = _ANSWER.match(attempt or "")
    correct = (
        fact is not None
        and answer is not None
        and (int(answer[1]), answer[2], int(answer[3]), int(answer[4])) == (fact.a, fact.word, fact.b, fact.result)
    )

    points = 1.0 if correct else -1.0
    points += 0.5 if polite else 0.0
    points -= 1.0 if rude else 0.0
    points -= 0.0 if ended else 0.5
    points -= 0.5 if repeated else 0.0
    points -= 0.5 if stray else 0.0
    points -= min(1.0, 0.1 * max(0, words - MAX_WORDS))
    return Judgement(
        correct=correct,
        answered=claim is not None,
        polite=polite,
        rude=rude,
        ended=ended,
        repeated=repeated,
        stray=stray,
        words=words,
        score=round(points, 4),
    )


def score(prompt: str | list[dict[str, Any]], response: str) -> float:
    """The gold judge: a float in [-3.5, 1.5]; higher is what a person would prefer."""
    return judge(prompt, response).score


def gold_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    """The gold judge as a rule reward, in TRL's ``reward_funcs`` form (``rlhf.tiny.task:gold_reward``).

    A run trained on it is judged by what it optimised: its ``judge`` attribute lets the PPO stage
    and the report say so.
    """
    return [score(p, c if isinstance(c, str) else c[-1]["content"]) for p, c in zip(prompts, completions, strict=True)]


gold_reward.judge = score  # type: ignore[attr-defined]
