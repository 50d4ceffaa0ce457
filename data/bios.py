"""Heavy-tailed synthetic biographies with question answering: the tail-learning task of arXiv 2509.26030.

Each synthetic person has six attributes: birth date, birth city, university, major, employer and
employer city (the employer's fixed headquarters, as in the bioS data of Allen-Zhu & Li). Names and
attribute values are built combinatorially from word lists written for this project, so they are
plausible but fictional and the model cannot know them in advance.

**Frequency groups.** The people are split into ``n_groups`` equal blocks (the first blocks get one
person more when ``n_people`` does not divide evenly). Every person of group j appears

    e_j = max(min_exposures, round(max_exposures * (j + 1) ** -alpha))

times in the training documents, so group 0 is the head and group ``n_groups - 1`` the tail, seen only
a handful of times. Each exposure is one biography: one sentence per attribute, each drawn from
``n_templates`` templates, in shuffled order, with the full name in every sentence (the "fullname" and
"permute" augmentations of bioS, which make facts learnable by a small model). These are exposures in the
*corpus*; a run that trains for several epochs sees each person e_j times per epoch.

**Question answering.** Each attribute has one question, rendered as ``Question: <question> Answer:``
followed by `` <value>``; the first-token accuracy (FTA, ``metrics.qa``) of the answer after the prompt is
measured per group. With ``qa_in_train`` (the default) each exposure also adds one QA document holding the
person's six question/answer lines in shuffled order, so the model is trained on biographies *and* QA
pairs, and FTA measures whether a fact has been stored: the head is learned quickly, the tail is the
question. With ``qa_in_train=False`` the model sees biographies only and must extract the answers
from them, which small models learn poorly (Allen-Zhu & Li, "Physics of Language Models 3.1").

**Held-out biographies** (``heldout``, default 0): that many further biographies of every person, rendered
apart from the training ones and never trained on, are the validation split: a held-out loss on the same
facts, for matching arms on loss at the QA's cadence. The training documents (and so the tokenizer and
the training tokens) are the same with or without them.

Everything is a pure function of the config: the same ``BiosConfig`` always yields the same people,
documents (in the same order) and QA items.
"""

from __future__ import annotations

import random
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, fields

from common.errors import UserError

ATTRIBUTES = ("birth_date", "birth_city", "university", "major", "employer", "employer_city")

_FIRST_STARTS = (
    "Al", "Ber", "Cal", "Dar", "El", "Fen", "Gar", "Hal", "Is", "Jor", "Kel", "Lor", "Mar", "Nor", "Or",
    "Per", "Quin", "Ros", "Sel", "Tam", "Ul", "Val", "Wen", "Xan", "Yor", "Zel", "Ad", "Bri", "Cor", "Del",
)
_FIRST_ENDS = ("a", "an", "en", "ia", "ic", "ida", "in", "is", "o", "on", "ora", "us", "wyn", "ette", "ard")
_LAST_STARTS = (
    "Ash", "Black", "Brook", "Cald", "Cran", "Dun", "Ever", "Fair", "Gold", "Green", "Hart", "Holl", "Kirk",
    "Lang", "Marsh", "Mill", "North", "Oak", "Pen", "Red", "Rock", "Stan", "Thorn", "Wal", "West", "Whit",
    "Wood", "Brad", "Car", "Hay",
)
_LAST_ENDS = ("by", "croft", "er", "field", "ford", "ham", "ley", "man", "more", "son", "ton", "well")
_CITY_STARTS = (
    "Avon", "Bel", "Cor", "Dray", "Esk", "Fal", "Glen", "Hav", "Iver", "Jun", "Kes", "Lyn", "Mor", "Nev",
    "Ost", "Pel", "Rav", "Sol", "Tre", "Vel",
)
_CITY_ENDS = ("mouth", "haven", "bridge", "port", "dale", "burg", "ridge", "chester")
_UNIVERSITY_STEMS = (
    "Alder", "Birch", "Cedar", "Elm", "Hazel", "Juniper", "Laurel", "Maple", "Rowan", "Willow", "Aspen",
    "Cypress", "Linden", "Magnolia", "Sequoia", "Spruce", "Sycamore", "Tamarack", "Yew", "Hawthorn",
    "Amber", "Azure", "Crimson", "Indigo", "Ivory", "Scarlet", "Silver", "Sable", "Cobalt", "Emerald",
    "Granite", "Marble", "Quartz", "Basalt", "Obsidian", "Harbor", "Summit", "Meadow", "Prairie", "Canyon",
    "Delta", "Glacier", "Highland", "Lakeshore", "Riverside", "Seaside", "Valley", "Coastal", "Pinecrest",
    "Stonegate", "Fairview", "Brightwater", "Clearwater", "Eastgate", "Westbrook", "Northfield",
    "Southwick", "Kingsley", "Queensbury", "Bishopsgate",
)
_UNIVERSITY_KINDS = ("University", "College", "Institute of Technology", "State University")
_MAJORS = (
    "Mathematics", "Physics", "Chemistry", "Biology", "Economics", "History", "Philosophy", "Linguistics",
    "Psychology", "Sociology", "Anthropology", "Astronomy", "Geology", "Architecture", "Nursing",
    "Pharmacy", "Statistics", "Journalism", "Music", "Literature", "Computer Science",
    "Mechanical Engineering", "Electrical Engineering", "Civil Engineering", "Aerospace Engineering",
    "Political Science", "Marine Biology", "Business Administration", "Environmental Science",
    "Graphic Design", "Public Health", "International Relations", "Software Engineering",
    "Materials Science", "Data Science", "Fine Arts", "Classical Studies", "Urban Planning", "Film Studies",
    "Theater", "Accounting", "Finance", "Marketing", "Law", "Medicine", "Education", "Geography",
)
_COMPANY_STARTS = ("Nor", "Tal", "Vex", "Zen", "Quan", "Lum", "Cyr", "Dyn", "Orb", "Pyr", "Syn", "Ver",
                   "Hex", "Ax", "Bry")
