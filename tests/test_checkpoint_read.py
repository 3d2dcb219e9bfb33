"""Reading a checkpoint on resume without holding it whole (docs/performance.md, the checkpoint section):
the checksum verified in chunks, the tensors loaded from the open file (never a copy of it), one handle
for both passes (a checkpoint replaced meanwhile is not mixed in), corruption refused in one line; and a
resumed run holds neither the checkpoint's tensors after restoring them nor a merged copy of the fresh
state to check them against."""

from __future__ import annotations

import gc
import hashlib
import pickle
import weakref
from pathlib import Path

import pytest
import torch

from fedsim import rundir
from fedsim.callbacks import Callback
from fedsim.errors import CorruptFileError
from fedsim.peers import PeerGroup
from fedsim.runner import Run
from fedsim.scenario import parse

META = {"format": 1, "round": 2, "metrics_lines": 3, "metrics_sha256": "x", "scenario": {}, "scenario_sha256": "y"}


def _state(seed: int) -> dict:
    # 8 tensors of 512 KiB: a 4 MiB file, four times the reader's 1 MiB chunk
    g = torch.Generator().manual_seed(seed)
    return {"groups": {f"w{i}": torch.randn(256, 512, generator=g) for i in range(8)} | {"t": seed},
            "server": None}


def _same(got: dict, want: dict) -> bool:
    g, w = got["groups"], want["groups"]
    return g.keys() == w.keys() and all(torch.equal(g[k], w[k]) if isinstance(w[k], torch.Tensor) else g[k] == w[k]
                                        for k in w)


