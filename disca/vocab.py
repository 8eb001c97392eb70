"""The word-level vocabulary of disca's text embedding (pure Python).

Shared by the models (the learned table, `disca.models.text`) and the runtime (which looks
prompts up in the bundle's copy of that table), so neither imports the other.
"""

from __future__ import annotations

from disca.errors import DiscaError

NULL = "<null>"  # the token of the empty (unconditional) prompt, row 0 of every vocabulary
QUOTE = 80  # characters of a prompt quoted in an error


def words(prompt: str) -> list[str]:
    out = prompt.lower().replace(",", " ").replace(".", " ").split()
    if not out:
        raise DiscaError("the prompt is empty: give at least one word")
    return out


def quote(prompt: str, limit: int = QUOTE) -> str:
    """The prompt as an error shows it: at most `limit` characters."""
    return repr(prompt if len(prompt) <= limit else prompt[: limit - 3] + "...")


class Vocabulary:
    """Word-level vocabulary; index 0 is the null token."""

    def __init__(self, tokens: list[str]):
        if not tokens or tokens[0] != NULL:
            raise DiscaError(f"a vocabulary must start with the null token {NULL!r}")
        self.tokens = list(tokens)
        self.index = {w: i for i, w in enumerate(self.tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    def ids(self, prompt: str) -> list[int]:
        ws = words(prompt)
        unknown = list(dict.fromkeys(w for w in ws if w not in self.index or w == NULL))
        if unknown:
            known = [quote(w, 24)[1:-1] for w in self.tokens[1:61]]  # a bundle's vocabulary is untrusted text too
            listed = ", ".join(known) + (f", ... ({len(self.tokens) - 1} in all)" if len(self.tokens) > 61 else "")
            shown = ", ".join(quote(w, 24) for w in unknown[:10]) + (", ..." if len(unknown) > 10 else "")
            raise DiscaError(
                f"unknown word{'s' if len(unknown) > 1 else ''} {shown} in prompt "
                f"{quote(prompt)}; known words: {listed}"
            )
        return [self.index[w] for w in ws]