_COMPANY_ENDS = ("ex", "ion", "ara", "ium", "ova", "ix", "on", "ica")
_COMPANY_KINDS = ("Systems", "Foods", "Energy", "Labs", "Logistics", "Pharmaceuticals", "Motors", "Media",
                  "Capital", "Robotics", "Textiles", "Aviation")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December")

FIRST_NAMES = tuple(s + e for s in _FIRST_STARTS for e in _FIRST_ENDS)
LAST_NAMES = tuple(s + e for s in _LAST_STARTS for e in _LAST_ENDS)
CITIES = tuple(s + e for s in _CITY_STARTS for e in _CITY_ENDS)
UNIVERSITIES = tuple(f"{stem} {_UNIVERSITY_KINDS[i % len(_UNIVERSITY_KINDS)]}"
                     for i, stem in enumerate(_UNIVERSITY_STEMS))
MAJORS = _MAJORS
# a company's kind and headquarters are fixed by its index, so every person at a company shares its city
COMPANIES = tuple(f"{s}{e} {_COMPANY_KINDS[(i * 7) % len(_COMPANY_KINDS)]}"
                  for i, (s, e) in enumerate((s, e) for s in _COMPANY_STARTS for e in _COMPANY_ENDS))
COMPANY_CITY = {company: CITIES[(i * 37) % len(CITIES)] for i, company in enumerate(COMPANIES)}
MAX_PEOPLE = len(FIRST_NAMES) * len(LAST_NAMES)

# Biography sentence templates: the name always comes before the fact, so a causal LM learns name -> fact.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "birth_date": (
        "{name} was born on {value}.",
        "{name} came into the world on {value}.",
        "{name}'s birthday is {value}.",
        "{name} has the birth date {value}.",
        "The birth of {name} took place on {value}.",
        "{name} entered life on {value}.",
    ),
    "birth_city": (
        "{name} was born in {value}.",
        "{name} is a native of {value}.",
        "{name} originally comes from {value}.",
        "{name}'s hometown is {value}.",
        "{name} spent childhood years in {value}.",
        "The hometown of {name} is {value}.",
    ),
    "university": (
        "{name} studied at {value}.",
        "{name} graduated from {value}.",
        "{name} received an education at {value}.",
        "{name} attended {value}.",
        "{name} is a graduate of {value}.",
        "{name} completed a degree at {value}.",
    ),
    "major": (
        "{name} majored in {value}.",
        "{name} chose to study {value}.",
        "{name} earned a degree in {value}.",
        "{name} focused on {value} during college.",
        "{name} specialized in {value}.",
        "The field that {name} studied was {value}.",
    ),
    "employer": (
        "{name} works for {value}.",
        "{name} is employed by {value}.",
        "{name} has a job at {value}.",
        "{name} joined the staff of {value}.",
        "{name} holds a position at {value}.",
        "{name} earns a living at {value}.",
    ),
    "employer_city": (
        "{name} works in {value}.",
        "{name}'s workplace is located in {value}.",
        "{name} commutes to an office in {value}.",
        "{name} is based in {value} for work.",
        "{name} has an office in {value}.",
        "{name} spends working days in {value}.",
    ),
}
QUESTIONS: dict[str, str] = {
    "birth_date": "What is the birth date of {name}?",
    "birth_city": "Which city was {name} born in?",
    "university": "Which university did {name} study at?",
    "major": "What did {name} major in?",
    "employer": "Which company does {name} work for?",
    "employer_city": "Where does {name} work?",
}


