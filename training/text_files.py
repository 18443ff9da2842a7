"""A data file must be UTF-8 text without NUL bytes: checked before any parsing, so that the error
names the file and line instead of failing deep in the csv module or the decoder. No torch."""

from __future__ import annotations

from pathlib import Path

from training.tasks import DataError


def check_text_file(path: str | Path) -> None:
    """Raise :class:`DataError` ``file:line: ...`` at the first line with a NUL byte or bytes that
    are not UTF-8."""
    path = Path(path)
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if b"\x00" in raw:
                raise DataError(f"{path}:{lineno}: NUL byte in the text (binary or UTF-16 file?)")
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column "
                                f"{exc.start + 1}); save the file as UTF-8") from None
