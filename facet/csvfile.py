"""Reading a user's CSV: pandas' errors for an empty or binary file become one message that
names the file, raised as the caller's own error type."""
from __future__ import annotations

from pathlib import Path
from typing import IO

import pandas as pd


def read_csv(path: str | Path | IO, error: type[Exception], name: str | None = None,
             **kwargs) -> pd.DataFrame:
    """``path``: a file name or an open file (then ``name`` names it in messages)."""
    name = name or path
    try:
        return pd.read_csv(path, **kwargs)
    except pd.errors.EmptyDataError:
        raise error(f"{name}: empty CSV, not a readable CSV (no header, no rows)") from None
    except (UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise error(f"{name}: not a readable CSV ({str(exc).splitlines()[0][:200]})") from None