@dataclass(frozen=True)
class BiosConfig:
    """Size and shape of the biography task; the defaults fit a few-minute CPU run (see docs)."""

    n_people: int = 1024
    n_groups: int = 8
    alpha: float = 1.5  # power-law exponent of exposures over groups
    max_exposures: int = 64  # biographies per person of group 0
    min_exposures: int = 1  # floor for the rarest groups
    n_templates: int = 6  # templates per attribute used (at most 6)
    qa_in_train: bool = True  # add QA documents to the training text (see the module docstring)
    shuffle_sentences: bool = True  # permute the six sentences of each biography
    seed: int = 0
    heldout: int = 0  # held-out biographies per person: the validation split (0: none)

    def __post_init__(self) -> None:
        ints = ("n_people", "n_groups", "max_exposures", "min_exposures", "n_templates", "seed", "heldout")
        for name in ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise UserError(f"data.bios.{name} must be an integer, got {value!r}")
        for name in ("qa_in_train", "shuffle_sentences"):
            if not isinstance(getattr(self, name), bool):
                raise UserError(f"data.bios.{name} must be true or false, got {getattr(self, name)!r}")
        if not 1 <= self.n_groups <= self.n_people <= MAX_PEOPLE:
            raise UserError(f"data.bios needs 1 <= n_groups ({self.n_groups}) <= n_people ({self.n_people}) "
                            f"<= {MAX_PEOPLE} (the number of distinct names)")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, int | float) or self.alpha < 0:
            raise UserError(f"data.bios.alpha must be a number >= 0, got {self.alpha!r}")
        if not 1 <= self.min_exposures <= self.max_exposures:
            raise UserError(f"data.bios needs 1 <= min_exposures ({self.min_exposures}) <= max_exposures "
                            f"({self.max_exposures})")
        if self.heldout < 0:
            raise UserError(f"data.bios.heldout must be >= 0 (held-out biographies per person), "
                            f"got {self.heldout}")
        if not 1 <= self.n_templates <= len(TEMPLATES["birth_date"]):
            raise UserError(f"data.bios.n_templates must be in 1..{len(TEMPLATES['birth_date'])}, "
                            f"got {self.n_templates}")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Names of the settable fields (what ``data.bios.*`` may set)."""
        return tuple(f.name for f in fields(cls))


@dataclass(frozen=True)
class Person:
    """One synthetic person: index, full name, frequency group and the six attribute values."""

    id: int
    name: str
    group: int
    attributes: dict[str, str]


@dataclass(frozen=True)
class QAItem:
    """One question: the prompt (ends before the answer), the answer (starts with a space), and labels."""

    prompt: str
    answer: str
    group: int
    attribute: str
    person: int


def group_exposures(cfg: BiosConfig) -> list[int]:
    """Biographies per person of each group: max(min_exposures, round(max_exposures * (j+1)^-alpha))."""
    return [max(cfg.min_exposures, round(cfg.max_exposures * (j + 1) ** -cfg.alpha))
            for j in range(cfg.n_groups)]


def group_of_index(i: int, cfg: BiosConfig) -> int:
    """Frequency group of the i-th person: equal contiguous blocks, earlier blocks larger by one."""
    size, extra = divmod(cfg.n_people, cfg.n_groups)
    cut = extra * (size + 1)  # the first `extra` groups hold size + 1 people
    return i // (size + 1) if i < cut else extra + (i - cut) // size


def _birth_date(rng: random.Random) -> str:
    return f"{rng.choice(_MONTHS)} {rng.randint(1, 28)}, {rng.randint(1950, 2004)}"


def people(cfg: BiosConfig) -> list[Person]:
    """The ``n_people`` people, with distinct names and independently drawn attributes."""
    rng = random.Random(cfg.seed)
    picks = rng.sample(range(MAX_PEOPLE), cfg.n_people)
    out = []
    for i, pick in enumerate(picks):
        first, last = divmod(pick, len(LAST_NAMES))
        employer = rng.choice(COMPANIES)
        attributes = {
            "birth_date": _birth_date(rng),
            "birth_city": rng.choice(CITIES),
            "university": rng.choice(UNIVERSITIES),
            "major": rng.choice(MAJORS),
            "employer": employer,
            "employer_city": COMPANY_CITY[employer],
        }
        out.append(Person(i, f"{FIRST_NAMES[first]} {LAST_NAMES[last]}", group_of_index(i, cfg), attributes))
    return out


def qa_pair(person: Person, attribute: str) -> tuple[str, str]:
    """(prompt, answer) of one attribute question; the answer starts with a space."""
    question = QUESTIONS[attribute].format(name=person.name)
    return f"Question: {question} Answer:", f" {person.attributes[attribute]}"


def render_bio(person: Person, cfg: BiosConfig, rng: random.Random) -> str:
    """One biography: a sentence per attribute from the first ``n_templates`` templates."""
    sentences = [
        TEMPLATES[attr][rng.randrange(cfg.n_templates)].format(name=person.name, value=value)
        for attr, value in person.attributes.items()
    ]
    if cfg.shuffle_sentences:
        rng.shuffle(sentences)
    return " ".join(sentences)


def render_qa(person: Person, rng: random.Random) -> str:
    """One QA document: the six question/answer lines in random order."""
    lines = ["".join(qa_pair(person, attr)) + "." for attr in ATTRIBUTES]
    rng.shuffle(lines)
    return "\n".join(lines)


def documents(cfg: BiosConfig) -> Iterator[str]:
    """The training documents (biographies, and QA documents with ``qa_in_train``), in shuffled order."""
    everyone = people(cfg)
    exposures = group_exposures(cfg)
    kinds = ("bio", "qa") if cfg.qa_in_train else ("bio",)
    jobs = [(p.id, e, kind) for p in everyone for e in range(exposures[p.group]) for kind in kinds]
    random.Random(f"{cfg.seed}:order").shuffle(jobs)
    for pid, exposure, kind in jobs:
        # each document's wording depends only on (seed, person, exposure, kind), not on the order
        rng = random.Random(f"{cfg.seed}:{kind}:{pid}:{exposure}")
        person = everyone[pid]
        yield render_bio(person, cfg, rng) if kind == "bio" else render_qa(person, rng)


def heldout_documents(cfg: BiosConfig) -> Iterator[str]:
    """The validation split: ``heldout`` fresh biographies of every person, in shuffled order. They state
    the facts the training documents state, in renderings drawn apart from theirs (never trained on), so
    their loss measures what was memorized, on every frequency group alike."""
    everyone = people(cfg)
    jobs = [(p.id, k) for p in everyone for k in range(cfg.heldout)]
    random.Random(f"{cfg.seed}:heldout-order").shuffle(jobs)
    for pid, k in jobs:
        yield render_bio(everyone[pid], cfg, random.Random(f"{cfg.seed}:heldout:{pid}:{k}"))


def qa_items(cfg: BiosConfig) -> list[QAItem]:
    """Every person's six questions, person by person (group 0 first)."""
    return [
        QAItem(*qa_pair(p, attr), group=p.group, attribute=attr, person=p.id)
        for p in people(cfg)
        for attr in ATTRIBUTES
    ]


