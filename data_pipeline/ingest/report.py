"""`BuildReport`: what a build counted, from the input files to the packed rows (files read and
skipped, decoding problems, every cleaning repair or drop, word-segmentation counts), with the first few
examples of each. Workers fill one per chunk; the build merges them into the manifest's `counts`. Its
own module because `sources`, `clean`, the workers and the tokenizer trainer all add to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_EXAMPLES_PER_KEY = 5


@dataclass
class BuildReport:
    """Counts of everything dropped or repaired, plus the first few examples of each (mergeable).

    Keys used: documents, empty_documents, short_documents, control_chars_removed, unicode_normalized,
    cjk_line_breaks_joined, overlong_documents_split, overlong_pieces, invalid_utf8_replaced, null_text,
    files (see `sources`); a build adds the word-segmentation counts of `segment.WordStartEncoder` and
    tokenized_documents / documents_without_tokens (documents the tokenizer made no token of but special
    ones, `worker._count_without_content`; more than half of them fails the build).
    """

    counts: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    def add(self, key: str, n: int = 1, example: str | None = None) -> None:
        """Add `n` to counter `key`; keep `example` (as 'key: example') if `key` has < 5 examples."""
        self.counts[key] = self.counts.get(key, 0) + n
        if example is not None and self._example_count(key) < MAX_EXAMPLES_PER_KEY:
            self.examples.append(f"{key}: {example}")

    def merge(self, other: BuildReport) -> None:
        """Add another report's counts and examples (e.g. from another worker) into this one."""
        for key, n in other.counts.items():
            self.counts[key] = self.counts.get(key, 0) + n
        for example in other.examples:
            key = example.split(": ", 1)[0]
            if self._example_count(key) < MAX_EXAMPLES_PER_KEY:
                self.examples.append(example)

    def to_dict(self) -> dict:
        """A JSON-ready dict: {'counts': {key: n} (sorted), 'examples': [...]}."""
        return {"counts": dict(sorted(self.counts.items())), "examples": list(self.examples)}

    @classmethod
    def from_dict(cls, data: dict) -> BuildReport:
        """Inverse of `to_dict` (for reports passed between processes as JSON)."""
        return cls(counts=dict(data.get("counts", {})), examples=list(data.get("examples", [])))

    def _example_count(self, key: str) -> int:
        prefix = key + ": "
        return sum(1 for e in self.examples if e.startswith(prefix))
