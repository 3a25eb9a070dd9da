"""The "personal facts" chat domain: a generator of training episodes and of held-out evaluation items.

An episode is a conversation injected turn by turn into memory, then a question: a fact turn
("I live in Lyon." / "Got it, you live in Lyon."), `distance` distractor turns (chit-chat, or facts
of other relations), and a question about the fact ("Where do I live?" → "You live in Lyon."). Two
variants teach the rest of the behaviour: `abstain` (the relation was never told → "I don't know where
you live. You haven't told me yet.") and `update` (an older value, then a change: "I moved to Paris." →
"You live in Paris.").

Values are split into a training and a held-out set per pool, once, by a stable hash; a value can be held
out only if it never occurs in any fixed text of the domain (phrasings, chit-chat) nor inside another
value, so held-out values never appear in any training episode. Everything is a pure function of the
`random.Random` passed in, so a seed fixes every episode.
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

from memchat.train import domain_data as data

TRAIN, HELDOUT = "train", "heldout"
KINDS = ("recall", "update", "abstain")  # drawn at random; "reply" episodes are asked for by name
# A run with update episodes at 0.25 (and 0.8 made-up values, below) read nothing from memory for 7,000
# steps, where one with 0.15 (and 0.5) read 0.31 of held-out values.
KIND_WEIGHTS = (0.7, 0.15, 0.15)
# Half the training values of every relation are made-up words: with them only in the name-like pools,
# the model learnt to recall the training values it knew and recalled no held-out value; with them
# everywhere, held-out recall rose with training recall (0.05 from memory, 0.14 from the prompt at 3,000
# steps, against 0.00 and 0.02 at 4,750). With half of them, a model of 20,000 steps recalled 0.88 of
# training values and 0.66 of held-out ones at D = 0, and its misses were often a known value of the
# relation ("tennis" for "table tennis", "grapes" for "gooseberries"): known values pull the copy. Yet
# with 0.8 (and 0.25 update episodes) memory stayed silent for 7,000 steps; perhaps because a real value
# can be finished from its first tokens read and a made-up one cannot (the two were not tried apart).
PSEUDO_SHARE = 0.5
# Share of told facts whose acknowledgement echoes the value ("Got it, you live in Lyon."): the chat's
# replies do this, and evaluation items keep this share.
ECHO_SHARE = 0.5
HELDOUT_FRACTION = 0.15
ABSTAIN_MARKERS = data.ABSTAIN_MARKERS

POOLS: dict[str, list[str]] = {
    "names": data.FIRST_NAMES,
    "pets": data.PET_NAMES,
    "cities": data.CITIES,
    "countries": data.COUNTRIES,
    "jobs": data.JOBS,
    "companies": data.COMPANIES,
    "colours": data.COLOURS,
    "foods": data.FOODS,
    "drinks": data.DRINKS,
    "fruits": data.FRUITS,
    "desserts": data.DESSERTS,
    "sports": data.SPORTS,
    "music": data.MUSIC,
    "movie_genres": data.MOVIE_GENRES,
    "seasons": data.SEASONS,
    "weekdays": data.WEEKDAYS,
    "months": data.MONTHS,
    "animals": data.ANIMALS,
    "pet_kinds": data.PET_KINDS,
    "flowers": data.FLOWERS,
    "allergens": data.ALLERGENS,
    "instruments": data.INSTRUMENTS,
    "languages": data.LANGUAGES,
    "hobbies": data.HOBBIES,
    "cars": data.CARS,
    "subjects": data.SUBJECTS,
    "ages": data.AGES,
    "streets": data.STREETS,
    "games": data.GAMES,
    "coffee_styles": data.COFFEE_STYLES,
}


@dataclass(frozen=True)
class Relation:
    key: str
    pool: str
    statements: tuple[str, ...]
    questions: tuple[str, ...]
    answers: tuple[str, ...]
    unknown: str  # completes "I don't know ..."
    changes: tuple[str, ...]  # statements of a new value replacing an old one


@dataclass(frozen=True)
class Turn:
    user: str
    assistant: str

    def as_dict(self) -> dict[str, str]:
        return {"user": self.user, "assistant": self.assistant}


@dataclass(frozen=True)
class Episode:
    turns: tuple[Turn, ...]  # injected in order
    question: str
    answer: str  # the reply the model should give
    value: str | None  # the value asked for; None when it was never told
    relation: str
    kind: str
    fact_turn: int | None  # index of the turn that told the value asked for

    @property
    def distance(self) -> int:
        """Turns injected after the fact (for abstain: all of them)."""
        return len(self.turns) - 1 - (self.fact_turn if self.fact_turn is not None else -1)


RELATIONS: tuple[Relation, ...] = tuple(
    Relation(key, pool, tuple(st), tuple(q), tuple(a), unknown, tuple(ch))
    for key, pool, st, q, a, unknown, ch in data.RELATIONS
)


def fill(template: str, value: str) -> str:
    """A phrasing with its value: "{v}" the value, "{a}" its article; the sentence starts upper-case."""
    article = "an" if value[:1].lower() in "aeiou" else "a"
    text = template.replace("{a}", article).replace("{v}", value)
    return text[:1].upper() + text[1:]


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _contains(text: str, phrase: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(phrase.lower())}(?![\w-])", text.lower()) is not None


def fixed_texts() -> list[str]:
    """Every text of the domain that is not a value: phrasings, acknowledgements, chit-chat."""
    texts = [t for r in RELATIONS for t in (*r.statements, *r.questions, *r.answers, *r.changes, r.unknown)]
    texts += [*data.ACKNOWLEDGEMENTS, *data.ECHO_PREFIXES, *data.CHANGE_ACKNOWLEDGEMENTS,
              *data.UNKNOWN_ANSWERS]
    texts += [t for pair in data.CHITCHAT for t in pair]
    for user, assistant, slots in data.CHITCHAT_TEMPLATES:
        texts += [user, assistant, *slots]
    return texts


def _stable_fraction(text: str) -> float:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64


@functools.cache
def splits() -> dict[str, dict[str, tuple[str, ...]]]:
    """{pool: {"train": values, "heldout": values}}: a value is held out when its stable hash says so
    and it cannot leak into training text (it occurs in no fixed text and inside no other value)."""
    fixed = " \n ".join(fixed_texts())
    every_value = [(pool, v) for pool, values in POOLS.items() for v in values]
    out: dict[str, dict[str, tuple[str, ...]]] = {}
    for pool, values in POOLS.items():
        held = []
        for v in values:
            if _stable_fraction(f"{pool}:{v}") >= HELDOUT_FRACTION or _contains(fixed, v):
                continue
            low = v.lower()
            if any(low in other.lower() and _contains(other, v) for p, other in every_value
                   if (p, other) != (pool, v)):
                continue
            held.append(v)
        out[pool] = {TRAIN: tuple(v for v in values if v not in held), HELDOUT: tuple(held)}
    return out


@functools.cache
def heldout_words() -> frozenset[str]:
    return frozenset(v.lower() for s in splits().values() for v in s[HELDOUT])


@functools.cache
def _letter_model() -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
    """Counts of the next letter after each two letters ("^" starts a word, "$" ends it), over the words
    of every training value."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for split in splits().values():
        for value in split[TRAIN]:
            for word in re.findall(r"[a-z]+", value.lower()):
                padded = f"^^{word}$"
                for i in range(2, len(padded)):
                    counts[padded[i - 2 : i]][padded[i]] += 1
    return {ctx: (tuple(c), tuple(c.values())) for ctx, c in counts.items()}