def main(argv: list[str] | None = None) -> int:
    """``python -m data.bios [key=value ...]``: the group table of a config and a sample document."""
    from rich.console import Console
    from rich.table import Table

    try:
        cfg = _config_from_args(sys.argv[1:] if argv is None else argv)
    except UserError as e:  # bad input: one line; anything else keeps its traceback
        raise SystemExit(f"error: {e}") from None
    exposures = group_exposures(cfg)
    counts = Counter(group_of_index(i, cfg) for i in range(cfg.n_people))
    sizes = [counts[j] for j in range(cfg.n_groups)]
    table = Table(title=f"bios: {cfg}")
    for column in ("group", "people", "biographies per person", "documents"):
        table.add_column(column, justify="right")
    per_doc = 2 if cfg.qa_in_train else 1
    for j, (n, e) in enumerate(zip(sizes, exposures, strict=True)):
        table.add_row(str(j), str(n), str(e), str(n * e * per_doc))
    console = Console()
    console.print(table)
    total = sum(n * e * per_doc for n, e in zip(sizes, exposures, strict=True))
    console.print(f"{total} documents (~{total * 73 / 1e6:.1f}M tokens at ~73 BPE tokens per document)")
    console.print(next(documents(cfg)))
    return 0


def _config_from_args(args: list[str]) -> BiosConfig:
    """The config that ``key=value`` arguments describe."""
    overrides = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or key not in BiosConfig.field_names():
            raise UserError(f"bad argument {arg!r}: use key=value with key one of "
                            f"{', '.join(BiosConfig.field_names())}")
        default = getattr(BiosConfig, key)
        try:
            overrides[key] = value.lower() == "true" if isinstance(default, bool) else type(default)(value)
        except ValueError:
            raise UserError(f"bad value in {arg!r}: expected a {type(default).__name__}") from None
    return BiosConfig(**overrides)


if __name__ == "__main__":
    raise SystemExit(main())
