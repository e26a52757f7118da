"""facet: face photos -> 18 classes from three attribute models (mask, gender, age)."""
from facet import privacy

privacy.apply_defaults()
__version__ = "0.1.0"
