"""A run's phases on the trainer's side: the rows of every phase opened and checked before the first step,
the loaders of the phase being trained, and what a phase boundary changes.

The rules (which phase a step is in, its merged config, its sample stream and LR segment) are
pretrain/config/phases.py's. Here: phase `i`'s rows are those of its stream (the latest phase <= i that
changed the data section); its sampler and masks are seeded by `stream_seed(train.seed, stream)`
(stream 0 keeps train.seed, so a run without phases is unchanged); a phase that continues a stream
loads the sampler state the previous phase left.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from pretrain.config import Config, ConfigError
from pretrain.config.phases import due_phase, phase_configs, phase_digest, rows_differ, stream_of
from pretrain.data.loader import TrainLoader, ValidationLoader
from pretrain.data.masking import MaskingCollator
from pretrain.data.row_source import check_document_starts, is_mixture, open_row_sources, resolve_seq_len
from pretrain.data.sampler import GlobalBatchSampler
from pretrain.runtime.distributed import DistInfo


def stream_seed(seed: int, stream: int) -> int:
    """The seed of sample stream `stream`'s order and masks: train.seed for stream 0, else a hash of
    (seed, stream), so a phase on new rows never replays another stream's order or masks."""
    if stream == 0:
        return seed
    return int(np.random.SeedSequence([seed, stream]).generate_state(1, dtype=np.uint64)[0] >> 1)


@dataclasses.dataclass
class PhaseLoaders:
    """What one phase trains and evaluates with: its loaders, sequence length and FLOPs per token."""

    loader: TrainLoader
    val_loader: ValidationLoader
    seq_len: int
    flops_per_token: float


class RunPhases:
    """The phases of a run (one, the base config, when it lists none), with their rows opened.

    Takes the run's config, the base's (train, validation) row sources and the built model. Opens the
    sources of every phase that changes the rows and checks them against the base before anything
    trains: the same tokenizer (one embedding), pairs or not alike (one pair head), a sequence length
    the rows hold and the model takes. Raises ConfigError naming `phases[i]`, or DataError naming the
    file, otherwise.
    """

    def __init__(self, cfg: Config, base_sources: tuple, model) -> None:
        """Resolve the phases and open and check their rows."""
        self.cfg = cfg
        self.configs = phase_configs(cfg)
        self.streams = [stream_of(self.configs, i) for i in range(len(self.configs))]
        self.sources = {0: base_sources}
        base = base_sources[0]
        for i in range(1, len(self.configs)):
            if rows_differ(self.configs[i], self.configs[i - 1]):
                # A new stream's mixture orders its rows by the stream's seed, as its sampler and masks.
                seed = stream_seed(self.configs[i].train.seed, i)
                self.sources[i] = open_row_sources(self.configs[i].data, seed=seed)
                _check_like_base(self.sources[i][0], base, f"phases[{i - 1}]")
                for source in self.sources[i]:
                    check_document_starts(source, model.batch_keys, cfg.model.arch)
        self.seq_lens = []
        for i, c in enumerate(self.configs):
            train = self.sources[self.streams[i]][0]
            where = "" if i == 0 else f"phases[{i - 1}]: "
            try:
                self.seq_lens.append(resolve_seq_len(c.data, train, max_positions=model.max_positions))
            except ConfigError as exc:
                raise ConfigError(f"{where}{exc}") from None
        self.digests = [
            phase_digest(cfg, i, _rows_identity(self.sources.get(i))) for i in range(1, len(self.configs))
        ]

    def due(self, current: int, step: int, tokens: int) -> int:
        """The phase the next step trains in, from phase `current` after `step` steps and `tokens`."""
        return due_phase(self.cfg, current, step, tokens)

    def identity(self, identity: dict, phase: int) -> dict:
        """`identity` with "phases": the digests of phases 1..`phase` (the started ones; none without
        phases: the key is left out, so runs without phases keep their identity)."""
        if not self.cfg.phases:
            return identity
        return {**identity, "phases": self.digests[:phase]}

    def loaders(
        self, phase: int, *, step: int, info: DistInfo, model, faults, pin_device, state: dict | None
    ) -> PhaseLoaders:
        """The loaders of `phase`, starting after `step` steps: the sampler continues `state` (the
        loader state the previous step left, None for a new stream) and gives each step the global batch
        of the phase's config at that step (train.global_batch_at: batch warmup)."""
        c, stream, seq_len = self.configs[phase], self.streams[phase], self.seq_lens[phase]
        t = c.train
        train_source, val_source = self.sources[stream]
        seed = stream_seed(t.seed, stream)
        collator = MaskingCollator(
            c.masking,
            special_ids=train_source.special_ids,
            vocab_size=train_source.vocab_size,
            seed=seed,
            seq_len=seq_len,
            batch_keys=model.batch_keys,
        )
        world = info.world_size
        try:
            t.global_batch_at(step, world)  # the first batch names a bad size here, not in the thread
        except ConfigError as exc:
            raise ConfigError(f"phases[{phase - 1}]: {exc}" if phase else str(exc)) from None
        sampler = GlobalBatchSampler(
            len(train_source),
            global_batch_size=t.global_batch(world),
            micro_batch_size=t.micro_batch_size,
            seed=seed,
            rank=info.rank,
            world_size=world,
            shuffle=not is_mixture(train_source),  # a mixture orders its rows itself
            global_batch_at=lambda s: t.global_batch_at(s, world),
            first_step=step,
        )
        per_rank_micro = t.micro_batch_size * world
        reader = faults.reader(
            train_source,
            micro_batches_at=lambda s: t.global_batch_at(s - 1, world) // per_rank_micro,
            first_step=step + 1,
        )
        loader = TrainLoader(reader, sampler, collator, c.data.prefetch_batches, pin_device=pin_device)
        if state is not None:
            loader.load_state_dict(state)
        val_loader = ValidationLoader(
            val_source, collator, t.micro_batch_size, info.rank, world, c.eval.max_batches
        )
        return PhaseLoaders(
            loader, val_loader, seq_len, model.flops_per_token(seq_len, c.masking.probability)
        )


def _rows_identity(sources) -> str:
    """What a phase's own rows are (build identity and shard contents); "" for a phase on earlier rows."""
    if sources is None:
        return ""
    return f"{sources[0].data_identity()} {sources[0].content_identity()}"


def _check_like_base(source, base, where: str) -> None:
    """Refuse a phase's rows that one model cannot train after the base's: another tokenizer (by its
    fingerprint, not its path) or pairs where the base had none (or the reverse)."""
    if source.tokenizer_fingerprint != base.tokenizer_fingerprint:
        raise ConfigError(
            f"{where}: {source.name} hold ids of tokenizer {source.tokenizer_fingerprint[:12]} but phase 0's "
            f"rows ({base.name}) of {base.tokenizer_fingerprint[:12]}; a run trains one embedding: build "
            "every phase's shards with the same tokenizer"
        )
    if source.has_pairs != base.has_pairs:
        kind = {True: "sentence pairs (nsp/sop)", False: "no sentence pairs"}
        raise ConfigError(
            f"{where}: {source.name} hold {kind[source.has_pairs]} but phase 0's rows ({base.name}) "
            f"{kind[base.has_pairs]}; the model's pair head is built for phase 0: build every phase's "
            "shards in one mode"
        )