@functools.cache
def _known_values() -> frozenset[str]:
    return frozenset(v.lower() for values in POOLS.values() for v in values)


def _made_up_word(rng: random.Random) -> str:
    """A word drawn letter by letter from the training values' letter statistics ("Bersova", "tangio"):
    held-out values are spelt with the same letter pairs, so copying these teaches copying them. Made-up
    syllables from a fixed inventory taught it for their own spellings only: recall of held-out values
    fell with every token they were split into (0.69 at 2 tokens, 0.36 at 4, 0.00 at 7)."""
    letters = _letter_model()
    while True:
        word, ctx = "", "^^"
        while len(word) <= 10:
            nxt = rng.choices(*letters[ctx])[0]
            if nxt == "$":
                break
            word, ctx = word + nxt, ctx[1] + nxt
        if 4 <= len(word) <= 10 and word not in _known_values():
            return word


@functools.cache
def _pool_shape(pool: str) -> tuple[bool, bool, float]:
    """(numeric, capitalised, share of two-word values) of a pool's training values."""
    values = splits()[pool][TRAIN]
    numeric = all(v.isdigit() for v in values)
    capitalised = sum(v[:1].isupper() for v in values) * 2 > len(values)
    return numeric, capitalised, sum(" " in v for v in values) / len(values)


def pseudo_value(rng: random.Random, pool: str) -> str:
    """A made-up value shaped like the pool's values (a number, a name, lower-case words), never a held-out
    or any real value of the domain."""
    numeric, capitalised, two_words = _pool_shape(pool)
    while True:
        if numeric:
            value = str(rng.randint(10, 99))
        else:
            words = [_made_up_word(rng) for _ in range(2 if rng.random() < two_words else 1)]
            value = " ".join(w.capitalize() if capitalised else w for w in words)
        if value.lower() not in heldout_words():
            return value


