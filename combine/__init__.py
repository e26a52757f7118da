"""Label space and the rule that combines mask, gender and age into 18 classes."""
from .labels import (AGE, ATTRIBUTES, GENDER, LAYOUT, MASK, MASK_BY_STEM, N_CLASSES, SHAPE,
                     TRUE_AGE_RULE, AgeRule, class_names, encode, parse_code)
from .rule import combine_labels, combine_probs, split_labels

__all__ = ["AGE", "ATTRIBUTES", "GENDER", "LAYOUT", "MASK", "MASK_BY_STEM", "N_CLASSES", "SHAPE",
           "TRUE_AGE_RULE", "AgeRule", "class_names", "encode", "parse_code", "combine_labels",
           "combine_probs", "split_labels"]
