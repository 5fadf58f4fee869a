"""The pure layer (cache/rawdisk/tables.py): replaying any prefix of a journal gives the
state a crash at that point must leave.

Hypothesis drives :class:`Tables` the way the live store does (puts into HELD blocks,
drops, prefix purges, the reaper, clears, syncs that release deferred frees, checkpoints
that snapshot the index and block map), collects the journal records it would write, and
keeps a plain dict model of what each record means. Then, for every prefix of the
journal since the last checkpoint, a fresh Tables loaded from that checkpoint and fed the
prefix must hold exactly the model's entries, with exactly their blocks used. And at every
crash point (only synced records are durable), no replayed entry names blocks that a later
put has overwritten: the promise deferred frees keep.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from cache.rawdisk import journal
from cache.rawdisk.allocator import FREE, HELD, USED
from cache.rawdisk.index import DEAD, Index
from cache.rawdisk.layout import KIND_META, KIND_SLICE, key_hash
from cache.rawdisk.tables import Tables

BLOCKS = 24
KEYS = [b"a", b"a v 0", b"a v 1", b"a vary:x v 0", b"ab v 0", b"b", b"b v 0", b"b v 1"]
PREFIXES = [b"a", b"a ", b"a v", b"b ", b"", b"ab"]

# An entry as a crash must leave it: every field a journal record carries.
Fields = tuple[int, int, int, int, int, int, int, int, int, int]


def fields_of(rec: journal.PutRecord) -> Fields:
    return (
        rec.gen,
        rec.checksum,
        rec.start,
        rec.nblocks,
        rec.stored_len,
        rec.orig_len,
        rec.expires,
        rec.created,
        rec.codec,
        rec.kind,
    )


def state_of(tables: Tables) -> dict[bytes, Fields]:
    index = tables.index
    out = {}
    for key, row in index.live_keys_with_rows():
        e = index.entry(row)
        out[key] = (
            e.gen,
            e.checksum,
            e.start,
            e.nblocks,
            e.stored_len,
            e.orig_len,
            e.expires,
            e.created,
            e.codec,
            e.kind,
        )
    return out


@dataclass
class Checkpoint:
    sections: list[bytes]
    counters: tuple[int, int, int, int, int]
    block_map: bytes
    next_gen: int
    model: dict[bytes, Fields]

    def load(self) -> Tables:
        """What recovery does: a Tables from the checkpoint, purged rows reclaimed."""
        stats: dict[str, float] = {"replay_conflicts_total": 0.0, "reclaimed_entries_total": 0.0}
        tables = Tables(BLOCKS, stats)
        s = self.sections
        index = Index.from_sections(
            s[0], s[1], s[2], s[3], s[4], s[5], b"".join(s[6:]), self.counters
        )
        tables.load(index, self.block_map, self.next_gen)
        tables.reclaim_all_dead()
        return tables


def snapshot(tables: Tables, model: dict[bytes, Fields]) -> Checkpoint:
    return Checkpoint(
        sections=[bytes(v) for v in tables.index.sections()],
        counters=tables.index.counters(),
        block_map=bytes(tables.map.map),
        next_gen=tables.next_gen,
        model=dict(model),
    )


@dataclass
class Run:
    """The live store's use of Tables, and what each journal record must mean."""

    tables: Tables = field(default_factory=lambda: Tables(BLOCKS, _stats()))
    model: dict[bytes, Fields] = field(default_factory=dict)
    records: list[journal.Record] = field(default_factory=list)
    # The model after each record: models[n] is the state after records[:n].
    models: list[dict[bytes, Fields]] = field(default_factory=list)
    disk: dict[int, int] = field(default_factory=dict)  # block -> gen of the last write
    synced: int = 0  # records durable (the last sync or checkpoint)
    checkpoint: Checkpoint | None = None
    # (records durable, disk then) at every crash point since the last checkpoint
    crashes: list[tuple[int, dict[int, int]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tables.defer_frees = True  # as in an open store
        self.checkpoint = snapshot(self.tables, self.model)
        self.models = [dict(self.model)]

    def journal(self, record: journal.Record) -> None:
        self.records.append(record)
        self.models.append(dict(self.model))

    def put(self, key: bytes, nblocks: int, meta: bool) -> None:
        tables = self.tables
        tables.map.cursor = 0  # first fit (any cursor is legal): reuse blocks when it can
        start = tables.map.allocate(nblocks, HELD)
        if start < 0:
            return
        gen = tables.next_gen
        tables.next_gen += 1
        for block in range(start, start + nblocks):  # the extent is written before commit
            self.disk[block] = gen
        index = tables.index
        h = key_hash(key)
        row = index.find(key, h)
        if row < 0 or index.state_byte(row) == DEAD:
            if row >= 0:
                tables.reclaim(row)
            row = index.take_row()
        record = journal.PutRecord(
            row=row,
            gen=gen,
            checksum=gen * 7919,
            start=start,
            nblocks=nblocks,
            stored_len=nblocks * 1000 - 1,
            orig_len=nblocks * 1500,
            expires=gen % 3,
            created=1000 + gen,
            codec=gen % 2,
            kind=KIND_META if meta else KIND_SLICE,
            key=key,
        )
        assert tables.put(record, replay=False)
        self.model[key] = fields_of(record)
        self.journal(record)

    def drop(self, key: bytes) -> None:
        index = self.tables.index
        row = index.find(key, key_hash(key))
        if row < 0 or not index.is_visible(row):
            return
        del self.model[key]
        self.journal(self.tables.drop(row))

    def purge(self, prefix: bytes) -> None:
        index = self.tables.index
        if index.mark_prefix(prefix, 0, len(index.arena)):
            for key in [k for k in self.model if k.startswith(prefix)]:
                del self.model[key]
            self.journal(journal.PurgeRecord(prefix))

    def reap(self) -> None:
        tables = self.tables
        for row in tables.index.dead_rows(1000):
            tables.reclaim(row)

    def sync(self) -> None:
        frees = self.tables.take_frees()
        # Crash during this sync: any prefix between the last durable point and now.
        for n in range(self.synced, len(self.records) + 1):
            self.crashes.append((n, dict(self.disk)))
        self.synced = len(self.records)
        self.tables.release_frees(frees)

    def clear(self) -> None:
        self.tables.reset()
        self.model.clear()
        self.journal(journal.ClearRecord())
        self.sync()  # the store syncs a clear before any put can reuse a block

    def take_checkpoint(self) -> None:
        self.sync()
        self.checkpoint = snapshot(self.tables, self.model)
        self.records = []
        self.models = [dict(self.model)]
        self.synced = 0
        self.crashes = []

    def crash_now(self) -> None:
        self.crashes.append((self.synced, dict(self.disk)))


def _stats() -> dict[str, float]:
    return {"replay_conflicts_total": 0.0, "reclaimed_entries_total": 0.0}


ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("put"),
            st.sampled_from(KEYS),
            st.integers(min_value=1, max_value=6),
            st.booleans(),
        ),
        st.tuples(st.just("drop"), st.sampled_from(KEYS)),
        st.tuples(st.just("purge"), st.sampled_from(PREFIXES)),
        st.tuples(st.just("reap")),
        st.tuples(st.just("sync")),
        st.tuples(st.just("clear")),
        st.tuples(st.just("checkpoint")),
    ),
    max_size=40,
)


