"""The label space: attribute codes, the age rule and the 18-class encoding.

numpy-free and torch-free on purpose: training, export and serving all import it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

MASK = ("wear", "incorrect", "not_wear")
GENDER = ("male", "female")
AGE = ("<30", "30-59", ">=60")

#: attribute name -> class names, in code order.
ATTRIBUTES: dict[str, tuple[str, ...]] = {"mask": MASK, "gender": GENDER, "age": AGE}

#: The 18-class layout, spelled once: a class is the (mask, gender, age) codes read as one
#: number, attributes in this order (row-major), so class = 6*mask + 3*gender + age.
LAYOUT = tuple(ATTRIBUTES)
SHAPE = tuple(len(ATTRIBUTES[a]) for a in LAYOUT)  # (3, 2, 3)
N_CLASSES = len(MASK) * len(GENDER) * len(AGE)  # 18: the product of SHAPE

#: competition file stem -> mask code
MASK_BY_STEM = {
    **{f"mask{i}": 0 for i in range(1, 6)},
    "incorrect_mask": 1,
    "normal": 2,
}

# Spellings accepted in manifests and train.csv, mapped to codes.
_ALIASES = {
    "mask": {"wear": 0, "worn": 0, "mask": 0, "incorrect": 1, "incorrect_mask": 1,
             "not_wear": 2, "no_mask": 2, "normal": 2, "without_mask": 2},
    "gender": {"male": 0, "m": 0, "man": 0, "female": 1, "f": 1, "woman": 1},
}


def encode(mask: int, gender: int, age: int) -> int:
    """An image's class: its codes as one number, digits in :data:`LAYOUT` order (row-major:
    class = 6*mask + 3*gender + age)."""
    code = 0
    for name, value in zip(LAYOUT, (mask, gender, age)):
        if not 0 <= int(value) < len(ATTRIBUTES[name]):
            raise ValueError(f"{name} code {value!r} is outside 0..{len(ATTRIBUTES[name]) - 1}")
        code = code * len(ATTRIBUTES[name]) + int(value)
    return code


def class_names() -> list[str]:
    return [f"{m}/{g}/{a}" for m in MASK for g in GENDER for a in AGE]  # LAYOUT's order


def parse_code(attribute: str, value) -> int:
    """A label as written in a CSV (code or name) -> its integer code, or ValueError."""
    classes = ATTRIBUTES[attribute]
    text = str(value).strip().lower()
    if text.lstrip("-").isdigit() or text.replace(".", "", 1).isdigit():
        number = float(text)  # "1.0" (a column pandas wrote as floats) is 1; "1.5" is no class
        if number.is_integer() and 0 <= number < len(classes):
            return int(number)
    elif text in _ALIASES.get(attribute, {}):
        return _ALIASES[attribute][text]
    elif text in classes:
        return classes.index(text)
    raise ValueError(f"{attribute} label {value!r} is not one of {list(classes)} "
                     f"or 0..{len(classes) - 1}")


@dataclass(frozen=True)
class AgeRule:
    """Maps an age in years to an age group.

    ``thresholds`` are the first ages of groups 1 and 2 (the competition's 30 and 60).
    Moving them (e.g. 29/59 or 28/58) is a training-time trick: validation always scores the
    true competition groups, see :data:`TRUE_AGE_RULE`. ``drop`` removes boundary ages
    (inclusive range, e.g. (57, 59)) from *training* data only.
    """

    thresholds: tuple[int, int] = (30, 60)
    drop: tuple[int, int] | None = None

    def __post_init__(self):
        lo, hi = self.thresholds
        if not 0 < lo < hi:
            raise ValueError(f"age thresholds must rise: {self.thresholds}")
        if self.drop is not None and self.drop[0] > self.drop[1]:
            raise ValueError(f"age drop range is empty: {self.drop}")

    def group(self, years: int) -> int:
        lo, hi = self.thresholds
        return 0 if years < lo else (1 if years < hi else 2)

    def dropped(self, years: int) -> bool:
        return self.drop is not None and self.drop[0] <= years <= self.drop[1]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "AgeRule":
        drop = d.get("drop")
        return cls(tuple(d.get("thresholds", (30, 60))), tuple(drop) if drop else None)


TRUE_AGE_RULE = AgeRule()
