"""Reading a user's CSV: pandas' errors for an empty or binary file become one message that
names the file, raised as the caller's own error type."""
from __future__ import annotations

from pathlib import Path

import pandas as pd


def read_csv(path: str | Path, error: type[Exception], **kwargs) -> pd.DataFrame:
    try:
        return pd.read_csv(path, **kwargs)
    except pd.errors.EmptyDataError:
        raise error(f"{path}: empty CSV, not a readable CSV (no header, no rows)") from None
    except (UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise error(f"{path}: not a readable CSV ({str(exc).splitlines()[0][:200]})") from None
