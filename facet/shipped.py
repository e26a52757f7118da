"""The model set that ships inside facet (``facet/assets/models``): what `facet predict`,
`facet serve` and the try-it page answer with when no model folder is given. Built by `facet
build-set` (``benchmarks/default_models.py`` trains, exports and builds it); its card
(``MODEL_CARD.md``) lies beside the models."""
from __future__ import annotations

from pathlib import Path

MODELS = Path(__file__).parent / "assets" / "models"
CARD = MODELS / "MODEL_CARD.md"
NOTICE = ("models: the set shipped with facet (crop=face photo models, research use only: "
          "`facet info` shows what they were trained on; --models DIR for your own)")


def resolve(models: str | Path | None) -> tuple[Path, bool]:
    """(the model folder, whether it is the shipped set): ``models`` when given, else the
    shipped set."""
    return (Path(models), False) if models else (MODELS, True)