def check_replay(checkpoint: Checkpoint, records: list[journal.Record]) -> Tables:
    tables = checkpoint.load()
    for record in records:
        tables.apply(record)
    assert tables.stats["replay_conflicts_total"] == 0
    return tables


def check_blocks(tables: Tables, expected: dict[bytes, Fields]) -> None:
    """Exactly the extents of the entries are used; nothing is held after a replay."""
    wanted = bytearray(BLOCKS)
    for _gen, _sum, start, nblocks, *_rest in expected.values():
        assert wanted[start : start + nblocks] == bytes(nblocks), "two entries share a block"
        wanted[start : start + nblocks] = bytes([USED]) * nblocks
    assert bytes(tables.map.map) == bytes(wanted)
    assert tables.map.free_blocks == wanted.count(FREE)
    assert tables.index.live == len(expected)
    assert tables.index.dead == 0
    gens = [f[0] for f in expected.values()]
    assert tables.next_gen > max(gens, default=0)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_replaying_any_prefix_gives_the_state_a_crash_there_must_leave(
    steps: list[tuple[object, ...]],
) -> None:
    run = Run()
    for step in steps:
        op = step[0]
        if op == "put":
            key, nblocks, meta = step[1], step[2], step[3]
            assert isinstance(key, bytes) and isinstance(nblocks, int)
            run.put(key, nblocks, bool(meta))
        elif op == "drop":
            assert isinstance(step[1], bytes)
            run.drop(step[1])
        elif op == "purge":
            assert isinstance(step[1], bytes)
            run.purge(step[1])
        elif op == "reap":
            run.reap()
        elif op == "sync":
            run.sync()
        elif op == "clear":
            run.clear()
        else:
            run.take_checkpoint()
        # The live tables show what the model says.
        assert state_of(run.tables) == run.model
        run.crash_now()

    checkpoint = run.checkpoint
    assert checkpoint is not None
    assert state_of(checkpoint.load()) == checkpoint.model
    # Every prefix of the journal since the checkpoint: exactly the model at that record.
    for n in range(len(run.records) + 1):
        tables = check_replay(checkpoint, run.records[:n])
        assert state_of(tables) == run.models[n]
        check_blocks(tables, run.models[n])
    # Every crash point: the entries a restart finds name blocks still holding their data.
    for durable, disk in run.crashes:
        tables = check_replay(checkpoint, run.records[:durable])
        for _gen_key, fields in state_of(tables).items():
            gen, _sum, start, nblocks = fields[:4]
            for block in range(start, start + nblocks):
                assert disk.get(block) == gen, f"block {block} overwritten after a crash"


def test_a_put_whose_blocks_are_taken_is_a_conflict_not_an_overlap() -> None:
    """A journal naming blocks another entry holds (what deferred frees prevent) is
    refused at replay and counted, never indexed on top."""
    tables = Tables(BLOCKS, _stats())
    first = journal.PutRecord(0, 1, 0, 0, 4, 10, 10, 0, 0, 0, KIND_SLICE, b"a v 0")
    second = journal.PutRecord(1, 2, 0, 2, 4, 10, 10, 0, 0, 0, KIND_SLICE, b"b v 0")
    tables.apply(first)
    tables.apply(second)
    assert tables.stats["replay_conflicts_total"] == 1
    assert list(state_of(tables)) == [b"a v 0"]
    check_blocks(tables, {b"a v 0": fields_of(first)})
