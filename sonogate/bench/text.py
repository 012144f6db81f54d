"""Text helpers every bench module shares (a leaf module: it imports nothing of the bench)."""


def one_line(exc: BaseException | str) -> str:
    """An exception or text as one line of at most 300 characters (plus "...")."""
    text = " ".join(str(exc).split())
    return (text[:300] + "...") if len(text) > 300 else text
