"""What every architecture's `model` config section shares: the four shape keys, filled from the section's
size presets and checked as set, and the vocabulary rounded up by `pad_vocab_to_multiple_of`.

`PresetShape` is a mixin of the sections' dataclasses with no keys of its own: each section declares its
keys (with their docstrings, which generate docs/configuration.md), its presets and its checks' order.
Torch-free: the config loader (and through it the launcher) imports it.
"""

from __future__ import annotations

from typing import ClassVar

from pretrain.errors import require

# The shape keys every architecture's section has and every preset sets (the run identity records them,
# under these names, from the model: architecture.encoder_shape).
SHAPE_FIELDS = ("num_layers", "hidden_size", "num_heads", "intermediate_size")


class PresetShape:
    """A `model` section's preset plumbing. The section sets `PRESETS` ({preset: {shape key: value}}) and
    has the keys `preset`, the SHAPE_FIELDS and `pad_vocab_to_multiple_of`."""

    PRESETS: ClassVar[dict[str, dict[str, int]]]

    def fill_shape_from_preset(self) -> None:
        """Set each shape key left unset (None) from `preset`, when one is named: explicit keys win."""
        if self.preset is not None:
            for name, value in self.PRESETS[self.preset].items():
                if getattr(self, name) is None:
                    setattr(self, name, value)

    def require_shape_set(self) -> None:
        """Raise ConfigError naming every shape key still unset (set them or choose a preset)."""
        missing = [n for n in SHAPE_FIELDS if getattr(self, n) is None]
        require(
            not missing,
            f"model: {', '.join('model.' + m for m in missing)} not set; "
            f"set them or choose model.preset from {sorted(self.PRESETS)}",
        )

    def require_vocab_multiple(self) -> None:
        """Raise ConfigError unless pad_vocab_to_multiple_of is at least 1."""
        require(
            self.pad_vocab_to_multiple_of >= 1,
            f"model.pad_vocab_to_multiple_of must be >= 1, got {self.pad_vocab_to_multiple_of}",
        )

    def padded_vocab_size(self, vocab_size: int) -> int:
        """The tokenizer's `vocab_size` rounded up to a multiple of pad_vocab_to_multiple_of."""
        multiple = self.pad_vocab_to_multiple_of
        return -(-vocab_size // multiple) * multiple