class _Spy:
    """A checkpoint's open file that records every read's size and refuses an unbounded read (the
    whole file); ``at_end`` runs once, when a read first meets the end of the file."""

    def __init__(self, fh, log: list[int], at_end=None) -> None:
        self.fh, self.log, self.at_end = fh, log, at_end

    def _seen(self, n: int, size: int) -> None:
        self.log.append(n)
        if n == 0 and size != 0 and self.at_end is not None:
            at_end, self.at_end = self.at_end, None
            at_end()

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            raise AssertionError("an unbounded read: the whole file")
        out = self.fh.read(size)
        self._seen(len(out), size)
        return out

    def readline(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            raise AssertionError("an unbounded readline")
        out = self.fh.readline(size)
        self._seen(len(out), size)
        return out

    def readinto(self, b) -> int:
        n = self.fh.readinto(b)
        self._seen(n, len(memoryview(b)))
        return n

    def readall(self) -> bytes:
        raise AssertionError("readall: the whole file")

    def __getattr__(self, name: str):  # seek, tell, fileno, close
        return getattr(self.fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.fh.close()


def _spied(monkeypatch, log: list[int], at_end=None) -> None:
    """Path.open of the checkpoint returns a :class:`_Spy` (the first one gets ``at_end``); its
    Path.read_bytes fails."""
    real_open = Path.open
    hooks = [at_end]

    def opened(self, mode="r", *a, **k):
        fh = real_open(self, mode, *a, **k)
        return _Spy(fh, log, hooks.pop() if hooks else None) if self.name == "checkpoint.pt" else fh

    def whole(self):
        raise AssertionError("the whole file read")

    monkeypatch.setattr(Path, "open", opened)
    monkeypatch.setattr(Path, "read_bytes", whole)


def test_read_checkpoint_never_holds_the_file_whole(tmp_path, monkeypatch):
    """The checksum pass reads 1 MiB chunks, the load reads each tensor into its own storage: no read
    is larger than a chunk or the largest tensor (512 KiB here), none unbounded, the file 4 MiB."""
    path = tmp_path / "checkpoint.pt"
    state = _state(1)
    rundir.write_checkpoint(path, META, state)
    size = path.stat().st_size
    log: list[int] = []
    _spied(monkeypatch, log)
    meta, got = rundir.read_checkpoint(path)
    assert meta == META and _same(got, state)
    assert size > 4 * rundir._CHUNK and 0 < max(log) <= rundir._CHUNK
    assert sum(log) >= size + 8 * 256 * 512 * 4  # the checksum pass, then the tensors through the same file


def test_a_flipped_byte_in_the_tensors_is_refused_in_one_line(tmp_path):
    """A byte flipped inside a tensor's data: the checksum pass refuses it (one line naming the file);
    a payload cut short under a correct checksum: the load through the open file refuses it."""
    path = tmp_path / "checkpoint.pt"
    state = _state(2)
    rundir.write_checkpoint(path, META, state)
    good = path.read_bytes()
    at = good.find(state["groups"]["w5"].numpy().tobytes()) + 1000  # inside the sixth tensor's data
    assert at > 1000
    flipped = bytearray(good)
    flipped[at] ^= 0x01
    header, meta_line, payload = good.split(b"\n", 2)
    body = meta_line + b"\n" + payload[: len(payload) * 2 // 3]
    cut = rundir._checkpoint_header(hashlib.sha256(body).hexdigest()) + body
    for data, why in [(bytes(flipped), "checksum mismatch"), (cut, "cannot be loaded safely")]:
        path.write_bytes(data)
        with pytest.raises(CorruptFileError) as e:
            rundir.read_checkpoint(path)
        msg = str(e.value)
        assert str(path) in msg and why in msg and "\n" not in msg, msg


def test_a_checkpoint_replaced_between_the_passes_is_not_mixed_in(tmp_path, monkeypatch):
    """The checkpoint is replaced (atomically, as fedsim writes it) once the checksum pass has read it
    to the end: the load reads the verified file through the same handle, so metadata and tensors are
    both the first checkpoint's, never the first's metadata with the second's tensors."""
    path = tmp_path / "checkpoint.pt"
    first, second = _state(3), _state(4)
    rundir.write_checkpoint(path, META, first)
    replaced: list[bool] = []

    def replace() -> None:
        rundir.write_checkpoint(path, META | {"round": 3}, second)  # a metadata line of the same length
        replaced.append(True)

    _spied(monkeypatch, [], at_end=replace)
    meta, got = rundir.read_checkpoint(path)
    assert replaced and rundir.read_checkpoint_meta(path)["round"] == 3
    assert meta == META and _same(got, first)


# ----------------------------------------------------------------------------- a resumed run
def _stopped(small_scenario) -> Run:
    r = Run(parse(small_scenario(name="part", rounds=6, **{"checkpoint.every": 1})))
    r.create_dir()
    assert r.execute(stop_after=2) == {"stopped_after": 2}
    return r


def test_a_resumed_run_frees_the_checkpoints_tensors_once_restored(small_scenario, monkeypatch):
    """The checkpoint's tensors are gone by the first resumed round (the resume point held them for
    the whole run: every peer's state once more)."""
    r = _stopped(small_scenario)
    loaded: list[weakref.ref] = []
    read = rundir.read_checkpoint

    def tracked(path):
        meta, state = read(path)
        loaded.extend(weakref.ref(v) for v in state["groups"].values() if isinstance(v, torch.Tensor))
        return meta, state

    alive: list[int] = []

    class Count(Callback):
        def on_round(self, record):
            gc.collect()
            alive.append(sum(ref() is not None for ref in loaded))

    monkeypatch.setattr(rundir, "read_checkpoint", tracked)
    Run(r.sc, r.dir).execute(resume=True, callbacks=[Count()])
    assert len(loaded) >= 4 and alive == [0, 0, 0]


def test_restore_checks_shapes_without_a_copy_of_the_fresh_state(small_scenario, monkeypatch):
    """Restoring compares the checkpoint with the fresh state's shapes only: no tensor data merged, and
    each group's get_state copy freed before the next group's is asked."""
    from fedsim import simulation

    r = _stopped(small_scenario)
    copies: list[weakref.ref] = []
    live: list[int] = []
    fresh_devices: set[str] = set()
    get_state, check_state = PeerGroup.get_state, simulation.check_state

    def tracked(self, *args):
        gc.collect()
        live.append(sum(ref() is not None for ref in copies))
        st = get_state(self, *args)
        copies.extend(weakref.ref(v) for k, v in st.items() if k in PeerGroup.PER_PEER_STATE)
        return st

    def checked(path, what, loaded, fresh):
        fresh_devices.update(v.device.type for v in fresh.values() if isinstance(v, torch.Tensor))
        return check_state(path, what, loaded, fresh)

    monkeypatch.setattr(PeerGroup, "get_state", tracked)
    monkeypatch.setattr(simulation, "check_state", checked)
    Run(r.sc, r.dir).execute(resume=True, stop_after=2)
    assert live[:2] == [0, 0] and fresh_devices == {"meta"}


def test_a_crafted_payload_under_a_recomputed_checksum_is_one_line_whatever_torch_raises(tmp_path):
    """The checksum guards against accidents, not against someone who recomputes it: edited bytes reach
    torch's readers, which raise KeyError, IndexError, AssertionError... — each must be the one-line
    CorruptFileError naming the file (or the edit is harmless and the file loads)."""
    import io
    import random

    buf = io.BytesIO()
    torch.save({"groups": {"w": torch.randn(5, 4), "n": 3, "l": [torch.ones(3), None]}, "server": None}, buf)
    seen: set[str] = set()
    for seed in range(60):
        rnd, b = random.Random(seed), bytearray(buf.getvalue())
        for _ in range(rnd.randint(1, 3)):
            b[rnd.randrange(len(b))] = rnd.randrange(256)
        body = rundir._checkpoint_meta_line(META) + bytes(b)
        f = tmp_path / f"c{seed}.pt"
        f.write_bytes(rundir._checkpoint_header(hashlib.sha256(body).hexdigest()) + body)
        try:
            rundir.read_checkpoint(f)
        except CorruptFileError as e:
            assert str(f) in str(e) and "\n" not in str(e)
            seen.add("refused")
    assert "refused" in seen


def test_an_in_process_resume_records_its_drivers_onemkl_branch(small_scenario, monkeypatch):
    """A resume appends its start's branch to versions.json (the first start's kept) and warns where
    it differs from the first start's: the rounds after it may have other bits."""
    import json

    from fedsim import mkl_branch

    r = _stopped(small_scenario)
    first = json.loads((r.dir / "versions.json").read_text()).get("mkl_branch")
    if first is None:
        pytest.skip("this torch has no oneMKL to ask")
    monkeypatch.setattr(mkl_branch, "current", lambda: "SSE4_2")
    with pytest.warns(RuntimeWarning, match="this resume runs oneMKL branch SSE4_2"):
        Run(r.sc, r.dir).execute(resume=True)
    recorded = json.loads((r.dir / "versions.json").read_text())
    assert recorded.get("mkl_branch") == first and recorded["mkl_branch_resumes"] == [{"mkl_branch": "SSE4_2"}]


class _RayLike:
    """A lazy backend as Ray is to restore: ``.remote()`` pickles its arguments then (what the
    object store gets), the call runs at ``get``; counts the calls outstanding per method."""

    lazy = True

    def __init__(self) -> None:
        self.pending: list = []
        self.most: dict[str, int] = {}
        self.sent: dict[str, list[int]] = {}

    def handle(self, obj):
        backend = self

        class Call:
            def __init__(self, name):
                self.name = name

            def remote(self, *args):
                import pickle

                payload = pickle.dumps(args)
                backend.sent.setdefault(self.name, []).append(len(payload))
                ref = (self.name, lambda: getattr(obj, self.name)(*pickle.loads(payload)))
                backend.pending.append(ref)
                n = sum(r[0] == self.name for r in backend.pending)
                backend.most[self.name] = max(backend.most.get(self.name, 0), n)
                return ref

        class Handle:
            def __getattr__(self, name):
                return Call(name)

        return Handle()

    def get(self, refs):
        if isinstance(refs, list):
            return [self.get(r) for r in refs]
        self.pending.remove(refs)
        return refs[1]()


def test_restore_on_ray_hands_each_group_its_rows_in_bounded_slices(small_scenario, monkeypatch):
    """On a lazy backend (Ray) restore asks each group's get_state on the meta device (shapes, no
    copy), one at a time, and hands each
    group its rows in slices of FINAL_SLICE_BYTES, one message at a time, each a compact copy (a
    pickled slice of the loaded tensors carries their whole storage: every peer's rows), then the
    shared entries; each slice copied into the group's own tensors at once (no staged copy of its
    part); the same state is restored."""
    from fedsim import limits
    from fedsim.backend import LocalBackend
    from fedsim.prepare import prepare
    from fedsim.simulation import Simulation

    sc = parse(small_scenario(**{"engine.num_actors": 3, "peers.count": 9}))
    prep = prepare(sc)
    sim = Simulation(sc, prep, LocalBackend())
    sim.step(0)
    saved = sim.state()
    row = sum(v[:1].nbytes for k, v in saved["groups"].items() if k in PeerGroup.PER_PEER_STATE)
    monkeypatch.setattr(limits, "FINAL_SLICE_BYTES", 2 * row)  # 2 peers' rows a message: 3 peers, 2 slices
    fresh = Simulation(sc, prep, LocalBackend())
    local_groups, ray = fresh.groups, _RayLike()
    fresh.backend, fresh.groups = ray, [ray.handle(g._obj) for g in local_groups]
    asked: list = []  # the devices of the fresh states' tensors restore asked for: no data
    get_state = PeerGroup.get_state

    def tracked(self, *args):
        st = get_state(self, *args)
        asked.append({v.device.type for v in st.values() if isinstance(v, torch.Tensor)})
        return st

    monkeypatch.setattr(PeerGroup, "get_state", tracked)
    kept: list = []  # what a group held besides its own tensors when the slices were in: nothing
    set_staged = PeerGroup.set_staged_state
    monkeypatch.setattr(PeerGroup, "set_staged_state",
                        lambda self, st: kept.append(self._staged) or set_staged(self, st))
    fresh.restore(saved, Path("ckpt"))
    assert kept == [None] * 3  # the rows went straight into the heads and buffers, no staged copy
    assert asked == [{"meta"}] * 3
    monkeypatch.setattr(PeerGroup, "get_state", get_state)
    assert ray.most == {"get_state": 1, "stage_rows": 1, "set_staged_state": 1} and not ray.pending
    assert [len(s.train_idx) for s in prep.setups] == [3, 3, 3]
    assert len(ray.sent["stage_rows"]) == 6 and len(ray.sent["set_staged_state"]) == 3
    assert max(ray.sent["stage_rows"]) < 2 * row + 4096, (ray.sent["stage_rows"], row)  # its rows, not all
    assert max(ray.sent["set_staged_state"]) < 4096 and all(g._obj._staged is None for g in local_groups)
    fresh.backend, fresh.groups = LocalBackend(), local_groups
    back = fresh.state()["groups"]
    assert back.keys() == saved["groups"].keys()
    for k, v in saved["groups"].items():
        assert torch.equal(back[k], v) if isinstance(v, torch.Tensor) else back[k] == v


def _bn_whole_adam(tmp_path: Path):
    """A whole model with local BatchNorm (FedBN) and Adam, 4 peers on 2 in-process groups."""
    from fedsim.overrides import set_dotted

    d = {"name": "bn", "seed": 3, "rounds": 2, "dataset": {"name": "mnist10k"},
         "backbone": {"name": "fmnist_bn_cnn", "cache_dir": str(tmp_path / "cache")},
         "partition": {"kind": "iid"}, "peers": {"count": 4}, "topology": {"kind": "complete"},
         "training": {"lr": 0.01, "batch_size": 4, "local_steps": 2, "optimizer": "adam"},
         "model": {"trainable": "all", "init": "scratch", "bn": "local"},
         "engine": {"backend": "local", "num_actors": 2}, "output": {"dir": str(tmp_path / "runs")}}
    set_dotted(d, "strategy.name", "fedavg")
    return parse(d)


def test_restore_on_ray_in_one_row_slices_restores_batchnorm_buffers_and_adam(tmp_path, monkeypatch):
    """A whole model with local BatchNorm (FedBN) and Adam on 2 groups, restored through the lazy
    backend one peer's rows a message: its staged BatchNorm buffers land at their own rows (a
    mutant staging every slice at row 0 restored wrong buffers and passed every test)."""
    from fedsim import limits
    from fedsim.backend import LocalBackend
    from fedsim.prepare import prepare
    from fedsim.simulation import Simulation

    sc = _bn_whole_adam(tmp_path)
    prep = prepare(sc)
    sim = Simulation(sc, prep, LocalBackend())
    sim.step(0)
    saved = sim.state()
    assert "buffers" in saved["groups"] and saved["groups"]["buffers"].abs().sum() > 0
    row = max(v[:1].nbytes for k, v in saved["groups"].items() if k in PeerGroup.PER_PEER_STATE)
    monkeypatch.setattr(limits, "FINAL_SLICE_BYTES", row)  # one peer's rows a message
    fresh = Simulation(sc, prep, LocalBackend())
    local_groups, ray = fresh.groups, _RayLike()
    fresh.backend, fresh.groups = ray, [ray.handle(g._obj) for g in local_groups]
    fresh.restore(saved, Path("ckpt"))
    assert len(ray.sent["stage_rows"]) == 4  # 2 groups x 2 peers, one slice each
    fresh.backend, fresh.groups = LocalBackend(), local_groups
    back = fresh.state()["groups"]
    for k, v in saved["groups"].items():
        assert torch.equal(back[k], v) if isinstance(v, torch.Tensor) else back[k] == v, k


def test_set_state_refuses_a_state_without_an_entry():
    """``set_state`` skipped a missing per-peer entry (the heads restored, the momentum left at 0);
    only the entries :meth:`PeerGroup.stage_rows` wrote in place are left out, by name."""
    from fedsim.prepare import prepare

    d = {"name": "s", "seed": 0, "rounds": 1, "dataset": {"name": "sklearn_digits"}, "backbone": {"name": "identity"},
         "partition": {"kind": "iid"}, "peers": {"count": 4}, "engine": {"backend": "local", "num_actors": 1},
         "topology": {"kind": "complete"}, "training": {"momentum": 0.9}}
    prep = prepare(parse(d))
    f = prep.features
    group = PeerGroup(prep.setups[0], {"x_train": f.x_train, "y_train": f.y_train, "x_test": f.x_test,
                                       "y_test": f.y_test})
    st = group.get_state()
    with pytest.raises(KeyError, match="m_w"):
        group.set_state({k: v for k, v in st.items() if k != "m_w"})
    group.set_state({k: v for k, v in st.items() if k != "m_w"}, copied={"m_w"})  # written in place before


def _ray_like_state(sim, monkeypatch, slice_bytes: int):
    """``sim.state()`` through the lazy backend, FINAL_SLICE_BYTES ``slice_bytes``: the state, and per
    ``get_state`` call its arguments, the rows of each per-peer tensor it returned, whether each of
    those tensors owns its storage alone (what Ray pickles: a view carries its whole storage) and
    the size of the pickled result."""

    from fedsim import limits
    from fedsim.backend import LocalBackend

    monkeypatch.setattr(limits, "FINAL_SLICE_BYTES", slice_bytes)
    local_groups, ray = sim.groups, _RayLike()
    sim.backend, sim.groups = ray, [ray.handle(g._obj) for g in local_groups]
    calls: list[dict] = []
    get_state = type(local_groups[0]._obj).get_state

    def tracked(self, *args):
        st = get_state(self, *args)
        per_peer = {k: v for k, v in st.items() if k in PeerGroup.PER_PEER_STATE}
        calls.append({"args": args, "rows": {len(v) for v in per_peer.values()}, "keys": list(st),
                      "compact": all(v.untyped_storage().nbytes() == v.nbytes for v in per_peer.values()),
                      "pickled": len(pickle.dumps(st)) if args[:1] != ("meta",) else 0})
        return st

    monkeypatch.setattr(type(local_groups[0]._obj), "get_state", tracked)
    try:
        state = sim.state()
    finally:
        monkeypatch.setattr(type(local_groups[0]._obj), "get_state", get_state)
        sim.backend, sim.groups = LocalBackend(), local_groups
    assert not ray.pending and ray.most["get_state"] == 1  # one call in flight at a time
    return state, calls


def _same_state(got: dict, want: dict) -> None:
    assert list(got) == list(want)  # (the order too: the checkpoint's bytes)
    for k, v in want.items():
        if isinstance(v, torch.Tensor):
            assert got[k].dtype == v.dtype and torch.equal(got[k], v), k
        else:
            assert got[k] == v, k


@pytest.mark.parametrize("over", [{"training.optimizer": "adam", "engine.head_dtype": "bfloat16"},
                                  {"peers.byzantine": 2, "peers.attack": {"name": "stale", "params": {"delay": 2}}}])
def test_checkpoint_state_on_ray_is_fetched_in_bounded_compact_slices(small_scenario, monkeypatch, over):
    """On a lazy backend (Ray) Simulation.state asks each group for FINAL_SLICE_BYTES of its rows a
    call (its whole state, every group's asked at once, sat in its heap, the object store and the
    driver together: several times the heads at 10,000 peers), one call at a time, each tensor a
    compact copy (a pickled view carries every hosted peer's rows), the shared entries once; the
    state equals the in-process one (3 groups of 3 peers, slices of 2 rows)."""
    from fedsim.backend import LocalBackend
    from fedsim.prepare import prepare
    from fedsim.simulation import Simulation

    sc = parse(small_scenario(**{"engine.num_actors": 3, "peers.count": 9, **over}))
    prep = prepare(sc)
    sim = Simulation(sc, prep, LocalBackend())
    for r in range(3):
        sim.step(r)
    want = sim.state()
    assert (want["groups"]["stale_history"] is not None) == ("peers.attack" in over)
    row = sum(v[:1].nbytes for k, v in want["groups"].items() if k in PeerGroup.PER_PEER_STATE)
    got, calls = _ray_like_state(sim, monkeypatch, 2 * row)
    _same_state(got["groups"], want["groups"])
    sliced = [c for c in calls if c["args"][:1] != ("meta",)]
    assert [c["args"] for c in calls if c not in sliced] == [("meta",)] * 3
    assert [c["args"][1:] for c in sliced] == [(0, 2, True), (2, 3, False)] + [(0, 2, False), (2, 3, False)] * 2
    assert [c["rows"] for c in sliced] == [{2}, {1}] * 3 and all(c["compact"] for c in sliced)
    assert ["t" in c["keys"] for c in sliced] == [True] + [False] * 5
    shared = len(pickle.dumps({k: v for k, v in want["groups"].items() if k not in PeerGroup.PER_PEER_STATE}))
    assert max(c["pickled"] for c in sliced) < 2 * row + shared + 4096  # its rows, not the group's


def test_whole_model_checkpoint_state_on_ray_in_one_row_slices(tmp_path, monkeypatch):
    """A whole model with local BatchNorm (its checkpoint keeps every module buffer, float64) and
    Adam on 2 groups: fetched one peer's rows a call, each compact, the buffers too; the same state."""
    from fedsim.backend import LocalBackend
    from fedsim.prepare import prepare
    from fedsim.simulation import Simulation

    sc = _bn_whole_adam(tmp_path)
    sim = Simulation(sc, prepare(sc), LocalBackend())
    sim.step(0)
    want = sim.state()
    assert "buffers" in want["groups"] and want["groups"]["buffers"].abs().sum() > 0
    row = max(v[:1].nbytes for k, v in want["groups"].items() if k in PeerGroup.PER_PEER_STATE)
    from fedsim import stacked

    built, real = [], stacked.StackedModel.buffer_state  # the buffers each call builds, and where

    def spy(self, lo=0, hi=None, device="cpu"):
        t = real(self, lo, hi, device)
        built.append((t.shape[0], t.device.type))
        return t

    monkeypatch.setattr(stacked.StackedModel, "buffer_state", spy)
    got, calls = _ray_like_state(sim, monkeypatch, row)
    _same_state(got["groups"], want["groups"])
    sliced = [c for c in calls if c["args"][:1] != ("meta",)]
    assert [c["args"][1:3] for c in sliced] == [(0, 1), (1, 2)] * 2
    assert all(c["rows"] == {1} and c["compact"] for c in sliced)
    # the shape query builds no group's buffers on the CPU: only the slices asked hold rows there
    assert built and all(n == 1 for n, dev in built if dev == "cpu") and ("meta" in {d for _, d in built})


def _state_slice(rows: int, shared: bool = True) -> dict:
    st = {"w": torch.ones(rows, 4), "b": torch.ones(rows, 1), "m_w": torch.ones(rows, 4), "m_b": torch.ones(rows, 1)}
    return st | ({"t": 0, "stale_history": None} if shared else {})


@pytest.mark.parametrize(
    "groups",
    [
        lambda: [iter([_state_slice(2)])],  # a group's slices short of its rows
        lambda: [iter([_state_slice(2), _state_slice(2, False)])],  # more rows than it hosts
        lambda: [_state_slice(2)],  # a whole state of other rows
        lambda: [iter([_state_slice(3)]), iter([])],  # a group with no slice at all
    ],
)
def test_merging_refuses_a_group_of_other_rows(groups):
    """merge_group_states checks every group's rows, whole or in slices: a short slice would write the
    merged tensors' uninitialised memory into the checkpoint."""
    from fedsim.simulation import merge_group_states

    gs = groups()
    with pytest.raises(ValueError, match="rows|peers"):
        merge_group_states(gs, [3] * len(gs))