class Domain:
    """Episodes and evaluation items drawn from the domain; `split` picks the values asked about."""

    def __init__(self, split: str = TRAIN, made_up: float = PSEUDO_SHARE):
        """`made_up`: the share of training values that are made-up words (the held-out split has none)."""
        if split not in (TRAIN, HELDOUT):
            raise ValueError(f"split must be {TRAIN!r} or {HELDOUT!r}")
        self.split, self.made_up = split, made_up
        self.values = {pool: s[split] for pool, s in splits().items()}
        self.train_values = {pool: s[TRAIN] for pool, s in splits().items()}
        # Held-out episodes ask only about relations that have held-out values.
        self.asked = tuple(r for r in RELATIONS if self.values[r.pool])

    # --- pieces -----------------------------------------------------------------------------------

    def value(self, rng: random.Random, relation: Relation, avoid: str | None = None) -> str:
        while True:
            if self.split == TRAIN and rng.random() < self.made_up:
                v = pseudo_value(rng, relation.pool)
            else:
                v = rng.choice(self.values[relation.pool])
            if v != avoid:
                return v

    def answer(self, rng: random.Random, relation: Relation, value: str) -> str:
        return fill(rng.choice(relation.answers), value)

    def unknown_answer(self, rng: random.Random, relation: Relation) -> str:
        return rng.choice(data.UNKNOWN_ANSWERS).replace("{u}", relation.unknown)

    def fact(
        self, rng: random.Random, relation: Relation, value: str, change: bool = False,
        echo: float = ECHO_SHARE,
    ) -> Turn:
        """The user telling a value and the assistant acknowledging it, echoing it with probability `echo`."""
        user = fill(rng.choice(relation.changes if change else relation.statements), value)
        if rng.random() < echo:
            assistant = f"{rng.choice(data.ECHO_PREFIXES)} {_lower_first(self.answer(rng, relation, value))}"
        else:
            assistant = rng.choice(data.CHANGE_ACKNOWLEDGEMENTS if change else data.ACKNOWLEDGEMENTS)
        return Turn(user, assistant)

    def chitchat(self, rng: random.Random) -> Turn:
        if rng.random() < 0.75:
            return Turn(*rng.choice(data.CHITCHAT))
        user, assistant, slots = rng.choice(data.CHITCHAT_TEMPLATES)
        x = rng.choice(slots)
        reply = assistant.replace("{X}", x.capitalize()).replace("{x}", x)
        return Turn(fill(user.replace("{x}", x), ""), reply)

    def distractor(self, rng: random.Random, exclude: Relation | None = None, facts: float = 0.3) -> Turn:
        """A chit-chat turn, or (with probability `facts`) a fact of another relation (training values)."""
        if rng.random() >= facts:
            return self.chitchat(rng)
        relation = rng.choice([r for r in RELATIONS if r is not exclude])
        training = self if self.split == TRAIN else train_domain()
        return self.fact(rng, relation, training.value(rng, relation))

    # --- episodes ---------------------------------------------------------------------------------

    def episode(
        self, rng: random.Random, distance: int, lead: int = 0, kind: str | None = None,
        asked_first: float = 0.0, told_other: float = 0.0, echo: float = ECHO_SHARE,
    ) -> Episode:
        """`lead` turns, the fact, then `distance` turns, then the question. kind: recall, update (needs
        lead ≥ 1: an older value sits in the lead turns), abstain (lead + 1 + distance distractors), empty
        (an abstain episode with no turns: a chat's first question, asked of the initial memory) or reply
        (lead + 1 + distance distractors, then a new message to answer). With probability `asked_first` a
        recall episode with lead turns asked its question in one of them, and was told "I don't know".
        With probability `told_other` an abstain episode was told a fact of another relation where the
        fact would sit. The fact asked about is acknowledged with an echo of its value with probability
        `echo`."""
        if kind is None:
            kind = rng.choices(KINDS, weights=KIND_WEIGHTS)[0]
        if kind == "empty":
            kind, lead, distance = "abstain", 0, -1
        if kind == "reply":
            return self._reply_episode(rng, lead + 1 + distance)
        if kind == "update" and (lead < 1 or not self._changeable()):
            kind = "recall"
        pool = self._changeable() if kind == "update" else self.asked
        relation = rng.choice(pool)
        turns = [self.distractor(rng, relation) for _ in range(lead + 1 + distance)]
        question = rng.choice(relation.questions)
        if kind == "abstain":
            # drawn only when asked: older runs stay the same
            if turns and told_other and rng.random() < told_other:
                turns[lead] = self.distractor(rng, relation, facts=1.0)
            return Episode(tuple(turns), question, self.unknown_answer(rng, relation), None, relation.key,
                           kind, None)
        value = self.value(rng, relation)
        turns[lead] = self.fact(rng, relation, value, kind == "update", echo)
        if kind == "update":
            old = self._older_value(rng, relation, value)
            turns[rng.randrange(lead)] = self.fact(rng, relation, old)
        elif lead and rng.random() < asked_first:
            asked = Turn(rng.choice(relation.questions), self.unknown_answer(rng, relation))
            turns[rng.randrange(lead)] = asked
        return Episode(tuple(turns), question, self.answer(rng, relation, value), value, relation.key, kind,
                       lead)

    def _reply_episode(self, rng: random.Random, before: int) -> Episode:
        """`before` turns, then the user says something new and the reply answers it: a fact's
        acknowledgement, often echoing the value (copied from the prompt), or a chit-chat reply. The chat
        injects the model's own replies into memory, so a garbled echo would become a garbled memory."""
        turns = tuple(self.distractor(rng) for _ in range(before))
        relation = rng.choice(self.asked)
        if rng.random() < 0.5:
            value = self.value(rng, relation)
            said = self.fact(rng, relation, value)
            echoed = value if _contains(said.assistant, value) else None
        else:
            said, echoed = self.chitchat(rng), None
        return Episode(turns, said.user, said.assistant, echoed, relation.key, "reply", None)

    def _older_value(self, rng: random.Random, relation: Relation, value: str) -> str:
        """The value `value` changed: a training value (a held-out pool may hold one). Training draws
        made-up ones too; evaluation items only real ones, so they stay put when the training mix changes."""
        if self.split == TRAIN:
            return self.value(rng, relation, avoid=value)
        return rng.choice([v for v in self.train_values[relation.pool] if v != value])

    def _changeable(self) -> tuple[Relation, ...]:
        return tuple(r for r in self.asked if r.changes)

    # --- evaluation items and tokenizer text --------------------------------------------------------

    def items(self, n: int, seed: int) -> list[dict]:
        """n retention items {context: {user, assistant}, question, answer: the value}, one relation
        after another so a small n still covers many relations."""
        rng = random.Random(f"items:{self.split}:{seed}")
        out = []
        for relation in _in_turn(rng, self.asked, n):
            value = self.value(rng, relation)
            out.append({"context": self.fact(rng, relation, value).as_dict(),
                        "question": rng.choice(relation.questions), "answer": value})
        return out

    def update_items(self, n: int, seed: int) -> list[dict]:
        """n update items: `before` tells an older value (`stale`), then `context` changes it to this
        split's `answer`, as in training's update episodes."""
        rng = random.Random(f"updates:{self.split}:{seed}")
        out = []
        for relation in _in_turn(rng, self._changeable(), n):
            value = self.value(rng, relation)
            old = self._older_value(rng, relation, value)
            out.append({"before": self.fact(rng, relation, old).as_dict(),
                        "context": self.fact(rng, relation, value, change=True).as_dict(),
                        "question": rng.choice(relation.questions), "answer": value, "stale": old})
        return out

    def distractor_contexts(self, n: int, seed: int) -> list[dict]:
        """n chit-chat turns {user, assistant}: contexts unrelated to any fact."""
        rng = random.Random(f"distractors:{seed}")
        return [self.chitchat(rng).as_dict() for _ in range(n)]

    def corpus(self, episodes: int, seed: int) -> Iterator[str]:
        """Lines of text to train the tokenizer on: every phrasing and many values (training split)."""
        rng = random.Random(f"corpus:{seed}")
        yield from fixed_texts()
        for values in self.train_values.values():
            yield " ".join(values)
        for _ in range(episodes):
            ep = self.episode(rng, distance=rng.randrange(3), lead=rng.randrange(2))
            for turn in ep.turns:
                yield turn.user
                yield turn.assistant
            yield ep.question
            yield ep.answer


def _in_turn(rng: random.Random, relations: tuple[Relation, ...], n: int) -> Iterator[Relation]:
    """n relations, one after another in a shuffled order, so a small n still covers many."""
    order = list(relations)
    rng.shuffle(order)
    return (order[i % len(order)] for i in range(n))


@functools.cache
def train_domain(made_up: float = PSEUDO_SHARE) -> Domain:
    return Domain(TRAIN, made_up)
